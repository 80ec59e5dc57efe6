#!/usr/bin/env bash
# The main job on the built-in default scene: synthesize a room with exact ground truth, validate it,
# reconstruct it (online panoptic TSDF fusion), export Gazebo + MuJoCo worlds, check them with
# libsdformat's validator, and evaluate the reconstruction against the ground truth.
# Everything lands in out/demo/ (override with OUT=...). Set METHOD=neural for the neural builder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
METHOD=${METHOD:-fusion}
PRESET=${PRESET:-room}

simgen synth "$OUT/scene" --preset "$PRESET" --seed 0 --overwrite --preview "$OUT/scene_preview.png"
simgen validate "$OUT/scene"
simgen build "$OUT/scene" -o "$OUT/build" --method "$METHOD"
simgen check "$OUT/build"
simgen eval "$OUT/build" --scene "$OUT/scene" --split test
echo
echo "done: scene $OUT/scene, world $OUT/build/worlds/, metrics $OUT/build/eval/metrics.md,"
echo "      report $OUT/build/eval/report/, preview $OUT/scene_preview.png"
echo "serve it: simgen serve $OUT/build   (then open http://127.0.0.1:8000/)"
