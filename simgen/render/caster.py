"""The fast mesh render path: depth, panoptic segment ids and vertex colours from embree's first hits.

Panoptic segment ids (the render server's image encoding): the instance id for things (> 0), ``STUFF_ID_OFFSET
+ category_id`` for pixels with a category but no instance (stuff, or an unassigned thing), 0 for void.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh

try:  # the compiled kernels below are optional: numpy does the same work without numba, slower
    import numba

    _njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    _njit = None

OUTPUTS = ("rgb", "depth", "panoptic")  # what a mesh render can give, in this order
# Also accepted by the mesh backends, never served: ``(H, W) int32`` index of the face hit (-1 on a miss),
# which tells the server which pixels show the export's completed stuff surfaces (appended faces).
FACE = "face"

STUFF_ID_OFFSET = 1_000_000  # segment id of a category-only region = STUFF_ID_OFFSET + category_id


class FaceTables:
    """Per-face shading tables of a panoptic mesh and the shading of first hits, shared by the casters that
    find the hits (:class:`FastCaster`: embree; :class:`simgen.render.zbuffer.ZBufferCaster`: a z-buffer).

    Per-face tables (corner positions as Gram forms, colours, segment ids) make every output one gather.
    Labels follow the same rule as :func:`simgen.render.mesh.labels_at_hits` (the hit triangle's corner
    nearest to the hit point).

    Args:
        mesh: panoptic mesh in the served world frame.
    """

    def __init__(self, mesh: PanopticMesh):
        faces = np.asarray(mesh.faces, dtype=np.int64)
        # Squared distance from a point with barycentrics (w0, w1, w2) to each corner, as quadratic forms of
        # the other two weights: |P - A|^2 = w1^2 |AB|^2 + w2^2 |AC|^2 + 2 w1 w2 AB.AC (and cyclically), so
        # the nearest corner needs 9 numbers per face instead of the hit point and 9 coordinates.
        a, b, c = (np.asarray(mesh.vertices, dtype=np.float64)[faces[:, k]] for k in range(3))

        def dot(x, y):
            return (x * y).sum(1)

        ab, ac, bc = b - a, c - a, c - b
        self.gram = np.stack(
            [
                dot(ab, ab),
                dot(ac, ac),
                dot(ab, ac),
                dot(ab, ab),
                dot(bc, bc),
                -dot(ab, bc),
                dot(ac, ac),
                dot(bc, bc),
                dot(ac, bc),
            ],
            1,
        ).astype(np.float32)  # (F, 9)
        self.colors = np.asarray(mesh.colors, dtype=np.float32)[faces]  # (F, 3, 3) corner colours
        self.segment = segment_ids(mesh.semantic, mesh.instance)[faces]  # (F, 3) corner segment ids
        # The same as indices into the sorted distinct ids, so the compiled pass can list the ids in view
        # with a flag per segment instead of a sort of every pixel (np.unique).
        self.segment_values, code = np.unique(self.segment, return_inverse=True)
        self.segment_code = code.reshape(self.segment.shape).astype(np.int32)
        self._dirs: tuple[Intrinsics, np.ndarray, np.ndarray] | None = None

    def _camera_dirs(self, K: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions ``(H*W, 3) float32`` in the OpenCV camera frame and their z (cos to the axis)."""
        cached = self._dirs  # one read: request threads may swap the cache for another camera meanwhile
        if cached is None or cached[0] != K:
            u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
            d = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1).reshape(-1, 3)
            d /= np.sqrt((d * d).sum(1, keepdims=True))
            d = d.astype(np.float32)
            cached = (K, d, d[:, 2].copy())
            self._dirs = cached  # one camera at a time keeps memory flat
        return cached[1], cached[2]

    def _shade_hits(
        self,
        K: Intrinsics,
        prim: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        tfar: np.ndarray,
        z_cam: np.ndarray,
        outputs: tuple[str, ...],
    ) -> dict[str, Any]:
        """The requested outputs from first hits, all ``(H*W,)`` in row-major pixel order: ``prim`` the face
        (-1 on a miss), ``u, v`` float32 barycentrics of corners B and C (embree's convention,
        ``P = (1 - u - v) A + u B + v C``), ``tfar`` float32 metres along the unit ray, ``z_cam`` float32
        the unit ray's camera z. Needs numba (the compiled :func:`_shade`)."""
        want = ("depth" in outputs, "panoptic" in outputs, "rgb" in outputs)
        depth, pan, rgb, seen = _KERNELS[1](
            prim, u, v, tfar, z_cam, self.gram, self.segment_values, self.segment_code, self.colors, *want
        )
        shape = (K.height, K.width)
        out: dict[str, Any] = {}
        if want[0]:
            out["depth"] = depth.reshape(shape)
        if want[1]:
            out["panoptic"] = pan.reshape(shape)
            out["segment_ids"] = self.segment_values[seen]  # sorted distinct ids of the hit pixels
        if want[2]:
            out["rgb"] = rgb.reshape(*shape, 3)
        if FACE in outputs:
            out[FACE] = prim.astype(np.int32).reshape(shape)
        return out


class FastCaster(FaceTables):
    """The server's render hot path: embree first hits with barycentric coordinates, float32 throughout.

    :class:`simgen.render.raycast.MeshRaycaster` re-solves every hit in float64 and
    :mod:`simgen.render.mesh` recomputes barycentrics from the hit point, which together cost ~4x the
    embree traversal itself at 320x240. Here embree's own ``u, v`` give the colour weights and the
    :class:`FaceTables` the labels; tests check the paths agree.

    Args:
        mesh: panoptic mesh in the served world frame.

    Raises:
        ImportError: embreex is not installed.
    """

    def __init__(self, mesh: PanopticMesh):
        from embreex import rtcore_scene
        from embreex.mesh_construction import TriangleMesh

        faces = np.asarray(mesh.faces, dtype=np.int64)
        v32 = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
        self._scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self._scene, vertices=v32, indices=faces.astype(np.int32))
        super().__init__(mesh)

    def render(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, Any]:
        """Like :meth:`RenderScene.render` without ``segments``: ``rgb``, ``depth``, ``panoptic`` arrays
        (and :data:`FACE` when asked).

        With numba, ray generation and everything after embree's traversal run as two compiled passes
        (:func:`_rays`, :func:`_shade`); profiling 640x480 depth + panoptic on a 418 k-face mesh, the numpy
        version spent as long on those (temporaries of (H*W, 9) gathers, stacks and argmins) as embree
        spent traversing. Both give the same images (tests hold them equal).
        """
        if _KERNELS is not None:
            return self._render_compiled(K, c2w_cv, outputs)
        return self._render_numpy(K, c2w_cv, outputs)

    def _render_compiled(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...]) -> dict[str, Any]:
        rays = _KERNELS[0]
        c2w = np.asarray(c2w_cv, dtype=np.float64)
        d_cam, z_cam = self._camera_dirs(K)
        origins, dirs = rays(d_cam, c2w[:3, :3].astype(np.float32), c2w[:3, 3].astype(np.float32))
        r = self._scene.run(origins, dirs, output=1)
        return self._shade_hits(K, r["primID"], r["u"], r["v"], r["tfar"], z_cam, outputs)

    def _render_numpy(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...]) -> dict[str, Any]:
        c2w = np.asarray(c2w_cv, dtype=np.float64)
        d_cam, z_cam = self._camera_dirs(K)
        # Rotate as three scaled columns: a (N, 3) @ (3, 3) matmul goes through multi-threaded BLAS, which
        # on a busy 2-core machine took 70+ ms here instead of under 1 ms.
        R = c2w[:3, :3].astype(np.float32)
        dirs = d_cam[:, :1] * R[:, 0] + d_cam[:, 1:2] * R[:, 1] + d_cam[:, 2:] * R[:, 2]
        origins = np.broadcast_to(c2w[:3, 3].astype(np.float32), dirs.shape)
        r = self._scene.run(np.ascontiguousarray(origins), dirs, output=1)
        prim = r["primID"]
        hit = np.flatnonzero(prim >= 0)
        f = prim[hit]
        t = r["tfar"][hit]
        shape = (K.height, K.width)
        out: dict[str, Any] = {}
        if "depth" in outputs:
            depth = np.zeros(K.height * K.width, np.float32)
            depth[hit] = t * z_cam[hit]
            out["depth"] = depth.reshape(shape)
        if "panoptic" in outputs or "rgb" in outputs:
            w1, w2 = r["u"][hit], r["v"][hit]  # embree: P = (1 - u - v) A + u B + v C
            w0 = 1 - w1 - w2
        if "panoptic" in outputs:
            g = self.gram[f]
            d2 = np.stack(
                [
                    w1 * w1 * g[:, 0] + w2 * w2 * g[:, 1] + 2 * w1 * w2 * g[:, 2],  # to A
                    w0 * w0 * g[:, 3] + w2 * w2 * g[:, 4] + 2 * w0 * w2 * g[:, 5],  # to B: BA, BC
                    w0 * w0 * g[:, 6] + w1 * w1 * g[:, 7] + 2 * w0 * w1 * g[:, 8],  # to C: CA, CB
                ],
                1,
            )
            pan = np.zeros(K.height * K.width, np.int32)
            pan[hit] = self.segment[f, d2.argmin(1)]
            out["panoptic"] = pan.reshape(shape)
        if "rgb" in outputs:
            col = self.colors[f]
            mixed = w0[:, None] * col[:, 0] + w1[:, None] * col[:, 1] + w2[:, None] * col[:, 2]
            rgb = np.zeros((K.height * K.width, 3), np.uint8)
            rgb[hit] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
            out["rgb"] = rgb.reshape(*shape, 3)
        if FACE in outputs:
            out[FACE] = np.where(prim >= 0, prim, -1).astype(np.int32).reshape(shape)
        return out


def _rays_py(d_cam, R, t):
    """Ray origins and directions ``(H*W, 3) float32`` in the world: ``R`` ``(3, 3)`` float32 rotates the
    camera-frame unit directions ``d_cam`` ``(H*W, 3)``, every origin is the camera centre ``t`` ``(3,)``."""
    n = d_cam.shape[0]
    origins = np.empty((n, 3), np.float32)
    dirs = np.empty((n, 3), np.float32)
    for i in range(n):
        x, y, z = d_cam[i, 0], d_cam[i, 1], d_cam[i, 2]
        for k in range(3):
            dirs[i, k] = R[k, 0] * x + R[k, 1] * y + R[k, 2] * z
            origins[i, k] = t[k]
    return origins, dirs


def _shade_py(prim, u, v, tfar, z_cam, gram, seg_values, seg_code, colors, want_depth, want_pan, want_rgb):
    """Per pixel from embree's first hit (``prim`` face or -1, barycentrics ``u, v``, ray distance ``tfar``):
    z-depth ``float32`` (``tfar * z_cam``), the segment id of the hit triangle's corner nearest to the hit
    point (``int32``, 0 on a miss; ``seg_values[seg_code[face, corner]]``) and the barycentric vertex colour
    (``uint8`` RGB) -- the rules of :meth:`FastCaster._render_numpy` -- plus ``seen`` ``(len(seg_values),)``
    bool, the segments hit. Arrays not asked for come back empty."""
    n = prim.shape[0]
    one, two = np.float32(1.0), np.float32(2.0)  # float32 throughout, as the numpy path (same ties)
    depth = np.zeros(n if want_depth else 0, np.float32)
    pan = np.zeros(n if want_pan else 0, np.int32)
    rgb = np.zeros((n if want_rgb else 0, 3), np.uint8)
    seen = np.zeros(seg_values.shape[0], np.bool_)
    for i in range(n):
        f = prim[i]
        if f < 0:
            continue
        if want_depth:
            depth[i] = tfar[i] * z_cam[i]
        w1, w2 = u[i], v[i]
        w0 = one - w1 - w2
        if want_pan:
            g = gram[f]
            d0 = w1 * w1 * g[0] + w2 * w2 * g[1] + two * w1 * w2 * g[2]
            d1 = w0 * w0 * g[3] + w2 * w2 * g[4] + two * w0 * w2 * g[5]
            d2 = w0 * w0 * g[6] + w1 * w1 * g[7] + two * w0 * w1 * g[8]
            c = 0  # first minimum on ties, as numpy's argmin
            if d1 < d0:
                c = 1
            if d2 < (d1 if c == 1 else d0):
                c = 2
            code = seg_code[f, c]
            pan[i] = seg_values[code]
            seen[code] = True
        if want_rgb:
            for k in range(3):
                x = w0 * colors[f, 0, k] + w1 * colors[f, 1, k] + w2 * colors[f, 2, k]
                rgb[i, k] = min(max(np.rint(x), 0), 255)
    return depth, pan, rgb, seen


_KERNELS = None if numba is None else (_njit(_rays_py), _njit(_shade_py))


def segment_ids(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Per-element segment id ``int32``: instance id if > 0, else STUFF_ID_OFFSET + category, else 0."""
    semantic = np.asarray(semantic, dtype=np.int64)
    instance = np.asarray(instance, dtype=np.int64)
    out = np.where(instance > 0, instance, np.where(semantic >= 0, STUFF_ID_OFFSET + semantic, 0))
    return out.astype(np.int32)
