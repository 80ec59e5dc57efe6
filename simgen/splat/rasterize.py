"""Differentiable Gaussian rasterization: gsplat's CUDA kernels on GPU, a tile-based pure-torch path on CPU.

Conventions (the same as gsplat, so both backends take the same tensors):

* ``viewmat`` ``(4, 4)``: world-to-camera with OpenCV camera axes (x right, y down, z forward).
  simgen scene frames give ``np.linalg.inv(frame.c2w_cv)``.
* ``K`` ``(3, 3)``: pinhole intrinsics in pixels. Pixel ``(row i, column j)`` has its centre at
  ``(u, v) = (j + 0.5, i + 0.5)``.
* ``quats`` ``(N, 4)``: ``w x y z`` (need not be unit length), ``scales`` ``(N, 3)``: standard deviations in
  metres (already exponentiated), ``opacities`` ``(N,)`` in ``[0, 1]`` (already through the sigmoid).
* ``colors``: ``(N, 3)`` (any range) or SH coefficients ``(N, K, 3)``, evaluated along the camera -> Gaussian
  direction with 3DGS's ``+0.5`` offset and clamp at 0 (:mod:`simgen.splat.sh`).

The CPU path follows 3DGS (Kerbl et al. 2023) and PanopticRecon++ eq. 16-17: each mean is moved to the camera
(``p' = K W p``), each covariance is projected with the Jacobian of the perspective map
(``Sigma' = J W Sigma W^T J^T``) plus a 0.3 px^2 low-pass, and Gaussians are composited front to back per
pixel with ``alpha = min(0.99, o * exp(-d^T Sigma'^-1 d / 2))``, skipping ``alpha < 1/255`` and stopping at the
Gaussian that would take the transmittance to ``<= 1e-4`` (that Gaussian is not blended). One deliberate
difference: a Gaussian only touches pixels inside its 3-sigma ellipse, so the image does not depend on the
tile size (3DGS lets a Gaussian reach every pixel of every tile its 3-sigma bounding box overlaps, so a few
alpha < 1.1 % * opacity tails differ; the CUDA comparison tolerance covers them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from simgen.splat.sh import eval_sh

ALPHA_MAX = 0.99  # 3DGS clamps alpha so that one Gaussian never makes a pixel fully opaque
ALPHA_MIN = 1.0 / 255.0  # contributions below one 8-bit step are skipped
T_MIN = 1e-4  # compositing stops once transmittance would fall to this
SIGMA_CUTOFF = 4.5  # 0.5 * 3^2: the 3-sigma ellipse in units of the Mahalanobis exponent

BACKENDS = ("auto", "torch", "gsplat")


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
    pc = means @ R.T + t
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
    chunk: int = 32,
) -> dict[str, Any]:
    """Render RGB, expected depth, alpha and feature channels of ``N`` Gaussians for one camera.

    Args: see the module docstring for conventions. ``features`` ``(N, F)`` are alpha-blended like colours
    (one-hot labels, embeddings); ``sh_degree`` limits the SH bands used (progressive training);
    ``background`` ``(3,)`` is composited behind the RGB only. ``backend``: ``"torch"`` (CPU/any device,
    differentiable through autograd), ``"gsplat"`` (CUDA only), ``"auto"`` (gsplat when the tensors are on
    CUDA and gsplat imports, else torch). ``chunk`` is how many depth-sorted Gaussians per tile the torch path
    blends per vectorised step at most; ``tile_size`` defaults to 16 for gsplat and 8 for torch (on CPU the
    smaller tiles waste fewer (pixel, Gaussian) evaluations outside each Gaussian's footprint).

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
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and gsplat_available() else "torch"
    vals = _colors_and_features(means, colors, viewmat, features, sh_degree)
    if tile_size is None:
        tile_size = 16 if backend == "gsplat" else 8
    if backend == "gsplat":
        out = _rasterize_gsplat(
            means, quats, scales, opacities, vals, viewmat, K, width, height, near, far, tile_size, eps2d
        )
    else:
        out = _rasterize_torch(
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
            tile_size,
            eps2d,
            chunk,
        )
    n_feat = vals.shape[1] - 3
    blended, alpha = out["blended"], out["alpha"]
    rgb = blended[..., :3]
    if background is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * background.to(rgb)
    return {
        "rgb": rgb,
        "depth": out["depth"],
        "alpha": alpha,
        "features": blended[..., 3:] if n_feat > 0 else None,
        "means2d": out["means2d"],
        "radii": out["radii"],
        "backend": backend,
        "info": out.get("info"),
    }


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


def _tile_pairs(means2d, radii, depths, tile_size, n_tx, n_ty, extents=None):
    """(tile, Gaussian) pairs sorted by tile then depth, as in 3DGS's key sort, but built with tensor ops.

    Returns ``pair_gauss`` ``(P,)`` Gaussian index per pair, ``tile_start`` / ``tile_count`` ``(n_tiles,)``.
    """
    with torch.no_grad():
        vis = torch.nonzero(radii > 0).squeeze(1)
        r = radii[vis].to(means2d.dtype)
        rx, ry = (r, r) if extents is None else (extents[vis, 0], extents[vis, 1])
        m = means2d[vis].detach()
        x0 = torch.clamp(torch.floor((m[:, 0] - rx) / tile_size), 0, n_tx).to(torch.int64)
        x1 = torch.clamp(torch.ceil((m[:, 0] + rx) / tile_size), 0, n_tx).to(torch.int64)
        y0 = torch.clamp(torch.floor((m[:, 1] - ry) / tile_size), 0, n_ty).to(torch.int64)
        y1 = torch.clamp(torch.ceil((m[:, 1] + ry) / tile_size), 0, n_ty).to(torch.int64)
        w = x1 - x0
        counts = w * (y1 - y0)
        total = int(counts.sum())
        rank = torch.empty_like(vis)
        rank[torch.sort(depths[vis].detach(), stable=True).indices] = torch.arange(
            len(vis), device=vis.device
        )
        g = torch.repeat_interleave(torch.arange(len(vis), device=vis.device), counts)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=vis.device) - first[g]
        tile = (y0[g] + local // w[g]) * n_tx + x0[g] + local % w[g]
        order = torch.sort(tile * max(len(vis), 1) + rank[g]).indices
        tile_count = torch.bincount(tile, minlength=n_tx * n_ty)
        tile_start = torch.cumsum(tile_count, 0) - tile_count
        return vis[g[order]], tile_start, tile_count


def _rasterize_torch(
    means, quats, scales, opacities, vals, viewmat, K, width, height, near, far, ts, eps2d, chunk
):
    proj = project_gaussians(means, quats, scales, viewmat, K, width, height, near, far, eps2d)
    means2d, conics, depths, radii = proj["means2d"], proj["conics"], proj["depths"], proj["radii"]
    dtype, dev = means.dtype, means.device
    n_tx, n_ty = math.ceil(width / ts), math.ceil(height / ts)
    pair_gauss, tile_start, tile_count = _tile_pairs(means2d, radii, depths, ts, n_tx, n_ty, proj["extents"])
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
    log_o = torch.log(torch.clamp_min(opacities, 1e-30))
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
        mx = means2d[g, 0] - centre_x[live, None]
        my = means2d[g, 1] - centre_y[live, None]
        con = conics[g]
        a, b, c = con[..., 0], con[..., 1], con[..., 2]
        const = log_o[g] - (0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my)
        const = torch.where(in_list, const, torch.full_like(const, -1e4))  # padding: alpha = exp(-1e4) = 0
        coef = torch.stack(
            [-0.5 * a, -b, -0.5 * c, a * mx + b * my, c * my + b * mx, const], dim=1
        )  # (L, 6, C)
        e = torch.matmul(pix_mono, coef)  # (L, P, C)
        alpha = torch.exp(torch.clamp_max(e, e_max)) * (e >= e_min[g][:, None, :])
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
        acc = acc.index_add(0, live, torch.bmm(w, vals[g]) * T_live[:, :, None])
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
