"""The GPU figures in one run (called by scripts/gpu-check.sh; docs/gpu.md): writes one JSON.

Usage: python bench/gpu_check.py --out gpu-check.json [--work DIR] [--budget-s 420] [--neural-s 240]
                                 [--cpu-only] [--quick]

Steps, each recorded under its own key with its wall time (an error is recorded and the run goes on; a step
that would start after ``--budget-s`` is recorded as skipped):

1. ``env``: torch / CUDA device, gsplat, tinycudann, numba, the EGL GL renderer.
2. ``scene``: ``simgen synth --preset room`` and a fusion build with Gaussians (``--no-export``).
3. ``gaussians``: the build's Gaussians rendered at 640x480 from the test views by gsplat (CUDA) and by the
   compiled CPU rasterizer: share of 8-bit RGB values within 1/255, largest difference, median ms each.
4. ``neural_step``: seconds per ``quality`` training step with the torch hash grid and with tinycudann
   (when installed), and the two encodings' largest difference on the same parameters.
5. ``neural_build``: ``simgen build --method neural --neural.preset quality`` of ``room`` with as many steps
   as fit in ``--neural-s`` at the measured step time, then ``simgen eval``: PQ, mIoU, Chamfer, F-score.
6. ``serve`` (last): ``simgen serve`` rates (8 clients, keep-alive) per mesh backend (raycast, raster) at
   320x240 and 640x480, depth + panoptic and rgb + depth + panoptic (Gaussian RGB through gsplat on CUDA).

``--cpu-only`` runs the same code with the CPU on both sides (torch rasterizer against the compiled one,
torch hash grid only), which is what the tests run to prove the script's logic without a GPU.
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def simgen_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "simgen", *args]


def run(cmd: list[str], timeout: float) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def env_info() -> dict:
    import torch

    from simgen.render.raster import gl_renderer
    from simgen.render.rasterize import gsplat_available
    from simgen.render.rasterize_numba import numba_available

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gsplat": gsplat_available(),
        "numba": numba_available(),
        "gl_renderer": gl_renderer(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    try:
        from simgen.recon.neural.hashgrid import tcnn_available

        info["tinycudann"] = tcnn_available("cuda")
    except Exception as e:  # an older tree without the helper
        info["tinycudann"] = f"unknown ({e})"
    if info["gsplat"]:
        import gsplat

        info["gsplat_version"] = gsplat.__version__
    return info


def make_scene(work: Path, quick: bool) -> dict:
    scene, build = work / "scene", work / "build"
    preset = "tiny" if quick else "room"
    if not (scene / "transforms.json").exists():
        run(simgen_cmd("synth", str(scene), "--preset", preset, "--quiet"), 600)
    if not (build / "gaussians.ply").exists():
        run(simgen_cmd("build", str(scene), "-o", str(build), "--no-export", "--overwrite", "--quiet"), 900)
    return {"preset": preset, "scene": str(scene), "build": str(build)}


def gaussian_agreement(
    build: Path, scene_dir: Path, device_a: str, backend_a: str, runs: int = 5, size=(640, 480)
):
    """Render the build's Gaussians from the scene's test views with ``backend_a`` on ``device_a`` and with
    the compiled CPU rasterizer; 8-bit RGB agreement and median times (ms)."""
    import torch

    from simgen.data import load_scene
    from simgen.render.gaussians import load_gaussians

    scene = load_scene(scene_dir)
    g_cpu = load_gaussians(build, "cpu")
    g_a = g_cpu.to(device_a)
    w, h = size
    within, worst, t_a, t_b = [], 0, [], []
    views = scene.split_indices("test")
    for r in range(runs + 1):
        f = scene.frames[views[r % len(views)]]
        vm = torch.from_numpy(np.linalg.inv(f.c2w_cv)).float()
        K = torch.from_numpy(f.intrinsics.scaled(w / f.intrinsics.width).matrix()).float()
        with torch.no_grad():
            t0 = time.perf_counter()
            a = g_a.render(vm.to(device_a), K.to(device_a), w, h, backend=backend_a)["rgb"]
            if device_a == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            b = g_cpu.render(vm, K, w, h, backend="numba")["rgb"]
            t2 = time.perf_counter()
        if r == 0:
            continue  # warm-up: kernel compilation / caches
        t_a.append(1000 * (t1 - t0))
        t_b.append(1000 * (t2 - t1))
        a8 = (a.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.int32)
        b8 = (b.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int32)
        d = np.abs(a8 - b8).max(-1)
        within.append(float((d <= 1).mean()))
        worst = max(worst, int(d.max()))
    return {
        "gaussians": len(g_cpu),
        "size": f"{w}x{h}",
        "a": f"{backend_a} on {device_a}",
        "b": "numba on cpu",
        "rgb_within_1_of_255_min": min(within),
        "rgb_within_1_of_255_median": statistics.median(within),
        "max_u8_diff": worst,
        "a_ms_median": statistics.median(t_a),
        "b_ms_median": statistics.median(t_b),
        "a_hz": 1000 / statistics.median(t_a),
    }


def serve_rates(build: Path, backends: list[str], sizes, duration: float, workers: int) -> list[dict]:
    """Requests per second of a real ``simgen serve`` per backend, size and output set (bench_serve's
    throughput run)."""
    from bench_serve import OUTPUT_SETS, Server, poses, throughput

    from simgen.serve.client import RenderClient

    rows = []
    for backend in backends:
        server = Server(build, workers, flags=("--backend", backend))
        try:
            c = RenderClient(server.url)
            info = c.scene()
            pose_list = poses(info["default_camera"]["pose"], 30)
            for w, h in sizes:
                for name, outputs in OUTPUT_SETS.items():
                    thr = throughput(server, pose_list, (w, h), outputs, 8, duration)
                    rows.append(
                        {
                            "backend": info.get("mesh_backend", backend),
                            "rgb_source": info["rgb_source"],
                            "workers": workers,
                            "size": f"{w}x{h}",
                            "outputs": name,
                            "rps": thr["rps"],
                            "errors": thr["errors"],
                            "p50_ms": thr.get("p50_ms"),
                            "p99_ms": thr.get("p99_ms"),
                        }
                    )
                    print(f"  serve {rows[-1]}", flush=True)
        finally:
            server.stop()
    return rows


def neural_step(scene_dir: Path, device: str, steps: int, frames: int) -> dict:
    """s/step of the quality preset with each available hash-grid backend, and their agreement."""
    import torch
    from bench_neural_step import time_steps

    from simgen.data import load_scene
    from simgen.recon.neural.hashgrid import HashGrid, HashGridSpec, make_hashgrid, tcnn_available

    scene = load_scene(scene_dir)
    out: dict[str, Any] = {}
    backends = ["torch"] + (["tcnn"] if device == "cuda" and tcnn_available("cuda") else [])
    for backend in backends:
        r = time_steps_backend(time_steps, scene, device, steps, frames, backend)
        out[backend] = {k: r[k] for k in ("median_s", "steps_s", "amp", "backend", "device")}
    if "tcnn" in backends:
        spec = HashGridSpec(n_levels=16, n_features=2, log2_table=19, base_resolution=16, max_resolution=2048)
        tc = make_hashgrid(spec, "cuda", "tcnn")
        with torch.no_grad():
            tc.enc.params.uniform_(-1.0, 1.0)
        th = HashGrid(spec).cuda()
        with torch.no_grad():
            th.table.copy_(tc.table)
        x = torch.rand(1 << 16, 3, device="cuda")
        with torch.no_grad():
            out["tcnn_vs_torch_max_abs_diff"] = float((tc(x).float() - th(x).float()).abs().max())
        out["tcnn_speedup"] = out["torch"]["median_s"] / out["tcnn"]["median_s"]
    return out


def time_steps_backend(time_steps, scene, device: str, steps: int, frames: int, backend: str) -> dict:
    """bench_neural_step.time_steps with the hash-grid backend forced: it builds its config through
    ``simgen.recon.neural.neural_config`` at call time, so that function is wrapped for the call."""
    from simgen.recon import neural

    orig = neural.neural_config
    neural.neural_config = lambda preset, **kw: orig(preset, **{**kw, "backend": backend})
    try:
        return time_steps(scene, "quality", steps, device, frames)
    finally:
        neural.neural_config = orig


def neural_build(scene_dir: Path, work: Path, step_s: float, seconds: float, device: str) -> dict:
    """A quality-preset neural build sized to ``seconds`` of optimisation, scored by ``simgen eval``."""
    steps = max(20, int(seconds / max(step_s, 1e-3)))
    out = work / "neural"
    t0 = time.perf_counter()
    run(
        simgen_cmd(
            "build", str(scene_dir), "-o", str(out), "--method", "neural", "--neural.preset", "quality",
            "--neural.steps", str(steps), "--neural.device", device, "--no-gaussians", "--no-export",
            "--overwrite", "--quiet",
        ),
        seconds * 3 + 600,
    )  # fmt: skip
    build_s = time.perf_counter() - t0
    run(simgen_cmd("eval", str(out), "--scene", str(scene_dir), "--no-pictures", "--quiet"), 900)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {"steps": steps, "build_s": build_s, "metrics": metrics}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--work", default="gpu-check-work", help="scratch folder (scene, builds)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no step after this many seconds")
    ap.add_argument("--neural-s", type=float, default=240.0, help="optimisation seconds of the neural build")
    ap.add_argument("--serve-s", type=float, default=4.0, help="seconds per server throughput run")
    ap.add_argument("--cpu-only", action="store_true", help="CPU on both sides (tests the script's logic)")
    ap.add_argument("--quick", action="store_true", help="tiny scene, fewer runs (tests)")
    ap.add_argument("--skip", nargs="*", default=[], help="steps to leave out (scene is needed by the rest)")
    args = ap.parse_args()
    import torch

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu_only
    device = "cuda" if cuda else "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "device": device,
    }

    def write() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        tmp.replace(args.out)  # a reader never sees half a file; written after every step

    def step(name: str, fn, *a):
        if name in args.skip:
            result[name] = {"skipped": "--skip"}
        elif time.perf_counter() - t_start > args.budget_s:
            result[name] = {"skipped": f"over the {args.budget_s:g} s budget"}
        else:
            t0 = time.perf_counter()
            print(f"[gpu-check] {name} ...", flush=True)
            try:
                result[name] = fn(*a)
            except Exception as e:  # record and go on: one failing part must not lose the other figures
                result[name] = {"error": f"{type(e).__name__}: {e}"}
            if isinstance(result[name], dict):
                result[name]["step_s"] = round(time.perf_counter() - t0, 1)
            print(f"[gpu-check] {name}: {json.dumps(result[name], default=str)[:400]}", flush=True)
        write()
        return result[name]

    step("env", env_info)
    sc = step("scene", make_scene, work, args.quick)
    if "build" not in sc:
        return 1
    build, scene_dir = Path(sc["build"]), Path(sc["scene"])
    size = (160, 120) if args.quick else (640, 480)
    runs = 2 if args.quick else 5
    step("gaussians", gaussian_agreement, build, scene_dir, device, "gsplat" if cuda else "torch", runs, size)
    ns = step("neural_step", neural_step, scene_dir, device, 3 if args.quick else 6, 4 if args.quick else 30)
    best = min((v["median_s"] for v in ns.values() if isinstance(v, dict) and "median_s" in v), default=None)
    if best is None:
        result["neural_build"] = {"skipped": "no step time measured"}
    else:
        step("neural_build", neural_build, scene_dir, work, best, args.neural_s, device)
    # Server rates last: the neural build is the figure nobody has yet, so it must not be squeezed out.
    backends = ["raycast", "raster"] if result["env"].get("gl_renderer") else ["raycast"]
    sizes = [(160, 120)] if args.quick else [(320, 240), (640, 480)]
    step("serve", lambda: {"rows": serve_rates(build, backends, sizes, args.serve_s, 1)})
    write()
    print(f"[gpu-check] wrote {args.out} in {result['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
