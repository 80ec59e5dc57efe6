"""Several cameras per request (``POST /render/rig``): a real ``simgen serve`` process on 127.0.0.1.

The served folder is the synthetic scene's exact GT mesh in a rotated, shifted world (the fixture of
test_serve_server.py). A rig pose plus per-camera offsets that put each camera at a GT frame's pose must give
that frame's GT depth and panoptic image; the Gazebo bridge's rig mode must publish what the server renders
for each camera.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.served_gt import FRAMES, WORLD_FROM_SCENE, expected_panoptic, post
from helpers.server import Server

from simgen.data.poses import from_c2w_cv, pose_from_c2w_cv
from simgen.serve.api import depth_to_mm
from simgen.serve.client import RenderClient
from simgen.sim.gazebo import (
    BridgeConfig,
    BridgeConfigError,
    CameraBridge,
    camera_pose,
    offset_matrix,
    rig_camera_name,
    rig_configs,
)

# The rig (robot link) pose in the world: any rigid transform; the offsets are computed against it.
RIG = np.array(
    [
        [0.0, -1.0, 0.0, 0.4],
        [1.0, 0.0, 0.0, 1.1],
        [0.0, 0.0, 1.0, 0.3],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture(scope="module")
def gt(served_gt):
    """(scene with GT, served folder, {GT segment id: expected server segment id})."""
    return served_gt


@pytest.fixture(scope="module")
def server(gt):  # noqa: F811
    flags = ("--max-width", "640", "--max-height", "480", "--max-batch", "4", "--max-batch-pixels", "800000")
    s = Server(gt[1], *flags).wait()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    with RenderClient(server.url, retries=0) as c:
        yield c


def _matrix_pose(T: np.ndarray) -> dict:
    return {"matrix": T.tolist()}


def test_rig_cameras_match_ground_truth(gt, client):  # noqa: F811
    scene = gt[0]
    cams = []
    for i in FRAMES:
        f = scene.frames[i]
        K = f.intrinsics
        cam_gz = from_c2w_cv(WORLD_FROM_SCENE @ f.c2w_cv, "gazebo")  # camera link frame in the world
        offset = np.linalg.inv(RIG) @ cam_gz  # ... in the rig frame
        cams.append(
            {"name": f"f{i}", "offset": offset, "width": K.width, "height": K.height, "fx": K.fx, "fy": K.fy}
            | {"cx": K.cx, "cy": K.cy, "outputs": ["depth", "panoptic"] if i != FRAMES[0] else ["depth"]}
        )
    out = client.render_rig(RIG, cams)
    assert list(out) == [f"f{i}" for i in FRAMES]  # request order
    for i in FRAMES:
        r = out[f"f{i}"]
        gd = scene.depth(i)
        valid = gd > 0
        assert r["depth"].shape == gd.shape and np.array_equal(r["depth"] > 0, valid)
        assert np.abs(r["depth"] - gd)[valid].max() < 6e-4  # GT depth is stored in millimetres
        want_c2w = WORLD_FROM_SCENE @ scene.frames[i].c2w_cv
        assert np.abs(r["c2w_cv"] - want_c2w).max() < 1e-6  # matrices are re-orthonormalised
        assert np.allclose(r["K"], scene.frames[i].intrinsics.matrix())
        if i == FRAMES[0]:
            assert "panoptic" not in r and r["segments"] == []  # each camera gets only its own outputs
        else:
            assert (r["panoptic"] == expected_panoptic(gt, i)).mean() > 0.999
            assert {s["id"] for s in r["segments"]} == set(np.unique(r["panoptic"]).tolist()) - {0}


def test_rig_equals_single_renders_with_own_intrinsics(gt, client):  # noqa: F811
    # Two cameras of different size and field of view, offset from the rig: each image equals a /render of
    # the composed pose, and the default offset is the rig pose itself.
    rig = pose_from_c2w_cv(WORLD_FROM_SCENE @ gt[0].frames[FRAMES[1]].c2w_cv, "gazebo")
    off = offset_matrix((0.1, 0.05, 0.2, 0.0, 0.3, 0.5))
    cams = [
        {"name": "front", "width": 160, "height": 120, "hfov_deg": 90, "outputs": ["depth", "panoptic"]},
        {"name": "side", "offset": off, "width": 96, "height": 64, "fx": 80.0, "outputs": ["rgb", "depth"]},
    ]
    out = client.render_rig(rig, cams, depth_format="uint16_mm")
    one = client.render(rig, width=160, height=120, hfov_deg=90, outputs=["depth", "panoptic"])
    assert np.array_equal(out["front"]["depth_mm"], depth_to_mm(one["depth"]))
    assert np.array_equal(out["front"]["panoptic"], one["panoptic"])
    side_pose = camera_pose(
        (rig["x"], rig["y"], rig["z"]),
        (rig["qx"], rig["qy"], rig["qz"], rig["qw"]),
        (0.1, 0.05, 0.2, 0.0, 0.3, 0.5),
    )
    two = client.render(
        side_pose, width=96, height=64, fx=80.0, outputs=["rgb", "depth"], depth_format="uint16_mm"
    )
    assert np.array_equal(out["side"]["rgb"], two["rgb"]) and np.array_equal(
        out["side"]["depth_mm"], two["depth_mm"]
    )
    assert out["side"]["intrinsics"].fx == 80.0 and out["side"]["rgb"].shape == (64, 96, 3)
    assert (out["front"]["depth_mm"] > 0).mean() > 0.5


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cameras": []}, "cameras"),
        ({"cameras": [{"name": "a"}, {"name": "a"}]}, "cameras[1].name"),
        ({"cameras": [{"name": "a b"}]}, "cameras[0].name"),
        ({"cameras": [{"width": 5000}]}, "cameras[0].width"),
        ({"cameras": [{"outputs": ["normals"]}]}, "cameras[0].outputs"),
        (
            {"cameras": [{"offset": {"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 2}}]},
            "cameras[0].offset.qw",
        ),
        ({"cameras": [{"convention": "opengl"}]}, "cameras[0].convention"),
        (
            {"cameras": [{"width": 640, "height": 480}] * 4},
            "cameras",
        ),  # more pixels than --max-batch-pixels allows
        ({"cameras": [{}] * 5}, "cameras"),  # more cameras than --max-batch
        ({"encoding": "multipart"}, "encoding"),
        ({"poses": []}, "poses"),
    ],
)
def test_rig_errors_name_the_field(server, change, field):
    body = {"pose": {"x": 0, "y": 0, "z": 1, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "cameras": [{}]} | change
    status, _, payload = post(server.url, "/render/rig", body)
    assert status == 400, payload
    import json

    assert json.loads(payload)["field"] == field


def test_rig_is_in_the_openapi_document(client):
    spec = client.openapi()
    assert "/render/rig" in spec["paths"] and "RigRequest" in spec["components"]["schemas"]


def test_gazebo_bridge_rig_publishes_every_camera_from_one_request(gt, client):  # noqa: F811
    front = rig_configs(
        {"rate_hz": "10", "asynchronous": "false", "outputs": "depth panoptic"},
        [
            {"topic": "/robot/front", "width": "80", "height": "60"},
            {"topic": "/robot/left", "camera_offset": "0 0.1 0 0 0 1.5708", "width": "64", "height": "48"},
        ],
    )
    bodies, published = [], []

    def render(body):
        bodies.append(body)
        return client.post_rig(body)

    bridge = CameraBridge(front, render, lambda *m: published.append(m), frame_id="robot::base")
    link = pose_from_c2w_cv(WORLD_FROM_SCENE @ gt[0].frames[FRAMES[2]].c2w_cv, "gazebo")
    pos, quat = (link["x"], link["y"], link["z"]), (link["qx"], link["qy"], link["qz"], link["qw"])
    assert bridge.step(0.0, pos, quat) and not bridge.step(0.05, pos, quat)  # 10 Hz: one tick
    assert len(bodies) == 1 and [c["name"] for c in bodies[0]["cameras"]] == ["robot_front", "robot_left"]
    topics = [m[0] for m in published]
    for base in ("/robot/front", "/robot/left"):
        assert {f"{base}/depth_image", f"{base}/panoptic_image", f"{base}/camera_info"} <= set(topics)
    # The left camera's depth message holds what /render gives for the link pose composed with its offset.
    msg = next(m[2] for m in published if m[0] == "/robot/left/depth_image")
    depth = np.frombuffer(msg["data"], "<f4").reshape(48, 64)
    want = client.render(
        camera_pose(pos, quat, (0, 0.1, 0, 0, 0, 1.5708)), width=64, height=48, hfov_rad=1.047
    )
    assert np.array_equal(np.where(np.isinf(depth), 0, depth), want["depth"])
    assert msg["header"]["stamp"] == (0, 0) and msg["header"]["frame_id"] == "robot::base"


def test_rig_configs_reject_per_camera_link_settings_and_shared_topics():
    with pytest.raises(BridgeConfigError, match="rate_hz"):
        rig_configs({}, [{"topic": "/a"}, {"topic": "/b", "rate_hz": "30"}])
    with pytest.raises(BridgeConfigError, match="topic"):
        rig_configs({}, [{"topic": "/a"}, {"topic": "/a/"}])
    with pytest.raises(BridgeConfigError, match="topic"):
        CameraBridge([BridgeConfig(topic="/a/b"), BridgeConfig(topic="/a_b")], dict, print)
    assert rig_camera_name(BridgeConfig(topic="/simgen/cam-1"), 0) == "simgen_cam-1"
    assert len(rig_configs({"topic": "/x"}, [])) == 1  # no <camera> blocks: the plugin's single camera


class _FakeSdf:
    """The plugin's ``sdf`` element with ``<camera>`` children (sdformat's find_element / get_next_element)."""

    def __init__(self, values: dict, cameras: list[dict] | None = None, siblings: list | None = None):
        self.values = values
        self.children = [_FakeSdf(c, None, []) for c in cameras or []]
        for i, c in enumerate(self.children):
            c.siblings = self.children[i + 1 :]
        self.siblings = siblings or []

    def has_element(self, key):
        return key in self.values or (key == "camera" and bool(self.children))

    def get_string(self, key):
        return self.values[key]

    def find_element(self, key):
        return self.children[0] if key == "camera" and self.children else None

    def get_next_element(self, key):
        return self.siblings[0] if self.siblings else None


def test_gazebo_plugin_rig_from_camera_blocks(plugin_module, tmp_path):  # noqa: F811
    import datetime
    import types

    from helpers.serve_scenes import make_build

    from simgen.serve.app import create_app
    from simgen.serve.client import decode_rig_npz
    from simgen.serve.scene import load_render_scene

    module, world, _ = plugin_module
    app = create_app(load_render_scene(make_build(tmp_path / "build"))).test_client()

    class RigClient:
        def __init__(self, url, timeout, retries):
            pass

        def post_rig(self, body):
            r = app.post("/render/rig", json=body)
            assert r.status_code == 200, r.data
            return decode_rig_npz(r.data)

    module.RenderClient = RigClient
    system = module.get_system()
    shared = {"rate_hz": "5", "asynchronous": "false", "outputs": "depth"}
    cams = [
        {"topic": "/jackal/front", "width": "32", "height": "24"},
        {"topic": "/jackal/back", "width": "16", "height": "12", "camera_offset": "0 0 0 0 0 3.14159"},
    ]
    system.configure(7, _FakeSdf(shared, cams), object(), None)
    assert system.bridge is not None and system.bridge.rig
    for k in range(400):  # 0.4 s at 1 kHz, 5 Hz: ticks at 0 and 0.2 s
        system.pre_update(
            types.SimpleNamespace(paused=False, sim_time=datetime.timedelta(milliseconds=k)), object()
        )
    system.shutdown()
    counts: dict[str, int] = {}
    for topic, _, _ in world["published"]:
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == {
        f"/jackal/{c}/{t}": 2 for c in ("front", "back") for t in ("depth_image", "camera_info")
    }
    front = next(m for t, _, m in world["published"] if t == "/jackal/front/depth_image")
    back = next(m for t, _, m in world["published"] if t == "/jackal/back/depth_image")
    assert (front.width, back.width) == (32, 16)
    # The two cameras look in opposite directions from the same link pose: different images.
    assert np.frombuffer(front.data, "<f4").mean() != pytest.approx(np.frombuffer(back.data, "<f4").mean())
