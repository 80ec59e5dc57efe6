"""Benchmark the neural builder (``simgen build --method neural``) on synthetic scenes.

Usage: python bench/bench_neural.py [--presets tiny room] [--config fast] [--steps N]
                                    [--variants full no-prior no-dynamic no-head init-fusion init-none]
                                    [--fusion] [--twin-layout back-to-back|apart]
                                    [--threads 2] [--out DIR] [--json FILE]

For each scene preset (synthesised with ``--seed``) and each variant (the full method and the
ablations of the paper's Tab. V: no spatial prior G = Panoptic Lifting's ID field, no dynamic token
adjustment, no panoptic head) and the warm start from a fusion build forced on or off (``init-fusion``,
``init-none``), one build runs in a fresh subprocess so peak memory is that build's
own. Reported per build:

* seconds per iteration: median over all steps of the per-step wall time (from the JSONL log, whose
  lines are ``log_every`` steps apart), and the training, mesh and total build times;
* peak memory: the subprocess's max RSS (and CUDA peak allocation when on a GPU);
* quality via ``simgen.eval`` when importable: PQ^scene, semantic mIoU (2D), mesh Chamfer-L1 and
  F-score@5 cm against the scene's GT, on the test split;
* the machine, the load average before and after (wall times on a shared machine include waiting).

``--fusion`` adds the fusion builder on the same scenes for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

from machine import machine  # bench/ is on sys.path when run as a script

from simgen.synth.layout import TwinLayout

VARIANTS = {
    "full": {},
    "no-prior": {"spatial_prior": False},
    "no-dynamic": {"dynamic_tokens": False},
    "no-head": {"panoptic_head": False},
    # warm start from a fusion build (simgen.recon.neural.warmstart) forced on / off, whatever the preset says
    "init-fusion": {"init": "fusion"},
    "init-none": {"init": "none"},
}


def one_build(args: argparse.Namespace) -> int:
    """Child process: one build, prints a JSON line with its figures."""
    import torch

    from simgen.data.scene import load_scene

    torch.set_num_threads(args.threads)
    scene = load_scene(args.scene)
    t0 = time.perf_counter()
    if args.method == "fusion":
        from simgen.recon.fusion import FusionConfig, run_fusion

        record = run_fusion(scene, args.build, FusionConfig(), progress=False)
    else:
        from simgen.recon.neural import LOG_FILE, neural_config, run_neural

        overrides = json.loads(args.overrides)
        cfg = neural_config(args.config, device=args.device, **overrides)
        record = run_neural(scene, args.build, cfg, progress=not args.quiet)
    wall = time.perf_counter() - t0
    res = {"build_s": round(wall, 2), "timings_s": record["timings_s"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip
    if torch.cuda.is_available():
        res["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.method != "fusion":
        from simgen.recon.neural.plot import read_log

        log = read_log(Path(args.build) / LOG_FILE)
        per_step = [
            (b["time_s"] - a["time_s"]) / (b["step"] - a["step"])
            for a, b in zip(log[:-1], log[1:], strict=True)
            if b["step"] > a["step"]
        ]
        res["s_per_iter_median"] = round(statistics.median(per_step), 4) if per_step else None
        res["tokens_final"] = record["counters"]["tokens"]
        res["instances"] = record["counters"]["instances"]
        init = record["counters"].get("init", {})
        if "fusion_s" in init:
            res["init_s"] = round(init["fusion_s"] + init["prefit_s"], 2)
    print("RESULT " + json.dumps(res))
    return 0


def evaluate(build: Path, scene: Path) -> dict:
    try:
        from simgen.eval.config import EvalConfig
        from simgen.eval.evaluate import evaluate as run_eval
    except ImportError as e:
        return {"eval": f"simgen.eval not importable ({e})"}
    m = run_eval(build, scene, EvalConfig(pictures=False, quiet=True))
    m = m.get("metrics", m)
    return twin_ids(build, scene) | {
        "PQ_scene": round(m["panoptic"]["pq"], 4),
        "mIoU_2d": round(m["semantic_2d"]["miou"], 4),
        "chamfer_cm": round(m["geometry"]["chamfer_l1_cm"], 3),
        "fscore_5cm": round(m["geometry"]["fscore"], 4),
        "mCov_3d": round(m["instance_3d"]["mcov"], 4),
    }


def twin_ids(build: Path, scene_dir: Path) -> dict:
    """The predicted instance covering most of each two-rooms twin (same chair in both rooms, never seen
    together): two different non-zero ids mean the twins were kept apart; ``{}`` for scenes without twins."""
    twins = json.loads((scene_dir / "gt" / "synth.json").read_text()).get("twins", [])
    if not twins:
        return {}
    from simgen.data.scene import load_scene
    from simgen.folders import read_panoptic_mesh
    from simgen.recon.fusion.quality import gt_quality

    scene = load_scene(scene_dir)
    q = gt_quality(scene, read_panoptic_mesh(build / "panoptic_mesh.ply"), 0.03, scene.split_indices("all"))
    ids = [int(q["dominant"].get(t, 0)) for t in twins]
    return {"twins": ids, "twins_distinct": len(set(ids) - {0}) == len(twins)}


def run_child(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--_child", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "room"], help="simgen synth scene presets")
    ap.add_argument("--config", default="fast", help="neural config preset (fast / quality)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--set", default="{}", help="JSON of extra NeuralConfig overrides")
    ap.add_argument("--variants", nargs="+", default=["full"], choices=sorted(VARIANTS))
    ap.add_argument("--fusion", action="store_true", help="also run the fusion builder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0, help="scene seed")
    ap.add_argument(
        "--twin-layout",
        default="back-to-back",
        choices=get_args(TwinLayout),
        help="where the two-rooms twins stand (simgen synth --twin-layout); other presets ignore it",
    )
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (kept; default temporary)")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="neural", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return one_build(args)

    from simgen.synth import synthesize

    print(machine(), flush=True)
    scratch = args.out or Path(tempfile.mkdtemp(prefix="bench_neural_"))
    results = []
    for preset in args.presets:
        twins_apart = preset == "two-rooms" and args.twin_layout == "apart"
        scene = scratch / "scenes" / (preset + ("-apart" if twins_apart else ""))
        if not (scene / "transforms.json").is_file():  # a kept --out folder re-uses its scenes
            synthesize(scene, preset=preset, seed=args.seed, twin_layout=args.twin_layout)
        runs = [("fusion", "fusion", {})] if args.fusion else []
        for v in args.variants:
            over = {**json.loads(args.set), **VARIANTS[v]}
            if args.steps:
                over["steps"] = args.steps
            runs.append((f"neural/{v}", "neural", over))
        for name, method, over in runs:
            build = scratch / "builds" / preset / name.replace("/", "-")
            child = ["--scene", str(scene), "--build", str(build), "--method", method, "--config", args.config,
                     "--device", args.device, "--threads", str(args.threads), "--overrides", json.dumps(over)]  # fmt: skip
            if args.quiet:
                child.append("--quiet")
            res = {
                "scene": scene.name,
                "method": name,
                "config": args.config,
                "overrides": over,
                **run_child(child),
            }
            res.update(evaluate(build, scene))
            results.append(res)
            print(json.dumps(res), flush=True)
    print(f"after: {machine().split(': ', 1)[1]}")
    print(
        "\n| scene | method | s/iter | init s | train s | build s | peak RSS MB | PQ^scene | mIoU | Chamfer cm "
        "| F@5cm |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["timings_s"]
        print(
            f"| {r['scene']} | {r['method']} | {r.get('s_per_iter_median', '-')} | {r.get('init_s', '-')} | "
            f"{t.get('train', '-')} | "
            f"{r['build_s']} | {r['peak_rss_mb']} | {r.get('PQ_scene', '-')} | {r.get('mIoU_2d', '-')} | "
            f"{r.get('chamfer_cm', '-')} | {r.get('fscore_5cm', '-')} |"
            + (f" twins -> {r['twins']}" if "twins" in r else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
