"""``simgen batch`` (embedded Ray) against a sequential loop of the same library calls, same machine, same run.

Usage: python bench/bench_batch.py [--scenes 8] [--preset tiny] [--runs 3] [--stages validate,build]
                                   [--num-cpus 2] [--out DIR]

For each run, on the same freshly synthesised scenes:

* sequential: one Python subprocess that loops over the scenes calling what `simgen build` calls
  (``load_scene`` then ``simgen.pipeline.build`` with the stages asked for), one scene after another;
* batch: one ``simgen batch MANIFEST -o OUT --num-cpus N`` subprocess (Ray start-up included);
* rerun: the same ``simgen batch`` again on the finished output (every stage skipped: the records are
  read and Ray is not started);
* Ray alone: ``ray.init`` + ``ray.shutdown`` of an embedded instance in a fresh interpreter, the fixed
  cost a batch with work pays.

Reported (medians over runs): wall seconds of each, throughput ratio (sequential wall / batch wall),
the rerun, Ray's fixed cost, overhead per task (CPU-slot seconds of the batch not spent inside a
stage function, over the tasks: ((wall - Ray alone) * cpus - sum of stage seconds) / tasks; it
includes the slots left idle at the end), and peak memory (the sum of the resident set sizes of the
command's whole process tree, sampled every 0.1 s from /proc: Ray's GCS, raylet and workers included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import machine

SEQUENTIAL = """
import sys, json
from simgen.data.scene import load_scene
from simgen.pipeline import BuildConfig, build
scenes, out, stages = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
for name, path in scenes:
    load_scene(path)
    if "build" in stages:
        build(path, f"{out}/{name}", BuildConfig(gaussians="gaussians" in stages,
              worlds="export" in stages, overwrite=True, progress=False))
"""


RAY_START = """
import sys, time
t0 = time.perf_counter()
import ray
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False,
         object_store_memory=128 * 2**20)
ray.shutdown()
"""


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MB (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(d.name))
        rss[int(d.name)] = int(stat[21])  # pages
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total * 4096 / 2**20


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak tree RSS MB) of a subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return wall, peak[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stages", default="validate,build", help="batch stages (validate,build[,export])")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    stages = args.stages.split(",")
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_batch_"))
    from simgen.synth import synthesize

    names = [f"s{i}" for i in range(args.scenes)]
    for i, n in enumerate(names):
        synthesize(work / "scenes" / n, args.preset, seed=i)
    manifest = work / "batch.json"
    manifest.write_text(
        json.dumps(
            {
                "defaults": {"stages": stages},
                "scenes": [{"name": n, "path": str(work / "scenes" / n)} for n in names],
            }
        )
    )
    scenes_arg = json.dumps([[n, str(work / "scenes" / n)] for n in names])
    rows = []
    for run in range(args.runs):
        for d in ("seq", "batch"):
            shutil.rmtree(work / d, ignore_errors=True)
        seq_wall, seq_mem = run_measured(
            [sys.executable, "-c", SEQUENTIAL, scenes_arg, str(work / "seq"), ",".join(stages)]
        )
        batch_cmd = [sys.executable, "-m", "simgen", "batch", str(manifest), "-o", str(work / "batch")]
        batch_cmd += ["--num-cpus", str(args.num_cpus), "-q"]
        batch_wall, batch_mem = run_measured(batch_cmd)
        report = json.loads((work / "batch" / "batch.json").read_text())
        stage_s = sum(s["seconds"] or 0 for r in report["scenes"] for s in r["stages"].values())
        tasks = report["totals"]["stages_run"]
        rerun_wall, _ = run_measured(batch_cmd)
        rerun = json.loads((work / "batch" / "batch.json").read_text())
        assert rerun["totals"]["stages_run"] == 0, rerun["totals"]
        ray_wall, _ = run_measured([sys.executable, "-c", RAY_START, str(args.num_cpus)])
        overhead = ((batch_wall - ray_wall) * args.num_cpus - stage_s) / tasks
        row = {
            "seq_s": seq_wall,
            "batch_s": batch_wall,
            "ratio": seq_wall / batch_wall,
            "rerun_s": rerun_wall,
            "ray_start_s": ray_wall,
            "overhead_per_task_s": overhead,
            "stage_s": stage_s,
            "tasks": tasks,
            "seq_peak_mb": seq_mem,
            "batch_peak_mb": batch_mem,
        }
        rows.append(row)
        print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        f"\n{args.scenes} x {args.preset}, stages {','.join(stages)}, --num-cpus {args.num_cpus}, {args.runs} runs"
    )
    print(machine())
    print("| figure | median |\n| --- | ---: |")
    print(f"| sequential loop, wall (s) | {med['seq_s']:.1f} |")
    print(f"| simgen batch, wall (s), Ray start-up included | {med['batch_s']:.1f} |")
    print(f"| throughput ratio (sequential / batch) | {med['ratio']:.2f} |")
    print(f"| rerun, every stage skipped (s; Ray is not started) | {med['rerun_s']:.1f} |")
    print(f"| Ray start + shutdown alone (s; python -c, import included) | {med['ray_start_s']:.1f} |")
    print(f"| overhead per task (CPU-slot s outside stage functions) | {med['overhead_per_task_s']:.2f} |")
    print(f"| tasks per run | {med['tasks']:.0f} |")
    print(f"| peak memory, sequential (MB, process tree RSS) | {med['seq_peak_mb']:.0f} |")
    print(f"| peak memory, batch (MB, process tree RSS incl. Ray) | {med['batch_peak_mb']:.0f} |")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
