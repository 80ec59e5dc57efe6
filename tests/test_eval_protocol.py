"""``simgen eval``'s true-pose protocol: the GT frame aligned onto the build frame from the true and the
stored camera centres, the build rendered at the aligned true poses, the GT culled by exact visibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.gt import gt_panoptic_mesh

from simgen.cli import main
from simgen.data.scene import load_scene
from simgen.eval.config import EvalConfig
from simgen.eval.evaluate import EvalError, evaluate, markdown_table, pose_alignment, rigid_fit
from simgen.folders import PanopticMesh, write_panoptic_mesh

FAST = {"samples": 30_000, "pictures": False, "quiet": True}


def _rot(axis: np.ndarray, deg: float) -> np.ndarray:
    """(3, 3) rotation about ``axis`` by ``deg`` degrees (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(deg)
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _rigid(axis, deg: float, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _rot(axis, deg), t
    return T


def _moved(mesh: PanopticMesh, T: np.ndarray) -> PanopticMesh:
    v = np.asarray(mesh.vertices, np.float64) @ T[:3, :3].T + T[:3, 3]
    return PanopticMesh(v, mesh.faces, mesh.colors, mesh.semantic, mesh.instance)


def _build(root: Path, mesh: PanopticMesh) -> Path:
    write_panoptic_mesh(root / "panoptic_mesh.ply", mesh)
    return root


def _figures(m: dict) -> dict:
    """metrics.json minus what legitimately differs between two runs (protocol, config, timing)."""
    return {k: v for k, v in m.items() if k not in ("protocol", "config", "timing_s")}


def test_rigid_fit_recovers_a_known_transform_and_the_identity_exactly():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3)) * 3
    T = _rigid([0.2, -0.5, 1.0], 7.0, [0.3, -1.2, 0.05])
    dst = src @ T[:3, :3].T + T[:3, 3]
    assert np.allclose(rigid_fit(src, dst), T, atol=1e-12)
    # Noisy correspondences: the least-squares fit, so the residual is the noise's, not more.
    noisy = dst + rng.normal(scale=0.01, size=dst.shape)
    assert np.allclose(rigid_fit(src, noisy), T, atol=0.01)
    # Mirrored point sets still give a rotation (det +1), never a reflection.
    assert np.linalg.det(rigid_fit(src, src * [1, 1, -1])[:3, :3]) == pytest.approx(1.0)
    # Equal poses give exactly the identity (no round-off), so a scene without pose noise scores as before.
    poses = np.stack([_rigid([0, 0, 1], 10.0 * i, [i, 0.5 * i, 1.5]) for i in range(5)])
    a = pose_alignment(poses, poses)
    assert (a.T == np.eye(4)).all() and a.residual_rms_mm == 0.0 and a.frames == 5


def test_collinear_camera_centres_use_the_camera_axes():
    # Cameras on one line: the centres leave the rotation about that line free; the axes fix it.
    T = _rigid([1.0, 0.0, 0.0], 20.0, [0.1, 0.2, 0.3])
    true = np.stack([_rigid([0, 0, 1], 5.0 * i, [0.5 * i, 0, 1.2]) for i in range(6)])
    stored = T @ true
    a = pose_alignment(true, stored)
    assert a.points == "centres+axes"
    assert np.allclose(a.T, T, atol=1e-9) and a.residual_rms_mm < 1e-6


def test_gt_mesh_scores_one_on_a_drifted_scene_under_true_poses(tmp_path, tiny_drift_scene_dir):
    scene = load_scene(tiny_drift_scene_dir)
    assert scene.gt.true_c2w is not None and len(scene.gt.true_c2w) == len(scene.frames)
    drift = np.linalg.norm(
        np.stack([f.c2w[:3, 3] for f in scene.frames]) - scene.gt.true_c2w[:, :3, 3], axis=1
    )
    assert drift.max() > 0.01  # the stored poses drifted by centimetres
    gt = gt_panoptic_mesh(scene)
    build = _build(tmp_path / "gt", gt)
    old = evaluate(build, scene.root, EvalConfig(poses="stored", **FAST))["metrics"]
    new = evaluate(build, scene.root, EvalConfig(**FAST))["metrics"]
    assert old["protocol"]["poses"] == "stored" and new["protocol"]["poses"] == "true"
    # Rendered at the drifted stored poses, the exact GT mesh loses PQ against the true-pose GT images.
    assert old["panoptic"]["pq"] < 0.8
    # Rendered at the true poses (aligned by a near-identity rigid map), it scores ~1.
    a = new["protocol"]["alignment"]
    assert 0 < a["residual_rms_mm"] < 30 and a["points"] == "centres"
    assert new["panoptic"]["pq"] > 0.97 and new["geometry"]["fscore"] > 0.99
    # The GT moved by the alignment is the ideal build in the build frame: it scores 1 exactly.
    T = np.array(a["gt_to_build"])
    ideal = evaluate(_build(tmp_path / "ideal", _moved(gt, T)), scene.root, EvalConfig(**FAST))["metrics"]
    assert ideal["panoptic"]["pq"] == pytest.approx(1.0, abs=1e-3) and ideal["panoptic"]["rq"] == 1.0
    g = ideal["geometry"]
    assert g["fscore"] == 1.0 and g["chamfer_l1_cm"] < 1e-3
    assert ideal["semantic_3d"]["miou"] == pytest.approx(1.0)
    # The report says which protocol scored it, with the residual.
    assert f"{a['residual_rms_mm']:.1f} mm RMS" in markdown_table(new)
    assert "stored poses" in markdown_table(old)


def test_build_shifted_by_a_known_rigid_transform_is_aligned_back(tmp_path, tiny_scene_dir, tiny_scene):
    # A scan whose whole trajectory (and so its build) sits in another frame: stored = S @ true.
    S = _rigid([0.3, 0.4, 1.0], 25.0, [1.5, -0.7, 0.2])
    scene_dir = tmp_path / "moved"
    shutil.copytree(tiny_scene_dir, scene_dir)
    tj = json.loads((scene_dir / "transforms.json").read_text())
    for fr in tj["frames"]:
        fr["transform_matrix"] = (S @ np.array(fr["transform_matrix"])).tolist()
    (scene_dir / "transforms.json").write_text(json.dumps(tj))
    build = _build(tmp_path / "b", _moved(gt_panoptic_mesh(tiny_scene), S))
    m = evaluate(build, scene_dir, EvalConfig(**FAST))["metrics"]
    a = m["protocol"]["alignment"]
    assert np.allclose(np.array(a["gt_to_build"]), S, atol=1e-6) and a["residual_rms_mm"] < 1e-3
    assert m["panoptic"]["pq"] == pytest.approx(1.0, abs=1e-3)
    assert m["geometry"]["fscore"] == 1.0 and m["geometry"]["chamfer_l1_cm"] < 1e-3
    # Without the alignment the GT mesh stays where it was, 1.7 m and 25 deg away from the build: only
    # where the two floors happen to overlap do surfaces agree.
    old = evaluate(build, scene_dir, EvalConfig(poses="stored", **FAST))["metrics"]
    assert old["geometry"]["fscore"] < 0.5


def test_clean_scene_scores_identically_under_both_protocols(tmp_path, tiny_scene_dir, tiny_scene):
    # The clean tiny scene records true poses equal to the stored ones: identity alignment, and the exact
    # visibility culls the same GT surface as its exact (clean-profile) depth.
    assert tiny_scene.gt.true_c2w is not None
    mesh = gt_panoptic_mesh(tiny_scene)
    mesh.vertices += np.float32([0.06, -0.01, 0.0])  # an imperfect build, so the figures are not all 1
    build = _build(tmp_path / "b", mesh)
    new = evaluate(build, tiny_scene_dir, EvalConfig(**FAST))["metrics"]
    old = evaluate(build, tiny_scene_dir, EvalConfig(poses="stored", **FAST))["metrics"]
    a = new["protocol"]["alignment"]
    assert a["gt_to_build"] == np.eye(4).tolist() and a["residual_rms_mm"] == 0.0
    assert new["panoptic"]["pq"] < 0.99 and new["geometry"]["fscore"] < 1.0
    assert _figures(new) == _figures(old)


def test_scene_without_true_poses_keeps_the_stored_protocol(tmp_path, tiny_scene_dir, tiny_scene):
    scene_dir = tmp_path / "no_true"
    shutil.copytree(tiny_scene_dir, scene_dir)
    gt = json.loads((scene_dir / "gt" / "gt.json").read_text())
    for f in gt["frames"]:
        del f["transform_matrix"]
    (scene_dir / "gt" / "gt.json").write_text(json.dumps(gt))
    build = _build(tmp_path / "b", gt_panoptic_mesh(tiny_scene))
    assert (
        main(
            ["eval", str(build), "--scene", str(scene_dir), "--samples", "30000", "--quiet", "--no-pictures"]
        )
        == 0
    )
    m = json.loads((build / "eval" / "metrics.json").read_text())
    assert m["protocol"]["poses"] == "stored" and m["protocol"]["alignment"] is None
    assert "records no true poses" in m["protocol"]["note"]
    assert "stored poses" in (build / "eval" / "metrics.md").read_text()


def test_the_builds_own_poses_define_its_frame(tmp_path, tiny_scene_dir, tiny_scene):
    # A builder that refined its poses (build.json `poses`, e.g. frame-to-model alignment) built in the
    # frame of those poses, not of the stored ones: the alignment follows them.
    from simgen.folders import BUILD_FILE, fused_poses_record

    S = _rigid([1.0, 0.0, 0.2], -15.0, [0.4, 0.3, -0.1])
    build = _build(tmp_path / "b", _moved(gt_panoptic_mesh(tiny_scene), S))
    keyframes = list(range(0, len(tiny_scene.frames), 3))
    record = {"poses": fused_poses_record({i: S @ tiny_scene.frames[i].c2w_cv for i in keyframes})}
    (build / BUILD_FILE).write_text(json.dumps(record))
    m = evaluate(build, tiny_scene_dir, EvalConfig(**FAST))["metrics"]
    a = m["protocol"]["alignment"]
    assert "build.json" in a["trajectory"] and a["frames"] == len(keyframes)
    assert np.allclose(np.array(a["gt_to_build"]), S, atol=1e-6) and a["residual_rms_mm"] < 1e-3
    assert m["panoptic"]["pq"] == pytest.approx(1.0, abs=1e-3) and m["geometry"]["fscore"] == 1.0
    # A malformed entry is named.
    (build / BUILD_FILE).write_text(json.dumps({"poses": {"frames": [0, 999], "transform_matrix": []}}))
    with pytest.raises(EvalError, match="build.json"):
        evaluate(build, tiny_scene_dir, EvalConfig(**FAST))
