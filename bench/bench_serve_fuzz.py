"""Render-server fuzz and hostile soak (issue #19): schemathesis against a real ``simgen serve`` on
127.0.0.1, then concurrent clients sending a mix of hostile and valid requests.

Usage: python bench/bench_serve_fuzz.py [--scene BUILD_OR_EXPORT] [--examples 100] [--seed 19]
                                        [--clients 6] [--duration 60] [--json FILE]

* schemathesis: every operation of ``/openapi.json``, phases examples, coverage and fuzzing (positive and
  negative inputs), ``--examples`` per operation, checks: no 5xx, declared status codes and content types,
  responses matching their schemas. Prints the number of test cases it ran and failures.
* soak: ``--clients`` threads for ``--duration`` seconds, each on its own connection, cycling through
  nested JSON (``[`` x 100 000), a 2 MiB body, ``text/plain`` and form bodies, string-typed numbers,
  invalid UTF-8 and valid renders. Counts answers by status, requests/s held, and the server's resident
  memory (process and workers) at the start, middle and end. Any 5xx or dropped connection is an error.

Without ``--scene`` it serves the small two-box build of tests/test_serve_scene.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The server subprocess must run this checkout's simgen, not whichever one is installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, str(REPO / "tests"))

from bench_serve import Server  # noqa: E402
from machine import machine  # noqa: E402

POSE = {"x": 0.0, "y": 0.0, "z": 0.5, "qx": 0.0, "qy": 0.0, "qz": 0.0, "qw": 1.0}
VALID = {"pose": POSE, "width": 64, "height": 48, "outputs": ["depth", "panoptic"], "hfov_deg": 90}
JSON = "application/json"
# (name, path, body bytes, content type, expected status)
HOSTILE: list[tuple[str, str, bytes, str, int]] = [
    ("nested", "/render", b"[" * 100_000, JSON, 400),
    ("nested-object", "/render/batch", b'{"poses": ' + b"{" * 50_000, JSON, 400),
    ("oversize", "/render", b" " * (2 << 20), JSON, 413),
    ("text/plain", "/render", json.dumps(VALID).encode(), "text/plain", 415),
    ("form", "/render", b"pose=1", "application/x-www-form-urlencoded", 415),
    ("string-number", "/render", json.dumps(VALID | {"width": "64"}).encode(), JSON, 400),
    ("bad-utf8", "/render", b'{"pose": "\xff\xfe"}', JSON, 400),
    ("huge-int", "/render", b'{"width": ' + b"9" * 5000 + b"}", JSON, 400),
    ("valid", "/render", json.dumps(VALID).encode(), JSON, 200),
]


def run_schemathesis(url: str, examples: int, seed: int) -> dict:
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "-c", checks]
    cmd += ["--phases", "examples,coverage,fuzzing", "-n", str(examples), "--seed", str(seed), "--no-color"]
    cmd += ["--workers", "1"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=3600)
    summary = r.stdout.split("SUMMARY")[-1]
    cases = re.search(r"Test cases:\s*(\d+) generated,\s*(\d+) (?:passed|found)", summary)
    return {
        "rc": r.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "test_cases": int(cases.group(1)) if cases else None,
        "summary": summary.strip()[-1500:],
    }


def soak(server: Server, clients: int, duration: float) -> dict:
    host, port = server.url.removeprefix("http://").split(":")
    stop = time.monotonic() + duration
    counts: list[Counter] = [Counter() for _ in range(clients)]
    wrong: list[list[str]] = [[] for _ in range(clients)]

    def run(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = k
        while time.monotonic() < stop:
            name, path, body, ctype, want = HOSTILE[i % len(HOSTILE)]
            i += 1
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                status = r.status
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0  # dropped connection
                conn.close()
            counts[k][status] += 1
            # 503 is the overload answer to a valid render; an oversized upload may see the connection
            # closed while still sending (docs/serve.md: Flask answers 413 without reading the body).
            if (
                status != want
                and not (status == 503 and name == "valid")
                and not (status == 0 and want == 413)
            ):
                wrong[k].append(f"{name}: {status} (expected {want})")

    rss = [server.rss_mb()]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration / 2)
    rss.append(server.rss_mb())
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss.append(server.rss_mb())
    total: Counter = sum(counts, Counter())
    unexpected = [w for row in wrong for w in row]
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(total.values()),
        "rps": round(sum(total.values()) / wall, 1),
        "by_status": {str(k): v for k, v in sorted(total.items())},
        "server_errors": sum(v for k, v in total.items() if k >= 500 and k != 503),
        "closed_while_uploading_oversize": total.get(0, 0),
        "unexpected": Counter(unexpected).most_common(10),
        "rss_mb": [round(x, 1) for x in rss],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=None, help="build or export folder to serve")
    ap.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    folder = args.scene
    if folder is None:
        from helpers.serve_scenes import make_build

        folder = make_build(Path(tmp.name) / "build")
    print(machine())
    server = Server(folder, workers=1)
    try:
        fuzz = run_schemathesis(server.url, args.examples, args.seed)
        print(f"schemathesis: {fuzz['test_cases']} test cases in {fuzz['seconds']} s, rc {fuzz['rc']}")
        print(fuzz["summary"])
        result = soak(server, args.clients, args.duration)
    finally:
        server.stop()
        tmp.cleanup()
    print(
        f"soak: {result['clients']} clients x {result['seconds']} s: {result['requests']} requests, "
        f"{result['rps']} req/s; by status {result['by_status']}; server errors {result['server_errors']}; "
        f"server RSS start/middle/end {result['rss_mb']} MiB"
    )
    if result["unexpected"]:
        print("unexpected answers:", result["unexpected"])
    if args.json:
        args.json.write_text(
            json.dumps({"schemathesis": fuzz, "soak": result, "machine": machine()}, indent=2)
        )
    return 0 if fuzz["rc"] == 0 and result["server_errors"] == 0 and not result["unexpected"] else 1


if __name__ == "__main__":
    sys.exit(main())
