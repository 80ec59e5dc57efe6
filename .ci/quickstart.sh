#!/usr/bin/env bash
# The README's quickstart as written (issue #18): every command of its code block, in order, in a
# scratch folder, with the project environment's simgen first on PATH (what activating .venv does).
# Skipped: `simgen import`, which needs a dataset from outside. `simgen serve` runs in the background
# until its viewer page has been fetched. QUICKSTART_PRESET (default: tiny, a few minutes less than the
# README's room) replaces the synthetic scene's preset; QUICKSTART_PRESET=room runs it fully as written.
#
#   bash .ci/quickstart.sh [WORK]   # needs .venv (scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
venv=$(cd "${VENV:-.venv}" && pwd)
preset=${QUICKSTART_PRESET:-tiny}
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/simgen-quickstart.XXXXXX")}
mkdir -p "$work"

# The lines of the first ```bash block after "## Quickstart", comments stripped.
mapfile -t cmds < <(awk '/^## Quickstart/{q=1} q&&/^```bash/{b=1;next} b&&/^```/{exit} b' README.md |
  sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d')
[ ${#cmds[@]} -ge 5 ] || { echo "quickstart.sh: no quickstart block found in README.md" >&2; exit 1; }

cd "$work"
export PATH="$venv/bin:$PATH"
unset PYTHONPATH
for cmd in "${cmds[@]}"; do
  cmd=${cmd//--preset room/--preset $preset}
  case $cmd in
    "simgen import "*)
      echo "== skipped (needs an external dataset): $cmd"
      continue
      ;;
  esac
  echo "== $cmd"
  t0=$(date +%s)
  case $cmd in
    "simgen serve "*)
      read -r -a words <<<"$cmd"
      serve_and_fetch simgen "${words[2]}" "$work/serve.log"
      ;;
    *) bash -c "$cmd" ;;
  esac
  echo "   ($(($(date +%s) - t0)) s)"
done
echo "quickstart ok: ${#cmds[@]} commands (preset $preset) in $work"
