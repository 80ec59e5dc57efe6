"""Keyframe pose error with and without fusion's frame-to-model alignment, on a synthetic scene.

Usage: python bench/bench_align_drift.py SCENE [--frames 300] [--every 3] [--variants stored align robust]

SCENE is a ``simgen synth`` scene (its ``gt/synth.json`` holds the true poses), e.g. one written by
bench/bench_robustness.py (``OUT/scenes/two-rooms-pose``). Every ``--every``-th frame is fused into a
depth-only TSDF (voxel 3 cm, truncation 9 cm, depth 0.1-6 m), once per variant:

* ``stored``: at the stored poses;
* ``align``: at poses refined by :func:`simgen.recon.fusion.align.align_to_model` (the correction
  carried forward, as ``simgen build --fusion.align-to-model`` does), raw depth, equal weights;
* ``robust``: the same on depth with flying pixels removed (``--flying-slope``), inverse-noise-variance
  weights in the volume and the alignment (``--noise-model``) and the degeneracy check
  (``--degeneracy``), as ``simgen build --fusion.align-to-model`` does with the fusion defaults.

Printed: mean and max translation and rotation error of the fused frames against the true poses, and
how many alignments were accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from scipy.spatial.transform import Rotation

    from simgen.data.camera import opengl_to_opencv
    from simgen.data.scene import load_scene
    from simgen.recon.fusion.align import align_to_model
    from simgen.recon.fusion.depthfilter import noise_weight, remove_flying_pixels, surface_tolerance
    from simgen.recon.fusion.tsdf import VoxelBlockVolume

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene")
    ap.add_argument("--frames", type=int, default=0, help="first N frames (0 = all)")
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["stored", "align", "robust"],
                    choices=["stored", "align", "robust"])  # fmt: skip
    ap.add_argument("--flying-slope", type=float, default=3.0, help="'robust': flying-pixel slope")
    ap.add_argument(
        "--noise-model", type=float, nargs=2, default=[0.0012, 0.0019], metavar=("SIGMA_M", "QUAD")
    )
    ap.add_argument("--degeneracy", type=float, default=0.02, help="'robust': degeneracy ratio")
    args = ap.parse_args(argv)
    print(machine_line(machine_info()), flush=True)
    scene = load_scene(args.scene, validate=False)
    true = [
        opengl_to_opencv(np.array(p))
        for p in json.loads((Path(args.scene) / "gt/synth.json").read_text())["true_c2w"]
    ]
    K = scene.frames[0].intrinsics
    n = args.frames or len(scene)
    model = tuple(args.noise_model)
    min_w = 0.999 * float(noise_weight(np.array([6.0], np.float32), *model)[0])
    for variant in args.variants:
        align, robust = variant != "stored", variant == "robust"
        vol = VoxelBlockVolume(0.03, 0.09, 1)
        corr, et, er, acc = np.eye(4), [], [], 0
        t0 = time.perf_counter()
        for i in range(0, n, args.every):
            d = scene.depth(i)
            if robust:
                d = remove_flying_pixels(d, surface_tolerance(d, K.fx, args.flying_slope, *model))
            d[(d < 0.1) | (d > 6.0)] = 0
            pose = scene.frames[i].c2w_cv
            if align and i > 0:
                kw = {"noise_model": model, "min_weight": min_w, "degeneracy_ratio": args.degeneracy}
                res = align_to_model(vol, d, K, corr @ pose, **(kw if robust else {}))
                acc += res.accepted
                pose = res.c2w
                corr = pose @ np.linalg.inv(scene.frames[i].c2w_cv)
            et.append(np.linalg.norm(pose[:3, 3] - true[i][:3, 3]))
            er.append(np.rad2deg(Rotation.from_matrix(pose[:3, :3] @ true[i][:3, :3].T).magnitude()))
            vol.integrate(d, K, pose, depth_weight=noise_weight(d, *model) if robust else None)
        et_a, er_a = np.array(et), np.array(er)
        print(
            f"{variant}: translation error mean {1000 * et_a.mean():.1f} mm, max {1000 * et_a.max():.1f} mm; "
            f"rotation error mean {er_a.mean():.2f} deg, max {er_a.max():.2f} deg; accepted {acc}/{len(et) - 1}; "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
