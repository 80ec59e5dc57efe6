"""Loader / validator: each documented error is produced by a broken fixture and asserted by message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simgen.cli import main
from simgen.data import io
from simgen.data.camera import Intrinsics, backproject, look_at, opengl_to_opencv, project
from simgen.data.scene import Category, SceneError, Segment, load_scene, validate_scene
from simgen.data.writer import SceneWriter

K = Intrinsics(20.0, 20.0, 8.0, 6.0, 16, 12)
CATS = [Category(1, "floor", False), Category(7, "chair", True)]


def make_scene(root: Path, n: int = 3) -> Path:
    """A small valid scene: per frame one floor and one chair segment with unrelated per-frame ids."""
    w = SceneWriter(root, K, CATS)
    for i in range(n):
        pan = np.zeros((12, 16), np.int32)
        floor_id, chair_id = 100 + 3 * i, 5000 + 11 * i
        pan[8:, :] = floor_id
        pan[2:6, 4:9] = chair_id
        gt = np.where(pan == floor_id, 1, np.where(pan == chair_id, 2, 0))
        depth = np.full((12, 16), 1.0 + 0.1 * i)
        depth[0, 0] = 0  # one invalid pixel
        rgb = np.full((12, 16, 3), 40 * i, np.uint8)
        segs = [Segment(floor_id, 1, 0.9), Segment(chair_id, 7, 0.8)]
        w.add_frame(rgb, depth, pan, segs, look_at([0.2 * i, 0, 1.5], [0.2 * i + 1, 0, 1.0]), gt_panoptic=gt)
    w.finish({1: 1, 2: 7}, test=["rgb/00001.png"])
    return root


def messages(root: Path) -> list[str]:
    _, problems, _ = validate_scene(root)
    return [str(p) for p in problems]


def edit_transforms(root: Path, fn) -> None:
    path = root / "transforms.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    return make_scene(tmp_path / "scene")


def test_valid_scene_loads_with_exact_contents(scene_dir: Path) -> None:
    assert messages(scene_dir) == []
    scene = load_scene(scene_dir)
    assert len(scene) == 3
    assert scene.split_indices("test") == [1] and scene.split_indices("train") == [0, 2]
    assert scene.thing_ids == [7] and scene.stuff_ids == [1]
    d = scene.depth(2)
    assert d.dtype == np.float32 and d[0, 0] == 0 and d[5, 5] == pytest.approx(1.2, abs=1e-6)
    sem = scene.semantic(1)
    assert sem[10, 3] == 1 and sem[3, 5] == 7 and sem[0, 0] == -1
    assert set(np.unique(scene.gt.panoptic(0))) == {0, 1, 2}
    np.testing.assert_array_equal(scene.gt_semantic(0)[sem_mask := sem >= 0], sem[sem_mask])
    # the stored pose is OpenGL; c2w_cv looks along +z of the camera
    f = scene.frames[0]
    fwd = f.c2w_cv[:3, 2]
    np.testing.assert_allclose(fwd, np.array([1, 0, -0.5]) / np.linalg.norm([1, 0, -0.5]), atol=1e-6)


def test_missing_file_is_named(scene_dir: Path) -> None:
    (scene_dir / "depth" / "00002.png").unlink()
    msgs = messages(scene_dir)
    assert any("depth/00002.png" in m and "(frame 2)" in m and "missing depth file" in m for m in msgs), msgs


def test_unreadable_image(scene_dir: Path) -> None:
    (scene_dir / "rgb" / "00000.png").write_bytes(b"not a png")
    msgs = messages(scene_dir)
    assert any("rgb/00000.png" in m and "unreadable RGB image" in m for m in msgs), msgs


def test_wrong_image_size(scene_dir: Path) -> None:
    io.write_image(scene_dir / "rgb" / "00001.png", np.zeros((10, 16, 3), np.uint8))
    msgs = messages(scene_dir)
    assert any("rgb/00001.png" in m and "wrong image size 16x10, expected 16x12" in m for m in msgs), msgs


def test_depth_not_16_bit(scene_dir: Path) -> None:
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(scene_dir / "depth" / "00000.png")
    msgs = messages(scene_dir)
    assert any("depth/00000.png" in m and "depth must be a 16-bit PNG" in m for m in msgs), msgs


@pytest.mark.parametrize(
    "matrix, text",
    [
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "non-finite"),
        ([[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "not rigid"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], "not rigid"),  # a reflection
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "must be 4x4"),
    ],
)
def test_bad_transform(scene_dir: Path, matrix, text: str) -> None:
    def fn(meta):
        meta["frames"][1]["transform_matrix"] = matrix

    # Python's json writes NaN as a bare literal and reads it back, as other tools do
    edit_transforms(scene_dir, fn)
    msgs = messages(scene_dir)
    assert any("(frame 1)" in m and text in m for m in msgs), msgs


def test_unknown_category(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m["frames"][0]["segments_info"][1].update(category_id=99))
    msgs = messages(scene_dir)
    assert any("(frame 0)" in m and "unknown category_id 99" in m for m in msgs), msgs


def test_segment_id_in_png_missing_from_segments_info(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m["frames"][2]["segments_info"].pop(1))
    msgs = messages(scene_dir)
    assert any(
        "panoptic/00002.png" in m and "[5022] in the PNG are missing from segments_info" in m for m in msgs
    ), msgs


def test_segment_in_segments_info_missing_from_png(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m["frames"][0]["segments_info"].append({"id": 42, "category_id": 7}))
    msgs = messages(scene_dir)
    assert any("panoptic/00000.png" in m and "[42] do not appear in the PNG" in m for m in msgs), msgs


def test_duplicate_file_paths(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m["frames"][2].update(file_path=m["frames"][0]["file_path"]))
    msgs = messages(scene_dir)
    assert any("(frame 2)" in m and "duplicate file_path '00000.png'" in m for m in msgs), msgs


def test_empty_scene(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m.update(frames=[]))
    msgs = messages(scene_dir)
    assert any("empty scene" in m for m in msgs), msgs


def test_no_thing_categories(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m.update(categories=[{"id": 1, "name": "floor", "isthing": 0}]))
    msgs = messages(scene_dir)
    assert any("no thing categories" in m for m in msgs), msgs
    assert any("unknown category_id 7" in m for m in msgs)  # and the chair segments are reported too


def test_missing_transforms_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    assert any("missing transforms.json" in m for m in messages(tmp_path / "s"))
    (tmp_path / "s" / "transforms.json").write_text("{ not json")
    assert any("unreadable JSON" in m for m in messages(tmp_path / "s"))


def test_every_problem_is_reported_not_only_the_first(scene_dir: Path) -> None:
    (scene_dir / "depth" / "00000.png").unlink()
    edit_transforms(scene_dir, lambda m: m["frames"][2]["segments_info"][0].update(category_id=99))
    with pytest.raises(SceneError) as err:
        load_scene(scene_dir)
    assert len(err.value.problems) >= 2
    assert "depth/00000.png" in str(err.value) and "unknown category_id 99" in str(err.value)


def test_cli_validate_exit_codes_and_no_traceback(scene_dir: Path, capsys) -> None:
    assert main(["validate", str(scene_dir)]) == 0
    out = capsys.readouterr().out
    assert "frames" in out and "16x12" in out and "valid" in out
    (scene_dir / "panoptic" / "00001.png").unlink()
    assert main(["validate", str(scene_dir)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "panoptic/00001.png" in captured.err
    assert main(["validate", str(scene_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["frames"] == 3 and len(report["problems"]) == 1


def test_cli_info_summary(scene_dir: Path, capsys) -> None:
    assert main(["info", str(scene_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["frames"] == 3 and s["test_frames"] == 1 and s["thing_categories"] == ["chair"]
    assert s["depth_range_m"] == [1.0, 1.2]
    assert s["segments_per_frame"] == {"min": 2, "mean": 2.0, "max": 2}
    assert s["pose_extent_m"] == [0.4, 0.0, 0.0]


def test_per_frame_intrinsics_override(scene_dir: Path) -> None:
    edit_transforms(scene_dir, lambda m: m["frames"][1].update(fl_x=30.0))
    scene = load_scene(scene_dir)
    assert scene.frames[1].intrinsics.fx == 30.0 and scene.frames[0].intrinsics.fx == 20.0


def test_panoptic_id_encoding_round_trip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 2**24 - 1, 12345678]], np.int32)
    io.write_panoptic(tmp_path / "p.png", ids)
    np.testing.assert_array_equal(io.read_panoptic(tmp_path / "p.png"), ids)
    assert tuple(io.id_to_rgb(np.array([[256 + 2]]))[0, 0]) == (2, 1, 0)


def test_backproject_project_round_trip() -> None:
    c2w = opengl_to_opencv(look_at([1, 2, 1.5], [3, 2, 1]))
    depth = np.random.default_rng(0).uniform(0.5, 4, (K.height, K.width))
    pts = backproject(depth, K, c2w).reshape(-1, 3)
    uv, z = project(pts, K, c2w)
    v, u = np.mgrid[0 : K.height, 0 : K.width]
    np.testing.assert_allclose(uv[:, 0], u.ravel() + 0.5, atol=1e-9)
    np.testing.assert_allclose(uv[:, 1], v.ravel() + 0.5, atol=1e-9)
    np.testing.assert_allclose(z, depth.ravel(), atol=1e-9)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_gt_true_poses_round_trip_and_bad_ones_are_named(tmp_path: Path) -> None:
    # A writer given true poses records them in gt/gt.json; the loader returns them (OpenGL as stored).
    w = SceneWriter(tmp_path / "s", K, CATS)
    true = [look_at([0.2 * i, 0, 1.5], [0.2 * i + 1, 0, 1.0]) for i in range(2)]
    for i, c2w in enumerate(true):
        stored = c2w.copy()
        stored[:3, 3] += [0.01 * i, 0, 0]  # the stored pose drifted
        pan = np.zeros((12, 16), np.int32)
        pan[2:6, 4:9] = 9
        w.add_frame(np.zeros((12, 16, 3), np.uint8), np.ones((12, 16)), pan, [Segment(9, 7)], stored,
                    gt_panoptic=(pan > 0).astype(np.int32), gt_c2w_gl=c2w)  # fmt: skip
    root = w.finish({1: 7})
    scene = load_scene(root)
    np.testing.assert_allclose(scene.gt.true_c2w, np.stack(true), atol=1e-8)
    np.testing.assert_allclose(scene.gt.true_c2w_cv(1), opengl_to_opencv(true[1]), atol=1e-8)
    assert scene.frames[1].c2w[0, 3] == pytest.approx(true[1][0, 3] + 0.01)

    gpath = root / "gt" / "gt.json"
    good = json.loads(gpath.read_text())
    for edit, text in [
        (lambda g: g["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]), "must be 4x4"),
        (lambda g: g["frames"][0]["transform_matrix"][0].__setitem__(0, 2.0), "not rigid"),
        (lambda g: g["frames"][1].pop("transform_matrix"), "on 1 of 2 GT frames: all or none"),
    ]:
        g = json.loads(json.dumps(good))
        edit(g)
        gpath.write_text(json.dumps(g))
        msgs = messages(root)
        assert any(str(gpath) in m and "transform_matrix (true pose)" in m and text in m for m in msgs), msgs
    # Without any true pose the field is simply absent.
    for f in good["frames"]:
        del f["transform_matrix"]
    gpath.write_text(json.dumps(good))
    assert messages(root) == [] and load_scene(root).gt.true_c2w is None
