"""A compiled CPU z-buffer for the mesh outputs: the ray caster's first hits without tracing rays.

:class:`ZBufferCaster` has :class:`simgen.render.caster.FastCaster`'s ``render(K, c2w_cv, outputs)``
contract and hands the same per-pixel record to the same compiled shading kernel: the face hit (-1 on a
miss), the barycentrics ``(u, v)`` of corners B and C (embree's convention,
``P = (1 - u - v) A + u B + v C``) and the distance ``t`` along the unit ray, so depth, panoptic ids, RGB,
the segments in view and :data:`simgen.render.caster.FACE` follow the ray caster's rules exactly.

Why a z-buffer: the server's frames ask for one ray per pixel from one centre, which embree answers with a
BVH walk per ray (only ``rtcIntersect1`` is exposed by embreex); projecting each face once and scanning
the pixels it covers does the same work without the walk.

How (all float64, one thread per call -- the server already renders in parallel across its worker
processes, so no ``prange`` here and :func:`simgen.render.rasterize_numba.set_render_threads` does not
apply -- :func:`_zbuffer`):

* vertices go to the OpenCV camera frame once, each with an out-code against the four side planes of the
  view frustum (planes through the eye, so the test holds for points behind the camera too) and a tiny
  near plane :data:`NEAR`, and its pixel position when in front of it; a face with every corner outside
  one plane cannot be seen and is skipped, and so is one whose screen rectangle holds no pixel centre (most
  faces of a fine mesh at a low resolution) before any per-face set-up;
* a pixel's ray ``r = ((x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy, 1)`` goes through face ABC iff the three
  triple products ``(B x C).r, (C x A).r, (A x B).r`` share a sign, and meets its plane at camera
  ``z = det[A, B, C] / (N.r)`` (``N`` the face normal, the sum of the three cross products). This test
  needs no clipping, so faces crossing the camera plane or lying behind it are handled as they are; the
  near plane only bounds the scanned pixel rectangle (from the corners clipped to ``z >= NEAR``);
* no back-face culling (embree hits both sides); the depth test keeps the largest ``1 / z`` (linear in
  the pixel's ray, so no division per covered pixel);
* the winner's record comes from the same triple products: ``u = (C x A).r / N.r``,
  ``v = (A x B).r / N.r`` (kept with the depth on each win, so no second look at the face's corners, which
  on a 400 k-face mesh is a cache miss per pixel), ``t = z |r|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh
from simgen.render.caster import _KERNELS, OUTPUTS, FaceTables

try:
    import numba

    _njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    _njit = None

# Metres: bounds the pixel rectangle of a face crossing the camera plane. The ray caster has no near plane,
# so only faces closer than this (0.01 mm) to the eye differ; a larger value would drop near surfaces.
NEAR = 1e-5


def numba_available() -> bool:
    """True when numba imports, i.e. the zbuffer backend can run here."""
    return numba is not None and _KERNELS is not None


class ZBufferCaster(FaceTables):
    """Depth, panoptic ids and vertex-colour RGB of a :class:`PanopticMesh` by a compiled z-buffer on the
    CPU, pixel for pixel what :class:`simgen.render.caster.FastCaster` gives (up to ties on shared edges
    and float rounding; tests/test_render_zbuffer.py holds them together).

    Args:
        mesh: panoptic mesh in the served world frame (vertices ``(V, 3)`` metres, faces ``(F, 3)``).

    Raises:
        RuntimeError: numba is not installed (the backend has no numpy path: its loops over faces and
            pixels only make sense compiled; ``raycast`` is the fallback).
    """

    def __init__(self, mesh: PanopticMesh):
        if not numba_available():
            raise RuntimeError("the zbuffer mesh backend needs numba (pip install numba); use raycast")
        super().__init__(mesh)
        # float32 corners as embree gets them, so both backends see the same surface
        self.vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(mesh.faces, dtype=np.int32)
        self._pix: tuple[Intrinsics, np.ndarray, np.ndarray] | None = None

    def _pixel_rays(self, K: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        """Ray x per column ``(W,)`` and ray y per row ``(H,)``, float64, of the camera-frame pixel rays
        ``((x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy, 1)``."""
        cached = self._pix  # one read: request threads may swap the cache for another camera meanwhile
        if cached is None or cached[0] != K:
            cached = (K, (np.arange(K.width) + 0.5 - K.cx) / K.fx, (np.arange(K.height) + 0.5 - K.cy) / K.fy)
            self._pix = cached
        return cached[1], cached[2]

    def hits(
        self, K: Intrinsics, c2w_cv: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First hits per pixel, ``(H*W,)`` row-major: face ``int32`` (-1 on a miss), ``u, v`` ``float32``
        barycentrics of corners B and C, ``t`` ``float32`` metres along the unit ray from the camera centre
        (0 on a miss), for camera-to-world ``c2w_cv`` ``(4, 4)`` (OpenCV axes, world frame)."""
        c2w = np.asarray(c2w_cv, dtype=np.float64)
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise ValueError(f"c2w_cv must be a finite (4, 4) matrix, got shape {c2w.shape}")
        if not (K.fx > 0 and K.fy > 0 and np.isfinite([K.fx, K.fy, K.cx, K.cy]).all()):
            raise ValueError(f"intrinsics: fx, fy must be finite and > 0, cx, cy finite, got {K}")
        if K.width < 1 or K.height < 1:
            raise ValueError(f"intrinsics: width and height must be >= 1, got {K.width} x {K.height}")
        px, py = self._pixel_rays(K)
        return _zbuffer(
            self.vertices,
            self.faces,
            np.ascontiguousarray(c2w[:3, :3]),
            np.ascontiguousarray(c2w[:3, 3]),
            px,
            py,
            float(K.fx),
            float(K.fy),
            float(K.cx),
            float(K.cy),
            NEAR,
        )

    def render(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, Any]:
        """``depth`` ``(H, W) float32`` camera z in metres (0 = no hit), ``panoptic`` ``(H, W) int32`` segment
        ids with ``segment_ids`` (sorted distinct ids in view), ``rgb`` ``(H, W, 3) uint8`` and, when asked,
        :data:`simgen.render.caster.FACE` ``(H, W) int32``; only the outputs asked for."""
        prim, u, v, t = self.hits(K, c2w_cv)
        _, z_cam = self._camera_dirs(K)
        return self._shade_hits(K, prim, u, v, t, z_cam, outputs)


def _zbuffer_py(verts, faces, R, c, px, py, fx, fy, cx, cy, near):
    """The z-buffer pass (see the module docstring). ``verts`` ``(V, 3)`` float32 world, ``faces`` ``(F, 3)``
    int32, ``R`` ``(3, 3)`` / ``c`` ``(3,)`` float64 camera-to-world rotation and centre, ``px`` ``(W,)`` /
    ``py`` ``(H,)`` float64 pixel ray coordinates. Returns ``(face int32, u, v, t float32)``, each
    ``(H*W,)``."""
    W, H = px.shape[0], py.shape[0]
    nv = verts.shape[0]
    # Camera frame and out-codes: bit 1/2 left/right of the image, 4/8 above/below it, 16 nearer than near.
    # The side planes pass through the eye (u = 0 <=> fx x + cx z = 0), so the half-space tests are valid
    # for corners behind the camera as well, and a face with all corners out of one is out of view.
    cam = np.empty((nv, 3))
    code = np.empty(nv, np.uint8)
    pu = np.empty(nv)  # projected column / row of corners at z >= near, computed once per vertex
    pv = np.empty(nv)
    for i in range(nv):
        dx, dy, dz = verts[i, 0] - c[0], verts[i, 1] - c[1], verts[i, 2] - c[2]
        x = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        y = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        z = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
        cam[i, 0], cam[i, 1], cam[i, 2] = x, y, z
        if z >= near:
            # pixel-index space: centre of column j sits at j (x + 0.5 = fx x / z + cx)
            iz = 1.0 / z
            pu[i] = fx * x * iz + cx - 0.5
            pv[i] = fy * y * iz + cy - 0.5
        k = 0
        if fx * x + cx * z < 0.0:
            k |= 1
        if fx * x + (cx - W) * z > 0.0:
            k |= 2
        if fy * y + cy * z < 0.0:
            k |= 4
        if fy * y + (cy - H) * z > 0.0:
            k |= 8
        if z < near:
            k |= 16
        code[i] = k
    inv_z = np.zeros(H * W)  # 1 / z of the nearest face so far; 0 = nothing (every hit has 1 / z > 0)
    face = np.full(H * W, -1, np.int32)
    wb = np.empty(H * W)
    wc = np.empty(H * W)
    for f in range(faces.shape[0]):
        ia, ib, ic = faces[f, 0], faces[f, 1], faces[f, 2]
        if code[ia] & code[ib] & code[ic]:
            continue
        ax, ay, az = cam[ia, 0], cam[ia, 1], cam[ia, 2]
        bx, by, bz = cam[ib, 0], cam[ib, 1], cam[ib, 2]
        cx_, cy_, cz_ = cam[ic, 0], cam[ic, 1], cam[ic, 2]
        # The rectangle of pixel centres first: most faces of a fine mesh hold none, and then need no more.
        if (code[ia] | code[ib] | code[ic]) & 16:
            # Clip the outline to z >= near (one plane, at most 4 corners) only to bound the rectangle.
            umin, umax, vmin, vmax = np.inf, -np.inf, np.inf, -np.inf
            for k in range(3):
                if k == 0:
                    p0x, p0y, p0z, p1x, p1y, p1z = ax, ay, az, bx, by, bz
                elif k == 1:
                    p0x, p0y, p0z, p1x, p1y, p1z = bx, by, bz, cx_, cy_, cz_
                else:
                    p0x, p0y, p0z, p1x, p1y, p1z = cx_, cy_, cz_, ax, ay, az
                if p0z >= near:
                    qu, qv = p0x / p0z, p0y / p0z
                    umin, umax, vmin, vmax = min(umin, qu), max(umax, qu), min(vmin, qv), max(vmax, qv)
                if (p0z >= near) != (p1z >= near):
                    s = (near - p0z) / (p1z - p0z)
                    qu = (p0x + s * (p1x - p0x)) / near
                    qv = (p0y + s * (p1y - p0y)) / near
                    umin, umax, vmin, vmax = min(umin, qu), max(umax, qu), min(vmin, qv), max(vmax, qv)
            umin, umax = umin * fx + cx - 0.5, umax * fx + cx - 0.5
            vmin, vmax = vmin * fy + cy - 0.5, vmax * fy + cy - 0.5
        else:
            umin, umax = min(pu[ia], pu[ib], pu[ic]), max(pu[ia], pu[ib], pu[ic])
            vmin, vmax = min(pv[ia], pv[ib], pv[ic]), max(pv[ia], pv[ib], pv[ic])
        # A hair wider, so rounding of the projection never drops a centre the triple products accept;
        # clamped as floats first (a corner clipped at z = near projects far outside).
        x0 = max(int(np.ceil(min(max(umin, -1.0), W) - 1e-6)), 0)
        x1 = min(int(np.floor(min(max(umax, -1.0), W) + 1e-6)), W - 1)
        if x0 > x1:
            continue
        y0 = max(int(np.ceil(min(max(vmin, -1.0), H) - 1e-6)), 0)
        y1 = min(int(np.floor(min(max(vmax, -1.0), H) + 1e-6)), H - 1)
        if y0 > y1:
            continue
        # e0 = (B x C).r, e1 = (C x A).r, e2 = (A x B).r
        e0x, e0y, e0z = by * cz_ - bz * cy_, bz * cx_ - bx * cz_, bx * cy_ - by * cx_
        e1x, e1y, e1z = cy_ * az - cz_ * ay, cz_ * ax - cx_ * az, cx_ * ay - cy_ * ax
        e2x, e2y, e2z = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
        det = ax * e0x + ay * e0y + az * e0z
        if det == 0.0:
            continue  # the face's plane passes through the eye: seen edge-on, no area to hit
        inv_det = 1.0 / det  # scaling by it makes every hit a point where all three are >= 0 (det's sign)
        e0x, e0y, e0z = e0x * inv_det, e0y * inv_det, e0z * inv_det
        e1x, e1y, e1z = e1x * inv_det, e1y * inv_det, e1z * inv_det
        e2x, e2y, e2z = e2x * inv_det, e2y * inv_det, e2z * inv_det
        # now e0 + e1 + e2 = N.r / det = 1 / z at the ray's crossing with the plane
        for y in range(y0, y1 + 1):
            ry = py[y]
            b0, b1, b2 = e0y * ry + e0z, e1y * ry + e1z, e2y * ry + e2z
            row = y * W
            for x in range(x0, x1 + 1):
                rx = px[x]
                w0 = e0x * rx + b0
                w1 = e1x * rx + b1
                w2 = e2x * rx + b2
                iz = w0 + w1 + w2
                # one branch instead of four: small faces make every test a coin flip for the predictor
                if (w0 >= 0.0) & (w1 >= 0.0) & (w2 >= 0.0) & (iz > inv_z[row + x]):
                    inv_z[row + x] = iz
                    face[row + x] = f
                    # B's and C's weights times 1 / z, so the winner's record needs no second look at its face
                    wb[row + x] = w1
                    wc[row + x] = w2
    u = np.zeros(H * W, np.float32)
    v = np.zeros(H * W, np.float32)
    t = np.zeros(H * W, np.float32)
    for y in range(H):
        ry = py[y]
        for x in range(W):
            i = y * W + x
            if face[i] >= 0:
                rx = px[x]
                z = 1.0 / inv_z[i]
                u[i] = wb[i] * z
                v[i] = wc[i] * z
                t[i] = np.sqrt(rx * rx + ry * ry + 1.0) * z
    return face, u, v, t


if numba is not None:
    _zbuffer = _njit(_zbuffer_py)
else:  # pragma: no cover - ZBufferCaster refuses to build without numba
    _zbuffer = _zbuffer_py
