"""``run_neural``: optimise the PanopticRecon++ fields on a scene and write the build folder.

Schedule (paper V-D, switch points are config fractions of ``steps``): geometry losses only
(``L_depth + L_sdf + L_eik``), then also ``L_sem + L_ins + L_c``, then ``L_pan``; the Dice term of
``L_ins`` is dropped late. Token pruning / splitting runs every ``adjust_every`` steps in between
``adjust_start`` and ``adjust_stop``.

Files in ``out_dir``: ``checkpoint.pt`` (every ``ckpt_every`` steps, at the end, and on Ctrl-C;
``--resume`` continues from it), ``train_log.jsonl`` (one line per ``log_every`` steps), and the build
output (``panoptic_mesh.ply``, ``instances.json``, ``build.json``; simgen.folders).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simgen.data import io
from simgen.data.scene import Scene
from simgen.recon.neural import losses as L
from simgen.recon.neural.config import NeuralConfig
from simgen.recon.neural.data import Batch, RayData, load_rays, ray_points, sample_batch, thing_pixels_3d
from simgen.recon.neural.matching import match_masks
from simgen.recon.neural.model import PanopticModel
from simgen.recon.neural.render import (
    alpha_to_weights,
    render_depth,
    render_values,
    sample_along_rays,
    sdf_to_alpha,
    top_k_samples,
)
from simgen.recon.neural.tokens import TokenStats, adjust_tokens, init_tokens

CHECKPOINT = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"


class NeuralTrainingError(RuntimeError, ValueError):
    """Training stopped (e.g. a NaN loss); the message names the term and the last good checkpoint.

    Also a ValueError, so ``simgen build`` prints it as a clear error instead of a traceback.
    """


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("neural.device cuda requested but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def phase(cfg: NeuralConfig, step: int) -> dict[str, bool]:
    """Which loss groups are on at ``step`` (section V-D)."""
    f = step / max(1, cfg.steps)
    return {
        "seg": f >= cfg.seg_start,
        "pan": cfg.panoptic_head and f >= cfg.pan_start,
        "dice": f < cfg.dice_stop,
        "adjust": cfg.dynamic_tokens and cfg.adjust_start <= f < cfg.adjust_stop,
    }


def train_step(
    model: PanopticModel, data: RayData, batch: Batch, cfg: NeuralConfig, step: int, stats: TokenStats
) -> dict[str, torch.Tensor]:
    """Render the batch and return the weighted loss terms (unweighted values are logged by the caller)."""
    ph = phase(cfg, step)
    dev = batch.dirs.device
    t = sample_along_rays(batch.depth, cfg.near, data.far, cfg.n_uniform, cfg.n_surface, cfg.trunc)  # (R, S)
    pts = batch.origins[:, None, :] + batch.dirs[:, None, :] * t[..., None]  # (R, S, 3)
    R, S = t.shape
    sdf = model.sdf(pts.reshape(-1, 3)).float().reshape(R, S)
    w = alpha_to_weights(sdf_to_alpha(sdf, model.xi(step / max(1, cfg.steps))))  # (R, S-1)
    terms: dict[str, torch.Tensor] = {}
    terms["depth"] = L.depth_loss(render_depth(w, t, cfg.depth_normalise), batch.depth)
    b = torch.where(batch.depth[:, None] > 0, batch.depth[:, None] - t, torch.full_like(t, float("nan")))
    terms["sdf"] = L.sdf_loss(sdf, b, cfg.trunc, cfg.sdf_beta)
    # eikonal on a subset: half near-surface samples, half uniform in the box (double backward is costly)
    n = cfg.n_eikonal
    near = pts.reshape(-1, 3)[torch.randint(0, R * S, (n // 2,), device=dev)]
    box = model.box.lo + (model.box.hi - model.box.lo) * torch.rand(n - n // 2, 3, device=dev)
    _, grad = model.sdf.with_normal(torch.cat([near, box]))
    terms["eik"] = L.eikonal_loss(grad.float())
    if not ph["seg"]:
        return terms

    k = top_k_samples(w, cfg.seg_samples)  # (R, K) interval indices
    wk = w.gather(1, k)
    pk = pts[:, :-1].gather(1, k[..., None].expand(-1, -1, 3)).reshape(-1, 3)
    sem_p, ins_p = model.segment(pk)
    K = k.shape[1]
    u_sem = render_values(wk, sem_p.reshape(R, K, -1))
    u_ins = render_values(wk, ins_p.reshape(R, K, -1))
    terms["sem"] = L.nll_loss(u_sem, batch.sem)

    # per-frame Hungarian matching of the frame's thing masks to tokens (eq. 27-29)
    pan_target = torch.where(batch.sem < model.n_stuff, batch.sem, torch.full_like(batch.sem, -1))
    ins_terms, neg_terms, cls_logits, cls_target = [], [], [], []
    # Panoptic Lifting's softmax ID field (no spatial prior) sums to 1 over tokens, so an empty target
    # for every unmatched token cannot be met on stuff rays (docs/method.md, "Unmatched tokens")
    use_neg = cfg.w_ins_neg > 0 and cfg.spatial_prior
    obs = torch.where(
        batch.depth[:, None] > 0, batch.origins + batch.dirs * batch.depth[:, None], float("nan")
    )
    for j, f in enumerate(batch.frames):
        rays = torch.nonzero(batch.frame == j).flatten()
        n_masks = len(data.mask_class[f])
        m = batch.mask[rays]
        present = torch.unique(m[m >= 0])
        if present.numel() == 0:
            continue
        target = (m[:, None] == present[None]).float()  # (Rf, Lp) only masks hit by a sampled ray
        u_f = u_ins[rays]
        mi, ti, best = match_masks(u_f, target, model.tokens.active, cfg.dice_eps)
        if len(mi) == 0:
            continue
        pts_f = obs[rays]
        cents = torch.stack([_nanmean(pts_f[target[:, q] > 0]) for q in range(target.shape[1])])
        stats.record(mi, ti, best, cents.cpu().numpy())
        ti_t = torch.as_tensor(ti, device=dev)
        mi_t = torch.as_tensor(mi, device=dev)
        ins_terms.append(L.instance_loss(u_f[:, ti_t], target[:, mi_t], ph["dice"], cfg.dice_eps))
        if use_neg:
            unmatched = model.tokens.active.clone()
            unmatched[ti_t] = False
            labelled = batch.sem[rays] >= 0  # a missed detection is no evidence of absence
            neg_terms.append(L.unmatched_loss(u_f[labelled][:, unmatched]))
        cls_logits.append(ti_t)
        cls_target.append(data.mask_class[f][present[mi_t]])
        # panoptic target: matched thing pixels -> S + token slot
        lut = torch.full((n_masks,), -1, dtype=torch.long, device=dev)
        lut[present[mi_t]] = model.n_stuff + ti_t
        pan_target[rays] = torch.where(m >= 0, lut[m.clamp_min(0)], pan_target[rays])
    zero = u_ins.sum() * 0.0
    terms["ins"] = torch.stack(ins_terms).mean() if ins_terms else zero
    if use_neg:
        terms["ins_neg"] = torch.stack(neg_terms).mean() if neg_terms else zero
    if cls_logits:
        tok = torch.cat(cls_logits)
        logits = model.cls_head(model.tokens.cls_feat[tok])
        terms["c"] = L.class_loss(logits, torch.cat(cls_target), logits.shape[1])
    else:
        terms["c"] = zero
    if ph["pan"]:
        pan_p = model.panoptic(sem_p, ins_p)
        u_pan = render_values(wk, pan_p.reshape(R, K, -1))
        terms["pan"] = L.nll_loss(u_pan, pan_target)
    return terms


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    ok = torch.isfinite(x).all(-1)
    return x[ok].mean(0) if ok.any() else torch.full((3,), float("nan"), device=x.device)


WEIGHTS = {
    "depth": "w_depth",
    "sdf": "w_sdf",
    "eik": "w_eik",
    "sem": "w_sem",
    "ins": "w_ins",
    "ins_neg": "w_ins_neg",
    "c": "w_c",
    "pan": "w_pan",
}


def optimise(
    terms: dict[str, torch.Tensor], cfg: NeuralConfig, opt: torch.optim.Optimizer, scaler
) -> torch.Tensor:
    """The weighted loss of eq. 23 from ``train_step``'s terms, backward and one optimiser step (with
    the AMP gradient scaler when given). Returns the weighted total."""
    total = sum(getattr(cfg, WEIGHTS[k]) * v for k, v in terms.items())
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
    else:
        total.backward()
        opt.step()
    return total


@torch.no_grad()
def surface_points(model: PanopticModel, data: RayData, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``(n, 3)`` points on the current surface: observed depth points moved along the SDF gradient to s = 0."""
    ok = torch.nonzero(data.depth > 0).flatten().cpu().numpy()
    idx = rng.choice(ok, size=min(n, len(ok)), replace=False)
    p = torch.as_tensor(ray_points(data, idx), device=data.dirs.device)
    for _ in range(2):  # two Newton-like projection steps x <- x - s * n / |n|^2
        s, g = model.sdf.with_normal(p, create_graph=False)
        p = p - (s / g.square().sum(-1).clamp_min(1e-6))[:, None] * g
    return p.detach()


def _save_checkpoint(
    path: Path, model, opt, sched, scaler, step, stats, history, data: RayData, cfg, rng
) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "token_history": history,
        "token_stats": {
            "assigned": stats.assigned,
            "split_events": stats.split_events,
            "split_target": stats.split_target,
        },
        "box": (data.lo, data.hi),
        "classes": (data.classes, data.n_stuff),
        "config": asdict(cfg),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[PanopticModel, dict[str, Any]]:
    """The trained :class:`PanopticModel` of a checkpoint (``OUT/checkpoint.pt``), in eval mode, and the
    checkpoint's metadata (``step``, ``config``, ``token_history``), for querying the fields from Python
    (``model.sdf``, ``model.segment``). The render server does not use it: it serves the build's mesh, the
    geometry the exported world collides with (docs/serve.md).

    Raises:
        ValueError: the file is missing or is not a neural checkpoint (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # pickle / zip errors of a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not {"model", "config", "box", "classes"} <= set(ckpt):
        raise ValueError(f"{path}: not a neural-build checkpoint (missing model / config / box / classes)")
    known = {f.name for f in fields(NeuralConfig)}
    unknown = sorted(set(ckpt["config"]) - known)
    if unknown:  # written by another simgen version; the state dict below decides whether the model fits
        warnings.warn(f"{path}: ignoring config fields this simgen does not know: {', '.join(unknown)}",
                      stacklevel=2)  # fmt: skip
    cfg = NeuralConfig(**{k: v for k, v in ckpt["config"].items() if k in known}).resolved()
    (lo, hi), (classes, n_stuff) = ckpt["box"], ckpt["classes"]
    # tinycudann parameters load into the torch backend unchanged (same layout), so pick by device
    model = PanopticModel(cfg, lo, hi, classes, n_stuff, device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the model in the checkpoint does not fit its config ({e})") from e
    model.eval()
    meta = {k: ckpt[k] for k in ("step", "config", "token_history")}
    return model, meta


def run_neural(
    scene: Scene, out_dir: str | Path | None, cfg: NeuralConfig, progress: bool = True
) -> dict[str, Any]:
    """Optimise the neural panoptic fields on ``scene`` and write the build folder.

    Args:
        scene: a loaded (validated) scene.
        cfg: settings (``None`` fields are taken from ``cfg.preset``).
        out_dir: build folder; None trains and extracts without writing anything.
        progress: show progress bars.

    Returns:
        The build record written to ``build.json`` plus ``"mesh"`` (PanopticMesh), ``"instances"``
        (records) and ``"model"`` (the trained :class:`PanopticModel`).

    Raises:
        NeuralTrainingError: a loss term became NaN / inf (message names the term and the last checkpoint).
        KeyboardInterrupt: re-raised after a checkpoint was saved.
    """
    from simgen.recon.neural.extract import write_build  # keeps skimage off the import path

    cfg = cfg.resolved()
    t0 = time.perf_counter()
    dev = pick_device(cfg.device)
    if cfg.preset == "quality" and dev.type == "cpu":
        warnings.warn(
            "neural.preset quality is sized for a GPU: on a CPU one step takes tens of seconds (15.5 s on the "
            f"2-core machine of docs/benchmarks.md), so {cfg.steps} steps take days. Use --neural.preset fast "
            "(minutes on a CPU) or a CUDA device.",
            stacklevel=2,
        )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(out_dir) if out_dir is not None else None
    frames = scene.split_indices("all" if cfg.split == "all" else "train")
    if not frames:
        raise ValueError(f"{scene.root}: no {cfg.split!r} frames to train on")
    data = load_rays(scene, frames, cfg.downscale, dev, cfg.trunc, progress)
    ckpt_path = out / CHECKPOINT if out is not None else None
    ckpt = None
    if cfg.resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise ValueError(
                f"neural.resume: no checkpoint at {ckpt_path} (train once without --neural.resume first)"
            )
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        data.lo, data.hi = ckpt["box"]
        if tuple(ckpt["classes"]) != (data.classes, data.n_stuff):
            raise ValueError(f"{ckpt_path}: checkpoint classes {ckpt['classes']} differ from the scene's")
    model = PanopticModel(cfg, data.lo, data.hi, data.classes, data.n_stuff, dev)
    opt = torch.optim.Adam(model.param_groups(cfg), betas=(0.9, 0.99))
    decay = cfg.lr_decay ** (1.0 / max(1, cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: decay**s)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    stats = TokenStats(cfg.max_tokens)
    history: list[tuple[int, int]] = []
    init_record: dict[str, Any] = {"source": "none", "tokens": 0}
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{ckpt_path}: checkpoint does not fit this configuration ({e})") from e
        sched.load_state_dict(ckpt["sched"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        for k, v in ckpt["token_stats"].items():
            setattr(stats, k, v)
        history = [tuple(h) for h in ckpt["token_history"]]
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start = int(ckpt["step"])
    else:
        if cfg.init == "fusion":
            from simgen.recon.neural.warmstart import warm_start  # loads the fusion pipeline

            init_record = warm_start(model, scene, data, cfg, opt, rng, progress)
        if init_record["tokens"] == 0:  # no warm start, or fusion found no thing instance
            pts, _ = thing_pixels_3d(data, cfg.n_tokens, rng)
            init_tokens(model.tokens, pts, cfg.token_scale, rng)
        history.append((0, int(model.tokens.active.sum())))

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    log = open(out / LOG_FILE, "a") if out is not None else None  # closed in finally
    last_good = start if ckpt is not None else None
    bar = tqdm(range(start, cfg.steps), desc="neural", unit="step", disable=not progress, dynamic_ncols=True,
               initial=start, total=cfg.steps)  # fmt: skip
    adjust_log: list[dict] = []
    t_train = time.perf_counter()
    step = start
    try:
        for step in bar:
            model.train()
            batch = sample_batch(data, cfg.frames_per_batch, cfg.rays_per_frame, rng)
            amp = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with amp:
                terms = train_step(model, data, batch, cfg, step, stats)
            for name, v in terms.items():
                if not torch.isfinite(v):
                    where = f"{ckpt_path} (step {last_good})" if last_good is not None else "none saved yet"
                    raise NeuralTrainingError(
                        f"loss term L_{name} became {v.item()} at step {step}; training stopped. "
                        f"Last good checkpoint: {where}. Try a lower neural.lr-grid / neural.lr-mlp."
                    )
            total = optimise(terms, cfg, opt, scaler)
            sched.step()
            with torch.no_grad():
                model.tokens.log_scale.clamp_(
                    math.log(0.01), math.log(float(np.linalg.norm(data.hi - data.lo)))
                )
            ph = phase(cfg, step)
            if ph["adjust"] and (step + 1) % cfg.adjust_every == 0 and step > 0:
                surf = surface_points(model, data, cfg.surface_points, rng)
                with torch.no_grad():
                    probs = torch.cat([model.segment(c)[1] for c in surf.split(32768)])
                res = adjust_tokens(model.tokens, opt, stats, probs, cfg.prune_min_assign, cfg.iom_threshold,
                                    cfg.split_patience, rng)  # fmt: skip
                n_tok = int(model.tokens.active.sum())
                history.append((step + 1, n_tok))
                adjust_log.append({"step": step + 1, "tokens": n_tok, **res})
            vals = {k: round(float(v.detach()), 5) for k, v in terms.items()}
            n_tok = int(model.tokens.active.sum())
            if progress and step % max(1, cfg.log_every) == 0:
                bar.set_postfix({**{k: f"{v:.3g}" for k, v in vals.items()}, "tok": n_tok}, refresh=False)
            if log is not None and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                xi = float(model.xi(step / cfg.steps).detach())
                rec = {"step": step, "total": round(float(total.detach()), 5), **vals, "tokens": n_tok, "xi": round(xi, 2),
                       "time_s": round(time.perf_counter() - t_train, 2)}  # fmt: skip
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if ckpt_path is not None and (step + 1) % cfg.ckpt_every == 0:
                _save_checkpoint(
                    ckpt_path, model, opt, sched, scaler, step + 1, stats, history, data, cfg, rng
                )
                last_good = step + 1
        step = cfg.steps
    except KeyboardInterrupt:
        if ckpt_path is not None:
            from simgen.interrupts import postpone_forced_exit  # needed only on Ctrl-C

            with postpone_forced_exit():
                _save_checkpoint(ckpt_path, model, opt, sched, scaler, step, stats, history, data, cfg, rng)
            print(f"\ninterrupted: checkpoint at step {step} saved to {ckpt_path}; continue with --resume")
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    t_train = time.perf_counter() - t_train
    if ckpt_path is not None:
        _save_checkpoint(ckpt_path, model, opt, sched, scaler, cfg.steps, stats, history, data, cfg, rng)
    if out is not None:
        from simgen.recon.neural.plot import PLOT_FILE, write_training_plot  # matplotlib

        write_training_plot(out / LOG_FILE, out / PLOT_FILE, cfg)
    model.eval()
    record = write_build(scene, model, data, cfg, out, progress)
    record["timings_s"].update({"train": round(t_train, 2), "total": round(time.perf_counter() - t0, 2),
                                "step_mean": round(t_train / max(1, cfg.steps - start), 4)})  # fmt: skip
    record["counters"].update({"steps": cfg.steps, "resumed_from": start, "device": str(dev),
                               "backend": model.sdf.enc.backend, "token_history": history,
                               "token_adjustments": adjust_log, "init": init_record})  # fmt: skip
    if "fusion_s" in init_record:
        record["timings_s"].update(
            {"init_fusion": init_record["fusion_s"], "init_prefit": init_record["prefit_s"]}
        )
    if out is not None:
        from simgen.folders import BUILD_FILE

        io.write_json(
            out / BUILD_FILE, {k: v for k, v in record.items() if k not in ("mesh", "instances", "model")}
        )
    record["model"] = model
    return record
