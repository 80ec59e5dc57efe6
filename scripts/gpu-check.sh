#!/usr/bin/env bash
# The GPU check in one command (docs/gpu.md): on a Linux machine with an NVIDIA GPU, its driver, a CUDA
# build of torch (or internet to get one) and nvcc, with nothing of simgen installed:
#
#   bash scripts/gpu-check.sh [OUT.json]          # default gpu-check.json; about 8 minutes
#
# 1. Debian packages for a headless EGL context (libegl1 and Mesa; the NVIDIA driver brings its own EGL
#    vendor library), when apt-get is there and we are root or have sudo;
# 2. a virtual environment that sees the system's torch (--system-site-packages), simgen with its test and
#    gl extras, and gsplat (compiled for this GPU on first use; needs nvcc). WHEELS=DIR installs from a
#    folder of wheels instead of PyPI (machines without internet); TCNN=1 also builds tinycudann from
#    source (~10 minutes, so off by default: its figures then read "not installed");
# 3. the CUDA-only tests (gsplat against the CPU rasterizer, tinycudann against the torch hash grid) and the
#    rasterizer / raster-backend tests;
# 4. bench/gpu_check.py: the figures, written to OUT.json after every step.
#
# Every step has a time limit; the whole run stops starting new steps after BUDGET_S seconds (default 420)
# so that it finishes within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-gpu-check.json}")
BUDGET_S=${BUDGET_S:-420}
NEURAL_S=${NEURAL_S:-240}
T0=$(date +%s)
say() { echo "[gpu-check $(( $(date +%s) - T0 ))s] $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "no NVIDIA GPU answers nvidia-smi; this check is for CUDA machines (the CPU paths are tested by pytest)"
  exit 2
fi
nvidia-smi -L

# 1. EGL for moderngl (the raster backend). Missing permissions are not fatal: the raster figures then say so.
if command -v apt-get >/dev/null 2>&1 && ! ls /usr/lib/*-linux-gnu/libEGL.so.1 >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  say "installing libegl1 libegl-mesa0 libgl1-mesa-dri"
  timeout 120 $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 180 \
    $SUDO apt-get install -y -qq --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null \
    || say "could not install the EGL packages (the raster backend will report no GL context)"
fi

# 2. Python environment.
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV" || { say "python3 -m venv failed"; exit 1; }
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q)
[ -n "${WHEELS:-}" ] && PIP+=(--no-index --find-links "$WHEELS")
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "installing a CUDA build of torch"
  timeout 600 "${PIP[@]}" torch || { say "no CUDA torch"; exit 1; }
fi
say "installing simgen[test,gl], gsplat"
timeout 300 "${PIP[@]}" -e ".[test,gl]" || { say "pip install -e .[test,gl] failed"; exit 1; }
timeout 300 "${PIP[@]}" gsplat || say "gsplat did not install (its figures will say so)"
if [ "${TCNN:-0}" = "1" ]; then
  say "building tinycudann (TCNN=1)"
  timeout 900 "${PIP[@]}" --no-build-isolation \
    "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch" || say "tinycudann build failed"
fi
"$VPY" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
try:
    import gsplat  # compiles its kernels on first use
    print("gsplat", gsplat.__version__)
except Exception as e:
    print("gsplat unavailable:", e)
EOF

# 3. Tests that need CUDA (skipped on CPU machines), and the rasterizer / GL backend tests.
say "CUDA tests"
timeout 240 "$VPY" -m pytest -q -x -p no:cacheprovider -n 0 \
  tests/test_render_rasterize.py::test_matches_gsplat_cuda \
  tests/test_recon_neural_hashgrid.py::test_tcnn_equals_torch_on_same_parameters \
  tests/test_render_fast_rasterizer.py tests/test_render_raster.py 2>&1 | tail -15
TESTS_RC=${PIPESTATUS[0]}

# 4. Figures.
LEFT=$(( BUDGET_S - ($(date +%s) - T0) ))
[ "$LEFT" -lt 120 ] && LEFT=120
say "figures -> $OUT (budget ${LEFT}s for starting steps, neural build ${NEURAL_S}s)"
timeout 600 "$VPY" bench/gpu_check.py --out "$OUT" --work "${WORK:-gpu-check-work}" \
  --budget-s "$LEFT" --neural-s "$NEURAL_S"
RC=$?
"$VPY" - "$OUT" "$TESTS_RC" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["cuda_tests_exit_code"] = int(sys.argv[2])
json.dump(r, open(sys.argv[1], "w"), indent=2, default=str)
print(json.dumps({k: r[k] for k in r if k in ("device", "wall_s", "cuda_tests_exit_code")}))
EOF
say "done: $OUT (tests exit $TESTS_RC, figures exit $RC)"
exit $(( TESTS_RC != 0 || RC != 0 ))
