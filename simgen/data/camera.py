"""Pinhole cameras and pose conventions.

Scene files store camera-to-world poses with nerfstudio / OpenGL camera axes
(x right, y up, z backward). Internally simgen computes with OpenCV axes
(x right, y down, z forward), which makes pixel maths read naturally:
``u = fx * x / z + cx``. Converting between the two flips the camera's y and z axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Right-multiplying a camera-to-world matrix by this flips the camera's y and z axes.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels; (cx, cy) measured from the top-left corner of the top-left pixel."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def matrix(self) -> np.ndarray:
        """3x3 K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> Intrinsics:
        """Intrinsics for the image resized by ``factor``."""
        return Intrinsics(
            self.fx * factor,
            self.fy * factor,
            self.cx * factor,
            self.cy * factor,
            int(round(self.width * factor)),
            int(round(self.height * factor)),
        )


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world ``(..., 4, 4)`` with OpenGL camera axes -> OpenCV camera axes (and back)."""
    return np.asarray(c2w) @ GL_TO_CV


opencv_to_opengl = opengl_to_opencv  # the flip is its own inverse


def camera_directions(K: Intrinsics) -> np.ndarray:
    """``(H, W, 3)`` camera-frame (OpenCV) directions with z = 1 through pixel centres."""
    u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
    return np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], axis=-1)


def backproject(depth: np.ndarray, K: Intrinsics, c2w_cv: np.ndarray) -> np.ndarray:
    """Z-depth ``(H, W)`` metres -> world points ``(H, W, 3)`` (NaN where depth is 0 / invalid)."""
    pts_cam = camera_directions(K) * depth[..., None]
    pts = pts_cam @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
    pts[~(depth > 0)] = np.nan
    return pts


def project(points: np.ndarray, K: Intrinsics, c2w_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``(N, 3)`` -> pixel coordinates ``(N, 2)`` (u, v) and camera z ``(N,)``."""
    w2c = np.linalg.inv(c2w_cv)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K.fx * pc[:, 0] / z + K.cx, K.fy * pc[:, 1] / z + K.cy], axis=1)
    return uv, z


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world ``(4, 4)`` with OpenGL axes looking from ``eye`` at ``target``."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`
        right = np.cross((1.0, 0.0, 0.0), back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def is_rigid(T: np.ndarray, tol: float = 1e-3) -> bool:
    """True if ``T`` is a finite 4x4 rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (
        np.allclose(R @ R.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(R) - 1.0) < tol
        and np.allclose(T[3], [0, 0, 0, 1], atol=tol)
    )


def ros_camera_matrix(K) -> np.ndarray:
    """simgen intrinsics ``(3, 3)`` -> the ``K`` of a ROS ``sensor_msgs/CameraInfo``.

    simgen measures ``(cx, cy)`` from the top-left corner of the top-left pixel (pixel centres at
    ``i + 0.5``); ROS and OpenCV put the first pixel's centre at 0, so the principal point moves by half a
    pixel: a centred 320 x 240 camera has ``cx, cy = 160, 120`` in simgen and ``159.5, 119.5`` in ROS.
    """
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K
