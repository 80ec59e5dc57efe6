"""Collider convexity in metres (issue #18): our definition, the hulls the export writes, ``simgen check``.

The installed trimesh's ``is_convex`` (a tolerance relative to the mesh's size, changed between
releases) is used only to show that a case is the one of issue #18: a convex mesh it rejects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull

from simgen.export.check import _check_collider
from simgen.export.colliders import (
    CONVEX_TOL_M,
    convexity_excess,
    exact_convex_hull,
    is_closed,
    robust_convex_hull,
)


def scanned_box(seed: int, size: float, noise: float, n: int = 400) -> np.ndarray:
    """(n, 3) points on the sides of a ``size`` m cube with Gaussian noise, at room coordinates (the far
    the points are from the origin, the coarser float32 stores them)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-0.5, 0.5, (n, 3))
    side = rng.integers(0, 3, n)
    p[np.arange(n), side] = np.sign(p[np.arange(n), side]) * 0.5
    return p * size + rng.normal(0, noise, p.shape) + np.array([3.7, 2.9, 0.8])


def write_stl(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    trimesh.Trimesh(vertices, faces, process=False).export(path)
    return path


def outward_hull(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 qhull hull wound outward (what a writer that rounds only when saving would store)."""
    h = ConvexHull(points)
    f = h.simplices.copy()
    v = h.points
    flip = np.einsum(
        "ij,ij->i", np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), h.equations[:, :3]
    )
    f[flip < 0] = f[flip < 0][:, ::-1]
    return v, f


def test_float32_rounded_hull_that_trimesh_rejects_is_convex_to_the_tolerance(tmp_path):
    # An exactly convex float64 hull of a small scanned box at room coordinates, saved as float32 STL:
    # rounding moves vertices by ~1e-7 m, which trimesh 5 (tolerance 1e-5 of the 9 cm diagonal) rejects.
    v, f = outward_hull(scanned_box(seed=0, size=0.05, noise=1e-7))
    path = write_stl(tmp_path / "hull.stl", v, f)
    stored = trimesh.load(path, process=True)
    assert not stored.is_convex, "no longer the issue-18 case: the installed trimesh accepts it"
    v32 = v.astype(np.float32).astype(np.float64)
    assert 0 <= convexity_excess(v32, f) < 1e-6 < CONVEX_TOL_M
    assert _check_collider(path) is None


def test_old_merged_facet_hulls_fold_and_the_export_hull_does_not(tmp_path):
    # The export's hulls before the fix: qhull with C-1e-4 triangulates merged, not quite coplanar
    # facets, so the surface folds by tens of micrometres (trimesh rejects both these cases).
    pts = scanned_box(seed=0, size=0.6, noise=1e-5)
    folded = trimesh.convex.convex_hull(pts, qhull_options="QbB Pp Qt C-1e-4")
    fv = np.asarray(folded.vertices).astype(np.float32).astype(np.float64)
    assert 5e-5 < convexity_excess(fv, folded.faces) < 1e-3  # a real fold, measured in metres
    msg = _check_collider(write_stl(tmp_path / "old.stl", fv, folded.faces))
    assert msg is not None and "not convex" in msg and "m inside its convex hull" in msg
    # A small fold (2 um on a 5 cm box) is within the tolerance although trimesh rejects it.
    small = trimesh.convex.convex_hull(scanned_box(2, 0.05, 1e-6), qhull_options="QbB Pp Qt C-1e-4")
    sv = np.asarray(small.vertices).astype(np.float32).astype(np.float64)
    assert not trimesh.Trimesh(sv, small.faces).is_convex
    assert 1e-7 < convexity_excess(sv, small.faces) < CONVEX_TOL_M
    assert _check_collider(write_stl(tmp_path / "small.stl", sv, small.faces)) is None
    # What the export writes now: the exact hull of float32 coordinates, stored without loss.
    v, f = robust_convex_hull(pts)
    assert np.array_equal(v, v.astype(np.float32).astype(np.float64))
    assert is_closed(f) and convexity_excess(v, f) < 1e-12
    assert len(f) <= len(folded.faces) + 10  # the facet merging still keeps the hull small
    path = write_stl(tmp_path / "new.stl", v, f)
    assert _check_collider(path) is None
    back = trimesh.load(path, process=False)
    assert np.array_equal(np.unique(back.vertices, axis=0), np.unique(v, axis=0))  # nothing rounded


def dented_cube(depth: float) -> tuple[np.ndarray, np.ndarray]:
    """A 20 cm cube, its top subdivided, the top's centre vertex pushed ``depth`` m in (< 0: out)."""
    m = trimesh.creation.box([0.2, 0.2, 0.2]).subdivide().subdivide()
    m.merge_vertices()
    v = np.asarray(m.vertices).copy()
    top = np.flatnonzero(np.isclose(v[:, 2], 0.1) & (np.abs(v[:, :2]).max(1) < 1e-9))
    assert len(top) == 1
    v[top[0], 2] -= depth
    return v, np.asarray(m.faces)


def test_a_1mm_dent_is_not_convex_and_is_measured(tmp_path):
    v, f = dented_cube(0.001)
    assert is_closed(f)
    assert convexity_excess(v, f) == pytest.approx(0.001, rel=1e-6)
    msg = _check_collider(write_stl(tmp_path / "dent.stl", v, f))
    assert msg is not None and "not convex" in msg and "0.001 m" in msg
    v, f = dented_cube(0.0)
    assert convexity_excess(v, f) < 1e-12 and _check_collider(write_stl(tmp_path / "cube.stl", v, f)) is None


def test_a_fold_between_corners_on_the_hull_is_caught():
    # All vertices on the hull, but one square's diagonal flipped the wrong way: the fold lies between
    # vertices, so only the depth inside the faces (the linear program) finds it.
    v = np.array(
        [
            [0, 0, 0],
            [1, 0, 0],
            [1, 1, 0],
            [0, 1, 0],
            [0.5, 0.5, -0.5],
            [0, 0, 1],
            [1, 0, 1],
            [1, 1, 1.02],
            [0, 1, 1],
        ],
        float,
    )
    hull_v, hull_f = exact_convex_hull(v)
    assert convexity_excess(hull_v, hull_f) < 1e-12
    # Replace the top's two triangles by the other diagonal's: the surface cuts under the ridge.
    top = [i for i, tri in enumerate(hull_f) if (hull_v[tri, 2] > 0.9).all()]
    assert len(top) == 2
    corners = np.unique(hull_f[top])
    quad = corners[np.argsort(np.arctan2(hull_v[corners, 1] - 0.5, hull_v[corners, 0] - 0.5))]
    a, b, c, d = quad  # counter-clockwise seen from above
    present = {frozenset(e) for t in hull_f[top] for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    new = [[a, b, c], [a, c, d]] if frozenset((a, c)) not in present else [[b, c, d], [b, d, a]]
    folded = np.concatenate([np.delete(hull_f, top, axis=0), new])
    assert is_closed(folded)
    # The hull's top rises to 1.01 m over the centre along the right diagonal; the wrong one stays at 1 m.
    assert convexity_excess(hull_v, folded) == pytest.approx(0.01 / np.sqrt(1 + 0.02**2), rel=1e-4)


def test_inside_out_open_and_flat_meshes():
    v, f = exact_convex_hull(trimesh.creation.icosphere(1).vertices)
    assert is_closed(f) and convexity_excess(v, f) < 1e-12
    assert convexity_excess(v, f[:, ::-1]) > 0.1  # wound inward: lacks twice its volume
    assert not is_closed(f[1:])  # a hole
    assert not is_closed(np.concatenate([f, f[:1]]))  # an edge in three faces
    flat = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])
    assert convexity_excess(flat, np.array([[0, 1, 2], [1, 3, 2], [0, 2, 1], [1, 2, 3]])) == float("inf")


def test_exact_hull_of_flat_and_collinear_points_is_closed():
    # A box face full of collinear and coplanar points (a marching-cubes grid): qhull merges coplanar
    # facets and triangulates them, possibly with zero-area triangles, which must still be wound right.
    g = np.linspace(0, 0.3, 7)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([x, y, z], -1).reshape(-1, 3)
    v, f = exact_convex_hull(pts)
    assert is_closed(f) and convexity_excess(v, f) < 1e-12
    assert trimesh.Trimesh(v, f).volume == pytest.approx(0.027, rel=1e-6)  # 0.05 m steps in float32
    v, f = robust_convex_hull(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]]), min_thickness=0.02)
    assert is_closed(f) and convexity_excess(v, f) < 1e-12
