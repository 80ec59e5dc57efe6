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
from helpers.serve_scenes import BOX1, BOX2, K, gazebo_pose
from helpers.sim import synthetic_export
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen.data.poses import parse_pose
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
def export(box_export_copy):
    """The box scene exported by the real pipeline (this module's own copy: tests here write into it)."""
    return box_export_copy


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
    x, y, yaw = result.spawn
    # Clear of both boxes, the wall at x = -3 and the floor's edges (+-3 m), by the footprint radius.
    for centre, ext in (BOX1, BOX2):
        dx = max(abs(x - centre[0]) - ext[0] / 2, 0.0)
        dy = max(abs(y - centre[1]) - ext[1] / 2, 0.0)
        assert np.hypot(dx, dy) > FOOTPRINT_RADIUS
    assert -3 + FOOTPRINT_RADIUS < x < 3 - FOOTPRINT_RADIUS and abs(y) < 3 - FOOTPRINT_RADIUS
    world = etree.parse(str(result.world)).getroot().find("world")
    inc = [i for i in world.findall("include") if i.findtext("name") == "jackal"]
    assert len(inc) == 1 and inc[0].findtext("uri") == "model://simgen_jackal"
    pose = [float(v) for v in inc[0].findtext("pose").split()]
    np.testing.assert_allclose(pose, [x, y, 0.01, 0, 0, yaw], atol=1e-5)
    # The export's own models are all still there.
    exported = {p.name for p in (export / "models").iterdir()} - {"simgen_jackal"}
    assert exported <= {i.findtext("name") for i in world.findall("include")}
    assert oct(result.world.stat().st_mode & 0o777) == "0o644"
    # Composing again starts from the export's untouched world: same file, still one robot.
    again = compose_world(export)
    assert again.world == result.world and again.spawn == result.spawn
    world = etree.parse(str(again.world)).getroot().find("world")
    assert sum(i.findtext("name") == "jackal" for i in world.findall("include")) == 1
    with pytest.raises(WorldError, match="already has a model named 'box_1'"):
        compose_world(export, WorldConfig(name="box_1"))


@pytest.mark.skipif(IGN is None, reason="ign (ignition-tools + libsdformat) not installed")
def test_composed_world_is_valid_sdformat(export, tmp_path):
    world = compose_world(export, WorldConfig(name="rover", spawn=(0.5, -1.0, 0.3))).world
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
    assert main(["world", str(export), "--name", "x", "--spawn", "1", "2"]) == 2  # a bad setting
    assert "spawn must be 3" in capsys.readouterr().err
    assert main(["world", str(export), "--hfov-rad", "3.2"]) == 2
    assert "hfov_rad in (0, pi)" in capsys.readouterr().err


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


@pytest.mark.slow
def test_simgen_drive_cli(export, tmp_path, capsys):
    from simgen.cli import main

    args = ["drive", str(export), "--spawn", "-1", "-1", "0", "--width", "32", "--height", "24", "--quiet"]
    assert main([*args, "--waypoints", "-0.5", "-1", "-o", str(tmp_path / "d"), "--no-gif"]) == 0
    assert "reached: 1/1 waypoints" in capsys.readouterr().out
    assert main([*args, "--waypoints", "1"]) == 2  # a bad setting, refused before anything runs
    assert "x y pairs" in capsys.readouterr().err
    # No --waypoints (the README's `simgen drive OUT`): the planned loop from the default spawn.
    quick = ["--width", "32", "--height", "24", "--quiet", "--no-gif", "--rate-hz", "2"]
    assert main(["drive", str(export), *quick, "-o", str(tmp_path / "loop")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reached (default route: a loop past") and "waypoints" in out
    assert main([*args, "--max-time", "0"]) == 2
    assert "max_time must be > 0" in capsys.readouterr().err
    assert main(["drive", str(tmp_path), "--waypoints", "0", "0"]) == 1
    assert "export.json: missing" in capsys.readouterr().err


# -- simgen drive's default route ----------------------------------------------------------------------------


def _robot_clearance(model, data, robot_geoms, scene_geoms, x0, y0, x, y, yaw) -> float:
    """Smallest distance (m) between the robot's colliders at world pose (x, y, yaw) and the scene's."""
    import mujoco

    jx, jy, jyaw = (model.joint(f"simgen_robot_{n}").qposadr[0] for n in ("x", "y", "yaw"))
    data.qpos[[jx, jy, jyaw]] = x - x0, y - y0, yaw
    mujoco.mj_forward(model, data)
    best = np.inf
    for a in robot_geoms:
        for b in scene_geoms:
            best = min(best, mujoco.mj_geomDistance(model, data, a, b, 1.0, None))
    return best


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "room"])
def test_default_route_is_a_collision_free_loop_past_every_object(preset, tmp_path):
    """No --waypoints: the planned loop's waypoints and the straight segments between them keep the robot
    clear of the MuJoCo colliders at any heading, the drive reaches every waypoint without touching
    anything, ends where it started, and passes every object of the scene."""
    import mujoco

    from simgen.sim.drive import ROBOT, DriveConfig, drive, scene_with_robot

    export = synthetic_export(tmp_path, preset)
    cfg = DriveConfig(width=32, height=24, rate_hz=5, quiet=True, gif=False)
    summary = drive(export, cfg, tmp_path / "d")
    assert summary["route"] == "default"
    assert summary["status"] == "reached", summary["status"]
    assert summary["waypoints_reached"] == len(summary["waypoints"]) >= 3
    assert summary["touched"] == []
    x0, y0, _ = summary["spawn"]
    np.testing.assert_allclose(summary["waypoints"][-1], [x0, y0], atol=1e-9)  # a loop
    # Independent check on the real colliders: the robot, at 8 headings, at every 5 cm of the route.
    model = mujoco.MjModel.from_xml_path(str(scene_with_robot(export, tuple(summary["spawn"]))))
    data = mujoco.MjData(model)
    robot = model.body(ROBOT).id
    collide = [g for g in range(model.ngeom) if model.geom_contype[g] or model.geom_conaffinity[g]]
    robot_geoms = [g for g in collide if model.geom_bodyid[g] == robot]
    scene_geoms = [g for g in collide if model.geom_bodyid[g] != robot]
    route = np.vstack([[x0, y0], summary["waypoints"]])
    points = [
        a + t * (b - a)
        for a, b in zip(route[:-1], route[1:], strict=True)
        for t in np.linspace(0, 1, max(2, int(np.linalg.norm(b - a) / 0.05)))
    ]
    for x, y in points[::3] if preset == "room" else points:
        for yaw in np.linspace(0, np.pi, 4, endpoint=False):
            d = _robot_clearance(model, data, robot_geoms, scene_geoms, x0, y0, x, y, yaw)
            assert d > 0.03, f"robot at ({x:.2f}, {y:.2f}, yaw {yaw:.2f}) is {d:.3f} m from a collider"
    # Every object is passed: some frame has the robot within its footprint + 1 m of the object.
    scene = load_render_scene(export, rgb="mesh")
    robot_xy = np.array([[f["x"], f["y"]] for f in summary["frames"]])
    inst = np.asarray(scene.mesh.instance)
    for k in np.unique(inst[inst > 0]):
        xy = np.asarray(scene.mesh.vertices)[inst == k, :2]
        c = xy.mean(0)
        size = np.linalg.norm(xy - c, axis=1).max()
        assert np.linalg.norm(robot_xy - c, axis=1).min() < size + FOOTPRINT_RADIUS + 1.0, f"object {k}"


def test_slab_section_of_a_pyramid_is_its_widest_cut():
    """A square pyramid (base 2 x 2 m at z = 0, apex at z = 1) cut by the slab 0.5 <= z <= 0.75: the xy
    projection is the cut at z = 0.5, a 1 x 1 m square, whatever extra points lie inside the hull."""
    from scipy.spatial import ConvexHull

    from simgen.sim.route import slab_section

    base = np.array([[x, y, 0.0] for x in (-1, 1) for y in (-1, 1)])
    pts = np.vstack([base, [[0, 0, 1.0]], np.random.default_rng(0).uniform(-0.2, 0.2, (20, 3)) + [0, 0, 0.3]])
    sec = slab_section(pts, 0.5, 0.75)
    hull = ConvexHull(sec)
    assert hull.volume == pytest.approx(1.0, abs=1e-9)  # 2-D hull "volume" is its area
    np.testing.assert_allclose(sec.min(0), [-0.5, -0.5], atol=1e-12)
    assert len(slab_section(pts, 1.5, 2.0)) == 0  # above the apex: nothing


def test_plan_loop_on_a_grid_with_a_pillar():
    """A 4 x 4 m free floor with a 0.6 m pillar in the middle and no objects: the loop goes round the
    pillar (every segment clear of it by the robot's radius) and returns to the start; a start walled in
    is refused with advice."""
    from scipy import ndimage

    from simgen.sim.route import RouteError, RouteGrid, plan_loop

    cell = 0.05
    n = 80
    centres = (np.indices((n, n)).transpose(1, 2, 0) + 0.5) * cell
    free = np.ones((n, n), bool)
    free[[0, -1], :] = free[:, [0, -1]] = False  # walls
    pillar = np.abs(centres - 2.0).max(-1) < 0.3
    free &= ~pillar
    clearance = ndimage.distance_transform_edt(free) * cell
    grid = RouteGrid(free, clearance, np.zeros(2), cell, FOOTPRINT_RADIUS + 0.1)
    waypoints, goals = plan_loop(grid, np.array([0.6, 0.6]), [])
    assert len(goals) >= 3 and np.allclose(waypoints[-1], [0.6, 0.6])
    route = np.vstack([[0.6, 0.6], waypoints])
    for a, b in zip(route[:-1], route[1:], strict=True):
        assert grid.segment_clear(a, b)
        for t in np.linspace(0, 1, 50):  # centre never within the radius of the pillar's square
            p = a + t * (b - a)
            d = np.hypot(*np.maximum(np.abs(p - 2.0) - 0.3, 0.0))
            assert d >= FOOTPRINT_RADIUS + 0.1 - cell
    # The loop goes round the pillar: the route's winding angle about the pillar centre is 2 pi.
    dense = []
    for a, b in zip(route, np.vstack([route[1:], route[:1]]), strict=True):
        dense.extend(a + t * (b - a) for t in np.linspace(0, 1, 20))
    ang = np.unwrap(np.arctan2(*(np.asarray(dense) - 2.0).T[::-1]))
    assert abs(abs(ang[-1] - ang[0]) - 2 * np.pi) < 1e-6
    small = np.zeros((16, 16), bool)
    small[1:-1, 1:-1] = True  # 0.7 m square of floor: no room for a 0.43 m radius anywhere
    tight = RouteGrid(small, ndimage.distance_transform_edt(small) * cell, np.zeros(2), cell, grid.radius)
    with pytest.raises(RouteError, match="give --waypoints"):
        plan_loop(tight, np.array([0.4, 0.4]), [])
