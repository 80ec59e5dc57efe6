"""Time ``simgen synth`` for each preset (wall time of the whole command, as a user runs it).

Usage: python bench/bench_synth.py [--runs 3] [--presets tiny room two-rooms] [--out DIR]

Medians of ``--runs`` runs for tiny and room, one run for two-rooms (unless --runs-two-rooms).
Each run is a fresh ``simgen synth`` subprocess (interpreter start-up and imports included). CPU
time (user + system) is printed beside the wall time: on a shared machine the wall time also counts
waiting for other processes, which the load average before and after the runs shows.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # bench/ is on sys.path when run as a script


def time_once(preset: str, out: Path, seed: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one ``simgen synth`` subprocess."""
    cmd = [sys.executable, "-m", "simgen", "synth", str(out), "--preset", preset, "--seed", str(seed)]
    cmd += ["--overwrite", "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per preset (median reported)")
    ap.add_argument("--runs-two-rooms", type=int, default=1, help="runs of two-rooms")
    ap.add_argument("--presets", nargs="+", default=["tiny", "room", "two-rooms"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()

    print(machine())
    scratch = args.out or Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        for preset in args.presets:
            n = args.runs_two_rooms if preset == "two-rooms" else args.runs
            runs = [time_once(preset, scratch / preset, args.seed) for _ in range(n)]
            times, cpu = [r[0] for r in runs], [r[1] for r in runs]
            frames = len(list((scratch / preset / "rgb").iterdir()))
            med = statistics.median(times)
            print(
                f"{preset:>9}: median wall {med:6.2f} s over {n} run(s) "
                f"[{', '.join(f'{t:.2f}' for t in times)}], CPU {statistics.median(cpu):6.2f} s, "
                f"{frames} frames, {frames / med:.1f} frames/s"
            )
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"after: {machine().split(': ', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
