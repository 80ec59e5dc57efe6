#!/usr/bin/env bash
# The package as users install it (issue #18): `python -m build` (sdist, then the wheel from the sdist),
# the wheel installed on its own into a brand-new virtual environment (the CPU build of torch first,
# the other packages at the lock's versions, or the newest ones with CI_LATEST=1), then, from a folder
# outside the source tree: simgen --help, simgen synth --preset tiny, simgen build, and simgen serve's
# viewer page fetched from 127.0.0.1 (so the package data is in the wheel).
#
#   bash .ci/wheel.sh [WORK]   # WORK: scratch folder (default: a new temporary one); needs .venv
#                              # (scripts/setup.sh) for `build`
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
. scripts/torch_index.sh
src=$PWD
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/simgen-wheel.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)

"${VENV:-.venv}/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  exit 1
}
wheel=$(ls "$work"/dist/simgen-*.whl)
echo "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) kB)"

"${PYTHON:-python3}" -m venv "$work/venv"
py=$work/venv/bin/python
torch_version=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements.lock)
# shellcheck disable=SC2046  # torch_index_args prints zero or two words
"$py" -m pip install -q --no-deps $(torch_index_args "$py") "torch==$torch_version"
if [ "${CI_LATEST:-0}" = 1 ]; then
  echo "torch==$torch_version" >"$work/constraints.txt"
else
  cp requirements.lock "$work/constraints.txt"
fi
"$py" -m pip install -q -c "$work/constraints.txt" "$wheel"

cd "$work" # nothing of the source tree on the import path
unset PYTHONPATH
where=$("$py" -c "import simgen, os; print(os.path.dirname(simgen.__file__))")
case $where in
  "$work/venv/"*) ;;
  *) echo "wheel.sh: simgen imported from $where, not from the installed wheel" >&2; exit 1 ;;
esac
[ "$where" != "$src/simgen" ]
simgen=$work/venv/bin/simgen
"$simgen" --help >/dev/null
"$simgen" synth "$work/scene" --preset tiny
"$simgen" build "$work/scene" -o "$work/build" --no-gaussians -q
serve_and_fetch "$simgen" "$work/build" "$work/serve.log"
echo "wheel ok: $(basename "$wheel") installed alone runs --help, synth, build and serves the viewer page"
