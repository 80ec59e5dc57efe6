"""``simgen drive --rig``: several cameras rendered by one ``/render/rig`` request per frame.

On the ``tiny`` preset's exact GT mesh, exported by the real pipeline: each rig camera's depth in the bag
equals a single-camera render at that camera's pose computed here from the base pose and the camera's
offset (bit for bit), the bag holds every camera's topics with one message per frame each, and the static
TF chain ``world -> odom -> base_link -> <name>_link -> <name>_optical_frame`` reproduces every camera pose.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.rosbag_reader import read_bag, transform_matrix
from PIL import Image
from scipy.spatial.transform import Rotation

from simgen.data.camera import Intrinsics
from simgen.data.poses import parse_pose, to_c2w_cv
from simgen.serve.api import depth_to_mm
from simgen.serve.scene import load_render_scene
from simgen.sim.drive import HOVER, DriveConfig, DriveError, drive, load_rig
from simgen.sim.gazebo import offset_matrix
from simgen.sim.world import CAMERA_XYZ

CAMERA_TOPICS = ("image", "depth_image", "panoptic_image", "segments", "camera_info")
# A front camera on the robot's camera link, and a smaller one 20 cm to the left looking left and
# slightly down, with its own field of view.
RIG = """
width: 40
height: 30
cameras:
  - name: front
  - name: left
    camera_offset: [0.05, 0.2, 0.3, 0.0, 0.25, 1.5707963]
    width: 32
    height: 24
    hfov_rad: 1.3
    outputs: [depth, panoptic]
"""


@pytest.fixture(scope="module")
def export(tiny_gt_export) -> Path:
    return tiny_gt_export


def _drive(export: Path, root: Path, **kw) -> tuple[dict, Path]:
    rig = root / "rig.yaml"
    rig.write_text(RIG)
    cfg = DriveConfig(rig=str(rig), max_time=1.5, quiet=True, bag=str(root / "run.mcap"), **kw)
    return drive(export, cfg, root / "d"), root / "run.mcap"


@pytest.fixture(scope="module")
def rig_drive(export, tmp_path_factory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("rig_drive")
    summary, bag = _drive(export, root)
    return summary, bag, root / "d"


def camera_c2w(frame: dict, offset) -> np.ndarray:
    """``(4, 4)`` OpenCV-axes camera-to-world of a rig camera: base_link at ``frame``'s x, y, yaw (HOVER
    above the floor) times the camera's SDF offset."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", frame["yaw"]).as_matrix()
    T[:3, 3] = frame["x"], frame["y"], HOVER
    return to_c2w_cv(T @ offset_matrix(tuple(offset)), "gazebo")


def test_rig_depth_equals_single_camera_renders(rig_drive, export):
    summary, bag, dest = rig_drive
    assert summary["camera"] is None and [c["name"] for c in summary["cameras"]] == ["front", "left"]
    front, left = summary["cameras"]
    assert front["offset"] == [*CAMERA_XYZ, 0.0, 0.0, 0.0] and (front["width"], front["height"]) == (40, 30)
    assert (left["width"], left["height"], left["hfov_rad"], left["outputs"]) == (
        32,
        24,
        1.3,
        ["depth", "panoptic"],
    )
    assert (dest / "frames" / "front" / "000000_rgb.png").is_file()
    assert not (dest / "frames" / "left" / "000000_rgb.png").exists()  # not asked for
    frames = summary["frames"]
    # 10 Hz of simulation time from t = 0 until the 1.5 s limit.
    assert len(frames) >= 15 and [f["time"] for f in frames] == [
        round(k * 0.1, 4) for k in range(len(frames))
    ]
    scene = load_render_scene(export)
    msgs, *_ = read_bag(bag)
    seen_depth = 0
    for cam in summary["cameras"]:
        W, H = cam["width"], cam["height"]
        f = (W / 2) / math.tan(cam["hfov_rad"] / 2)
        K = Intrinsics(f, f, W / 2, H / 2, W, H)
        depth_msgs = msgs[f"/jackal/simgen/{cam['name']}/depth_image"]
        for k, fr in enumerate(frames):
            c2w = camera_c2w(fr, cam["offset"])
            np.testing.assert_allclose(
                parse_pose(fr["cameras"][cam["name"]]["pose"], "gazebo"), c2w, atol=1e-9
            )
            single = scene.render(K, c2w)
            d = depth_msgs[k][1].data.view("<f4").reshape(H, W)
            np.testing.assert_array_equal(np.where(np.isinf(d), 0, d), single["depth"])
            png = np.asarray(Image.open(dest / "frames" / cam["name"] / f"{k:06d}_depth.png"))
            np.testing.assert_array_equal(png, depth_to_mm(single["depth"]))
            assert fr["cameras"][cam["name"]]["segments"] == single["segments"]
            seen_depth += int((single["depth"] > 0).sum())
    assert seen_depth > 0.9 * sum(c["width"] * c["height"] for c in summary["cameras"]) * len(frames)
    # The two cameras look different ways: their images differ.
    assert frames[0]["cameras"]["front"]["pose"] != frames[0]["cameras"]["left"]["pose"]
    traj = json.loads((dest / "trajectory.json").read_text())
    assert traj["cameras"] == summary["cameras"]
    with Image.open(dest / "drive.gif") as gif:  # one row per camera (RGB | depth | panoptic), padded
        assert gif.n_frames == len(frames) and gif.size == (3 * 40, 30 + 24)


def test_rig_bag_topics_counts_and_tf(rig_drive):
    summary, bag, _ = rig_drive
    msgs, order, types, _ = read_bag(bag)
    n = len(summary["frames"])
    frame_ns = None
    assert "/jackal/simgen/left/image" not in types  # the left camera renders no RGB
    for cam in ("front", "left"):
        for t in CAMERA_TOPICS if cam == "front" else CAMERA_TOPICS[1:]:
            topic = f"/jackal/simgen/{cam}/{t}"
            assert len(msgs[topic]) == n, topic
            stamps = [ns for ns, _ in msgs[topic]]
            frame_ns = frame_ns or stamps
            assert stamps == frame_ns, topic  # every camera's messages of one tick share its stamp
        for _, m in msgs[f"/jackal/simgen/{cam}/depth_image"] + msgs[f"/jackal/simgen/{cam}/camera_info"]:
            assert m.header.frame_id == f"{cam}_optical_frame"
    assert "/jackal/simgen/image" not in types and order == sorted(order)
    np.testing.assert_allclose(np.array(frame_ns) / 1e9, [f["time"] for f in summary["frames"]], atol=1e-4)
    (_, static), *_ = msgs["/tf_static"]
    chain = {(t.header.frame_id, t.child_frame_id): transform_matrix(t) for t in static.transforms}
    assert set(chain) == {
        ("world", "odom"),
        ("base_link", "front_link"),
        ("front_link", "front_optical_frame"),
        ("base_link", "left_link"),
        ("left_link", "left_optical_frame"),
    }
    odom = {ns: transform_matrix(m.transforms[0]) for ns, m in msgs["/tf"]}
    for cam in summary["cameras"]:
        name = cam["name"]
        np.testing.assert_allclose(
            chain[("base_link", f"{name}_link")], offset_matrix(cam["offset"]), atol=1e-12
        )
        for ns, fr in zip(frame_ns, summary["frames"], strict=True):
            c2w = (
                chain[("world", "odom")]
                @ odom[ns]
                @ chain[("base_link", f"{name}_link")]
                @ chain[(f"{name}_link", f"{name}_optical_frame")]
            )
            np.testing.assert_allclose(c2w, parse_pose(fr["cameras"][name]["pose"], "gazebo"), atol=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cameras: []", "non-empty list 'cameras'"),
        ("cameras: [{name: a}, {name: a}]", "cameras[1].name: 'a' is already the name of cameras[0]"),
        ("cameras: [{name: a b}]", "cameras[0].name"),
        ("cameras: [{name: a, rate_hz: 5}]", "cameras[0].rate_hz: unknown key"),
        ("cameras: [{name: a, camera_offset: [1, 2, 3]}]", "cameras[0].camera_offset: expected 6 numbers"),
        ("cameras: [{name: a, width: 0}]", "cameras[0].width: must lie in [1, 8192]"),
        ("cameras: [{name: a, topic: /x}, {name: b, topic: /x/}]", "topic '/x' is already used"),
        ("server: http://h:1\ncameras: [{name: a}]", "unknown key 'server'"),
        ("height: -3\ncameras: [{name: a}]", "rig.yaml: height: must lie in [1, 8192]"),
        ("cameras: [", "not valid YAML or JSON"),
    ],
)
def test_rig_file_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    with pytest.raises(DriveError) as e:
        load_rig(path, DriveConfig())
    assert str(path) in str(e.value) and message in str(e.value)


def test_rig_json_file_and_flag_defaults(tmp_path):
    path = tmp_path / "rig.json"
    path.write_text(json.dumps({"cameras": [{"name": "a", "outputs": "depth"}, {"name": "b", "width": 8}]}))
    a, b = load_rig(path, DriveConfig(width=20, height=10, hfov_rad=0.9, topic="/r"))
    assert (a.cfg.width, a.cfg.height, a.cfg.hfov_rad, a.cfg.outputs) == (20, 10, 0.9, ("depth",))
    assert (b.cfg.width, b.cfg.outputs) == (8, ("rgb", "depth", "panoptic"))
    assert a.cfg.topic == "/r/simgen/a" and a.cfg.camera_offset == (*CAMERA_XYZ, 0.0, 0.0, 0.0)
    assert (b.link_frame, b.optical_frame) == ("b_link", "b_optical_frame")


@pytest.mark.slow
def test_rig_drive_through_the_server_equals_in_process(export, rig_drive, tmp_path):
    """``--server``: the same rig request answered by a real ``simgen serve`` gives the same frames."""
    from helpers.server import Server

    summary, _, dest = rig_drive
    # the in-process drive renders with load_render_scene's default backend (raycast): the same here, so
    # the frames can be compared byte for byte (the server's default, auto, may take the z-buffer)
    server = Server(export, "--backend", "raycast").wait()
    try:
        remote, _ = _drive(export, tmp_path, server=server.url)
    finally:
        server.stop()
    assert remote["frames"] == summary["frames"]
    for cam in ("front", "left"):
        for k in range(len(summary["frames"])):
            for out in ("rgb", "depth", "panoptic") if cam == "front" else ("depth", "panoptic"):
                name = f"{k:06d}_{out}.png"
                local = (dest / "frames" / cam / name).read_bytes()
                assert (tmp_path / "d" / "frames" / cam / name).read_bytes() == local


def test_simgen_drive_rig_cli(export, tmp_path, capsys):
    from simgen.cli import main

    bad = tmp_path / "rig.yaml"
    bad.write_text("cameras: [{name: a, hfov_rad: 4}]")
    assert main(["drive", str(export), "--rig", str(bad), "-o", str(tmp_path / "d")]) == 1
    assert f"--rig {bad}: cameras[0].hfov_rad: out of range" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any frame
