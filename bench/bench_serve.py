"""Load test of ``simgen serve`` on loopback: latency per render and throughput with concurrent clients.

Usage: python bench/bench_serve.py [--scene BUILD_OR_EXPORT] [--workers 1 2] [--requests 60]
                                   [--clients 8] [--duration 20] [--sizes 320x240 640x480] [--json FILE]
                                   [--backend auto|zbuffer|raycast|raster] [--outputs depth+panoptic ...]
                                   [--baseline SIMGEN_SRC --repeats 3] [--tick-rates 10 30]

Without ``--scene`` it makes one: ``simgen synth --preset tiny`` then ``simgen build --no-export`` (a
fused ~190 k-face panoptic mesh, what a server holds in practice) in a temporary folder.

For each worker count it starts a real ``simgen serve`` process on 127.0.0.1 (ephemeral port), then

* latency: ``--requests`` sequential ``POST /render`` (npz) per size and output set, poses around the
  scene's default camera (yaw swept, so the content varies); p50 / p95 / p99 in milliseconds;
* throughput: ``--clients`` threads, each with its own keep-alive connection, rendering as fast as they can
  for ``--duration`` seconds; requests/s, errors (any non-200, 503 included) and the server processes'
  total resident memory at the start and the end of the run.

With ``--baseline SRC`` (a simgen source tree, e.g. ``git archive abca176 | tar -x -C /tmp/base``) it
instead starts that tree's server and this checkout's side by side and measures them alternately,
``--repeats`` rounds of the throughput run per case, and prints medians and the ratio; ``--tick-rates``
then adds what a Gazebo camera bridge sees at those rates (one client asking once per tick): p50 / p99
latency and the share of ticks answered within the period.

Counts and durations are bounded; nothing leaves the machine. The machine line (CPU, usable cores, load
average before and after) is printed because on a shared machine other processes take CPU too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import machine  # bench/ is on sys.path when run as a script

OUTPUT_SETS = {
    "rgb": ["rgb"],  # a colour camera alone (the Gaussian RGB rate)
    "depth+panoptic": ["depth", "panoptic"],
    "rgb+depth+panoptic": ["rgb", "depth", "panoptic"],
}


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load avg {a:.2f} {b:.2f} {c:.2f}"


def make_scene(root: Path) -> Path:
    scene, build = root / "scene", root / "build"
    for cmd in (
        ["synth", str(scene), "--preset", "tiny", "--quiet"],
        # The fused mesh is what is served; the Gazebo export `simgen build` also runs by default changes
        # only the frame, not the rendering cost, and takes minutes.
        ["build", str(scene), "-o", str(build), "--no-export", "--quiet"],
    ):
        subprocess.run([sys.executable, "-m", "simgen", *cmd], check=True, stdout=subprocess.DEVNULL)
    return build


class Server:
    def __init__(self, folder: Path, workers: int, src: str | None = None, flags: tuple[str, ...] = ()):
        """``simgen serve`` of this checkout, or of the simgen source tree ``src`` (a baseline)."""
        folder = Path(folder).resolve()
        cmd = [sys.executable, "-m", "simgen", "serve", str(folder), "--port", "0", "--workers", str(workers)]
        cmd += ["--quiet", "--queue-depth", "16", *flags]
        env = dict(os.environ)
        cwd = None
        if src:
            # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: started from a
            # checkout's root, the "baseline" would import that checkout's simgen. Start it inside src.
            env["PYTHONPATH"] = cwd = str(Path(src).resolve())
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.url = None
        for line in self.proc.stderr:
            if " on http://" in line:
                self.url = line.split(" on ", 1)[1].split("/ ", 1)[0]
                break
        if self.url is None:
            raise RuntimeError("server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        from simgen.serve.client import RenderClient

        deadline = time.monotonic() + 120
        while True:
            try:
                RenderClient(self.url, retries=0).health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(1.0 if workers > 1 else 0.0)  # every worker has built its BVH

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes (MiB)."""
        pids = [self.proc.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def poses(default: dict, n: int) -> list[dict]:
    """``n`` poses at the default camera's position, yaw swept over +-60 degrees."""
    from scipy.spatial.transform import Rotation

    q0 = Rotation.from_quat([default[k] for k in ("qx", "qy", "qz", "qw")])
    out = []
    for a in np.linspace(-np.pi / 3, np.pi / 3, n):
        q = (Rotation.from_euler("z", a) * q0).as_quat()
        out.append(
            {**{k: default[k] for k in "xyz"}, **dict(zip(("qx", "qy", "qz", "qw"), q.tolist(), strict=True))}
        )
    return out


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def latency(url: str, pose_list: list[dict], size: tuple[int, int], outputs: list[str]) -> dict:
    from simgen.serve.client import RenderClient

    with RenderClient(url, retries=0) as c:
        c.render(pose_list[0], width=size[0], height=size[1], outputs=outputs)  # connection + warm caches
        ms = []
        for p in pose_list:
            t0 = time.perf_counter()
            c.render(p, width=size[0], height=size[1], outputs=outputs, hfov_deg=90)
            ms.append((time.perf_counter() - t0) * 1000)
    return percentiles(ms)


def throughput(server: Server, pose_list: list[dict], size, outputs, clients: int, duration: float) -> dict:
    from simgen.serve.client import RenderClient, RenderError

    stop = time.monotonic() + duration
    ok, errors, ms = [0] * clients, [0] * clients, [[] for _ in range(clients)]

    def run(k: int) -> None:
        with RenderClient(server.url, retries=0, timeout=30) as c:
            i = k
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    c.render(
                        pose_list[i % len(pose_list)],
                        width=size[0],
                        height=size[1],
                        outputs=outputs,
                        hfov_deg=90,
                    )
                    ok[k] += 1
                    ms[k].append((time.perf_counter() - t0) * 1000)
                except (RenderError, OSError):
                    errors[k] += 1
                i += clients

    rss0 = server.rss_mb()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    rss_mid = None
    while any(t.is_alive() for t in threads):
        time.sleep(min(duration / 2, 5.0))
        rss_mid = rss_mid or server.rss_mb()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_ms = [m for row in ms for m in row]
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(ok),
        "errors": sum(errors),
        "rps": sum(ok) / wall,
        **(percentiles(all_ms) if all_ms else {}),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_mid": round(rss_mid or rss0, 1),
        "rss_mb_end": round(server.rss_mb(), 1),
    }


def tick_latency(url: str, pose_list: list[dict], size, outputs, rate_hz: float, seconds: float) -> dict:
    """What a Gazebo camera bridge sees: one client asking at ``rate_hz`` of wall time (the next request goes
    out at the next tick, or at once when the previous answer came late, as the asynchronous bridge does).
    Returns p50 / p99 latency (ms), the share of ticks answered within one period and the achieved rate."""
    from simgen.serve.client import RenderClient

    period = 1.0 / rate_hz
    ms, late = [], 0
    with RenderClient(url, retries=0, timeout=30) as c:
        c.render(pose_list[0], width=size[0], height=size[1], outputs=outputs, hfov_deg=90)
        t_start = time.perf_counter()
        nxt = t_start
        i = 0
        while time.perf_counter() - t_start < seconds:
            wait = nxt - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            c.render(
                pose_list[i % len(pose_list)], width=size[0], height=size[1], outputs=outputs, hfov_deg=90
            )
            dt = time.perf_counter() - t0
            ms.append(1000 * dt)
            late += dt > period
            nxt = max(nxt + period, time.perf_counter())
            i += 1
        wall = time.perf_counter() - t_start
    return {
        "rate_hz": rate_hz,
        **percentiles(ms),
        "on_time": 1 - late / len(ms),
        "achieved_hz": len(ms) / wall,
    }


def compare(args, folder: Path, results: dict) -> None:
    """``--baseline``: this checkout's server and the baseline's, started together and measured alternately
    (``--repeats`` rounds per case), so both see the same load on a shared machine; medians and ratios."""
    from simgen.serve.client import RenderClient

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    duration = min(max(args.duration, 1.0), 120.0)
    for workers in args.workers:
        servers = {
            "baseline": Server(folder, workers, src=args.baseline),
            "this": Server(folder, workers, flags=("--backend", args.backend)),
        }
        try:
            default = RenderClient(servers["this"].url).scene()["default_camera"]["pose"]
            pose_list = poses(default, 60)
            for size in sizes:
                for name in args.outputs:
                    outputs = OUTPUT_SETS[name]
                    rps: dict[str, list[float]] = {k: [] for k in servers}
                    p99: dict[str, list[float]] = {k: [] for k in servers}
                    for _ in range(args.repeats):
                        for k, srv in servers.items():
                            thr = throughput(srv, pose_list, size, outputs, args.clients, duration)
                            rps[k].append(thr["rps"])
                            p99[k].append(thr.get("p99_ms", math.nan))
                    row = {
                        "workers": workers,
                        "size": f"{size[0]}x{size[1]}",
                        "outputs": name,
                        **{f"{k}_rps": rps[k] for k in servers},
                        **{f"{k}_rps_median": float(np.median(rps[k])) for k in servers},
                        **{f"{k}_p99_ms_median": float(np.median(p99[k])) for k in servers},
                        "load": load(),
                    }
                    row["ratio"] = row["this_rps_median"] / row["baseline_rps_median"]
                    results["compare"].append(row)
                    print(
                        f"workers {workers} {row['size']} {name:>18}: baseline {row['baseline_rps_median']:.1f} "
                        f"req/s {[round(x, 1) for x in rps['baseline']]}, this {row['this_rps_median']:.1f} req/s "
                        f"{[round(x, 1) for x in rps['this']]}, x{row['ratio']:.2f} ({load()})",
                        flush=True,
                    )
            for rate in args.tick_rates:
                for size in sizes:
                    for name in args.outputs:
                        for k, srv in servers.items():
                            tl = tick_latency(srv.url, pose_list, size, OUTPUT_SETS[name], rate, duration)
                            row = {
                                "impl": k,
                                "workers": workers,
                                "size": f"{size[0]}x{size[1]}",
                                "outputs": name,
                            }
                            results["ticks"].append(row | tl)
                            print(
                                f"tick {rate:g} Hz {k:>8} workers {workers} {row['size']} {name:>18}: "
                                f"p50 {tl['p50_ms']:.0f} p99 {tl['p99_ms']:.0f} ms, on time "
                                f"{100 * tl['on_time']:.0f} %, {tl['achieved_hz']:.1f} Hz",
                                flush=True,
                            )
        finally:
            for srv in servers.values():
                srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", help="build or export folder to serve (default: synth tiny + build)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server process counts to test")
    ap.add_argument("--requests", type=int, default=60, help="sequential requests per latency figure")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients in the throughput run")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per throughput run (max 120)")
    ap.add_argument("--sizes", nargs="+", default=["320x240", "640x480"], help="image sizes WxH")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--baseline",
        help="a simgen source tree to compare with in the same run (e.g. `git archive abca176 | tar -x -C DIR`)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds per case with --baseline")
    ap.add_argument("--outputs", nargs="+", default=list(OUTPUT_SETS), choices=list(OUTPUT_SETS))
    ap.add_argument(
        "--backend", default="raycast", help="this checkout's --backend (auto, zbuffer, raycast, raster)"
    )
    ap.add_argument("--tick-rates", type=float, nargs="*", default=[], help="Gazebo tick latency runs (Hz)")
    args = ap.parse_args()
    duration = min(max(args.duration, 1.0), 120.0)
    requests = int(min(max(args.requests, 5), 2000))
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]

    print(machine())
    print(f"before: {load()}")
    results: dict = {"machine": machine(), "load_before": load(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(args.scene) if args.scene else make_scene(Path(tmp))
        from simgen.serve.scene import load_render_scene

        scene = load_render_scene(folder, warm=False)
        print(f"scene: {folder} ({len(scene.mesh.faces)} faces)")
        results["faces"] = int(len(scene.mesh.faces))
        if args.baseline:
            results |= {"baseline": args.baseline, "compare": [], "ticks": []}
            compare(args, folder, results)
        for workers in [] if args.baseline else args.workers:
            server = Server(folder, workers, flags=("--backend", args.backend))
            try:
                from simgen.serve.client import RenderClient

                default = RenderClient(server.url).scene()["default_camera"]["pose"]
                pose_list = poses(default, requests)
                for size in sizes:
                    for name in args.outputs:
                        outputs = OUTPUT_SETS[name]
                        lat = latency(server.url, pose_list, size, outputs)
                        thr = throughput(server, pose_list, size, outputs, args.clients, duration)
                        row = {
                            "workers": workers,
                            "size": f"{size[0]}x{size[1]}",
                            "outputs": name,
                            "latency": lat,
                            "throughput": thr,
                        }
                        results["runs"].append(row)
                        print(
                            f"workers {workers} {size[0]}x{size[1]} {name:>18}: latency p50 {lat['p50_ms']:.1f} "
                            f"p95 {lat['p95_ms']:.1f} p99 {lat['p99_ms']:.1f} ms | {thr['clients']} clients "
                            f"{thr['seconds']:.0f} s: {thr['rps']:.1f} req/s, {thr['errors']} errors, "
                            f"p50 {thr.get('p50_ms', math.nan):.0f} p99 {thr.get('p99_ms', math.nan):.0f} ms, "
                            f"RSS {thr['rss_mb_start']:.0f} -> {thr['rss_mb_mid']:.0f} -> {thr['rss_mb_end']:.0f} MiB",
                            flush=True,
                        )
            finally:
                server.stop()
    print(f"after: {load()}")
    results["load_after"] = load()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
