"""The realistic noise profile of ``simgen synth``: each family's measured rate matches its setting.

Rates are measured on constructed images (whose answer is known) and on a generated tiny scene,
with tolerances of a few binomial standard errors (or wider where pixels are spatially correlated).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from simgen.cli import build_parser
from simgen.config import dataclass_from_args
from simgen.data.scene import load_scene
from simgen.synth import CATEGORIES, STUFF_IDS, THING_IDS, NoiseConfig, SynthConfig, synthesize
from simgen.synth.noise import (
    PROFILES,
    drift_poses,
    miss_runs,
    motion_blur,
    pseudo_labels,
    sensor_depth,
    similar_lookup,
    touching_pairs,
)

CAT = {c.name: c.id for c in CATEGORIES}
NAMES = {c.id: c.name for c in CATEGORIES}


def _only(**kw) -> NoiseConfig:
    """Every noise family off except the fields in ``kw``."""
    base = dict(
        miss_prob=0.0,
        split_prob=0.0,
        shrink_min_px=0,
        shrink_max_px=0,
        wrong_class_prob=0.0,
        spurious_per_frame=0.0,
        min_area_px=1,
    )
    base.update(kw)
    return NoiseConfig(**base)


def _binomial_ok(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return n > 50 and abs(k / n - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1e-9


# ----------------------------------------------------------------------------- configuration


def test_profiles_resolve_and_explicit_values_win():
    clean, real = NoiseConfig(), NoiseConfig(profile="realistic")
    for name, value in PROFILES["clean"].items():
        assert getattr(clean, name) == value, name
    for name, value in PROFILES["realistic"].items():
        assert getattr(real, name) == value, name
    # Historical defaults are the clean profile.
    assert (clean.miss_prob, clean.split_prob, clean.wrong_class_prob) == (0.08, 0.05, 0.04)
    assert not clean.sensor_artifacts and real.sensor_artifacts
    own = NoiseConfig.realistic(drift_rot_deg=0.0, merge_prob=0.25)
    assert own.drift_rot_deg == 0.0 and own.merge_prob == 0.25 and own.drift_trans_m == 0.015
    with pytest.raises(ValueError, match="noise.profile must be one of clean, realistic"):
        NoiseConfig(profile="noisy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise.merge_prob must lie in"):
        NoiseConfig(merge_prob=1.5)
    with pytest.raises(ValueError, match="noise.miss_run_frames must be >= 1"):
        NoiseConfig(miss_run_frames=0.5)
    with pytest.raises(ValueError, match="noise.similar_groups"):
        NoiseConfig(similar_groups=("chair",))


def test_cli_noise_profile_flag_and_override():
    parser = build_parser()
    args = parser.parse_args(["synth", "out", "--noise-profile", "realistic", "--noise.drift-rot-deg", "0"])
    cfg = dataclass_from_args(SynthConfig, args)
    assert cfg.noise.profile == "realistic" and cfg.noise.drift_rot_deg == 0.0
    assert cfg.noise.depth_max_m == 5.0
    default = dataclass_from_args(SynthConfig, parser.parse_args(["synth", "out"]))
    assert default.noise == NoiseConfig()
    same = dataclass_from_args(
        SynthConfig, parser.parse_args(["synth", "out", "--noise.profile", "realistic"])
    )
    assert same.noise == NoiseConfig(profile="realistic")


# ----------------------------------------------------------------------------- depth


def test_sensor_depth_range_grazing_and_quantisation():
    rng = np.random.default_rng(0)
    H, W = 120, 160
    true = np.tile(np.linspace(0.1, 7.0, W, dtype=np.float32), (H, 1))
    cos = np.full((H, W), np.cos(np.deg2rad(80.0)), dtype=np.float32)
    cos[:, : W // 2] = 1.0  # head-on half: never dropped for grazing
    cfg = _only(depth_min_m=0.25, depth_max_m=5.0, grazing_deg=70.0, depth_quant=0.00285)
    out, art = sensor_depth(true, true, cfg, rng, cos_incidence=cos)
    in_range = (true >= 0.25) & (true <= 5.0)
    assert np.all(out[~in_range] == 0) and art.range_dropped == int((~in_range).sum())
    assert np.all(out[:, : W // 2][in_range[:, : W // 2]] > 0)
    # 80 deg incidence with the ramp from 70 to 90 deg: half of the in-range pixels lose depth.
    grazing = in_range.copy()
    grazing[:, : W // 2] = False
    assert _binomial_ok(int((out[grazing] == 0).sum()), int(grazing.sum()), 0.5)
    assert art.grazing_expected == pytest.approx(0.5 * grazing.sum(), rel=1e-5)
    # Disparity steps of 0.00285 / m: every depth is 1 / (k * q), steps grow with z^2.
    z = out[out > 0].astype(np.float64)
    k = 1.0 / (z * 0.00285)
    np.testing.assert_allclose(k, np.round(k), atol=1e-3 * k.max())
    fine = np.concatenate([np.linspace(0.9, 1.1, 2000), np.linspace(4.0, 4.6, 2000)]).astype(np.float32)
    q, _ = sensor_depth(fine[None], fine[None], _only(depth_quant=0.00285), rng)
    levels = np.unique(q[0].astype(np.float64))
    near, far = levels[levels < 2], levels[levels > 2]
    assert np.median(np.diff(near)) == pytest.approx(0.00285 * 1.0**2, rel=0.1)
    assert np.median(np.diff(far)) == pytest.approx(0.00285 * 4.3**2, rel=0.1)
    assert np.abs(q[0] - fine).max() <= 0.5 * 0.00285 * 4.6**2 * 1.05


def test_sensor_depth_dark_glossy_holes_match_their_fractions():
    H, W = 120, 160
    true = np.full((H, W), 2.0, dtype=np.float32)
    lum = np.full((H, W), 0.5, dtype=np.float32)
    lum[:, :60] = 0.03  # dark
    glossy = np.zeros((H, W), dtype=bool)
    glossy[:, 100:] = True
    cfg = _only(dark_threshold=0.08, dark_drop=0.5, glossy_drop=0.3)
    dark_frac, glossy_frac, other = [], [], []
    for s in range(30):
        out, art = sensor_depth(true, true, cfg, np.random.default_rng(s), luminance=lum, glossy=glossy)
        assert art.dark_pixels == 60 * H and art.glossy_pixels == 60 * H
        dark_frac.append((out[:, :60] == 0).mean())
        glossy_frac.append((out[:, 100:] == 0).mean())
        other.append((out[:, 60:100] == 0).mean())
    # Holes come in blobs (correlated pixels): compare the mean over 30 frames.
    assert np.mean(dark_frac) == pytest.approx(0.5, abs=0.04)
    assert np.mean(glossy_frac) == pytest.approx(0.3, abs=0.04)
    assert max(other) == 0.0
    # Blobs, not salt and pepper: a dropped pixel's right neighbour is mostly dropped too.
    out, _ = sensor_depth(true, true, cfg, np.random.default_rng(99), luminance=lum, glossy=glossy)
    hole = out[:, :59] == 0
    assert (out[:, 1:60][hole] == 0).mean() > 0.7  # independent pixels: 0.5


def test_sensor_depth_flying_pixels_at_edges():
    H, W = 100, 100
    true = np.full((H, W), 3.0, dtype=np.float32)
    true[:, :50] = 1.0  # a vertical depth edge between columns 49 and 50
    cfg = _only(flying_prob=0.5, flying_edge_m=0.1)
    n_fly, n_edge = 0, 0
    for s in range(20):
        out, art = sensor_depth(true, true, cfg, np.random.default_rng(s))
        moved = out != true
        assert np.all(moved[:, :49] == 0) and np.all(moved[:, 51:] == 0)  # only the edge columns
        assert art.edge_pixels == 2 * H
        between = out[moved]
        assert np.all((between > 1.0 + 0.2 * 2 - 1e-5) & (between < 3.0 - 0.2 * 2 + 1e-5))
        n_fly += int(moved.sum())
        n_edge += art.edge_pixels
    assert _binomial_ok(n_fly, n_edge, 0.5)


def test_realistic_depth_noise_sigma_follows_z_squared():
    cfg = NoiseConfig(profile="realistic")
    from simgen.synth.noise import noisy_depth

    for z0 in (1.0, 3.0):
        z = np.full((200, 200), z0, dtype=np.float32)
        err = noisy_depth(z, cfg, np.random.default_rng(0)).astype(np.float64) - z0
        assert err.std() == pytest.approx(0.0019 + 0.0015 * (z0**2 - 1), rel=0.05)


# ----------------------------------------------------------------------------- poses, blur


def test_pose_drift_rate_per_distance():
    n = 400
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.linspace(0.0, 40.0, n)  # 40 m straight, 0.1 m per frame
    cfg = NoiseConfig(drift_trans_m=0.015, drift_rot_deg=1.0)
    steps_t, steps_r, end_t, end_r = [], [], [], []
    for s in range(20):
        out, err = drift_poses(c2w, cfg, np.random.default_rng(s))
        assert np.all(err[0] == 0)
        np.testing.assert_allclose(out[:, :3, 3] - c2w[:, :3, 3], err[:, 3:], atol=1e-12)
        rot = Rotation.from_matrix(out[:, :3, :3]).as_rotvec()
        np.testing.assert_allclose(rot, err[:, :3], atol=1e-9)
        scale = np.sqrt(0.1 / 10.0)
        steps_t.append(np.diff(err[:, 3:], axis=0) / scale)
        steps_r.append(np.diff(err[:, :3], axis=0) / scale)
        k = 100  # frame at 10 m
        end_t.append(np.linalg.norm(err[k, 3:]))
        end_r.append(np.rad2deg(np.linalg.norm(err[k, :3])))
    assert np.concatenate(steps_t).std() == pytest.approx(0.015 / np.sqrt(3), rel=0.05)
    assert np.rad2deg(np.concatenate(steps_r).std()) == pytest.approx(1.0 / np.sqrt(3), rel=0.05)
    # RMS after 10 m travelled (20 walks: a loose check of the headline figure).
    assert np.sqrt(np.mean(np.square(end_t))) == pytest.approx(0.015, rel=0.35)
    assert np.sqrt(np.mean(np.square(end_r))) == pytest.approx(1.0, rel=0.35)
    same, _ = drift_poses(c2w, NoiseConfig(), np.random.default_rng(0))
    np.testing.assert_array_equal(same, c2w)


def test_motion_blur_spreads_along_its_direction():
    img = np.zeros((41, 41, 3), dtype=np.uint8)
    img[20, 20] = 255
    out = motion_blur(img, 10.0, 0.0).astype(float)[..., 0]
    cols = np.nonzero(out[20] > 0)[0]
    assert out[:19].sum() == 0 and out[22:].sum() == 0  # horizontal: stays on its row
    assert 9 <= cols.max() - cols.min() + 1 <= 12
    vert = motion_blur(img, 10.0, np.pi / 2).astype(float)[..., 0]
    assert vert[:, :19].sum() == 0 and vert[:, 22:].sum() == 0


# ----------------------------------------------------------------------------- segmenter errors


def _chairs_frame(n_pairs: int = 6) -> tuple[np.ndarray, dict[int, int]]:
    """A 120x160 GT image: floor + ``n_pairs`` pairs of touching chairs + a lone table."""
    gt = np.full((120, 160), 1, dtype=np.int32)  # floor segment 1
    segs = {1: CAT["floor"]}
    sid = 2
    for p in range(n_pairs):
        r, c = 10 + (p // 3) * 50, 10 + (p % 3) * 50
        gt[r : r + 30, c : c + 15] = sid
        gt[r : r + 30, c + 15 : c + 30] = sid + 1  # touching the first along a pixel edge
        segs[sid] = segs[sid + 1] = CAT["chair"]
        sid += 2
    gt[105:118, 140:158] = sid
    segs[sid] = CAT["table"]
    return gt, segs


def test_touching_pairs():
    gt, segs = _chairs_frame(2)
    pairs = touching_pairs(gt)
    assert (2, 3) in pairs and (4, 5) in pairs and (2, 4) not in pairs
    assert all(1 in p for p in pairs - {(2, 3), (4, 5)})  # the rest touch the floor


def test_merge_of_touching_same_class_things():
    gt, segs = _chairs_frame()
    cfg = _only(merge_prob=0.4, random_ids=False)
    merged = cand = 0
    for s in range(60):
        pl = pseudo_labels(gt, segs, THING_IDS, STUFF_IDS, cfg, np.random.default_rng(s))
        cand += pl.events["merge_candidates"]
        for a, b in pl.events["merged"]:
            merged += 1
            # One segment covers both chairs.
            assert len(np.unique(pl.panoptic[(gt == a) | (gt == b)])) == 1
        assert pl.events["merge_candidates"] == 6  # the 6 chair pairs; chair-floor and table never
    assert _binomial_ok(merged, cand, 0.4)


def test_similar_class_confusion_stays_in_its_group():
    gt, segs = _chairs_frame()
    similar = similar_lookup(NoiseConfig().similar_groups, NAMES)
    assert similar[CAT["chair"]] == (CAT["sofa"],)
    assert set(similar[CAT["cabinet"]]) == {CAT["table"], CAT["shelf"], CAT["box"]}
    cfg = _only(similar_class_prob=0.2)
    changed = total = 0
    for s in range(60):
        pl = pseudo_labels(gt, segs, THING_IDS, STUFF_IDS, cfg, np.random.default_rng(s), similar=similar)
        total += pl.events["similar_candidates"]
        for src, new in pl.events["similar_class"]:
            assert (segs[src], new) in ((CAT["chair"], CAT["sofa"]), (CAT["table"], CAT["cabinet"]),
                                        (CAT["table"], CAT["shelf"]))  # fmt: skip
            changed += 1
        assert {s.category_id for s in pl.segments} <= {CAT["floor"], CAT["chair"], CAT["sofa"], CAT["table"],
                                                        CAT["cabinet"], CAT["shelf"]}  # fmt: skip
    assert total == 60 * 13  # 12 chairs + 1 table per frame; the floor (stuff) is never confused
    assert _binomial_ok(changed, total, 0.2)


def test_duplicates_are_low_score_parts():
    gt, segs = _chairs_frame()
    cfg = _only(duplicate_prob=0.3, duplicate_score=(0.05, 0.3))
    dup = total = 0
    for s in range(40):
        pl = pseudo_labels(gt, segs, THING_IDS, STUFF_IDS, cfg, np.random.default_rng(s))
        total += 13
        dup += len(pl.events["duplicate"])
        low = [x for x in pl.segments if x.score < 0.5]
        assert len(low) == len(pl.events["duplicate"])
        for x in low:
            assert 0.05 <= x.score <= 0.3
            src = pl.source[x.id]
            part = (pl.panoptic == x.id).sum() / (gt == src).sum()
            assert 0.15 <= part <= 0.55  # a fifth to a half of the object
            assert x.category_id == segs[src]
    assert _binomial_ok(dup, total, 0.3)


def test_miss_runs_rate_and_run_length():
    runs = miss_runs(4000, 30, 0.05, 10.0, np.random.default_rng(0))
    assert runs.mean() == pytest.approx(0.05, abs=0.01)
    lengths = []
    for j in range(runs.shape[1]):
        col = np.r_[0, runs[:, j].astype(int), 0]
        starts, ends = np.nonzero(np.diff(col) == 1)[0], np.nonzero(np.diff(col) == -1)[0]
        lengths += list(ends - starts)
    assert np.mean(lengths) == pytest.approx(10.0, rel=0.12)
    # A forced miss removes exactly that object from the frame's labels.
    gt, segs = _chairs_frame()
    pl = pseudo_labels(
        gt, segs, THING_IDS, STUFF_IDS, _only(random_ids=False), np.random.default_rng(0), {3, 7}
    )
    assert pl.events["missed_run"] == [3, 7]
    assert not np.isin(pl.panoptic, [3, 7]).any() and (pl.panoptic == 2).sum() == (gt == 2).sum()


def test_split_only_large_things():
    gt, segs = _chairs_frame()
    gt[60:110, 100:160] = 99  # one large table, 3000 px
    segs[99] = CAT["table"]
    cfg = _only(split_prob=0.5, split_min_area_px=1500)
    split = 0
    for s in range(100):
        pl = pseudo_labels(gt, segs, THING_IDS, STUFF_IDS, cfg, np.random.default_rng(s))
        assert set(pl.events["split"]) <= {99}
        split += len(pl.events["split"])
    assert _binomial_ok(split, 100, 0.5)


# ----------------------------------------------------------------------------- a generated scene


@pytest.fixture(scope="module")
def tiny_realistic(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("real") / "tiny", "tiny", seed=3, noise="realistic", frames=24)


def test_generated_realistic_scene(tiny_realistic):
    root = tiny_realistic
    scene = load_scene(root)  # a valid scene
    log = json.loads((root / "gt" / "synth.json").read_text())
    assert log["config"]["noise"]["profile"] == "realistic"
    true = np.array(log["true_c2w"])
    drift = np.array(log["pose_drift"])
    stored = np.stack([f.c2w for f in scene.frames])
    # Stored position = true + drift + jitter (2 mm std per axis).
    resid = stored[:, :3, 3] - true[:, :3, 3] - drift[:, 3:]
    assert np.abs(resid).max() < 5 * 0.002 + 1e-3  # +1e-3: 8-decimal rounding is far below
    assert np.linalg.norm(drift[-1, 3:]) > 0
    # Depth: nothing beyond 5 m or nearer than 0.25 m, and the logged drops are real holes.
    for i in range(len(scene)):
        d = scene.depth(i)
        assert d[d > 0].max() <= 5.0 + 0.05 and d[d > 0].min() >= 0.25 - 0.01
        ev = log["noise_events"][i]["depth"]
        gt_void = scene.gt.panoptic(i) == 0
        dropped = ev["range_dropped"] + ev["grazing_dropped"] + ev["dark_dropped"] + ev["glossy_dropped"]
        assert (d == 0).sum() >= dropped + gt_void.sum() - 5  # PNG mm rounding can zero nothing else
    # Same seed, same files.
    again = synthesize(root.parent / "again", "tiny", seed=3, noise="realistic", frames=24)
    for rel in ("transforms.json", "depth/00005.png", "panoptic/00005.png", "rgb/00005.png"):
        assert (again / rel).read_bytes() == (root / rel).read_bytes()


# ----------------------------------------------------------------------------- the drift remedy


def test_frame_to_model_alignment_undoes_a_pose_error(tmp_path):
    """Fusion's frame-to-model alignment brings a keyframe with a 3 cm / 1.5 deg pose error back."""
    from simgen.recon.fusion.align import align_to_model
    from simgen.recon.fusion.tsdf import VoxelBlockVolume

    scene = load_scene(synthesize(tmp_path / "s", "tiny", seed=2, noise=False, frames=16, width=160, height=120),
                       validate=False)  # fmt: skip
    vol = VoxelBlockVolume(0.03, 0.09, 1)
    K = scene.frames[0].intrinsics
    for i in range(0, 16, 2):  # the model: every other frame at its exact pose
        vol.integrate(scene.depth(i), K, scene.frames[i].c2w_cv)
    rng = np.random.default_rng(0)
    for i in (3, 7, 11):
        true = scene.frames[i].c2w_cv
        err = np.eye(4)
        axis = rng.normal(size=3)
        err[:3, :3] = Rotation.from_rotvec(np.deg2rad(1.5) * axis / np.linalg.norm(axis)).as_matrix()
        err[:3, 3] = rng.normal(size=3) / np.sqrt(3) * 0.03
        start = err @ true
        res = align_to_model(vol, scene.depth(i), K, start)
        assert res.accepted and res.rmse_after_m < res.rmse_before_m
        dt = np.linalg.norm(res.c2w[:3, 3] - true[:3, 3])
        dr = np.rad2deg(Rotation.from_matrix(res.c2w[:3, :3] @ true[:3, :3].T).magnitude())
        assert dt < 0.01 and dr < 0.3, (i, dt, dr)  # from ~3 cm / 1.5 deg
    # Nothing to align against: the pose is kept.
    empty = align_to_model(VoxelBlockVolume(0.03, 0.09, 1), scene.depth(3), K, scene.frames[3].c2w_cv)
    assert not empty.accepted and np.array_equal(empty.c2w, scene.frames[3].c2w_cv)
