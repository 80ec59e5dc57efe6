"""Depth pre-filter and sensor-noise weights, applied to every frame before alignment and fusion.

Real RGB-D sensors return *flying pixels* at depth discontinuities: a time-of-flight or structured-light
pixel that straddles a foreground edge and the background behind it reports a depth somewhere between
the two, i.e. a point floating in free space. TSDF fusion turns such points into spurious surface
fragments near silhouettes and into wrong free-space carving, and frame-to-model alignment is pulled by
them. The filter here is the usual neighbourhood-support test (a surface point has neighbours on the
same surface; a flying pixel has none): a pixel is kept when enough of its 8 neighbours lie within a
depth tolerance that grows with z (:func:`surface_tolerance`: the step of a steeply slanted surface,
which scales with the pixel footprint, plus the sensor noise, which does not). True
silhouette pixels keep the support of their own side, so edges are not eroded, and thin structures two
or more pixels wide keep theirs.

The axial noise of such sensors grows roughly with z^2 (Nguyen, Izadi and Lovell, 3DIMPVT 2012,
for Kinect; ToF phones behave alike), so an observation at 4 m is worth far less than one at 1 m.
:func:`noise_weight` turns a noise model ``sigma(z) = sigma_m + sigma_quad * z^2`` into the per-pixel
TSDF weight ``(sigma(z_ref) / sigma(z))^2`` (capped at 1), the inverse-variance weighting of a
running mean.
"""

from __future__ import annotations

import numpy as np

# (dy, dx) of the 8-neighbourhood.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_support(depth: np.ndarray, tol: np.ndarray | float) -> np.ndarray:
    """How many of each pixel's 8 neighbours lie on the same surface.

    Args:
        depth: ``(H, W) float32`` z-depth in metres, 0 = invalid.
        tol: a neighbour is on the same surface when ``|z_n - z| <= tol``; metres, scalar or ``(H, W)``.

    Returns:
        ``(H, W) int8`` count in 0..8 (0 at invalid pixels; neighbours outside the image or invalid
        never count).
    """
    z = np.asarray(depth, dtype=np.float32)
    H, W = z.shape
    pad = np.zeros((H + 2, W + 2), np.float32)
    pad[1:-1, 1:-1] = z
    tol = np.asarray(tol, dtype=np.float32)
    count = np.zeros((H, W), np.int8)
    for dy, dx in _NEIGHBOURS:
        n = pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
        count += ((n > 0) & (np.abs(n - z) <= tol)).astype(np.int8)
    count[z <= 0] = 0
    return count


def surface_tolerance(
    depth: np.ndarray, focal_px: float, slope: float, sigma_m: float = 0.0, sigma_quad: float = 0.0
) -> np.ndarray:
    """Largest depth step ``(H, W) float32`` (metres) between neighbouring pixels of one surface.

    ``slope * z / focal_px`` is the step on a surface seen at ``atan(slope)`` from its normal (the pixel
    footprint is ``z / focal_px``), and ``3 sigma(z)`` covers the sensor noise of the two readings
    (:func:`noise_sigma`), which does not shrink with the pixel size.
    """
    z = np.asarray(depth, dtype=np.float32)
    return np.float32(slope / focal_px) * z + np.float32(3.0) * noise_sigma(z, sigma_m, sigma_quad)


def flying_pixels(depth: np.ndarray, tol: np.ndarray | float, min_support: int = 3) -> np.ndarray:
    """``(H, W) bool`` mask of valid pixels with fewer than ``min_support`` same-surface neighbours.

    Args:
        depth: ``(H, W) float32`` z-depth in metres, 0 = invalid.
        tol: same-surface tolerance in metres (:func:`surface_tolerance`).
        min_support: neighbours needed to keep a pixel. A point on a straight silhouette has 5,
            a corner 3, an isolated mixed return typically 0 or 1.
    """
    return (depth > 0) & (neighbour_support(depth, tol) < min_support)


def remove_flying_pixels(depth: np.ndarray, tol: np.ndarray | float, min_support: int = 3) -> np.ndarray:
    """A copy of ``depth (H, W) float32`` (metres, 0 = invalid) with :func:`flying_pixels` set to 0."""
    out = np.array(depth, dtype=np.float32, copy=True)
    out[flying_pixels(out, tol, min_support)] = 0.0
    return out


def noise_sigma(depth: np.ndarray, sigma_m: float, sigma_quad: float) -> np.ndarray:
    """Axial noise ``sigma(z) = sigma_m + sigma_quad * z^2`` in metres, same shape as ``depth`` (metres)."""
    z = np.asarray(depth, dtype=np.float32)
    return np.float32(sigma_m) + np.float32(sigma_quad) * z * z


def noise_weight(
    depth: np.ndarray, sigma_m: float, sigma_quad: float, ref_depth_m: float = 1.0
) -> np.ndarray:
    """Inverse-variance TSDF weight per pixel, ``(sigma(ref) / sigma(z))^2`` capped at 1.

    Args:
        depth: ``(H, W) float32`` z-depth in metres, 0 = invalid (weight 0 there).
        sigma_m, sigma_quad: the noise model of :func:`noise_sigma`.
        ref_depth_m: depth whose observations get weight 1 (nearer ones are capped at 1, so that the
            TSDF's weight cap keeps meaning "number of good observations").

    Returns:
        ``(H, W) float32`` in [0, 1].
    """
    ref = noise_sigma(np.float32(ref_depth_m), sigma_m, sigma_quad)
    s = noise_sigma(depth, sigma_m, sigma_quad)
    w = np.minimum((ref / np.maximum(s, np.float32(1e-9))) ** 2, np.float32(1.0))
    return np.where(np.asarray(depth) > 0, w, np.float32(0.0)).astype(np.float32)
