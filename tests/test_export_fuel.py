"""Fuel-ready model packages: thumbnails/, model.config metadata, the detection confidence, fuel/<model>.zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers.export_scenes import CATEGORIES, FAST_EXPORT, make_mesh, room_parts, write_build
from PIL import Image

from simgen.cli import main
from simgen.data.camera import Intrinsics
from simgen.export import fuel
from simgen.export.check import check_sdf_file, find_validator, resolve_uri, run_validator
from simgen.export.config import ExportConfig
from simgen.export.pipeline import run_export
from simgen.folders import read_panoptic_mesh
from simgen.render.raycast import MeshRaycaster

FAST = dict(FAST_EXPORT, workers=0)
USER = dict(fuel_author="Ada Scanner", fuel_email="ada@example.org", fuel_license="CC-BY-4.0")


@pytest.fixture(scope="module")
def fuel_export(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(build folder, export folder, export.json) of the test room exported with --fuel."""
    root = tmp_path_factory.mktemp("fuel")
    build = write_build(root / "room", make_mesh())
    summary = run_export(build, root / "out", ExportConfig(**FAST, fuel=True, **USER))
    return build, root / "out", summary


def _gt_things() -> dict[str, tuple[str, int, int]]:
    """model name -> (class name, class id, instance id) of the test room's things (exact GT)."""
    return {
        f"{CATEGORIES[sem].name}_{inst}": (CATEGORIES[sem].name, sem, inst)
        for _, sem, inst, _ in room_parts()
        if inst
    }


def test_model_config_carries_gt_class_instance_author_and_license(fuel_export):
    _, out, summary = fuel_export
    things = _gt_things()
    rows = {r["name"]: r for r in summary["models"]}
    assert set(things) <= set(rows)
    for name in rows:
        cfg = fuel.read_model_config(out / "models" / name / "model.config")
        assert (cfg["name"], cfg["sdf"], cfg["sdf_version"], cfg["version"]) == (
            name,
            "model.sdf",
            "1.9",
            "1.0",
        )
        assert (cfg["author"], cfg["email"], cfg["license"]) == (
            "Ada Scanner",
            "ada@example.org",
            "CC-BY-4.0",
        )
        assert cfg["description"].endswith("License: CC-BY-4.0.")
        assert "/" not in cfg["description"]  # no local paths travel with the model
    for name, (cls, cid, inst) in things.items():
        desc = fuel.read_model_config(out / "models" / name / "model.config")["description"]
        assert desc.startswith(f"{cls} (class id {cid}), instance {inst} of a scanned scene")
        # instances.json of this build records no frames_observed: the confidence is unknown, and says so
        assert "Confidence: unknown (the build did not record the keyframes" in desc
        assert rows[name]["confidence"]["value"] is None
        assert "frames_observed" in rows[name]["confidence"]["reason"]
    assert rows["floor"]["confidence"] is None
    assert (
        "not applicable" in fuel.read_model_config(out / "models" / "floor" / "model.config")["description"]
    )


def test_model_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "model.config"
    bad.write_text("<model><name>x</name></model>")
    with pytest.raises(fuel.FuelError, match=r"model\.config: not a model\.config"):
        fuel.read_model_config(bad)


def test_thumbnails_show_the_model_in_its_colours(fuel_export):
    build, out, summary = fuel_export
    mesh = read_panoptic_mesh(build / "panoptic_mesh.ply")
    assert summary["thumbnails"]["views"] == 5
    for name, (_, _, inst) in _gt_things().items():
        paths = [out / "models" / name / "thumbnails" / f"{k}.png" for k in range(1, 6)]
        images = [np.asarray(Image.open(p)) for p in paths]
        assert all(im.shape == (256, 256, 4) for im in images)
        masks = [im[..., 3] > 0 for im in images]
        assert all(0.05 < m.mean() < 0.95 for m in masks), name  # framed: neither empty nor cropped
        # colour: the mean of the model's pixels has the chromaticity of its vertex colours; its brightness is
        # the headlight's 0.6-1 times the surface colour, whose area-weighted mean lies within the +-25 % the
        # scene's shading pattern gives the vertex colours (export_scenes.make_mesh)
        truth = mesh.colors[mesh.instance == inst].astype(float).mean(0)
        for im in images:
            seen = im[..., :3][im[..., 3] == 255].astype(float).mean(0)
            assert np.abs(seen / seen.sum() - truth / truth.sum()).max() < 0.03, name
            assert 0.6 * 0.75 < seen.sum() / truth.sum() < 1.25, name
        # the views differ: no two are equal, and the top view's silhouette is not a side view's
        for a in range(5):
            for b in range(a + 1, 5):
                assert not np.array_equal(images[a], images[b]), (name, a, b)
        iou = (masks[0] & masks[4]).sum() / (masks[0] | masks[4]).sum()
        assert iou < 0.8, name


def test_top_thumbnail_of_the_bin_is_its_disc():
    """GT: seen from straight above, a closed 24-sided prism covers its polygon's area times the framing
    scale (the box's top face spans FILL of the image)."""
    bin_ = next(m for m, sem, inst, rgb in room_parts() if sem == 12)
    v = np.asarray(bin_.vertices) - [3.0, 1.0, 0.0]
    images = fuel.render_thumbnails(v, bin_.faces, None, None, np.array([30, 160, 60]), size=256)
    top = images[4][..., 3] > 127
    extent = np.ptp(v[:, :2], axis=0)
    polygon = 0.5 * 24 * 0.2**2 * np.sin(2 * np.pi / 24)
    expected = polygon / extent.max() ** 2 * fuel.FILL**2
    assert abs(top.mean() - expected) < 0.01
    assert np.array_equal(images[4][top][:, :3].max(0), [30, 160, 60])  # lit head-on: the colour itself
    again = fuel.render_thumbnails(v, bin_.faces, None, None, np.array([30, 160, 60]), size=256)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))  # deterministic
    # 2 x 2 rays per pixel: the same coverage, as fractional alpha along the rim
    K, c2w = fuel.thumbnail_cameras(v.min(0), v.max(0), 256)[4]
    caster = MeshRaycaster(trimesh.Trimesh(v, bin_.faces, process=False))
    smooth = fuel.render_view(caster, K, c2w, None, None, np.array([30, 160, 60]), supersample=2)
    alpha = smooth[..., 3] / 255.0
    assert abs(alpha.mean() - expected) < 0.005 and ((alpha > 0.1) & (alpha < 0.9)).sum() > 100


def test_thumbnails_sample_the_texture():
    """A quad whose texture is red on its left half and blue on its right: the front view shows both,
    the left one on the left."""
    v = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0.5, 0, 1], [-0.5, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:, :4] = [255, 0, 0]
    tex[:, 4:] = [0, 0, 255]
    (front,) = fuel.render_thumbnails(v, f, uv, tex, np.zeros(3), size=64, views=((-90.0, 0.0),))
    row = front[32]
    hit = np.flatnonzero(row[:, 3] == 255)
    left, right = row[hit[: len(hit) // 3], :3], row[hit[-len(hit) // 3 :], :3]
    assert (left[:, 0] > 200).all() and (left[:, 2] == 0).all()
    assert (right[:, 2] > 200).all() and (right[:, 0] == 0).all()


def test_zip_unpacks_to_a_standalone_valid_model(fuel_export, tmp_path):
    _, out, summary = fuel_export
    zips = summary["fuel"]["zips"]
    assert set(zips) == {r["name"] for r in summary["models"]}
    assert sorted(p.name for p in (out / "fuel").iterdir()) == sorted(f"{n}.zip" for n in zips)
    validator = find_validator()
    empty = tmp_path / "no_resource_path"
    empty.mkdir()
    for name, rel in zips.items():
        with zipfile.ZipFile(out / rel) as zf:
            names = zf.namelist()
            zf.extractall(tmp_path / name)
        assert all(n.startswith(f"{name}/") and ".." not in n for n in names)
        model = tmp_path / name / name
        expected = {"model.config", "model.sdf", "meshes/visual.obj", "meshes/visual.mtl"}
        expected |= {f"thumbnails/{k}.png" for k in range(1, 6)}
        assert expected <= {n[len(name) + 1 :] for n in names}
        # exactly the model folder's files, nothing of the export around it
        exported = {
            p.relative_to(out / "models" / name).as_posix() for p in (out / "models" / name).rglob("*")
        }
        assert {n[len(name) + 1 :] for n in names} == {
            e for e in exported if (out / "models" / name / e).is_file()
        }
        assert (model / "model.config").read_bytes() == (out / "models" / name / "model.config").read_bytes()
        # every mesh URI resolves inside the unzipped folder with no resource path at all
        problems, models, _ = check_sdf_file(model / "model.sdf", search=[])
        assert problems == [] and models == [name]
        text = (model / "model.sdf").read_text()
        assert "model://" not in text and str(out) not in text
        for uri in [u.split("</uri>")[0] for u in text.split("<uri>")[1:]]:
            target = resolve_uri(uri, model / "model.sdf", [])
            assert target.resolve().is_relative_to(model.resolve()) and target.is_file()
        if validator is not None:
            assert run_validator(validator, model / "model.sdf", empty) == [], name
    if validator is None:
        pytest.skip("zips unpacked and checked; neither `gz sdf` nor `ign sdf` installed to validate them")


def test_zips_are_deterministic(fuel_export, tmp_path):
    _, out, summary = fuel_export
    name = "bin_3"
    fuel.write_model_zip(out / "models" / name, tmp_path / f"{name}.zip")
    assert (tmp_path / f"{name}.zip").read_bytes() == (out / summary["fuel"]["zips"][name]).read_bytes()


@pytest.mark.slow
def test_cli_fuel_flag_on_then_off(tmp_path):
    """--fuel writes the zips and records them; an export without it writes none and removes the old ones."""
    parts = [p for p in room_parts() if p[1] in (1, 12)]  # floor and the bin: a quick export
    build = write_build(tmp_path / "b", make_mesh(parts))
    out = tmp_path / "out"
    common = ["export", str(build), "-o", str(out), "--quiet", "--workers", "0", "--no-physics"]
    common += ["--texture-size", "64", "--thumbnail-size", "64"]
    assert main([*common, "--fuel", "--fuel-author", "Ada", "--fuel-license", "CC0-1.0"]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["fuel"]["zips"] == {"bin_3": "fuel/bin_3.zip", "floor": "fuel/floor.zip"}
    assert record["fuel"]["license"] == "CC0-1.0" and (out / "fuel" / "bin_3.zip").is_file()
    assert main(common) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["fuel"] is None and not (out / "fuel").exists()
    assert (out / "models" / "bin_3" / "thumbnails" / "1.png").is_file()  # thumbnails are written anyway
    cfg = fuel.read_model_config(out / "models" / "bin_3" / "model.config")
    assert (cfg["author"], cfg["license"]) == ("unspecified", "unspecified")
    assert main([*common, "--fuel-email", "not an address"]) == 2


def test_config_validates_fuel_fields():
    with pytest.raises(ValueError, match="fuel_email"):
        ExportConfig(fuel_email="ada@")
    with pytest.raises(ValueError, match="fuel_author"):
        ExportConfig(fuel_author=" ")
    with pytest.raises(ValueError, match="needs format sdf or all"):
        ExportConfig(fuel=True, format="mjcf")
    with pytest.raises(ValueError, match="thumbnail_size"):
        ExportConfig(thumbnail_size=4)


def _camera_at(eye, target) -> np.ndarray:
    return fuel.look_at(np.asarray(eye, float), np.asarray(target, float), np.array([0.0, 0.0, 1.0]))


def test_confidence_is_the_detection_rate_over_keyframes_that_show_it():
    """GT: a 0.5 m cube at the origin; keyframes 0-3 look at it from 3 m, but a board stands between
    keyframe 3 and the cube; 4 and 5 look away. Depth images are ray cast from the exact geometry."""
    cube = trimesh.creation.box([0.5, 0.5, 0.5]).subdivide()
    K = Intrinsics(300, 300, 160, 120, 320, 240)
    eyes = [[3 * np.cos(a), 3 * np.sin(a), 1] for a in (0, 1.5, 3, 4.5)]
    cameras = {k: (K, _camera_at(e, [0, 0, 0])) for k, e in enumerate(eyes)}
    cameras[4] = (K, _camera_at([3, 0, 1], [6, 0, 1]))
    cameras[5] = (K, _camera_at([0, 3, 1], [0, 6, 1]))
    board_pose = cameras[3][1].copy()
    board_pose[:3, 3] = np.asarray(eyes[3]) / 2  # half way, facing the camera
    board = trimesh.creation.box([1.2, 1.2, 0.02], transform=board_pose)
    caster = MeshRaycaster(trimesh.util.concatenate([cube, board]))
    depth = {k: caster.cast(*cam).depth for k, cam in cameras.items()}
    calls = []

    def read(k: int) -> np.ndarray:
        calls.append(k)
        return depth[k]

    verts = {1: np.asarray(cube.vertices), 2: np.asarray(cube.vertices), 3: np.asarray(cube.vertices)}
    conf = fuel.detection_confidence(verts, {1: [0, 1], 2: [0, 1, 2, 3, 4], 3: []}, cameras, read)
    assert sorted(calls) == list(range(6))  # each depth image read once
    assert (conf[1].value, conf[1].observed, conf[1].shown) == (2 / 3, 2, 3)  # keyframe 3 is occluded
    # a detection in a frame that does not show it still counts, in both numerator and denominator
    assert (conf[2].value, conf[2].observed, conf[2].shown) == (1.0, 5, 5)
    assert conf[3].value is None and "no keyframe" in conf[3].reason
    without_board = {k: MeshRaycaster(cube).cast(*cam).depth for k, cam in cameras.items()}
    conf = fuel.detection_confidence(verts, {1: [0, 1]}, cameras, without_board.__getitem__)
    assert (conf[1].observed, conf[1].shown) == (2, 4)
    desc = fuel.describe("box", "thing", 9, 1, conf[1], "CC0-1.0")
    assert (
        "Confidence 0.50: the segmentation detected this instance in 2 of the 4 keyframes that show it"
        in desc
    )


def _scene_with_cameras(scene_dir: Path, cameras: list[np.ndarray], K: Intrinsics, mesh) -> Path:
    """transforms.json with the given OpenCV camera-to-world poses and depth images ray cast from ``mesh``
    (a PanopticMesh); no RGB or labels (only the cameras and depth are read)."""
    from simgen.data.io import write_depth

    caster = MeshRaycaster(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False))
    frames = []
    for k, c2w_cv in enumerate(cameras):
        c2w_gl = c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])  # scene files store OpenGL camera axes
        write_depth(scene_dir / "depth" / f"{k:05d}.png", caster.cast(K, c2w_cv).depth)
        frames.append(
            {
                "file_path": f"rgb/{k:05d}.png",
                "depth_file_path": f"depth/{k:05d}.png",
                "transform_matrix": c2w_gl.tolist(),
            }
        )
    (scene_dir / "transforms.json").write_text(
        json.dumps(
            {
                "fl_x": K.fx,
                "fl_y": K.fy,
                "cx": K.cx,
                "cy": K.cy,
                "w": K.width,
                "h": K.height,
                "categories": [
                    {"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in CATEGORIES.values()
                ],
                "frames": frames,
            }
        )
    )
    return scene_dir


def test_build_confidence_uses_the_scenes_cameras(tmp_path):
    """GT: keyframes 0 and 1 show the table, 2 the cabinet, 3 the bin, each from 1.6 m above it (20-55 % of
    the target's vertices visible, no vertex of any other thing). The table was associated in keyframe 0,
    the cabinet in 1 (a frame without it) and 2, the bin in 3: confidences 1/2, 2/2, 1/1."""
    from simgen import folders

    mesh = make_mesh()
    build = write_build(tmp_path / "build", mesh)
    K = Intrinsics(90, 90, 32, 24, 64, 48)
    targets = {"table": (2.0, 2.0, 0.35), "cabinet": (1.0, 3.0, 0.45), "bin": (3.0, 1.0, 0.25)}
    views = [
        ("table", (0, -0.4, 1.6)),
        ("table", (0.4, 0, 1.6)),
        ("cabinet", (0, -0.4, 1.6)),
        ("bin", (0, -0.4, 1.6)),
    ]
    cams = [_camera_at(np.add(targets[t], off), targets[t]) for t, off in views]
    scene = _scene_with_cameras(tmp_path / "scene", cams, K, mesh)
    records, cats = folders.read_instances(build / "instances.json")
    for r, frames in zip(sorted(records, key=lambda r: r.id), ([0], [1, 2], [3]), strict=True):
        r.frames_observed = frames
    folders.write_instances(build / "instances.json", records, CATEGORIES)
    (build / "build.json").write_text(json.dumps({"scene": str(scene)}))
    records, _ = folders.read_instances(build / "instances.json")
    conf, note = fuel.build_confidences(build, mesh, records)
    assert note == ""
    got = {i: (c.value, c.observed, c.shown) for i, c in conf.items()}
    assert got == {1: (0.5, 1, 2), 2: (1.0, 2, 2), 3: (1.0, 1, 1)}
    (scene / "depth" / "00002.png").unlink()
    conf, note = fuel.build_confidences(build, mesh, records)
    assert str(scene / "depth" / "00002.png") in note and all(c.value is None for c in conf.values())
    (scene / "transforms.json").rename(scene / "moved.json")
    conf, note = fuel.build_confidences(build, mesh, records)
    assert str(scene) in note and all(c.value is None for c in conf.values())
    assert conf[1].public_reason == "the scan's cameras were not available at export"
