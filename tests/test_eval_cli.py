"""``simgen eval`` end to end on a synthetic scene: a perfect build from the GT, then perturbed builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simgen.cli import main
from simgen.eval.evaluate import gt_labels
from simgen.folders import PanopticMesh, read_panoptic_mesh, write_panoptic_mesh

FAST = ["--samples", "30000", "--quiet"]


@pytest.fixture(scope="module")
def scene_dir(tiny_scene_dir) -> Path:
    return tiny_scene_dir


@pytest.fixture(scope="module")
def scene(tiny_scene):
    return tiny_scene


def _gt_mesh(scene) -> PanopticMesh:
    """The scene's GT mesh as a build: semantic = GT category, instance = GT segment id for things, 0 for stuff."""
    m = scene.gt.mesh()
    seg = scene.gt.mesh_labels()
    cat = np.array([scene.gt.segments.get(int(s), -1) if s else -1 for s in seg], np.int32)
    inst = np.where(np.isin(cat, scene.thing_ids), seg, 0)
    return PanopticMesh(m.vertices, m.faces, np.asarray(m.visual.vertex_colors)[:, :3], cat, inst)


def _write_build(root: Path, mesh: PanopticMesh) -> Path:
    write_panoptic_mesh(root / "panoptic_mesh.ply", mesh)
    return root


def _run(build: Path, scene_dir: Path, *extra: str) -> dict:
    assert main(["eval", str(build), "--scene", str(scene_dir), *extra]) == 0
    return json.loads((build / "eval" / "metrics.json").read_text())


def _visible_segments(scene, split: str) -> dict[int, set[int]]:
    """GT category -> GT keys (segment id for things, 0 for stuff) seen in the split's GT images."""
    seen: dict[int, set[int]] = {}
    for i in scene.split_indices(split):
        sem, inst, _ = gt_labels(scene, i)
        for c, k in set(zip(sem.ravel().tolist(), inst.ravel().tolist(), strict=True)):
            if c >= 0:
                seen.setdefault(c, set()).add(k)
    return seen


def test_perfect_build_scores_one(tmp_path, scene_dir, scene, capsys):
    build = _write_build(tmp_path / "perfect", _gt_mesh(scene))
    assert main(["eval", str(build), "--scene", str(scene_dir), "--samples", "30000", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "| PQ^scene " in out and "F-score @ 5 cm" in out
    m = json.loads((build / "eval" / "metrics.json").read_text())
    assert m["frames"] == scene.split_indices("test")
    p = m["panoptic"]
    assert p["pq"] == pytest.approx(1.0) and p["sq"] == pytest.approx(1.0) and p["rq"] == 1.0
    assert p["fp"] == 0 and p["fn"] == 0 and p["tp"] > 0
    assert m["semantic_2d"]["miou"] == pytest.approx(1.0) and m["semantic_2d"]["macc"] == pytest.approx(1.0)
    assert m["instance_2d"]["mcov"] == pytest.approx(1.0) and m["instance_2d"]["mwcov"] == pytest.approx(1.0)
    assert m["semantic_3d"]["miou"] == pytest.approx(1.0)
    assert m["instance_3d"]["mcov"] == pytest.approx(1.0)
    g = m["geometry"]
    assert g["fscore"] == 1.0 and g["chamfer_l1_cm"] == pytest.approx(0.0, abs=1e-6)
    a = m["appearance"]
    assert a["renderer"] == "mesh-vertex-colour" and a["depth_absrel"] < 1e-3 and a["depth_coverage"] == 1.0
    # Outputs: the table and the picture report.
    md = (build / "eval" / "metrics.md").read_text()
    assert "| PQ^scene " in md and "100.00" in md
    report = build / "eval" / "report"
    from PIL import Image

    for name in ("frames.png", "per_class_iou.png", "confusion.png", "topdown.png"):
        with Image.open(report / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200, name
    assert "![" in (report / "report.md").read_text()
    assert not list((build / "eval").glob(".*"))  # no temporary files left behind


def test_swapping_two_objects_labels_costs_what_hand_counting_says(tmp_path, scene_dir, scene):
    split = "all"
    seen = _visible_segments(scene, split)
    things = [c for c in seen if scene.categories[c].isthing]
    # Two visible objects of different classes.
    a_cls, b_cls = things[0], things[1]
    a, b = sorted(seen[a_cls])[0], sorted(seen[b_cls])[0]
    mesh = _gt_mesh(scene)
    seg = scene.gt.mesh_labels()
    sa, sb = seg == a, seg == b
    mesh.semantic[sa], mesh.semantic[sb] = b_cls, a_cls
    mesh.instance[sa], mesh.instance[sb] = b, a
    m = _run(_write_build(tmp_path / "swap", mesh), scene_dir, "--split", split, "--no-pictures", *FAST)

    # By hand: object a is now (b_cls, b) and object b is (a_cls, a): for class a_cls, GT a is missed (FN)
    # and the prediction on object b is a false positive; the same for b_cls. Every other segment is
    # rendered exactly, so its IoU is 1 and SQ = 1 wherever there is a TP.
    per_class = {}
    for c, keys in seen.items():
        tp = len(keys) - (c == a_cls) - (c == b_cls)
        per_class[c] = tp / (tp + 0.5 * 1 * (c in (a_cls, b_cls)) + 0.5 * 1 * (c in (a_cls, b_cls)))
    expected_pq = np.mean(list(per_class.values()))
    assert m["panoptic"]["pq"] == pytest.approx(expected_pq, abs=1e-9)
    assert m["panoptic"]["fp"] == 2 and m["panoptic"]["fn"] == 2
    assert m["panoptic"]["sq"] == pytest.approx(
        np.mean([0.0 if len(seen[c]) == 1 and c in (a_cls, b_cls) else 1.0 for c in seen])
    )
    # 2D mCov pairs segments as PQ^scene does (same class): the two swapped objects score 0, the rest 1.
    n_objects = sum(len(seen[c]) for c in things)
    assert m["instance_2d"]["mcov"] == pytest.approx((n_objects - 2) / n_objects)
    assert m["instance_2d"]["matching"] == "panoptic"
    # 3D mCov is class-agnostic (Hungarian on the masks): each object is still covered exactly.
    assert m["instance_3d"]["mcov"] == pytest.approx(1.0) and m["instance_3d"]["matching"] == "hungarian"
    m = _run(tmp_path / "swap", scene_dir, "--split", split, "--no-pictures", "--coverage-2d", "max", *FAST)
    assert m["instance_2d"]["mcov"] == pytest.approx(1.0)
    assert m["semantic_2d"]["miou"] < 1.0
    assert m["geometry"]["fscore"] == 1.0


def test_unlabelled_stuff_class_lowers_miou_exactly(tmp_path, scene_dir, scene):
    seen = _visible_segments(scene, "test")
    stuff = [c for c in seen if not scene.categories[c].isthing]
    mesh = _gt_mesh(scene)
    mesh.semantic[mesh.semantic == stuff[0]] = -1
    m = _run(_write_build(tmp_path / "hole", mesh), scene_dir, "--no-pictures", *FAST)
    n = len(seen)  # classes present in the test frames' GT
    assert m["semantic_2d"]["miou"] == pytest.approx((n - 1) / n)
    assert m["panoptic"]["pq"] == pytest.approx((n - 1) / n)  # that stuff class: one FN, PQ 0
    assert m["panoptic"]["fn"] == 1 and m["panoptic"]["fp"] == 0
    # With the torchmetrics convention a GT segment predicted entirely void is ignored instead.
    m = _run(tmp_path / "hole", scene_dir, "--no-pictures", "--ignore-pred-void", *FAST)
    assert m["panoptic"]["fn"] == 0 and m["panoptic"]["pq"] == pytest.approx(1.0)


def test_shifted_mesh_lowers_geometry_and_panoptic_scores(tmp_path, scene_dir, scene):
    mesh = _gt_mesh(scene)
    shift = np.array([0.1, 0.0, 0.0])
    mesh.vertices += shift.astype(np.float32)
    m = _run(_write_build(tmp_path / "shift", mesh), scene_dir, "--no-pictures", *FAST)
    g = m["geometry"]
    # Samples use the same seed on the same faces, so each predicted sample is a GT sample moved 10 cm:
    # no point can be farther than 10 cm from the other set.
    assert 0.5 < g["accuracy_cm"] <= 10.0 + 1e-4
    assert 0.5 < g["completeness_cm"] <= 10.0 + 1e-4
    # Surfaces facing +-x (walls, object sides) end up 10 cm off; horizontal ones slide within their plane.
    tm = read_panoptic_mesh(tmp_path / "shift" / "panoptic_mesh.ply").to_trimesh()
    facing_x = tm.area_faces[np.abs(tm.face_normals[:, 0]) > 0.99].sum() / tm.area
    assert g["precision"] < 1.0 - 0.3 * facing_x
    assert g["fscore"] < 0.95
    assert m["panoptic"]["pq"] < 0.99
    assert m["appearance"]["depth_absrel"] > 1e-3


def test_clear_errors(tmp_path, scene_dir, scene, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), "--scene", str(scene_dir), "--quiet"]) == 1
    assert "panoptic_mesh.ply: missing" in capsys.readouterr().err

    build = _write_build(tmp_path / "b", _gt_mesh(scene))
    no_gt = tmp_path / "no_gt"
    import shutil

    shutil.copytree(scene_dir, no_gt, ignore=shutil.ignore_patterns("gt"))
    assert main(["eval", str(build), "--scene", str(no_gt), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no ground truth" in err and str(no_gt / "gt") in err

    mesh = _gt_mesh(scene)
    mesh.semantic[:3] = 99
    bad = _write_build(tmp_path / "bad", mesh)
    assert main(["eval", str(bad), "--scene", str(scene_dir), "--quiet"]) == 1
    assert "semantic id(s) [99]" in capsys.readouterr().err
    assert not (bad / "eval" / "metrics.json").exists()


def test_observed_mask_depth_test_by_hand():
    from types import SimpleNamespace

    from simgen.data.camera import Intrinsics
    from simgen.eval.evaluate import observed_mask

    # One camera at the origin looking along +z (OpenCV axes), a 4 x 4 image, depth 2 m except the
    # pixel (u=3, v=3) which has no depth.
    K = Intrinsics(2.0, 2.0, 2.0, 2.0, 4, 4)
    depth = np.full((4, 4), 2.0, np.float32)
    depth[3, 3] = 0
    frame = SimpleNamespace(intrinsics=K, c2w_cv=np.eye(4), name="f0", depth_path="f0.png")
    scene = SimpleNamespace(frames=[frame], depth=lambda i: depth)
    pts = np.array(
        [
            [0.0, 0.0, 2.0],  # centre, on the depth surface
            [0.0, 0.0, 2.04],  # 4 cm behind it: within the 5 cm tolerance
            [0.0, 0.0, 2.2],  # hidden behind the observed surface
            [0.0, 0.0, -2.0],  # behind the camera
            [5.0, 0.0, 2.0],  # outside the image
            [0.9, 0.9, 2.0],  # u = v = 2 + 2 * 0.45 = 2.9 -> pixel (2, 2), observed
            [1.1, 1.1, 2.0],  # u = v = 3.1 -> pixel (3, 3), no depth there
        ]
    )
    assert observed_mask(pts, scene, 0.05).tolist() == [True, True, False, False, False, True, False]
    # A second camera that sees the hidden point makes it observed.
    frame2 = SimpleNamespace(intrinsics=K, c2w_cv=np.eye(4), name="f1", depth_path="f1.png")
    far = np.full((4, 4), 2.2, np.float32)
    scene2 = SimpleNamespace(frames=[frame, frame2], depth=lambda i: depth if i == 0 else far)
    assert observed_mask(pts, scene2, 0.05)[2]


def test_gaussians_in_the_build_are_scored(tmp_path, scene_dir, scene):
    pytest.importorskip("torch")
    from simgen.render.gaussians import save_ply
    from simgen.splat.gaussians import init_from_mesh

    mesh = _gt_mesh(scene)
    build = _write_build(tmp_path / "gs", mesh)
    g = init_from_mesh(mesh, count=20000, sh_degree=0, seed=0)
    save_ply(build / "gaussians.ply", g)
    m = _run(build, scene_dir, "--no-pictures", *FAST)
    a = m["appearance"]
    assert a["renderer"] == "gaussians" and a["note"] is None
    # Gaussians lying on the GT surface render its depth closely wherever they cover it.
    assert a["depth_coverage"] > 0.5 and a["depth_absrel"] < 0.05
    assert a["psnr"] > 10
    (build / "gaussians.ply").write_text("not a ply")
    assert main(["eval", str(build), "--scene", str(scene_dir), "--quiet", "--no-pictures"]) == 1
