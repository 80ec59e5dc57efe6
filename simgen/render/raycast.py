"""Mesh ray casting: the one renderer of exact depth / face ids / hit points in simgen.

Used by ``simgen synth`` (ground truth), evaluation and the render server. The BVH is built once
per mesh (embree through ``embreex`` when importable, trimesh's pure-python triangle intersector
otherwise, which is orders of magnitude slower).

Conventions: cameras are :class:`simgen.data.camera.Intrinsics` plus a ``(4, 4)`` camera-to-world
matrix with OpenCV axes (x right, y down, z forward); rays go through pixel centres
(:func:`simgen.data.camera.camera_directions`). Depth is z-depth (distance along the camera's optical
axis) in metres, not the distance along the ray.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import trimesh

from simgen.data.camera import Intrinsics, camera_directions


@dataclass
class RayHits:
    """First hits of one image's rays.

    Attributes:
        depth: ``(H, W) float32`` z-depth in metres, 0 where the ray hits nothing.
        face: ``(H, W) int64`` index of the hit triangle in ``mesh.faces``, -1 where nothing is hit.
        points: ``(H, W, 3) float32`` world hit points, NaN where nothing is hit.
        distance: ``(H, W) float32`` distance along the (unit) ray in metres, 0 where nothing is hit.
    """

    depth: np.ndarray
    face: np.ndarray
    points: np.ndarray
    distance: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(H, W) bool`` pixels whose ray hit the mesh."""
        return self.face >= 0


def _make_intersector(mesh: trimesh.Trimesh):
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh), True
    except ImportError:
        warnings.warn(
            "embreex is not importable: falling back to trimesh's pure-python ray intersector, "
            "which is much slower (pip install embreex)",
            RuntimeWarning,
            stacklevel=3,
        )
        from trimesh.ray.ray_triangle import RayMeshIntersector

        return RayMeshIntersector(mesh), False


class MeshRaycaster:
    """First-hit ray casting against a fixed triangle mesh.

    Args:
        mesh: the scene mesh; face indices in the results refer to ``mesh.faces`` (the mesh is not
            modified or re-processed, so vertex and face order are kept).
    """

    def __init__(self, mesh: trimesh.Trimesh):
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError("MeshRaycaster needs a non-empty trimesh.Trimesh")
        self.mesh = mesh
        self._intersector, self.uses_embree = _make_intersector(mesh)
        # Face planes n . x = c in float64 for the exact plane-line solve in intersect().
        self._normals = np.asarray(mesh.face_normals, dtype=np.float64)
        self._offsets = np.einsum(
            "ij,ij->i", self._normals, np.asarray(mesh.triangles[:, 0, :], dtype=np.float64)
        )
        self._dirs_cache: dict[Intrinsics, np.ndarray] = {}
        # Build the BVH now, not at the first cast, so timings of cast() are steady.
        self._intersector.intersects_first(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]))

    def _unit_directions(self, K: Intrinsics) -> np.ndarray:
        """``(H*W, 3)`` unit camera-frame (OpenCV) directions through pixel centres, row-major."""
        d = self._dirs_cache.get(K)
        if d is None:
            d = camera_directions(K).reshape(-1, 3)
            d = d / np.linalg.norm(d, axis=1, keepdims=True)
            self._dirs_cache = {K: d}  # one camera at a time is the common case; keep memory flat
        return d

    def intersect(
        self, origins: np.ndarray, directions: np.ndarray, normalized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """First hits of arbitrary rays.

        Args:
            origins: ``(N, 3)`` world ray origins.
            directions: ``(N, 3)`` world ray directions (normalised here unless ``normalized``).

        Returns:
            face ``(N,) int64`` (-1 = miss) and distance ``(N,) float64`` along the unit direction
            (``inf`` = miss).
        """
        origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        if not normalized:
            directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        face = np.asarray(self._intersector.intersects_first(origins, directions), dtype=np.int64)
        dist = np.full(len(face), np.inf)
        hit = face >= 0
        # embree works in float32 and trimesh's location path drops grazing rays; solving the
        # plane-line intersection of the hit face in float64 keeps every hit and its exact depth.
        fh = face[hit]
        n = self._normals[fh]
        denom = (n * directions[hit]).sum(axis=1)
        num = self._offsets[fh] - (n * origins[hit]).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / denom
        bad = ~np.isfinite(t) | (t < 0)
        t[bad] = 0.0  # a ray exactly in the face plane: the hit is at its origin's distance 0 (degenerate)
        dist[hit] = t
        return face, dist

    def cast(self, K: Intrinsics, c2w_cv: np.ndarray) -> RayHits:
        """Render one pinhole view.

        Args:
            K: intrinsics (image size ``K.height x K.width``).
            c2w_cv: ``(4, 4)`` camera-to-world, OpenCV camera axes.

        Returns:
            :class:`RayHits` with ``(H, W)`` arrays in row-major pixel order.
        """
        c2w_cv = np.asarray(c2w_cv, dtype=np.float64)
        if c2w_cv.shape != (4, 4):
            raise ValueError(f"c2w_cv must be 4x4, got shape {c2w_cv.shape}")
        H, W = K.height, K.width
        dirs_cam = self._unit_directions(K)
        # The rays of simgen.data.camera.pixel_rays (through pixel centres), with the per-K part cached.
        # Three axpy's instead of a (N, 3) @ (3, 3) matmul: threaded BLAS took ~80 ms per 320x240 frame
        # for this tiny product on a loaded 2-core machine, the column form under 1 ms.
        R = c2w_cv[:3, :3]
        dirs = dirs_cam[:, :1] * R[:, 0] + dirs_cam[:, 1:2] * R[:, 1] + dirs_cam[:, 2:3] * R[:, 2]
        origins = np.broadcast_to(c2w_cv[:3, 3], dirs.shape)
        face, dist = self.intersect(origins, dirs, normalized=True)
        hit = face >= 0
        depth = np.where(hit, dist * dirs_cam[:, 2], 0.0)  # z of a unit camera ray = cos to the axis
        points = np.full((len(face), 3), np.nan)
        points[hit] = origins[hit] + dirs[hit] * dist[hit, None]
        return RayHits(
            depth=depth.reshape(H, W).astype(np.float32),
            face=face.reshape(H, W),
            points=points.reshape(H, W, 3).astype(np.float32),
            distance=np.where(hit, dist, 0.0).reshape(H, W).astype(np.float32),
        )
