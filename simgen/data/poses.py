"""Camera pose conventions accepted by the render server.

A pose is a position plus a rotation that together give the camera's frame in the world. Which camera
axes that rotation describes is the *convention*:

=============  ==============================================  =====================================
convention     camera axes                                     who uses it
=============  ==============================================  =====================================
``gazebo``     x forward, y left, z up (camera *link* frame)   Gazebo / SDF camera sensors, ROS base
``ros_optical`` x right, y down, z forward                     ROS ``*_optical_frame`` (REP 103)
``opencv``     x right, y down, z forward                      OpenCV, simgen internally
``opengl``     x right, y up, z backward                       OpenGL, nerfstudio, scene files
=============  ==============================================  =====================================

Quaternions are **scalar-last** ``(qx, qy, qz, qw)`` as in ROS ``geometry_msgs/Quaternion`` and Gazebo
``gz.msgs.Quaternion``; every field is named so there is no order to get wrong. A quaternion must be
unit-norm within :data:`QUAT_NORM_TOL` (it is then renormalised); anything else is rejected rather than
silently normalised, because a non-unit quaternion almost always means fields in the wrong order.

Everything is converted to simgen's internal camera-to-world with OpenCV axes (``c2w_cv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

CONVENTIONS = ("gazebo", "ros_optical", "opencv", "opengl")
DEFAULT_CONVENTION = "gazebo"
QUAT_NORM_TOL = 1e-3  # |‖q‖ - 1| allowed (float32 messages and 3-4 printed decimals pass)
RIGID_TOL = 1e-3  # max |R Rᵀ - I| entry allowed for a 4x4 pose matrix
MAX_COORD = 1e6  # metres; farther positions lose all precision in the float32 ray caster

# Columns: the OpenCV camera axes (x right, y down, z forward) written in each convention's camera frame.
# c2w_cv = c2w_conv @ CV_IN[conv]  (4x4 homogeneous, rotation only).
_CV_IN = {
    "gazebo": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "ros_optical": np.eye(3),
    "opencv": np.eye(3),
    "opengl": np.diag([1.0, -1.0, -1.0]),
}


class PoseError(ValueError):
    """Invalid pose input; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _cv_in(convention: str) -> np.ndarray:
    if convention not in _CV_IN:
        raise PoseError(
            "convention", f"unknown convention {convention!r}; expected one of {list(CONVENTIONS)}"
        )
    T = np.eye(4)
    T[:3, :3] = _CV_IN[convention]
    return T


def to_c2w_cv(c2w: np.ndarray, convention: str) -> np.ndarray:
    """Camera-to-world ``(4, 4)`` whose rotation uses ``convention``'s camera axes -> OpenCV camera axes."""
    return np.asarray(c2w, dtype=np.float64) @ _cv_in(convention)


def from_c2w_cv(c2w_cv: np.ndarray, convention: str) -> np.ndarray:
    """Inverse of :func:`to_c2w_cv`: OpenCV-axes camera-to-world ``(4, 4)`` -> ``convention``'s axes."""
    return np.asarray(c2w_cv, dtype=np.float64) @ _cv_in(convention).T


def _finite_float(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise PoseError(field, "must be a number, got a boolean")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PoseError(field, f"must be a number, got {value!r}") from None
    if not np.isfinite(f):
        raise PoseError(field, f"must be finite, got {value!r}")
    return f


def quat_to_matrix(qx: float, qy: float, qz: float, qw: float, field: str = "pose") -> np.ndarray:
    """Unit quaternion (scalar-last) -> ``(3, 3)`` rotation; PoseError if not unit within tolerance."""
    q = np.array([qx, qy, qz, qw], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUAT_NORM_TOL:
        raise PoseError(
            f"{field}.qw",
            f"quaternion (qx, qy, qz, qw) has norm {norm:.6g}, not 1 (tolerance {QUAT_NORM_TOL}); "
            "fields are scalar-last as in ROS/Gazebo messages",
        )
    return Rotation.from_quat(q / norm).as_matrix()


def matrix_to_pose(T: np.ndarray) -> dict[str, float]:
    """``(4, 4)`` rigid transform -> ``{x, y, z, qx, qy, qz, qw}`` (qw >= 0)."""
    T = np.asarray(T, dtype=np.float64)
    q = Rotation.from_matrix(T[:3, :3]).as_quat()
    if q[3] < 0:  # one canonical sign so round trips compare equal
        q = -q
    x, y, z = T[:3, 3]
    return {
        "x": float(x),
        "y": float(y),
        "z": float(z),
        "qx": float(q[0]),
        "qy": float(q[1]),
        "qz": float(q[2]),
        "qw": float(q[3]),
    }


def _parse_matrix(value: Any, field: str) -> np.ndarray:
    try:
        M = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseError(field, "must be a 4x4 array of numbers (row-major)") from None
    if M.shape != (4, 4):
        raise PoseError(field, f"must be 4x4 (row-major list of 4 rows), got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise PoseError(field, "must contain finite numbers only")
    if not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise PoseError(field, f"last row must be [0, 0, 0, 1], got {M[3].tolist()}")
    R = M[:3, :3]
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > RIGID_TOL or np.linalg.det(R) < 0:
        raise PoseError(field, f"rotation block is not a proper rotation (max |R Rᵀ - I| = {err:.3g})")
    # Snap to the nearest rotation so downstream maths sees an exact rigid transform.
    U, _, Vt = np.linalg.svd(R)
    M[:3, :3] = U @ Vt
    return M


def parse_pose(pose: Any, convention: str = DEFAULT_CONVENTION, field: str = "pose") -> np.ndarray:
    """A request's pose -> camera-to-world ``(4, 4) float64`` with OpenCV camera axes.

    Args:
        pose: ``{"x", "y", "z", "qx", "qy", "qz", "qw"}`` (metres, scalar-last unit quaternion) or
            ``{"matrix": 4x4 row-major}`` -- the camera's frame in the served world frame, its axes as
            ``convention`` says.
        convention: one of :data:`CONVENTIONS`.
        field: the request field name used in errors.

    Raises:
        PoseError: naming the offending field (``pose.qw``, ``pose.matrix``, ``convention`` ...).
    """
    if convention not in CONVENTIONS:
        raise PoseError(
            "convention", f"unknown convention {convention!r}; expected one of {list(CONVENTIONS)}"
        )
    if not isinstance(pose, Mapping):
        raise PoseError(field, "must be an object {x, y, z, qx, qy, qz, qw} or {matrix: 4x4}")
    if "matrix" in pose:
        extra = set(pose) - {"matrix"}
        if extra:
            raise PoseError(f"{field}.{sorted(extra)[0]}", "give either matrix or x, y, z, qx, qy, qz, qw")
        T = _parse_matrix(pose["matrix"], f"{field}.matrix")
    else:
        names = ("x", "y", "z", "qx", "qy", "qz", "qw")
        for n in names:
            if n not in pose:
                raise PoseError(f"{field}.{n}", "missing (pose needs x, y, z, qx, qy, qz, qw or matrix)")
        extra = set(pose) - set(names)
        if extra:
            raise PoseError(f"{field}.{sorted(extra)[0]}", f"unknown pose field; expected {list(names)}")
        v = [_finite_float(pose[n], f"{field}.{n}") for n in names]
        T = np.eye(4)
        T[:3, :3] = quat_to_matrix(*v[3:], field=field)
        T[:3, 3] = v[:3]
    for n, value in zip("xyz", T[:3, 3], strict=True):
        if abs(value) > MAX_COORD:
            where = f"{field}.matrix" if "matrix" in pose else f"{field}.{n}"
            raise PoseError(where, f"position {n} = {value:g} m is beyond +-{MAX_COORD:g} m")
    return to_c2w_cv(T, convention)


def pose_from_c2w_cv(c2w_cv: np.ndarray, convention: str = DEFAULT_CONVENTION) -> dict[str, float]:
    """OpenCV-axes camera-to-world ``(4, 4)`` -> request pose ``{x, y, z, qx, qy, qz, qw}`` in ``convention``."""
    return matrix_to_pose(from_c2w_cv(c2w_cv, convention))
