"""Multiresolution hash encoding (Instant-NGP), pure torch, with an optional tiny-cuda-nn backend.

The pure-torch encoder reproduces tiny-cuda-nn's ``HashGrid`` exactly (same level scales, same
coherent-prime hash, same parameter layout), so a trained table can be moved between the backends
and the two can be compared on the same parameters (tests/test_neural_hashgrid.py).

Conventions (as tiny-cuda-nn):

* input: points normalised to the unit cube, ``(N, 3)`` float32 in ``[0, 1]``;
* level ``l`` has ``scale_l = 2**(l * log2(b)) * base_resolution - 1`` and
  ``resolution_l = ceil(scale_l) + 1``, with the per-level growth ``b`` chosen so that the finest
  level reaches ``max_resolution``;
* a level whose dense grid fits its table (``resolution**3 <= table``) is indexed densely
  (``x + y*res + z*res**2``), the others by ``(x*1 ^ y*2654435761 ^ z*805459861) mod T`` in uint32;
* parameters: one flat ``(sum_l T_l, F)`` table, level after level, ``T_l = min(next_multiple(res**3, 8), 2**log2_T)``.

Speed on CPU (measured, docs/method.md): the cost is not the gather nor Adam but the gather's
*backward*: torch's embedding backward / ``index_add_`` scatter 12 levels x 8 corners x N rows one at
a time (~0.45 s for 65 k points), and a sparse COO gradient for ``SparseAdam`` is slower still
(coalescing sorts the 6 M rows). :class:`_Gather` scatters with ``torch.bincount`` (one weighted
histogram per feature, ~15x faster) into a dense gradient; dense Adam over a 12 x 2**15 table then
costs a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

PRIMES = (1, 2654435761, 805459861)  # tiny-cuda-nn's coherent prime hash, one prime per axis
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashGridSpec:
    """Shape of a hash encoding (the fields of tiny-cuda-nn's ``HashGrid`` config)."""

    n_levels: int = 12
    n_features: int = 2
    log2_table: int = 15
    base_resolution: int = 16
    max_resolution: int = 512

    @property
    def per_level_scale(self) -> float:
        if self.n_levels <= 1:
            return 1.0
        return math.exp(
            (math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1)
        )

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features,
            "log2_hashmap_size": self.log2_table,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }


def level_layout(spec: HashGridSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-level ``scale`` (float32), ``resolution`` (int64), table ``size`` (int64), ``offset`` (int64).

    Computed in float32 exactly as tiny-cuda-nn does on the GPU, so both backends agree on every level.
    """
    log2_b = np.float32(math.log2(spec.per_level_scale))
    levels = np.arange(spec.n_levels, dtype=np.float32)
    scale = (
        np.exp2(levels * log2_b).astype(np.float32) * np.float32(spec.base_resolution) - np.float32(1.0)
    ).astype(np.float32)
    res = np.ceil(scale).astype(np.int64) + 1
    cap = 2**spec.log2_table
    dense = res.astype(np.float64) ** 3
    size = np.where(dense > cap, cap, dense).astype(np.int64)
    size = ((size + 7) // 8) * 8
    offset = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    return scale, res, size, offset


class _Gather(torch.autograd.Function):
    """``table[idx]`` whose backward scatters with ``torch.bincount`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return F.embedding(idx, table)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (idx,) = ctx.saved_tensors
        return scatter_rows(idx.reshape(-1), grad_out, ctx.rows, index_add=grad_out.is_cuda), None


def scatter_rows(flat: torch.Tensor, grad: torch.Tensor, rows: int, index_add: bool) -> torch.Tensor:
    """Sum the gradient rows ``grad`` ``(..., F)`` (``flat.numel()`` rows once flattened) into a
    ``(rows, F)`` float32 table gradient at the table rows ``flat``. ``index_add``: ``index_add_``, which
    uses atomics and is fast on the GPU; else one weighted ``bincount`` per feature, the fast way on a CPU.
    Both give the same sums (tests run both on the CPU)."""
    go = grad.reshape(len(flat), -1).float()
    if index_add:
        g = torch.zeros(rows, go.shape[1], device=go.device, dtype=torch.float32)
        return g.index_add_(0, flat.long(), go)
    cols = [torch.bincount(flat, weights=go[:, f], minlength=rows) for f in range(go.shape[1])]
    return torch.stack(cols, dim=1).to(torch.float32)


def _corners(ax: torch.Tensor, ay: torch.Tensor, az: torch.Tensor):
    """Per-axis ``(N, L, 2)`` terms -> broadcastable ``(N, L, 2z, 2y, 2x)`` views; flattening the last
    three axes gives corner order ``c = x + 2y + 4z`` (tiny-cuda-nn's)."""
    return ax[:, :, None, None, :], ay[:, :, None, :, None], az[:, :, :, None, None]


class HashGrid(nn.Module):
    """Pure-torch multiresolution hash encoding; ``forward(x01 (N, 3)) -> (N, n_levels * n_features)``.

    Parameters: ``table`` ``(rows, F)`` float32, the flat per-level tables (layout of :func:`level_layout`).
    """

    backend = "torch"

    def __init__(self, spec: HashGridSpec, init_scale: float = 1e-4):
        super().__init__()
        self.spec = spec
        scale, res, size, offset = level_layout(spec)
        self.register_buffer("scale", torch.from_numpy(scale), persistent=False)
        self.register_buffer("res", torch.from_numpy(res), persistent=False)
        self.register_buffer("size", torch.from_numpy(size), persistent=False)
        self.register_buffer("offset", torch.from_numpy(offset), persistent=False)
        hashed = res.astype(np.float64) ** 3 > size
        if np.any(np.diff(hashed.astype(int)) < 0):
            raise ValueError(
                "hash-grid levels must be dense first, then hashed"
            )  # true for growing resolutions
        self.n_dense = int((~hashed).sum())
        self.table = nn.Parameter(
            torch.empty(int(size.sum()), spec.n_features).uniform_(-init_scale, init_scale)
        )

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def indices_and_weights(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat table rows ``(N, L, 8)`` int64 and trilinear weights ``(N, L, 8)`` (differentiable in x).

        Corner ``c`` of a cell has offset ``(c & 1, c >> 1 & 1, c >> 2 & 1)``. Work is done per axis on
        ``(N, L, 2)`` tensors and combined by broadcasting in int32, which is several times cheaper on
        CPU than materialising ``(N, L, 8, 3)`` int64 corner coordinates (memory bound).
        """
        pos = x01.float()[:, None, :] * self.scale[None, :, None] + 0.5  # (N, L, 3)
        base = torch.floor(pos)
        frac = pos - base
        lo = base.long()
        g = torch.stack([lo, lo + 1], dim=-1)  # (N, L, 3, 2): per axis the low / high grid coordinate
        n = g.shape[0]
        parts = []
        if self.n_dense:  # dense levels (the coarse ones) come first in tiny-cuda-nn's level order
            gd = g[:, : self.n_dense].int()
            res = self.res[: self.n_dense].int()[None, :, None]
            cx, cy, cz = _corners(gd[:, :, 0], gd[:, :, 1] * res, gd[:, :, 2] * res * res)
            idx = (cx + cy + cz).reshape(n, self.n_dense, 8)
            size = self.size[: self.n_dense].int()[None, :, None]
            parts.append(torch.where(idx >= size, idx - size, idx))  # == idx % size: idx < 2 * size here
        if self.n_dense < self.spec.n_levels:
            # T is a power of two, so masking each axis term before the xor equals masking the xor.
            gh = g[:, self.n_dense :]
            mask = (1 << self.spec.log2_table) - 1
            hx, hy, hz = (((gh[:, :, d] * PRIMES[d]) & mask).int() for d in range(3))
            cx, cy, cz = _corners(hx, hy, hz)
            parts.append((cx ^ cy ^ cz).reshape(n, -1, 8))
        idx = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        idx = idx + self.offset.int()[None, :, None]
        wl = torch.stack([1 - frac, frac], dim=-1)  # (N, L, 3, 2)
        wx, wy, wz = _corners(wl[:, :, 0], wl[:, :, 1], wl[:, :, 2])
        w = (wx * wy * wz).reshape(n, -1, 8)
        return idx, w

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        idx, w = self.indices_and_weights(x01)
        feats = _Gather.apply(self.table, idx)  # (N, L, 8, F)
        out = (w[..., None] * feats).sum(2)  # (N, L, F)
        return out.reshape(x01.shape[0], -1)


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn backend with the same interface and parameter layout as :class:`HashGrid` (CUDA only)."""

    backend = "tcnn"

    def __init__(self, spec: HashGridSpec, init_scale: float = 1e-4):
        super().__init__()
        import tinycudann as tcnn  # optional dependency

        self.spec = spec
        self.enc = tcnn.Encoding(3, spec.tcnn_config(), dtype=torch.float32)
        _, _, size, _ = level_layout(spec)
        n = int(size.sum()) * spec.n_features
        if self.enc.params.numel() != n:
            raise RuntimeError(f"tinycudann HashGrid has {self.enc.params.numel()} parameters, expected {n}")
        with torch.no_grad():
            self.enc.params.uniform_(-init_scale, init_scale)

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    @property
    def table(self) -> torch.Tensor:
        """The flat parameters viewed as ``(rows, F)`` (same layout as :class:`HashGrid`)."""
        return self.enc.params.view(-1, self.spec.n_features)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.enc(x01.float().contiguous()).float()


def tcnn_available(device: torch.device | str) -> bool:
    """True when tiny-cuda-nn imports and ``device`` is CUDA."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a build for another GPU architecture raising at import
        return False
    return True


def make_hashgrid(spec: HashGridSpec, device: torch.device | str, backend: str = "auto"):
    """The encoder for ``device``: tiny-cuda-nn when ``backend`` is ``auto``/``tcnn`` and it is usable, else torch."""
    if backend not in ("auto", "torch", "tcnn"):
        raise ValueError(f"unknown hash-grid backend {backend!r} (auto, torch or tcnn)")
    dev = torch.device(device)
    if backend == "tcnn" and not tcnn_available(dev):
        raise RuntimeError("hash-grid backend 'tcnn' needs tinycudann importable and a CUDA device")
    if backend in ("auto", "tcnn") and tcnn_available(dev):
        return TcnnHashGrid(spec).to(dev)
    return HashGrid(spec).to(dev)
