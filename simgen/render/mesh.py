"""Rendering a panoptic mesh at a camera: per-pixel labels, colour and depth.

Shared by evaluation and the render server. The geometry comes from the project's one ray caster
(:class:`simgen.render.raycast.MeshRaycaster`, built on ``mesh.to_trimesh()`` so face indices match);
this module only turns its hits into images:

* labels: each pixel takes the ``semantic`` / ``instance`` of the hit triangle's corner nearest to
  the hit point (labels are per vertex and must not be blended);
* colour: the vertex colours interpolated with the hit point's barycentric coordinates.

Pixels whose ray hits nothing get semantic -1, instance 0, depth 0 and colour 0.
"""

from __future__ import annotations

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh


def _hit_corners(mesh: PanopticMesh, hits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid mask ``(H, W)``, corner vertex ids ``(n, 3)`` and corner positions ``(n, 3, 3)`` of the hits."""
    face = np.asarray(hits.face)
    valid = face >= 0
    corner_ids = mesh.faces[face[valid]].astype(np.int64)
    return valid, corner_ids, mesh.vertices[corner_ids].astype(np.float64)


def labels_at_hits(mesh: PanopticMesh, hits) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel labels of ray hits on ``mesh``.

    Args:
        mesh: the panoptic mesh the hits were cast against (same vertex and face order).
        hits: a :class:`simgen.render.raycast.RayHits` (``face (H, W) int64``, -1 = miss;
            ``points (H, W, 3)`` world hit points).

    Returns:
        semantic ``(H, W) int32`` (-1 = no hit or unknown) and instance ``(H, W) int32`` (0 = none).
    """
    valid, corner_ids, corners = _hit_corners(mesh, hits)
    pts = np.asarray(hits.points, np.float64)[valid]
    nearest = corner_ids[
        np.arange(len(pts)), np.argmin(np.linalg.norm(corners - pts[:, None], axis=2), axis=1)
    ]
    semantic = np.full(valid.shape, -1, np.int32)
    instance = np.zeros(valid.shape, np.int32)
    semantic[valid] = mesh.semantic[nearest]
    instance[valid] = mesh.instance[nearest]
    return semantic, instance


def colors_at_hits(mesh: PanopticMesh, hits) -> np.ndarray:
    """``(H, W, 3) uint8`` vertex colours interpolated at the hit points (barycentric), 0 where no hit."""
    valid, corner_ids, corners = _hit_corners(mesh, hits)
    pts = np.asarray(hits.points, np.float64)[valid]
    # Barycentric coordinates from the sub-triangle areas (cross products), robust for any triangle
    # the ray caster reports as hit; degenerate triangles fall back to equal weights.
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    n = np.cross(b - a, c - a)
    nn = np.einsum("ij,ij->i", n, n)
    w_a = np.einsum("ij,ij->i", np.cross(c - b, pts - b), n)
    w_b = np.einsum("ij,ij->i", np.cross(a - c, pts - c), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        bary = np.stack([w_a / nn, w_b / nn], axis=1)
    bary = np.clip(np.where(np.isfinite(bary), bary, 1 / 3), 0, 1)
    bary = np.concatenate([bary, np.clip(1 - bary.sum(1, keepdims=True), 0, 1)], axis=1)
    bary /= bary.sum(1, keepdims=True)
    cols = np.einsum("ij,ijk->ik", bary, mesh.colors[corner_ids].astype(np.float64))
    out = np.zeros(valid.shape + (3,), np.uint8)
    out[valid] = np.clip(np.round(cols), 0, 255).astype(np.uint8)
    return out


def render_panoptic(
    mesh: PanopticMesh, raycaster, K: Intrinsics, c2w_cv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render labels and depth of a panoptic mesh at one pinhole camera.

    Args:
        mesh: the panoptic mesh.
        raycaster: a :class:`simgen.render.raycast.MeshRaycaster` built on ``mesh.to_trimesh()``.
        K: intrinsics (output size ``K.height x K.width``).
        c2w_cv: ``(4, 4)`` camera-to-world, OpenCV camera axes.

    Returns:
        semantic ``(H, W) int32`` (-1 = no hit / unknown), instance ``(H, W) int32`` (0 = stuff / none)
        and depth ``(H, W) float32`` z-depth in metres (0 = no hit).
    """
    hits = raycaster.cast(K, c2w_cv)
    semantic, instance = labels_at_hits(mesh, hits)
    return semantic, instance, hits.depth
