"""Seconds per training step of a neural preset, without a whole build.

Usage: python bench/bench_neural_step.py [--presets fast quality] [--scene two-rooms] [--steps 6]
                                         [--device cpu|cuda|auto] [--threads 1] [--frames 30]

A whole ``quality`` build takes days on a CPU (and its 1 cm mesh over a 12 m box alone hours), so this
times what one step costs: the rays of the first ``--frames`` training frames of a synthetic scene
(``simgen synth``, seed 0), the preset's model with ``n_tokens`` tokens at thing pixels (the paper's
initialisation), then ``--steps`` steps of ``train_step`` + backward + Adam with every loss group on (a
step in the middle of training: semantic, instance, panoptic losses and Dice). On CUDA
the step runs under the preset's mixed precision and the hash-grid backend ``auto`` picks (tinycudann
when installed). The first step is a warm-up; the median of the others is reported, with the machine
line (cores, load average: wall times on a shared machine include waiting).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # bench/ is on sys.path when run as a script


def time_steps(scene, preset: str, steps: int, device: str, frames: int) -> dict:
    from simgen.recon.neural import neural_config
    from simgen.recon.neural.data import load_rays, sample_batch, thing_pixels_3d
    from simgen.recon.neural.model import PanopticModel
    from simgen.recon.neural.tokens import TokenStats, init_tokens
    from simgen.recon.neural.train import optimise, pick_device, train_step

    cfg = neural_config(preset, device=device)
    dev = pick_device(cfg.device)
    rng = np.random.default_rng(0)
    data = load_rays(scene, scene.split_indices("train")[:frames], cfg.downscale, dev, cfg.trunc, False)
    model = PanopticModel(cfg, data.lo, data.hi, data.classes, data.n_stuff, dev)
    pts, _ = thing_pixels_3d(data, cfg.n_tokens, rng)
    init_tokens(model.tokens, pts, cfg.token_scale, rng)
    opt = torch.optim.Adam(model.param_groups(cfg), betas=(0.9, 0.99))
    amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    stats = TokenStats(cfg.max_tokens)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        batch = sample_batch(data, cfg.frames_per_batch, cfg.rays_per_frame, rng)
        ctx = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
        with ctx:
            terms = train_step(model, data, batch, cfg, cfg.steps // 2, stats)
        optimise(terms, cfg, opt, scaler)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    warm = times[1:] or times
    return {
        "preset": preset,
        "device": str(dev),
        "backend": model.sdf.enc.backend,
        "amp": amp,
        "median_s": statistics.median(warm),
        "steps_s": [round(x, 3) for x in times],
        "full_run_h": statistics.median(warm) * cfg.steps / 3600,
        "preset_steps": cfg.steps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["fast", "quality"])
    ap.add_argument("--scene", default="two-rooms", help="simgen synth preset")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (the first is a warm-up)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--frames", type=int, default=30, help="training frames whose rays are loaded")
    args = ap.parse_args()
    if args.steps < 1 or args.frames < 1 or args.threads < 1:
        ap.error("--steps, --frames and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    from simgen.data.scene import load_scene
    from simgen.synth import synthesize

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        scene = load_scene(synthesize(Path(tmp) / args.scene, preset=args.scene, seed=0))
        print(
            "| preset | device | backend | AMP | s/step (median) | steps (s) | preset's steps at that rate |"
        )
        print("|---|---|---|---|---|---|---|")
        for preset in args.presets:
            r = time_steps(scene, preset, args.steps, args.device, args.frames)
            print(f"| {r['preset']} | {r['device']} | {r['backend']} | {r['amp']} | {r['median_s']:.3f} | "
                  f"{', '.join(map(str, r['steps_s']))} | {r['preset_steps']} steps: {r['full_run_h']:.1f} h |",
                  flush=True)  # fmt: skip
    print(f"after: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
