#!/usr/bin/env bash
# Writes requirements.lock: the exact version of every package simgen and its test extra need, resolved
# by pip-compile (pip-tools) from the ranges in pyproject.toml, for Linux x86-64 and this Python (3.11).
#
#   bash scripts/lock.sh             # after a dependency was added or a range changed: keeps every
#                                    # existing pin that still fits, resolves only what is new
#   bash scripts/lock.sh --upgrade   # every package at the newest version the ranges allow
#
# torch is pinned to TORCH_VERSION (default: the lock's current pin, else 2.13.0) and resolved against
# its CPU build, so the lock holds none of the CUDA build's nvidia-* packages; the pin is written without
# the "+cpu" label, which pip matches to the CPU build where that is on offer (see scripts/setup.sh).
# The same registry state gives the same file: pip-tools and pip are pinned here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/torch_index.sh

upgrade=()
for arg in "$@"; do
  case $arg in
    --upgrade) upgrade=(--upgrade) ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "lock.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
current=$(sed -n 's/^torch==\([^ +]*\).*/\1/p' requirements.lock 2>/dev/null || true)
TORCH_VERSION=${TORCH_VERSION:-${current:-2.13.0}}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q pip==26.3 pip-tools==7.7.0

# pip-compile reads requirements files besides pyproject.toml: one that pins torch.
echo "torch==$TORCH_VERSION" >"$tmp/torch.in"
# Start from the committed lock so unchanged pins stay (pip-compile keeps what still fits).
[ -f requirements.lock ] && cp requirements.lock "$tmp/requirements.lock"
# shellcheck disable=SC2046  # torch_index_args prints zero or two words
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tmp/venv/bin/pip-compile" --quiet "${upgrade[@]}" \
  --extra test --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
  --no-emit-trusted-host --resolver backtracking $(torch_index_args "$PY") \
  --output-file "$tmp/requirements.lock" pyproject.toml "$tmp/torch.in"

# Portable torch pin (no local label) and no temporary path in the "via" comments.
sed -e "s/^torch==\([^ +]*\)+[A-Za-z0-9.]*/torch==\1/" -e "s|$tmp/torch.in|scripts/lock.sh (TORCH_VERSION)|" \
  "$tmp/requirements.lock" >requirements.lock
if grep -q '^nvidia-' requirements.lock; then
  echo "lock.sh: the lock pulled CUDA packages (torch resolved to its CUDA build); make the CPU build" \
    "visible to pip (TORCH_CPU_INDEX or a find-links folder with torch-$TORCH_VERSION+cpu)" >&2
  exit 1
fi
echo "wrote requirements.lock ($(grep -c '^[a-zA-Z0-9]' requirements.lock) packages, torch==$TORCH_VERSION)"
