"""Benchmark the Gaussian branch: rasterizer time per frame and training (time per step, test-view quality).

Usage: python bench/bench_splat.py [--runs 5] [--counts 10000 50000 200000] [--sizes 320x240 640x480]
                                   [--presets tiny room] [--iterations N] [--threads 1] [--ab]
                                   [--skip-render] [--skip-train]

Render: Gaussians sampled on the GT mesh of a synthetic ``room`` (flat, opacity 0.9, like trained surface
splats), rendered from a test camera of that scene; median wall time of ``--runs`` forward passes
(no gradients: the inference path) and of forward + backward of the training loss (against the test view,
resized to each size). ``--ab`` alternates each render with the autograd path's forward under no_grad (what
no-grad renders ran before the inference path), so the two are compared under the same load. Train: ``run_gaussians`` with the default
:class:`SplatConfig` (``--iterations`` overrides), initialised from the GT mesh written as the build's
``panoptic_mesh.ply``, so the figures isolate this stage from the geometry builder. The machine line
(cores, load average) is printed first: on a shared machine the wall times include waiting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # bench/ is on sys.path when run as a script


def gt_panoptic_mesh(scene):
    from simgen.folders import PanopticMesh

    mesh = scene.gt.mesh()
    seg = scene.gt.mesh_labels()
    cat = np.array([scene.gt.segments.get(int(s), -1) for s in seg], dtype=np.int32)
    thing = np.array([c in scene.categories and scene.categories[c].isthing for c in cat])
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    return PanopticMesh(mesh.vertices, mesh.faces, colors, cat, np.where(thing, seg, 0))


def _autograd_path_render(g, viewmat, K, w: int, h: int) -> None:
    """The autograd path's forward run without building a graph (what no-grad renders used before the
    inference path existed), to compare the two under the same load."""
    from simgen.render import rasterize as R

    with torch.no_grad():
        vm, K = viewmat.to(g.means), K.to(g.means)
        near, far, eps2d = 0.01, 100.0, 0.3
        _, _, z, zs, u, v = R._screen(g.means, vm, K, near, far)
        idx = R._candidates(z, zs, u, v, g.scales, K, w, h, near, far, eps2d)
        vals = R._colors_and_features(g.means[idx], g.sh[idx], vm, None, None)
        R._rasterize_torch(
            g.means, g.quats, g.scales, g.opacities, vals, idx, vm, K, w, h, near, far, 8, eps2d, 32
        )


def _resized_view(view, w: int, h: int):
    from simgen.splat.train import TrainView

    if (w, h) == (view.rgb.shape[1], view.rgb.shape[0]):
        return view
    rgb = torch.nn.functional.interpolate(view.rgb.permute(2, 0, 1)[None], size=(h, w), mode="bilinear")
    depth = torch.nn.functional.interpolate(view.depth[None, None], size=(h, w), mode="nearest")
    return TrainView(view.index, rgb[0].permute(1, 2, 0).contiguous(), depth[0, 0], view.viewmat, view.K)


def bench_render(scene, counts, sizes, runs: int, device: str, ab: bool) -> None:
    from simgen.render.rasterize import rasterize
    from simgen.splat.gaussians import init_from_mesh
    from simgen.splat.train import SplatConfig, load_views, loss_terms

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    pm = gt_panoptic_mesh(scene)
    i = scene.split_indices("test")[0]
    f = scene.frames[i]
    view = load_views(scene, [i], 1, device)[0]
    for n in counts:
        g = init_from_mesh(pm, count=n, seed=0, opacity=0.9).to(device)
        for w, h in sizes:
            K = torch.from_numpy(f.intrinsics.scaled(w / f.intrinsics.width).matrix()).float().to(device)
            fwd, old, step = [], [], []
            # Alternating runs (first of each a warm-up): on a shared machine the load drifts, so A/B figures
            # are only comparable when taken side by side.
            for r in range(runs + 1):
                t0 = time.perf_counter()
                with torch.no_grad():
                    g.render(view.viewmat, K, w, h)
                sync()
                t1 = time.perf_counter()
                if ab and device == "cpu":
                    _autograd_path_render(g, view.viewmat, K, w, h)
                t2 = time.perf_counter()
                if r:
                    fwd.append(t1 - t0)
                    old.append(t2 - t1)
            target = _resized_view(view, w, h)
            leaves = [
                t.clone().requires_grad_() for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)
            ]
            for r in range(min(runs, 3) + 1):
                t0 = time.perf_counter()
                out = rasterize(
                    leaves[0],
                    leaves[1],
                    leaves[2].exp(),
                    leaves[3].sigmoid(),
                    leaves[4],
                    view.viewmat,
                    K,
                    w,
                    h,
                )
                loss_terms(out, target, SplatConfig())["loss"].backward()
                sync()
                if r:
                    step.append(time.perf_counter() - t0)
            line = (
                f"render {n:>7} Gaussians {w}x{h} ({device}): median {1000 * statistics.median(fwd):8.1f} ms"
            )
            if ab and device == "cpu":
                line += f" (autograd path's forward, alternated: {1000 * statistics.median(old):8.1f} ms)"
            line += f", forward+backward of the loss {1000 * statistics.median(step):8.1f} ms"
            print(line, flush=True)


def bench_train(preset: str, iterations: int | None, scratch: Path, device: str) -> None:
    from simgen.data.scene import load_scene
    from simgen.folders import write_panoptic_mesh
    from simgen.splat.train import SplatConfig, run_gaussians
    from simgen.synth import synthesize

    scene = load_scene(synthesize(scratch / preset, preset=preset, seed=0))
    build = scratch / f"build_{preset}"
    write_panoptic_mesh(build / "panoptic_mesh.ply", gt_panoptic_mesh(scene))
    cfg = (
        SplatConfig(device=device)
        if iterations is None
        else SplatConfig(device=device, iterations=iterations)
    )
    t0 = time.perf_counter()
    s = run_gaussians(scene, build, cfg, progress=False)
    wall = time.perf_counter() - t0
    a, b = s["test_initial"], s["test"]
    print(
        f"train {preset}: {s['steps']} steps in {s['seconds']:.1f} s ({s['s_per_step']:.3f} s/step, total {wall:.1f} s "
        f"incl. loading and evaluation), {s['initial_count']} -> {s['count']} Gaussians; test views ({b['views']}): "
        f"PSNR {a['psnr']:.2f} -> {b['psnr']:.2f} dB, SSIM {a['ssim']:.3f} -> {b['ssim']:.3f}, "
        f"depth AbsRel {a['depth_absrel']:.4f} -> {b['depth_absrel']:.4f}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed renders per case (median reported)")
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--sizes", nargs="+", default=["320x240", "640x480"])
    ap.add_argument("--presets", nargs="+", default=["tiny", "room"])
    ap.add_argument("--iterations", type=int, default=None, help="training steps (default: SplatConfig's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine 2 threads can spin-wait)",
    )
    ap.add_argument(
        "--ab",
        action="store_true",
        help="also time the autograd path's forward under no_grad (the renderer before the inference path), "
        "alternating with the current one",
    )
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    torch.set_num_threads(args.threads)

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_splat_") as tmp:
        scratch = Path(tmp)
        if not args.skip_render:
            from simgen.data.scene import load_scene
            from simgen.synth import synthesize

            room = load_scene(synthesize(scratch / "render_room", preset="room", seed=0, frames=10))
            bench_render(room, args.counts, sizes, args.runs, args.device, args.ab)
        if not args.skip_train:
            for preset in args.presets:
                bench_train(preset, args.iterations, scratch, args.device)
    print(machine(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
