"""Gravity and floor alignment: find the floor plane and map the scene so the floor is z = 0, z up.

The transform is stored as ``alignment.json`` in the export (``world_from_scene`` and its inverse, 4x4
row-major, metres) so images and poses of the scene can be mapped into the exported world and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class AlignmentError(ValueError):
    """No floor class and no ``up`` vector: the up axis cannot be estimated."""


@dataclass
class Alignment:
    world_from_scene: np.ndarray  # (4, 4) float64, rigid: x_world = R @ x_scene + t
    up_scene: np.ndarray  # (3,) float64 unit up vector in the scene frame
    floor_offset: float  # plane in the scene frame: dot(up_scene, x) = floor_offset
    method: str  # "ransac-floor" or "up-vector"
    inlier_rms: float  # RMS distance (m) of floor inliers to the plane (0 for "up-vector")
    inlier_fraction: float

    @property
    def scene_from_world(self) -> np.ndarray:
        return invert_rigid(self.world_from_scene)

    def to_json(self) -> dict:
        return {
            "world_from_scene": self.world_from_scene.tolist(),
            "scene_from_world": self.scene_from_world.tolist(),
            "up_scene": self.up_scene.tolist(),
            "floor_plane_scene": {"normal": self.up_scene.tolist(), "offset": self.floor_offset},
            "method": self.method,
            "floor_inlier_rms_m": self.inlier_rms,
            "floor_inlier_fraction": self.inlier_fraction,
            "convention": "x_world = world_from_scene @ [x_scene, 1]; world: metres, z up, floor at z = 0",
        }


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform."""
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (N, 3) points; returns (N, 3) float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def rotation_to_z(n: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking unit vector ``n`` to +z (keeps heading as far as possible)."""
    n = n / np.linalg.norm(n)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(n, z)
    c = float(n @ z)
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = v / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.arctan2(s, c)
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def ransac_plane(
    points: np.ndarray, threshold: float = 0.02, iterations: int = 500, seed: int = 0
) -> tuple[np.ndarray, float, np.ndarray]:
    """Fit a plane to (N, 3) points with RANSAC, then refine it by least squares on the inliers.

    Written here because the libraries that have it (Open3D) are heavy, and scikit-image's generic RANSAC
    has no plane model; this is a few vectorised lines. Returns (unit normal (3,), offset d with
    n . x = d, inlier mask (N,) bool).
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        raise AlignmentError(f"only {len(pts)} floor vertices: cannot fit a floor plane")
    rng = np.random.default_rng(seed)
    sample = pts if len(pts) <= 20_000 else pts[rng.choice(len(pts), 20_000, replace=False)]
    idx = rng.integers(0, len(sample), size=(iterations, 3))
    a, b, c = sample[idx[:, 0]], sample[idx[:, 1]], sample[idx[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    if not ok.any():
        raise AlignmentError("floor vertices are collinear: cannot fit a floor plane")
    normals = normals[ok] / norms[ok, None]
    offsets = np.einsum("ij,ij->i", normals, a[ok])
    # Score every hypothesis at once: (H, S) distances.
    counts = (np.abs(sample @ normals.T - offsets) < threshold).sum(0)
    best = int(counts.argmax())
    n, d = normals[best], offsets[best]
    for _ in range(3):  # refit on inliers of the full set (total least squares via SVD)
        inl = np.abs(pts @ n - d) < threshold
        if inl.sum() < 3:
            break
        centre = pts[inl].mean(0)
        _, _, vt = np.linalg.svd(pts[inl] - centre, full_matrices=False)
        n_new = vt[2] * np.sign(vt[2] @ n or 1.0)
        n, d = n_new, float(n_new @ centre)
    inl = np.abs(pts @ n - d) < threshold
    return n, float(d), inl


def _top_surface(heights: np.ndarray, d: float, threshold: float) -> float:
    """The highest plane offset parallel to the fitted floor that holds at least half as many floor points
    as the best one: a floor modelled as a slab has a top and a bottom, and things stand on the top.

    heights: (P,) floor points along the up normal; d: the fitted offset. Returns the chosen offset.
    """
    h = np.sort(heights)
    cand = np.unique(np.round(h / (threshold / 2)) * (threshold / 2))
    counts = np.searchsorted(h, cand + threshold) - np.searchsorted(h, cand - threshold)
    best = (np.abs(h - d) < threshold).sum()
    ok = cand[(counts >= 0.5 * best) & (cand > d + threshold)]
    if len(ok) == 0:
        return d
    top = float(ok.max())
    near = np.abs(heights - top) < threshold
    return float(heights[near].mean())


def estimate_alignment(
    vertices: np.ndarray,
    floor_mask: np.ndarray,
    up: np.ndarray | None = None,
    threshold: float = 0.02,
    seed: int = 0,
    floor_points: np.ndarray | None = None,
) -> Alignment:
    """Estimate world_from_scene so the floor lies on z = 0 with +z up.

    Args:
        vertices: (V, 3) scene-frame vertices (metres).
        floor_mask: (V,) bool, vertices labelled with a floor class (may be all False).
        up: optional (3,) up vector in the scene frame. With a floor it only picks the normal's sign;
            without one, the floor is put at the 1st percentile of heights along ``up``.
        floor_points: optional (P, 3) points on the floor surface (e.g. sampled by face area) used for the
            plane fit instead of the floor vertices: a coarse floor (a slab of 8 corners) has as many
            vertices on its sides as on its top, but far less area.
    Raises:
        AlignmentError: no floor vertices and no ``up``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    floor_mask = np.asarray(floor_mask, dtype=bool)
    if up is not None:
        up = np.asarray(up, dtype=np.float64).reshape(3)
        if not np.isfinite(up).all() or np.linalg.norm(up) < 1e-9:
            raise AlignmentError(f"--up {up.tolist()} is not a usable direction")
        up = up / np.linalg.norm(up)
    if floor_mask.sum() >= 3:
        fpts = vertices[floor_mask] if floor_points is None else np.asarray(floor_points, np.float64)
        n, d, inl = ransac_plane(fpts, threshold=threshold, seed=seed)
        if up is not None:
            sign = np.sign(n @ up) or 1.0
        else:
            # Furniture and walls stand on the floor: most of the rest of the scene lies above it.
            heights = vertices[~floor_mask] @ n - d
            sign = 1.0 if (heights > threshold).sum() >= (heights < -threshold).sum() else -1.0
        n, d = n * sign, d * sign
        d = _top_surface(fpts @ n, d, threshold)
        inl = np.abs(fpts @ n - d) < threshold
        res = fpts[inl] @ n - d
        method, rms, frac = "ransac-floor", float(np.sqrt(np.mean(res**2))), float(inl.mean())
    elif up is not None:
        n = up
        d = float(np.percentile(vertices @ n, 1.0)) if len(vertices) else 0.0
        method, rms, frac = "up-vector", 0.0, 0.0
    else:
        raise AlignmentError(
            "the build has no floor class (no category named 'floor' with vertices) and no --up was given: "
            "pass --up X Y Z (the scene's up direction) to export it"
        )
    R = rotation_to_z(n)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = [0.0, 0.0, -d]  # R @ n = z, so heights become n . x - d
    return Alignment(T, n, float(d), method, rms, frac)
