"""Depth pre-filter and sensor-noise weights of the fusion builder (issue 21) against exact geometry."""

from __future__ import annotations

import numpy as np
import pytest

from simgen.data.camera import Intrinsics
from simgen.recon.fusion import FusionConfig
from simgen.recon.fusion.depthfilter import (
    flying_pixels,
    noise_weight,
    remove_flying_pixels,
    surface_tolerance,
)
from simgen.recon.fusion.mesh import extract_mesh
from simgen.recon.fusion.tsdf import VoxelBlockVolume

K = Intrinsics(60.0, 60.0, 40.0, 30.0, 80, 60)


def _box_in_front_of_wall() -> np.ndarray:
    """``(60, 80)`` depth: a wall at 3 m, a box face at 1.2 m over columns 30..49, rows 20..39, and a
    slanted floor strip (rows 50..59, depth 2.0..2.3 m: 1.5 % of z per row, a slanted surface)."""
    d = np.full((60, 80), 3.0, np.float32)
    d[20:40, 30:50] = 1.2
    d[50:, :] = np.linspace(2.0, 2.3, 10, dtype=np.float32)[:, None]
    return d


def test_flying_pixels_at_a_known_edge_are_removed_and_little_else():
    truth = _box_in_front_of_wall()
    rng = np.random.default_rng(0)
    noisy = truth + rng.normal(0.0, 0.0015, truth.shape).astype(np.float32) * truth**2  # sigma ~ z^2
    # Mixed returns: every other pixel of the box's silhouette (both sides) between the two depths.
    edge = np.zeros(truth.shape, bool)
    edge[19:41, 29] = edge[19:41, 50] = edge[19, 29:51] = edge[40, 29:51] = True
    edge[20:40, 30] = edge[20:40, 49] = edge[20, 30:50] = edge[39, 30:50] = True
    fly = edge & (rng.random(truth.shape) < 0.5)
    t = rng.uniform(0.2, 0.8, truth.shape).astype(np.float32)
    noisy[fly] = (1.2 + t * 1.8)[fly]
    # Slope 3: surfaces seen up to 72 deg from their normal keep their pixels; 3 sigma of this noise.
    out = remove_flying_pixels(noisy, surface_tolerance(noisy, K.fx, 3.0, 0.0, 0.0015), min_support=3)
    removed = (noisy > 0) & (out == 0)
    # Nearly every flying pixel goes (two mixed returns side by side with similar depths can support each
    # other); no surface pixel off the silhouette does, and of the silhouette's own
    # (true) pixels only the odd corner whose neighbours along the edge both flew loses its support.
    assert removed[fly].mean() >= 0.95, removed[fly].mean()
    assert not removed[~edge].any()
    assert removed[edge & ~fly].sum() <= 0.05 * (edge & ~fly).sum()
    np.testing.assert_array_equal(out[~removed], noisy[~removed])


def test_thin_structures_and_holes_keep_their_pixels():
    d = np.full((30, 30), 2.5, np.float32)
    d[:, 14:16] = 1.0  # a 2-pixel-wide pole in front of the wall
    d[5:10, 5:10] = 0.0  # a hole (invalid depth) is not a reason to drop its border
    tol = surface_tolerance(d, 60.0, 3.0)  # 5 % of z at this toy focal length
    assert not flying_pixels(d, tol, 3).any()
    lone = d.copy()
    lone[20, 5] = 1.8  # one isolated return in mid-air
    assert np.flatnonzero(flying_pixels(lone, tol, 3)).tolist() == [20 * 30 + 5]


def test_noise_weight_is_inverse_variance():
    z = np.array([0.0, 0.5, 1.0, 2.0, 4.0], np.float32)
    w = noise_weight(z, 0.001, 0.002)
    s = 0.001 + 0.002 * z**2
    np.testing.assert_allclose(w[3:], (s[2] / s[3:]) ** 2, rtol=1e-5)
    assert w[0] == 0 and w[1] == 1 and w[2] == pytest.approx(1.0)


def test_noise_weighting_favours_the_near_view_of_a_surface():
    """A wall at 1 m seen once from 1 m (exact) and four times from 4 m with a 6 cm bias: unweighted,
    the far views drag the fused surface towards them; weighted, it stays within 1 cm of the truth."""
    results = {}
    for weighted in (False, True):
        vol = VoxelBlockVolume(0.02, 0.10, n_classes=1)
        near = np.full((60, 80), 1.0, np.float32)
        w_near = noise_weight(near, 0.0012, 0.0019) if weighted else None
        vol.integrate(near, K, np.eye(4), depth_weight=w_near, block_stride=1)
        c2w = np.eye(4)
        c2w[2, 3] = -3.0  # the same wall from 3 m further back
        far = np.full((60, 80), 4.06, np.float32)
        w_far = noise_weight(far, 0.0012, 0.0019) if weighted else None
        for _ in range(4):  # block_stride 1: at 4 m this toy camera's 4-pixel stride skips blocks
            vol.integrate(far, K, c2w, depth_weight=w_far, block_stride=1)
        verts, *_ = extract_mesh(
            vol, min_weight=0.999 * float(noise_weight(far[:1, :1], 0.0012, 0.0019)[0, 0])
        )
        centre = verts[(np.abs(verts[:, 0]) < 0.1) & (np.abs(verts[:, 1]) < 0.1)]
        results[weighted] = float(np.median(centre[:, 2]))
    assert results[False] > 1.04  # 4 of 5 observations put it 6 cm further
    assert abs(results[True] - 1.0) < 0.01


def test_config_validates_the_filter_fields():
    with pytest.raises(ValueError, match="flying_pixel_slope"):
        FusionConfig(flying_pixel_slope=-1.0)
    with pytest.raises(ValueError, match="flying_pixel_support"):
        FusionConfig(flying_pixel_support=9)
    with pytest.raises(ValueError, match="sensor_sigma"):
        FusionConfig(sensor_sigma_m=0.0)


def test_alignment_degeneracy_check_leaves_sliding_along_a_wall_alone():
    """A camera facing a lone wall (at 2 m) whose pose is off by 4 cm along the wall and 3 cm towards it:
    the wall fixes the distance (and the tilt) but says nothing about the slide. With the degeneracy
    check the three unconstrained directions are found and the distance is corrected while the slide
    stays exactly as it was."""
    from simgen.recon.fusion.align import align_to_model

    Kw = Intrinsics(120.0, 120.0, 80.0, 60.0, 160, 120)
    wall = np.full((120, 160), 2.0, np.float32)
    vol = VoxelBlockVolume(0.02, 0.06, n_classes=1)
    for dx in (-0.1, 0.0, 0.1):
        c2w = np.eye(4)
        c2w[0, 3] = dx
        vol.integrate(wall, Kw, c2w, block_stride=1)
    rng = np.random.default_rng(1)
    noisy = wall + rng.normal(0.0, 0.004, wall.shape).astype(np.float32)
    start = np.eye(4)
    start[:3, 3] = (0.04, 0.0, 0.03)  # slide along x, 3 cm too close to the wall
    res = align_to_model(vol, noisy, Kw, start, stride=2, degeneracy_ratio=0.05)
    assert res.accepted and res.degenerate == 3  # x, y slides and the roll about the wall normal
    assert abs(res.c2w[2, 3]) < 0.005  # distance to the wall corrected
    np.testing.assert_allclose(res.c2w[:2, 3], start[:2, 3], atol=1e-6)  # slide untouched
