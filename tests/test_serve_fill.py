"""The render server draws an export's completed floor and walls (issue 22, part 6).

The scene (helpers.export_scenes.holed_room) is a scanned room whose floor misses the exact square
[1, 2] x [1, 2] m and whose wall x = 0 misses the corner y in [3, 4] m, z below 1.19 m. Ground truth: the
floor plane z = 0, the wall plane x = 0, and the box colliders the export writes (read back from the
SDFormat files): a served camera looking at a hole must see the collider's face there, labelled as the
floor / wall, and level cameras in the room see (almost) no void.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.export_scenes import CATEGORIES, holed_room, make_mesh, write_build
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen import folders
from simgen.data.camera import Intrinsics
from simgen.export.config import ExportConfig
from simgen.export.pipeline import run_export
from simgen.render.caster import FACE
from simgen.serve.scene import STUFF_ID_OFFSET, SceneLoadError, load_render_scene, served_void

FAST = dict(max_hulls=6, texture_size=128, face_budget=20000, quiet=True, physics=False, workers=0)
K = Intrinsics(80.0, 80.0, 80.0, 60.0, 160, 120)  # 90 deg horizontal field of view
FLOOR, WALL = STUFF_ID_OFFSET + 1, STUFF_ID_OFFSET + 2


@pytest.fixture(scope="module")
def holed(tmp_path_factory) -> tuple[Path, Path]:
    """(build folder of the holed room, its export in another folder)."""
    root = tmp_path_factory.mktemp("holed")
    cats = {k: CATEGORIES[k] for k in (1, 2, 11)}
    build = write_build(root / "room", make_mesh(holed_room()), cats)
    folders.io.write_json(build / folders.BUILD_FILE, {"id": "build-a"})
    run_export(build, root / "out", ExportConfig(**FAST))
    return build, root / "out"


def _camera(eye, forward, up) -> np.ndarray:
    """``(4, 4)`` camera-to-world, OpenCV axes, looking along ``forward`` with image-up ``up``."""
    z = np.asarray(forward, float) / np.linalg.norm(forward)
    y = -np.asarray(up, float)
    x = np.cross(y, z)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def _rays(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World ray directions ``(H, W, 3)`` through the pixel centres and their camera z (depth per metre)."""
    u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
    d = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return d @ c2w[:3, :3].T, d[..., 2]


def _collider_boxes(export: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every box collider of the export as (world-from-box ``(4, 4)``, size ``(3,)``), from the SDFormat."""
    world = etree.parse(str(next((export / "worlds").glob("*.sdf")))).getroot()
    boxes = []
    for inc in world.iter("include"):
        name = inc.findtext("name")
        model_pose = np.eye(4)
        model_pose[:3, 3] = np.array(inc.findtext("pose").split(), float)[:3]
        for col in etree.parse(str(export / "models" / name / "model.sdf")).getroot().iter("collision"):
            size = col.findtext("geometry/box/size")
            if size is None:
                continue
            p = np.array(col.findtext("pose").split(), float)
            T = np.eye(4)
            T[:3, :3] = Rotation.from_euler("xyz", p[3:]).as_matrix()  # SDFormat: roll, pitch, yaw
            T[:3, 3] = p[:3]
            boxes.append((model_pose @ T, np.array(size.split(), float)))
    return boxes


def _collider_depth(export: Path, c2w: np.ndarray) -> np.ndarray:
    """``(H, W)`` z-depth of the nearest box collider face along each pixel's ray (inf where none)."""
    dirs, zc = _rays(c2w)
    best = np.full(dirs.shape[:2], np.inf)
    for T, size in _collider_boxes(export):
        o = T[:3, :3].T @ (c2w[:3, 3] - T[:3, 3])
        d = dirs @ T[:3, :3]  # into the box frame
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-size / 2 - o) / d, (size / 2 - o) / d
        near = np.nanmax(np.minimum(t1, t2), -1)
        far = np.nanmin(np.maximum(t1, t2), -1)
        hit = (near <= far) & (near > 0)
        best = np.where(hit & (near < best), near, best)
    return best * zc


def _plane_hits(c2w: np.ndarray, axis: int, value: float) -> np.ndarray:
    """``(H, W, 3)`` points where each pixel's ray meets the plane ``x[axis] = value``."""
    dirs, _ = _rays(c2w)
    t = (value - c2w[axis, 3]) / dirs[..., axis]
    return c2w[:3, 3] + t[..., None] * dirs


FLOOR_CAM = _camera([1.5, 1.5, 1.0], [0, 0, -1], [0, 1, 0])  # looking down at the floor's hole
WALL_CAM = _camera([2.0, 3.5, 0.6], [-1, 0, 0], [0, 0, 1])  # looking at the wall's unseen corner


def _holes() -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(camera, pixels whose GT ray ends in the hole (1 cm inside its edges), expected segment id)."""
    p = _plane_hits(FLOOR_CAM, 2, 0.0)
    floor = (p[..., 0] > 1.01) & (p[..., 0] < 1.99) & (p[..., 1] > 1.01) & (p[..., 1] < 1.99)
    q = _plane_hits(WALL_CAM, 0, 0.0)
    wall = (q[..., 1] > 3.01) & (q[..., 1] < 3.99) & (q[..., 2] > 0.01) & (q[..., 2] < 1.18)
    return [(FLOOR_CAM, floor, FLOOR), (WALL_CAM, wall, WALL)]


def test_served_holes_show_the_collider_face_labelled_as_the_stuff(holed):
    build, out = holed
    served = load_render_scene(out, rgb="mesh")
    before = load_render_scene(build, rgb="mesh")  # a build without an export: served as before
    assert served.fill_from is not None and before.fill_from is None
    assert served.fill_path == out / folders.STUFF_FILL_FILE
    scanned = holed_room()
    for c2w, hole, seg in _holes():
        assert hole.sum() > 1000
        img = served.render(K, c2w)
        collider = _collider_depth(out, c2w)
        assert np.isfinite(collider[hole]).all()
        # The hole shows the collider's face (the fill sits 5 mm behind the scanned plane = the face).
        assert np.abs(img["depth"][hole] - collider[hole]).max() < 0.01
        gt_plane = _plane_hits(c2w, 2 if seg == FLOOR else 0, 0.0) - c2w[:3, 3]
        assert np.abs(img["depth"][hole] - (gt_plane @ c2w[:3, 2])[hole]).max() < 0.01
        assert (img["panoptic"][hole] == seg).all()
        assert any(s["id"] == seg and not s["isthing"] for s in img["segments"])
        # Colours from the scan of that surface (the fill copies its nearest seen cell).
        rgb = img["rgb"][hole].astype(int)
        base = np.array(scanned[0 if seg == FLOOR else 3][3])
        assert (rgb >= 0.5 * base - 1).all() and (rgb <= base + 1).all()
        # The build alone: the same pixels are void, the scanned rest is unchanged.
        old = before.render(K, c2w)
        assert (old["depth"][hole] == 0).all() and (old["panoptic"][hole] == 0).all()
        seen = old["depth"] > 0
        assert np.array_equal(img["depth"][seen], old["depth"][seen])
        assert np.array_equal(img["panoptic"][seen], old["panoptic"][seen])


def test_served_void_of_the_room_is_under_one_percent(holed):
    build, out = holed
    after, before = served_void(out, n=40, seed=1), served_void(build, n=40, seed=1)
    assert after["fill"] and not before["fill"]
    assert before["void_mean_percent"] > 3.0  # the holes are visible through the server without the fill
    assert after["void_mean_percent"] < 1.0
    assert after["poses"] == 40


def test_fill_file_marks_the_unseen_cells(holed):
    _, out = holed
    mesh, filled = folders.read_stuff_fill(out / folders.STUFF_FILL_FILE)
    assert folders.ply_build_id(out / folders.STUFF_FILL_FILE) == "build-a"
    summary = json.loads((out / folders.EXPORT_FILE).read_text())["stuff_fill"]
    assert summary == {
        "file": folders.STUFF_FILL_FILE,
        "faces": len(filled),
        "filled_faces": int(filled.sum()),
    }
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    cat = mesh.semantic[mesh.faces[:, 0]]
    centre = tri.mean(1)
    on_floor = filled & (cat == 1)
    # The 1 x 1 m hole, less the cells its edge vertices count as seen, and nothing else.
    assert area[on_floor].sum() == pytest.approx(1.0, abs=0.1)
    assert (centre[on_floor, :2] > 0.95).all() and (centre[on_floor, :2] < 2.05).all()
    assert np.allclose(mesh.vertices[mesh.semantic == 1, 2], -0.005, atol=1e-6)  # world frame, 5 mm below
    corner = filled & (cat == 2) & (np.abs(centre[:, 0]) < 0.05)  # wall x = 0: the unseen corner
    assert (centre[corner, 1] > 2.9).all() and (centre[corner, 2] < 1.3).all()
    assert area[corner].sum() == pytest.approx(1.19, abs=0.3)  # less what the floor / other wall see


def test_backends_agree_on_the_completed_scene(holed):
    _, out = holed
    served = load_render_scene(out, rgb="mesh")
    for c2w, hole, _ in _holes():
        fast = served.render(K, c2w, ("depth", "panoptic", "rgb"))
        ref = served.render_reference(K, c2w)
        # A ray through a shared edge of two scanned triangles may pass between them in one caster and
        # meet the fill 5 mm behind: equal elsewhere.
        diff = np.abs(fast["depth"] - ref["depth"])
        assert diff.max() < 0.006 and (diff < 1e-4).mean() > 0.995
        assert (fast["panoptic"] == ref["panoptic"]).mean() > 0.995
        assert (np.abs(fast["rgb"].astype(int) - ref["rgb"]).max(-1) <= 1).mean() > 0.995
        face = served.fast.render(K, c2w, (FACE,))[FACE]
        assert (face[hole] >= served.fill_from).all() and (face[~hole & (fast["depth"] > 0)] >= 0).all()
        # The CPU z-buffer marks the fill's pixels as embree does (what the Gaussian backdrop is cut by).
        zface = served.zbuffer.render(K, c2w, (FACE,))[FACE]
        assert (zface[hole] >= served.fill_from).all()
        assert ((zface >= served.fill_from) == (face >= served.fill_from)).mean() > 0.995
        assert ((zface >= 0) == (face >= 0)).mean() > 0.995
    from simgen.render import raster as RA

    if RA.gl_renderer() is None:
        pytest.skip("no OpenGL 3.3 context through EGL: raster backend not compared")
    ras = load_render_scene(out, rgb="mesh", backend="raster")
    for c2w, hole, seg in _holes():
        a, b = served.render(K, c2w), ras.render(K, c2w, ("depth", "panoptic", FACE))
        assert np.abs(a["depth"][hole] - b["depth"][hole]).max() < 1e-3
        assert (b["panoptic"][hole] == seg).all()
        assert (b[FACE][hole] >= ras.fill_from).all()
        fast_face = served.fast.render(K, c2w, (FACE,))[FACE]
        # The same faces but for coverage ties on triangle edges: where they differ, they share a corner.
        mis = (b[FACE] != fast_face) & (b[FACE] >= 0) & (fast_face >= 0)
        assert mis.mean() < 0.1 and ((b[FACE] >= 0) == (fast_face >= 0)).all()
        F = ras.mesh.faces
        adjacent = [bool(set(F[i]) & set(F[j])) for i, j in zip(b[FACE][mis], fast_face[mis], strict=True)]
        assert np.mean(adjacent) > 0.95


@pytest.mark.slow  # torch and the Gaussian rasterizer: ~30 s on the loaded 2-core machine
def test_gaussian_rgb_is_composited_over_the_fill(holed):
    torch = pytest.importorskip("torch")
    from simgen.render.gaussians import GaussianScene

    torch.set_num_threads(1)
    _, out = holed
    scene = load_render_scene(out, rgb="mesh")
    mesh_rgb = scene.render(K, FLOOR_CAM, ("rgb",))["rgb"]
    face = scene.fast.render(K, FLOOR_CAM, (FACE,))[FACE]
    on_fill = face >= scene.fill_from

    def one(z: float, opacity_logit: float) -> GaussianScene:
        """One Gaussian at (1.5, 1.5, z), 0.3 m wide."""
        return GaussianScene(
            means=torch.tensor([[1.5, 1.5, z]]),
            quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
            log_scales=torch.full((1, 3), float(np.log(0.3))),
            opacity_logits=torch.tensor([opacity_logit]),
            sh=torch.zeros(1, 1, 3),
            semantic=torch.tensor([1], dtype=torch.int32),
            instance=torch.tensor([0], dtype=torch.int32),
        )

    scene.gaussians = one(50.0, 0.0)  # behind the camera: no splat covers any pixel
    for img in (
        scene.render(K, FLOOR_CAM, ("rgb",))["rgb"],
        scene.render_reference(K, FLOOR_CAM, ("rgb",))["rgb"],
    ):
        # The fill's colour shows through (the reference shades in float64: within 1 of the hot path).
        assert np.abs(img[on_fill].astype(int) - mesh_rgb[on_fill]).max() <= 1
        assert (img[~on_fill] == 0).all()  # over the scan, the Gaussians alone (none here: black)
    scene.gaussians = one(0.5, 20.0)  # an opaque splat in front of the hole hides the fill
    img = scene.render(K, FLOOR_CAM, ("rgb",))["rgb"].astype(int)
    alone = scene.render_gaussian_rgb(K, FLOOR_CAM).astype(int)  # composited over black
    mid = (slice(K.height // 2 - 2, K.height // 2 + 2), slice(K.width // 2 - 2, K.width // 2 + 2))
    assert on_fill[mid].all() and np.abs(img[mid] - alone[mid]).max() <= 1
    assert np.abs(alone[mid] - mesh_rgb[mid]).max() > 10  # (so the check above can tell them apart)


def test_fill_problems_name_the_file(holed, tmp_path, recwarn):
    build, out = holed
    folder = tmp_path / "b"
    shutil.copytree(build, folder)
    shutil.copy(out / folders.STUFF_FILL_FILE, folder / folders.STUFF_FILL_FILE)
    with pytest.raises(SceneLoadError, match=r"stuff_fill\.ply: present without .*alignment\.json"):
        load_render_scene(folder, rgb="mesh", warm=False)
    shutil.copy(out / folders.ALIGNMENT_FILE, folder / folders.ALIGNMENT_FILE)
    assert load_render_scene(folder, rgb="mesh", warm=False).fill_from is not None
    # A rebuilt build (another id) is never drawn with the old export's fill.
    folders.io.write_json(folder / folders.BUILD_FILE, {"id": "build-b"})
    with pytest.warns(UserWarning, match="exported from build build-a"):
        assert load_render_scene(folder, rgb="mesh", warm=False).fill_from is None
    (folder / folders.STUFF_FILL_FILE).write_bytes(b"ply\nformat binary_little_endian 1.0\nend_header\n")
    with pytest.raises(SceneLoadError, match=r"stuff_fill\.ply"):
        load_render_scene(folder, rgb="mesh", warm=False)


def test_simgen_check_reports_the_served_void(holed, capsys):
    from simgen.cli import main

    _, out = holed
    assert main(["check", str(out), "--no-validator", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["summary"]
    assert stats["served_void"] == served_void(out)
    assert stats["served_void"]["fill"] and stats["served_void"]["void_mean_percent"] < 1.0
    assert stats["void"]["void_mean_percent"] < 1.0  # the exported visuals, as before
