"""Frame-to-model alignment: refine a keyframe's pose against the TSDF fused so far.

Tracking drift (a hand-held phone's visual-inertial odometry drifts by about a degree per 10 m,
docs/synth.md) makes later frames land beside the surface the earlier ones built. Before a keyframe
is fused, its points are moved onto the zero level set of the current TSDF by Gauss-Newton on the
point-to-SDF residual (the tracking of Bylow et al., "Real-time camera tracking and 3D
reconstruction using signed distance functions", RSS 2013; KinectFusion's frame-to-model idea):

    r_k = D(R p_k + t),   D = trilinearly interpolated TSDF in metres,

with a Huber weight per point, a 6-DoF increment about the camera centre, and the correction
carried forward to the next frame's initial pose. Written here (not Open3D's or a library's ICP)
because the model is the fusion's own voxel-block TSDF, which no library reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.recon.fusion.depthfilter import noise_weight
from simgen.recon.fusion.tsdf import VoxelBlockVolume, directions

_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.int64)


def tsdf_at(vol: VoxelBlockVolume, points: np.ndarray, min_weight: float = 1.0) -> tuple[np.ndarray, ...]:
    """Trilinear TSDF and its gradient at world points.

    Args:
        points: ``(N, 3)`` world points, metres.
        min_weight: every one of the 8 surrounding voxels needs at least this TSDF weight.

    Returns:
        ``sdf (N,)`` metres, ``grad (N, 3)`` (metres per metre, world frame) and ``ok (N,) bool``
        (all 8 voxels allocated and observed; sdf and grad are 0 elsewhere).
    """
    u = np.asarray(points, dtype=np.float64) / vol.voxel_size  # voxel centres sit at integers
    base = np.floor(u).astype(np.int64)
    f = u - base
    rows = vol.rows_of_voxels((base[:, None, :] + _CORNERS[None]).reshape(-1, 3)).reshape(-1, 8)
    ok = np.all(rows >= 0, axis=1)
    r = np.where(rows >= 0, rows, 0)
    ok &= np.all(vol.weight[r] >= min_weight, axis=1)
    v = vol.tsdf[r].astype(np.float64) * vol.trunc  # (N, 8) metres
    w = np.stack([np.where(_CORNERS[:, a] == 1, f[:, a : a + 1], 1.0 - f[:, a : a + 1]) for a in range(3)])
    weights = w[0] * w[1] * w[2]  # (N, 8)
    sdf = (weights * v).sum(1)
    grad = np.empty((len(u), 3))
    for a in range(3):
        # d/df_a of the trilinear weights: +-1 on axis a, the other two factors unchanged.
        others = np.prod([w[b] for b in range(3) if b != a], axis=0)
        sign = np.where(_CORNERS[:, a] == 1, 1.0, -1.0)
        grad[:, a] = (others * sign * v).sum(1) / vol.voxel_size
    return np.where(ok, sdf, 0.0), np.where(ok[:, None], grad, 0.0), ok


@dataclass
class AlignResult:
    c2w: np.ndarray  # (4, 4) refined camera-to-world, OpenCV axes
    points: int  # points used in the last iteration
    rmse_before_m: float
    rmse_after_m: float
    accepted: bool
    degenerate: int = 0  # most update directions left out as poorly constrained, over the iterations


def _rotation(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def align_to_model(
    vol: VoxelBlockVolume,
    depth: np.ndarray,
    K: Intrinsics,
    c2w_cv: np.ndarray,
    stride: int = 4,
    iterations: int = 10,
    huber_m: float = 0.02,
    min_points: int = 300,
    max_step: tuple[float, float] = (0.10, np.deg2rad(5.0)),
    damping: float = 0.05,
    min_gain: float = 0.9,
    noise_model: tuple[float, float] | None = None,
    min_weight: float = 1.0,
    degeneracy_ratio: float = 0.0,
) -> AlignResult:
    """Refine ``c2w_cv`` so that ``depth`` lies on the model's surface (see the module docstring).

    Args:
        depth: ``(H, W) float32`` z-depth, metres, 0 = invalid (range-filtered).
        c2w_cv: ``(4, 4)`` initial camera-to-world, OpenCV camera axes.
        stride: pixel stride of the sampled points.
        huber_m: Huber threshold of the residuals, metres.
        min_points: fewer usable points (inside the observed truncation band) keep the initial pose.
        max_step: a total correction beyond (metres, radians) is rejected as a failure.
        damping: Levenberg damping, as a fraction of the mean diagonal of the normal equations.
        min_gain: the result is kept only if it lowers the residual RMS below ``min_gain`` times
            the initial one (otherwise the initial pose is as good).
        noise_model: ``(sigma_m, sigma_quad)`` of the sensor's axial noise (metres, metres per m^2):
            each point's residual is weighted by its inverse noise variance (:func:`noise_weight`),
            so far, noisy, coarsely quantised points do not outvote near ones. None: equal weights.
        min_weight: every voxel of a point's trilinear cell needs at least this TSDF weight (fractional
            weights when the volume was fused with noise weights).
        degeneracy_ratio: directions of the 6-DoF update whose information (eigenvalue of the normal
            equations, rotations scaled by the points' mean range so both are in metres) is below
            this fraction of the largest are left unchanged (Zhang, Kaess and Singh, ICRA 2016,
            "On degeneracy of optimization-based state estimation problems"): a view of one wall or
            of a floor cannot tell where along it the camera is, and an update there follows noise.
            0 = off (plain damping only).
    """
    d = depth[::stride, ::stride]
    m = d > 0
    pc = directions(K)[::stride, ::stride][m].astype(np.float64) * d[m][:, None]  # camera frame
    w_pt = np.ones(len(pc)) if noise_model is None else noise_weight(d[m], *noise_model).astype(np.float64)
    scale = max(float(np.mean(np.linalg.norm(pc, axis=1))), 1e-3) if len(pc) else 1.0
    degenerate = 0
    R0, t0 = c2w_cv[:3, :3].astype(np.float64), c2w_cv[:3, 3].astype(np.float64)
    R, t = R0.copy(), t0.copy()
    band = 0.9 * vol.trunc  # residuals at the truncation limit carry no distance information
    rmse0 = rmse = float("nan")
    n = 0
    for it in range(iterations):
        q = pc @ R.T  # world offsets from the camera centre
        sdf, g, ok = tsdf_at(vol, q + t, min_weight)
        gn = np.linalg.norm(g, axis=1)
        # Near a well-observed surface the TSDF gradient has unit length; elsewhere (holes, edges,
        # flying pixels) it carries no distance information.
        use = ok & (np.abs(sdf) < band) & (gn > 0.5) & (gn < 1.5)
        n = int(use.sum())
        if n < min_points:
            break
        r, g, q, wp = sdf[use], g[use], q[use], w_pt[use]
        rmse = _wrms(r, wp)
        if it == 0:
            rmse0 = rmse
        J = np.concatenate([np.cross(q, g), g], axis=1)  # d r / d(omega, v), perturbation about the centre
        wgt = wp * np.where(np.abs(r) <= huber_m, 1.0, huber_m / np.maximum(np.abs(r), 1e-12))
        A = (J * wgt[:, None]).T @ J
        b = -(J * wgt[:, None]).T @ r
        if degeneracy_ratio > 0:
            # Rotations in metres at the points' mean range, so that eigenvalues compare across the 6 DoF.
            S = np.diag([1.0 / scale] * 3 + [1.0] * 3)
            evals, evecs = np.linalg.eigh(S @ A @ S)
            good = evals > degeneracy_ratio * max(float(evals[-1]), 1e-12)
            degenerate = max(degenerate, int((~good).sum()))
            # Solve in the well-constrained subspace only (solution remapping), damped as below.
            V = evecs[:, good]
            lam = evals[good] + damping * float(evals.sum()) / 6.0 + 1e-12
            delta = S @ (V @ ((V.T @ (S @ b)) / lam))
        else:
            # Damping towards the current pose: a view of one wall leaves sliding along it unconstrained,
            # and undamped steps there follow the noise and accumulate from keyframe to keyframe.
            A += damping * np.trace(A) / 6.0 * np.eye(6) + 1e-9 * np.eye(6)
            delta = np.linalg.solve(A, b)
        R = _rotation(delta[:3]) @ R
        t = t + delta[3:]
        if np.linalg.norm(delta[:3]) < 1e-5 and np.linalg.norm(delta[3:]) < 1e-5:
            break
    ang = np.arccos(np.clip((np.trace(R @ R0.T) - 1) / 2, -1, 1))
    if n >= min_points:  # the final pose's residual
        sdf, g, ok = tsdf_at(vol, pc @ R.T + t, min_weight)
        gn = np.linalg.norm(g, axis=1)
        use = ok & (np.abs(sdf) < band) & (gn > 0.5) & (gn < 1.5)
        rmse = _wrms(sdf[use], w_pt[use]) if use.sum() >= min_points else float("inf")
    accepted = (
        n >= min_points
        and np.linalg.norm(t - t0) <= max_step[0]
        and ang <= max_step[1]
        and rmse < min_gain * rmse0
    )
    out = np.array(c2w_cv, dtype=np.float64)
    if accepted:
        out[:3, :3], out[:3, 3] = R, t
    return AlignResult(out, n, rmse0, rmse, bool(accepted), degenerate)


def _wrms(r: np.ndarray, w: np.ndarray) -> float:
    """Weighted RMS of residuals ``r`` (metres) with weights ``w`` (same shape)."""
    return float(np.sqrt(np.sum(w * r**2) / max(float(np.sum(w)), 1e-12)))
