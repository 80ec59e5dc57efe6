"""MeshRaycaster against analytic depth of planes and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from simgen.data.camera import Intrinsics, backproject, camera_directions, look_at, opengl_to_opencv
from simgen.render import MeshRaycaster

K = Intrinsics(fx=60.0, fy=60.0, cx=40.0, cy=30.0, width=80, height=60)


def _plane_z(z: float, half: float = 50.0) -> trimesh.Trimesh:
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def test_fronto_parallel_plane_has_constant_depth():
    # Camera at the origin looking down -z (OpenCV z forward = world -z): plane z = -3 is at depth 3.
    c2w_cv = opengl_to_opencv(look_at([0, 0, 0], [0, 0, -1], up=[0, 1, 0]))
    hits = MeshRaycaster(_plane_z(-3.0)).cast(K, c2w_cv)
    assert hits.depth.shape == (60, 80) and hits.depth.dtype == np.float32
    assert hits.valid.all()
    np.testing.assert_allclose(hits.depth, 3.0, atol=1e-5)
    np.testing.assert_allclose(hits.points[..., 2], -3.0, atol=1e-5)
    # Distance along the ray is depth / cos(angle to the optical axis).
    d = camera_directions(K)
    np.testing.assert_allclose(hits.distance, 3.0 * np.linalg.norm(d, axis=-1), rtol=1e-5)


def test_tilted_plane_matches_analytic_depth():
    # Plane through (0, 0, -4) with normal n; ray t*d from the origin hits at t = (n.p0) / (n.d).
    n = np.array([0.3, -0.2, 1.0])
    n /= np.linalg.norm(n)
    R = trimesh.geometry.align_vectors([0, 0, 1], n)
    R[:3, 3] = [0, 0, -4.0]
    plane = _plane_z(0.0)
    plane.apply_transform(R)
    c2w_cv = opengl_to_opencv(look_at([0, 0, 0], [0, 0, -1], up=[0, 1, 0]))
    hits = MeshRaycaster(plane).cast(K, c2w_cv)
    dirs_world = camera_directions(K) @ c2w_cv[:3, :3].T  # z-depth 1 along the optical axis
    depth_expected = (n @ np.array([0, 0, -4.0])) / (dirs_world @ n)
    np.testing.assert_allclose(hits.depth, depth_expected, rtol=1e-6, atol=1e-6)
    # Back-projecting the depth lands on the plane.
    pts = backproject(hits.depth.astype(np.float64), K, c2w_cv)
    np.testing.assert_allclose((pts - [0, 0, -4.0]) @ n, 0.0, atol=1e-5)


def test_inside_box_depth_and_faces():
    # Camera at the centre of a 4 x 6 x 1.6 m box looking along +x: every ray hits the box from inside,
    # the wall x = 2 straight ahead is at z-depth 2.
    box = trimesh.creation.box(extents=[4.0, 6.0, 1.6])
    c2w_cv = opengl_to_opencv(look_at([0, 0, 0], [1, 0, 0]))
    hits = MeshRaycaster(box).cast(K, c2w_cv)
    assert hits.valid.all()
    on_front = np.abs(hits.points[..., 0] - 2.0) < 1e-5
    np.testing.assert_allclose(hits.depth[on_front], 2.0, atol=1e-5)
    # Rays that leave through the floor or ceiling (z = -0.8 / 0.8) instead have depth x of the hit.
    other = ~on_front
    assert other.any()
    np.testing.assert_allclose(np.abs(hits.points[other][:, 2]), 0.8, atol=1e-5)
    np.testing.assert_allclose(hits.depth[other], hits.points[other][:, 0], atol=1e-5)
    # The face index names a triangle whose plane holds the hit point.
    f = hits.face.ravel()
    p = hits.points.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(
        np.einsum("ij,ij->i", box.face_normals[f], p - box.triangles[f, 0]), 0, atol=1e-5
    )


def test_misses_are_marked():
    box = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    c2w_cv = opengl_to_opencv(look_at([0, -5, 0], [0, 0, 0]))
    hits = MeshRaycaster(box).cast(K, c2w_cv)
    miss = ~hits.valid
    assert miss.any() and hits.valid.any()
    assert (hits.face[miss] == -1).all() and (hits.depth[miss] == 0).all()
    assert np.isnan(hits.points[miss]).all()
    # The visible face y = -0.5 is 4.5 m in front of the camera.
    np.testing.assert_allclose(hits.depth[hits.valid], 4.5, atol=1e-5)
    # Its image is the projection of a 1 x 1 m square at 4.5 m: 60 / 4.5 * 1 = 13.3 px wide.
    cols = np.flatnonzero(hits.valid.any(axis=0))
    assert abs(len(cols) - 60.0 / 4.5) <= 1


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        MeshRaycaster(trimesh.Trimesh())
    rc = MeshRaycaster(_plane_z(-1.0))
    with pytest.raises(ValueError, match="4x4"):
        rc.cast(K, np.eye(3))
