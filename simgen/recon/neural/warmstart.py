"""Warm start of the neural fields from a fusion build (``neural.init = fusion``).

The fusion builder (simgen.recon.fusion, ~20 s on ``room``) gives a denoised surface with per-vertex
classes and instance ids. Before any volume-rendering step the neural model is pre-fitted to it:

* **geometry**: direct regression of the SDF on points near the fused surface and along the training
  rays in free space, against their signed distance to the fused surface, plus the eikonal term;
* **tokens**: one token per fused thing instance, its Gaussian (eq. 5) centred at the instance's
  vertex centroid with the principal axes and spreads of its vertices;
* **segmentation**: the semantic field, the instance field + token features and the class head
  ``h_SI`` are pre-fitted to the fused vertex classes / instances at the same surface points.

No rendering is involved, so a pre-fit step costs a fraction of a training step. Training then runs
the whole method (Hungarian matching to the 2D masks, panoptic head, dynamic tokens) from this start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from simgen.data.scene import Scene
from simgen.folders import MESH_FILE, PanopticMesh, read_panoptic_mesh
from simgen.recon.neural import losses as L
from simgen.recon.neural.config import NeuralConfig
from simgen.recon.neural.data import RayData, ray_points
from simgen.recon.neural.model import PanopticModel
from simgen.recon.neural.tokens import add_tokens


@dataclass
class FusionPrior:
    """Surface samples of a fused panoptic mesh, labelled in the neural model's class order.

    points: ``(P, 3)`` float32 world metres on the fused surface; normals: ``(P, 3)`` float32 unit face
    normals pointing into free space; cls: ``(P,)`` int64 contiguous class index (``RayData.classes``),
    -1 unknown; inst: ``(P,)`` int64 index into ``instances`` (-1 stuff / unknown); instances: ``(K,)``
    fused instance ids of the thing instances kept; inst_class: ``(K,)`` int64 contiguous *thing* index
    (class index - n_stuff) of each.
    """

    points: np.ndarray
    normals: np.ndarray
    cls: np.ndarray
    inst: np.ndarray
    instances: np.ndarray
    inst_class: np.ndarray


def fused_mesh(scene: Scene, cfg: NeuralConfig, progress: bool) -> tuple[PanopticMesh, str]:
    """The fused panoptic mesh: read from ``cfg.init_build`` when given, else built in-process.

    Returns the mesh and a description of its source (for build.json).
    """
    if cfg.init_build:
        path = Path(cfg.init_build) / MESH_FILE
        if not path.is_file():
            raise ValueError(f"neural.init-build: {path} does not exist (expected a fusion build folder)")
        mesh = read_panoptic_mesh(path)
        source = str(path)
    else:
        # imported here: the fusion pipeline (scikit-image, scipy) loads only when a warm start runs
        from simgen.recon.fusion import FusionConfig, run_fusion

        fcfg = FusionConfig(split=cfg.split, voxel_size=cfg.init_voxel)
        mesh = run_fusion(scene, None, fcfg, progress=progress)["mesh"]
        source = f"fusion voxel {cfg.init_voxel} m"
    if len(mesh.faces) == 0:
        raise ValueError(f"neural.init: the fusion build ({source}) has no faces; use --neural.init none")
    return mesh, source


def prior_from_mesh(
    mesh: PanopticMesh, classes: list[int], n_stuff: int, n_samples: int, rng: np.random.Generator
) -> FusionPrior:
    """Area-weighted samples of ``mesh`` with face normals and the labels of each sample's nearest corner.

    Fused vertices whose category is not among ``classes`` count as unknown.
    """
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces.astype(np.int64)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(cross, axis=1)
    ok = area > 1e-12
    f, cross, area = f[ok], cross[ok], area[ok]
    # fusion faces are counter-clockwise seen from free space, so the right-hand normal points there
    normal = cross / area[:, None]
    face = rng.choice(len(f), size=n_samples, p=area / area.sum())
    u, w = rng.random(n_samples), rng.random(n_samples)
    flip = u + w > 1
    u, w = np.where(flip, 1 - u, u), np.where(flip, 1 - w, w)
    bary = np.stack([1 - u - w, u, w], axis=1)  # (P, 3)
    corners = f[face]  # (P, 3)
    points = (v[corners] * bary[..., None]).sum(1)
    nearest = corners[np.arange(n_samples), bary.argmax(1)]

    lut = {int(c): k for k, c in enumerate(classes)}
    cat_to_cls = np.full(max(max(classes, default=0), int(mesh.semantic.max(initial=0))) + 2, -1, np.int64)
    for c, k in lut.items():
        cat_to_cls[c] = k
    sem = mesh.semantic.astype(np.int64)
    vcls = np.where(sem >= 0, cat_to_cls[np.clip(sem, 0, None)], -1)
    # a thing instance's class is its vertices' majority class (fusion gives one class per instance)
    ins = mesh.instance.astype(np.int64)
    thing_v = (ins > 0) & (vcls >= n_stuff)
    ids = np.unique(ins[thing_v])
    inst_class = np.array(
        [np.bincount(vcls[thing_v & (ins == i)] - n_stuff).argmax() for i in ids], np.int64
    )  # instances (tens), each vectorised
    vinst = np.full(len(v), -1, np.int64)
    vinst[thing_v] = np.searchsorted(ids, ins[thing_v])
    return FusionPrior(
        points=points.astype(np.float32),
        normals=normal[face].astype(np.float32),
        cls=vcls[nearest],
        inst=vinst[nearest],
        instances=ids,
        inst_class=inst_class,
    )


def token_gaussians(
    prior: FusionPrior, spread: float, min_std: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fused thing instance: centre ``(K, 3)``, quaternion ``(K, 4)`` (w, x, y, z) and std ``(K, 3)``.

    The covariance of the instance's surface samples, ``Σ = R Λ² Rᵀ`` (eq. 5) by eigen-decomposition;
    the stds are ``spread`` x the sample stds, at least ``min_std``, so G (eq. 8) still covers the
    object's outer samples and a token of a flat object keeps some thickness.
    """
    K = len(prior.instances)
    centre = np.zeros((K, 3), np.float32)
    quat = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (K, 1))
    std = np.full((K, 3), min_std, np.float32)
    for k in range(K):  # instances (tens)
        p = prior.points[prior.inst == k].astype(np.float64)
        if len(p) == 0:
            continue
        centre[k] = p.mean(0)
        if len(p) < 4:
            continue
        evals, evecs = np.linalg.eigh(np.cov(p.T))
        if np.linalg.det(evecs) < 0:  # a rotation, not a reflection
            evecs[:, 0] = -evecs[:, 0]
        x, y, z, w = Rotation.from_matrix(evecs).as_quat()
        quat[k] = (w, x, y, z)
        std[k] = np.maximum(spread * np.sqrt(np.clip(evals, 0.0, None)), min_std)
    return centre, quat, std


def init_tokens_from_prior(
    model: PanopticModel, prior: FusionPrior, cfg: NeuralConfig, rng: np.random.Generator
) -> int:
    """Activate one token per fused thing instance (at most ``max_tokens``); returns how many."""
    tokens = model.tokens
    centre, quat, std = token_gaussians(prior, cfg.init_token_spread, 2.0 * cfg.init_voxel)
    n = min(len(centre), tokens.capacity)
    dev = tokens.centre.device
    with torch.no_grad():
        tokens.active.zero_()
        tokens.centre[:n] = torch.as_tensor(centre[:n], device=dev)
        tokens.quat[:n] = torch.as_tensor(quat[:n], device=dev)
        tokens.log_scale[:n] = torch.as_tensor(np.log(std[:n]), device=dev)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        tokens.feat[:n] = torch.randn(n, tokens.feat.shape[1], generator=g).to(dev)
        tokens.active[:n] = True
    return n


def unexplained_thing_points(prior: FusionPrior, data: RayData, radius: float) -> np.ndarray:
    """Ray indices ``(M,)`` of thing-mask pixels with depth whose observed point is not on a fused thing:
    the nearest fused surface sample is farther than ``radius`` or belongs to no thing instance (things
    the fusion dropped, e.g. seen in too few keyframes)."""
    ok = torch.nonzero((data.mask >= 0) & (data.depth > 0)).flatten().cpu().numpy()
    if len(ok) == 0:
        return ok
    dist, idx = cKDTree(prior.points).query(ray_points(data, ok), distance_upper_bound=radius, workers=1)
    on_thing = np.isfinite(dist) & (prior.inst[np.where(np.isfinite(dist), idx, 0)] >= 0)
    return ok[~on_thing]


@dataclass
class FitPoints:
    """The pre-fit pool: ``points`` ``(P, 3)`` float32, target SDF ``sdf`` ``(P,)`` float32 (metres) and
    ``exact`` ``(P,)`` bool: False where the target is only a lower bound (free space farther than the
    query radius from the fused surface)."""

    points: np.ndarray
    sdf: np.ndarray
    exact: np.ndarray


def sdf_targets(prior: FusionPrior, data: RayData, cfg: NeuralConfig, n: int, rng) -> FitPoints:
    """``n`` points with their signed distance to the fused surface (positive in free space).

    Half are surface samples moved along their normal by up to ``trunc``; half lie on training rays in
    front of the observed depth (free space, where rendering will put its uniform samples). The target is
    the distance to the nearest surface sample, signed by that sample's normal; within ``trunc`` the
    point-to-plane distance of that sample replaces it, which is exact on flat parts and free of the
    sample-spacing error. Distances are searched up to ``2 trunc`` only (a k-d tree query far from a
    surface is slow); farther free-space points get the lower bound ``2 trunc``.
    """
    n_surf = n // 2
    pick = rng.integers(0, len(prior.points), n_surf)
    off = rng.uniform(-cfg.trunc, cfg.trunc, n_surf).astype(np.float32)
    near = prior.points[pick] + off[:, None] * prior.normals[pick]
    ok = torch.nonzero(data.depth > 0).flatten().cpu().numpy()
    rays = rng.choice(ok, size=n - n_surf, replace=len(ok) < n - n_surf)
    frame = np.searchsorted(data.start, rays, side="right") - 1
    o = data.origins.cpu().numpy()[frame]
    rays_t = torch.as_tensor(rays, device=data.dirs.device)
    d = data.dirs[rays_t].cpu().numpy()
    D = data.depth[rays_t].cpu().numpy()
    t = cfg.near + (D - cfg.near) * rng.random(len(rays), dtype=np.float32)
    free = o + d * t[:, None]
    pts = np.concatenate([near, free]).astype(np.float32)
    radius = 2.0 * cfg.trunc
    dist, idx = cKDTree(prior.points).query(pts, distance_upper_bound=radius, workers=1)
    exact = np.isfinite(dist)
    idx = np.where(exact, idx, 0)
    plane = ((pts - prior.points[idx]) * prior.normals[idx]).sum(1)
    target = np.where(dist <= cfg.trunc, plane, np.sign(plane) * np.where(exact, dist, radius))
    # the observed ray passed through its free-space points, so they are outside whatever the normals say
    target[n_surf:] = np.abs(target[n_surf:])
    return FitPoints(pts, target.astype(np.float32), exact)


def prefit(
    model: PanopticModel,
    prior: FusionPrior,
    data: RayData,
    cfg: NeuralConfig,
    opt: torch.optim.Optimizer,
    rng,
    progress: bool,
) -> dict[str, float]:
    """Pre-fit SDF, semantic and instance fields, tokens and class head to the fused build.

    Loss per step: ``w_sdf |s - target|`` (one-sided where the target is a bound) on ``init_batch`` pool
    points + ``w_eik L_eik`` on ``n_eikonal`` of them, and at ``init_batch``
    fused surface samples ``w_sem`` CE(semantic, fused class) + ``w_ins`` BCE(l_I, fused instance one-hot)
    + ``w_c`` L_c(token classes). ``opt`` is the training optimiser: its Adam moments carry over into
    training (a fresh Adam's first steps move every parameter by about its learning rate, which shook the
    pre-fitted surface off the observed depth in a 1-step run).

    Tokens beyond the fused instances (``add_tokens`` extras) take no part in the instance term.

    Returns the final loss values (for build.json).
    """
    dev = model.box.lo.device
    pool = sdf_targets(prior, data, cfg, cfg.init_pool, rng)
    pool_p = torch.as_tensor(pool.points, device=dev)
    pool_s = torch.as_tensor(pool.sdf, device=dev)
    pool_x = torch.as_tensor(pool.exact, device=dev)
    labelled = np.flatnonzero(prior.cls >= 0)
    surf_p = torch.as_tensor(prior.points[labelled], device=dev)
    surf_c = torch.as_tensor(prior.cls[labelled], device=dev)
    n_tok = min(len(prior.instances), int(model.tokens.active.sum()))  # fused tokens come first
    inst = prior.inst[labelled]
    surf_i = torch.as_tensor(np.where(inst < n_tok, inst, -1), device=dev)  # instances beyond capacity: none
    tok_cls = torch.as_tensor(prior.inst_class[:n_tok], device=dev)
    B = cfg.init_batch
    vals: dict[str, float] = {}
    # learning rates decay 10x over the pre-fit (restored after): at the full rate Adam's steps on the
    # SDF's output bias alone move the whole surface by ~lr metres per step; measured on room, a 1.5-2 cm
    # offset of the fitted surface at the end without the decay
    base = [g["lr"] for g in opt.param_groups]
    decay = 0.1 ** (1.0 / max(1, cfg.init_steps))
    bar = tqdm(range(cfg.init_steps), desc="warm start", unit="step", disable=not progress, leave=False)
    for step in bar:
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * decay**step
        idx = torch.randint(0, len(pool_p), (B,), device=dev)
        s, tgt = model.sdf(pool_p[idx]).float(), pool_s[idx]
        err = torch.where(pool_x[idx], (s - tgt).abs(), torch.relu(tgt - s))
        # the eikonal term needs a double backward, the costly part: on a subset as in training
        _, grad = model.sdf.with_normal(pool_p[idx[: cfg.n_eikonal]])
        terms = {"sdf": err.mean(), "eik": L.eikonal_loss(grad.float())}
        if len(surf_p):
            j = torch.randint(0, len(surf_p), (B,), device=dev)
            sem, ins = model.segment(surf_p[j])
            terms["sem"] = L.nll_loss(sem, surf_c[j])
            if n_tok:
                target = F.one_hot(surf_i[j].clamp_min(0), n_tok).float() * (surf_i[j] >= 0)[:, None]
                terms["ins"] = L.bce_loss(ins[:, :n_tok], target)
                logits = model.cls_head(model.tokens.cls_feat[:n_tok])
                terms["c"] = L.class_loss(logits, tok_cls, logits.shape[1])
        total = sum(getattr(cfg, f"w_{k}") * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():
            model.tokens.log_scale.clamp_(math.log(0.01), math.log(float(np.linalg.norm(data.hi - data.lo))))
        vals = {k: round(float(v.detach()), 5) for k, v in terms.items()}
        bar.set_postfix({k: f"{v:.3g}" for k, v in vals.items()}, refresh=False)
    bar.close()
    for g, lr in zip(opt.param_groups, base, strict=True):
        g["lr"] = lr
    return vals


def warm_start(
    model: PanopticModel,
    scene: Scene,
    data: RayData,
    cfg: NeuralConfig,
    opt: torch.optim.Optimizer,
    rng,
    progress: bool,
) -> dict[str, Any]:
    """Fusion build (or read it), tokens from its instances, pre-fit of every field with the training
    optimiser ``opt`` (see :func:`prefit`). Returns a record for build.json.

    When the fusion build has no thing instance the caller keeps its own token initialisation: the
    record's ``tokens`` is then 0.
    """
    t0 = time.perf_counter()
    mesh, source = fused_mesh(scene, cfg, progress)
    t_fusion = time.perf_counter() - t0
    prior = prior_from_mesh(mesh, data.classes, data.n_stuff, cfg.init_samples, rng)
    n_tok = init_tokens_from_prior(model, prior, cfg, rng) if len(prior.instances) else 0
    n_extra = 0
    if n_tok:
        # things the fusion missed get a chance too: extra tokens at random unexplained thing pixels;
        # those that no mask claims are pruned by the dynamic adjustment (section IV-C)
        rays = unexplained_thing_points(prior, data, 2.0 * cfg.init_voxel)
        n_extra = min(cfg.init_extra_tokens, len(rays), model.tokens.capacity - n_tok)
        if n_extra > 0:
            pick = rng.choice(rays, size=n_extra, replace=False)
            add_tokens(model.tokens, ray_points(data, pick), cfg.token_scale, rng)
    t1 = time.perf_counter()
    losses = prefit(model, prior, data, cfg, opt, rng, progress)
    return {
        "source": source,
        "fused_vertices": len(mesh.vertices),
        "fused_instances": len(prior.instances),
        "tokens": n_tok + n_extra,
        "extra_tokens": n_extra,
        "prefit_losses": losses,
        "fusion_s": round(t_fusion, 2),
        "prefit_s": round(time.perf_counter() - t1, 2),
    }
