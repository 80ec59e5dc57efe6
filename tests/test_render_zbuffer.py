"""The compiled CPU z-buffer (simgen.render.zbuffer) against exact geometry and against embree.

Ground truth: a floor made of two large triangles that reach behind the camera (analytic depth and hit
points), and the noise-free ``tiny`` scene's GT mesh (its GT depth and panoptic images). Agreement with the
ray caster (:class:`FastCaster`) uses the thresholds of the GL rasterizer's tests (tests/test_render_raster.py)
on the tiny GT mesh and on the exact room of tests/helpers/export_scenes.py, from the GT frames, a camera
1 cm from a wall looking along it (faces crossing the camera plane and behind it), one looking into the
void, and a wide off-centre camera.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.depth_edges import away_from_edges
from helpers.export_scenes import make_mesh
from helpers.served_gt import FRAMES, WORLD_FROM_SCENE, expected_panoptic

from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh
from simgen.render import raster as RA
from simgen.render import zbuffer as ZB
from simgen.render.caster import FACE, FastCaster
from simgen.serve.scene import load_render_scene

pytest.importorskip("numba")
pytest.importorskip("embreex")

K_WIDE = Intrinsics(200.0, 210.0, 150.3, 101.7, 320, 200)  # off-centre principal point, ~77 deg wide
ALL = ("rgb", "depth", "panoptic", FACE)


def _look(eye, forward, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``(4, 4)`` camera-to-world, OpenCV axes (x right, y down, z forward), world z up."""
    z = np.asarray(forward, float) / np.linalg.norm(forward)
    x = np.cross(z, np.asarray(up, float))
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def _assert_agree(a: dict, b: dict, min_interior: float = 0.5) -> None:
    """``b`` gives ``a``'s images: hit / miss on >= 99.5 % of the pixels; away from depth edges depth within
    1 mm, equal panoptic ids and RGB within 2 / 255 on >= 99.5 %; the same segments in view."""
    assert ((a["depth"] > 0) == (b["depth"] > 0)).mean() >= 0.995
    interior = away_from_edges(a["depth"], b["depth"])
    if min_interior > 0:
        assert interior.mean() >= min_interior
    if interior.any():
        assert (np.abs(a["depth"] - b["depth"])[interior] < 1e-3).mean() >= 0.995
        assert (a["panoptic"] == b["panoptic"])[interior].mean() >= 0.995
        rgb_close = np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max(-1) <= 2
        assert rgb_close[interior].mean() >= 0.995
    assert ((a[FACE] >= 0) == (b[FACE] >= 0)).mean() >= 0.995
    assert np.array_equal(b["segment_ids"], np.unique(b["panoptic"][b[FACE] >= 0]))
    assert set(a["segment_ids"].tolist()) == set(b["segment_ids"].tolist())


def _close_poses(fc: FastCaster, c2w: np.ndarray) -> list[np.ndarray]:
    """From ``c2w``: the camera moved to 1 cm before the surface its centre ray hits, once facing it and once
    turned 80 degrees about the world z axis (looking along the surface, which then crosses the camera
    plane next to the eye)."""
    K1 = Intrinsics(1.0, 1.0, 0.5, 0.5, 1, 1)
    d = float(fc.render(K1, c2w, ("depth",))["depth"][0, 0])
    assert d > 0.05
    near = c2w.copy()
    near[:3, 3] = c2w[:3, 3] + (d - 0.01) * c2w[:3, 2]
    a = np.radians(80.0)
    turned = near.copy()
    turned[:3, :3] = (
        np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ near[:3, :3]
    )
    return [near, turned]


def _crossing_faces_drawn(zb: ZB.ZBufferCaster, c2w: np.ndarray, face: np.ndarray) -> int:
    """How many faces with corners on both sides of the camera plane (z = 0) the image shows."""
    w2c = np.linalg.inv(c2w)
    z = (zb.vertices @ w2c[:3, :3].T + w2c[:3, 3])[:, 2][zb.faces]
    crossing = np.flatnonzero((z.min(1) < 0) & (z.max(1) > 0))
    return int(np.isin(crossing, face[face >= 0]).sum())


def test_floor_through_the_camera_plane_is_exact():
    # Two triangles of a 200 m floor z = 0 around a camera 1.5 m above it, looking level and slightly down:
    # both triangles cross the camera plane and reach behind it. Every pixel below the horizon sees the
    # floor at camera z = h / ray_y (OpenCV y down), the record's barycentrics give that hit point back.
    h = 1.5
    v = np.array([[-100, -100, 0], [100, -100, 0], [100, 100, 0], [-100, 100, 0]], np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    mesh = PanopticMesh(v, f, colors, np.full(4, 1), np.zeros(4, np.int64))
    zb = ZB.ZBufferCaster(mesh)
    K = Intrinsics(60.0, 60.0, 40.3, 30.1, 80, 60)
    for pitch in (0.0, 0.3):
        c2w = _look([0.3, -0.2, h], [np.cos(pitch), 0.1, -np.sin(pitch)])
        face, u, v_, t = zb.hits(K, c2w)
        # camera-frame ray per pixel and its world direction
        xs, ys = np.meshgrid(
            (np.arange(K.width) + 0.5 - K.cx) / K.fx, (np.arange(K.height) + 0.5 - K.cy) / K.fy
        )
        r = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)
        down = -(r @ c2w[:3, :3].T)[:, 2]  # world -z component of the (unnormalised) ray
        # far rows: the floor's edge is 100 m away, a ray reaching it so flat is left out of the check
        seen = down > h / 90.0
        assert (face[seen] >= 0).all() and (face[down <= 0] == -1).all()
        z = h / down[seen]
        depth = zb.render(K, c2w, ("depth",))["depth"].reshape(-1)
        assert np.allclose(depth[seen], z, rtol=1e-5)
        rw = r[seen] @ c2w[:3, :3].T
        hit = c2w[:3, 3] + rw / np.linalg.norm(rw, axis=1, keepdims=True) * t[seen, None]
        assert np.abs(hit[:, 2]).max() < 1e-4
        A, B, C = (v[f[face[seen], k]] for k in range(3))
        w1, w2 = u[seen, None].astype(np.float64), v_[seen, None].astype(np.float64)
        assert np.abs((1 - w1 - w2) * A + w1 * B + w2 * C - hit).max() < 1e-3
        assert (w1 >= -1e-6).all() and (w2 >= -1e-6).all() and (w1 + w2 <= 1 + 1e-6).all()


@pytest.fixture(scope="module")
def tiny(served_gt):
    """(``served_gt``: GT scene, served folder, segment table; FastCaster and ZBufferCaster of its GT mesh in
    the served frame)."""
    scene = load_render_scene(served_gt[1], rgb="mesh", warm=False)
    return served_gt, FastCaster(scene.mesh), ZB.ZBufferCaster(scene.mesh)


def test_zbuffer_matches_embree_on_the_tiny_gt_mesh(tiny):
    (scene, _, _), fc, zb = tiny
    for i in FRAMES:
        f = scene.frames[i]
        c2w = WORLD_FROM_SCENE @ f.c2w_cv
        for K in (f.intrinsics, K_WIDE):
            _assert_agree(fc.render(K, c2w, ALL), zb.render(K, c2w, ALL))
    for c2w in _close_poses(fc, WORLD_FROM_SCENE @ scene.frames[FRAMES[0]].c2w_cv):
        a, b = fc.render(K_WIDE, c2w, ALL), zb.render(K_WIDE, c2w, ALL)
        _assert_agree(a, b, min_interior=0.0)
        assert (a["depth"] > 0).mean() > 0.5 and a["depth"][a["depth"] > 0].min() < 0.05  # it is close
        assert _crossing_faces_drawn(zb, c2w, b[FACE]) >= 1  # the case this pose is for


def test_zbuffer_sees_nothing_where_nothing_is(tiny):
    zb = tiny[2]
    lo, hi = zb.vertices.min(0), zb.vertices.max(0)
    c2w = np.eye(4)  # the OpenCV z axis (forward) along world +z: up, out of the room
    c2w[:3, 3] = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] + 0.5]
    out = zb.render(K_WIDE, c2w, ALL)
    assert (out["depth"] == 0).all() and (out["panoptic"] == 0).all() and (out["rgb"] == 0).all()
    assert (out[FACE] == -1).all() and out["segment_ids"].size == 0
    # and a camera outside the bounds facing away from them
    out = zb.render(K_WIDE, _look(hi + 1.0, [1.0, 1.0, 0.2]), ALL)
    assert (out[FACE] == -1).all() and (out["depth"] == 0).all()


def test_zbuffer_matches_embree_on_the_exact_room():
    mesh = make_mesh()  # floor, walls and boxes of exact planes (tests/helpers/export_scenes.py)
    fc, zb = FastCaster(mesh), ZB.ZBufferCaster(mesh)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    centre = (lo + hi) / 2
    poses = [_look([centre[0], centre[1], 1.4], [np.cos(a), np.sin(a), -0.3]) for a in (0.3, 2.0, 4.0)]
    close = _close_poses(fc, poses[0])
    for c2w in poses + close:
        b = zb.render(K_WIDE, c2w, ALL)
        _assert_agree(fc.render(K_WIDE, c2w, ALL), b, min_interior=0.0)
        if any(c2w is c for c in close):
            assert _crossing_faces_drawn(zb, c2w, b[FACE]) >= 1


def test_served_zbuffer_backend_gives_the_gt_images(tiny):
    gt = tiny[0]
    scene, folder = gt[0], gt[1]
    zs = load_render_scene(folder, rgb="mesh", backend="zbuffer")
    ray = load_render_scene(folder, rgb="mesh", backend="raycast")
    assert zs.mesh_backend == "zbuffer" and isinstance(zs.caster, ZB.ZBufferCaster)
    # warm() built it and rendered the default camera through it: the kernels are loaded before a request
    assert zs._zbuffer is not None and zs._default_camera is not None and ray._zbuffer is None
    for i in FRAMES:
        f = scene.frames[i]
        c2w = WORLD_FROM_SCENE @ f.c2w_cv
        out = zs.render(f.intrinsics, c2w)
        gd = scene.depth(i)  # exact GT, stored in millimetres
        interior = away_from_edges(gd, out["depth"])
        assert interior.mean() > 0.7
        assert (np.abs(out["depth"] - gd)[interior] < 1e-3).mean() >= 0.995
        assert (out["panoptic"] == expected_panoptic(gt, i))[interior].mean() >= 0.995
        ref = ray.render(f.intrinsics, c2w)
        assert [s["id"] for s in out["segments"]] == [s["id"] for s in ref["segments"]]


def test_backend_choice_and_numba_fallback(monkeypatch):
    assert "zbuffer" in RA.BACKENDS
    assert RA.resolve_backend("zbuffer") == "zbuffer"
    monkeypatch.setattr(RA, "gl_renderer", lambda: None)
    assert RA.resolve_backend("auto") == "zbuffer"
    monkeypatch.setattr(RA, "gl_renderer", lambda: "NVIDIA H100 80GB HBM3/PCIe/SSE2")
    assert RA.resolve_backend("auto") == "raster"
    # Without numba: auto falls back to embree, zbuffer says what is missing.
    monkeypatch.setattr(RA, "gl_renderer", lambda: None)
    monkeypatch.setattr(ZB, "numba_available", lambda: False)
    assert RA.resolve_backend("auto") == "raycast"
    with pytest.raises(RuntimeError, match="zbuffer.*numba"):
        RA.resolve_backend("zbuffer")
    with pytest.raises(RuntimeError, match="zbuffer.*numba"):
        ZB.ZBufferCaster(make_mesh())


def test_serve_config_refuses_zbuffer_without_numba(monkeypatch):
    from simgen.config import ConfigError, dataclass_from_args
    from simgen.serve import config as SC

    assert SC.ServeConfig().backend == "auto" and SC.ServeConfig(backend="zbuffer").backend == "zbuffer"
    with pytest.raises(ValueError, match="backend must be one of"):
        SC.ServeConfig(backend="opengl")
    monkeypatch.setattr(SC, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="'zbuffer' needs numba"):
        SC.ServeConfig(backend="zbuffer")
    assert SC.ServeConfig(backend="auto").backend == "auto"  # auto falls back instead
    # the flags' path (simgen serve --backend zbuffer): a ConfigError, i.e. exit 2 with the message
    ns = argparse.Namespace(**{**SC.ServeConfig().__dict__, "backend": "zbuffer"})
    with pytest.raises(ConfigError, match="numba"):
        dataclass_from_args(SC.ServeConfig, ns)


def test_without_numba_auto_falls_back_to_raycast():
    # A fresh interpreter where numba cannot be imported: the module-level fallbacks, not a monkeypatch.
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from simgen.render import raster as RA, zbuffer as ZB\n"
        "RA.gl_renderer = lambda: None\n"
        "print(ZB.numba_available(), RA.resolve_backend('auto'))\n"
        "try:\n    RA.resolve_backend('zbuffer')\nexcept RuntimeError as e:\n    print(e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "False raycast" and "zbuffer" in second and "numba" in second


def test_bad_camera_is_refused(tiny):
    zb = tiny[2]
    with pytest.raises(ValueError, match="c2w_cv"):
        zb.render(K_WIDE, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="fx, fy"):
        zb.render(Intrinsics(0.0, 10.0, 5.0, 5.0, 10, 10), np.eye(4))
    with pytest.raises(ValueError, match="width and height"):
        zb.render(Intrinsics(10.0, 10.0, 5.0, 5.0, 0, 10), np.eye(4))
