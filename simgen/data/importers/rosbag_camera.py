"""Cameras of a ROS bag: ``sensor_msgs/CameraInfo``, undistortion, depth-to-colour registration.

Pixel conventions: ROS (like OpenCV) puts the centre of pixel ``(i, j)`` at ``(u, v) = (j, i)``;
simgen puts it at ``(j + 0.5, i + 0.5)`` (the principal point is measured from the image corner),
so ``cx = K[2] + 0.5`` and ``cy = K[5] + 0.5``. Camera axes are ROS optical frames: x right,
y down, z forward (OpenCV).

Distortion models (``distortion_model``, coefficients ``D``), as in OpenCV / ROS image_geometry:

* ``plumb_bob``: ``k1, k2, p1, p2, k3`` (Brown-Conrady);
* ``rational_polynomial``: ``k1, k2, p1, p2, k3, k4, k5, k6``.

A distorted image is resampled onto the undistorted pinhole camera with the same ``K`` (as
OpenCV's ``undistort`` with its default new camera matrix): every output pixel is pushed through
the forward distortion model and the source is sampled there (bilinear for colour, nearest for
depth so that no depth is invented across an edge). No inverse of the model is needed. cv2 is not
a dependency: scipy's ``map_coordinates`` does the resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.data.importers.common import DatasetImportError

# Number of coefficients each supported model reads (extra trailing zeros are accepted).
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}


@dataclass(frozen=True)
class CameraModel:
    """One ``CameraInfo``: the pinhole ``K`` (simgen convention) and the distortion to remove."""

    K: Intrinsics
    model: str  # "plumb_bob", "rational_polynomial" or "none" (no distortion)
    D: tuple[float, ...]  # coefficients, padded to the model's count
    frame_id: str
    topic: str

    @property
    def distorted(self) -> bool:
        return self.model != "none" and any(d != 0.0 for d in self.D)

    def same_calibration(self, other: CameraModel) -> bool:
        return self.K == other.K and self.model == other.model and self.D == other.D


def camera_from_info(msg, topic: str, stamp: str) -> CameraModel:
    """``sensor_msgs/msg/CameraInfo`` -> :class:`CameraModel`; errors name the topic and stamp."""
    where = f"{topic} (CameraInfo at stamp {stamp})"
    k = np.asarray(msg.k, dtype=np.float64)
    w, h = int(msg.width), int(msg.height)
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if not (np.all(np.isfinite(k)) and fx > 0 and fy > 0 and w > 0 and h > 0):
        raise DatasetImportError(
            f"{where}: invalid calibration K={k.tolist()} width={w} height={h} (an uncalibrated camera?)"
        )
    if k[1] != 0:
        raise DatasetImportError(f"{where}: skewed K (K[0][1] = {k[1]}) is not supported")
    bx, by = int(msg.binning_x), int(msg.binning_y)
    roi = msg.roi
    if bx > 1 or by > 1:
        raise DatasetImportError(
            f"{where}: binning {bx}x{by} is not supported (images must be full resolution)"
        )
    if (int(roi.width), int(roi.height)) not in ((0, 0), (w, h)) or int(roi.x_offset) or int(roi.y_offset):
        raise DatasetImportError(f"{where}: a region of interest (roi) is not supported")
    d = tuple(float(x) for x in msg.d)
    model = str(msg.distortion_model).strip()
    if not any(d):
        model_out, coeffs = "none", ()
    elif model in DISTORTION_MODELS:
        n = DISTORTION_MODELS[model]
        if any(d[n:]):
            raise DatasetImportError(
                f"{where}: distortion_model {model!r} takes {n} coefficients, got {len(d)}: {list(d)}"
            )
        model_out, coeffs = model, (d + (0.0,) * n)[:n]
    else:
        raise DatasetImportError(
            f"{where}: distortion_model {model!r} is not supported (supported: "
            f"{', '.join(DISTORTION_MODELS)}, or all-zero D); rectify the images first, e.g. with image_proc"
        )
    K = Intrinsics(float(fx), float(fy), float(cx) + 0.5, float(cy) + 0.5, w, h)
    return CameraModel(K, model_out, coeffs, str(msg.header.frame_id).lstrip("/"), topic)


def distort(x: np.ndarray, y: np.ndarray, model: str, D: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Undistorted normalised coordinates ``x = X/Z, y = Y/Z`` (any shape) -> distorted ones."""
    if model == "none":
        return x, y
    k1, k2, p1, p2, k3 = D[:5]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    if model == "rational_polynomial":
        k4, k5, k6 = D[5:8]
        radial = radial / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort_map(cam: CameraModel) -> np.ndarray:
    """Source sampling positions for the undistorted image.

    Returns:
        ``(2, H, W)`` float64 (row, column) index coordinates in the distorted source image of
        every output pixel centre of the pinhole ``cam.K`` (the input ``scipy.ndimage.map_coordinates``
        takes).
    """
    K = cam.K
    u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
    xd, yd = distort((u - K.cx) / K.fx, (v - K.cy) / K.fy, cam.model, cam.D)
    return np.stack([yd * K.fy + K.cy - 0.5, xd * K.fx + K.cx - 0.5])


def remap(image: np.ndarray, coords: np.ndarray, nearest: bool) -> np.ndarray:
    """Sample ``image`` ``(H, W)`` or ``(H, W, C)`` at ``coords`` ``(2, H', W')``; outside -> 0."""
    from scipy.ndimage import map_coordinates

    order = 0 if nearest else 1
    if image.ndim == 2:
        return map_coordinates(image, coords, order=order, mode="constant", cval=0)
    return np.stack(
        [
            map_coordinates(image[..., c], coords, order=order, mode="constant", cval=0)
            for c in range(image.shape[2])
        ],
        axis=-1,
    )


def undistort_color(rgb: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 distorted -> undistorted, bilinear; pixels seeing outside the source are black."""
    out = remap(rgb.astype(np.float32), coords, nearest=False)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def undistort_depth(depth: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 metres distorted -> undistorted, nearest source pixel; outside -> 0 (invalid)."""
    # Index of the containing pixel: round the sampling position (centre of pixel i is at i).
    return remap(depth, coords, nearest=True).astype(np.float32)


def reproject_depth(
    depth: np.ndarray,
    K_src: Intrinsics,
    K_dst: Intrinsics,
    T_dst_src: np.ndarray,
    max_grazing_deg: float = 87.0,
) -> np.ndarray:
    """Z-depth seen by one pinhole camera -> z-depth seen by another (depth-to-colour registration).

    The source depth image is treated as a triangle mesh (two triangles per 2x2 block of valid
    pixel centres), moved into the destination camera and rasterised there with a z-buffer, the
    depth interpolated perspective-correctly (1/z is linear in the image for a planar triangle). A
    plane therefore maps exactly, unlike splatting each pixel as a constant-depth square (what
    librealsense's align does). Triangles seen at more than ``max_grazing_deg`` from their normal
    by the source camera are the jumps between a foreground and a background surface, not
    surfaces, and are dropped, so depth edges stay sharp and disoccluded pixels stay invalid (0).

    Args:
        depth: ``(Hs, Ws)`` float32 metres on ``K_src`` (undistorted), 0 = invalid.
        K_src, K_dst: pinhole intrinsics of the source (depth) and destination (colour) cameras.
        T_dst_src: ``(4, 4)`` maps points in the source camera frame to the destination camera
            frame (both optical frames: x right, y down, z forward), metres.

    Returns:
        ``(K_dst.height, K_dst.width)`` float32 z-depth in metres in the destination camera, 0 where
        no source surface is seen.
    """
    H, W = depth.shape
    Hd, Wd = K_dst.height, K_dst.width
    out = np.full(Hd * Wd, np.inf)
    z = depth.astype(np.float64)
    # Source camera points, one (H, W) grid per coordinate (component grids slice and combine
    # faster than (H, W, 3) stacks).
    x = (np.arange(W) + 0.5 - K_src.cx) / K_src.fx * z
    y = ((np.arange(H) + 0.5 - K_src.cy) / K_src.fy)[:, None] * z
    R, t = T_dst_src[:3, :3], T_dst_src[:3, 3]
    qx, qy, qz = (R[i, 0] * x + R[i, 1] * y + R[i, 2] * z + t[i] for i in range(3))
    valid = (z > 0) & (qz > 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        iz = 1.0 / qz
        # Continuous coordinates with pixel centres at integers (pixel k spans [k - 0.5, k + 0.5)).
        px = K_dst.fx * qx * iz + K_dst.cx - 0.5
        py = K_dst.fy * qy * iz + K_dst.cy - 0.5
    # The two triangles of each 2x2 block of pixel centres (a b / c d): (a, b, c) and (b, d, c),
    # gathered by slicing the grids (much faster than fancy indexing with vertex ids).
    corners = [(slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)),
               (slice(1, None), slice(None, -1)), (slice(1, None), slice(1, None))]  # fmt: skip
    cos_max = np.cos(np.deg2rad(max_grazing_deg))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for tri in ((0, 1, 2), (1, 3, 2)):
        a, b, c = (corners[k] for k in tri)
        ok = valid[a] & valid[b] & valid[c]
        # Grazing test in the source camera, where the mesh was sampled: |n . ray| > cos |n| |ray|.
        e1 = [g[b] - g[a] for g in (x, y, z)]
        e2 = [g[c] - g[a] for g in (x, y, z)]
        n = (e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0])
        ray = [g[a] + g[b] + g[c] for g in (x, y, z)]
        dot = n[0] * ray[0] + n[1] * ray[1] + n[2] * ray[2]
        nn = n[0] ** 2 + n[1] ** 2 + n[2] ** 2
        rr = ray[0] ** 2 + ray[1] ** 2 + ray[2] ** 2
        with np.errstate(invalid="ignore"):
            ok &= dot * dot > cos_max * cos_max * nn * rr
        parts.append(tuple(np.stack([g[a][ok], g[b][ok], g[c][ok]], 1) for g in (px, py, iz)))  # type: ignore[misc]
    X, Y, IZ = (np.concatenate([p[k] for p in parts]) for k in range(3))  # (T, 3) each
    if len(X) == 0:
        return np.zeros((Hd, Wd), dtype=np.float32)
    # Bounding boxes of pixel centres, widened by a hair so that a vertex that lands on a centre
    # up to rounding (the registered case) still covers it; the barycentric test decides.
    x0 = np.ceil(X.min(1) - 1e-6).astype(np.int64).clip(0, Wd)
    x1 = np.floor(X.max(1) + 1e-6).astype(np.int64).clip(-1, Wd - 1)
    y0 = np.ceil(Y.min(1) - 1e-6).astype(np.int64).clip(0, Hd)
    y1 = np.floor(Y.max(1) + 1e-6).astype(np.int64).clip(-1, Hd - 1)
    bw, bh = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    count = bw * bh
    keep = count > 0
    X, Y, IZ, x0, y0, bw, count = X[keep], Y[keep], IZ[keep], x0[keep], y0[keep], bw[keep], count[keep]
    # One candidate per (triangle, pixel of its bounding box), flattened.
    t = np.repeat(np.arange(len(count)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    qx = x0[t] + local % bw[t]
    qy = y0[t] + local // bw[t]
    Xt, Yt = X[t], Y[t]
    # Barycentric coordinates from edge functions.
    den = (Yt[:, 1] - Yt[:, 2]) * (Xt[:, 0] - Xt[:, 2]) + (Xt[:, 2] - Xt[:, 1]) * (Yt[:, 0] - Yt[:, 2])
    ok = np.abs(den) > 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        l0 = ((Yt[:, 1] - Yt[:, 2]) * (qx - Xt[:, 2]) + (Xt[:, 2] - Xt[:, 1]) * (qy - Yt[:, 2])) / den
        l1 = ((Yt[:, 2] - Yt[:, 0]) * (qx - Xt[:, 2]) + (Xt[:, 0] - Xt[:, 2]) * (qy - Yt[:, 2])) / den
    l2 = 1.0 - l0 - l1
    eps = -1e-7  # shared edges: a pixel centre exactly on one is covered by both triangles
    ok &= (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    iz = l0 * IZ[t, 0] + l1 * IZ[t, 1] + l2 * IZ[t, 2]
    ok &= iz > 0
    np.minimum.at(out, (qy * Wd + qx)[ok], 1.0 / iz[ok])
    out[~np.isfinite(out)] = 0.0
    return out.reshape(Hd, Wd).astype(np.float32)
