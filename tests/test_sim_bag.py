"""``simgen drive --bag``: the ROS 2 bag read back with the ``rosbags`` reader equals what the drive rendered
and did -- message counts, stamps, frame ids, images and the TF chain to the camera."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers.rosbag_reader import read_bag, stamp_ns, transform_matrix

from simgen.data.camera import Intrinsics
from simgen.data.io import rgb_to_id
from simgen.data.poses import parse_pose
from simgen.serve.scene import load_render_scene
from simgen.sim.bag import BagError
from simgen.sim.drive import HOVER, DriveConfig, drive
from simgen.sim.world import CAMERA_XYZ

W, H, HFOV = 40, 30, 1.047
CAMERA_TOPICS = ("image", "depth_image", "panoptic_image", "segments", "camera_info")


@pytest.fixture(scope="module")
def export(box_export_copy):
    """The box scene exported by the real pipeline (this module's own copy: tests here write into it)."""
    return box_export_copy


@pytest.fixture(scope="module")
def drive_with_bag(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("bag")
    cfg = DriveConfig(
        waypoints=(0.0, -1.5, 1.0, -1.5),
        spawn=(-1.0, -1.0, 0.3),
        width=W,
        height=H,
        hfov_rad=HFOV,
        quiet=True,
        gif=False,
        bag=str(out / "run.mcap"),
    )
    summary = drive(export, cfg, out / "d")
    return summary, out / "run.mcap", cfg


@pytest.mark.slow
def test_bag_topics_counts_and_stamps(drive_with_bag):
    summary, path, cfg = drive_with_bag
    assert summary["status"] == "reached" and summary["bag"]["path"] == str(path)
    msgs, order, types, qos = read_bag(path)
    assert types == {
        **{f"/jackal/simgen/{n}": "sensor_msgs/msg/Image" for n in CAMERA_TOPICS[:3]},
        "/jackal/simgen/segments": "std_msgs/msg/String",
        "/jackal/simgen/camera_info": "sensor_msgs/msg/CameraInfo",
        "/jackal/odometry": "nav_msgs/msg/Odometry",
        "/tf": "tf2_msgs/msg/TFMessage",
        "/tf_static": "tf2_msgs/msg/TFMessage",
        "/clock": "rosgraph_msgs/msg/Clock",
    }
    assert summary["bag"]["messages"] == {t: len(v) for t, v in msgs.items()}
    assert order == sorted(order)  # the bag reads back in time order
    frames = summary["frames"]
    frame_ns = [ns for ns, _ in msgs["/jackal/simgen/image"]]
    for n in CAMERA_TOPICS:
        assert [ns for ns, _ in msgs[f"/jackal/simgen/{n}"]] == frame_ns  # one of each per frame
    assert len(frame_ns) == len(frames)
    np.testing.assert_allclose(np.array(frame_ns) / 1e9, [f["time"] for f in frames], atol=1e-4)
    # Odometry and TF at 20 Hz of simulation time from t = 0 to the end of the drive.
    odom_ns = np.array([ns for ns, _ in msgs["/jackal/odometry"]])
    T = summary["final"]["time"]
    assert len(odom_ns) == math.floor(T * 20 + 1e-6) + 1 and odom_ns[0] == 0
    np.testing.assert_allclose(np.diff(odom_ns), 50_000_000, atol=1_000)
    assert [ns for ns, _ in msgs["/tf"]] == odom_ns.tolist()
    for topic, items in msgs.items():
        stamps = [ns for ns, _ in items]
        assert stamps == sorted(set(stamps)), topic  # strictly increasing per topic
        for ns, m in items:
            header = getattr(m, "header", None)
            if header is not None:
                assert stamp_ns(header) == ns, topic
            for tf in getattr(m, "transforms", []):
                assert stamp_ns(tf.header) == ns, topic
    # The clock ticks once at every stamp the bag holds.
    clock = [ns for ns, m in msgs["/clock"]]
    assert clock == sorted(set(order)) and all(
        m.clock.sec * 10**9 + m.clock.nanosec == ns for ns, m in msgs["/clock"]
    )
    # /tf_static once, latched (transient local) for late subscribers.
    assert len(msgs["/tf_static"]) == 1 and qos["/tf_static"][0].durability.name == "TRANSIENT_LOCAL"


def test_bag_frames_and_tf_chain(drive_with_bag):
    summary, path, _ = drive_with_bag
    msgs, *_ = read_bag(path)
    for _, m in msgs["/jackal/simgen/image"] + msgs["/jackal/simgen/camera_info"]:
        assert m.header.frame_id == "camera_optical_frame"
    (_, static), *_ = msgs["/tf_static"]
    chain = {(t.header.frame_id, t.child_frame_id): transform_matrix(t) for t in static.transforms}
    assert set(chain) == {
        ("world", "odom"),
        ("base_link", "camera_link"),
        ("camera_link", "camera_optical_frame"),
    }
    x0, y0, yaw0 = summary["spawn"]
    np.testing.assert_allclose(chain[("world", "odom")][:3, 3], [x0, y0, 0.0], atol=1e-12)
    np.testing.assert_allclose(chain[("base_link", "camera_link")][:3, 3], CAMERA_XYZ, atol=1e-12)
    odom = {}
    for ns, m in msgs["/tf"]:
        (tf,) = m.transforms
        assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "base_link")
        odom[ns] = transform_matrix(tf)
    for ns, m in msgs["/jackal/odometry"]:
        assert (m.header.frame_id, m.child_frame_id) == ("odom", "base_link")
        p = m.pose.pose.position
        np.testing.assert_allclose(odom[ns][:3, 3], [p.x, p.y, p.z], atol=1e-12)
    # world -> odom -> base_link -> camera_link -> optical at each frame's stamp is the camera pose the
    # drive rendered (OpenCV axes = the optical frame), and the base is where trajectory.json says.
    for (ns, _), f in zip(msgs["/jackal/simgen/image"], summary["frames"], strict=True):
        base = chain[("world", "odom")] @ odom[ns]
        np.testing.assert_allclose(base[:3, 3], [f["x"], f["y"], HOVER], atol=1e-9)
        c2w = base @ chain[("base_link", "camera_link")] @ chain[("camera_link", "camera_optical_frame")]
        np.testing.assert_allclose(c2w, parse_pose(f["pose"], "gazebo"), atol=1e-9)
    # The twist is in base_link: forward at cruise speed, no sideways slip.
    fwd = np.array([m.twist.twist.linear.x for _, m in msgs["/jackal/odometry"]])
    side = np.array([m.twist.twist.linear.y for _, m in msgs["/jackal/odometry"]])
    assert fwd.max() == pytest.approx(0.5, rel=0.05) and np.abs(side).max() < 0.05


def test_bag_images_equal_the_renders(drive_with_bag, export):
    summary, path, _ = drive_with_bag
    msgs, *_ = read_bag(path)
    scene = load_render_scene(export)
    f = (W / 2) / math.tan(HFOV / 2)
    K = Intrinsics(f, f, W / 2, H / 2, W, H)  # what the server makes of width, height, hfov_rad
    (_, info), *_ = msgs["/jackal/simgen/camera_info"]
    assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
    # ROS puts the first pixel's centre at 0: the principal point of a centred camera is (W - 1) / 2.
    np.testing.assert_allclose(info.k, [f, 0, (W - 1) / 2, 0, f, (H - 1) / 2, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], info.k.reshape(3, 3), atol=0)
    frames = summary["frames"]
    picks = sorted({0, len(frames) // 2, len(frames) - 1})
    for k in picks:
        out = scene.render(K, parse_pose(frames[k]["pose"], "gazebo"))
        rgb = msgs["/jackal/simgen/image"][k][1]
        assert (rgb.encoding, rgb.step, rgb.is_bigendian) == ("rgb8", 3 * W, 0)
        np.testing.assert_array_equal(rgb.data.reshape(H, W, 3), out["rgb"])
        depth = msgs["/jackal/simgen/depth_image"][k][1]
        assert (depth.encoding, depth.step) == ("32FC1", 4 * W)
        d = depth.data.view("<f4").reshape(H, W)
        expected = np.where(out["depth"] > 0, out["depth"].astype(np.float32), np.float32(np.inf))
        np.testing.assert_array_equal(d, expected)
        assert np.isfinite(d).any()
        pan = msgs["/jackal/simgen/panoptic_image"][k][1]
        np.testing.assert_array_equal(rgb_to_id(pan.data.reshape(H, W, 3)), out["panoptic"])
        segs = json.loads(msgs["/jackal/simgen/segments"][k][1].data)["segments"]
        assert segs == frames[k]["segments"]


def test_bag_folder_replace_and_failure(export, tmp_path):
    base = dict(waypoints=(-0.5, -1.0), spawn=(-1.0, -1.0, 0.0), width=16, height=12, quiet=True, gif=False)
    folder = tmp_path / "runbag"
    first = drive(export, DriveConfig(**base, bag=str(folder)), tmp_path / "d1")
    assert (folder / "metadata.yaml").is_file() and (folder / "runbag.mcap").is_file()
    msgs, *_ = read_bag(folder)
    assert len(msgs["/jackal/simgen/image"]) == len(first["frames"])
    # A second run replaces the bag whole; no temporary folder is left beside it.
    second = drive(export, DriveConfig(**base, bag=str(folder), rate_hz=5), tmp_path / "d2")
    msgs, *_ = read_bag(folder)
    assert len(msgs["/jackal/simgen/image"]) == len(second["frames"]) != len(first["frames"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1", "d2", "runbag"]
    # A drive that fails (no render server there) leaves no bag and no temporary files.
    cfg = DriveConfig(**base, bag=str(tmp_path / "fail.mcap"), server="http://127.0.0.1:9")
    with pytest.raises(OSError, match="Connection refused"):
        drive(export, cfg, tmp_path / "d3")
    assert not (tmp_path / "fail.mcap").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "dir.mcap").mkdir()
    with pytest.raises(BagError, match="dir.mcap: exists and is a folder"):
        drive(export, DriveConfig(**base, bag=str(tmp_path / "dir.mcap")), tmp_path / "d4")


def test_simgen_drive_bag_cli(export, tmp_path, capsys):
    from simgen.cli import main

    args = ["drive", str(export), "--spawn", "-1", "-1", "0", "--waypoints", "-0.5", "-1", "--quiet"]
    bag = tmp_path / "cli.mcap"
    assert main([*args, "--width", "16", "--height", "12", "--no-gif", "--bag", str(bag)]) == 0
    out = capsys.readouterr().out
    assert f"bag: {bag}" in out and bag.is_file()


@pytest.mark.slow
def test_terminated_drive_leaves_no_bag(export, tmp_path):
    """SIGTERM in the middle of `simgen drive --bag` (a job scheduler's stop): no bag, no temporary folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bag = tmp_path / "stop.mcap"
    cmd = [sys.executable, "-m", "simgen", "drive", str(export), "--spawn", "-1", "-1", "0"]
    cmd += ["--waypoints", "2.5", "-1.5", "--width", "64", "--height", "48", "--quiet", "--no-gif"]
    cmd += ["--bag", str(bag), "-o", str(tmp_path / "d")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "d" / "frames" / "000003_rgb.png").exists():  # a few frames into the bag
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not bag.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
