"""CPU seconds a ``simgen serve`` spends per request (server processes only), per mesh backend.

Usage: python bench/bench_serve_cpu.py --scene BUILD [--backends raycast zbuffer] [--requests 40]
                                       [--size 640x480] [--outputs depth panoptic] [--rounds 3]

On a shared machine a request rate mostly measures what the other processes leave over; the CPU time the
server's processes (parent and workers, ``/proc/<pid>/stat`` utime + stime) spend per answered request
does not depend on that. One server per backend (``--workers 1``), started together; ``--requests``
sequential ``POST /render`` (npz) per round at poses around the scene's default camera (``poses()`` of
bench_serve.py), the backends alternating round by round; medians over the rounds of CPU ms per request
and of the wall-clock latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_serve import Server, poses  # bench/ is on sys.path when run as a script
from machine import machine


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children that are still running (seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        except OSError:
            pass
    return total / tick


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", required=True, help="build or export folder to serve")
    ap.add_argument("--backends", nargs="+", default=["raycast", "zbuffer"], help="--backend values")
    ap.add_argument("--requests", type=int, default=40, help="sequential requests per round (5..2000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (1..20)")
    ap.add_argument("--size", default="640x480", help="image size WxH")
    ap.add_argument("--outputs", nargs="+", default=["depth", "panoptic"], help="outputs per request")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from simgen.serve.client import RenderClient

    W, H = (int(v) for v in args.size.lower().split("x"))
    n = int(min(max(args.requests, 5), 2000))
    print(machine(), file=sys.stderr)
    servers = {b: Server(Path(args.scene), 1, flags=("--backend", b)) for b in args.backends}
    try:
        default = RenderClient(next(iter(servers.values())).url).scene()["default_camera"]["pose"]
        pose_list = poses(default, n)
        cpu: dict[str, list[float]] = {b: [] for b in servers}
        lat: dict[str, list[float]] = {b: [] for b in servers}
        for _ in range(int(min(max(args.rounds, 1), 20))):
            for b, srv in servers.items():
                with RenderClient(srv.url) as c:
                    assert c.scene()["mesh_backend"] == b
                    c0 = cpu_seconds(srv.proc.pid)
                    ms = []
                    for p in pose_list:
                        t0 = time.perf_counter()
                        c.render(p, width=W, height=H, hfov_deg=90, outputs=args.outputs)
                        ms.append(1000 * (time.perf_counter() - t0))
                    cpu[b].append(1000 * (cpu_seconds(srv.proc.pid) - c0) / n)
                    lat[b].append(float(np.median(ms)))
        rows = {
            b: {
                "cpu_ms_per_request": round(float(np.median(cpu[b])), 1),
                "cpu_ms_rounds": [round(x, 1) for x in cpu[b]],
                "latency_p50_ms": round(float(np.median(lat[b])), 1),
            }
            for b in servers
        }
        out = {"size": args.size, "outputs": args.outputs, "requests": n, "load": os.getloadavg(), **rows}
        print(json.dumps(out), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "results": out}, indent=1) + "\n")
    finally:
        for srv in servers.values():
            srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
