"""The Gazebo camera plugin without Gazebo: settings, pose maths, rate limiting, messages, the bridge loop
against the real Flask app, and the plugin file itself driven through fake ``gz`` modules."""

from __future__ import annotations

import datetime
import json
import threading
import time
import types

import numpy as np
import pytest
from helpers.gazebo import FakeSdf
from helpers.serve_scenes import BOX1
from scipy.spatial.transform import Rotation

from simgen.data.io import rgb_to_id
from simgen.data.poses import parse_pose
from simgen.sim.gazebo import (
    PIXEL_FORMAT,
    BridgeConfig,
    BridgeConfigError,
    CameraBridge,
    RateLimiter,
    build_messages,
    camera_pose,
    config_from_sdf,
    render_request,
    stamp,
)

# -- settings --------------------------------------------------------------------------------------------


def test_config_from_sdf_strings():
    cfg = config_from_sdf(
        {
            "module_name": "simgen_camera_system",
            "server": "http://10.0.0.2:8001",
            "camera_offset": "0.1 0 0.2  0 0.3 0",
            "rate_hz": "15",
            "width": "640",
            "outputs": "depth, panoptic",
            "asynchronous": "false",
            "depth_no_hit": "0",
            "topic": "/jackal/cam/",
        }
    )
    assert cfg.server == "http://10.0.0.2:8001" and cfg.camera_offset == (0.1, 0, 0.2, 0, 0.3, 0)
    assert (cfg.rate_hz, cfg.width, cfg.height, cfg.outputs) == (15.0, 640, 240, ("depth", "panoptic"))
    assert cfg.asynchronous is False and cfg.depth_no_hit == 0.0
    assert cfg.topics()["depth"] == "/jackal/cam/depth_image"
    assert cfg.topic_kinds()["/jackal/cam/camera_info"] == "camera_info"


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("width", "wide"),
        ("height", "0"),
        ("camera_offset", "1 2 3"),
        ("camera_offset", "0 0 0 0 0 nan"),
        ("outputs", "normals"),
        ("rate_hz", "0"),
        ("hfov_rad", "3.5"),
        ("server", "ftp://host"),
        ("asynchronous", "maybe"),
        ("camera_link", ""),
    ],
)
def test_config_errors_name_the_element(key, text):
    with pytest.raises(BridgeConfigError) as e:
        config_from_sdf({key: text})
    assert e.value.key == key and f"<{key}>" in str(e.value)


# -- pose, rate, request -----------------------------------------------------------------------------------


def test_camera_pose_composes_link_and_offset():
    yaw = Rotation.from_euler("z", 90, degrees=True).as_quat()  # link turned to face world +y
    pose = camera_pose((1.0, 2.0, 0.3), tuple(yaw), (0.2, 0.0, 0.25, 0.0, 0.4, 0.0))
    c2w = parse_pose(pose, "gazebo")
    # The offset's 0.2 m forward becomes +y in the world; pitch 0.4 rad tilts the optical axis down.
    np.testing.assert_allclose(c2w[:3, 3], [1.0, 2.2, 0.55], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [0.0, np.cos(0.4), -np.sin(0.4)], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 0], [1.0, 0.0, 0.0], atol=1e-12)  # image right = world +x
    # No offset: the link pose itself, canonical sign (qw >= 0) even for a negated input quaternion.
    plain = camera_pose((0, 0, 1), tuple(-yaw))
    assert plain["qw"] >= 0 and plain["qz"] == pytest.approx(np.sin(np.pi / 4))


def test_rate_limiter_follows_sim_time():
    lim = RateLimiter(10.0)
    steps = np.arange(0, 1.0, 0.001)  # 1 kHz physics for one simulated second
    fired = [t for t in steps if lim.due(float(t))]
    np.testing.assert_allclose(fired, np.arange(0, 1.0, 0.1), atol=1.5e-3)
    assert len(fired) == 10
    # After a pause of several periods: one render, then the grid restarts (no burst of catch-up renders).
    assert lim.due(5.0) and not lim.due(5.05) and lim.due(5.1)
    # Time going backwards (world reset) restarts the limiter.
    assert lim.due(0.0) and not lim.due(0.05)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_render_request_and_stamp():
    body = render_request(BridgeConfig(outputs=("depth",)), camera_pose((0, 0, 1), (0, 0, 0, 1)))
    assert body["convention"] == "gazebo" and body["outputs"] == ["depth"] and body["hfov_rad"] == 1.047
    assert stamp(12.25) == (12, 250_000_000) and stamp(3.9999999999) == (3, 999_999_999)


# -- messages ----------------------------------------------------------------------------------------------


def test_messages_from_a_render(app_render):
    cfg = BridgeConfig(width=64, height=48, hfov_rad=1.2, topic="/cam")
    result = app_render(render_request(cfg, camera_pose((0, 0, 0.5), (0, 0, 0, 1))))
    msgs = {topic: (kind, f) for topic, kind, f in build_messages(cfg, result, 7.5, "jackal::camera_link")}
    assert set(msgs) == set(cfg.topics().values())
    kind, rgb = msgs["/cam/image"]
    assert kind == "image" and rgb["pixel_format_type"] == PIXEL_FORMAT["RGB_INT8"] == 3
    assert (rgb["width"], rgb["height"], rgb["step"]) == (64, 48, 64 * 3)
    assert rgb["header"] == {"stamp": (7, 500_000_000), "frame_id": "jackal::camera_link"}
    np.testing.assert_array_equal(np.frombuffer(rgb["data"], np.uint8).reshape(48, 64, 3), result["rgb"])
    _, depth = msgs["/cam/depth_image"]
    assert depth["pixel_format_type"] == 13 and depth["step"] == 64 * 4
    d = np.frombuffer(depth["data"], "<f4").reshape(48, 64)
    hit = result["depth"] > 0
    np.testing.assert_array_equal(d[hit], result["depth"][hit])
    assert np.isposinf(d[~hit]).all() and (~hit).any()  # sky above the box: no hit -> +inf
    assert d[24, 32] == pytest.approx(BOX1[0][0] - BOX1[1][0] / 2, abs=1e-3)
    _, pan = msgs["/cam/panoptic_image"]
    ids = rgb_to_id(np.frombuffer(pan["data"], np.uint8).reshape(48, 64, 3))
    np.testing.assert_array_equal(ids, result["panoptic"])
    _, segs = msgs["/cam/segments"]
    assert {s["id"] for s in json.loads(segs["data"])["segments"]} == set(np.unique(ids).tolist()) - {0}
    kind, info = msgs["/cam/camera_info"]
    f = 32 / np.tan(0.6)
    # ROS convention (first pixel centre at 0): half a pixel off simgen's centred (32, 24)
    np.testing.assert_allclose(info["intrinsics"]["k"], [f, 0, 31.5, 0, f, 23.5, 0, 0, 1])
    np.testing.assert_allclose(info["projection"]["p"], [f, 0, 31.5, 0, 0, f, 23.5, 0, 0, 0, 1, 0])
    assert kind == "camera_info" and (info["width"], info["height"]) == (64, 48)


# -- the bridge loop ---------------------------------------------------------------------------------------


def _drive(bridge: CameraBridge, seconds: float, dt: float = 0.001, speed: float = 0.5) -> None:
    """The robot drives along +x at ``speed`` m/s, camera 0.5 m up, one bridge step per physics step."""
    for k in range(int(round(seconds / dt))):
        t = k * dt
        bridge.step(t, (speed * t - 1.0, 0.0, 0.5), (0.0, 0.0, 0.0, 1.0))


def test_bridge_synchronous_publishes_at_rate(app_render):
    published = []
    cfg = BridgeConfig(width=32, height=24, rate_hz=10, asynchronous=False, topic="/j")
    bridge = CameraBridge(cfg, app_render, lambda *m: published.append(m), frame_id="jackal::camera_link")
    _drive(bridge, 0.5)
    assert bridge.stats.requested == bridge.stats.published == 5 and bridge.stats.errors == 0
    depth = [f for topic, _, f in published if topic == "/j/depth_image"]
    assert [f["header"]["stamp"] for f in depth] == [stamp(0.1 * k) for k in range(5)]
    # The box face is at x = 1.5 and the camera starts at x = -1 moving +0.5 m/s: centre depth shrinks.
    centre = [np.frombuffer(f["data"], "<f4").reshape(24, 32)[12, 16] for f in depth]
    np.testing.assert_allclose(centre, [2.5 - 0.05 * k for k in range(5)], atol=2e-3)


def test_bridge_asynchronous_keeps_latest_pose_and_survives_errors(app_render):
    published, calls = [], []
    started, gate = threading.Event(), threading.Event()

    def slow_render(body):
        calls.append(body["pose"]["x"])
        started.set()
        gate.wait(5)  # hold the first render until the simulation has moved on
        return app_render(body)

    cfg = BridgeConfig(width=32, height=24, rate_hz=100, outputs=("depth",), topic="/j")
    bridge = CameraBridge(cfg, slow_render, lambda *m: published.append(m))
    bridge.step(0.0, (-1.0, 0.0, 0.5), (0.0, 0.0, 0.0, 1.0))
    assert started.wait(5)
    for k in range(1, 100):  # 9 more renders fall due while the first one is still running
        bridge.step(k * 0.001, (0.5 * k * 0.001 - 1.0, 0.0, 0.5), (0.0, 0.0, 0.0, 1.0))
    gate.set()
    assert bridge.wait_idle(20)
    bridge.close()
    assert bridge.stats.requested == 10
    # The first pose, then only the newest one: the 8 in between were replaced, never queued.
    assert bridge.stats.dropped == 8 and bridge.stats.published == 2 and len(calls) == 2
    assert calls[1] == pytest.approx(0.5 * 0.09 - 1.0)
    stamps = [f["header"]["stamp"] for topic, _, f in published if topic == "/j/depth_image"]
    assert stamps == [stamp(0.0), stamp(0.09)]

    def down(body):
        raise ConnectionRefusedError("no server")

    bridge = CameraBridge(BridgeConfig(asynchronous=False), down, lambda *m: published.append(m))
    n = len(published)
    _drive(bridge, 0.3)
    assert bridge.stats.errors == 3 and "ConnectionRefusedError" in bridge.stats.last_error
    assert len(published) == n


# -- the plugin file with fake gz modules ------------------------------------------------------------------


def test_plugin_publishes_gz_messages(plugin_module):
    module, world, types_ = plugin_module
    system = module.get_system()
    sdf = {"module_name": "simgen_camera_system", "width": "32", "height": "24", "rate_hz": "5"}
    system.configure(7, FakeSdf(sdf | {"asynchronous": "false", "topic": "/jackal/simgen"}), object(), None)
    assert system.bridge is not None
    for k in range(1000):  # one simulated second at 1 kHz
        info = types.SimpleNamespace(paused=False, sim_time=datetime.timedelta(milliseconds=k))
        system.pre_update(info, object())
    system.pre_update(types.SimpleNamespace(paused=True, sim_time=datetime.timedelta(seconds=2)), object())
    system.shutdown()
    by_topic = {}
    for topic, msg_type, msg in world["published"]:
        by_topic.setdefault(topic, []).append((msg_type, msg))
    assert {t: len(v) for t, v in by_topic.items()} == {
        f"/jackal/simgen/{n}": 5
        for n in ("image", "depth_image", "panoptic_image", "segments", "camera_info")
    }
    msg_type, depth = by_topic["/jackal/simgen/depth_image"][1]
    assert msg_type is types_["Image"] and isinstance(depth, types_["Image"])
    assert (depth.width, depth.height, depth.step, depth.pixel_format_type) == (32, 24, 128, 13)
    assert (depth.header.stamp.sec, depth.header.stamp.nsec) == (0, 200_000_000)
    entry = depth.header.data._items[0]
    assert entry.key == "frame_id" and entry.value._items == ["jackal::camera_link"]
    assert np.frombuffer(depth.data, "<f4").reshape(24, 32)[12, 16] == pytest.approx(2.5, abs=2e-3)
    _, info = by_topic["/jackal/simgen/camera_info"][0]
    assert isinstance(info, types_["CameraInfo"]) and len(info.intrinsics.k._items) == 9
    assert len(info.projection.p._items) == 12 and info.rectification_matrix._items[0] == 1.0
    _, segs = by_topic["/jackal/simgen/segments"][0]
    assert isinstance(segs, types_["StringMsg"]) and "segments" in json.loads(segs.data)


def test_plugin_disables_itself_on_bad_settings(plugin_module, caplog):
    module, world, _ = plugin_module
    system = module.get_system()
    system.configure(7, FakeSdf({"width": "wide"}), object(), None)
    assert system.bridge is None and "<width>" in caplog.text
    system.configure(7, FakeSdf({"camera_link": "mast"}), object(), None)
    assert system.bridge is None and "no link 'mast'" in caplog.text
    info = types.SimpleNamespace(paused=False, sim_time=datetime.timedelta(seconds=1))
    system.pre_update(info, object())  # a disabled plugin does nothing, and does not raise
    time.sleep(0.01)
    assert world["published"] == []
