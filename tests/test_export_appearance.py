"""Export textures from the Gaussians' rendered appearance, checked against a synthetic scene's true colours.

The build is the synthetic scene's true geometry (things and floor) cut into ~3 cm triangles whose vertex
colours are the true surface colours at the vertices: the blur a 3 cm fusion voxel gives. The Gaussians are
dense flat discs on the same surfaces carrying the true colour at their centres (no optimisation, so the
test is fast). Each export is ray cast from cameras that were not used for baking, its textures looked up
at the hits and compared with the true images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from lxml import etree

from simgen import folders
from simgen.cli import main
from simgen.data import io
from simgen.data.scene import load_scene
from simgen.export.appearance import (
    Views,
    load_views,
    prepare_appearance,
    select_frames,
    shade_texels,
)
from simgen.export.config import ExportConfig
from simgen.export.pipeline import ExportError, run_export
from simgen.folders import PanopticMesh, instance_records, write_instances, write_panoptic_mesh
from simgen.render.gaussians import save_ply
from simgen.render.raycast import MeshRaycaster
from simgen.splat.gaussians import from_points
from simgen.synth import THING_IDS, make_scene, preset_config, synthesize
from simgen.synth.layout import CATEGORIES, FLOOR

SYNTH = dict(noise=False, width=640, height=480, frames=10, test_every=0, objects=3)
BAKE_VIEWS = 5  # of the 10 frames: select_frames picks 0, 2, 4, 7, 9; the others are held out
CELL_M = 0.1
FAST = dict(max_hulls=2, coacd_iterations=10, texture_size=1024, face_budget=100_000, workers=0, quiet=True)
CHEAP = {**FAST, "texture_size": 128, "face_budget": 5000, "collider_faces": 200}


def true_colours(points: np.ndarray) -> np.ndarray:
    """(N, 3) float in [0, 1]: the true colour field at scene-frame ``points`` (N, 3), a 3D checker of
    CELL_M cubes in two colours: sharp edges that 3 cm vertex colours blur."""
    cell = np.floor((np.asarray(points, float) + 0.0137) / CELL_M).astype(np.int64).sum(1) % 2
    return np.where(cell[:, None] == 1, [0.85, 0.75, 0.3], [0.2, 0.3, 0.7])


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """Build folder: true geometry of things + floor with 3 cm vertex colours, dense true-colour Gaussians,
    build.json naming the scene folder."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("appearance")
    cfg = preset_config("tiny", 0, **SYNTH)
    scene_dir = synthesize(root / "scene", "tiny", 0, **SYNTH)
    geom, _ = make_scene(cfg)
    cat = np.array([geom.segments[int(s)] for s in geom.face_segment])
    keep = np.isin(cat, (*THING_IDS, FLOOR)) & (geom.mesh.face_normals[:, 2] > -0.9)  # no undersides
    v, f, index = trimesh.remesh.subdivide_to_size(
        geom.mesh.vertices, geom.mesh.faces[keep], max_edge=0.03, return_index=True
    )
    face = np.flatnonzero(keep)[index]
    corner_face = np.zeros(len(v), np.int64)
    corner_face[f.reshape(-1)] = np.repeat(face, 3)  # each vertex takes the colour of one of its faces
    colours = (true_colours(v) * 255 + 0.5).astype(np.uint8)
    seg = geom.face_segment[corner_face]
    sem = cat[corner_face]
    mesh = PanopticMesh(v, f, colours, sem, np.where(np.isin(sem, THING_IDS), seg, 0))
    out = root / "build"
    out.mkdir()
    categories = {c.id: c for c in CATEGORIES}
    write_panoptic_mesh(out / "panoptic_mesh.ply", mesh)
    write_instances(out / "instances.json", instance_records(mesh, categories), categories)
    io.write_json(out / "build.json", {"method": "test", "scene": str(scene_dir)})
    tm = trimesh.Trimesh(v, f, process=False)
    # Discs every ~8 mm, 0.4 x the neighbour distance wide: wider discs blur the checker's edges (the
    # front-most disc of a pixel wins), which measured 2x the colour error.
    pts, fi = trimesh.sample.sample_surface(tm, int(tm.area / 0.008**2), seed=0)
    normals = tm.face_normals[fi]
    g = from_points(pts, true_colours(pts), normals=normals, sh_degree=0, opacity=0.99, scale_factor=0.4)
    save_ply(out / "gaussians.ply", g)
    return out


@pytest.fixture(scope="module")
def exports(build, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for source in ("vertex", "gaussians"):
        out[source] = root / source
        run_export(build, out[source], ExportConfig(texture_source=source, texture_views=BAKE_VIEWS, **FAST))
    return out


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (N, 3), uv (N, 2), faces (F, 3)) of an OBJ written by the export (``f a/a b/b c/c``)."""
    lines = path.read_text().splitlines()
    v = np.array([ln.split()[1:4] for ln in lines if ln.startswith("v ")], float)
    vt = np.array([ln.split()[1:3] for ln in lines if ln.startswith("vt ")], float)
    f = np.array([[int(t.split("/")[0]) for t in ln.split()[1:4]] for ln in lines if ln.startswith("f ")]) - 1
    return v, vt, f


def render_export(out_dir: Path, scene, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray cast an export's textured visuals (mapped back into the scene frame) from frame ``index``'s
    camera at half its resolution.

    Returns (rgb (H, W, 3) float nearest-texel colours, depth (H, W) float metres, 0 where nothing is hit).
    """
    world = etree.parse(str(next((out_dir / "worlds").glob("*.sdf"))))
    scene_from_world = np.array(json.loads((out_dir / "alignment.json").read_text())["scene_from_world"])
    verts, faces, uvs, owner, textures = [], [], [], [], []
    offset = 0
    for k, inc in enumerate(world.iterfind(".//include")):
        name = inc.findtext("name")
        v, uv, f = _read_obj(out_dir / "models" / name / "meshes" / "visual.obj")
        pose = np.array(inc.findtext("pose").split(), float)
        assert np.allclose(pose[3:], 0)  # models are placed by translation only
        p = (v + pose[:3]) @ scene_from_world[:3, :3].T + scene_from_world[:3, 3]
        verts.append(p)
        uvs.append(uv)
        faces.append(f + offset)
        owner.append(np.full(len(f), k))
        textures.append(io.read_rgb(out_dir / "models" / name / "meshes" / "visual.png"))
        offset += len(v)
    V, F, UV, owner = np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs), np.concatenate(owner)
    frame = scene.frames[index]
    hits = MeshRaycaster(trimesh.Trimesh(V, F, process=False)).cast(
        frame.intrinsics.scaled(0.5), frame.c2w_cv
    )
    ok = hits.valid
    fid = hits.face[ok]
    bary = trimesh.triangles.points_to_barycentric(V[F[fid]], hits.points[ok].astype(float))
    uv = (UV[F[fid]] * bary[:, :, None]).sum(1)
    vals = np.zeros((len(fid), 3))
    for k, tex in enumerate(textures):
        sel = owner[fid] == k
        s = tex.shape[0]
        x = np.clip((uv[sel, 0] * s).astype(int), 0, s - 1)
        y = np.clip(s - 1 - (uv[sel, 1] * s).astype(int), 0, s - 1)
        vals[sel] = tex[y, x, :3]
    rgb = np.zeros((*ok.shape, 3))
    rgb[ok] = vals
    return rgb, hits.depth


def colour_error(out_dir: Path, scene, frames: list[int]) -> float:
    """Mean absolute RGB error (0..255) of the export's textures against the true colour of the true surface
    seen by the cameras of ``frames`` (pixels where the export's depth is within 1 cm of the truth)."""
    caster = MeshRaycaster(scene.gt.mesh())
    errs = []
    for i in frames:
        rgb, depth = render_export(out_dir, scene, i)
        truth = caster.cast(scene.frames[i].intrinsics.scaled(0.5), scene.frames[i].c2w_cv)
        ok = (depth > 0) & truth.valid & (np.abs(depth - truth.depth) < 0.01)
        errs.append(np.abs(rgb[ok] - 255 * true_colours(truth.points[ok])).mean(1))
    return float(np.concatenate(errs).mean())


@pytest.mark.slow
def test_gaussian_textures_reproduce_true_colours_better_than_vertex_colours(build, exports):
    scene = load_scene(json.loads((build / "build.json").read_text())["scene"])
    summary = json.loads((exports["gaussians"] / "export.json").read_text())
    baked = summary["texture"]["frames"]
    assert summary["texture"]["source"] == "gaussians" and baked == select_frames(list(range(10)), BAKE_VIEWS)
    held_out = [i for i in range(len(scene)) if i not in baked]
    err_vertex = colour_error(exports["vertex"], scene, held_out)
    err_gauss = colour_error(exports["gaussians"], scene, held_out)
    # Measured: 19.0 (vertex colours) and 14.5 (Gaussians) of 255; the renders themselves score about 10.
    assert err_gauss < 0.85 * err_vertex, (err_gauss, err_vertex)
    rows = {r["name"]: r for r in summary["models"]}
    assert all(r["texture_source"] == "gaussians" and r["texture_coverage"] > 0.3 for r in rows.values())
    vsum = json.loads((exports["vertex"] / "export.json").read_text())
    assert vsum["texture"]["source"] == "vertex"
    assert {r["texture_source"] for r in vsum["models"]} == {"vertex"}
    assert all(r["texture_coverage"] is None for r in vsum["models"])


@pytest.mark.slow
def test_missing_scene_folder_falls_back_to_vertex_colours_with_a_warning(build, tmp_path):
    moved = tmp_path / "build"
    shutil.copytree(build, moved)
    record = json.loads((moved / "build.json").read_text())
    record["scene"] = str(tmp_path / "gone")
    (moved / "build.json").write_text(json.dumps(record))
    assert folders.scene_of_build(moved) == (
        None,
        f"scene folder {tmp_path / 'gone'} (from {moved / 'build.json'}) is missing",
    )
    summary = run_export(
        moved, tmp_path / "out", ExportConfig(texture_source="auto", texture_views=4, **CHEAP)
    )
    assert summary["texture"]["source"] == "vertex"
    assert any(str(tmp_path / "gone") in w and "vertex colours" in w for w in summary["warnings"])
    assert {r["texture_source"] for r in summary["models"]} == {"vertex"}
    assert all(
        (tmp_path / "out" / "models" / r["name"] / "meshes" / "visual.png").is_file()
        for r in summary["models"]
    )


@pytest.mark.slow
def test_explicit_gaussian_source_without_gaussians_is_a_clear_error(build, tmp_path):
    moved = tmp_path / "build"
    shutil.copytree(build, moved)
    (moved / "gaussians.ply").unlink()
    with pytest.raises(ExportError, match=r"gaussians\.ply.*--texture-source vertex"):
        run_export(moved, tmp_path / "out", ExportConfig(texture_source="gaussians", **CHEAP))
    assert not (tmp_path / "out").exists()
    cmd = ["export", str(moved), "-o", str(tmp_path / "o"), "--texture-source", "gaussians", "--quiet"]
    assert main(cmd) == 1
    assert main(["export", str(moved), "-o", str(tmp_path / "o"), "--texture-views", "0"]) == 2
    # auto without Gaussians: vertex colours, without a warning
    source, record, warnings = prepare_appearance(
        moved, ExportConfig(texture_source="auto"), np.eye(4), tmp_path
    )
    assert source is None and warnings == []
    assert record["source"] == "vertex" and "gaussians.ply" in record["reason"]


def test_shade_texels_keeps_occluded_and_back_facing_points_unseen():
    """One camera at the origin looking down +z at a red wall (z = 2) with a blue square in front (z = 1)."""
    H = W = 40
    K = np.array([[20.0, 0, 20], [0, 20.0, 20], [0, 0, 1]])
    rgb = np.zeros((1, H, W, 3), np.uint8)
    depth = np.full((1, H, W), 2.0, np.float32)
    rgb[0, ..., 0] = 200
    depth[0, 10:30, 10:30] = 1.0  # the square: x, y in [-0.5, 0.5] at z = 1; it hides [-1, 1] at z = 2
    rgb[0, 10:30, 10:30] = (0, 0, 200)
    views = Views(rgb, depth, K[None], np.eye(4)[None], np.array([[W, H]]), np.array([0]))
    pts = np.array(
        [[1.6, 1.6, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.2, -0.2, 1.0], [0.0, 0.0, 1.0], [5, 0, 2]]
    )
    toward = [0, 0, -1]
    nrm = np.array([toward, toward, toward, toward, [0, 0, 1], toward], float)
    out, seen = shade_texels(pts, nrm, views, np.eye(4))
    # visible wall, wall hidden behind the square, square, square, square seen from behind, outside the image
    assert seen.tolist() == [True, False, True, True, False, False]
    assert np.allclose(out[0], (200, 0, 0), atol=1) and np.allclose(out[2], (0, 0, 200), atol=1)
    # the model frame is mapped into the scene frame first
    shift = np.eye(4)
    shift[:3, 3] = [0, 0, 1]
    out2, seen2 = shade_texels(pts - [0, 0, 1], nrm, views, shift)
    assert seen2.tolist() == seen.tolist() and np.allclose(out2[seen2], out[seen])


def test_views_round_trip_and_frame_selection(tmp_path):
    rng = np.random.default_rng(0)
    v = Views(
        rng.integers(0, 255, (3, 4, 5, 3), dtype=np.uint8),
        rng.random((3, 4, 5), dtype=np.float32),
        np.tile(np.eye(3), (3, 1, 1)),
        np.tile(np.eye(4), (3, 1, 1)),
        np.array([[5, 4]] * 3),
        np.array([0, 5, 9]),
    )
    back = load_views(str(v.save(tmp_path / "views")))
    for name in ("rgb", "depth", "K", "c2w_cv", "size", "frames"):
        assert np.array_equal(getattr(back, name), getattr(v, name))
    assert select_frames(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert select_frames([3, 4], 8) == [3, 4] and select_frames([1, 2], 0) == []
