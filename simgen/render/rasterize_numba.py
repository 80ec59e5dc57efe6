"""Compiled CPU Gaussian rasterizer (numba): the no-gradient path of :func:`simgen.render.rasterize.rasterize`.

Same conventions and the same compositing rules as :mod:`simgen.render.rasterize` (3DGS / PanopticRecon++
eq. 16-17: EWA projection with a 0.3 px^2 low-pass, front-to-back blending with
``alpha = min(0.99, o exp(-sigma))``, a Gaussian only touching pixels with ``sigma <= min(4.5, log(255 o))``,
stopping before the Gaussian that would take the transmittance to ``<= 1e-4``), so the image equals the torch
inference path's up to float rounding (tests hold it to the brute-force reference).

Why a compiled kernel: profiling the torch inference path on 50 k Gaussians at 320x240 (one thread), the
time is spread over a few hundred tensor ops -- each a full pass over (tile, Gaussian, pixel) temporaries
of which most are thrown away (pixels outside a footprint, pixels that already stopped) -- plus their
allocation. A scalar loop per pixel does only the work 3DGS's CUDA kernel does: it skips a Gaussian with
one compare, stops a pixel at once, and allocates nothing per step. No library gives that on CPU: gsplat's
rasterizer is CUDA-only and its pure-torch helpers have a Python loop per Gaussian (docs/gpu.md).

What does not depend on the camera is computed once per set of Gaussians by :func:`prepare` (float64
means, the rotation-times-scale matrices, log opacities, view-independent colours when the model has no
higher SH bands); :class:`simgen.render.gaussians.GaussianScene` keeps it between renders.

Stages per camera, one compiled function each (``nogil``; the per-Gaussian and per-tile loops are ``prange``
loops over :func:`render_threads` threads, so one request uses every core of a one-worker server):

1. :func:`_project`: per Gaussian, camera transform, Jacobian at the clamped point, 2D covariance, conic,
   3-sigma radius and the on-image test (float64 arithmetic whatever the input dtype).
2. depth order: a stable argsort of the visible Gaussians' depths (ties by index, as 3DGS's key sort);
   :func:`_gather` then lays the visible Gaussians' per-tile inputs out in that order.
3. :func:`_bin`: (tile, Gaussian) pairs where the ellipse ``sigma <= cut`` reaches the tile, per tile row
   with the exact x-range (same bounds as :func:`simgen.render.rasterize._tile_lists`), in two passes
   (count, fill: a counting sort by tile) so the lists come out in depth order without sorting pairs.
4. :func:`_blend`: per tile, per pixel, walk the tile's list. Tiles are independent, so the image is the
   same bit for bit whatever the thread count.

Threads: numba's threading layer here is ``workqueue`` unless ``NUMBA_THREADING_LAYER`` says otherwise
(OpenMP spins while it waits and does not survive ``fork``; workqueue threads sleep). Workqueue aborts the
process when two threads launch parallel loops at once, so renders of one process take a lock around the
compiled stages; render-server threads still overlap a Gaussian render with ray casting.

First use compiles the kernels (``cache=True`` keeps the machine code under ``__pycache__``, so only the
first process on a machine pays it; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from simgen.render import sh as SH

try:  # numba is a dependency, but an environment without it still renders through the torch path
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
    _njit = numba.njit(cache=True, nogil=True)
    _njit_par = numba.njit(cache=True, nogil=True, parallel=True)
    # The blending loop may contract and reassociate float operations (FMA): measured faster on 50 k
    # trained Gaussians, images equal to 1e-14. NaN / inf semantics are kept (no 'nnan' / 'ninf').
    _fast = {"contract", "reassoc", "arcp", "nsz"}
    _njit_blend = numba.njit(cache=True, nogil=True, parallel=True, fastmath=_fast)
    _njit_blend_tile = numba.njit(cache=True, nogil=True, fastmath=_fast)
    prange = numba.prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

    def _njit(f):
        return f

    _njit_par = _njit_blend = _njit_blend_tile = _njit
    prange = range

_LOCK = threading.Lock()  # workqueue is not thread-safe (module docstring)
_threads: int | None = None


def set_render_threads(n: int | None) -> None:
    """Threads for the compiled stages of one render (``None``: every thread numba has, i.e. the cores,
    or ``NUMBA_NUM_THREADS``). A server running as many worker processes as cores may set 1."""
    global _threads
    if n is not None and n < 1:
        raise ValueError(f"set_render_threads: n must be >= 1 or None, got {n}")
    _threads = n


def render_threads() -> int:
    """Threads the compiled stages use per render (see :func:`set_render_threads`)."""
    if numba is None:
        return 1
    return max(1, min(_threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))


def numba_available() -> bool:
    """True if numba imports (then :func:`rasterize_numba` is used for CPU renders without gradients)."""
    return numba is not None


@_njit_par
def _rot_scale(quats, scales):
    """``(N, 3, 3)`` float64 ``R(q) diag(s)`` of unnormalised wxyz ``quats`` ``(N, 4)`` and ``scales`` ``(N, 3)``
    (:func:`simgen.render.rasterize.covariance_3d` is ``M M^T``)."""
    n = quats.shape[0]
    out = np.empty((n, 3, 3))
    for i in prange(n):
        qw, qx, qy, qz = float(quats[i, 0]), float(quats[i, 1]), float(quats[i, 2]), float(quats[i, 3])
        qn = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)  # torch's normalize
        qw, qx, qy, qz = qw / qn, qx / qn, qy / qn, qz / qn
        s0, s1, s2 = float(scales[i, 0]), float(scales[i, 1]), float(scales[i, 2])
        out[i, 0, 0] = (1 - 2 * (qy * qy + qz * qz)) * s0
        out[i, 0, 1] = 2 * (qx * qy - qw * qz) * s1
        out[i, 0, 2] = 2 * (qx * qz + qw * qy) * s2
        out[i, 1, 0] = 2 * (qx * qy + qw * qz) * s0
        out[i, 1, 1] = (1 - 2 * (qx * qx + qz * qz)) * s1
        out[i, 1, 2] = 2 * (qy * qz - qw * qx) * s2
        out[i, 2, 0] = 2 * (qx * qz - qw * qy) * s0
        out[i, 2, 1] = 2 * (qy * qz + qw * qx) * s1
        out[i, 2, 2] = (1 - 2 * (qx * qx + qy * qy)) * s2
    return out


@_njit_par
def _project(means, rs, R, t, fx, fy, cx, cy, width, height, near, far, eps2d, lims):
    """EWA projection of every Gaussian (formulas of :func:`simgen.render.rasterize.project_gaussians`).

    ``means`` ``(N, 3)`` float64 world metres, ``rs`` ``(N, 3, 3)`` :func:`_rot_scale`, ``R`` ``(3, 3)`` /
    ``t`` ``(3,)`` world-to-camera (OpenCV axes), ``lims`` ``(4,)`` the x/z and y/z limits of the Jacobian's
    evaluation point. Returns ``means2d`` ``(N, 2)`` pixels, ``depth`` ``(N,)`` camera z metres, ``radii``
    ``(N,)`` int64 (0 = culled), ``cov`` ``(N, 3)`` the 2D covariance ``(a, b, c)`` px^2 with the low-pass,
    ``conic`` ``(N, 3)`` its inverse ``(A, B, C)``.
    """
    n = means.shape[0]
    means2d = np.zeros((n, 2))
    depth = np.zeros(n)
    radii = np.zeros(n, np.int64)
    cov = np.zeros((n, 3))
    conic = np.zeros((n, 3))
    for i in prange(n):
        m0, m1, m2 = means[i, 0], means[i, 1], means[i, 2]
        x = R[0, 0] * m0 + R[0, 1] * m1 + R[0, 2] * m2 + t[0]
        y = R[1, 0] * m0 + R[1, 1] * m1 + R[1, 2] * m2 + t[1]
        z = R[2, 0] * m0 + R[2, 1] * m1 + R[2, 2] * m2 + t[2]
        depth[i] = z
        in_range = z > near and z < far
        zs = z if in_range else 1.0
        u = fx * x / zs + cx
        v = fy * y / zs + cy
        means2d[i, 0] = u
        means2d[i, 1] = v
        if not in_range:
            continue
        iz = 1.0 / zs
        tx = min(max(x * iz, lims[0]), lims[1])
        ty = min(max(y * iz, lims[2]), lims[3])
        j0x, j0z = fx * iz, -fx * tx * iz
        j1y, j1z = fy * iz, -fy * ty * iz
        # rows of J W (J has zeros at (0, 1) and (1, 0))
        a0, a1, a2 = (
            j0x * R[0, 0] + j0z * R[2, 0],
            j0x * R[0, 1] + j0z * R[2, 1],
            j0x * R[0, 2] + j0z * R[2, 2],
        )
        b0, b1, b2 = (
            j1y * R[1, 0] + j1z * R[2, 0],
            j1y * R[1, 1] + j1z * R[2, 1],
            j1y * R[1, 2] + j1z * R[2, 2],
        )
        # cov2d = (J W M)(J W M)^T, accumulated over the three columns of M = Rq S
        p0 = a0 * rs[i, 0, 0] + a1 * rs[i, 1, 0] + a2 * rs[i, 2, 0]
        q0 = b0 * rs[i, 0, 0] + b1 * rs[i, 1, 0] + b2 * rs[i, 2, 0]
        p1 = a0 * rs[i, 0, 1] + a1 * rs[i, 1, 1] + a2 * rs[i, 2, 1]
        q1 = b0 * rs[i, 0, 1] + b1 * rs[i, 1, 1] + b2 * rs[i, 2, 1]
        p2 = a0 * rs[i, 0, 2] + a1 * rs[i, 1, 2] + a2 * rs[i, 2, 2]
        q2 = b0 * rs[i, 0, 2] + b1 * rs[i, 1, 2] + b2 * rs[i, 2, 2]
        a = p0 * p0 + p1 * p1 + p2 * p2 + eps2d
        b = p0 * q0 + p1 * q1 + p2 * q2
        c = q0 * q0 + q1 * q1 + q2 * q2 + eps2d
        det = a * c - b * b
        if not det > 0:
            continue
        ex, ey = 3.0 * math.sqrt(max(a, 0.0)), 3.0 * math.sqrt(max(c, 0.0))
        if not (u + ex > 0 and u - ex < width and v + ey > 0 and v - ey < height):
            continue
        mid = 0.5 * (a + c)
        radii[i] = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(mid * mid - det, 0.1))))
        cov[i, 0], cov[i, 1], cov[i, 2] = a, b, c
        conic[i, 0], conic[i, 1], conic[i, 2] = c / det, -b / det, a / det
    return means2d, depth, radii, cov, conic


@_njit
def _row_range(v, half_h, ts, n_ty, slack):
    """Tile rows ``[ty0, ty1]`` whose pixel-centre band the vertical extent ``v +- half_h`` reaches."""
    ty0 = min(max(math.floor(math.ceil(v - half_h - 0.5 - slack) / ts), 0), n_ty)
    ty1 = min(max(math.floor(math.floor(v + half_h - 0.5 + slack) / ts), -1), n_ty - 1)
    return ty0, ty1


@_njit
def _col_range(ty, u, v, A, B, C, a, b, c, two_cut, ts, n_tx, slack):
    """Tile columns ``[tx0, tx1]`` the ellipse ``d^T conic d <= two_cut`` reaches in tile row ``ty``: the
    exact x-range over the row's band of pixel centres (see :func:`simgen.render.rasterize._tile_lists`)."""
    half_w, half_h = math.sqrt(two_cut * a), math.sqrt(two_cut * c)
    y_lo = max(ty * ts + 0.5 - v, -half_h)
    y_hi = max(min(ty * ts + (ts - 0.5) - v, half_h), y_lo)
    y_right = b / a * half_w
    yr = min(max(y_right, y_lo), y_hi)
    yl = min(max(-y_right, y_lo), y_hi)
    det_c = A * C - B * B
    x_hi = (-B * yr + math.sqrt(max(A * two_cut - det_c * yr * yr, 0.0))) / A
    x_lo = (-B * yl - math.sqrt(max(A * two_cut - det_c * yl * yl, 0.0))) / A
    tx0 = min(max(math.floor(math.ceil(u + x_lo - 0.5 - slack) / ts), 0), n_tx)
    tx1 = min(max(math.floor(math.floor(u + x_hi - 0.5 + slack) / ts), -1), n_tx - 1)
    return tx0, tx1


@_njit
def _bin(u, v, conic, cov, cut, ts, n_tx, n_ty):
    """Per-tile lists of the (already depth-sorted) Gaussians ``0..M-1`` whose ellipse ``sigma <= cut``
    reaches a pixel centre of the tile. ``u, v, cut`` ``(M,)``, ``conic``/``cov`` ``(M, 3)``.

    Returns ``start`` ``(n_tiles + 1,)`` int64 offsets and ``items`` ``(P,)`` int32 Gaussian positions,
    each tile's in depth order."""
    m = u.shape[0]
    n_tiles = n_tx * n_ty
    slack = 1e-3  # an extra pair costs a little time, a missing one would change the image
    count = np.zeros(n_tiles + 1, np.int64)
    for k in range(m):
        two_cut = 2.0 * cut[k]
        ty0, ty1 = _row_range(v[k], math.sqrt(two_cut * cov[k, 2]), ts, n_ty, slack)
        for ty in range(ty0, ty1 + 1):
            tx0, tx1 = _col_range(
                ty, u[k], v[k], conic[k, 0], conic[k, 1], conic[k, 2], cov[k, 0], cov[k, 1], cov[k, 2],
                two_cut, ts, n_tx, slack,
            )  # fmt: skip
            for tx in range(tx0, tx1 + 1):
                count[ty * n_tx + tx + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    items = np.empty(start[-1], np.int32)
    for k in range(m):
        two_cut = 2.0 * cut[k]
        ty0, ty1 = _row_range(v[k], math.sqrt(two_cut * cov[k, 2]), ts, n_ty, slack)
        for ty in range(ty0, ty1 + 1):
            tx0, tx1 = _col_range(
                ty, u[k], v[k], conic[k, 0], conic[k, 1], conic[k, 2], cov[k, 0], cov[k, 1], cov[k, 2],
                two_cut, ts, n_tx, slack,
            )  # fmt: skip
            for tx in range(tx0, tx1 + 1):
                tile = ty * n_tx + tx
                items[fill[tile]] = k
                fill[tile] += 1
    return start, items


@_njit_blend
def _blend(
    start, items, u, v, conic, half_h, log_o, cut, vals, width, height, ts, n_tx, alpha_max, t_min, n_par
):
    """Front-to-back compositing of each tile's list into the pixels of the tile.

    Per tile, the Gaussians are walked in depth order over the tile's pixels (3DGS's CUDA order). Each
    pixel row of the tile inside the ellipse's vertical extent ``v +- half_h`` gets the exact x-range where
    ``sigma <= cut`` (one square root), so pixels outside the ellipse cost nothing; along the range alpha
    comes from forward differences of the quadratic exponent (two multiplications a pixel, three ``exp`` a
    row); the walk ends once every pixel of the tile has stopped. Each pixel still takes the exact
    ``sigma <= cut`` test. Measured on 50 k Gaussians at 320x240 against a loop per pixel over the whole
    list: about 2x less blending time (most list entries miss most pixels of a tile).

    ``u, v, half_h, log_o, cut`` ``(M,)``, ``conic`` ``(M, 3)``, ``vals`` ``(M, C)`` per-Gaussian channels
    (colour, features, camera depth last) of the depth-sorted Gaussians. Returns ``img`` ``(H, W, C)`` the
    blended channels (not normalised) and ``alpha`` ``(H, W)`` the accumulated opacity. ``n_par`` parallel
    workers, each taking every ``n_par``-th tile: neighbouring tiles cost about the same, so interleaving
    balances the workers where contiguous blocks of rows would not (a floor against a wall of clutter).
    """
    n_ch = vals.shape[1]
    img = np.zeros((height, width, n_ch), vals.dtype)
    alpha_img = np.zeros((height, width), vals.dtype)
    n_pix = ts * ts
    e_max = math.log(alpha_max)
    slack = 1e-3  # pixels just outside a solved range still take the exact test
    n_tiles = start.shape[0] - 1
    for worker in prange(n_par):
        T = np.empty(n_pix)
        acc = np.empty((n_pix, n_ch))
        done = np.empty(n_pix, np.bool_)
        lo_live = np.empty(ts, np.int64)
        hi_live = np.empty(ts, np.int64)
        for tile in range(worker, n_tiles, n_par):
            _blend_tile(
                tile, start, items, u, v, conic, half_h, log_o, cut, vals, width, height, ts, n_tx, alpha_max,
                t_min, e_max, slack, T, acc, done, lo_live, hi_live, img, alpha_img,
            )  # fmt: skip
    return img, alpha_img


@_njit_blend_tile
def _blend_tile(
    tile, start, items, u, v, conic, half_h, log_o, cut, vals, width, height, ts, n_tx, alpha_max, t_min, e_max,
    slack, T, acc, done, lo_live, hi_live, img, alpha_img,
):  # fmt: skip
    """One tile of :func:`_blend`, with the worker's scratch ``T``, ``acc``, ``done`` (per pixel) and
    ``lo_live``, ``hi_live`` (per row: the first and last pixel not yet stopped; a row with ``lo > hi`` is
    finished, and a Gaussian's range on a row is clipped to its live span before any ``exp``)."""
    n_ch = vals.shape[1]
    four = n_ch == 4
    v0 = v1 = v2 = v3 = 0.0
    s, e = start[tile], start[tile + 1]
    if s != e:
        x0, y0 = (tile % n_tx) * ts, (tile // n_tx) * ts
        nx, ny = min(ts, width - x0), min(ts, height - y0)
        T[:] = 1.0
        acc[:] = 0.0
        done[:] = False
        lo_live[:ny] = 0
        hi_live[:ny] = nx - 1
        n_live = nx * ny
        for j in range(s, e):
            k = items[j]
            A, B, C = conic[k, 0], conic[k, 1], conic[k, 2]
            ck, lo, uk, vk = cut[k], log_o[k], u[k], v[k]
            iA = 1.0 / A
            # The eps2d low-pass keeps A <= 1 / eps2d (3.3 px^-2 by default), so the step factors stay far
            # from under/overflow; a sharper Gaussian (eps2d ~ 0) takes exp per pixel instead.
            stepped = A < 20.0
            Q = math.exp(-A)
            if four:  # RGB + depth, the serving case: the channel loop unrolled with the values in registers
                v0, v1, v2, v3 = vals[k, 0], vals[k, 1], vals[k, 2], vals[k, 3]
            ry0 = max(math.ceil(vk - half_h[k] - 0.5 - slack) - y0, 0)
            ry1 = min(math.floor(vk + half_h[k] - 0.5 + slack) - y0, ny - 1)
            for ry in range(ry0, ry1 + 1):
                if lo_live[ry] > hi_live[ry]:
                    continue
                dy = y0 + ry + 0.5 - vk
                disc = B * B * dy * dy - A * (C * dy * dy - 2.0 * ck)
                if disc < 0:
                    continue
                sq = math.sqrt(disc)
                xc = uk - B * dy * iA - 0.5 - x0
                ia = max(math.ceil(xc - sq * iA - slack), lo_live[ry])
                ib = min(math.floor(xc + sq * iA + slack), hi_live[ry])
                if ia > ib:
                    continue
                cy = 0.5 * C * dy * dy
                dx = x0 + ia + 0.5 - uk
                # alpha along the row by forward differences of the quadratic exponent
                E = math.exp(lo - ((0.5 * A * dx + B * dy) * dx + cy))
                Rr = math.exp(-(A * dx + 0.5 * A + B * dy))
                stopped = False
                for rx in range(ia, ib + 1):
                    p = ry * ts + rx
                    Ecur = E
                    E *= Rr
                    Rr *= Q
                    if done[p]:
                        continue
                    dx = x0 + rx + 0.5 - uk
                    sigma = (0.5 * A * dx + B * dy) * dx + cy
                    if sigma > ck:  # outside 3 sigma, or alpha < 1/255
                        continue
                    alpha = min(Ecur, alpha_max) if stepped else math.exp(min(lo - sigma, e_max))
                    Tp = T[p]
                    t_next = Tp * (1.0 - alpha)
                    if t_next <= t_min:
                        done[p] = True
                        n_live -= 1
                        stopped = True
                        continue
                    w = alpha * Tp
                    if four:
                        acc[p, 0] += w * v0
                        acc[p, 1] += w * v1
                        acc[p, 2] += w * v2
                        acc[p, 3] += w * v3
                    else:
                        for ch in range(n_ch):
                            acc[p, ch] += w * vals[k, ch]
                    T[p] = t_next
                if stopped:  # shrink the row's live span past its stopped ends
                    first, last, base = lo_live[ry], hi_live[ry], ry * ts
                    while first <= last and done[base + first]:
                        first += 1
                    while last >= first and done[base + last]:
                        last -= 1
                    lo_live[ry], hi_live[ry] = first, last
            if n_live == 0:
                break
        for ry in range(ny):
            for rx in range(nx):
                p = ry * ts + rx
                for ch in range(n_ch):
                    img[y0 + ry, x0 + rx, ch] = acc[p, ch]
                alpha_img[y0 + ry, x0 + rx] = 1.0 - T[p]


_SH_C0 = SH._C0
_SH_C1 = SH._C1
_SH_C2 = SH._C2
_SH_C3 = SH._C3


@_njit_par
def _eval_sh(sh, means, order, campos, degree, n_par):
    """View-dependent colours ``(M, 3)`` of the Gaussians ``order`` ``(M,)``: SH ``sh`` ``(N, K, 3)`` along
    camera -> mean (:func:`simgen.render.sh.eval_sh`: same basis, +0.5 and clamp at 0). ``n_par`` parallel
    workers, each with its own basis buffer (one allocation per worker, not per Gaussian)."""
    m = order.shape[0]
    out = np.empty((m, 3))
    c2, c3 = _SH_C2, _SH_C3
    for worker in prange(n_par):
        basis = np.empty(16)
        for r in range(worker, m, n_par):
            i = order[r]
            x, y, z = means[i, 0] - campos[0], means[i, 1] - campos[1], means[i, 2] - campos[2]
            nrm = max(math.sqrt(x * x + y * y + z * z), 1e-12)
            x, y, z = x / nrm, y / nrm, z / nrm
            # set here, not in the degree-2 branch: inside a prange body numba lost the branch's values in the
            # degree-3 branch (wrong colours)
            xx, yy, zz = x * x, y * y, z * z
            basis[0] = _SH_C0
            nb = 1
            if degree >= 1:
                basis[1], basis[2], basis[3] = -_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x
                nb = 4
            if degree >= 2:
                basis[4] = c2[0] * x * y
                basis[5] = c2[1] * y * z
                basis[6] = c2[2] * (2.0 * zz - xx - yy)
                basis[7] = c2[3] * x * z
                basis[8] = c2[4] * (xx - yy)
                nb = 9
            if degree >= 3:
                basis[9] = c3[0] * y * (3.0 * xx - yy)
                basis[10] = c3[1] * x * y * z
                basis[11] = c3[2] * y * (4.0 * zz - xx - yy)
                basis[12] = c3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
                basis[13] = c3[4] * x * (4.0 * zz - xx - yy)
                basis[14] = c3[5] * z * (xx - yy)
                basis[15] = c3[6] * x * (xx - 3.0 * yy)
                nb = 16
            for ch in range(3):
                acc = 0.0
                for b in range(nb):
                    acc += basis[b] * sh[i, b, ch]
                out[r, ch] = max(acc + 0.5, 0.0)
    return out


@_njit_par
def _gather(order, means2d, conic, cov, cut, log_o, depth, colors, n_feat):
    """The visible Gaussians ``order`` ``(M,)`` laid out front to back for binning and blending: ``u, v,
    half_h, log_o, cut`` ``(M,)``, ``conic``, ``cov`` ``(M, 3)`` and ``vals`` ``(M, 3 + n_feat + 1)`` with
    ``colors`` ``(N, 3)`` (or nothing when ``colors`` has no rows: SH colours are filled in by the caller),
    ``n_feat`` feature columns left for the caller and the camera depth last."""
    m = order.shape[0]
    u, v, half_h, lo, ct = np.empty(m), np.empty(m), np.empty(m), np.empty(m), np.empty(m)
    conic_o, cov_o = np.empty((m, 3)), np.empty((m, 3))
    vals = np.empty((m, 3 + n_feat + 1))
    have_colors = colors.shape[0] > 0
    for r in prange(m):
        i = order[r]
        u[r], v[r] = means2d[i, 0], means2d[i, 1]
        for c in range(3):
            conic_o[r, c] = conic[i, c]
            cov_o[r, c] = cov[i, c]
        ct[r], lo[r] = cut[i], log_o[i]
        half_h[r] = math.sqrt(2.0 * cut[i] * cov[i, 2])
        if have_colors:
            for c in range(3):
                vals[r, c] = colors[i, c]
        vals[r, 3 + n_feat] = depth[i]
    return u, v, half_h, lo, ct, conic_o, cov_o, vals


@dataclass(frozen=True)
class Prepared:
    """What :func:`render_prepared` needs of ``N`` Gaussians that no camera changes (float64, C order).

    ``means`` ``(N, 3)`` world metres; ``rot_scale`` ``(N, 3, 3)`` ``R(q) diag(s)``; ``log_o`` ``(N,)`` log
    opacity; ``colors`` ``(N, 3)`` view-independent colours (plain RGB inputs, or SH without higher bands:
    the degree-0 colour, exactly what the SH evaluation gives there), else ``None`` and ``sh`` ``(N, K, 3)``;
    ``dtype`` the inputs' torch dtype (that of the outputs)."""

    means: np.ndarray
    rot_scale: np.ndarray
    log_o: np.ndarray
    colors: np.ndarray | None
    sh: np.ndarray | None
    dtype: torch.dtype

    def __len__(self) -> int:
        return self.means.shape[0]


def prepare(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
) -> Prepared:
    """The camera-independent arrays of CPU Gaussians (inputs as :func:`rasterize_numba`)."""
    if numba is None:
        raise ImportError("rasterize_numba needs numba (pip install numba)")

    def f64(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float64)

    with _LOCK:
        rot_scale = _rot_scale(
            np.ascontiguousarray(quats.detach().numpy()), np.ascontiguousarray(scales.detach().numpy())
        )
    log_o = np.log(np.maximum(f64(opacities), 1e-30))
    col, sh = None, None
    if colors.dim() == 3:
        sh = f64(colors)
        if not np.any(sh[:, 1:]):
            # every higher band is zero: the SH evaluation adds exact zeros to 0 + C0 * dc, so this is it
            col = np.maximum((0.0 + _SH_C0 * sh[:, 0]) + 0.5, 0.0)
            sh = None
    else:
        col = f64(colors)
    return Prepared(f64(means), rot_scale, log_o, col, sh, means.dtype)


def render_prepared(
    g: Prepared,
    features: torch.Tensor | None,
    sh_degree: int | None,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    ts: int,
    eps2d: float,
) -> dict[str, torch.Tensor]:
    """Render one camera of prepared Gaussians; arguments and outputs as :func:`rasterize_numba`."""
    from simgen.render import rasterize as R  # the rule constants are read per call (tests patch them)
    from simgen.render.rasterize import _fov_limits

    vm = np.asarray(viewmat.detach().cpu().numpy(), dtype=np.float64)
    Km = np.asarray(K.detach().cpu().numpy(), dtype=np.float64)
    lim_x, lim_y = _fov_limits(Km, width, height)
    n_tx, n_ty = math.ceil(width / ts), math.ceil(height / ts)
    n_feat = 0 if features is None else features.shape[1]
    cut = np.minimum(g.log_o - math.log(R.ALPHA_MIN), R.SIGMA_CUTOFF)
    with _LOCK:
        n_par = render_threads()
        numba.set_num_threads(n_par)
        means2d, depth, radii, cov, conic = _project(
            g.means, g.rot_scale, np.ascontiguousarray(vm[:3, :3]), np.ascontiguousarray(vm[:3, 3]),
            Km[0, 0], Km[1, 1], Km[0, 2], Km[1, 2], float(width), float(height), float(near), float(far),
            float(eps2d), np.array([*lim_x, *lim_y], dtype=np.float64),
        )  # fmt: skip
        vis = np.flatnonzero((radii > 0) & (cut > 0))
        order = vis[np.argsort(depth[vis], kind="stable")]  # front to back, ties by index
        colors = g.colors if g.colors is not None else np.empty((0, 3))
        u, v, half_h, log_o, cut_o, conic_o, cov_o, vals = _gather(
            order, means2d, conic, cov, cut, g.log_o, depth, colors, n_feat
        )
        if g.colors is None:
            max_deg = SH.sh_degree_from_bases(g.sh.shape[1])
            degree = max_deg if sh_degree is None else min(sh_degree, max_deg)
            campos = -vm[:3, :3].T @ vm[:3, 3]
            vals[:, :3] = _eval_sh(g.sh, g.means, order, campos, degree, n_par)
        if features is not None:
            vals[:, 3:-1] = features.detach().numpy()[order]
        start, items = _bin(u, v, conic_o, cov_o, cut_o, ts, n_tx, n_ty)
        img, alpha = _blend(
            start, items, u, v, conic_o, half_h, log_o, cut_o, vals,
            width, height, ts, n_tx, float(R.ALPHA_MAX), float(R.T_MIN), n_par,
        )  # fmt: skip
    img_t = torch.from_numpy(img).to(g.dtype)
    alpha_t = torch.from_numpy(alpha).to(g.dtype)
    return {
        "blended": img_t[..., :-1],
        "depth": img_t[..., -1] / torch.clamp_min(alpha_t, 1e-10),
        "alpha": alpha_t,
        "means2d": torch.from_numpy(means2d).to(g.dtype),
        "radii": torch.from_numpy(radii),
    }


def rasterize_numba(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    features: torch.Tensor | None,
    sh_degree: int | None,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    ts: int,
    eps2d: float,
    prepared: Prepared | None = None,
) -> dict[str, torch.Tensor]:
    """Render one camera on CPU with the compiled kernels (no gradients).

    Inputs as :func:`simgen.render.rasterize.rasterize` (CPU tensors; ``viewmat`` ``(4, 4)`` world-to-camera,
    OpenCV axes; ``K`` ``(3, 3)`` pixels); ``prepared`` :func:`prepare` of the same Gaussians, if the caller
    keeps it (then the Gaussian tensors are not read). Returns the dict the torch paths return: ``blended``
    ``(H, W, 3 + F)``, ``depth`` ``(H, W)`` camera z metres (alpha-normalised), ``alpha`` ``(H, W)``,
    ``means2d`` ``(N, 2)`` pixels and ``radii`` ``(N,)`` int64, all in the inputs' dtype.
    """
    if numba is None:
        raise ImportError("rasterize_numba needs numba (pip install numba)")
    if prepared is None:
        prepared = prepare(means, quats, scales, opacities, colors)
    return render_prepared(prepared, features, sh_degree, viewmat, K, width, height, near, far, ts, eps2d)
