"""Instance token initialisation and dynamic adjustment (paper section IV-A and IV-C).

Tokens live in fixed-capacity parameter tensors with an ``active`` mask (see fields.InstanceTokens):
pruning clears a slot's flag, splitting copies a token into a free slot; the optimiser state of a
changed slot is zeroed so a re-used slot starts fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from simgen.recon.neural.fields import InstanceTokens


def init_tokens(tokens: InstanceTokens, points: np.ndarray, scale: float, rng: np.random.Generator) -> None:
    """Activate ``len(points)`` tokens centred at back-projected thing pixels ``(n, 3)`` (section IV-A)."""
    n = min(len(points), tokens.capacity)
    with torch.no_grad():
        tokens.active.zero_()
        tokens.centre[:n] = torch.as_tensor(points[:n], dtype=torch.float32, device=tokens.centre.device)
        tokens.log_scale[:n] = math.log(scale)
        tokens.quat[:n] = torch.tensor([1.0, 0.0, 0.0, 0.0], device=tokens.quat.device)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        tokens.feat[:n] = torch.randn(n, tokens.feat.shape[1], generator=g).to(tokens.feat.device)
        tokens.active[:n] = True


def add_tokens(tokens: InstanceTokens, points: np.ndarray, scale: float, rng: np.random.Generator) -> int:
    """Activate tokens at ``points`` ``(n, 3)`` in free slots (isotropic std ``scale``); returns how many."""
    free = np.flatnonzero(~tokens.active.cpu().numpy())[: len(points)]
    n = len(free)
    if n == 0:
        return 0
    dev = tokens.centre.device
    slots = torch.as_tensor(free, device=dev)
    with torch.no_grad():
        tokens.centre[slots] = torch.as_tensor(points[:n], dtype=torch.float32, device=dev)
        tokens.log_scale[slots] = math.log(scale)
        tokens.quat[slots] = torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        tokens.feat[slots] = torch.randn(n, tokens.feat.shape[1], generator=g).to(dev)
        tokens.active[slots] = True
    return n


@dataclass
class TokenStats:
    """Assignment statistics between two adjustments. ``split_target`` keeps, per token, the 3D centroid
    of the last mask that preferred it but was given another token (where a clone is placed)."""

    capacity: int
    assigned: np.ndarray = field(init=False)
    split_events: np.ndarray = field(init=False)
    split_target: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.assigned = np.zeros(self.capacity, np.int64)
        self.split_events = np.zeros(self.capacity, np.int64)
        self.split_target = np.full((self.capacity, 3), np.nan, np.float32)

    def record(
        self, mask_idx: np.ndarray, token_idx: np.ndarray, best: np.ndarray, centroids: np.ndarray
    ) -> None:
        """One frame's matching: pairs (mask, token), each mask's lowest-cost token, mask centroids ``(L, 3)``."""
        np.add.at(self.assigned, token_idx, 1)
        got = np.full(len(best), -1, np.int64)
        got[mask_idx] = token_idx
        for tok in np.unique(best[best >= 0]):
            prefer = np.flatnonzero(best == tok)
            if len(prefer) < 2 or tok not in got[prefer]:
                continue
            # two or more masks prefer `tok`; it went to one, the others got a worse token
            loser = prefer[got[prefer] != tok][0]
            self.split_events[tok] += 1
            if np.all(np.isfinite(centroids[loser])):
                self.split_target[tok] = centroids[loser]


def reset_slots(opt: torch.optim.Optimizer, tokens: InstanceTokens, slots: list[int]) -> None:
    """Zero the Adam moments of token ``slots`` (every token parameter has the slot as first dim)."""
    if not slots:
        return
    for q in tokens.parameters():
        st = opt.state.get(q)
        if not st:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][slots] = 0.0


def iom_matrix(masks: torch.Tensor) -> torch.Tensor:
    """3D Intersection over Mask (eq. 9): boolean masks ``(P, N)`` -> ``(N, N)``, row i = |Mi & Mj| / |Mi|."""
    m = masks.float()
    inter = m.t() @ m
    return inter / m.sum(0)[:, None].clamp_min(1.0)


def adjust_tokens(
    tokens: InstanceTokens,
    opt: torch.optim.Optimizer,
    stats: TokenStats,
    surface_probs: torch.Tensor,
    min_assign: int,
    iom_threshold: float,
    split_patience: int,
    rng: np.random.Generator,
) -> dict[str, int]:
    """Prune useless and duplicate tokens, split over-assigned ones. Returns counts of each action.

    Args:
        surface_probs: ``(P, N)`` instance probabilities ``l_I`` at points on the current surface (no grad);
            token ``i``'s 3D mask is ``l_I[:, i] > 0.5``.
    """
    active = tokens.active.cpu().numpy().copy()
    useless = active & (stats.assigned < min_assign)
    masks = (surface_probs > 0.5) & tokens.active[None]
    size = masks.sum(0).cpu().numpy()
    useless |= active & (size == 0)
    iom = iom_matrix(masks).cpu().numpy()
    dup = np.zeros_like(active)
    order = np.argsort(-size)  # keep the largest of an enclosing group
    for i in order[::-1]:  # tokens (tens), not points
        if not active[i] or useless[i]:
            continue
        bigger = active & ~useless & ~dup & (size >= size[i]) & (np.arange(len(active)) != i)
        if np.any(bigger & (iom[i] > iom_threshold)):
            dup[i] = True
    prune = useless | dup
    # never prune every token: keep the most assigned one
    if prune[active].all() and active.any():
        keep = int(np.argmax(np.where(active, stats.assigned, -1)))
        prune[keep] = False
    split = np.flatnonzero(active & ~prune & (stats.split_events >= split_patience))
    free = list(np.flatnonzero(~active | prune))
    changed = [int(i) for i in np.flatnonzero(prune)]
    with torch.no_grad():
        tokens.active[
            torch.as_tensor(np.flatnonzero(prune), dtype=torch.long, device=tokens.active.device)
        ] = False
        n_split = 0
        for src in split:
            if not free:
                break
            dst = int(free.pop(0))
            for q in tokens.parameters():
                q[dst] = q[src]
            target = stats.split_target[src]
            if np.all(np.isfinite(target)):
                tokens.centre[dst] = torch.as_tensor(target, device=tokens.centre.device)
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            tokens.feat[dst] += 0.5 * torch.randn(tokens.feat.shape[1], generator=g).to(tokens.feat.device)
            tokens.active[dst] = True
            changed.append(dst)
            n_split += 1
    reset_slots(opt, tokens, sorted(set(changed)))
    stats.reset()
    return {"pruned_useless": int(useless.sum()), "pruned_duplicate": int(dup.sum()), "split": n_split}
