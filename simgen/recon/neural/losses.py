"""Loss terms of PanopticRecon++ (paper eq. 24-33). Every function returns a scalar mean.

Shapes: ``R`` rays, ``S`` samples per ray, ``N`` token slots, ``C`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdf_loss(sdf: torch.Tensor, b: torch.Tensor, trunc: float, beta: float) -> torch.Tensor:
    """Eq. 24: ``|s - b|`` inside the truncation band ``|b| <= trunc``; elsewhere (free space)
    ``max(0, exp(-beta s) - 1, s - b)`` -- penalises negative SDF and SDF beyond the observed bound.

    Args:
        sdf: ``(R, S)`` predicted SDF (metres); b: ``(R, S)`` observed depth minus sample distance,
        NaN on rays without depth (those samples are skipped).
    """
    ok = torch.isfinite(b)
    if not ok.any():
        return sdf.sum() * 0.0
    s, b = sdf[ok], b[ok]
    near = b.abs() <= trunc
    free = torch.maximum(torch.maximum(torch.zeros_like(s), torch.expm1(-beta * s)), s - b)
    return torch.where(near, (s - b).abs(), free).mean()


def eikonal_loss(grad: torch.Tensor) -> torch.Tensor:
    """Eq. 25: ``(1 - |grad s|)^2`` over ``(P, 3)`` SDF gradients."""
    return (1.0 - grad.norm(dim=-1)).square().mean()


def depth_loss(rendered: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Eq. 26: ``|D - u_d|`` over rays with observed depth (``observed > 0``); ``(R,)`` ray lengths."""
    ok = observed > 0
    if not ok.any():
        return rendered.sum() * 0.0
    return (rendered[ok] - observed[ok]).abs().mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Eq. 28 for matched pairs: ``pred``, ``target`` ``(R, M)`` -> mean over the ``M`` pairs."""
    inter = (pred * target).sum(0)
    return (1.0 - (2.0 * inter + eps) / (pred.sum(0) + target.sum(0) + eps)).mean()


def bce_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 29 for matched pairs, mean over rays and pairs (probabilities clamped away from 0 and 1)."""
    return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)


def instance_loss(pred: torch.Tensor, target: torch.Tensor, use_dice: bool, eps: float = 1.0) -> torch.Tensor:
    """Eq. 30 on matched pairs: ``pred`` ``(R, M)`` rendered token masks, ``target`` ``(R, M)`` 2D masks."""
    loss = bce_loss(pred, target)
    return loss + dice_loss(pred, target, eps) if use_dice else loss


def unmatched_loss(pred: torch.Tensor) -> torch.Tensor:
    """Eq. 29 with an empty target for the tokens no mask of the frame was matched to: ``pred`` ``(R, U)``
    rendered masks of the ``U`` unmatched tokens on labelled rays; BCE against 0, mean over rays and
    summed over tokens (most unmatched tokens are ~0 there; a sum keeps the few that are not from
    being averaged away)."""
    return -torch.log1p(-pred.clamp(0.0, 1 - 1e-6)).mean(0).sum()


def class_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Eq. 31: binary cross-entropy of ``h_SI`` ``(M, C_thing)`` logits against one-hot classes ``(M,)``."""
    onehot = F.one_hot(target, n_classes).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, onehot)


def nll_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 32 / 33: cross-entropy of rendered distributions ``(R, K)`` with labels ``(R,)`` (-1 ignored)."""
    ok = target >= 0
    if not ok.any():
        return probs.sum() * 0.0
    p = probs[ok].gather(1, target[ok, None]).squeeze(1)
    return -torch.log(p.clamp_min(1e-6)).mean()
