# Sourced by the scripts in .ci/: small helpers shared by the wheel and quickstart checks.

# serve_and_fetch SIMGEN FOLDER LOG: starts `SIMGEN serve FOLDER --port 0` in the background, waits for
# the address it prints, fetches the viewer page / from 127.0.0.1 and checks that it is the HTML page
# (so the package data travelled with the package), then stops the server. Returns non-zero on failure.
serve_and_fetch() {
  local simgen=$1 folder=$2 log=$3 pid url="" rc=0
  # The log exists before the server starts: under load the background job may open it late, and a
  # missing file would end a caller running with set -e -o pipefail.
  : >"$log"
  "$simgen" serve "$folder" --port 0 >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 240); do # the scene loads first (mesh, BVH, Gaussians): up to 2 min on a busy machine
    url=$(sed -n 's|.* on \(http://127\.0\.0\.1:[0-9]*/\) .*|\1|p' "$log" | head -n 1 || true)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$url" ]; then
    echo "serve_and_fetch: simgen serve $folder printed no address:" >&2
    cat "$log" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  python3 - "$url" <<'PY' || rc=$?
import sys, time, urllib.request

url = sys.argv[1]
for attempt in range(20):  # the socket listens before the first request is served
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body, kind = r.read().decode("utf-8", "replace"), r.headers.get("Content-Type", "")
        break
    except OSError as e:
        err = e
        time.sleep(0.5)
else:
    sys.exit(f"GET {url}: {err}")
if "text/html" not in kind or "<html" not in body.lower() or "simgen" not in body.lower():
    sys.exit(f"GET {url}: not the viewer page ({kind}, {len(body)} bytes: {body[:200]!r})")
print(f"GET {url}: viewer page, {len(body)} bytes")
PY
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return $rc
}

# timed NAME CMD...: runs CMD, appends "NAME seconds status load" to $CI_TIMES (when set), returns its status.
timed() {
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  "$@" || rc=$?
  # The load average tells how much of the machine the step had (2 cores: above 2, it waited).
  [ -z "${CI_TIMES:-}" ] || printf '%-44s %5d s  %-12s load %s\n' "$name" $(($(date +%s) - t0)) \
    "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" "$(cut -d' ' -f1 /proc/loadavg)" >>"$CI_TIMES"
  return $rc
}
