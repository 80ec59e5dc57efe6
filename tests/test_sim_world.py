"""``simgen world``: the Jackal-sized robot, its spawn pose in a real export, libsdformat validation, and
serving that export (written outside its build folder) at the same world frame Gazebo uses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers.serve_scenes import BOX1, BOX2, K, gazebo_pose, make_build
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen.data.poses import parse_pose
from simgen.export.pipeline import run_export
from simgen.folders import PanopticMesh
from simgen.serve.scene import load_render_scene
from simgen.sim.gazebo import config_from_sdf
from simgen.sim.world import (
    FOOTPRINT_RADIUS,
    WorldConfig,
    WorldError,
    compose_world,
    free_spawn_pose,
    jackal_model_sdf,
    model_config,
    xml_bytes,
)

REPO = Path(__file__).resolve().parents[1]
IGN = shutil.which("ign")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The box scene built and exported by the real pipeline, export folder apart from the build."""
    root = tmp_path_factory.mktemp("world")
    build = make_build(root / "build")
    run_export(build, root / "export")
    return root / "export"


def validate(sdf_file: Path, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDF_PATH": str(models), "GZ_SIM_RESOURCE_PATH": str(models)}
    return subprocess.run(
        [IGN, "sdf", "-k", str(sdf_file)], capture_output=True, text=True, env=env, timeout=60
    )


def test_served_export_is_in_the_gazebo_world_frame(export):
    scene = load_render_scene(export)
    assert scene.world_frame == "gazebo"
    lo, _ = scene.bounds()
    # The floor slab moved by the alignment; the export decimates and cleans the mesh, so its lowest
    # vertex may move by a fraction of a millimetre.
    assert abs(lo[2] + 0.02 - scene.world_from_scene[2, 3]) < 1e-3
    # Camera 0.5 m above the exported floor, looking along +x at box 1's face (x = 1.5).
    c2w = parse_pose(gazebo_pose(z=0.5 + scene.world_from_scene[2, 3]), "gazebo")
    out = scene.render(K, c2w, ("depth", "panoptic"))
    assert out["depth"][60, 80] == pytest.approx(BOX1[0][0] - BOX1[1][0] / 2, abs=1e-3)
    assert out["panoptic"][60, 80] == 1


def test_compose_world_spawns_in_free_space(export):
    result = compose_world(export)
    x, y, yaw = result["spawn"]
    # Clear of both boxes, the wall at x = -3 and the floor's edges (+-3 m), by the footprint radius.
    for centre, ext in (BOX1, BOX2):
        dx = max(abs(x - centre[0]) - ext[0] / 2, 0.0)
        dy = max(abs(y - centre[1]) - ext[1] / 2, 0.0)
        assert np.hypot(dx, dy) > FOOTPRINT_RADIUS
    assert -3 + FOOTPRINT_RADIUS < x < 3 - FOOTPRINT_RADIUS and abs(y) < 3 - FOOTPRINT_RADIUS
    world = etree.parse(str(result["world"])).getroot().find("world")
    inc = [i for i in world.findall("include") if i.findtext("name") == "jackal"]
    assert len(inc) == 1 and inc[0].findtext("uri") == "model://simgen_jackal"
    pose = [float(v) for v in inc[0].findtext("pose").split()]
    np.testing.assert_allclose(pose, [x, y, 0.01, 0, 0, yaw], atol=1e-5)
    # The export's own models are all still there.
    exported = {p.name for p in (export / "models").iterdir()} - {"simgen_jackal"}
    assert exported <= {i.findtext("name") for i in world.findall("include")}
    assert oct(result["world"].stat().st_mode & 0o777) == "0o644"
    # Composing again starts from the export's untouched world: same file, still one robot.
    again = compose_world(export)
    assert again["world"] == result["world"] and again["spawn"] == result["spawn"]
    world = etree.parse(str(again["world"])).getroot().find("world")
    assert sum(i.findtext("name") == "jackal" for i in world.findall("include")) == 1
    with pytest.raises(WorldError, match="already has a model named 'box_1'"):
        compose_world(export, WorldConfig(name="box_1"))


@pytest.mark.skipif(IGN is None, reason="ign (ignition-tools + libsdformat) not installed")
def test_composed_world_is_valid_sdformat(export, tmp_path):
    world = compose_world(export, WorldConfig(name="rover", spawn=(0.5, -1.0, 0.3)))["world"]
    r = validate(world, export / "models")
    assert r.returncode == 0 and "Valid." in r.stdout, r.stdout + r.stderr
    # The validator really reads the included robot: break one of its joints and it says so.
    broken = tmp_path / "models"
    shutil.copytree(export / "models", broken)
    sdf = broken / "simgen_rover" / "model.sdf"
    sdf.write_text(sdf.read_text().replace("<child>front_left_wheel</child>", "<child>nowhere</child>"))
    r = validate(world, broken)
    assert r.returncode != 0 and "nowhere" in r.stdout + r.stderr


@pytest.mark.skipif(IGN is None, reason="ign (ignition-tools + libsdformat) not installed")
def test_repository_worlds_are_valid_and_current():
    models = REPO / "worlds" / "models"
    assert (models / "simgen_jackal" / "model.sdf").read_bytes() == xml_bytes(jackal_model_sdf())
    assert (models / "simgen_jackal" / "model.config").read_bytes() == xml_bytes(model_config())
    for f in (REPO / "worlds" / "jackal_empty.sdf", models / "simgen_jackal" / "model.sdf"):
        r = validate(f, models)
        assert r.returncode == 0 and "Valid." in r.stdout, f"{f}: {r.stdout}{r.stderr}"


def _pose(el) -> np.ndarray:
    v = [float(t) for t in (el.findtext("pose") or "0 0 0 0 0 0").split()]
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", v[3:]).as_matrix()
    T[:3, 3] = v[:3]
    return T


def test_robot_is_jackal_sized_and_wired():
    model = jackal_model_sdf(WorldConfig(topic="/r", rate_hz=12)).getroot().find("model")
    corners = []
    for link in model.findall("link"):
        T_link = _pose(link)
        for col in link.findall("collision"):
            T = T_link @ _pose(col)
            geom = col.find("geometry")
            if geom.find("box") is not None:
                m = trimesh.creation.box([float(v) for v in geom.findtext("box/size").split()], transform=T)
            else:
                r, h = float(geom.findtext("cylinder/radius")), float(geom.findtext("cylinder/length"))
                m = trimesh.creation.cylinder(radius=r, height=h, sections=64, transform=T)
            corners.append(m.bounds)
    corners = np.concatenate(corners)
    size = corners.max(0) - corners.min(0)
    np.testing.assert_allclose(size, [0.51, 0.43, 0.25], atol=2e-3)
    assert corners.min(0)[2] == pytest.approx(0.0, abs=1e-3)  # wheels touch the ground of the model frame
    wheels = [j for j in model.findall("joint") if j.get("type") == "revolute"]
    assert len(wheels) == 4
    dd = model.find("plugin[@name='gz::sim::systems::DiffDrive']")
    driven = {e.text for e in dd if e.tag in ("left_joint", "right_joint")}
    assert driven == {j.get("name") for j in wheels} and dd.findtext("topic") == "/r/cmd_vel"
    # The wheel axis (joint z in the child frame) is the model's +y on both sides: positive spin = forward.
    for j in wheels:
        link = model.find(f"link[@name='{j.findtext('child')}']")
        np.testing.assert_allclose(_pose(link)[:3, :3] @ [0, 0, 1], [0, 1, 0], atol=1e-9)
    py = model.find("plugin[@name='gz::sim::systems::PythonSystemLoader']")
    assert py.get("filename") == "gz-sim-python-system-loader-system"
    cfg = config_from_sdf({e.tag: e.text for e in py})
    assert (cfg.camera_link, cfg.rate_hz, cfg.topic) == ("camera_link", 12.0, "/r/simgen")
    assert model.find(f"link[@name='{cfg.camera_link}']/sensor[@type='camera']") is not None


def test_no_room_for_the_robot():
    floor = trimesh.creation.box(
        extents=(0.5, 0.5, 0.02), transform=trimesh.transformations.translation_matrix((0, 0, -0.01))
    )
    n = len(floor.vertices)
    mesh = PanopticMesh(
        floor.vertices, floor.faces, np.zeros((n, 3), np.uint8), np.ones(n, int), np.zeros(n, int)
    )
    with pytest.raises(WorldError, match="no floor point"):
        free_spawn_pose(mesh)


def test_simgen_world_cli(export, tmp_path, capsys):
    from simgen.cli import main

    assert (
        main(["world", str(export), "--name", "scout", "--spawn", "0.5", "-1", "0", "--rate-hz", "15"]) == 0
    )
    out = capsys.readouterr().out
    assert "scout" in out and "gz sim" in out
    text = (export / "models" / "simgen_scout" / "model.sdf").read_text()
    assert "<rate_hz>15</rate_hz>" in text
    assert main(["world", str(tmp_path / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["world", str(tmp_path)]) == 1
    assert "export.json: missing" in capsys.readouterr().err
    assert main(["world", str(export), "--name", "x", "--spawn", "1", "2"]) == 1
    assert "spawn must be 3" in capsys.readouterr().err


# -- simgen drive (MuJoCo stand-in for Gazebo) ---------------------------------------------------------------


def test_drive_reaches_waypoints_in_free_space(export, tmp_path):
    from simgen.sim.drive import DriveConfig, drive

    cfg = DriveConfig(
        waypoints=(0.0, -1.5, 1.0, -1.5), spawn=(-1.0, -1.0, 0.0), width=48, height=36, quiet=True
    )
    summary = drive(export, cfg, tmp_path / "d")
    assert summary["status"] == "reached" and summary["waypoints_reached"] == 2
    assert np.hypot(summary["final"]["x"] - 1.0, summary["final"]["y"] + 1.5) < cfg.reach
    frames = summary["frames"]
    # 10 Hz of simulation time, one frame per 0.1 s from t = 0.
    np.testing.assert_allclose(np.diff([f["time"] for f in frames]), 0.1, atol=1e-6)
    assert len(frames) == int(summary["final"]["time"] / 0.1) + 1
    # Each frame's camera is the robot pose plus the camera link offset (0.21 m ahead, 0.235 m up).
    for f in frames[:: max(1, len(frames) // 5)]:
        c2w = parse_pose(f["pose"], "gazebo")
        fwd = np.array([np.cos(f["yaw"]), np.sin(f["yaw"])])
        np.testing.assert_allclose(c2w[:2, 3], np.array([f["x"], f["y"]]) + 0.21 * fwd, atol=1e-6)
        assert c2w[2, 3] == pytest.approx(0.245, abs=1e-6)
    last = len(frames) - 1
    for kind in ("rgb", "depth", "panoptic"):
        assert (tmp_path / "d" / "frames" / f"{last:06d}_{kind}.png").is_file()
    assert (tmp_path / "d" / "drive.gif").stat().st_size > 0 and (
        tmp_path / "d" / "trajectory.json"
    ).is_file()


def test_drive_into_a_box_stops_where_the_images_see_it(export, tmp_path):
    """A waypoint behind box 1: the colliders stop the robot at the box face, and the last frame's depth
    and panoptic images see box 1 right in front of the camera."""
    from PIL import Image

    from simgen.data.io import rgb_to_id
    from simgen.sim.drive import DriveConfig, drive

    cfg = DriveConfig(
        waypoints=(3.0, 0.0), spawn=(-0.5, 0.0, 0.0), width=64, height=48, quiet=True, gif=False
    )
    summary = drive(export, cfg, tmp_path / "d")
    assert summary["status"] == "blocked" and summary["blocked_by"].startswith("box_1")
    face = BOX1[0][0] - BOX1[1][0] / 2  # x = 1.5
    x = summary["final"]["x"]
    assert face - 0.255 - 0.02 < x < face - 0.255 + 0.01  # chassis front (0.255 m ahead) at the face
    k = len(summary["frames"]) - 1
    depth_mm = np.asarray(Image.open(tmp_path / "d" / "frames" / f"{k:06d}_depth.png"))
    cam_x = summary["frames"][-1]["pose"]["x"]
    assert depth_mm[24, 32] == pytest.approx((face - cam_x) * 1000, abs=2)
    pan = rgb_to_id(
        np.asarray(Image.open(tmp_path / "d" / "frames" / f"{k:06d}_panoptic.png").convert("RGB"))
    )
    assert pan[24, 32] == 1 and (pan == 1).mean() > 0.5  # box 1 fills the view


def test_simgen_drive_cli(export, tmp_path, capsys):
    from simgen.cli import main

    args = ["drive", str(export), "--spawn", "-1", "-1", "0", "--width", "32", "--height", "24", "--quiet"]
    assert main([*args, "--waypoints", "-0.5", "-1", "-o", str(tmp_path / "d"), "--no-gif"]) == 0
    assert "reached: 1/1 waypoints" in capsys.readouterr().out
    assert main([*args, "--waypoints", "1"]) == 1
    assert "x y pairs" in capsys.readouterr().err
    assert main(["drive", str(tmp_path), "--waypoints", "0", "0"]) == 1
    assert "export.json: missing" in capsys.readouterr().err
