"""The render server's scene: loading build / export folders, segment ids, rendering outputs.

``make_build`` (a floor, a wall and two boxes) is shared by the other ``test_serve_*`` files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from helpers.serve_scenes import K, gazebo_pose, make_build, scene_mesh

from simgen.data.camera import Intrinsics, backproject
from simgen.data.io import write_json
from simgen.data.poses import parse_pose
from simgen.folders import (
    export_record_fields,
)
from simgen.render.caster import FastCaster
from simgen.serve.scene import STUFF_ID_OFFSET, SceneLoadError, load_render_scene, segment_ids


def test_segment_ids_encoding():
    sem = np.array([-1, 1, 2, 2, 3])
    inst = np.array([0, 0, 5, 0, 0])
    np.testing.assert_array_equal(
        segment_ids(sem, inst), [0, STUFF_ID_OFFSET + 1, 5, STUFF_ID_OFFSET + 2, STUFF_ID_OFFSET + 3]
    )


def test_render_build_folder(tmp_path):
    scene = load_render_scene(make_build(tmp_path))
    assert scene.world_frame == "scene"
    assert {c.name for c in scene.categories.values()} == {"floor", "box", "wall"}
    out = scene.render(K, parse_pose(gazebo_pose(), "gazebo"))
    # The camera at (0, 0, 0.5) looks along +x at box 1, whose face is at x = 1.5: centre depth 1.5 m.
    assert out["depth"][60, 80] == pytest.approx(1.5, abs=1e-4)
    assert out["panoptic"][60, 80] == 1
    assert tuple(out["rgb"][60, 80]) == (220, 30, 30)
    # Bottom rows see the floor (stuff: offset + category), top rows see nothing behind the box.
    assert out["panoptic"][-1, 0] == STUFF_ID_OFFSET + 1
    assert out["depth"][0, 0] == 0 and out["panoptic"][0, 0] == 0 and tuple(out["rgb"][0, 0]) == (0, 0, 0)
    segs = {s["id"]: s for s in out["segments"]}
    assert segs[1] == {"id": 1, "category_id": 2, "category_name": "box", "isthing": True, "instance": 1}
    assert segs[STUFF_ID_OFFSET + 1]["category_name"] == "floor" and not segs[STUFF_ID_OFFSET + 1]["isthing"]
    assert set(segs) == set(np.unique(out["panoptic"]).tolist()) - {0}
    # Depth re-projected with the same intrinsics and pose lands on the mesh surface.
    pts = backproject(out["depth"], K, parse_pose(gazebo_pose(), "gazebo"))
    valid = out["depth"] > 0
    d = trimesh.proximity.ProximityQuery(scene.mesh.to_trimesh()).signed_distance(pts[valid][::37])
    assert np.abs(d).max() < 1e-3


def test_alignment_moves_mesh_into_world_frame(tmp_path):
    # A scene frame rotated 90 degrees about x and shifted: alignment.json maps it back.
    R = trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))
    T = trimesh.transformations.translation_matrix((0.3, -1.0, 2.0)) @ R
    aligned = load_render_scene(make_build(tmp_path / "export", T))
    plain = load_render_scene(make_build(tmp_path))
    assert aligned.world_frame == "gazebo"
    np.testing.assert_allclose(aligned.world_from_scene, T)
    c2w = parse_pose(gazebo_pose(yaw=0.3), "gazebo")
    a, b = aligned.render(K, c2w), plain.render(K, c2w)
    np.testing.assert_allclose(a["depth"], b["depth"], atol=1e-4)
    assert (a["panoptic"] != b["panoptic"]).mean() < 0.002  # only pixels on edges may differ
    lo, hi = aligned.bounds()
    np.testing.assert_allclose(lo, [-3.01, -3, -0.02], atol=1e-4)
    np.testing.assert_allclose(hi, [3, 3, 2.5], atol=1e-4)


def test_export_folder_elsewhere_reads_build_dir(tmp_path):
    build = make_build(tmp_path / "build")
    export = tmp_path / "export"
    export.mkdir()
    write_json(export / "alignment.json", {"world_from_scene": np.eye(4).tolist()})
    # export.json locates the build relative to the export folder, so both can move together
    write_json(export / "export.json", {"scene": "s", **export_record_fields(export, build)})
    assert json.loads((export / "export.json").read_text())["build_dir"] == "../build"
    scene = load_render_scene(export)
    assert scene.world_frame == "gazebo" and len(scene.mesh.faces) == len(scene_mesh().faces)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("build", "export"):
        (tmp_path / name).rename(moved / name)
    assert len(load_render_scene(moved / "export").mesh.faces) == len(scene_mesh().faces)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SceneLoadError, match="panoptic_mesh.ply: missing"):
        load_render_scene(tmp_path)
    make_build(tmp_path)
    (tmp_path / "alignment.json").write_text(json.dumps({"world_from_scene": [[1, 2], [3, 4]]}))
    with pytest.raises(SceneLoadError, match="alignment.json"):
        load_render_scene(tmp_path)
    (tmp_path / "alignment.json").unlink()
    (tmp_path / "panoptic_mesh.ply").write_bytes(b"ply\nformat nonsense\n")
    with pytest.raises(SceneLoadError, match="panoptic_mesh.ply: cannot read"):
        load_render_scene(tmp_path)


def test_default_camera_sees_the_scene(tmp_path):
    scene = load_render_scene(make_build(tmp_path))
    cam = scene.default_camera()
    W, H = 160, 120
    f = W / 2 / np.tan(np.radians(cam["hfov_deg"]) / 2)
    d = scene.render(Intrinsics(f, f, W / 2, H / 2, W, H), cam["c2w_cv"], ("depth",))["depth"]
    assert (d > 0.3).mean() > 0.5


def test_fast_path_agrees_with_the_reference_renderer(tmp_path):
    """The embree hot path and the evaluation's renderer give the same images (float32 rounding aside)."""
    scene = load_render_scene(make_build(tmp_path))
    assert isinstance(scene.fast, FastCaster)  # embreex is a dependency: the hot path must be there
    rng = np.random.default_rng(0)
    for _ in range(6):
        pose = gazebo_pose(x=rng.uniform(-1.5, 0.5), y=rng.uniform(-1.5, 1.0), z=rng.uniform(0.3, 1.8))
        pose |= dict(zip(("qx", "qy", "qz", "qw"), random_quat(rng), strict=True))
        c2w = parse_pose(pose, "gazebo")
        fast, ref = scene.render(K, c2w), scene.render_reference(K, c2w)
        assert ((fast["depth"] > 0) != (ref["depth"] > 0)).mean() <= 0.001
        both = (fast["depth"] > 0) & (ref["depth"] > 0)
        np.testing.assert_allclose(fast["depth"][both], ref["depth"][both], atol=1e-4)
        assert (fast["panoptic"] != ref["panoptic"]).mean() <= 0.001
        assert np.abs(fast["rgb"].astype(int) - ref["rgb"])[both].max() <= 1
        assert fast["segments"] == [s for s in ref["segments"] if s["id"] in np.unique(fast["panoptic"])]


def random_quat(rng) -> list[float]:
    """A random unit quaternion (x, y, z, w) with the camera roughly upright (small roll)."""
    from scipy.spatial.transform import Rotation

    yaw, pitch, roll = rng.uniform(-np.pi, np.pi), rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.2)
    return Rotation.from_euler("ZYX", [yaw, pitch, roll]).as_quat().tolist()
