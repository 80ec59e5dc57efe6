"""Robustness of the builders to realistic input: ``two-rooms`` under ``--noise-profile realistic``.

Usage:
    python bench/bench_robustness.py                                  # fusion, every variant
    python bench/bench_robustness.py --variants realistic clean --tag=-align --flags=--no-fusion.align-to-model
    python bench/bench_robustness.py --variants clean realistic --methods fusion neural
    python bench/bench_robustness.py --out /tmp/robust --runs 3      # 3 builds per row, median time

Variants (each a ``simgen synth`` scene of the same preset and seed, so layout and walk are equal):

* ``clean``: today's default noise (``--noise-profile clean``): the baseline, measured in the same run;
* ``realistic``: every family of the realistic profile;
* ``depth``, ``pose``, ``segmenter``: the clean profile plus one realistic family alone
  (:data:`FAMILIES` lists the fields each family takes from the realistic profile).

Each build runs in a fresh process (bench/run.py's worker), is scored by ``simgen eval`` on the
scene's test split (PQ^scene, F-score at 5 cm, Chamfer-L1) under both protocols (``--poses stored``:
rendered at the drifted stored poses, GT culled by the scene's depth; ``--poses true``: at the true
poses of ``gt/gt.json`` aligned rigidly onto the stored ones, GT culled by exact visibility) and by
:func:`simgen.recon.fusion.quality.gt_quality` for the two-rooms twins (``twins apart``: the two
identical chairs got two different instances). Results accumulate in ``OUT/robustness.json``; the
markdown table is printed. Not part of CI (a fusion build of two-rooms takes minutes on 2 cores,
a neural one ~12 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_line  # noqa: E402
from run import git_commit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

FAMILIES: dict[str, tuple[str, ...]] = {
    "depth": (
        "depth_sigma_m",
        "depth_sigma_quad",
        "depth_quant",
        "depth_min_m",
        "depth_max_m",
        "grazing_deg",
        "dark_threshold",
        "dark_drop",
        "glossy_categories",
        "glossy_drop",
        "flying_prob",
        "rgb_sigma",
    ),
    "pose": ("pose_rot_deg", "pose_trans_m", "drift_trans_m", "drift_rot_deg", "blur_prob"),
    "segmenter": (
        "miss_prob",
        "split_prob",
        "split_min_area_px",
        "wrong_class_prob",
        "merge_prob",
        "similar_class_prob",
        "miss_run_rate",
        "miss_run_frames",
        "duplicate_prob",
    ),
}
VARIANTS = ("clean", "realistic", "depth", "pose", "segmenter")


def noise_of(variant: str) -> dict[str, Any]:
    """The NoiseConfig keyword arguments of ``variant``."""
    from simgen.synth.noise import PROFILES

    if variant in ("clean", "realistic"):
        return {"profile": variant}
    return {k: PROFILES["realistic"][k] for k in FAMILIES[variant]}


def ensure_scene(root: Path, variant: str, preset: str, seed: int, extra: dict[str, Any]) -> Path:
    from simgen.synth import synthesize

    scene = root / "scenes" / f"{preset}-{variant}"
    want = {**noise_of(variant), **extra}
    meta = scene / "gt" / "synth.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("seed") == seed and m.get("bench_noise") == json.loads(json.dumps(want)):
            return scene
    t0 = time.perf_counter()
    synthesize(scene, preset=preset, seed=seed, noise=want, overwrite=True, quiet=False)
    info = json.loads(meta.read_text())
    info["bench_noise"] = want
    meta.write_text(json.dumps(info))
    print(f"[robust] synthesised {scene} in {time.perf_counter() - t0:.0f} s", flush=True)
    return scene


def run_eval(build: Path, scene_dir: Path, samples: int, poses: str = "true") -> dict[str, Any]:
    """``simgen eval --poses POSES`` on the test split (numbers only); writes BUILD/eval/metrics.json like
    the command (``metrics-stored.json`` for the stored-pose protocol, so both stay)."""
    from simgen.data import io
    from simgen.eval.config import EvalConfig
    from simgen.eval.evaluate import evaluate
    from simgen.folders import EVAL_DIR, METRICS_JSON

    cfg = EvalConfig(split="test", samples=samples, pictures=False, quiet=True, poses=poses)
    metrics = evaluate(build, scene_dir, cfg)["metrics"]
    name = METRICS_JSON if poses == "true" else Path(METRICS_JSON).stem + "-stored.json"
    io.write_json(build / EVAL_DIR / name, metrics)
    return metrics


def build_reused(method: str, scene: Path, build: Path, flags: list[str]) -> dict[str, Any]:
    """``simgen build`` (no Gaussians, no export) in a fresh process, unless ``build`` already holds
    this scene's finished build with these flags (its report is kept in the build folder)."""
    from simgen.data import io

    report_path = build / "bench_report.json"
    if report_path.is_file():
        rep = json.loads(report_path.read_text())
        if rep.get("ok") and rep.get("scene") == str(scene) and rep.get("flags") == flags:
            return rep
    cmd = [sys.executable, "-m", "simgen", "build", str(scene), "-o", str(build), "--method", method,
           "--no-gaussians", "--no-export", "--overwrite", "-q", *flags]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    rep = {"ok": proc.returncode == 0, "build_s": time.perf_counter() - t0, "scene": str(scene), "flags": flags,
           "command": " ".join(cmd[1:])}  # fmt: skip
    if rep["ok"]:
        io.write_json(report_path, rep)
    else:
        rep["error"] = f"simgen build exited with {proc.returncode}"
    return rep


def twins_apart(build: Path, scene_dir: Path) -> bool | None:
    """Whether the two GT twins are covered mostly by two different predicted instances."""
    from simgen.data.scene import load_scene
    from simgen.folders import MESH_FILE, read_panoptic_mesh
    from simgen.recon.fusion.quality import gt_quality

    twins = json.loads((scene_dir / "gt" / "synth.json").read_text()).get("twins", [])
    if len(twins) != 2:
        return None
    scene = load_scene(scene_dir, check_images=False)
    q = gt_quality(scene, read_panoptic_mesh(build / MESH_FILE), 0.04, scene.split_indices("train"))
    a, b = (q["dominant"].get(t, 0) for t in twins)
    return bool(a and b and a != b)


def row(metrics: dict[str, Any]) -> dict[str, Any]:
    """PQ^scene (all test frames pooled), F-score at 5 cm (with its precision and recall), Chamfer-L1 and
    the protocol of ``simgen eval``'s metrics."""
    pan, geo = metrics["panoptic"], metrics["geometry"]
    p = metrics.get("protocol") or {}
    a = p.get("alignment") or {}
    return {"pq": pan["pq"], "f1": geo["fscore"], "precision": geo["precision"], "recall": geo["recall"],
            "chamfer_cm": geo["chamfer_l1_cm"], "poses": p.get("poses", "stored"),
            "align_rms_mm": a.get("residual_rms_mm")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/simgen-robustness", help="scenes, builds and robustness.json")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--methods", nargs="+", default=["fusion"], choices=["fusion", "neural"])
    ap.add_argument("--preset", default="two-rooms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=1, help="builds per row (median build time)")
    ap.add_argument("--samples", type=int, default=200_000, help="eval surface samples")
    ap.add_argument("--noise", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="extra NoiseConfig fields for every variant (e.g. drift_rot_deg=0)")  # fmt: skip
    ap.add_argument("--tag", default="", help="suffix of the result rows (for --noise / --flags experiments)")
    ap.add_argument("--flags", action="extend", nargs="*", default=[], metavar="FLAG",
                    help="extra 'simgen build' flags, one per --flags=FLAG (repeatable), e.g. "
                         "--flags=--no-fusion.align-to-model --flags=--fusion.noise-weighting")  # fmt: skip
    args = ap.parse_args(argv)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.noise)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "robustness.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    print(machine_line(machine_info()), flush=True)
    for variant in args.variants:
        scene = ensure_scene(out, variant, args.preset, args.seed, extra)
        for method in args.methods:
            key = f"{method}/{variant}{args.tag}"
            times, rep = [], {}
            for r in range(args.runs):
                build = out / "builds" / f"{method}-{variant}{args.tag}-{r}"
                rep = build_reused(method, scene, build, args.flags)
                if not rep.get("ok"):
                    print(f"[robust] {key}: build failed: {rep.get('error')}", flush=True)
                    break
                times.append(rep["build_s"])
            if not rep.get("ok"):
                continue
            metrics = run_eval(build, scene, args.samples)
            stored = row(run_eval(build, scene, args.samples, "stored"))
            results[key] = {
                **row(metrics),
                "stored_poses": {k: stored[k] for k in ("pq", "f1", "precision", "recall", "chamfer_cm")},
                "twins_apart": twins_apart(build, scene),
                "build_s": statistics.median(times),
                "runs": len(times),
                "noise": {**noise_of(variant), **extra},
                "flags": args.flags,
                "commit": git_commit(),
                "machine": machine_line(machine_info()),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            # Re-read first: another run may have added rows meanwhile (runs share OUT's scenes).
            results = {**(json.loads(res_path.read_text()) if res_path.is_file() else {}), key: results[key]}
            res_path.write_text(json.dumps(results, indent=1))
            print(f"[robust] {key}: {json.dumps(results[key])}", flush=True)
    print(table(results))
    return 0


def table(results: dict[str, dict]) -> str:
    lines = [
        "| method | input | PQ^scene stored / true poses | F@5cm stored / true | Chamfer-L1 (cm) stored / true "
        "| twins apart | build (s) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]

    def f(x: Any, scale: float = 1.0) -> str:
        return "-" if x is None else f"{x * scale:.3f}"

    for key, r in results.items():
        method, variant = key.split("/", 1)
        twins = {True: "yes", False: "no", None: "-"}[r["twins_apart"]]
        # Rows of earlier runs hold one protocol only (the stored poses).
        s = r.get("stored_poses", r)
        true = r if r.get("poses") == "true" else {}
        cells = [f"{f(s.get(k))} / {f(true.get(k))}" for k in ("pq", "f1", "chamfer_cm")]
        lines.append(f"| {method} | {variant} | {' | '.join(cells)} | {twins} | {r['build_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
