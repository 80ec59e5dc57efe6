"""Mesh render backends against each other and against ground truth.

The OpenGL rasterizer (moderngl on Mesa's software rasterizer here, a GPU elsewhere) must give the ray
caster's depth (within 1 mm) and panoptic ids (equal) on >= 99.5 % of the pixels away from depth edges, on
the synthetic scene's exact GT mesh; the compiled hit shading of the ray caster must give the numpy path's
images exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.served_gt import FRAMES, WORLD_FROM_SCENE, expected_panoptic
from helpers.server import Server
from scipy.ndimage import minimum_filter

from simgen.data.camera import Intrinsics
from simgen.render import raster as RA
from simgen.render.caster import FastCaster
from simgen.serve.client import RenderClient
from simgen.serve.scene import load_render_scene


@pytest.fixture(scope="module")
def gt(served_gt):
    """(scene with GT, served folder, {GT segment id: expected server segment id})."""
    return served_gt


@pytest.fixture(scope="module")
def scenes(gt):  # noqa: F811
    if RA.gl_renderer() is None:
        pytest.skip("no OpenGL 3.3 context through EGL (apt-get install libegl1 libgl1-mesa-dri)")
    ray = load_render_scene(gt[1], rgb="mesh", backend="raycast")
    ras = load_render_scene(gt[1], rgb="mesh", backend="raster")
    return ray, ras


def _away_from_edges(*depths: np.ndarray, rel: float = 0.01) -> np.ndarray:
    """Pixels not next to a depth edge in any image: every pixel of the 3x3 neighbourhood is hit and the
    depth's second differences (0 on a plane up to perspective curvature; large at a step or crease) stay
    below ``rel`` of the depth."""
    ok = np.ones(depths[0].shape, bool)
    for d in depths:
        d = d.astype(np.float64)
        bend = np.zeros_like(d)
        bend[:, 1:-1] = np.abs(d[:, 2:] + d[:, :-2] - 2 * d[:, 1:-1])
        bend[1:-1, :] = np.maximum(bend[1:-1, :], np.abs(d[2:, :] + d[:-2, :] - 2 * d[1:-1, :]))
        smooth = (bend < rel * d) & (d > 0)
        ok &= minimum_filter(smooth, 3)
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    return ok


def test_raster_matches_ray_caster_and_ground_truth(gt, scenes):  # noqa: F811
    ray, ras = scenes
    assert ras.mesh_backend == "raster" and ray.mesh_backend == "raycast"
    scene = gt[0]
    for i in FRAMES:
        f = scene.frames[i]
        c2w = WORLD_FROM_SCENE @ f.c2w_cv
        for K in (f.intrinsics, Intrinsics(200.0, 210.0, 150.3, 101.7, 320, 200)):  # also off-centre, wide
            a = ray.render(K, c2w)
            b = ras.render(K, c2w)
            interior = _away_from_edges(a["depth"], b["depth"])
            assert interior.mean() > 0.7
            assert (np.abs(a["depth"] - b["depth"])[interior] < 1e-3).mean() >= 0.995
            assert (a["panoptic"] == b["panoptic"])[interior].mean() >= 0.995
            assert ((a["depth"] > 0) == (b["depth"] > 0)).mean() > 0.99  # the silhouettes agree
            rgb_close = np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max(-1) <= 2
            assert rgb_close[interior].mean() >= 0.99
            assert [s["id"] for s in a["segments"]] == [s["id"] for s in b["segments"]]
        # And both against the scene's exact GT (depth stored in millimetres).
        gd = scene.depth(i)
        out = ras.render(f.intrinsics, c2w)
        interior = _away_from_edges(gd, out["depth"])
        assert (np.abs(out["depth"] - gd)[interior] < 1e-3).mean() >= 0.995
        assert (out["panoptic"] == expected_panoptic(gt, i))[interior].mean() >= 0.995


def test_raster_misses_are_empty(gt, scenes):  # noqa: F811
    # A camera above the scene looking up sees nothing: every output is empty, not left-over memory.
    _, ras = scenes
    lo, hi = ras.bounds()
    c2w = np.eye(4)
    c2w[:3, 3] = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] + 0.5]  # above the room
    # identity rotation: the OpenCV z axis (forward) is world +z, up, where there is nothing
    out = ras.render(Intrinsics(40.0, 40.0, 40.0, 30.0, 80, 60), c2w)
    assert (out["depth"] == 0).all() and (out["panoptic"] == 0).all() and (out["rgb"] == 0).all()
    assert out["segments"] == []


def test_clip_matrix_puts_pixels_where_the_intrinsics_do():
    K = Intrinsics(300.0, 280.0, 150.5, 90.25, 320, 200)
    P = RA.clip_matrix(K)
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0], [0.0, 0.0, RA.NEAR], [0.1, 0.1, RA.FAR]])
    clip = np.c_[pts, np.ones(len(pts))] @ P.T
    ndc = clip[:, :3] / clip[:, 3:]
    u = (ndc[:, 0] + 1) / 2 * K.width
    v = (ndc[:, 1] + 1) / 2 * K.height  # framebuffer row = image row
    assert np.allclose(u, K.fx * pts[:, 0] / pts[:, 2] + K.cx) and np.allclose(
        v, K.fy * pts[:, 1] / pts[:, 2] + K.cy
    )
    assert np.allclose(ndc[2:, 2], [-1.0, 1.0])


def test_auto_picks_raster_only_on_hardware(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        RA.resolve_backend("opengl")
    assert RA.resolve_backend("raster") == "raster" and RA.resolve_backend("raycast") == "raycast"
    monkeypatch.setattr(RA, "gl_renderer", lambda: "llvmpipe (LLVM 15.0.6, 256 bits)")
    assert RA.resolve_backend("auto") == "raycast"
    monkeypatch.setattr(RA, "gl_renderer", lambda: None)
    assert RA.resolve_backend("auto") == "raycast"
    monkeypatch.setattr(RA, "gl_renderer", lambda: "NVIDIA H100 80GB HBM3/PCIe/SSE2")
    assert RA.resolve_backend("auto") == "raster"


def test_real_server_with_raster_backend_in_forked_workers(gt, scenes):  # noqa: F811
    # Each worker opens its own GL context after the fork; answers equal the in-process raster renders.
    _, ras = scenes
    server = Server(gt[1], "--backend", "raster", "--workers", "2", "--rgb", "mesh").wait()
    try:
        f = gt[0].frames[FRAMES[1]]
        c2w = WORLD_FROM_SCENE @ f.c2w_cv
        K = f.intrinsics
        with RenderClient(server.url, retries=0) as c:
            assert c.scene()["mesh_backend"] == "raster"
            for _ in range(4):  # reach both workers
                out = c.render(
                    {"matrix": c2w.tolist()},
                    width=K.width,
                    height=K.height,
                    fx=K.fx,
                    fy=K.fy,
                    cx=K.cx,
                    cy=K.cy,
                    convention="opencv",
                )
                want = ras.render(K, c2w)
                # the server re-orthonormalises the pose matrix (1e-9): depth equal up to float noise
                assert np.array_equal(out["panoptic"], want["panoptic"])
                assert np.abs(out["depth"] - want["depth"]).max() < 1e-4
                assert json.dumps(out["segments"]) == json.dumps(want["segments"])
    finally:
        server.stop()


def test_compiled_caster_equals_numpy_path(gt):  # noqa: F811
    pytest.importorskip("numba")
    scene = load_render_scene(gt[1], rgb="mesh", warm=False)
    fc = FastCaster(scene.mesh)
    for i in FRAMES:
        f = gt[0].frames[i]
        c2w = WORLD_FROM_SCENE @ f.c2w_cv
        a = fc._render_numpy(f.intrinsics, c2w, ("rgb", "depth", "panoptic"))
        b = fc._render_compiled(f.intrinsics, c2w, ("rgb", "depth", "panoptic"))
        for k in a:
            assert np.array_equal(a[k], b[k]), k
        assert np.array_equal(b["segment_ids"], np.unique(b["panoptic"]))
        only = fc._render_compiled(f.intrinsics, c2w, ("depth",))
        assert list(only) == ["depth"] and np.array_equal(only["depth"], a["depth"])
