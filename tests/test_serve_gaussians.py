"""RGB from the build's Gaussians (``--rgb auto|gaussians|mesh``) while depth and panoptic stay ray cast.

The fixture is an export-like folder whose mesh is stored in a build (scan) frame with a non-identity
``alignment.json``, plus ``gaussians.ply`` sampled on that mesh's surface in the build frame with the
mesh's colours *inverted* (so a Gaussian pixel and a mesh pixel can never be confused). A camera pose
known in the served world frame must give exactly the image a direct
:func:`simgen.render.gaussians.render_gaussians` call gives at the same camera expressed in the build frame.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from helpers.serve_scenes import gazebo_pose, make_build
from helpers.server import Server

from simgen import folders
from simgen.data.camera import Intrinsics
from simgen.data.poses import parse_pose
from simgen.folders import GAUSSIANS_FILE, PanopticMesh, read_panoptic_mesh
from simgen.render.gaussians import load_ply, render_gaussians, save_ply
from simgen.serve.app import create_app
from simgen.serve.config import ServeConfig
from simgen.serve.scene import SceneLoadError, load_render_scene
from simgen.splat.gaussians import init_from_mesh

# world_from_scene: 90 degrees about x, then a shift (the build frame is y-up, as a scan's may be).
WORLD_FROM_SCENE = trimesh.transformations.translation_matrix((0.3, -1.0, 2.0)) @ (
    trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))
)
K = Intrinsics(80.0, 80.0, 48.0, 36.0, 96, 72)
# Camera at (0, 0, 0.5) in the world looking along +x at box 1 (red, centred at x = 2), slightly turned.
POSE = gazebo_pose(z=0.5, yaw=0.1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what the server does; the 2-core machine is shared
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    folder = make_build(tmp_path_factory.mktemp("gauss") / "export", WORLD_FROM_SCENE)
    mesh = read_panoptic_mesh(folder / "panoptic_mesh.ply")  # build frame
    inverted = PanopticMesh(mesh.vertices, mesh.faces, 255 - mesh.colors, mesh.semantic, mesh.instance)
    g = init_from_mesh(inverted, count=12000, sh_degree=1, opacity=0.95, seed=0)
    save_ply(folder / GAUSSIANS_FILE, g, build_id=folders.build_id(folder))
    return folder


def direct_render(folder: Path) -> np.ndarray:
    """The reference: the Gaussians rendered in the build frame at the camera mapped there by hand."""
    c2w_build = np.linalg.inv(WORLD_FROM_SCENE) @ parse_pose(POSE, "gazebo")
    Kmat = np.array([[K.fx, 0, K.cx], [0, K.fy, K.cy], [0, 0, 1.0]])
    g = load_ply(folder / GAUSSIANS_FILE)
    return render_gaussians(g, Kmat, c2w_build, K.width, K.height, outputs=("rgb",))["rgb"]


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001


def test_auto_renders_rgb_from_gaussians_in_the_build_frame(export):
    scene = load_render_scene(export)
    mesh_scene = load_render_scene(export, rgb="mesh")
    assert scene.rgb_source == "gaussians" and mesh_scene.rgb_source == "mesh"
    assert scene.world_frame == "gazebo"
    c2w = parse_pose(POSE, "gazebo")
    out, ref_mesh = scene.render(K, c2w), mesh_scene.render(K, c2w)
    assert_same_image(out["rgb"], direct_render(export))
    # The Gaussians sit on box 1's face, inverted red: (35, 225, 225); the mesh there is (220, 30, 30).
    centre = out["rgb"][30:42, 42:54].reshape(-1, 3).astype(int)
    assert np.abs(np.median(centre, 0) - (35, 225, 225)).max() <= 12
    assert tuple(ref_mesh["rgb"][36, 48]) == (220, 30, 30)
    # Depth and panoptic are still the mesh's.
    np.testing.assert_array_equal(out["depth"], ref_mesh["depth"])
    np.testing.assert_array_equal(out["panoptic"], ref_mesh["panoptic"])
    assert out["segments"] == ref_mesh["segments"]
    # The reference (generic ray caster) path takes its RGB from the Gaussians as well.
    np.testing.assert_array_equal(scene.render_reference(K, c2w, ("rgb",))["rgb"], out["rgb"])
    # Asking only for depth does not touch the Gaussians' output.
    assert set(scene.render(K, c2w, ("depth",))) == {"depth"}


def test_app_reports_source_and_serves_gaussian_rgb(export):
    app = create_app(load_render_scene(export), ServeConfig()).test_client()
    desc = app.get("/scene").get_json()
    assert desc["rgb_mode"] == "auto" and desc["rgb_source"] == "gaussians"
    assert desc["gaussians"] == {"path": str(export / GAUSSIANS_FILE), "count": 12000}
    spec = app.get("/openapi.json").get_json()
    assert "rgb_source=gaussians" in spec["info"]["description"]
    assert spec["components"]["schemas"]["Scene"]["properties"]["rgb_source"]["enum"] == ["gaussians", "mesh"]
    assert b"s.rgb_source" in app.get("/").data  # the viewer captions its RGB with the source
    body = {"pose": POSE, "fx": K.fx, "cx": K.cx, "cy": K.cy, "width": K.width, "height": K.height}
    r = app.post("/render", json={**body, "outputs": ["rgb"]})
    assert r.status_code == 200
    assert_same_image(np.load(io.BytesIO(r.data))["rgb"], direct_render(export))

    mesh_app = create_app(load_render_scene(export, rgb="mesh"), ServeConfig(rgb="mesh")).test_client()
    desc = mesh_app.get("/scene").get_json()
    assert desc["rgb_source"] == "mesh" and desc["gaussians"] is None
    rgb = np.load(io.BytesIO(mesh_app.post("/render", json={**body, "outputs": ["rgb"]}).data))["rgb"]
    assert tuple(rgb[36, 48]) == (220, 30, 30)


def test_rgb_gaussians_without_the_file_is_an_error(tmp_path):
    folder = make_build(tmp_path / "b", WORLD_FROM_SCENE)
    with pytest.raises(SceneLoadError, match=rf"{GAUSSIANS_FILE}: missing"):
        load_render_scene(folder, rgb="gaussians")
    assert load_render_scene(folder).rgb_source == "mesh"  # auto falls back
    (folder / GAUSSIANS_FILE).write_bytes(
        f"ply\ncomment simgen_build_id {folders.build_id(folder)}\nformat nonsense\n".encode()
    )
    with pytest.raises(SceneLoadError, match=rf"{GAUSSIANS_FILE}: cannot read Gaussians"):
        load_render_scene(folder)
    assert load_render_scene(folder, rgb="mesh").rgb_source == "mesh"  # never reads the file
    (folder / GAUSSIANS_FILE).unlink()
    r = subprocess.run(
        [sys.executable, "-m", "simgen", "serve", str(folder), "--rgb", "gaussians", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and f"{folder / GAUSSIANS_FILE}: missing" in r.stderr


def test_gaussians_of_another_build_are_never_paired_with_the_mesh(export, tmp_path):
    """A rebuild that skipped the Gaussian stage, or a gaussians.ply copied in, keeps mesh colours."""
    folder = tmp_path / "copy"
    shutil.copytree(export, folder)
    io_json = json.loads((folder / "build.json").read_text())
    io_json["id"] = "another-build"
    (folder / "build.json").write_text(json.dumps(io_json))
    with pytest.warns(UserWarning, match="was trained on build test-export, but .* is build another-build"):
        assert load_render_scene(folder).rgb_source == "mesh"
    with pytest.raises(SceneLoadError, match="refusing to pair a mesh with another build's Gaussians"):
        load_render_scene(folder, rgb="gaussians")
    save_ply(folder / GAUSSIANS_FILE, load_ply(folder / GAUSSIANS_FILE))  # no build id at all
    with pytest.raises(SceneLoadError, match="names no build"):
        load_render_scene(folder, rgb="gaussians")


@pytest.mark.slow
def test_real_server_two_workers_serves_gaussian_rgb(export):
    server = Server(export, "--workers", "2").wait()
    try:
        assert "Gaussians" in "".join(server.log)
        desc = json.loads(urllib.request.urlopen(server.url + "/scene", timeout=30).read())
        assert desc["rgb_source"] == "gaussians"
        from simgen.serve.client import RenderClient

        client = RenderClient(server.url)
        ref = direct_render(export)
        for _ in range(3):  # more than one request, so both workers are likely to answer one
            out = client.render(POSE, fx=K.fx, cx=K.cx, cy=K.cy, width=K.width, height=K.height)
            assert_same_image(out["rgb"], ref)
    finally:
        server.stop()
