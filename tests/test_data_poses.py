"""Pose conventions of the render server: round trips, known axes, validation, and depth re-projection."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from helpers.serve_scenes import K, make_build
from scipy.spatial.transform import Rotation

from simgen.data.camera import Intrinsics, backproject, look_at, opengl_to_opencv, project
from simgen.data.poses import (
    CONVENTIONS,
    PoseError,
    from_c2w_cv,
    matrix_to_pose,
    parse_pose,
    pose_from_c2w_cv,
    to_c2w_cv,
)
from simgen.serve.scene import load_render_scene

RNG = np.random.default_rng(7)


def random_c2w(n: int) -> np.ndarray:
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.random(n, random_state=3).as_matrix()
    T[:, :3, 3] = RNG.uniform(-5, 5, (n, 3))
    return T


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_round_trip_every_convention(convention):
    for c2w_cv in random_c2w(50):
        pose = pose_from_c2w_cv(c2w_cv, convention)
        np.testing.assert_allclose(parse_pose(pose, convention), c2w_cv, atol=1e-9)
        np.testing.assert_allclose(
            parse_pose({"matrix": from_c2w_cv(c2w_cv, convention).tolist()}, convention), c2w_cv, atol=1e-9
        )
        # Quaternion -> matrix -> quaternion gives the same numbers (qw >= 0 canonical sign).
        again = pose_from_c2w_cv(parse_pose(pose, convention), convention)
        assert again == pytest.approx(pose, abs=1e-9)


def test_conventions_agree_on_the_viewing_direction():
    """The same physical camera, posed in each convention, has the same OpenCV camera-to-world."""
    c2w_cv = opengl_to_opencv(look_at([1.0, 2.0, 1.5], [3.0, -1.0, 0.5]))
    forward = c2w_cv[:3, 2]
    for conv in CONVENTIONS:
        M = from_c2w_cv(c2w_cv, conv)
        axis = {"gazebo": M[:3, 0], "ros_optical": M[:3, 2], "opencv": M[:3, 2], "opengl": -M[:3, 2]}[conv]
        np.testing.assert_allclose(axis, forward, atol=1e-12)  # each convention's own forward axis
        np.testing.assert_allclose(to_c2w_cv(M, conv), c2w_cv, atol=1e-12)


def test_gazebo_identity_looks_along_world_x_with_z_up():
    c2w = parse_pose({"x": 1, "y": 2, "z": 3, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "gazebo")
    np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0])  # optical axis = link x
    np.testing.assert_allclose(c2w[:3, 0], [0, -1, 0])  # image right = link -y
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1])  # image down = link -z
    np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
    # A point 2 m ahead and 0.5 m to the left (+y) lands left of the image centre.
    uv, z = project(np.array([[3.0, 2.5, 3.0]]), K, c2w)
    assert z[0] == pytest.approx(2.0) and uv[0, 0] < K.cx and uv[0, 1] == pytest.approx(K.cy)
    # Yaw +90 deg about z: looking along +y.
    q = Rotation.from_euler("z", 90, degrees=True).as_quat()
    c2w = parse_pose(
        dict(zip(("x", "y", "z"), (0, 0, 0), strict=True))
        | dict(zip(("qx", "qy", "qz", "qw"), q, strict=True)),
        "gazebo",
    )
    np.testing.assert_allclose(c2w[:3, 2], [0, 1, 0], atol=1e-12)


def test_ros_optical_and_opengl_known_axes():
    ident = {"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1}
    np.testing.assert_allclose(parse_pose(ident, "ros_optical"), np.eye(4))
    np.testing.assert_allclose(parse_pose(ident, "opencv"), np.eye(4))
    np.testing.assert_allclose(parse_pose(ident, "opengl"), np.diag([1.0, -1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    ("pose", "convention", "field"),
    [
        ({"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 0.9}, "gazebo", "pose.qw"),  # not unit
        ({"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 0}, "gazebo", "pose.qw"),
        ({"x": float("nan"), "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "gazebo", "pose.x"),
        ({"x": 0, "y": float("inf"), "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "gazebo", "pose.y"),
        ({"x": 0, "y": 0, "z": "a", "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "gazebo", "pose.z"),
        ({"x": 0, "y": 0, "z": True, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "gazebo", "pose.z"),
        ({"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0}, "gazebo", "pose.qw"),  # missing
        ({"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1, "roll": 0}, "gazebo", "pose.roll"),
        ({"matrix": np.eye(3).tolist()}, "gazebo", "pose.matrix"),
        ({"matrix": (2 * np.eye(4)).tolist()}, "gazebo", "pose.matrix"),
        ({"matrix": np.diag([1.0, 1.0, -1.0, 1.0]).tolist()}, "gazebo", "pose.matrix"),  # reflection
        ({"matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]}, "gazebo", "pose.matrix"),
        ({"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "ros", "convention"),
        ([0, 0, 0, 0, 0, 0, 1], "gazebo", "pose"),
    ],
)
def test_invalid_poses_name_the_field(pose, convention, field):
    with pytest.raises(PoseError) as e:
        parse_pose(pose, convention)
    assert e.value.field == field


def test_quaternion_within_tolerance_is_normalised():
    q = np.array([0.1, 0.2, 0.3, 0.927]) * 1.0004
    c2w = parse_pose({"x": 0, "y": 0, "z": 0, "qx": q[0], "qy": q[1], "qz": q[2], "qw": q[3]}, "opencv")
    R = c2w[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert matrix_to_pose(c2w)["qw"] > 0


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_rendered_depth_reprojects_onto_the_mesh(tmp_path, convention):
    """Render from a pose given in each convention; back-projecting the depth with the returned
    intrinsics and OpenCV pose lands on the mesh surface (and the images are the same camera's)."""
    scene = load_render_scene(make_build(tmp_path))
    mesh = scene.mesh.to_trimesh()
    c2w_cv = opengl_to_opencv(look_at([-1.5, -2.0, 1.6], [2.0, 0.0, 0.4]))
    pose = pose_from_c2w_cv(c2w_cv, convention)
    K2 = Intrinsics(150.0, 140.0, 81.0, 58.5, 160, 120)
    c2w = parse_pose(pose, convention)
    depth = scene.render(K2, c2w, ("depth",))["depth"]
    valid = depth > 0
    assert valid.mean() > 0.5
    pts = backproject(depth, K2, c2w)[valid]
    d = trimesh.proximity.ProximityQuery(mesh).signed_distance(pts[::23])
    assert np.abs(d).max() < 1e-3
    # And each point projects back to its own pixel.
    uv, _ = project(pts, K2, c2w)
    vv, uu = np.nonzero(valid)
    np.testing.assert_allclose(uv, np.stack([uu + 0.5, vv + 0.5], 1), atol=1e-3)
