"""simgen synth: determinism, exact GT (depth on the mesh, labels), noise statistics, two-rooms twins, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from simgen.cli import main as simgen_main
from simgen.data.camera import backproject
from simgen.data.scene import load_scene, validate_scene
from simgen.synth import CATEGORIES, STUFF_IDS, THING_IDS, NoiseConfig, preset_config, synthesize
from simgen.synth.generate import make_scene
from simgen.synth.noise import noisy_depth, noisy_pose, noisy_rgb, pseudo_labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def gt_frames(tmp_path_factory):
    """Exact GT panoptic images of a room at 160x120 (the material for the noise statistics)."""
    root = synthesize(
        tmp_path_factory.mktemp("synth") / "room",
        "room",
        seed=5,
        frames=24,
        width=160,
        height=120,
        noise=False,
    )
    scene = load_scene(root, validate=False)
    return [scene.gt.panoptic(i) for i in range(len(scene))], scene.gt.segments, scene


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- files and format


def test_same_seed_identical_files(tiny, tmp_path):
    again = _files(synthesize(tmp_path / "a", "tiny", seed=0))
    first = _files(tiny)
    assert first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    other = _files(synthesize(tmp_path / "b", "tiny", seed=1))
    assert other["transforms.json"] != first["transforms.json"]
    assert other["gt/mesh.ply"] != first["gt/mesh.ply"]


def test_tiny_scene_is_valid_and_small(tiny):
    scene, problems, stats = validate_scene(tiny)
    assert problems == []
    assert 1 <= len(scene) <= 20
    K = scene.frames[0].intrinsics
    assert K.width <= 96 and K.height <= 72
    assert {c.id: (c.name, c.isthing) for c in scene.categories.values()} == {
        c.id: (c.name, c.isthing) for c in CATEGORIES
    }
    test = scene.split_indices("test")
    assert (
        test
        and all(i % 10 == 5 for i in test)
        and len(scene.split_indices("train")) == len(scene) - len(test)
    )
    # A few things, plus one segment per stuff category.
    cats = list(scene.gt.segments.values())
    assert sorted(c for c in cats if c in STUFF_IDS) == sorted(STUFF_IDS)
    assert 3 <= sum(c in THING_IDS for c in cats) <= 5


def test_camera_walk_is_a_person_scanning(tiny, tmp_path):
    root = synthesize(tmp_path / "r", "room", seed=2, width=40, height=30, noise=False)
    scene = load_scene(root, validate=False)
    c2w = np.stack([f.c2w for f in scene.frames])
    assert len(scene) == 150
    assert np.all((c2w[:, 2, 3] >= 1.4) & (c2w[:, 2, 3] <= 1.6))  # eye height
    step = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
    assert step.max() < 0.2  # walking, no jumps
    rel = np.einsum("nji,njk->nik", c2w[:-1, :3, :3], c2w[1:, :3, :3])
    angles = np.rad2deg(Rotation.from_matrix(rel).magnitude())
    assert angles.max() < 8.0  # smooth yaw / pitch changes between frames
    assert np.median(angles) > 0.2  # ... but it does look around
    # Looking slightly down at the room's contents on average, never upside down.
    fwd = -c2w[:, :3, 2]
    assert -0.6 < fwd[:, 2].mean() < 0.0
    assert np.all(c2w[:, 2, 1] > 0.5)  # camera up axis stays roughly world up


# ----------------------------------------------------------------------------- exact ground truth


def test_gt_depth_lies_on_gt_mesh_and_labels_match(tiny):
    scene = load_scene(tiny)
    mesh, vlabels = scene.gt.mesh(), scene.gt.mesh_labels()
    assert len(vlabels) == len(mesh.vertices)
    rng = np.random.default_rng(0)
    pts, ids = [], []
    for i in range(len(scene)):
        f = scene.frames[i]
        depth, gt = scene.depth(i), scene.gt.panoptic(i)
        assert (depth > 0).all()  # closed rooms: every ray hits
        P = backproject(depth.astype(np.float64), f.intrinsics, f.c2w_cv)
        # Pixels whose 3x3 neighbourhood has one GT id: their nearest surface is unambiguous.
        interior = (ndimage.maximum_filter(gt, 3) == gt) & (ndimage.minimum_filter(gt, 3) == gt)
        sel = rng.choice(np.flatnonzero(interior), size=150, replace=False)
        pts.append(P.reshape(-1, 3)[sel])
        ids.append(gt.ravel()[sel])
    pts, ids = np.concatenate(pts), np.concatenate(ids)
    closest, dist, tri = mesh.nearest.on_surface(pts)
    assert dist.max() < 1e-3, f"depth re-projected off the mesh by up to {dist.max() * 1000:.2f} mm"
    face_labels = vlabels[mesh.faces[tri]]
    assert (face_labels == face_labels[:, :1]).all()
    np.testing.assert_array_equal(face_labels[:, 0], ids)


def test_gt_mesh_labels_are_exact_per_segment(tiny):
    scene = load_scene(tiny)
    mesh, vlabels = scene.gt.mesh(), scene.gt.mesh_labels()
    # No vertex is shared between segments: every face's three vertices carry one label.
    fl = vlabels[mesh.faces]
    assert (fl == fl[:, :1]).all()
    assert set(np.unique(vlabels).tolist()) == set(scene.gt.segments)
    # Every GT id in the images is a GT segment; the floor is at z = 0, the room below the ceiling.
    seen = set()
    for i in range(len(scene)):
        seen |= set(np.unique(scene.gt.panoptic(i)).tolist())
    assert seen <= set(scene.gt.segments) and 0 not in seen
    floor_id = next(k for k, v in scene.gt.segments.items() if v == STUFF_IDS[0])
    assert mesh.vertices[vlabels == floor_id][:, 2].max() == pytest.approx(0.0, abs=1e-9)
    things = np.isin(vlabels, [k for k, v in scene.gt.segments.items() if v in THING_IDS])
    assert mesh.vertices[things][:, 2].min() >= -1e-9


def test_rendered_ids_are_the_ray_cast_face_labels():
    from simgen.render import MeshRaycaster
    from simgen.synth.generate import render_frame

    cfg = preset_config("tiny", 3)
    geom, poses = make_scene(cfg)
    K = cfg.intrinsics()
    caster = MeshRaycaster(geom.mesh)
    fr = render_frame(geom, caster, K, poses[0])
    hits = caster.cast(K, np.asarray(poses[0]) @ np.diag([1.0, -1, -1, 1]))
    np.testing.assert_array_equal(fr.gt_panoptic, geom.vertex_segment[geom.mesh.faces[hits.face, 0]])
    assert fr.rgb.dtype == np.uint8 and fr.rgb.std() > 5  # textured, shaded, not flat


# ----------------------------------------------------------------------------- noise statistics


def _apply(gt_frames, cfg: NoiseConfig, reps: int = 1, seed: int = 0):
    frames, segments, _ = gt_frames
    out = []
    for r in range(reps):
        for i, gt in enumerate(frames):
            rng = np.random.default_rng([seed, r, i])
            out.append((gt, pseudo_labels(gt, segments, THING_IDS, STUFF_IDS, cfg, rng)))
    return out


def _quiet(**kw) -> NoiseConfig:
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


def _binomial_ok(k: int, n: int, p: float) -> bool:
    return n > 50 and abs(k / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_noise_off_gives_gt_masks(gt_frames):
    segments = gt_frames[1]
    for gt, pl in _apply(gt_frames, NoiseConfig.off()):
        # Random ids, but a one-to-one relabelling of the GT with the GT categories.
        pairs = np.unique(np.stack([gt.ravel(), pl.panoptic.ravel()]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]
        cat = {s.id: s.category_id for s in pl.segments}
        assert all(cat[b] == segments[a] for a, b in pairs.T)
    for gt, pl in _apply(gt_frames, NoiseConfig.off(random_ids=False)):
        np.testing.assert_array_equal(pl.panoptic, gt)


def test_random_per_frame_ids(gt_frames):
    results = _apply(gt_frames, _quiet())
    ids_of_floor = []
    for _gt, pl in results:
        ids = [s.id for s in pl.segments]
        assert len(ids) == len(set(ids)) and min(ids) >= 1 and max(ids) < 2**24
        floor = {v: k for k, v in pl.source.items()}.get(1)
        ids_of_floor.append(floor)
    assert len(set(ids_of_floor)) == len(ids_of_floor)  # the same GT segment gets a new id every frame


def test_missed_detections_rate(gt_frames):
    segments = gt_frames[1]
    n = k = 0
    for gt, pl in _apply(gt_frames, _quiet(miss_prob=0.3), reps=8):
        for g in np.unique(gt[gt > 0]):
            present = pl.panoptic[gt == g]
            if segments[int(g)] in STUFF_IDS:
                assert (present > 0).all()  # stuff is never missed
                continue
            n += 1
            missed = not (present > 0).any()
            k += missed
            if not missed:  # detected things keep exactly their GT mask (no other noise here)
                assert len(np.unique(present)) == 1 and (pl.panoptic == present[0]).sum() == present.size
    assert _binomial_ok(k, n, 0.3), (k, n)


def test_over_segmentation_rate(gt_frames):
    segments = gt_frames[1]
    n = k = 0
    for gt, pl in _apply(gt_frames, _quiet(split_prob=0.4, split_min_area_px=300), reps=6):
        for g in np.unique(gt[gt > 0]):
            mask = gt == g
            parts = np.unique(pl.panoptic[mask])
            assert (parts > 0).all()  # splitting loses no pixel
            if segments[int(g)] in STUFF_IDS or mask.sum() < 300:
                assert len(parts) == 1
                continue
            n += 1
            assert len(parts) in (1, 2)
            if len(parts) == 2:
                k += 1
                # Two halves of one object, both of its class, covering exactly its mask.
                assert sum((pl.panoptic == p).sum() for p in parts) == mask.sum()
                cats = {s.category_id for s in pl.segments if s.id in parts}
                assert cats == {segments[int(g)]}
    assert _binomial_ok(k, n, 0.4), (k, n)


def test_wrong_class_rate(gt_frames):
    segments = gt_frames[1]
    n = k = 0
    for _gt, pl in _apply(gt_frames, _quiet(wrong_class_prob=0.2), reps=6):
        cat = {s.id: s.category_id for s in pl.segments}
        for pid, g in pl.source.items():
            n += 1
            true = segments[g]
            k += cat[pid] != true
            assert (cat[pid] in THING_IDS) == (true in THING_IDS)  # confusions stay within things / stuff
    assert _binomial_ok(k, n, 0.2), (k, n)


def test_boundary_shrink_leaves_gaps_of_configured_width(gt_frames):
    radii = []
    for gt, pl in _apply(gt_frames, _quiet(shrink_min_px=1, shrink_max_px=3), reps=2):
        for pid, g in pl.source.items():
            mask = gt == g
            # Distance of each pixel of the segment to the nearest pixel with another GT label
            # (the image border is no boundary).
            dist = ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
            kept = pl.panoptic == pid
            assert (kept <= mask).all()
            removed = mask & ~kept
            r = pl.events["shrink_px"][str(g)]
            # The disk of radius r reaches sqrt(r^2 + r): farther pixels stay, nearer ones go.
            assert (dist[kept] > np.sqrt(r * r + r)).all()
            assert (dist[removed] <= np.sqrt(r * r + r) + 1e-9).all()
            assert (removed == (mask & (dist <= np.sqrt(r * r + r)))).all()
            radii.append(r)
        # Unlabeled gaps between neighbouring segments.
        boundary = ndimage.morphological_gradient(gt, size=3) > 0
        assert (pl.panoptic[boundary] == 0).all()
    counts = np.bincount(radii, minlength=4)
    assert counts[0] == 0 and all(_binomial_ok(int(c), len(radii), 1 / 3) for c in counts[1:])


def test_spurious_segments_rate_and_size(gt_frames):
    n_frames, total = 0, 0
    for gt, pl in _apply(gt_frames, _quiet(spurious_per_frame=1.5, min_area_px=1), reps=10):
        n_frames += 1
        spurious = [pid for pid, g in pl.source.items() if g == -1]
        assert len(spurious) == pl.events["spurious"] or len(spurious) < pl.events["spurious"]
        total += pl.events["spurious"]
        scale = gt.shape[1] / 320
        for pid in spurious:
            area = (pl.panoptic == pid).sum()
            assert 1 <= area <= np.pi * (8.0 * scale + 1) ** 2
            assert next(s for s in pl.segments if s.id == pid).category_id in THING_IDS
    mean = total / n_frames
    assert abs(mean - 1.5) <= 4 * np.sqrt(1.5 / n_frames), mean


def test_depth_noise_grows_with_distance(gt_frames):
    scene = gt_frames[2]
    cfg = NoiseConfig(depth_sigma_m=0.01, depth_sigma_quad=0.004)
    z = np.concatenate([scene.depth(i).ravel() for i in range(len(scene))]).astype(np.float64)
    noisy = noisy_depth(z.astype(np.float32)[None], cfg, np.random.default_rng(0))[0].astype(np.float64)
    err = noisy - z
    for lo, hi in ((1.0, 2.0), (2.0, 3.0), (3.0, 4.5)):
        sel = (z >= lo) & (z < hi)
        if sel.sum() < 2000:
            continue
        expected = np.sqrt(np.mean((0.01 + 0.004 * (z[sel] ** 2 - 1)) ** 2))
        assert err[sel].std() == pytest.approx(expected, rel=0.08)
    off = noisy_depth(z.astype(np.float32), NoiseConfig.off(), np.random.default_rng(0))
    np.testing.assert_array_equal(off, z.astype(np.float32))  # no noise at all: the exact depth
    np.testing.assert_array_equal(
        noisy_depth(z.astype(np.float32), NoiseConfig(), np.random.default_rng(0)), z.astype(np.float32)
    )
    drop = noisy_depth(z.astype(np.float32), NoiseConfig(depth_dropout=0.25), np.random.default_rng(1))
    assert (drop == 0).mean() == pytest.approx(0.25, abs=0.01)


def test_rgb_and_pose_noise(gt_frames):
    rgb = np.full((120, 160, 3), 128, dtype=np.uint8)
    noisy = noisy_rgb(rgb, NoiseConfig(rgb_sigma=6.0), np.random.default_rng(0)).astype(float)
    assert noisy.std() == pytest.approx(6.0, rel=0.05)
    rng = np.random.default_rng(0)
    cfg = NoiseConfig(pose_rot_deg=0.5, pose_trans_m=0.02)
    c2w = np.eye(4)
    deltas = [noisy_pose(c2w, cfg, rng) for _ in range(2000)]
    t = np.stack([d[:3, 3] for d in deltas])
    assert t.std(axis=0) == pytest.approx([0.02] * 3, rel=0.1)
    ang = np.rad2deg(np.stack([Rotation.from_matrix(d[:3, :3]).as_rotvec() for d in deltas]))
    assert ang.std(axis=0) == pytest.approx([0.5] * 3, rel=0.1)


def test_written_pseudo_labels_follow_their_log(tmp_path):
    root = synthesize(tmp_path / "n", "tiny", seed=4, noise={"miss_prob": 0.5, "spurious_per_frame": 1.0})
    scene = load_scene(root)
    log = json.loads((root / "gt" / "synth.json").read_text())
    assert log["config"]["noise"]["miss_prob"] == 0.5
    for i in range(len(scene)):
        gt, pan = scene.gt.panoptic(i), scene.panoptic(i)
        src = {int(k): v for k, v in log["pseudo_label_sources"][i].items()}
        assert set(src) == {s.id for s in scene.frames[i].segments}
        for g in log["noise_events"][i]["missed"]:
            assert not any(v == g for v in src.values())
        for pid, g in src.items():
            if g > 0:  # most of a detected segment lies on its GT segment (spurious blobs may cover a bit)
                assert (gt[pan == pid] == g).mean() > 0.5


# ----------------------------------------------------------------------------- two rooms


def _twins_check(root: Path) -> None:
    scene = load_scene(root, validate=False)
    log = json.loads((root / "gt" / "synth.json").read_text())
    a, b = log["twins"]
    seen_a = seen_b = 0
    for i in range(len(scene)):
        ids = set(np.unique(scene.gt.panoptic(i)).tolist())
        assert not (a in ids and b in ids), f"frame {i} sees both twins"
        seen_a += a in ids
        seen_b += b in ids
    assert seen_a >= 3 and seen_b >= 3  # each twin is actually observed
    # Same mesh and colour: in their own object frames the twins' vertices coincide.
    mesh, vl = scene.gt.mesh(), scene.gt.mesh_labels()
    objs = {o["segment_id"]: o for o in log["objects"]}
    assert objs[a]["category_id"] == objs[b]["category_id"] and objs[a]["room"] != objs[b]["room"]
    local = []
    for t in (a, b):
        T = np.asarray(objs[t]["transform"])
        v = mesh.vertices[vl == t]
        local.append((v - T[:3, 3]) @ T[:3, :3])
    np.testing.assert_allclose(local[0], local[1], atol=1e-6)
    np.testing.assert_array_equal(mesh.visual.vertex_colors[vl == a], mesh.visual.vertex_colors[vl == b])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["back-to-back", "apart"])
def test_two_rooms_twins_never_in_one_frame(tmp_path, layout):
    root = synthesize(
        tmp_path / "two", "two-rooms", seed=0, width=64, height=48, noise=False, twin_layout=layout
    )
    _twins_check(root)
    scene = load_scene(root, validate=False)
    log = json.loads((root / "gt" / "synth.json").read_text())
    assert len(scene) == 300 and len(log["rooms"]) == 2
    # back-to-back: one chair depth either side of the shared wall; apart: at the two outer walls
    objs = {o["segment_id"]: o for o in log["objects"]}
    x = sorted(np.asarray(objs[t]["transform"])[0, 3] for t in log["twins"])
    lo, hi = min(r["x0"] for r in log["rooms"]), max(r["x1"] for r in log["rooms"])
    if layout == "back-to-back":
        assert x[1] - x[0] < 1.0
    else:
        assert x[0] - lo < 0.5 and hi - x[1] < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_rooms_twins_full_resolution(tmp_path, seed):
    _twins_check(synthesize(tmp_path / "two", "two-rooms", seed=seed))


# ----------------------------------------------------------------------------- CLI


def test_cli(tmp_path, capsys):
    out, png = tmp_path / "s", tmp_path / "p.png"
    rc = simgen_main(
        [
            "synth",
            str(out),
            "--preset",
            "tiny",
            "--seed",
            "2",
            "--quiet",
            "--noise.miss-prob",
            "0.5",
            "--frames",
            "12",
            "--preview",
            str(png),
        ]
    )
    assert rc == 0
    scene = load_scene(out)
    assert (
        len(scene) == 12
        and scene.meta["synth"]["noise"]["miss_prob"] == 0.5
        and scene.meta["synth"]["seed"] == 2
    )
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 3 * im.size[1]  # four panels side by side
    capsys.readouterr()
    assert simgen_main(["synth", str(out), "--preset", "tiny", "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (
        simgen_main(["synth", str(out), "--preset", "tiny", "--quiet", "--overwrite", "--frames", "5"]) == 0
    )
    assert len(load_scene(out)) == 5 and len(list((out / "rgb").iterdir())) == 5
    assert simgen_main(["synth", str(out), "--overwrite", "--noise.miss-prob", "2"]) == 2
    assert "miss_prob" in capsys.readouterr().err
