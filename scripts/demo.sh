#!/usr/bin/env bash
# The main job on the built-in default scene: synthesize a room with exact ground truth, validate it,
# reconstruct it (online panoptic TSDF fusion), export Gazebo + MuJoCo worlds, check them with
# libsdformat's validator, and evaluate the reconstruction against the ground truth.
# Everything lands in out/demo/ (override with OUT=...). Set METHOD=neural for the neural builder,
# PRESET=tiny for a small scene. Any problem simgen check finds makes it fail (exit status 1).
# It runs the project environment's simgen (scripts/setup.sh makes .venv): no activation needed.
# SIMGEN overrides the command (e.g. SIMGEN="python3 -m simgen.cli" in another environment).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
METHOD=${METHOD:-fusion}
PRESET=${PRESET:-room}
read -r -a simgen <<<"${SIMGEN:-.venv/bin/simgen}"
if ! command -v "${simgen[0]}" >/dev/null 2>&1; then
  echo "demo.sh: ${simgen[0]} not found: run bash scripts/setup.sh first" >&2
  exit 1
fi

"${simgen[@]}" synth "$OUT/scene" --preset "$PRESET" --seed 0 --overwrite --preview "$OUT/scene_preview.png"
"${simgen[@]}" validate "$OUT/scene"
"${simgen[@]}" build "$OUT/scene" -o "$OUT/build" --method "$METHOD" --overwrite
"${simgen[@]}" check "$OUT/build"
"${simgen[@]}" eval "$OUT/build" --scene "$OUT/scene" --split test
echo
echo "done: scene $OUT/scene, world $OUT/build/worlds/, metrics $OUT/build/eval/metrics.md,"
echo "      report $OUT/build/eval/report/, preview $OUT/scene_preview.png"
echo "serve it: ${simgen[*]} serve $OUT/build   (then open http://127.0.0.1:8000/)"
