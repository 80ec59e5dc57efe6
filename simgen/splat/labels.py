"""Panoptic labels on Gaussians: baking from a labelled mesh, label-blended panoptic rendering, and
weighted uplifting of 2D semantic pseudo-labels.

Label blending follows PanopticSplatting (Xie et al. 2025, sec. III): every Gaussian carries a discrete
label, splatted as a one-hot vector with the usual alpha-blending weights; a pixel takes the label with the
largest blended weight. A "label" here is the pair (semantic category, instance id) of the build output
contract, so one blend gives both the semantic and the instance image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simgen.splat.gaussians import GaussianScene


def bake_labels_from_mesh(g: GaussianScene, mesh, max_distance: float | None = None) -> GaussianScene:
    """Give each Gaussian the labels of the nearest vertex of ``mesh`` (a
    :class:`simgen.build.output.PanopticMesh`). Gaussians farther than ``max_distance`` metres from every
    vertex become unknown (-1 / 0). Returns a new scene; ``g`` is unchanged."""
    from scipy.spatial import cKDTree

    if len(mesh.vertices) == 0:
        raise ValueError("bake_labels_from_mesh: the mesh has no vertices")
    d, idx = cKDTree(mesh.vertices).query(g.means.detach().cpu().numpy(), k=1)
    sem = mesh.semantic[idx].astype(np.int32)
    ins = mesh.instance[idx].astype(np.int32)
    if max_distance is not None:
        far = d > max_distance
        sem[far], ins[far] = -1, 0
    out = g.detach()
    out.semantic = torch.from_numpy(sem).to(g.means.device)
    out.instance = torch.from_numpy(ins).to(g.means.device)
    return out


def transfer_labels(g: GaussianScene, source: GaussianScene) -> GaussianScene:
    """Labels of the nearest Gaussian of ``source`` (e.g. after densification moved and split Gaussians)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(source.means.detach().cpu().numpy()).query(g.means.detach().cpu().numpy(), k=1)
    idx = torch.from_numpy(idx).to(source.semantic.device)
    out = g.detach()
    out.semantic = source.semantic[idx].to(g.means.device)
    out.instance = source.instance[idx].to(g.means.device)
    return out


def render_panoptic(
    g: GaussianScene,
    viewmat,
    K,
    width: int,
    height: int,
    *,
    min_alpha: float = 0.5,
    group: int = 32,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Label-blended panoptic rendering of one camera (no gradients).

    The distinct (semantic, instance) pairs of ``g`` are blended as one-hot feature channels, ``group``
    channels per rasterization pass, and each pixel takes the pair with the largest weight. Pixels with
    accumulated alpha below ``min_alpha`` are void. Returns ``semantic`` ``(H, W)`` int32 (-1 void / unknown),
    ``instance`` ``(H, W)`` int32 (0 stuff / void), ``confidence`` ``(H, W)`` float32 (winning weight / alpha)
    and ``alpha`` ``(H, W)`` float32.
    """
    pairs, inverse = torch.unique(torch.stack([g.semantic, g.instance], dim=1).cpu(), dim=0, return_inverse=True)
    inverse = inverse.to(g.means.device)
    best_w = torch.zeros(height, width, device=g.means.device)
    best_i = torch.zeros(height, width, dtype=torch.int64, device=g.means.device)
    alpha = None
    with torch.no_grad():
        for c0 in range(0, len(pairs), group):
            c1 = min(c0 + group, len(pairs))
            onehot = (inverse[:, None] == torch.arange(c0, c1, device=inverse.device)[None, :]).to(g.means.dtype)
            out = g.render(viewmat, K, width, height, features=onehot, **kwargs)
            w, i = out["features"].max(dim=-1)
            better = w > best_w
            best_w = torch.where(better, w, best_w)
            best_i = torch.where(better, i + c0, best_i)
            alpha = out["alpha"]
    if alpha is None:  # no Gaussians at all
        alpha = torch.zeros(height, width)
    sem = pairs[best_i.cpu(), 0].numpy().astype(np.int32)
    ins = pairs[best_i.cpu(), 1].numpy().astype(np.int32)
    void = (alpha < min_alpha).cpu().numpy()
    sem[void], ins[void] = -1, 0
    conf = (best_w / torch.clamp_min(alpha, 1e-10)).cpu().numpy().astype(np.float32)
    return {"semantic": sem, "instance": ins, "confidence": conf, "alpha": alpha.cpu().numpy().astype(np.float32)}


def uplift_semantics(
    g: GaussianScene,
    views: list[tuple[Any, Any, np.ndarray]],
    num_classes: int,
    *,
    min_votes: float = 1e-3,
    **kwargs: Any,
) -> tuple[GaussianScene, np.ndarray]:
    """LUDVIG-style weighted uplifting of 2D semantic labels onto the Gaussians.

    Each Gaussian's vote for class ``c`` is the sum, over all views and pixels labelled ``c``, of its
    alpha-blending weight at that pixel. The weights are read off autograd: for blended per-Gaussian
    features ``F(x) = sum_i w_i(x) f_i``, the gradient of ``sum_x onehot(label(x)) . F(x)`` with respect to
    ``f_i`` is exactly ``sum_x w_i(x) onehot(label(x))``.

    ``views``: ``(viewmat, K, semantic)`` with ``semantic`` ``(H, W)`` int category ids in
    ``[0, num_classes)``, negative = unlabelled. Gaussians whose total vote is below ``min_votes`` keep their
    label. Returns the relabelled scene (instances unchanged) and the votes ``(N, num_classes)`` float32.
    """
    votes = torch.zeros(len(g), num_classes, device=g.means.device)
    for viewmat, K, sem in views:
        sem_t = torch.as_tensor(np.asarray(sem), dtype=torch.int64, device=g.means.device)
        h, w = sem_t.shape
        target = torch.nn.functional.one_hot(sem_t.clamp_min(0), num_classes).to(g.means.dtype)
        target = target * (sem_t >= 0)[..., None]
        feats = torch.zeros(len(g), num_classes, dtype=g.means.dtype, device=g.means.device, requires_grad=True)
        det = g.detach()
        out = det.render(viewmat, K, w, h, features=feats, **kwargs)
        (out["features"] * target).sum().backward()
        votes += feats.grad
    total = votes.sum(dim=1)
    out_g = g.detach()
    relabel = total >= min_votes
    out_g.semantic = torch.where(relabel, votes.argmax(dim=1).to(torch.int32), g.semantic)
    return out_g, votes.cpu().numpy()
