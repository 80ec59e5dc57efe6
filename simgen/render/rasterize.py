"""Differentiable Gaussian rasterization: gsplat's CUDA kernels on GPU, a tile-based pure-torch path on CPU.

Conventions (the same as gsplat, so both backends take the same tensors):

* ``viewmat`` ``(4, 4)``: world-to-camera with OpenCV camera axes (x right, y down, z forward).
  simgen scene frames give ``np.linalg.inv(frame.c2w_cv)``.
* ``K`` ``(3, 3)``: pinhole intrinsics in pixels. Pixel ``(row i, column j)`` has its centre at
  ``(u, v) = (j + 0.5, i + 0.5)``.
* ``quats`` ``(N, 4)``: ``w x y z`` (need not be unit length), ``scales`` ``(N, 3)``: standard deviations in
  metres (already exponentiated), ``opacities`` ``(N,)`` in ``[0, 1]`` (already through the sigmoid).
* ``colors``: ``(N, 3)`` (any range) or SH coefficients ``(N, K, 3)``, evaluated along the camera -> Gaussian
  direction with 3DGS's ``+0.5`` offset and clamp at 0 (:mod:`simgen.render.sh`).

The CPU path follows 3DGS (Kerbl et al. 2023) and PanopticRecon++ eq. 16-17: each mean is moved to the camera
(``p' = K W p``), each covariance is projected with the Jacobian of the perspective map
(``Sigma' = J W Sigma W^T J^T``) plus a 0.3 px^2 low-pass, and Gaussians are composited front to back per
pixel with ``alpha = min(0.99, o * exp(-d^T Sigma'^-1 d / 2))``, skipping ``alpha < 1/255`` and stopping at the
Gaussian that would take the transmittance to ``<= 1e-4`` (that Gaussian is not blended). One deliberate
difference: a Gaussian only touches pixels inside its 3-sigma ellipse, so the image does not depend on the
tile size (3DGS lets a Gaussian reach every pixel of every tile its 3-sigma bounding box overlaps, so a few
alpha < 1.1 % * opacity tails differ; the CUDA comparison tolerance covers them).

The torch backend has two implementations of these rules. When any input needs gradients, the autograd path
(:func:`_rasterize_torch`) runs. Otherwise -- renders for the server, evaluation, label blending, anything
under ``torch.no_grad()`` -- the inference path (:func:`_rasterize_torch_nograd`) gives the same image (equal
in float64, float32 rounding otherwise) with less work (4x4 tiles blended in cache-sized blocks, in-place
updates). Both project and evaluate SH only for the Gaussians that can reach the image (:func:`_candidates`)
and list a (tile, Gaussian) pair only where the ellipse ``sigma <= min(4.5, log(255 o))`` reaches the tile
(:func:`_tile_lists`): beyond it alpha < 1/255 or the pixel is outside 3 sigma, which the rules above skip.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from simgen.render.sh import eval_sh

ALPHA_MAX = 0.99  # 3DGS clamps alpha so that one Gaussian never makes a pixel fully opaque
ALPHA_MIN = 1.0 / 255.0  # contributions below one 8-bit step are skipped
T_MIN = 1e-4  # compositing stops once transmittance would fall to this
SIGMA_CUTOFF = 4.5  # 0.5 * 3^2: the 3-sigma ellipse in units of the Mahalanobis exponent
BLOCK_ELEMS = 1 << 18  # (tile, Gaussian, pixel) evaluations per vectorised step of the no-grad path

BACKENDS = ("auto", "torch", "gsplat", "numba")


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` wxyz quaternions (normalised here) -> ``(N, 3, 3)`` rotation matrices."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances ``(N, 3, 3)`` = ``R diag(s^2) R^T``."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
) -> dict[str, torch.Tensor]:
    """EWA projection of 3D Gaussians (eq. 16-17).

    Returns a dict of per-Gaussian tensors: ``means2d`` ``(N, 2)`` pixels, ``conics`` ``(N, 3)`` the upper
    triangle ``(a, b, c)`` of the inverse 2D covariance, ``depths`` ``(N,)`` camera z, ``radii`` ``(N,)`` int64
    3-sigma radius in pixels (0 = culled: behind ``near``, beyond ``far``, degenerate or off-image), ``extents``
    ``(N, 2)`` half width and half height in pixels of the 3-sigma ellipse's bounding box (0 when culled).
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = torch.addmm(t[:, None], R, means.T).T  # = means @ R.T + t, see _screen
    z = pc[:, 2]
    in_range = (z > near) & (z < far)
    zs = torch.where(in_range, z, torch.ones_like(z))  # keeps culled Gaussians finite (no NaN gradients)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Like 3DGS/gsplat, the Jacobian is evaluated at a point clamped to 1.3x the field of view, so that
    # Gaussians far outside the image do not get huge, unstable footprints.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = zs * torch.clamp(pc[:, 0] / zs, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = zs * torch.clamp(pc[:, 1] / zs, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2],
        dim=-1,
    ).reshape(-1, 2, 3)
    cov_cam = R @ covariance_3d(quats, scales) @ R.T
    cov2d = J @ cov_cam @ J.transpose(-1, -2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    ok = in_range & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * pc[:, 0] / zs + cx, fy * pc[:, 1] / zs + cy], dim=-1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam)).to(torch.int64)
        # Half-sizes of the axis-aligned box of the 3-sigma ellipse: exact, and much smaller than the
        # radius square for the thin, tilted ellipses of surface splats seen obliquely (fewer tile pairs).
        ext = 3.0 * torch.sqrt(torch.stack([a, c], dim=-1).clamp_min(0))
        u, v = means2d[:, 0], means2d[:, 1]
        ex, ey = ext[:, 0], ext[:, 1]
        on_image = (u + ex > 0) & (u - ex < width) & (v + ey > 0) & (v - ey < height)
        keep = ok & on_image
        radii = torch.where(keep, radii, torch.zeros_like(radii))
        ext = torch.where(keep[:, None], ext, torch.zeros_like(ext))
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii, "extents": ext}


def _colors_and_features(
    means: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    features: torch.Tensor | None,
    sh_degree: int | None,
) -> torch.Tensor:
    """Per-Gaussian channels ``(N, 3 + F)``: view-dependent RGB (SH evaluated) then features."""
    if colors.dim() == 3:
        campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
        rgb = eval_sh(colors, means - campos, sh_degree)
    elif colors.dim() == 2 and colors.shape[1] == 3:
        rgb = colors
    else:
        raise ValueError(f"colors must be (N, 3) or SH (N, K, 3), got {tuple(colors.shape)}")
    if features is None:
        return rgb
    if features.dim() != 2 or features.shape[0] != means.shape[0]:
        raise ValueError(f"features must be (N, F) with N = {means.shape[0]}, got {tuple(features.shape)}")
    return torch.cat([rgb, features.to(rgb.dtype)], dim=1)


def _check_colors_features(means: torch.Tensor, colors: torch.Tensor, features: torch.Tensor | None) -> None:
    n = means.shape[0]
    if not ((colors.dim() == 2 and colors.shape[1] == 3) or colors.dim() == 3) or colors.shape[0] != n:
        raise ValueError(f"colors must be (N, 3) or SH (N, K, 3) with N = {n}, got {tuple(colors.shape)}")
    if features is not None and (features.dim() != 2 or features.shape[0] != n):
        raise ValueError(f"features must be (N, F) with N = {n}, got {tuple(features.shape)}")


def _check_inputs(means, quats, scales, opacities, viewmat, K, width, height) -> None:
    n = means.shape[0]
    for name, x, shape in (
        ("means", means, (n, 3)),
        ("quats", quats, (n, 4)),
        ("scales", scales, (n, 3)),
        ("opacities", opacities, (n,)),
        ("viewmat", viewmat, (4, 4)),
        ("K", K, (3, 3)),
    ):
        if tuple(x.shape) != shape:
            raise ValueError(f"rasterize: {name} must have shape {shape}, got {tuple(x.shape)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize: image size must be positive, got {width}x{height}")


def rasterize(
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
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int | None = None,
    eps2d: float = 0.3,
    chunk: int | None = None,
    prepared: Any = None,
) -> dict[str, Any]:
    """Render RGB, expected depth, alpha and feature channels of ``N`` Gaussians for one camera.

    Args: see the module docstring for conventions. ``features`` ``(N, F)`` are alpha-blended like colours
    (one-hot labels, embeddings); ``sh_degree`` limits the SH bands used (progressive training);
    ``background`` ``(3,)`` is composited behind the RGB only. ``backend``: ``"torch"`` (CPU/any device,
    differentiable through autograd), ``"gsplat"`` (CUDA only), ``"numba"`` (CPU, no gradients: the compiled
    kernel of :mod:`simgen.render.rasterize_numba`, same image), ``"auto"`` (gsplat when the tensors are on
    CUDA and gsplat imports; on CPU numba when no input needs gradients and numba imports; else torch).
    ``chunk`` is how many depth-sorted Gaussians per tile the torch path
    blends per vectorised step at most (default 32 with autograd, 16 without); ``tile_size`` defaults to 16
    for gsplat, 8 for the torch autograd path and 4 for the torch inference path (used when no input needs
    gradients; see the module docstring): on CPU smaller tiles waste fewer (pixel, Gaussian) evaluations
    outside each Gaussian's footprint, and without autograd the per-tile overhead is low enough for 4x4
    tiles to win. The image depends on neither. ``prepared``: the numba backend's camera-independent arrays
    of these Gaussians (:func:`simgen.render.rasterize_numba.prepare`), kept by a caller that renders them
    many times; other backends ignore it.

    Returns a dict:
        ``rgb`` ``(H, W, 3)``; ``depth`` ``(H, W)`` expected camera z of the blended Gaussians normalised by
        alpha (``sum w_i z_i / sum w_i``, 0 where nothing was hit; gsplat's "ED"), so ``depth * alpha`` is the
        accumulated depth; ``alpha`` ``(H, W)`` accumulated opacity; ``features`` ``(H, W, F)`` blended
        features, not normalised (``None`` without ``features``); ``means2d`` ``(N, 2)`` projected means, part
        of the autograd graph (call ``retain_grad()`` on it to get the view-space gradient used by
        densification); ``radii`` ``(N,)`` int pixel radii, 0 for culled Gaussians; ``backend`` the one used;
        ``info`` gsplat's raw ``meta`` dict (what its densification strategies read), None on the torch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: backend must be one of {BACKENDS}, got {backend!r}")
    _check_inputs(means, quats, scales, opacities, viewmat, K, width, height)
    viewmat = viewmat.to(means)
    K = K.to(means)
    inputs = (means, quats, scales, opacities, colors, features)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if backend == "auto":
        backend = _auto_backend(means, needs_grad)
    if backend == "numba" and (needs_grad or means.is_cuda):
        raise ValueError("rasterize: backend='numba' renders CPU tensors without gradients only")
    if backend == "numba" or (backend == "torch" and not needs_grad):
        # the two no-gradient renderers take the same inputs; they differ in tiling and chunking only
        _check_colors_features(means, colors, features)
        shared = (
            means,
            quats,
            scales,
            opacities,
            colors,
            None if features is None else features.to(means.dtype),
        )
        shared += (sh_degree, viewmat, K, width, height, near, far)
        if backend == "numba":
            from simgen.render.rasterize_numba import rasterize_numba

            out = rasterize_numba(*shared, tile_size or 16, eps2d, prepared=prepared)
        else:
            out = _rasterize_torch_nograd(
                *shared, 4 if tile_size is None else tile_size, eps2d, 16 if chunk is None else chunk
            )
        return _outputs(out, background, features is not None, backend)
    if backend == "gsplat":
        vals = _colors_and_features(means, colors, viewmat, features, sh_degree)
        out = _rasterize_gsplat(
            means,
            quats,
            scales,
            opacities,
            vals,
            viewmat,
            K,
            width,
            height,
            near,
            far,
            tile_size or 16,
            eps2d,
        )
    else:
        _check_colors_features(means, colors, features)
        with torch.no_grad():
            _, _, z, zs, u, v = _screen(means, viewmat, K, near, far)
            idx = _candidates(z, zs, u, v, scales, K, width, height, near, far, eps2d)
        vals = _colors_and_features(
            _sel(means, idx),
            _sel(colors, idx),
            viewmat,
            None if features is None else _sel(features, idx),
            sh_degree,
        )
        out = _rasterize_torch(
            means,
            quats,
            scales,
            opacities,
            vals,
            idx,
            viewmat,
            K,
            width,
            height,
            near,
            far,
            tile_size or 8,
            eps2d,
            32 if chunk is None else chunk,
        )
    return _outputs(out, background, vals.shape[1] > 3, backend)


def _outputs(out: dict[str, Any], background: torch.Tensor | None, has_features: bool, backend: str):
    blended, alpha = out["blended"], out["alpha"]
    rgb = blended[..., :3]
    if background is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * background.to(rgb)
    return {
        "rgb": rgb,
        "depth": out["depth"],
        "alpha": alpha,
        "features": blended[..., 3:] if has_features else None,
        "means2d": out["means2d"],
        "radii": out["radii"],
        "backend": backend,
        "info": out.get("info"),
    }


def _auto_backend(means: torch.Tensor, needs_grad: bool) -> str:
    """gsplat for CUDA tensors (when it imports); on CPU the compiled kernel for renders without gradients
    (when numba imports), else the torch paths."""
    if means.is_cuda:
        return "gsplat" if gsplat_available() else "torch"
    if not needs_grad:
        from simgen.render.rasterize_numba import numba_available

        if numba_available():
            return "numba"
    return "torch"


def gsplat_available() -> bool:
    """True if ``gsplat`` imports (its CUDA kernels still need a GPU and nvcc on first use)."""
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def _rasterize_gsplat(means, quats, scales, opacities, vals, viewmat, K, width, height, near, far, ts, eps2d):
    # Written against gsplat 1.5.3's documented `gsplat.rendering.rasterization`; not exercised on the CPU
    # machines this was written on (tests/test_splat_rasterize.py compares it with the torch path on a GPU).
    from gsplat import rasterization

    if not means.is_cuda:
        raise ValueError("rasterize: backend='gsplat' needs CUDA tensors; use backend='torch' on CPU")
    colors, alphas, meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        vals,  # already view-dependent colours + features, so sh_degree=None
        viewmat[None],
        K[None],
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=None,
        packed=False,
        tile_size=ts,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    radii = meta["radii"][0]
    if radii.dim() == 2:  # gsplat >= 1.5 reports per-axis radii
        radii = radii.max(dim=-1).values
    return {
        "blended": colors[0, ..., :-1],
        "depth": colors[0, ..., -1],
        "alpha": alphas[0, ..., 0],
        "means2d": meta["means2d"][0],
        "radii": radii.to(torch.int64),
        "info": meta,
    }


def _tile_pairs(means2d, conics, depths, radii, log_o, ts, n_tx, n_ty, positive_depths: bool):
    """(tile, Gaussian) pairs sorted by tile then depth, as in 3DGS's key sort, but built with tensor ops.

    Only the tiles each ellipse ``sigma <= min(4.5, log(255 o))`` reaches are listed (:func:`_tile_lists`);
    beyond it alpha < 1/255 or the pixel is outside 3 sigma, so the other pairs would blend nothing.
    Returns ``pair_gauss`` ``(P,)`` int64 Gaussian index per pair, ``pair_tile`` ``(P,)`` int64 its tile,
    ``tile_start`` / ``tile_count`` ``(n_tiles,)`` where each tile's pairs start and how many there are.
    """
    with torch.no_grad():
        cut = torch.clamp(log_o.detach() - math.log(ALPHA_MIN), max=SIGMA_CUTOFF)
        vis = torch.nonzero((radii > 0) & (cut > 0)).squeeze(1)
        z = _sel(depths.detach(), vis)
        # Positive IEEE floats order like their bit patterns: an integer (radix) sort is ~10x faster. Stable:
        # equal depths go by Gaussian index, as in the reference.
        key = z.view(torch.int32 if z.dtype == torch.float32 else torch.int64) if positive_depths else z
        order = _sel(vis, torch.sort(key, stable=True).indices)
        A, B, C = _sel(conics.detach(), order).unbind(1)
        det_c = A * C - B * B
        u, v = _sel(means2d.detach(), order).unbind(1)
        gauss, tile = _tile_lists(
            u, v, (A, B, C), (C / det_c, -B / det_c, A / det_c), _sel(cut, order), ts, n_tx, n_ty
        )
        n_tiles = n_tx * n_ty
        # Pairs come in depth order, so a stable sort by tile (int16/int32 keys: radix) gives (tile, depth).
        tile, perm = torch.sort(tile.to(torch.int16) if n_tiles < 2**15 else tile, stable=True)
        tile = tile.to(torch.int64)
        tile_count = torch.bincount(tile, minlength=n_tiles)
        tile_start = torch.cumsum(tile_count, 0) - tile_count
        return _sel(order, _sel(gauss, perm)), tile, tile_start, tile_count


def _rasterize_torch(
    means, quats, scales, opacities, vals, idx, viewmat, K, width, height, near, far, ts, eps2d, chunk
):
    """The autograd path. ``idx`` ``(M,)``: the :func:`_candidates`; ``vals`` ``(M, 3 + F)`` their channels.

    Only the candidates are projected (through autograd, ~4x fewer than all Gaussians in a room); the pixel
    means of all Gaussians are computed separately and the blending reads the candidates' rows of that
    tensor, so the returned ``means2d`` gets the view-space gradient that densification reads.
    """
    n, dtype, dev = means.shape[0], means.dtype, means.device
    _, _, _, _, u, v = _screen(means, viewmat, K, near, far)
    means2d = torch.stack([u, v], dim=-1)
    proj = project_gaussians(
        _sel(means, idx), _sel(quats, idx), _sel(scales, idx), viewmat, K, width, height, near, far, eps2d
    )
    conics, depths = proj["conics"], proj["depths"]
    radii = torch.zeros(n, dtype=torch.int64, device=dev).index_copy(0, idx, proj["radii"])
    m2 = _sel(means2d, idx)
    n_tx, n_ty = math.ceil(width / ts), math.ceil(height / ts)
    log_o = torch.log(torch.clamp_min(_sel(opacities, idx), 1e-30))
    pair_gauss, _, tile_start, tile_count = _tile_pairs(
        m2, conics, depths, proj["radii"], log_o, ts, n_tx, n_ty, near >= 0
    )
    vals = torch.cat([vals, depths[:, None]], dim=1)  # depth is blended as one more channel
    n_ch = vals.shape[1]
    n_pix = ts * ts

    tiles = torch.nonzero(tile_count > 0).squeeze(1)
    # Coordinates are taken relative to each tile's centre, so that the quadratic form below is evaluated
    # on small numbers (float32 cancellation would otherwise cost accuracy at 640 px).
    half = 0.5 * ts
    centre_x = ((tiles % n_tx) * ts).to(dtype) + half  # (T,)
    centre_y = ((tiles // n_tx) * ts).to(dtype) + half
    off = torch.arange(ts, device=dev, dtype=dtype) + 0.5 - half
    qy, qx = (t.reshape(-1) for t in torch.meshgrid(off, off, indexing="ij"))  # (P,) row-major in the tile
    # sigma(q) = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 with d = q - mean is a quadratic in q, so all
    # (pixel, Gaussian) exponents of a chunk come out of one batched matmul with these pixel monomials.
    pix_mono = torch.stack([qx * qx, qx * qy, qy * qy, qx, qy, torch.ones_like(qx)], dim=1)  # (P, 6)
    done = ((centre_x[:, None] + qx) > width) | ((centre_y[:, None] + qy) > height)  # padding pixels
    T = torch.ones(len(tiles), n_pix, dtype=dtype, device=dev)
    acc = torch.zeros(len(tiles), n_pix, n_ch, dtype=dtype, device=dev)
    start, count = tile_start[tiles], tile_count[tiles]
    max_count = int(count.max()) if len(tiles) else 0
    # The loop works with e = log(o) - sigma, so alpha = exp(e). Lower bounds on e: the 3-sigma ellipse and
    # alpha >= 1/255; the upper clamp log(0.99) is alpha's clamp.
    e_min = torch.clamp_min(log_o.detach() - SIGMA_CUTOFF, math.log(ALPHA_MIN))
    e_max = math.log(ALPHA_MAX)

    # Walk the depth-sorted lists of all tiles together. Chunks start short and double: most pixels of an
    # opaque scene terminate within the first few Gaussians, and tiles whose list is exhausted or whose
    # pixels have all terminated drop out.
    k0, step = 0, max(1, min(8, chunk))
    while k0 < max_count:
        live = torch.nonzero((count > k0) & ~done.all(dim=1)).squeeze(1)
        if len(live) == 0:
            break
        k = k0 + torch.arange(step, device=dev)
        in_list = k[None, :] < count[live, None]  # (L, C)
        g = pair_gauss[torch.clamp(start[live, None] + k[None, :], max=len(pair_gauss) - 1)]  # (L, C)
        gf = g.reshape(-1)  # index_select: much faster than advanced indexing, forward and backward
        m2g = _sel(m2, gf).reshape(*g.shape, 2)
        mx = m2g[..., 0] - centre_x[live, None]
        my = m2g[..., 1] - centre_y[live, None]
        con = _sel(conics, gf).reshape(*g.shape, 3)
        a, b, c = con[..., 0], con[..., 1], con[..., 2]
        const = _sel(log_o, gf).reshape(g.shape) - (0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my)
        const = torch.where(in_list, const, torch.full_like(const, -1e4))  # padding: alpha = exp(-1e4) = 0
        coef = torch.stack(
            [-0.5 * a, -b, -0.5 * c, a * mx + b * my, c * my + b * mx, const], dim=1
        )  # (L, 6, C)
        e = torch.matmul(pix_mono, coef)  # (L, P, C)
        alpha = torch.exp(torch.clamp_max(e, e_max)) * (e >= _sel(e_min, gf).reshape(g.shape)[:, None, :])
        cp = torch.cumprod(1.0 - alpha, dim=2)  # transmittance after each Gaussian, relative to chunk start
        T_live = T[live]
        with torch.no_grad():
            # Transmittance is non-increasing along the list, so "T after this Gaussian > T_MIN" holds for a
            # prefix: exactly the Gaussians 3DGS blends before it breaks out of its per-pixel loop. Pixels
            # that stopped in an earlier chunk get an infinite bound and keep nothing.
            bound = torch.where(done[live], torch.full_like(T_live, math.inf), T_MIN / T_live)[:, :, None]
            keep = cp > bound
            stops = ~keep[:, :, -1]  # T fell to T_MIN inside this chunk (or the pixel had already stopped)
        cp_before = torch.cat([torch.ones_like(cp[:, :, :1]), cp[:, :, :-1]], dim=2)
        w = alpha * cp_before * keep  # (L, P, C) blending weights / T_live
        vals_g = _sel(vals, gf).reshape(*g.shape, n_ch)
        acc = acc.index_add(0, live, torch.bmm(w, vals_g) * T_live[:, :, None])
        T = T.index_copy(0, live, T_live * (1.0 - w.sum(dim=2)))  # telescoping sum of the weights
        done = done.index_copy(0, live, stops)
        k0 += step
        step = min(2 * step, chunk)

    # Scatter tiles back into the (padded) image and crop.
    img = torch.zeros(n_ty * n_tx, n_pix, n_ch + 1, dtype=dtype, device=dev)
    img = img.index_copy(0, tiles, torch.cat([acc, (1.0 - T)[:, :, None]], dim=2))
    img = img.reshape(n_ty, n_tx, ts, ts, n_ch + 1).permute(0, 2, 1, 3, 4).reshape(n_ty * ts, n_tx * ts, -1)
    img = img[:height, :width]
    alpha_img = img[..., -1]
    depth = img[..., -2] / torch.clamp_min(alpha_img, 1e-10)
    return {"blended": img[..., :-2], "depth": depth, "alpha": alpha_img, "means2d": means2d, "radii": radii}


# ---------------------------------------------------------------------------------------------------------
# Inference path (no autograd): the same image as _rasterize_torch, computed with less work. Used whenever no
# input needs gradients (renders for the server, evaluation, label baking). Measured on the bench scene the
# time went to: projecting and SH-evaluating all N Gaussians although ~1/4 are on screen, (tile, Gaussian)
# pairs whose tile the ellipse never reaches, and gathers per blending step; each is removed below.
# ---------------------------------------------------------------------------------------------------------


def _sel(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    # index_select is several times faster than advanced indexing for row gathers on CPU torch.
    return torch.index_select(x, 0, i)


def _fov_limits(K, width: int, height: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The x/z and y/z ranges at which the projection Jacobian is evaluated: 1.3x the field of view."""
    fx, fy, cx, cy = (float(k) for k in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    lim_x = (-(cx / fx + 0.3 * 0.5 * width / fx), (width - cx) / fx + 0.3 * 0.5 * width / fx)
    lim_y = (-(cy / fy + 0.3 * 0.5 * height / fy), (height - cy) / fy + 0.3 * 0.5 * height / fy)
    return lim_x, lim_y


def _screen(means, viewmat, K, near, far):
    """Camera coordinates ``x, y, z`` ``(N,)``, ``zs`` (z, or 1 outside ``(near, far)`` so that culled
    Gaussians stay finite) and pixel means ``u, v`` ``(N,)``, as in :func:`project_gaussians`."""
    # (3, 3) @ (3, N): on CPU ~10x faster than (N, 3) @ (3, 3), whose k = 3 defeats the BLAS kernels.
    x, y, z = torch.addmm(viewmat[:3, 3, None], viewmat[:3, :3], means.T).unbind(0)
    zs = torch.where((z > near) & (z < far), z, torch.ones_like(z))
    return x, y, z, zs, K[0, 0] * x / zs + K[0, 2], K[1, 1] * y / zs + K[1, 2]


def _candidates(z, zs, u, v, scales, K, width, height, near, far, eps2d) -> torch.Tensor:
    """Indices ``(M,)`` of the Gaussians that may reach the image: a superset of those with radius > 0.

    A conservative screen bound ``3 sqrt(|J row|^2 max(s)^2 + eps2d)`` on the 3-sigma half sizes (the largest
    eigenvalue of ``Sigma`` is ``max(s)^2``; ``|J row|`` uses the clamped field of view) rejects most
    off-screen Gaussians with a few element-wise ops, before the full projection.
    """
    with torch.no_grad():
        fx, fy = float(K[0, 0]), float(K[1, 1])
        lim_x, lim_y = _fov_limits(K, width, height)
        s2_z2 = scales.detach().amax(dim=1).square() / (zs * zs)
        # 1 % and 1 px of slack: the bound must never drop a Gaussian the exact test keeps.
        bx = 3.0 * torch.sqrt(fx * fx * (1 + max(t * t for t in lim_x)) * s2_z2 + eps2d) * 1.01 + 1.0
        by = 3.0 * torch.sqrt(fy * fy * (1 + max(t * t for t in lim_y)) * s2_z2 + eps2d) * 1.01 + 1.0
        cand = (z > near) & (z < far) & (u + bx > 0) & (u - bx < width) & (v + by > 0) & (v - by < height)
        return torch.nonzero(cand).squeeze(1)


def _project_visible(means, quats, scales, viewmat, K, width, height, near, far, eps2d):
    """EWA projection (same formulas as :func:`project_gaussians`) of only the :func:`_candidates`, written
    out element-wise (on CPU a batched 3x3 matmul costs more than the arithmetic).

    Returns ``idx`` ``(M,)`` int64 candidate indices, ``means2d`` ``(N, 2)`` and ``depths`` ``(N,)`` for all
    Gaussians (as project_gaussians), and ``a, b, c`` ``(M,)``: the 2D covariance ``[[a, b], [b, c]]``
    with the ``eps2d`` low-pass included.
    """
    x, y, z, zs, u, v = _screen(means, viewmat, K, near, far)
    idx = _candidates(z, zs, u, v, scales, K, width, height, near, far, eps2d)
    fx, fy = float(K[0, 0]), float(K[1, 1])
    lim_x, lim_y = _fov_limits(K, width, height)
    qw, qx, qy, qz = torch.nn.functional.normalize(_sel(quats, idx), dim=-1).unbind(1)
    rot = (  # rot[k][j]: row k, column j of the rotation matrix (quat_to_rotmat)
        (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)),
        (2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)),
        (2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)),
    )
    xs, ys, zv = _sel(x, idx), _sel(y, idx), _sel(zs, idx)
    iz = 1.0 / zv
    tx = torch.clamp(xs * iz, *lim_x)
    ty = torch.clamp(ys * iz, *lim_y)
    j0x, j0z = fx * iz, -fx * tx * iz  # row 0 of J: (fx/z, 0, -fx tx/z^2) with tx here already divided by z
    j1y, j1z = fy * iz, -fy * ty * iz
    W = viewmat[:3, :3].tolist()
    jw0 = [j0x * W[0][k] + j0z * W[2][k] for k in range(3)]  # rows of J W, (M,) each
    jw1 = [j1y * W[1][k] + j1z * W[2][k] for k in range(3)]
    s = _sel(scales, idx)
    # cov2d = (J W R S)(J W R S)^T: accumulate over the three columns of R S.
    a = b = c = torch.zeros_like(xs)
    for j in range(3):
        r0 = (jw0[0] * rot[0][j] + jw0[1] * rot[1][j] + jw0[2] * rot[2][j]) * s[:, j]
        r1 = (jw1[0] * rot[0][j] + jw1[1] * rot[1][j] + jw1[2] * rot[2][j]) * s[:, j]
        a, b, c = a + r0 * r0, b + r0 * r1, c + r1 * r1
    return idx, torch.stack([u, v], dim=1), z, a + eps2d, b, c + eps2d


def _tile_lists(u, v, conic, cov, cut, ts, n_tx, n_ty):
    """Exact (Gaussian, tile) pairs: the tiles whose pixel centres the ellipse ``sigma <= cut`` reaches.

    ``u, v`` ``(M,)`` pixel means, ``conic`` = ``(A, B, C)`` the inverse 2D covariance,
    ``cov`` = ``(a, b, c)`` the covariance, ``cut`` ``(M,)`` the per-Gaussian cutoff on
    ``sigma = d^T Sigma^-1 d / 2``. For every tile row the ellipse reaches, the x-range of the ellipse inside
    the row's band of pixel centres is exact (the ellipse's rightmost point in the band is at the band point
    nearest to the y of its overall rightmost point; the extent is concave in y), so only the tiles it really
    touches are listed (Speedy-Splat's per-row tile ranges; a bounding box also lists the tiles at its
    corners). Bounds get 1e-3 px of slack: an extra pair costs a little time, a missing one would change
    the image.

    Returns ``gauss`` ``(P,)`` int64 Gaussian index per pair in Gaussian order, ``tile`` ``(P,)`` int32.
    """
    dev = u.device
    A, B, C = conic
    a, b, c = cov
    two_cut = 2.0 * cut
    half_w, half_h = torch.sqrt(two_cut * a), torch.sqrt(two_cut * c)  # half sizes of the bounding box
    slack = 1e-3
    # Pixel rows r with centre r + 0.5 in [v - half_h, v + half_h]; tile rows are r // ts.
    ty0 = torch.div(torch.ceil(v - half_h - 0.5 - slack), ts, rounding_mode="floor").clamp(0, n_ty)
    ty1 = torch.div(torch.floor(v + half_h - 0.5 + slack), ts, rounding_mode="floor").clamp(-1, n_ty - 1)
    n_rows = (ty1 - ty0 + 1).clamp_min(0).to(torch.int64)
    gr = torch.repeat_interleave(torch.arange(len(u), device=dev), n_rows)  # one entry per (Gaussian, row)
    row_first = torch.cumsum(n_rows, 0) - n_rows
    ty = _sel(ty0, gr) + (torch.arange(len(gr), device=dev) - _sel(row_first, gr)).to(u.dtype)
    ug, vg, Ag, Bg, tc = (_sel(t, gr) for t in (u, v, A, B, two_cut))
    det_c = _sel(A * C - B * B, gr)
    hh = _sel(half_h, gr)
    y_lo = torch.maximum(ty * ts + 0.5 - vg, -hh)  # the row's band of pixel centres, relative to the mean
    y_hi = torch.maximum(torch.minimum(ty * ts + (ts - 0.5) - vg, hh), y_lo)
    y_right = _sel(b / a * half_w, gr)  # y of the ellipse's rightmost point (its leftmost is at -y_right)
    yr = torch.minimum(torch.maximum(y_right, y_lo), y_hi)
    yl = torch.minimum(torch.maximum(-y_right, y_lo), y_hi)
    # Solve A x^2 + 2 B x y + C y^2 = 2 cut for x at those y.
    x_hi = (-Bg * yr + torch.sqrt(torch.clamp_min(Ag * tc - det_c * yr * yr, 0))) / Ag
    x_lo = (-Bg * yl - torch.sqrt(torch.clamp_min(Ag * tc - det_c * yl * yl, 0))) / Ag
    tx0 = torch.div(torch.ceil(ug + x_lo - 0.5 - slack), ts, rounding_mode="floor").clamp(0, n_tx)
    tx1 = torch.div(torch.floor(ug + x_hi - 0.5 + slack), ts, rounding_mode="floor").clamp(-1, n_tx - 1)
    n_cols = (tx1 - tx0 + 1).clamp_min(0).to(torch.int64)
    # Expand to pairs with int32 indices (half the memory traffic of int64; tile ids fit): pair k of
    # (Gaussian, row) entry i, counted from that entry's first pair, has tile ty * n_tx + tx0 + k.
    gp = torch.repeat_interleave(torch.arange(len(gr), device=dev, dtype=torch.int32), n_cols)
    col_first = torch.cumsum(n_cols, 0) - n_cols
    tile_off = (ty * n_tx + tx0).to(torch.int64) - col_first
    tile = _sel(tile_off.to(torch.int32), gp) + torch.arange(len(gp), device=dev, dtype=torch.int32)
    return _sel(gr, gp), tile


def _rasterize_torch_nograd(
    means,
    quats,
    scales,
    opacities,
    colors,
    features,
    sh_degree,
    viewmat,
    K,
    width,
    height,
    near,
    far,
    ts,
    eps2d,
    chunk,
):
    """The inference twin of :func:`_rasterize_torch` (same outputs, same image up to float rounding).

    Differences in how, not what: only Gaussians that can reach the image are projected and get their SH
    evaluated (element-wise, no batched 3x3 matmuls); the quadratic-form coefficients of every pair are
    computed once; 4x4 tiles are blended in cache-sized blocks with in-place updates; gathers use
    index_select (several times faster than advanced indexing on CPU).
    """
    n, dtype, dev = means.shape[0], means.dtype, means.device
    idx, means2d, depths, a, b, c = _project_visible(
        means, quats, scales, viewmat, K, width, height, near, far, eps2d
    )
    det = a * c - b * b
    mid = 0.5 * (a + c)
    radii_c = torch.ceil(3.0 * torch.sqrt(mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))))
    u, v = _sel(means2d, idx).unbind(1)
    ex, ey = 3.0 * torch.sqrt(a.clamp_min(0)), 3.0 * torch.sqrt(c.clamp_min(0))
    on = (det > 0) & (u + ex > 0) & (u - ex < width) & (v + ey > 0) & (v - ey < height)
    radii = torch.zeros(n, dtype=torch.int64, device=dev)
    radii.index_copy_(0, idx, torch.where(on, radii_c, torch.zeros_like(radii_c)).to(torch.int64))
    log_o = torch.log(torch.clamp_min(_sel(opacities, idx), 1e-30))
    A, B, C = c / det, -b / det, a / det  # conic = inverse covariance
    n_tx, n_ty = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles = n_tx * n_ty
    gauss, tile, tile_start, tile_count = _tile_pairs(
        torch.stack([u, v], dim=1),
        torch.stack([A, B, C], dim=1),
        _sel(depths, idx),
        on,
        log_o,
        ts,
        n_tx,
        n_ty,
        near >= 0,
    )  # gauss: positions in idx
    n_pairs, m = len(gauss), len(idx)
    cut = torch.clamp(log_o - math.log(ALPHA_MIN), max=SIGMA_CUTOFF)

    # Per pair, e(q) = log o - sigma at pixel q (relative to the tile centre) is a quadratic in q: six
    # coefficients, stored column-wise with one padding column whose alpha is exp(-1e4) = 0.
    half = 0.5 * ts
    dx = (tile % n_tx).to(dtype) * ts + half - _sel(u, gauss)  # tile centre minus mean
    dy = torch.div(tile, n_tx, rounding_mode="floor").to(dtype) * ts + half - _sel(v, gauss)
    Ag, Bg, Cg = _sel(A, gauss), _sel(B, gauss), _sel(C, gauss)
    coef = torch.zeros(6, n_pairs + 1, dtype=dtype, device=dev)
    coef[0, :n_pairs] = -0.5 * Ag
    coef[1, :n_pairs] = -Bg
    coef[2, :n_pairs] = -0.5 * Cg
    coef[3, :n_pairs] = -(Ag * dx + Bg * dy)
    coef[4, :n_pairs] = -(Cg * dy + Bg * dx)
    coef[5, :n_pairs] = _sel(log_o, gauss) - 0.5 * (Ag * dx * dx + 2 * Bg * dx * dy + Cg * dy * dy)
    coef[5, n_pairs] = -1e4
    alpha_min = torch.zeros(n_pairs + 1, dtype=dtype, device=dev)
    alpha_min[:n_pairs] = torch.exp(_sel(log_o - cut, gauss))
    pair_gauss = torch.cat([gauss, torch.full((1,), m, dtype=gauss.dtype, device=dev)])

    vals = _colors_and_features(
        _sel(means, idx),
        _sel(colors, idx),
        viewmat,
        None if features is None else _sel(features, idx),
        sh_degree,
    )
    n_ch = vals.shape[1] + 1  # + depth
    table = torch.zeros(m + 1, n_ch, dtype=dtype, device=dev)  # row m: padding, all zero
    table[:m, :-1] = vals
    table[:m, -1] = _sel(depths, idx)

    tiles = torch.nonzero(tile_count > 0).squeeze(1)
    start, count = _sel(tile_start, tiles), _sel(tile_count, tiles)
    off = torch.arange(ts, device=dev, dtype=dtype) + 0.5 - half
    qy, qx = (t.reshape(-1) for t in torch.meshgrid(off, off, indexing="ij"))
    pix_mono = torch.stack([qx * qx, qx * qy, qy * qy, qx, qy, torch.ones_like(qx)], dim=0)  # (6, P)
    n_pix = ts * ts
    centre_x = ((tiles % n_tx) * ts).to(dtype) + half
    centre_y = ((tiles // n_tx) * ts).to(dtype) + half
    done = ((centre_x[:, None] + qx) > width) | ((centre_y[:, None] + qy) > height)  # padding pixels
    T = torch.ones(len(tiles), n_pix, dtype=dtype, device=dev)
    acc = torch.zeros(len(tiles), n_ch, n_pix, dtype=dtype, device=dev)
    max_count = int(count.max()) if len(tiles) else 0
    e_max = math.log(ALPHA_MAX)
    # alpha = min(0.99, o exp(-sigma)): the clamp can only bite where some opacity exceeds 0.99.
    clamp = m > 0 and float(log_o.max()) > e_max

    # Same walk as _rasterize_torch, in layout (tiles, chunk, pixels) so e comes out of one 2D matmul, and
    # over blocks of tiles small enough that a step's temporaries stay in the CPU cache (measured: ~1.5x
    # faster than one step over all live tiles at 320x240).
    live = torch.arange(len(tiles), device=dev)
    k0, step = 0, max(1, min(8, chunk))
    while k0 < max_count:
        live = live[(_sel(count, live) > k0) & ~_sel(done, live).all(dim=1)]
        if len(live) == 0:
            break
        k = torch.arange(k0, k0 + step, device=dev)
        for blk in live.split(max(1, BLOCK_ELEMS // (step * n_pix))):
            n_blk = len(blk)
            rows = _sel(start, blk)[:, None] + k
            rows = torch.where(k < _sel(count, blk)[:, None], rows, n_pairs).reshape(-1)  # (B*C,)
            e = torch.mm(torch.index_select(coef, 1, rows).T, pix_mono).reshape(n_blk, step, n_pix)
            alpha = (e.clamp_max_(e_max) if clamp else e).exp_()
            alpha.masked_fill_(alpha < _sel(alpha_min, rows).reshape(n_blk, step, 1), 0.0)
            one_minus = 1.0 - alpha
            T_blk = _sel(T, blk)
            # Absolute transmittance after each Gaussian: start the product at T (0 for stopped pixels), so
            # that "blend while T after > T_MIN" is one threshold by a scalar (comparisons with a per-pixel
            # bound and multiplications by bool masks cost several times more on CPU).
            first = one_minus[:, 0].clone()
            one_minus[:, 0].mul_(torch.where(_sel(done, blk), 0.0, T_blk))
            t_after = torch.cumprod(one_minus, dim=1)
            one_minus[:, 0] = first
            torch.nn.functional.threshold_(t_after, T_MIN, 0.0)  # a prefix survives: what 3DGS blends
            stopped = t_after[:, -1] == 0
            w = t_after.div_(one_minus).mul_(alpha)  # alpha * T before, 0 past the prefix (1 - alpha >= 0.01)
            vals_c = _sel(table, _sel(pair_gauss, rows)).reshape(n_blk, step, n_ch)
            acc.index_add_(0, blk, torch.bmm(vals_c.transpose(1, 2), w))
            T.index_copy_(0, blk, T_blk - w.sum(dim=1))  # telescoping sum of the weights
            done.index_copy_(0, blk, stopped)
        k0 += step
        step = min(2 * step, chunk)

    img = torch.zeros(n_tiles, n_pix, n_ch + 1, dtype=dtype, device=dev)
    img[tiles, :, :n_ch] = acc.transpose(1, 2)
    img[tiles, :, n_ch] = 1.0 - T
    img = img.reshape(n_ty, n_tx, ts, ts, n_ch + 1).permute(0, 2, 1, 3, 4).reshape(n_ty * ts, n_tx * ts, -1)
    img = img[:height, :width]
    alpha_img = img[..., -1]
    depth = img[..., -2] / torch.clamp_min(alpha_img, 1e-10)
    return {"blended": img[..., :-2], "depth": depth, "alpha": alpha_img, "means2d": means2d, "radii": radii}
