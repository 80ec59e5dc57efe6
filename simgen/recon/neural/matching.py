"""Per-frame assignment of 2D instance masks to instance tokens (paper eq. 27-29).

For one frame's sampled rays: predicted token masks ``(R, N)`` (rendered ``l_I``, probabilities) and
the frame's ``L`` 2D thing masks ``(R, L)``; the cost ``C = Dice + BCE`` ``(L, N)`` goes to scipy's
``linear_sum_assignment`` (Hungarian). Costs are computed for all pairs at once by matrix products.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def dice_cost(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Eq. 28 for every (mask, token) pair: ``pred`` ``(R, N)`` in [0,1], ``target`` ``(R, L)`` {0,1} -> ``(L, N)``."""
    inter = target.t() @ pred  # (L, N)
    return 1.0 - (2.0 * inter + eps) / (target.sum(0)[:, None] + pred.sum(0)[None, :] + eps)


def bce_cost(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 29 averaged over the ``R`` rays for every (mask, token) pair -> ``(L, N)``."""
    p = pred.clamp(1e-6, 1 - 1e-6)
    return -(target.t() @ torch.log(p) + (1 - target).t() @ torch.log1p(-p)) / pred.shape[0]


def match_masks(
    pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor, eps: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of one frame's masks to the active tokens.

    Args:
        pred: ``(R, N)`` rendered token mask probabilities.
        target: ``(R, L)`` float {0, 1}: the frame's thing masks on these rays.
        active: ``(N,)`` bool.

    Returns:
        ``mask_idx`` ``(M,)`` and ``token_idx`` ``(M,)`` int64 matched pairs (``M = min(L, #active)``),
        and ``best`` ``(L,)`` int64: each mask's lowest-cost active token (the split signal of section IV-C).
    """
    act = torch.nonzero(active).flatten()
    L = target.shape[1]
    if L == 0 or act.numel() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.full(L, -1, dtype=np.int64)
    with torch.no_grad():
        p = pred[:, act].float()
        t = target.float()
        cost = (dice_cost(p, t, eps) + bce_cost(p, t)).cpu().numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    act_np = act.cpu().numpy()
    return rows.astype(np.int64), act_np[cols].astype(np.int64), act_np[cost.argmin(1)].astype(np.int64)
