"""Optimising a :class:`~simgen.render.gaussians.GaussianScene` against a scene's training frames.

Loss (PanopticRecon++ eq. 34): ``L = (1 - l1) * L1 + l1 * (1 - SSIM) + l2 * L_depth`` with ``l1 = 0.2`` and
``l2 = 0.1``; ``L_depth`` is the L1 error of the rendered expected depth against the sensor depth on pixels
with valid depth. Densification and pruning follow 3DGS: Gaussians whose mean view-space gradient exceeds a
threshold are cloned (small) or split in two (large), transparent and huge ones are pruned. On CUDA with
gsplat installed, gsplat's ``DefaultStrategy`` does this; elsewhere :class:`_CpuStrategy` (same rules).

Build-folder outputs of :func:`run_gaussians` (all written atomically):

* ``gaussians.ply`` -- standard 3DGS PLY plus int32 ``semantic`` / ``instance`` (:func:`save_ply`).
* ``gaussians_labels.npz`` -- ``semantic`` ``(N,)`` int32 category id (-1 unknown) and ``instance`` ``(N,)``
  int32 (> 0 things, 0 stuff / unknown), in the PLY's Gaussian order.
* ``gaussians_ckpt.pt`` -- parameters, optimiser and strategy state for ``--resume``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simgen import folders
from simgen.data import io
from simgen.folders import GAUSSIAN_CHECKPOINT_FILE, GAUSSIAN_LABELS_FILE, GAUSSIANS_FILE
from simgen.render.gaussians import GaussianScene, save_ply
from simgen.render.rasterize import gsplat_available, rasterize
from simgen.render.sh import num_sh_bases
from simgen.splat.config import SplatConfig
from simgen.splat.gaussians import init_from_mesh, init_from_rgbd

# ---------------------------------------------------------------------------------------------- losses


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, reduce: bool = True
) -> torch.Tensor:
    """SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2) of two
    ``(H, W, C)`` images in [0, 1]; differentiable. Borders are zero-padded ("same" size), as in 3DGS.
    Returns the mean, or with ``reduce=False`` the ``(H, W, C)`` SSIM map.

    Own code rather than torchmetrics: torchmetrics is only a test dependency (the test compares them).
    """
    x = a.permute(2, 0, 1)[None]
    y = b.permute(2, 0, 1)[None]
    c = x.shape[1]
    w = _gauss_window(window, sigma).to(x)[None, None].expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=window // 2, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean() if reduce else s[0].permute(1, 2, 0)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(
        ((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean()
    )
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


# ------------------------------------------------------------------------------------------ parameters

PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")


def to_params(g: GaussianScene, device: torch.device) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters in gsplat's naming (``scales`` are log scales, ``opacities`` logits)."""
    t = {
        "means": g.means,
        "quats": g.quats,
        "scales": g.log_scales,
        "opacities": g.opacity_logits,
        "sh0": g.sh[:, :1],
        "shN": g.sh[:, 1:],
    }
    return {k: torch.nn.Parameter(v.detach().to(device, torch.float32).contiguous()) for k, v in t.items()}


def from_params(params: dict[str, torch.Tensor], semantic=None, instance=None) -> GaussianScene:
    n = params["means"].shape[0]
    dev = params["means"].device
    return GaussianScene(
        means=params["means"].detach(),
        quats=params["quats"].detach(),
        log_scales=params["scales"].detach(),
        opacity_logits=params["opacities"].detach(),
        sh=torch.cat([params["sh0"], params["shN"]], dim=1).detach(),
        semantic=torch.full((n,), -1, dtype=torch.int32, device=dev) if semantic is None else semantic,
        instance=torch.zeros(n, dtype=torch.int32, device=dev) if instance is None else instance,
    )


def _render_params(params, viewmat, K, width, height, sh_degree, backend="auto") -> dict[str, Any]:
    return rasterize(
        params["means"],
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        torch.cat([params["sh0"], params["shN"]], dim=1),
        viewmat,
        K,
        width,
        height,
        sh_degree=sh_degree,
        backend=backend,
    )


def _edit(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    keep: torch.Tensor,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace every parameter by ``cat(p[keep], extra[name])`` in place of the dict, carrying the Adam
    moments of the kept rows and starting the new rows from zero moments."""
    for name in PARAM_NAMES:
        old = params[name]
        add = extra[name] if extra else old[:0]
        new = torch.nn.Parameter(torch.cat([old.detach()[keep], add.detach()]))
        opt = optimizers[name]
        state = opt.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.cat([state[key][keep], torch.zeros_like(add)])
            opt.state[new] = state
        opt.param_groups[0]["params"] = [new]
        params[name] = new


class _CpuStrategy:
    """3DGS's adaptive density control (Kerbl et al. 2023, sec. 5), the rules of gsplat's DefaultStrategy
    without its CUDA-only bookkeeping. Written here because gsplat is a CUDA package (its kernels compile with
    nvcc) and not a dependency of CPU installs."""

    def __init__(self, cfg: SplatConfig, scene_scale: float):
        self.cfg = cfg
        self.scene_scale = scene_scale

    def initialize_state(self) -> dict[str, Any]:
        return {"grad2d": None, "count": None}

    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        info["means2d"].retain_grad()

    def step_post_backward(self, params, optimizers, state, step, info) -> dict[str, int]:
        cfg = self.cfg
        n = params["means"].shape[0]
        if state["grad2d"] is None or len(state["grad2d"]) != n:
            state["grad2d"] = torch.zeros(n, device=params["means"].device)
            state["count"] = torch.zeros(n, device=params["means"].device)
        if step < cfg.refine_stop:
            g = info["means2d"].grad
            if g is not None:
                # Pixel gradients to NDC units (gsplat's convention, so grow_grad2d means the same there).
                g = g.detach() * torch.tensor([info["width"] / 2.0, info["height"] / 2.0], device=g.device)
                vis = info["radii"] > 0
                state["grad2d"][vis] += g[vis].norm(dim=-1)
                state["count"][vis] += 1
        stats = {"cloned": 0, "split": 0, "pruned": 0}
        if cfg.refine_start <= step < cfg.refine_stop and step % cfg.refine_every == 0 and step > 0:
            stats = self._refine(params, optimizers, state)
            state["grad2d"] = None
        if (
            cfg.opacity_reset_every
            and step > 0
            and step % cfg.opacity_reset_every == 0
            and step < cfg.refine_stop
        ):
            with torch.no_grad():
                cap = float(np.log(0.01 / 0.99))  # 3DGS resets opacities to at most 0.01
                params["opacities"].clamp_(max=cap)
            for key in ("exp_avg", "exp_avg_sq"):
                st = optimizers["opacities"].state.get(params["opacities"])
                if st:
                    st[key].zero_()
        return stats

    @torch.no_grad()
    def _refine(self, params, optimizers, state) -> dict[str, int]:
        cfg = self.cfg
        avg = state["grad2d"] / state["count"].clamp_min(1)
        grow = avg > cfg.grow_grad2d
        room = max(0, cfg.max_gaussians - params["means"].shape[0])
        if int(grow.sum()) > room:  # keep the strongest gradients within the budget
            top = torch.topk(torch.where(grow, avg, torch.zeros_like(avg)), room).indices
            grow = torch.zeros_like(grow)
            grow[top] = True
        max_scale = torch.exp(params["scales"]).max(dim=1).values
        small = max_scale <= cfg.grow_scale3d * self.scene_scale
        clone, split = grow & small, grow & ~small
        n0 = params["means"].shape[0]
        # Clone: an exact copy, which then moves on its own under the gradient.
        _edit(
            params,
            optimizers,
            torch.ones(n0, dtype=torch.bool, device=clone.device),
            {k: params[k][clone] for k in PARAM_NAMES},
        )
        # Split: two Gaussians sampled from the original, 1.6x smaller; the original goes.
        split = torch.cat([split, torch.zeros(int(clone.sum()), dtype=torch.bool, device=split.device)])
        if split.any():
            from simgen.render.rasterize import quat_to_rotmat

            sel = {k: params[k][split] for k in PARAM_NAMES}
            scales = torch.exp(sel["scales"])
            R = quat_to_rotmat(sel["quats"])
            samples = torch.einsum(
                "nij,bnj->bni", R, scales[None] * torch.randn(2, *scales.shape, device=scales.device)
            )
            new = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in sel.items()}
            new["means"] = (sel["means"][None] + samples).reshape(-1, 3)
            new["scales"] = torch.log(scales / 1.6).repeat(2, 1)
            _edit(params, optimizers, ~split, new)
        opac = torch.sigmoid(params["opacities"])
        too_big = torch.exp(params["scales"]).max(dim=1).values > cfg.prune_scale3d * self.scene_scale
        prune = (opac < cfg.prune_opacity) | too_big
        if prune.any() and int(prune.sum()) < len(prune):
            _edit(params, optimizers, ~prune)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum())}


def _gsplat_strategy(cfg: SplatConfig, scene_scale: float):
    # Untested in the session that wrote it (no GPU); follows gsplat 1.5's documented DefaultStrategy API.
    from gsplat import DefaultStrategy

    return DefaultStrategy(
        prune_opa=cfg.prune_opacity,
        grow_grad2d=cfg.grow_grad2d,
        grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d,
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop,
        refine_every=cfg.refine_every,
        reset_every=cfg.opacity_reset_every or 10**9,
        verbose=False,
    )


# -------------------------------------------------------------------------------------------- frames


@dataclass
class TrainView:
    """One training or test frame, resized: ``rgb`` ``(H, W, 3)`` float32 in [0, 1], ``depth`` ``(H, W)``
    float32 metres (0 = invalid), ``viewmat`` ``(4, 4)`` world-to-camera OpenCV, ``K`` ``(3, 3)``."""

    index: int
    rgb: torch.Tensor
    depth: torch.Tensor
    viewmat: torch.Tensor
    K: torch.Tensor


def load_views(
    scene, indices: list[int], downscale: int = 1, device: str | torch.device = "cpu"
) -> list[TrainView]:
    """Frames ``indices`` of ``scene`` shrunk by ``downscale`` (RGB area-averaged, depth averaged over the
    valid pixels of each block), cropped to a multiple of ``downscale``."""
    views = []
    for i in indices:
        f = scene.frames[i]
        rgb = torch.from_numpy(scene.rgb(i).astype(np.float32) / 255.0)
        depth = torch.from_numpy(scene.depth(i).astype(np.float32))
        if rgb.shape[:2] != depth.shape:
            raise ValueError(
                f"{scene.root}: frame {i} ({f.name}): RGB {rgb.shape[:2]} and depth {depth.shape} differ"
            )
        K = f.intrinsics
        if downscale > 1:
            h, w = (rgb.shape[0] // downscale) * downscale, (rgb.shape[1] // downscale) * downscale
            rgb = F.avg_pool2d(rgb[:h, :w].permute(2, 0, 1)[None], downscale)[0].permute(1, 2, 0)
            d = depth[:h, :w][None, None]
            valid = (d > 0).float()
            s, c = F.avg_pool2d(d * valid, downscale), F.avg_pool2d(valid, downscale)
            depth = torch.where(c > 0, s / c.clamp_min(1e-9), torch.zeros_like(s))[0, 0]
            K = K.scaled(1.0 / downscale)
        views.append(
            TrainView(
                index=i,
                rgb=rgb.contiguous().to(device),
                depth=depth.contiguous().to(device),
                viewmat=torch.from_numpy(np.linalg.inv(f.c2w_cv)).float().to(device),
                K=torch.from_numpy(K.matrix()).float().to(device),
            )
        )
    return views


def scene_extent(views: list[TrainView]) -> float:
    """3DGS's scene scale: 1.1 x the largest distance of a camera centre from their mean (min 1 m)."""
    centres = torch.stack([-v.viewmat[:3, :3].T @ v.viewmat[:3, 3] for v in views])
    return max(1.0, 1.1 * float((centres - centres.mean(0)).norm(dim=1).max()))


# ---------------------------------------------------------------------------------------------- train


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("SplatConfig.device='cuda' but torch sees no CUDA device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def loss_terms(out: dict[str, Any], view: TrainView, cfg: SplatConfig) -> dict[str, torch.Tensor]:
    """``l1``, ``ssim``, ``depth`` and the total ``loss`` of one rendered view (eq. 34)."""
    l1 = (out["rgb"] - view.rgb).abs().mean()
    s = ssim(out["rgb"], view.rgb)
    valid = view.depth > 0
    d = (out["depth"] - view.depth).abs()[valid].mean() if valid.any() else out["depth"].sum() * 0
    loss = (1 - cfg.lambda_ssim) * l1 + cfg.lambda_ssim * (1 - s) + cfg.lambda_depth * d
    return {"loss": loss, "l1": l1, "ssim": s, "depth": d}


def evaluate_views(g: GaussianScene, views: list[TrainView]) -> dict[str, float]:
    """Mean PSNR, SSIM and depth AbsRel (on pixels with valid depth) of ``g`` over ``views`` (None if none)."""
    ps, ss, ab = [], [], []
    with torch.no_grad():
        for v in views:
            out = g.render(v.viewmat, v.K, v.rgb.shape[1], v.rgb.shape[0])
            rgb = out["rgb"].clamp(0, 1)
            ps.append(psnr(rgb, v.rgb))
            ss.append(float(ssim(rgb, v.rgb)))
            ok = v.depth > 0
            if ok.any():
                ab.append(float(((out["depth"][ok] - v.depth[ok]).abs() / v.depth[ok]).mean()))
    return {  # None rather than NaN: the summary goes into build.json
        "psnr": float(np.mean(ps)) if ps else None,
        "ssim": float(np.mean(ss)) if ss else None,
        "depth_absrel": float(np.mean(ab)) if ab else None,
        "views": len(views),
    }


def initial_gaussians(scene, build_dir: Path, cfg: SplatConfig) -> tuple[GaussianScene, str, Any]:
    """The initial Gaussians, the init used (``"mesh"`` / ``"rgbd"``) and the build's mesh (or None)."""
    from simgen.folders import MESH_FILE, read_panoptic_mesh

    mesh_path = build_dir / MESH_FILE
    mesh = None
    if mesh_path.exists():
        mesh = read_panoptic_mesh(mesh_path)
    elif cfg.init == "mesh":
        raise FileNotFoundError(
            f"{mesh_path}: no panoptic mesh to initialise the Gaussians from (use init=rgbd)"
        )
    use_mesh = cfg.init == "mesh" or (cfg.init == "auto" and mesh is not None and len(mesh.faces) > 0)
    if use_mesh:
        if len(mesh.faces) == 0:
            raise ValueError(f"{mesh_path}: the panoptic mesh has no faces")
        g = init_from_mesh(
            mesh, count=cfg.init_count, sh_degree=cfg.sh_degree, seed=cfg.seed, opacity=cfg.init_opacity
        )
        return g, "mesh", mesh
    g = init_from_rgbd(
        scene, voxel=cfg.init_voxel, max_points=cfg.init_count, sh_degree=cfg.sh_degree, seed=cfg.seed
    )
    p = cfg.init_opacity
    g.opacity_logits[:] = float(np.log(p / (1 - p)))
    return g, "rgbd", mesh


def _save_checkpoint(
    path: Path, params, optimizers, strategy_state, step: int, cfg: SplatConfig, extra: dict
) -> None:
    blob = {
        "step": step,
        "config": asdict(cfg),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: _optimizer_state_cpu(o, params[k]) for k, o in optimizers.items()},
        "strategy": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in strategy_state.items()},
        "rng": torch.get_rng_state(),
        **extra,
    }
    with io.atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _optimizer_state_cpu(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, Any]:
    st = opt.state.get(p, {})
    return {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in st.items()}


def _make_optimizers(params, cfg: SplatConfig, scene_scale: float) -> dict[str, torch.optim.Optimizer]:
    lrs = {
        "means": cfg.lr_means * scene_scale,
        "quats": cfg.lr_quats,
        "scales": cfg.lr_scales,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }
    # One Adam per tensor (gsplat's layout): densification swaps tensors one optimiser at a time.
    return {k: torch.optim.Adam([params[k]], lr=lrs[k], eps=1e-15) for k in PARAM_NAMES}


def train_gaussians(
    g: GaussianScene,
    views: list[TrainView],
    cfg: SplatConfig,
    *,
    progress: bool = True,
    checkpoint: Path | None = None,
    resume_from: dict | None = None,
) -> tuple[GaussianScene, dict[str, Any]]:
    """Optimise ``g`` on ``views`` for ``cfg.iterations`` steps (one random view per step).

    Returns the trained Gaussians (labels unknown: bake them afterwards) and stats: ``steps`` run now,
    ``seconds``, ``s_per_step``, ``psnr_train`` (mean of the last 20 steps), ``count``, densification totals.
    ``checkpoint``: where to write the state every ``cfg.checkpoint_every`` steps and at the end;
    ``resume_from``: a loaded checkpoint dict to continue.
    """
    from tqdm.auto import tqdm

    if not views:
        raise ValueError("train_gaussians: no training views")
    device = views[0].rgb.device
    scene_scale = scene_extent(views)
    use_gsplat = device.type == "cuda" and gsplat_available()
    params = to_params(g, device)
    start = 0
    if resume_from is not None:
        params = {k: torch.nn.Parameter(v.to(device)) for k, v in resume_from["params"].items()}
        start = int(resume_from["step"])
        torch.set_rng_state(resume_from["rng"])
    optimizers = _make_optimizers(params, cfg, scene_scale)
    if resume_from is not None:
        for k, st in resume_from["optimizers"].items():
            if st:
                optimizers[k].state[params[k]] = {
                    kk: (v.to(device) if torch.is_tensor(v) else v) for kk, v in st.items()
                }
    strategy = _gsplat_strategy(cfg, scene_scale) if use_gsplat else _CpuStrategy(cfg, scene_scale)
    if use_gsplat:
        strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale) if use_gsplat else strategy.initialize_state()
    if resume_from is not None and not use_gsplat:
        state.update(
            {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in resume_from["strategy"].items()}
        )
    gamma = cfg.lr_means_final ** (1.0 / max(cfg.iterations, 1))
    for group in optimizers["means"].param_groups:
        group["lr"] = cfg.lr_means * scene_scale * gamma**start
    rng = np.random.default_rng([cfg.seed, start])
    order: list[int] = []
    psnrs: list[float] = []
    totals = {"cloned": 0, "split": 0, "pruned": 0}
    bar = tqdm(range(start, cfg.iterations), desc="gaussians", disable=not progress, unit="step", leave=False)
    t0 = time.perf_counter()
    for step in bar:
        if not order:
            order = list(rng.permutation(len(views)))
        v = views[order.pop()]
        h, w = v.rgb.shape[:2]
        sh_deg = min(cfg.sh_degree, step // cfg.sh_degree_every)
        out = _render_params(params, v.viewmat, v.K, w, h, sh_deg)
        info = out.get("info") or {"means2d": out["means2d"], "radii": out["radii"], "width": w, "height": h}
        strategy.step_pre_backward(params, optimizers, state, step, info)
        terms = loss_terms(out, v, cfg)
        terms["loss"].backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        # gsplat resets opacities whenever step % reset_every == 0, step 0 included, which would wipe the
        # initial opacities: it counts from 1 here (its refine tests shift by one step, harmlessly).
        stats = strategy.step_post_backward(params, optimizers, state, step + 1 if use_gsplat else step, info)
        for k in totals:
            totals[k] += (stats or {}).get(k, 0)
        for group in optimizers["means"].param_groups:
            group["lr"] *= gamma
        psnrs.append(psnr(out["rgb"].detach().clamp(0, 1), v.rgb))
        if progress:
            bar.set_postfix(psnr=f"{np.mean(psnrs[-20:]):.2f}", n=params["means"].shape[0], refresh=False)
        done = step + 1
        if (
            checkpoint is not None
            and cfg.checkpoint_every
            and done % cfg.checkpoint_every == 0
            and done < cfg.iterations
        ):
            _save_checkpoint(checkpoint, params, optimizers, state, done, cfg, {})
    seconds = time.perf_counter() - t0
    steps = max(0, cfg.iterations - start)
    if checkpoint is not None:
        _save_checkpoint(checkpoint, params, optimizers, state, max(start, cfg.iterations), cfg, {})
    trained = from_params(params)
    return trained.to("cpu") if device.type != "cpu" else trained, {
        "steps": steps,
        "start_step": start,
        "seconds": seconds,
        "s_per_step": seconds / steps if steps else None,
        "psnr_train": float(np.mean(psnrs[-20:])) if psnrs else None,
        "count": int(params["means"].shape[0]),
        "strategy": "gsplat" if use_gsplat else "cpu",
        **totals,
    }


def run_gaussians(
    scene, build_dir: str | Path, cfg: SplatConfig | None = None, progress: bool = True
) -> dict:
    """Train the Gaussian appearance model of ``scene`` (a :class:`simgen.data.scene.Scene`) and write
    ``gaussians.ply``, ``gaussians_labels.npz`` and the checkpoint into ``build_dir``.

    Initialisation from ``build_dir/panoptic_mesh.ply`` (or RGB-D points, see ``cfg.init``); labels are
    baked from that mesh after training (unknown without one). Returns a JSON-ready summary: init, counts,
    timings, training PSNR and, with ``cfg.evaluate``, test-view ``psnr`` / ``ssim`` / ``depth_absrel`` of
    the initial and of the trained Gaussians.
    """
    from simgen.splat.labels import bake_labels_from_mesh

    cfg = cfg or SplatConfig()
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = _resolve_device(cfg.device)
    train_idx = scene.split_indices("train") or scene.split_indices("all")
    test_idx = scene.split_indices("test")
    t0 = time.perf_counter()
    views = load_views(scene, train_idx, cfg.downscale, device)
    test_views = load_views(scene, test_idx, cfg.downscale, device) if cfg.evaluate else []
    ckpt_path = build_dir / GAUSSIAN_CHECKPOINT_FILE
    resume_from = None
    if cfg.resume and ckpt_path.exists():
        resume_from = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        k = resume_from["params"]["shN"].shape[1] + 1
        if k != num_sh_bases(cfg.sh_degree):
            raise ValueError(
                f"{ckpt_path}: checkpoint has SH degree {int(math.isqrt(k)) - 1}, config {cfg.sh_degree}"
            )
    elif cfg.resume:
        warnings.warn(f"{ckpt_path}: no checkpoint to resume from; starting over", stacklevel=2)
    g0, init, mesh = initial_gaussians(scene, build_dir, cfg)
    summary: dict[str, Any] = {"init": init, "initial_count": len(g0), "device": str(device)}
    if test_views and resume_from is None:
        summary["test_initial"] = evaluate_views(g0.to(device), test_views)
    g, stats = train_gaussians(
        g0.to(device), views, cfg, progress=progress, checkpoint=ckpt_path, resume_from=resume_from
    )
    summary.update(stats)
    if cfg.bake_labels and mesh is not None and len(mesh.vertices):
        g = bake_labels_from_mesh(g, mesh)
        summary["labels"] = "mesh"
    else:
        summary["labels"] = "none"
    if test_views:
        summary["test"] = evaluate_views(g.to(device), test_views)
    save_ply(build_dir / GAUSSIANS_FILE, g, build_id=folders.build_id(build_dir))
    with io.atomic_path(build_dir / GAUSSIAN_LABELS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, semantic=g.semantic.cpu().numpy(), instance=g.instance.cpu().numpy())
    summary["total_seconds"] = time.perf_counter() - t0
    summary["files"] = [GAUSSIANS_FILE, GAUSSIAN_LABELS_FILE, GAUSSIAN_CHECKPOINT_FILE]
    if (build_dir / folders.BUILD_FILE).is_file():
        # The build record gains the appearance record only once the Gaussians exist.
        record = folders.read_build_record(build_dir)
        record["gaussians"] = _json_ready(summary)
        io.write_json(build_dir / folders.BUILD_FILE, record)
    return summary


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------- render
