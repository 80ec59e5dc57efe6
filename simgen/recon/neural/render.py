"""Depth-guided ray sampling and SDF volume rendering (paper eq. 10-11).

Rays: origins ``(R, 3)`` and unit directions ``(R, 3)`` in world metres; distances along a ray are
ray lengths (not z-depth). Observed depth enters as the ray length to the surface, ``0`` = no depth.
"""

from __future__ import annotations

import torch


def sample_along_rays(
    depth: torch.Tensor,
    near: float,
    far: float,
    n_uniform: int,
    n_surface: int,
    trunc: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sorted sample distances ``(R, n_uniform + n_surface)`` along each ray, guided by the observed depth.

    With depth ``D > 0``: ``n_uniform`` stratified samples in ``[near, D + trunc]`` (free space, sparse)
    plus ``n_surface`` stratified samples in ``[D - trunc, D + trunc]`` (dense near the surface).
    Without depth: all samples stratified in ``[near, far]``.

    Args:
        depth: ``(R,)`` observed ray length in metres, 0 where invalid.
    """
    R, dev = depth.shape[0], depth.device
    valid = depth > 0
    hi = torch.where(valid, depth + trunc, torch.full_like(depth, far))

    def strat(lo, hi, n):
        u = (torch.arange(n, device=dev) + torch.rand(R, n, device=dev, generator=generator)) / n
        return lo[:, None] + (hi - lo)[:, None] * u

    lo = torch.full_like(depth, near)
    t_free = strat(lo, hi, n_uniform)
    s_lo = torch.where(valid, (depth - trunc).clamp_min(near), lo)
    t_surf = strat(s_lo, hi, n_surface)
    return torch.sort(torch.cat([t_free, t_surf], dim=1), dim=1).values


def sdf_to_alpha(sdf: torch.Tensor, xi: torch.Tensor | float) -> torch.Tensor:
    """Discrete opacity of each interval between consecutive samples, eq. 11 (S-density, NeuS).

    ``alpha_j = max((Phi(s_j) - Phi(s_{j+1})) / Phi(s_j), 0)`` with ``Phi(s) = sigmoid(xi * s)``.

    Args:
        sdf: ``(R, S)`` SDF at the sorted samples.
        xi: sharpness (inverse standard deviation of the S-density), scalar.

    Returns:
        ``(R, S - 1)`` in [0, 1].
    """
    cdf = torch.sigmoid(sdf * xi)
    prev, nxt = cdf[:, :-1], cdf[:, 1:]
    # the 1e-5 keeps the ratio finite deep inside surfaces, where Phi(s_j) underflows (as NeuS does)
    return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0.0, 1.0)


def alpha_to_weights(alpha: torch.Tensor) -> torch.Tensor:
    """Volume-rendering weights ``T_j alpha_j`` ``(R, S-1)`` (eq. 10), ``T_j = prod_{m<j} (1 - alpha_m)``."""
    trans = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-7], dim=1), dim=1
    )
    return trans * alpha


def render_depth(weights: torch.Tensor, t: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Rendered ray length ``(R,)``: the weights ``(R, S-1)`` times the interval midpoints of ``t`` ``(R, S)``.

    With ``normalise`` the weights are divided by their sum (the ray's accumulated opacity). Samples end
    ``trunc`` behind the observed surface, where a soft S-density (small xi) has not yet reached full
    opacity; the plain sum is then biased towards the camera by the missing mass, and L_depth would pull
    the SDF far negative behind surfaces (against L_eik) to make it up. docs/method.md has the measurement.
    """
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    if normalise:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
    return (weights * mid).sum(-1)


def top_k_samples(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(R, k)`` of the ``k`` intervals with the largest weights per ray (all if k<=0 or k>=S-1)."""
    n = weights.shape[1]
    if k <= 0 or k >= n:
        return torch.arange(n, device=weights.device).expand(weights.shape[0], n)
    return torch.topk(weights.detach(), k, dim=1).indices


def render_values(weights: torch.Tensor, values: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Eq. 10 for a per-sample quantity: ``(R, K)`` weights x ``(R, K, C)`` values -> ``(R, C)``.

    With ``normalise`` the weights are divided by their sum so rendered probabilities stay distributions
    even where the ray has not (yet) accumulated full opacity.
    """
    w = weights
    if normalise:
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-6)
    return (w[..., None] * values).sum(1)
