"""The CPU Gaussian rasterizer for serving: the compiled (numba) kernel against the torch inference path.

Usage: python bench/bench_gaussian_cpu.py [--runs 7] [--counts 50000] [--sizes 320x240 640x480]
                                          [--ply BUILD/gaussians.ply] [--threads N] [--json FILE]

Scene: Gaussians sampled on the GT mesh of a synthetic ``room`` (flat, opacity 0.9, like trained surface
splats; the same scene as bench_splat.py), or a trained ``gaussians.ply`` with ``--ply``; cameras: the
scene's test views (with ``--ply``, the build's scene), resized to each size. Per case the two backends
alternate (``backend="torch"`` then ``backend="numba"``, one warm-up each) so both see the same load on a
shared machine; medians of ``--runs``. The torch path runs on one thread (as the server's), the compiled
kernel on ``--threads`` (default: every core numba has). Agreement: the share of RGB pixels whose 8-bit values are within 1
of the torch path's (the issue's criterion), and the largest difference. Also the numba first-call cost:
compile from scratch (a fresh cache folder) and load from the cache, each in a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # noqa: E402  (bench/ is on sys.path when run as a script)

torch.set_num_threads(1)  # what simgen serve and build use on this shared 2-core machine


def scene_gaussians(preset: str, count: int, ply: str | None, scene_dir: str | None = None):
    """Gaussians and test cameras ``[(viewmat (4, 4), K (3, 3) at the scene's size, width, height)]``."""
    from simgen.synth import synthesize

    if ply:
        from simgen.render.gaussians import load_ply

        g = load_ply(ply)
        build = json.loads((Path(ply).parent / "build.json").read_text())
        from simgen.data import load_scene

        scene = load_scene(build["scene"])
    else:
        from bench_splat import gt_panoptic_mesh

        from simgen.splat.gaussians import init_from_mesh

        if scene_dir:
            from simgen.data import load_scene

            scene = load_scene(scene_dir)
        else:
            from simgen.data import load_scene

            scene = load_scene(
                synthesize(Path(tempfile.mkdtemp(prefix="bench_gauss_")) / "scene", preset=preset)
            )
        g = init_from_mesh(gt_panoptic_mesh(scene), count=count, seed=0, opacity=0.9)
    cams = []
    for i in scene.split_indices("test")[:4]:
        f = scene.frames[i]
        cams.append((torch.from_numpy(np.linalg.inv(f.c2w_cv)).float(), f.intrinsics))
    return g, cams


def to_u8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)  # as render_gaussians encodes


def first_call_cost() -> dict:
    """Seconds for the first render in a new process: compiling into an empty cache, then loading it."""
    code = (
        "import time, torch; t = time.perf_counter();"
        "from simgen.render.rasterize import rasterize;"
        "g = torch.Generator().manual_seed(0); n = 200;"
        "m = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0]);"
        "K = torch.tensor([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]);"
        "rasterize(m, torch.randn(n, 4), torch.full((n, 3), 0.05), torch.full((n,), 0.8), torch.rand(n, 3),"
        " torch.eye(4), K, 64, 48, backend='numba');"
        "print(time.perf_counter() - t)"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for key in ("compile_s", "cached_s"):
            r = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            out[key] = float(r.stdout.split()[-1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--counts", type=int, nargs="+", default=[50_000])
    ap.add_argument("--sizes", nargs="+", default=["320x240", "640x480"])
    ap.add_argument("--preset", default="room")
    ap.add_argument("--scene", help="a synthetic scene folder to sample on (default: synthesize --preset)")
    ap.add_argument("--ply", help="a trained gaussians.ply (its build.json names the scene for cameras)")
    ap.add_argument("--threads", type=int, help="threads of the compiled kernel (default: every core)")
    ap.add_argument("--no-compile-cost", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    from simgen.render.rasterize_numba import render_threads, set_render_threads

    set_render_threads(args.threads)
    print(machine(), f"| load avg {os.getloadavg()[0]:.2f} | numba threads {render_threads()}", flush=True)
    rows = []
    for count in [None] if args.ply else args.counts:
        g, cams = scene_gaussians(args.preset, count, args.ply, args.scene)
        for size in args.sizes:
            w, h = (int(x) for x in size.lower().split("x"))
            t_torch, t_numba, agree, worst = [], [], [], 0
            for r in range(args.runs + 1):
                vm, intr = cams[r % len(cams)]
                K = torch.from_numpy(intr.scaled(w / intr.width).matrix()).float()
                with torch.no_grad():
                    t0 = time.perf_counter()
                    a = g.render(vm, K, w, h, backend="torch")
                    t1 = time.perf_counter()
                    b = g.render(vm, K, w, h, backend="numba")
                    t2 = time.perf_counter()
                if r == 0:
                    continue  # warm-up (and the numba cache load)
                t_torch.append(t1 - t0)
                t_numba.append(t2 - t1)
                d = np.abs(to_u8(a["rgb"]).astype(int) - to_u8(b["rgb"]).astype(int)).max(-1)
                agree.append(float((d <= 1).mean()))
                worst = max(worst, int(d.max()))
            row = {
                "gaussians": len(g),
                "size": size,
                "torch_ms": 1000 * statistics.median(t_torch),
                "numba_ms": 1000 * statistics.median(t_numba),
                "numba_hz": 1 / statistics.median(t_numba),
                "rgb_within_1_of_255": min(agree),
                "max_u8_diff": worst,
                "numba_threads": render_threads(),
            }
            row["speedup"] = row["torch_ms"] / row["numba_ms"]
            rows.append(row)
            print(
                f"{len(g):>7} Gaussians {size}: torch {row['torch_ms']:.1f} ms, numba {row['numba_ms']:.1f} ms "
                f"({row['numba_hz']:.1f} Hz, x{row['speedup']:.1f}); RGB within 1/255 on "
                f"{100 * row['rgb_within_1_of_255']:.3f} % of pixels (worst frame), max diff {worst}",
                flush=True,
            )
    result = {"machine": machine(), "load_after": os.getloadavg(), "rows": rows}
    if not args.no_compile_cost:
        result["first_call"] = first_call_cost()
        print(f"numba first call in a new process: {result['first_call']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
