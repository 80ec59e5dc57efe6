#!/usr/bin/env bash
# One-time set-up on a fresh machine: the Debian packages simgen check needs (where missing), then a
# project virtual environment .venv with the CPU build of torch and simgen (editable) with its test
# extra, at the exact versions of requirements.lock. Nothing is installed into the system's Python, so it
# also works where that refuses pip installs (PEP 668). Safe to run again: it installs what is missing.
#
#   bash scripts/setup.sh            # the versions in requirements.lock (tested by CI)
#   bash scripts/setup.sh --latest   # the newest versions pyproject.toml allows (torch stays at the
#                                    # lock's CPU build: PyPI's newest torch is the multi-GB CUDA build)
#
# Environment: PYTHON (default python3, >= 3.11) makes the environment; VENV (default .venv) is where.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/torch_index.sh

latest=0
for arg in "$@"; do
  case $arg in
    --latest) latest=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup.sh: simgen needs Python >= 3.11; $PY is $("$PY" --version 2>&1) (set PYTHON=python3.11)" >&2
  exit 1
}

# Debian packages: the SDFormat validator (ign sdf -k, used by simgen check) and, where the system
# Python has no venv module (Debian splits it out), python3-venv.
need=()
command -v ign >/dev/null 2>&1 || command -v gz >/dev/null 2>&1 || need+=(ignition-tools libsdformat-dev)
[ -x "$VENV/bin/python" ] || "$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# Mesa's EGL for the OpenGL raster backend (simgen serve --backend raster; headless, software on a CPU)
ls /usr/lib/*-linux-gnu/libEGL_mesa.so.0 >/dev/null 2>&1 || need+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup.sh: no apt-get; install these yourself: ${need[*]} (simgen check --no-validator skips the first)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
torch_version=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements.lock)
# torch first, on its own and without its dependencies (the lock or the resolver below adds those): a
# torch requirement left to a plain PyPI install would fetch the CUDA build. Skipped when the installed
# torch already is that version (any local label, e.g. +cpu, matches the lock's pin).
# shellcheck disable=SC2046  # torch_index_args prints zero or two words
"$VENV/bin/python" -c "import sys; from importlib.metadata import version as v
sys.exit(v('torch').split('+')[0] != '$torch_version')" 2>/dev/null || "${pip[@]}" --no-deps $(torch_index_args "$VENV/bin/python") "torch==$torch_version"
# What the environment was last set up from: pyproject.toml and the lock, byte for byte. A second run
# with neither changed has nothing to do (pip would still spend seconds to minutes confirming that).
stamp="$VENV/.simgen-setup"
want="lock $(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [ "$latest" -eq 1 ]; then
  echo "torch==$torch_version" >"$VENV/torch-constraint.txt"
  "${pip[@]}" --upgrade --upgrade-strategy eager -c "$VENV/torch-constraint.txt" -e ".[test]"
  echo latest >"$stamp"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" -r requirements.lock
  "${pip[@]}" --no-deps -e .
  echo "$want" >"$stamp"
fi
# The CPU kernels compiled once now (numba caches them beside the code), not inside the first render or
# test. Skipped when this checkout's cache already holds them (a kernel's cache lives next to its source).
if ! ls simgen/render/__pycache__/*.nbi >/dev/null 2>&1; then
  echo "setup.sh: compiling the CPU kernels (once per checkout)"
  "$VENV/bin/python" -c "from simgen.render.jit import compile_kernels; compile_kernels()"
fi
echo "ready: $VENV ($("$VENV/bin/python" -c 'from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("torch", "numpy", "trimesh", "coacd", "pymeshlab", "mujoco")))'))"
