"""Time ``simgen export`` on fusion builds of the synthetic presets (wall and CPU time, peak memory).

Usage: python bench/bench_export.py [--runs 3] [--presets tiny room two-rooms] [--workers 2] [--keep DIR]
       python bench/bench_export.py --compare-colliders [--runs 3] [--presets room] [--keep DIR]
                                    [--baseline-tree DIR]

``--compare-colliders`` alternates exports with the collider settings before the slab split (CoACD for every
thing, at most 8 hulls: the baseline, measured in the same run) and the current defaults, and prints per
setting the median export wall time, per class the median collider volume error and the median 95th
percentile collider-to-visual distance, and the physics checks' result. With ``--baseline-tree DIR`` the
baseline is another checkout's simgen (e.g. ``git archive main | tar -x -C DIR``) with its own defaults.

For each preset: ``simgen synth`` and ``simgen build --no-export`` once (not timed), then ``--runs`` fresh
``simgen export`` subprocesses (interpreter start-up and imports included). Prints the median wall time,
the median CPU time (user + system of the main process; forkserver worker processes are not counted),
the peak resident memory of one process, and per model the hull count and collider volume error from the last run's export.json. On a
shared machine the wall time also counts waiting for other processes: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # bench/ is on sys.path when run as a script


def _run(args: list[str]) -> None:
    # Progress bars of synth / build are noise here; a failure still raises (check=True).
    subprocess.run(
        [sys.executable, "-m", "simgen", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# Runs a command and prints the peak RSS (KiB) of its process tree: a fresh parent, so the synth and
# build runs of this script do not count.
_PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def export_once(
    build: Path, out: Path, workers: int, extra: list[str] | None = None, tree: Path | None = None
) -> tuple[float, float, float]:
    """(wall s, CPU s user + system, peak RSS MiB of its biggest process) of one ``simgen export``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "simgen",
        "export",
        str(build),
        "-o",
        str(out),
        "--quiet",
        "--workers",
        str(workers),
        *(extra or []),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # ``tree``: run another checkout's simgen (e.g. main's, for a before / after comparison in one run).
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    res = subprocess.run(
        [sys.executable, "-c", _PEAK, *cmd], check=True, capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(res.stdout.split()[-1]) / 1024  # Linux reports KiB


BASELINE = ["--collider-method", "coacd", "--max-hulls", "8"]  # the defaults before the slab split


def _by_class(summary: dict, key: str) -> dict[str, float]:
    vals: dict[str, list[float]] = {}
    for r in summary["models"]:
        if r["kind"] == "thing" and r.get(key) is not None:
            vals.setdefault(r["class"], []).append(float(r[key]))
    return {c: statistics.median(v) for c, v in sorted(vals.items())}


def compare_colliders(
    build: Path, out: Path, workers: int, runs: int, preset: str, baseline_tree: Path | None = None
) -> None:
    """Alternate baseline and default exports; print medians of wall time, volume error and p95 by class.

    The baseline is this tree with ``BASELINE``'s flags, or with ``baseline_tree`` that checkout's defaults.
    """
    walls: dict[str, list[float]] = {"baseline": [], "default": []}
    last: dict[str, dict] = {}
    settings = (("baseline", [] if baseline_tree else BASELINE, baseline_tree), ("default", [], None))
    for _ in range(runs):
        for name, extra, tree in settings:
            wall, _, _ = export_once(build, out / name, workers, extra, tree)
            walls[name].append(wall)
            last[name] = json.loads((out / name / "export.json").read_text())
    print(f"\n{preset}: collider settings, {runs} alternating runs each")
    for name in walls:
        s = last[name]
        things = [r for r in s["models"] if r["kind"] == "thing"]
        print(
            f"  {name:<8} export wall median {statistics.median(walls[name]):.1f} s "
            f"(runs {', '.join(f'{w:.1f}' for w in walls[name])}), {len(things)} things, "
            f"hulls median {statistics.median(r['hulls'] for r in things):.0f}"
        )
        err, p95 = _by_class(s, "volume_error"), _by_class(s, "collider_p95_cm")
        for c in err:
            print(
                f"    {c:<10} volume error median {100 * err[c]:6.1f}%   p95 distance median {p95.get(c, float('nan')):5.2f} cm"
            )
        phys = s.get("physics") or {}
        print(
            f"    physics passed: {phys.get('passed')}, spawn max {phys.get('spawn_max_penetration_mm')} mm, "
            f"failures: {phys.get('failures')}"
        )
    ratio = statistics.median(walls["default"]) / statistics.median(walls["baseline"])
    print(f"  wall time default / baseline: {ratio:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="export runs per preset (median reported)")
    ap.add_argument("--presets", nargs="+", default=["tiny", "room", "two-rooms"])
    ap.add_argument("--workers", type=int, default=2, help="simgen export --workers")
    ap.add_argument("--keep", default=None, help="keep scenes, builds and exports in this folder")
    ap.add_argument(
        "--compare-colliders",
        action="store_true",
        help="baseline (CoACD, 8 hulls) vs default collider settings, alternating runs",
    )
    ap.add_argument(
        "--baseline-tree",
        default=None,
        help="with --compare-colliders: the baseline is this source tree's simgen with its own defaults",
    )
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_export_"))
    root.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(f"load average before: {os.getloadavg()}")
    try:
        for preset in args.presets:
            scene, build, out = root / preset, root / f"{preset}_build", root / f"{preset}_export"
            if not (build / "panoptic_mesh.ply").is_file():
                _run(["synth", str(scene), "--preset", preset, "--seed", "0", "--overwrite", "--quiet"])
                _run(["build", str(scene), "-o", str(build), "--no-export"])
            if args.compare_colliders:
                compare_colliders(
                    build, root / f"{preset}_cmp", args.workers, args.runs, preset, args.baseline_tree
                )
                continue
            runs = [export_once(build, out, args.workers) for _ in range(args.runs)]
            walls, cpus, rss = zip(*runs, strict=True)
            summary = json.loads((out / "export.json").read_text())
            things = [r for r in summary["models"] if r["kind"] == "thing"]
            errs = [r["volume_error"] for r in things if r["volume_error"] is not None]
            print(
                f"\n{preset}: {len(summary['models'])} models ({len(things)} things), "
                f"export wall median {statistics.median(walls):.1f} s (runs {', '.join(f'{w:.1f}' for w in walls)}), "
                f"main-process CPU median {statistics.median(cpus):.1f} s, peak RSS {max(rss):.0f} MiB, "
                f"fallbacks {len(summary['fallbacks'])}"
            )
            if errs:
                print(
                    f"  thing collider volume error: median {100 * statistics.median(errs):.1f}%, "
                    f"max {100 * max(errs):.1f}%; hulls per thing: median "
                    f"{statistics.median(r['hulls'] for r in things):.0f}, max {max(r['hulls'] for r in things)}"
                )
            for r in summary["models"]:
                err = "-" if r["volume_error"] is None else f"{100 * r['volume_error']:.1f}%"
                print(
                    f"  {r['name']:<24} {r['kind']:<6} faces {r['faces']:>6}  hulls {r['hulls']:>2}  "
                    f"boxes {r['boxes']:>2}  vol.err {err:>6} ({r['volume_error_vs']})  {r['seconds']:.1f} s"
                )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
