"""Brute-force Gaussian rasterizer for tests: a Python loop over every pixel and every Gaussian.

Independent of :mod:`simgen.render.rasterize`'s tiled path (no tiles, no chunks, per-Gaussian scalar
projection) but the same rules and thresholds, so tests hold the library's fast paths to it.
"""

from __future__ import annotations

import torch

from simgen.render.rasterize import ALPHA_MAX, ALPHA_MIN, SIGMA_CUTOFF, T_MIN, quat_to_rotmat


def _scalar(x: torch.Tensor) -> float:
    return float(x.detach())


def rasterize_reference(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    features: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
) -> dict[str, torch.Tensor]:
    """Brute-force reference for tests only: a Python loop over every pixel and every Gaussian.

    Independent of the tiled path (no tiles, no chunks, per-Gaussian scalar projection), same rules.
    ``colors`` must be ``(N, 3)``. Returns ``rgb``, ``depth``, ``alpha``, ``features`` like :func:`rasterize`.
    Hopelessly slow beyond a few thousand pixel-Gaussian pairs.
    """
    viewmat, K = viewmat.to(means), K.to(means)
    vals = colors if features is None else torch.cat([colors, features], dim=1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    proj = []
    for i in range(means.shape[0]):
        p = viewmat[:3, :3] @ means[i] + viewmat[:3, 3]
        x, y, z = p[0], p[1], p[2]
        if not (near < _scalar(z) < far):
            continue
        lim_x = (
            float(-(cx / fx + 0.3 * 0.5 * width / fx)),
            float((width - cx) / fx + 0.3 * 0.5 * width / fx),
        )
        lim_y = (
            float(-(cy / fy + 0.3 * 0.5 * height / fy)),
            float((height - cy) / fy + 0.3 * 0.5 * height / fy),
        )
        tx = z * torch.clamp(x / z, *lim_x)
        ty = z * torch.clamp(y / z, *lim_y)
        J = torch.stack(
            [torch.stack([fx / z, 0 * z, -fx * tx / z**2]), torch.stack([0 * z, fy / z, -fy * ty / z**2])]
        )
        Rq = quat_to_rotmat(quats[i : i + 1])[0]
        S = torch.diag(scales[i] ** 2)
        W = viewmat[:3, :3]
        cov = J @ W @ Rq @ S @ Rq.T @ W.T @ J.T + eps2d * torch.eye(2, dtype=means.dtype)
        if _scalar(torch.det(cov)) <= 0:
            continue
        proj.append(
            (_scalar(z), i, torch.stack([fx * x / z + cx, fy * y / z + cy]), torch.linalg.inv(cov), z)
        )
    proj.sort(key=lambda e: (e[0], e[1]))  # depth, ties by index (the tiled path's stable sort)
    n_ch = vals.shape[1]
    zero = means.sum() * 0  # keeps empty pixels in the autograd graph
    rows = []
    for r in range(height):
        row = []
        for c in range(width):
            pix = torch.tensor([c + 0.5, r + 0.5], dtype=means.dtype)
            T = zero + 1.0
            out = [zero] * (n_ch + 1)
            for _, i, m, inv, z in proj:
                d = pix - m
                sigma = 0.5 * d @ inv @ d
                if _scalar(sigma) > SIGMA_CUTOFF:
                    continue
                alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), ALPHA_MAX)
                if _scalar(alpha) < ALPHA_MIN:
                    continue
                if _scalar(T * (1 - alpha)) <= T_MIN:
                    break
                w = alpha * T
                out = [o + w * v for o, v in zip(out, [*vals[i].unbind(), z], strict=True)]
                T = T * (1 - alpha)
            row.append(torch.stack([*out, 1 - T]))
        rows.append(torch.stack(row))
    img = torch.stack(rows)
    alpha = img[..., -1]
    return {
        "rgb": img[..., :3],
        "depth": img[..., -2] / torch.clamp_min(alpha, 1e-10),
        "alpha": alpha,
        "features": img[..., 3:-2] if features is not None else None,
    }
