"""Importers: round trips on tiny fixtures in the real Replica (Semantic-NeRF) and ScanNet layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import (
    CLASSES,
    STUFF,
    H,
    W,
    _expected_gt,
    make_replica,
    make_scannet,
)
from PIL import Image

from simgen.cli import main
from simgen.data import io
from simgen.data.camera import GL_TO_CV
from simgen.data.importers.common import (
    DatasetImportError,
    labels_to_panoptic,
    scramble_ids,
)
from simgen.data.importers.replica import ReplicaConfig, import_replica
from simgen.data.importers.scannet import ScanNetConfig, import_scannet
from simgen.data.scene import load_scene


def _check_pseudo_labels(scene, frames_gt: list[np.ndarray]) -> None:
    """Pseudo-labels: per frame a bijection onto the GT segments, ids unrelated across frames."""
    ids_per_segment: dict[int, list[int]] = {}
    for i, gt in enumerate(frames_gt):
        pan = scene.panoptic(i)
        assert np.array_equal(pan > 0, gt > 0)
        cats = {s.id: s.category_id for s in scene.frames[i].segments}
        for pid in np.unique(pan[pan > 0]):
            under = np.unique(gt[pan == pid])
            assert under.size == 1  # one pseudo segment covers exactly one GT segment ...
            assert np.unique(pan[gt == under[0]]).size == 1  # ... and all of it
            assert cats[int(pid)] == under[0] // 1000
            ids_per_segment.setdefault(int(under[0]), []).append(int(pid))
    multi = {k: v for k, v in ids_per_segment.items() if len(v) > 1}
    assert multi, "fixture must show segments in several frames"
    for ids in multi.values():
        assert len(set(ids)) == len(ids)  # never the same id in two frames


# ----------------------------------------------------------------------------- Replica


def test_replica_round_trip_labels_from_gt(tmp_path):
    src, out = tmp_path / "Sequence_1", tmp_path / "scene"
    fx = make_replica(src)
    cfg = ReplicaConfig(labels_from_gt=True, classes=str(src / "classes.json"), test_every=4, quiet=True)
    report = import_replica(src, out, cfg)
    scene = load_scene(out)  # validates every file
    n = len(fx["poses"])
    assert len(scene) == report.frames == n
    K = scene.frames[0].intrinsics
    assert (K.fx, K.fy, K.cx, K.cy, K.width, K.height) == pytest.approx((16.0, 16.0, 16.0, 12.0, W, H))
    assert scene.split_indices("test") == [0, 4, 8]
    assert {c.name: c.isthing for c in scene.categories.values()} == {
        "wall": False,
        "floor": False,
        "chair": True,
        "table": True,
    }
    gts = []
    for k in range(n):  # frame k of the scene is rgb_k (numeric order: rgb_10 after rgb_9)
        np.testing.assert_allclose(scene.frames[k].c2w_cv, fx["poses"][k], atol=1e-7)
        np.testing.assert_allclose(scene.frames[k].c2w, fx["poses"][k] @ GL_TO_CV, atol=1e-7)
        assert np.array_equal(scene.rgb(k), fx["rgb"][k])
        np.testing.assert_allclose(scene.depth(k), fx["depth"][k] / 1000.0, rtol=1e-6)
        gt = scene.gt.panoptic(k)
        cls, inst = fx["labels"][k]
        assert np.array_equal(gt, _expected_gt(cls, inst))
        assert np.array_equal(scene.gt_semantic(k), np.where(cls > 0, cls, -1))
        gts.append(gt)
    assert scene.gt.segments == {1000: 1, 2000: 2, 5003: 5, 5004: 5, 7009: 7}
    _check_pseudo_labels(scene, gts)
    assert scene.meta["source"]["frames"] == [f"rgb_{k}" for k in range(n)]


def test_replica_every_max_frames_and_default_names(tmp_path):
    src, out = tmp_path / "seq", tmp_path / "scene"
    fx = make_replica(src)
    cfg = ReplicaConfig(labels_from_gt=True, every=3, max_frames=3, stuff=[1, 2], quiet=True)
    import_replica(src, out, cfg)
    scene = load_scene(out)
    assert len(scene) == 3
    for i, k in enumerate((0, 3, 6)):
        np.testing.assert_allclose(scene.frames[i].c2w_cv, fx["poses"][k], atol=1e-7)
    assert {c.id: (c.name, c.isthing) for c in scene.categories.values()} == {
        1: ("class_1", False),
        2: ("class_2", False),
        5: ("class_5", True),
        7: ("class_7", True),
    }
    assert scene.split_indices("test") == []


def test_pseudo_labels_depend_on_seed_only(tmp_path):
    src = tmp_path / "seq"
    make_replica(src, n=3)
    pans = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        import_replica(src, tmp_path / name, ReplicaConfig(labels_from_gt=True, seed=seed, quiet=True))
        pans.append(load_scene(tmp_path / name).panoptic(1))
    assert np.array_equal(pans[0], pans[1])
    assert not np.array_equal(pans[0], pans[2])


def _write_predictions(folder: Path, scene_labels, stems, categories, rng, size=(W, H), drop=None) -> list:
    """COCO panoptic predictions made from GT with random ids; returns the id images."""
    (folder / "panoptic").mkdir(parents=True)
    anns, images = [], []
    for stem, (cls, inst) in zip(stems, scene_labels, strict=True):
        gt = _expected_gt(cls, inst)
        ids, mapping = scramble_ids(gt, rng)
        segs = [{"id": new, "category_id": old // 1000, "score": 0.9} for old, new in mapping.items()]
        if drop == stem:
            segs = segs[1:]
        img = ids
        if size != (W, H):
            img = np.repeat(np.repeat(ids, size[0] // W, axis=0), size[0] // W, axis=1)
        io.write_panoptic(folder / "panoptic" / f"{stem}.png", img)
        anns.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segs})
        images.append(ids)
    (folder / "panoptic.json").write_text(json.dumps({"annotations": anns, "categories": categories}))
    return images


def test_replica_coco_predictions(tmp_path):
    src, out, pred = tmp_path / "seq", tmp_path / "scene", tmp_path / "pred"
    fx = make_replica(src, n=4)
    cats = [{**c, "isthing": int(c["id"] not in STUFF)} for c in CLASSES]
    images = _write_predictions(
        pred, fx["labels"], [f"rgb_{k}" for k in range(4)], cats, np.random.default_rng(5)
    )
    cfg = ReplicaConfig(labels=str(pred), classes=str(src / "classes.json"), quiet=True)
    report = import_replica(src, out, cfg)
    scene = load_scene(out)
    assert report.gt_written  # same class ids and names: GT is comparable and written
    for k in range(4):
        assert np.array_equal(scene.panoptic(k), images[k])
        assert np.array_equal(scene.semantic(k), np.where(fx["labels"][k][0] > 0, fx["labels"][k][0], -1))
        assert {s.score for s in scene.frames[k].segments} == {0.9}
        assert np.array_equal(scene.gt.panoptic(k), _expected_gt(*fx["labels"][k]))

    # predictions in another category space: frames written, GT skipped with a warning
    other = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}]
    other += [{"id": 5, "name": "chair", "isthing": 1}, {"id": 7, "name": "table", "isthing": 1}]
    pred2 = tmp_path / "pred2"
    _write_predictions(pred2, fx["labels"], [str(k) for k in range(4)], other, np.random.default_rng(6))
    report = import_replica(src, tmp_path / "scene2", ReplicaConfig(labels=str(pred2), quiet=True))
    scene = load_scene(tmp_path / "scene2")
    assert not report.gt_written and scene.gt is None
    assert any("not writing gt/" in w for w in report.warnings)
    assert scene.categories[1].name == "person"


def test_coco_prediction_errors_name_files(tmp_path):
    src, pred = tmp_path / "seq", tmp_path / "pred"
    fx = make_replica(src, n=3)
    cats = [{**c, "isthing": int(c["id"] not in STUFF)} for c in CLASSES]
    _write_predictions(
        pred, fx["labels"][:2], ["rgb_0", "rgb_1"], cats, np.random.default_rng(0), drop="rgb_1"
    )
    with pytest.raises(DatasetImportError) as e:
        import_replica(src, tmp_path / "o1", ReplicaConfig(labels=str(pred), quiet=True))
    assert "no annotation for frame 'rgb_2'" in str(e.value) and "panoptic.json" in str(e.value)
    # with only the two annotated frames, the PNG whose segment was dropped from segments_info is named
    with pytest.raises(DatasetImportError) as e:
        import_replica(src, tmp_path / "o2", ReplicaConfig(labels=str(pred), max_frames=2, quiet=True))
    assert "rgb_1.png" in str(e.value) and "missing from segments_info" in str(e.value)
    assert not (tmp_path / "o2" / "transforms.json").exists()
    (pred / "panoptic" / "rgb_0.png").unlink()
    with pytest.raises(DatasetImportError) as e:
        import_replica(src, tmp_path / "o3", ReplicaConfig(labels=str(pred), max_frames=2, quiet=True))
    assert str(pred / "rgb_0.png") in str(e.value) and "missing prediction PNG" in str(e.value)


# ----------------------------------------------------------------------------- ScanNet


def test_scannet_round_trip(tmp_path, capsys):
    src, out = tmp_path / "scene0000_00", tmp_path / "scene"
    fx = make_scannet(src)
    cfg = ScanNetConfig(labels_from_gt=True, label_map=str(fx["tsv"]), test_every=2)
    report = import_scannet(src, out, cfg)
    assert len(report.skipped) == 1 and str(src / "pose" / "2.txt") in report.skipped[0]
    assert "skipped 1 frame" in capsys.readouterr().err
    scene = load_scene(out)
    kept = [0, 1, 3, 10]  # numeric order, frame 2 lost tracking
    assert len(scene) == 4 and scene.meta["source"]["frames"] == [str(n) for n in kept]
    K = scene.frames[0].intrinsics
    assert (K.fx, K.fy, K.cx, K.cy, K.width, K.height) == pytest.approx((20.0, 20.0, 16.0, 12.0, W, H))
    assert scene.split_indices("test") == [0, 2]
    cats = scene.categories
    assert len(cats) == 40 and cats[1].name == "wall" and not cats[1].isthing and cats[5].isthing
    assert not cats[22].isthing and cats[8].isthing  # ceiling is stuff, door a thing
    gts = []
    for i, n in enumerate(kept):
        np.testing.assert_allclose(scene.frames[i].c2w_cv, fx["poses"][n], atol=1e-7)
        np.testing.assert_allclose(scene.depth(i), fx["depth"][n] / 1000.0, rtol=1e-6)
        # colour: the linear ramp (2 xc + j, 3 yc, xc + yc) sampled at xc = 2 (x + 0.5) + 2, yc = 2 (y + 0.5);
        # antialiased bilinear resampling reproduces a ramp away from the border (a plain resize is 4 off)
        rgb = scene.rgb(i).astype(int)
        yy, xx = np.mgrid[0:H, 0:W] + 0.5
        xc, yc = 2 * xx + 2, 2 * yy
        ramp = np.stack([2 * xc + kept.index(n), 3 * yc, xc + yc], axis=-1)
        assert np.abs(rgb[2:-2, 2:-3] - ramp[2:-2, 2:-3]).max() <= 2  # JPEG + rounding
        cls, inst = fx["labels"][n]
        gt = scene.gt.panoptic(i)
        assert np.array_equal(gt, _expected_gt(cls, inst, stuff={1, 2}, void_instance=0))
        assert (scene.gt_semantic(i) == 40).any()  # raw id 1163 -> otherprop through the TSV
        gts.append(gt)
    _check_pseudo_labels(scene, gts)


def test_scannet_nyu40_labels_and_scannet20(tmp_path):
    src = tmp_path / "scene0001_00"
    fx = make_scannet(src, numbers=(0, 1, 2), bad_pose=None, raw_ids=False)
    cfg = ScanNetConfig(labels_from_gt=True, label_set="scannet20", quiet=True)
    import_scannet(src, tmp_path / "scene", cfg)
    scene = load_scene(tmp_path / "scene")
    assert len(scene.categories) == 20 and 40 not in scene.categories
    for i in range(3):
        cls, inst = fx["labels"][i]
        cls = np.where(cls == 40, 0, cls)  # otherprop is not a benchmark class -> void
        assert np.array_equal(scene.gt.panoptic(i), _expected_gt(cls, inst, stuff={1, 2}, void_instance=0))


def test_scannet_raw_ids_need_label_map(tmp_path):
    src = tmp_path / "scene0002_00"
    make_scannet(src, numbers=(0, 1), bad_pose=None)
    with pytest.raises(DatasetImportError) as e:
        import_scannet(src, tmp_path / "scene", ScanNetConfig(labels_from_gt=True, quiet=True))
    msg = str(e.value)
    assert str(src / "label-filt" / "0.png") in msg and "--label-map" in msg and "scannetv2-labels" in msg


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: (s / "traj_w_c.txt").unlink(), "traj_w_c.txt: missing"),
        (lambda s: (s / "depth" / "depth_3.png").unlink(), "depth_3.png: missing"),
        (
            lambda s: (s / "semantic_class" / "semantic_class_10.png").unlink(),
            "semantic_class_10.png: missing",
        ),
        (
            lambda s: (s / "traj_w_c.txt").write_text(
                "\n".join((s / "traj_w_c.txt").read_text().split("\n")[:5])
            ),
            "traj_w_c.txt: 5 poses but rgb/ has 11 images",
        ),
        (lambda s: (s / "traj_w_c.txt").write_text("1 2 3\n"), "traj_w_c.txt:1: expected 16 numbers"),
        (
            lambda s: Image.fromarray(np.zeros((H, W), np.uint8)).save(s / "depth" / "depth_4.png"),
            "depth_4.png: depth image has PIL mode 'L'",
        ),
        (
            lambda s: Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(
                s / "semantic_class" / "semantic_class_2.png"
            ),
            "semantic_class_2.png: semantic_class size 33x24",
        ),
    ],
)
def test_replica_bad_input_names_the_file(tmp_path, damage, named):
    src = tmp_path / "seq"
    make_replica(src)
    damage(src)
    with pytest.raises(DatasetImportError) as e:
        import_replica(src, tmp_path / "out", ReplicaConfig(labels_from_gt=True, quiet=True))
    assert named in str(e.value)
    assert not (tmp_path / "out" / "transforms.json").exists()


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: (s / "intrinsic" / "intrinsic_depth.txt").unlink(), "intrinsic_depth.txt: missing"),
        (lambda s: (s / "pose" / "3.txt").unlink(), "3.txt: missing (3.jpg exists)"),
        (lambda s: (s / "instance-filt" / "1.png").unlink(), "instance-filt/1.png: missing"),
        (lambda s: (s / "pose" / "1.txt").write_text("1 0 0\n"), "1.txt: pose must be a 4x4 matrix"),
        (
            lambda s: (s / "depth" / "77.png").write_bytes(b""),
            "1 file(s) without a colour image, e.g. 77.png",
        ),
    ],
)
def test_scannet_bad_input_names_the_file(tmp_path, damage, named):
    src = tmp_path / "scene0003_00"
    make_scannet(src, numbers=(0, 1, 2, 3), bad_pose=None)
    damage(src)
    with pytest.raises(DatasetImportError) as e:
        import_scannet(src, tmp_path / "out", ScanNetConfig(labels_from_gt=True, quiet=True))
    assert named in str(e.value)


def test_cli_prints_errors_not_tracebacks(tmp_path, capsys):
    src = tmp_path / "seq"
    make_replica(src, n=2)
    assert main(["import", "replica", str(tmp_path / "nope"), str(tmp_path / "o"), "--labels-from-gt"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "nope: source folder does not exist" in err and "Traceback" not in err
    )
    assert main(["import", "replica", str(src), str(tmp_path / "o")]) == 1  # no label source chosen
    assert "exactly one of --labels" in capsys.readouterr().err
    assert main(["import", "replica", str(src), str(tmp_path / "o"), "--labels-from-gt", "--quiet"]) == 0
    assert load_scene(tmp_path / "o").gt is not None
    # a second import into the same folder needs --overwrite, and then replaces the scene
    assert main(["import", "replica", str(src), str(tmp_path / "o"), "--labels-from-gt", "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err
    args = ["import", "replica", str(src), str(tmp_path / "o"), "--labels-from-gt", "--no-gt", "--overwrite"]
    assert main([*args, "--quiet", "--max-frames", "1"]) == 0
    scene = load_scene(tmp_path / "o")
    assert len(scene) == 1 and scene.gt is None


def test_labels_to_panoptic_units():
    cls = np.array([[0, 1, 1], [5, 5, 7]])
    inst = np.array([[4, 2, 3], [1, 2, 0]])
    ids, segs = labels_to_panoptic(cls, inst, stuff_ids=[1], void_instance=0)
    assert ids.tolist() == [[0, 1000, 1000], [5001, 5002, 0]]
    assert segs == {1000: 1, 5001: 5, 5002: 5}
    with pytest.raises(DatasetImportError, match="instance id 1000"):
        labels_to_panoptic(np.array([[5]]), np.array([[1000]]), stuff_ids=[], where="x.png")


def test_scannet_warns_on_non_identity_extrinsics(tmp_path):
    src = tmp_path / "scene0004_00"
    make_scannet(src, numbers=(0, 1), bad_pose=None, raw_ids=False)
    np.savetxt(src / "intrinsic" / "extrinsic_color.txt", np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 0.05
    np.savetxt(src / "intrinsic" / "extrinsic_depth.txt", shifted)
    report = import_scannet(src, tmp_path / "scene", ScanNetConfig(labels_from_gt=True, quiet=True))
    assert any("extrinsic_depth.txt differ" in w for w in report.warnings)
    np.savetxt(src / "intrinsic" / "extrinsic_depth.txt", np.eye(4))
    cfg = ScanNetConfig(labels_from_gt=True, quiet=True, overwrite=True)
    assert not import_scannet(src, tmp_path / "scene", cfg).warnings
