"""Real spherical harmonics (degree 0..3) in pure torch, in the 3DGS / gsplat convention.

Coefficients are stored per Gaussian as ``(N, K, 3)`` with ``K = (degree + 1) ** 2``; band ``l`` occupies
``[l**2, (l+1)**2)``. The colour of a Gaussian seen along unit direction ``d`` (camera -> Gaussian) is
``max(sum_k Y_k(d) * sh[k] + 0.5, 0)``, the same offset and clamp as 3DGS and gsplat, so PLY files move
between simgen and other 3DGS tools unchanged.
"""

from __future__ import annotations

import torch

# Normalisation constants of the real SH basis (closed forms of sqrt((2l+1)/4pi * (l-m)!/(l+m)!)).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients per channel for SH ``degree`` (0..3)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Inverse of :func:`num_sh_bases`; raises ValueError for counts that are not 1, 4, 9 or 16."""
    for d in range(4):
        if (d + 1) ** 2 == k:
            return d
    raise ValueError(f"{k} SH coefficients per channel is not (degree+1)^2 for a degree 0..3")


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """SH basis values ``(..., (degree+1)**2)`` at unit directions ``dirs`` ``(..., 3)``."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """Colours ``(N, 3)`` from SH coefficients ``sh`` ``(N, K, 3)`` along directions ``dirs`` ``(N, 3)``.

    ``dirs`` need not be unit length (they are normalised here). ``degree`` (default: all of ``K``) lets
    training raise the active degree progressively; higher coefficients are ignored. Returns
    ``clamp_min(sum + 0.5, 0)`` as 3DGS does.
    """
    k_all = sh.shape[-2]
    max_deg = sh_degree_from_bases(k_all)
    degree = max_deg if degree is None else min(degree, max_deg)
    k = num_sh_bases(degree)
    d = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(d, degree)  # (N, k)
    rgb = torch.einsum("nk,nkc->nc", basis, sh[..., :k, :])
    return torch.clamp_min(rgb + 0.5, 0.0)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient that reproduces colour ``rgb`` (in [0, 1]) under :func:`eval_sh`."""
    return (rgb - 0.5) / _C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Colour of a DC coefficient (view-independent part), before the clamp."""
    return sh0 * _C0 + 0.5
