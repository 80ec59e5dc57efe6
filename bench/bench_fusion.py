"""Benchmark the fusion builder (``simgen build --method fusion``) on the synthetic presets.

Usage: python bench/bench_fusion.py [--runs 3] [--presets tiny room two-rooms] [--scenes DIR]

For each preset (default noise, preset resolution: 96x72 tiny, 320x240 room and two-rooms) the scene
is synthesized once (or reused from ``--scenes``), then built ``--runs`` times, each build in a fresh
child process so that its peak resident memory is its own. Printed per preset:

* frames per second of the fusion loop (all ``train`` frames read, keyframes associated and integrated;
  mesh extraction and writing excluded), median over the runs, wall clock and CPU time. On a shared
  machine the wall time also counts waiting for other processes; the load average is printed with the
  machine so the two can be told apart.
* mesh extraction time (marching cubes and vertex labelling), median;
* peak RSS of the build process (max over the runs) and the size of the voxel arrays;
* quality against the GT (of the first run): share of predicted surface within 2 voxels of the GT mesh,
  semantic vertex accuracy, GT things with >= 500 visible pixels matched by one instance (IoU > 0.5),
  false instances, and whether the two-rooms twins got different ids.

Issue targets on a 2-core CPU: > 30 frames/s at 320x240 on ``room``, peak memory < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine import machine  # bench/ is on sys.path when run as a script


def load_avg() -> str:
    try:
        return "load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load avg n/a"


def _build_child(scene_dir: str, quality: bool, conn) -> None:
    """One build in a fresh process; sends back timings, memory and (optionally) quality figures."""
    from simgen.data.scene import load_scene
    from simgen.recon.fusion import FusionConfig, run_fusion
    from simgen.recon.fusion.quality import gt_quality

    scene = load_scene(scene_dir)
    cfg = FusionConfig()
    rec = run_fusion(scene, None, cfg, progress=False)
    out: dict[str, Any] = {
        "timings": rec["timings_s"],
        "counters": rec["counters"],
        "volume_mb": rec["volume_mb"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if quality:
        q = gt_quality(scene, rec["mesh"], cfg.voxel_size, scene.split_indices(cfg.split))
        twins = json.loads((Path(scene_dir) / "gt" / "synth.json").read_text()).get("twins", [])
        out["quality"] = {
            "within_2_voxels": q["within_2_voxels"],
            "median_distance_mm": 1000 * q["median_distance_m"],
            "semantic_accuracy": q["semantic_accuracy"],
            "things": len(q["things"]),
            "matched": len(q["matched"]),
            "unmatched": q["unmatched"],
            "predicted": q["predicted_instances"],
            "false": q["false_instances"],
            "twins": [q["dominant"].get(t, 0) for t in twins],
        }
    conn.send(out)
    conn.close()


def build_once(scene_dir: Path, quality: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # a clean interpreter: peak RSS of this build only
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_build_child, args=(str(scene_dir), quality, child))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"build of {scene_dir} failed (exit code {proc.exitcode})")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="builds per preset (medians reported)")
    ap.add_argument("--presets", nargs="+", default=["tiny", "room", "two-rooms"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scenes", type=Path, default=None, help="folder of synthesized scenes to reuse (created if missing)"
    )
    args = ap.parse_args()

    from simgen.synth import synthesize

    print(machine())
    print(f"start: {load_avg()}")
    scratch = args.scenes or Path(tempfile.mkdtemp(prefix="bench_fusion_"))
    try:
        for preset in args.presets:
            scene_dir = scratch / f"{preset}-{args.seed}"
            if not (scene_dir / "transforms.json").exists():
                synthesize(scene_dir, preset, seed=args.seed)
            runs = [build_once(scene_dir, quality=(k == 0)) for k in range(args.runs)]
            t = [r["timings"] for r in runs]
            fps = statistics.median(x["frames_per_second"] for x in t)
            cpu_fps = statistics.median(x["cpu_frames_per_second"] for x in t)
            mesh_s = statistics.median(x["mesh"] for x in t)
            c, q = runs[0]["counters"], runs[0]["quality"]
            each = ", ".join(f"{x['frames_per_second']:.1f}" for x in t)
            print(
                f"{preset:>9}: {c['frames']} frames ({c['keyframes']} keyframes), "
                f"fusion {fps:.1f} frames/s wall [{each}], "
                f"{cpu_fps:.1f} frames/CPU-s; mesh {mesh_s:.2f} s; "
                f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB (volume {runs[0]['volume_mb']:.0f} MB); "
                f"{c['vertices']} vertices"
            )
            twins = f", twins -> {q['twins']} ({'distinct' if len(set(q['twins']) - {0}) == 2 else 'NOT distinct'})"
            print(
                f"{'':>9}  quality: {100 * q['within_2_voxels']:.2f} % within 2 voxels "
                f"(median {q['median_distance_mm']:.1f} mm), semantic accuracy {100 * q['semantic_accuracy']:.1f} %, "
                f"things matched {q['matched']}/{q['things']} (unmatched {q['unmatched']}), "
                f"{q['predicted']} instances ({q['false']} false)" + (twins if q["twins"] else "")
            )
            sys.stdout.flush()
    finally:
        if args.scenes is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"end: {load_avg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
