"""The render server end to end: a real ``simgen serve`` process (waitress, 2 workers) on 127.0.0.1.

The served folder is a synthetic scene's exact ground-truth mesh stored in a "scene" frame, plus an
``alignment.json`` that moves it into a rotated, shifted world frame (what ``simgen export`` writes).
Rendering at a GT frame's camera pose, mapped through the alignment, must then reproduce that frame's GT
depth and GT panoptic image: this checks pose conventions, intrinsics, alignment and labels at once.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers.served_gt import FRAMES, WORLD_FROM_SCENE, expected_panoptic, get, post
from helpers.server import Server
from PIL import Image

from simgen.data.io import rgb_to_id
from simgen.data.poses import pose_from_c2w_cv
from simgen.serve.api import parse_multipart
from simgen.serve.client import RenderClient, RenderError

# world_from_scene of the served folder: 30 degrees about z, then a shift (a non-trivial alignment).


@pytest.fixture(scope="module")
def gt(served_gt):
    """(scene with GT, served folder, {GT segment id: expected server segment id})."""
    return served_gt


@pytest.fixture(scope="module")
def servers(gt):
    """The main server (2 worker processes, small limits) and a one-slot server for overload tests,
    started together so their start-up overlaps."""
    main = Server(gt[1], "--workers", "2", "--max-width", "640", "--max-height", "480", "--max-batch", "4")
    busy = Server(gt[1], "--max-concurrent", "1", "--queue-depth", "1", "--queue-timeout", "30")
    try:
        yield main.wait(), busy.wait()
    finally:
        main.stop()
        busy.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(server):
    with RenderClient(server.url, retries=0) as c:
        yield c


def frame_request(scene, i: int, convention: str = "gazebo") -> dict:
    """Pose and intrinsics of GT frame ``i`` in the served world frame."""
    f = scene.frames[i]
    K = f.intrinsics
    pose = pose_from_c2w_cv(WORLD_FROM_SCENE @ f.c2w_cv, convention)
    return {
        "pose": pose,
        "width": K.width,
        "height": K.height,
        "fx": K.fx,
        "fy": K.fy,
        "cx": K.cx,
        "cy": K.cy,
        "convention": convention,
    }


# -- rendering against ground truth --------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["gazebo", "ros_optical", "opengl"])
def test_render_matches_ground_truth(gt, client, convention):
    scene = gt[0]
    for i in FRAMES:
        req = frame_request(scene, i, convention)
        pose, cam = req.pop("pose"), {k: req[k] for k in ("fx", "fy", "cx", "cy")}
        out = client.render(pose, width=req["width"], height=req["height"], convention=convention, **cam)
        gd = scene.depth(i)
        valid = gd > 0
        assert out["depth"].dtype == np.float32 and out["depth"].shape == gd.shape
        assert valid.mean() > 0.9 and np.array_equal(out["depth"] > 0, valid)
        # GT depth is stored in millimetres: half a millimetre of quantisation, nothing more.
        assert np.abs(out["depth"] - gd)[valid].max() < 6e-4
        want = expected_panoptic(gt, i)
        assert (out["panoptic"] == want).mean() > 0.999
        # Segment list: exactly the ids in view, with the GT categories.
        segs = {s["id"]: s for s in out["segments"]}
        assert set(segs) == set(np.unique(out["panoptic"]).tolist()) - {0}
        for gid, cid in scene.gt.segments.items():
            sid = gt[2][gid]
            if sid in segs:
                assert segs[sid]["category_id"] == cid
                assert segs[sid]["category_name"] == scene.categories[cid].name
                assert segs[sid]["isthing"] == scene.categories[cid].isthing
        np.testing.assert_allclose(out["c2w_cv"], WORLD_FROM_SCENE @ scene.frames[i].c2w_cv, atol=1e-9)
        np.testing.assert_allclose(out["K"], scene.frames[i].intrinsics.matrix(), atol=1e-9)
        assert out["rgb"].shape == (*gd.shape, 3) and out["rgb"].dtype == np.uint8
        assert out["meta"]["world_frame"] == "gazebo"


def test_matrix_pose_and_hfov(gt, client):
    scene = gt[0]
    req = frame_request(scene, 3, "opencv")
    c2w = WORLD_FROM_SCENE @ scene.frames[3].c2w_cv
    by_quat = client.render(req["pose"], convention="opencv", width=96, height=72, hfov_deg=64.0)
    by_matrix = client.render(c2w, convention="opencv", width=96, height=72, hfov_deg=64.0)
    np.testing.assert_array_equal(by_quat["depth"], by_matrix["depth"])
    f = 48 / np.tan(np.radians(32.0))
    np.testing.assert_allclose(by_matrix["K"], [[f, 0, 48], [0, f, 36], [0, 0, 1]], atol=1e-9)


def test_batch_equals_single_renders(gt, client):
    scene = gt[0]
    reqs = [frame_request(scene, i) for i in FRAMES]
    cam = {k: reqs[0][k] for k in ("fx", "fy", "cx", "cy")}
    W, H = reqs[0]["width"], reqs[0]["height"]
    batch = client.render_batch([r["pose"] for r in reqs], width=W, height=H, **cam)
    assert batch["depth"].shape == (len(FRAMES), H, W) and batch["c2w_cv"].shape == (len(FRAMES), 4, 4)
    assert len(batch["segments"]) == len(FRAMES)
    for k, r in enumerate(reqs):
        one = client.render(r["pose"], width=W, height=H, **cam)
        for name in ("rgb", "depth", "panoptic"):
            np.testing.assert_array_equal(batch[name][k], one[name])
        assert batch["segments"][k] == one["segments"]


def test_multipart_png_parts(gt, server):
    scene = gt[0]
    body = frame_request(scene, 5) | {"encoding": "multipart", "outputs": ["depth", "panoptic", "rgb"]}
    status, headers, payload = post(server.url, "/render", body)
    assert status == 200 and headers["Content-Type"].startswith("multipart/mixed")
    parts = parse_multipart(payload)
    assert set(parts) == {"rgb", "depth", "panoptic", "meta"}
    depth_mm = np.asarray(Image.open(io.BytesIO(parts["depth"])))
    assert depth_mm.dtype == np.uint16
    gd = scene.depth(5)
    assert np.abs(depth_mm.astype(np.int64) - np.rint(gd * 1000)).max() <= 1
    pan = rgb_to_id(np.asarray(Image.open(io.BytesIO(parts["panoptic"])).convert("RGB")))
    assert (pan == expected_panoptic(gt, 5)).mean() > 0.999
    meta = json.loads(parts["meta"])
    assert meta["intrinsics"]["width"] == 96 and {s["id"] for s in meta["segments"]} <= set(np.unique(pan))


def test_npz_uint16_depth(gt, client):
    req = frame_request(gt[0], 0)
    cam = {k: req[k] for k in ("fx", "fy", "cx", "cy")}
    out = client.render(req["pose"], width=96, height=72, outputs=["depth"], depth_format="uint16_mm", **cam)
    assert set(out) >= {"depth_mm"} and "rgb" not in out and "panoptic" not in out
    assert np.abs(out["depth_mm"].astype(np.int64) - np.rint(gt[0].depth(0) * 1000)).max() <= 1


def test_png_endpoints(gt, client):
    req = frame_request(gt[0], 11)
    params = {k: req[k] for k in ("width", "height", "fx", "fy", "cx", "cy")}
    png, headers = client.png("depth", req["pose"], **params)
    depth_mm = np.asarray(Image.open(io.BytesIO(png)))
    assert depth_mm.dtype == np.uint16 and headers["x-simgen-depth-unit"] == "millimetre"
    assert np.abs(depth_mm.astype(np.int64) - np.rint(gt[0].depth(11) * 1000)).max() <= 1
    png, headers = client.png("panoptic", req["pose"], **params)
    pan = rgb_to_id(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    assert (pan == expected_panoptic(gt, 11)).mean() > 0.999
    assert {s["id"] for s in json.loads(headers["x-simgen-segments"])} == set(np.unique(pan).tolist()) - {0}
    fx, fy, cx, cy, W, H = headers["x-simgen-intrinsics"].split()
    assert (float(fx), int(W), int(H)) == (pytest.approx(req["fx"]), 96, 72)
    for output in ("rgb", "depth", "panoptic"):
        png, _ = client.png(output, req["pose"], vis=1, **params)
        img = Image.open(io.BytesIO(png))
        assert img.mode == "RGB" and img.size == (96, 72)


# -- descriptive endpoints -----------------------------------------------------------------------------


def test_scene_health_openapi_and_viewer(gt, client, server):
    scene = gt[0]
    info = client.scene()
    assert info["world_frame"] == "gazebo"
    np.testing.assert_allclose(info["world_from_scene"], WORLD_FROM_SCENE)
    names = {c["id"]: c["name"] for c in info["categories"]}
    assert all(names[cid] == scene.categories[cid].name for cid in scene.gt.segments.values())
    things = {gid for gid, cid in scene.gt.segments.items() if scene.categories[cid].isthing}
    assert {r["id"] for r in info["instances"]} == things
    v = np.asarray(scene.gt.mesh().vertices) @ WORLD_FROM_SCENE[:3, :3].T + WORLD_FROM_SCENE[:3, 3]
    np.testing.assert_allclose(info["world_bounds"]["min"], v.min(0), atol=1e-3)
    np.testing.assert_allclose(info["world_bounds"]["max"], v.max(0), atol=1e-3)
    # The default camera sees mostly surface.
    cam = info["default_camera"]
    out = client.render(cam["pose"], width=64, height=48, hfov_deg=cam["hfov_deg"], outputs=["depth"])
    assert (out["depth"] > 0.3).mean() > 0.5
    health = client.health()
    assert health["status"] == "ok" and health["served"] >= 0
    spec = client.openapi()
    assert spec["openapi"].startswith("3.") and {"/render", "/render/batch", "/scene", "/healthz"} <= set(
        spec["paths"]
    )
    status, headers, page = get(server.url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/render/rgb.png" in page or b"render/" in page


# -- errors --------------------------------------------------------------------------------------------

GOOD_POSE = {"x": 2.0, "y": 1.5, "z": 1.2, "qx": 0.0, "qy": 0.0, "qz": 0.0, "qw": 1.0}
BAD_BODIES = [
    ({}, "pose"),
    ({"pose": GOOD_POSE | {"x": "left"}}, "pose.x"),
    ({"pose": GOOD_POSE | {"y": float("nan")}}, "pose.y"),
    ({"pose": GOOD_POSE | {"z": float("inf")}}, "pose.z"),
    ({"pose": {k: v for k, v in GOOD_POSE.items() if k != "qz"}}, "pose.qz"),
    ({"pose": GOOD_POSE | {"qw": 2.0}}, "pose.qw"),
    ({"pose": GOOD_POSE | {"roll": 0.0}}, "pose.roll"),
    ({"pose": {"matrix": [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}, "pose.matrix"),
    ({"pose": {"matrix": [[1, 0, 0], [0, 1, 0]]}}, "pose.matrix"),
    ({"pose": [1, 2, 3]}, "pose"),
    ({"pose": GOOD_POSE, "width": 641}, "width"),
    ({"pose": GOOD_POSE, "height": 0}, "height"),
    ({"pose": GOOD_POSE, "width": 2.5}, "width"),
    ({"pose": GOOD_POSE, "outputs": ["normals"]}, "outputs"),
    ({"pose": GOOD_POSE, "outputs": []}, "outputs"),
    ({"pose": GOOD_POSE, "convention": "ros"}, "convention"),
    ({"pose": GOOD_POSE, "encoding": "tiff"}, "encoding"),
    ({"pose": GOOD_POSE, "encoding": "multipart", "depth_format": "float32"}, "depth_format"),
    ({"pose": GOOD_POSE, "hfov_deg": 180}, "hfov_deg"),
    ({"pose": GOOD_POSE, "fx": -3.0}, "fx"),
    ({"pose": GOOD_POSE, "fy": 100.0}, "fx"),
    ({"pose": GOOD_POSE, "fx": 100.0, "hfov_deg": 60}, "hfov_deg"),
    ({"pose": GOOD_POSE, "colour": True}, "colour"),
    ([GOOD_POSE], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f for _, f in BAD_BODIES])
def test_render_errors_name_the_field(server, body, field):
    status, headers, payload = post(server.url, "/render", body)
    assert status == 400, payload
    err = json.loads(payload)
    assert err["field"] == field and err["error"]
    assert headers["Content-Type"] == "application/json"


def test_other_errors(server):
    url = server.url
    status, _, payload = post(url, "/render", None, raw=b"{not json")
    assert status == 400 and json.loads(payload)["field"] == "body"
    # Over --max-body-bytes (1 MiB): Flask answers JSON before reading the body; far over it, waitress's
    # backstop cuts the connection short with a plain 413 so a huge upload never reaches memory.
    status, _, payload = post(url, "/render", None, raw=b"[" + b"0," * (600 << 10) + b"0]")
    assert status == 413 and json.loads(payload)["field"] == "body"
    try:
        assert post(url, "/render", None, raw=b" " * (5 << 20))[0] == 413
    except urllib.error.URLError:
        pass  # waitress may reset the connection while the client is still sending
    assert get(url, "/healthz")[0] == 200
    batch = {"poses": [GOOD_POSE] * 5}
    status, _, payload = post(url, "/render/batch", batch)
    assert status == 400 and json.loads(payload)["field"] == "poses"
    status, _, payload = post(url, "/render/batch", {"poses": [GOOD_POSE, GOOD_POSE | {"qw": 0.5}]})
    assert status == 400 and json.loads(payload)["field"] == "poses[1].qw"
    status, _, payload = post(url, "/render/batch", {"poses": []})
    assert status == 400 and json.loads(payload)["field"] == "poses"
    q = "x=1&y=1&z=1&qx=0&qy=0&qz=0"
    status, _, payload = get(url, f"/render/depth.png?{q}")
    assert status == 400 and json.loads(payload)["field"] == "qw"
    status, _, payload = get(url, f"/render/depth.png?{q}&qw=0.3")
    assert status == 400 and json.loads(payload)["field"] == "qw"
    status, _, payload = get(url, f"/render/depth.png?{q}&qw=1&matrix=1,2")
    assert status == 400 and json.loads(payload)["field"] == "x"
    status, _, payload = get(url, f"/render/depth.png?{q}&qw=1&depth_max=-1")
    assert status == 400 and json.loads(payload)["field"] == "depth_max"
    status, _, payload = get(url, "/render/normals.png")
    assert status == 404 and "error" in json.loads(payload)
    status, headers, payload = get(url, "/render")
    assert status == 405 and "POST" in headers["Allow"]


def test_client_raises_with_field(client):
    with pytest.raises(RenderError) as e:
        client.render(GOOD_POSE | {"qw": 0.9})
    assert e.value.status == 400 and e.value.field == "pose.qw"
    with pytest.raises(ValueError, match="base_url"):
        RenderClient("ftp://host")


# -- load ----------------------------------------------------------------------------------------------


def test_concurrent_clients_get_identical_images(gt, client):
    """Threads sharing a server, alternating two camera models: every answer equals the reference for
    its own camera (no state leaks between concurrent requests)."""
    req = frame_request(gt[0], 5)
    cams = [
        {"width": 96, "height": 72, **{k: req[k] for k in ("fx", "fy", "cx", "cy")}},
        {"width": 40, "height": 30, "hfov_deg": 75.0},
    ]
    refs = [client.render(req["pose"], **cam) for cam in cams]

    def one(i):
        out = client.render(req["pose"], **cams[i % 2])
        return all(np.array_equal(out[k], refs[i % 2][k]) for k in ("rgb", "depth", "panoptic"))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(one, range(36)))


def test_overload_answers_503_and_recovers(servers):
    busy = servers[1]
    body = {"pose": GOOD_POSE, "width": 640, "height": 480, "hfov_deg": 90}

    def one(_):
        status, headers, payload = post(busy.url, "/render", body)
        if status == 503:
            assert headers["Retry-After"] == "1" and "busy" in json.loads(payload)["error"]
        return status

    # One render slot and one queue place: of 12 simultaneous requests most must be turned away at once.
    with ThreadPoolExecutor(12) as pool:
        statuses = Counter(pool.map(one, range(12)))
    assert set(statuses) == {200, 503} and statuses[200] >= 2, statuses
    health = json.loads(get(busy.url, "/healthz")[2])
    assert health["rejected"] == statuses[503] and health["running"] == 0 and health["waiting"] == 0
    assert post(busy.url, "/render", body)[0] == 200
    assert busy.proc.poll() is None


# -- simgen render (no server) -------------------------------------------------------------------------


def test_simgen_render_cli_matches_server(gt, client, tmp_path, capsys):
    from simgen.cli import main

    req = frame_request(gt[0], 0)
    p = req["pose"]
    pose_args = [str(p[k]) for k in ("x", "y", "z", "qx", "qy", "qz", "qw")]
    intr = ["--fx", str(req["fx"]), "--fy", str(req["fy"]), "--cx", str(req["cx"]), "--cy", str(req["cy"])]
    common = [str(gt[1]), "--pose", *pose_args, "--size", "96", "72", *intr]
    assert main(["render", *common, "--output", "depth", "-o", str(tmp_path / "d.png")]) == 0
    depth_mm = np.asarray(Image.open(tmp_path / "d.png"))
    ref = client.render(
        p,
        width=96,
        height=72,
        outputs=["depth"],
        depth_format="uint16_mm",
        **{k: req[k] for k in ("fx", "fy", "cx", "cy")},
    )
    np.testing.assert_array_equal(depth_mm, ref["depth_mm"])
    assert main(["render", *common, "--output", "panoptic", "-o", str(tmp_path / "p.png")]) == 0
    pan = rgb_to_id(np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
    assert (pan == expected_panoptic(gt, 0)).mean() > 0.999
    segs = json.loads((tmp_path / "p.segments.json").read_text())["segments"]
    assert {s["id"] for s in segs} == set(np.unique(pan).tolist()) - {0}
    assert main(["render", *common, "--output", "rgb", "depth", "-o", str(tmp_path / "v.npz")]) == 0
    with np.load(tmp_path / "v.npz") as z:
        assert z["rgb"].shape == (72, 96, 3) and z["depth"].dtype == np.float32
    capsys.readouterr()
    bad = [str(gt[1]), "--pose", "0", "0", "1", "0", "0", "0", "0.5", "-o", str(tmp_path / "x.png")]
    assert main(["render", *bad]) == 2
    assert "--pose" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert (
        main(["render", str(tmp_path / "missing"), "--pose", *pose_args, "-o", str(tmp_path / "y.png")]) == 1
    )
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_fuzz_from_openapi_no_server_errors(server, tmp_path):
    """schemathesis generates requests from /openapi.json: never a 5xx, declared status codes and
    content types only, JSON bodies matching their schemas."""
    pytest.importorskip("schemathesis")
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "-c", checks]
    cmd += ["-n", "10", "--generation-deterministic", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout.split("SUMMARY")[-1]


def test_gazebo_bridge_over_http_matches_ground_truth(gt, server):
    """The Gazebo plugin's request/response contract against the real server: link poses of GT frames
    in, gz.msgs.Image fields out, depth and panoptic equal to the GT images."""
    from simgen.sim.gazebo import BridgeConfig, CameraBridge

    scene = gt[0]
    K = scene.frames[0].intrinsics
    assert K.cx == K.width / 2 and K.fx == K.fy  # the plugin's camera model: square pixels, centred
    hfov = 2 * np.arctan(K.width / 2 / K.fx)
    cfg = BridgeConfig(server=server.url, width=K.width, height=K.height, hfov_rad=hfov, asynchronous=False)
    published = []
    with RenderClient(server.url, retries=0) as c:
        bridge = CameraBridge(cfg, c.post_render, lambda *m: published.append(m))
        for step, i in enumerate(FRAMES):
            p = pose_from_c2w_cv(WORLD_FROM_SCENE @ scene.frames[i].c2w_cv, "gazebo")
            bridge.step(step * 1.0, (p["x"], p["y"], p["z"]), (p["qx"], p["qy"], p["qz"], p["qw"]))
    assert bridge.stats.published == len(FRAMES) and bridge.stats.errors == 0
    topics = cfg.topics()
    depth = [f for t, _, f in published if t == topics["depth"]]
    pan = [f for t, _, f in published if t == topics["panoptic"]]
    for k, i in enumerate(FRAMES):
        d = np.frombuffer(depth[k]["data"], "<f4").reshape(K.height, K.width)
        assert np.abs(d - scene.depth(i)).max() < 6e-4
        ids = rgb_to_id(np.frombuffer(pan[k]["data"], np.uint8).reshape(K.height, K.width, 3))
        assert (ids == expected_panoptic(gt, i)).mean() > 0.999
