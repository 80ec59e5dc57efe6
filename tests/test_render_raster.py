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
from helpers.depth_edges import away_from_edges
from helpers.served_gt import FRAMES, WORLD_FROM_SCENE, expected_panoptic
from helpers.server import Server

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
            interior = away_from_edges(a["depth"], b["depth"])
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
        interior = away_from_edges(gd, out["depth"])
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
    # Without a hardware GL device auto takes the CPU z-buffer (tests/test_render_zbuffer.py covers its
    # fallback to raycast without numba).
    pytest.importorskip("numba")
    with pytest.raises(ValueError, match="backend"):
        RA.resolve_backend("opengl")
    assert RA.resolve_backend("raster") == "raster" and RA.resolve_backend("raycast") == "raycast"
    monkeypatch.setattr(RA, "gl_renderer", lambda: "llvmpipe (LLVM 15.0.6, 256 bits)")
    assert RA.resolve_backend("auto") == "zbuffer"
    monkeypatch.setattr(RA, "gl_renderer", lambda: None)
    assert RA.resolve_backend("auto") == "zbuffer"
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


# -- textured meshes (the export's baked visuals) -------------------------------------------------------------


def _gl_or_skip() -> None:
    if RA.gl_renderer() is None:
        pytest.skip("no OpenGL 3.3 context through EGL (apt-get install libegl1 libgl1-mesa-dri)")


def reference_textured(
    parts: list, K: Intrinsics, c2w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU reference of a textured draw: embree first hits, the hit's barycentric coordinates in its world
    triangle interpolate the UVs (perspective-correct by construction), the texture is sampled bilinearly
    with texel centres at ``(i + 0.5) / size`` and clamped edges, as GL_LINEAR does.

    Returns ``rgb (H, W, 3) uint8`` (black on a miss), ``depth (H, W)`` (m, 0 on a miss), ``panoptic (H, W)``.
    """
    import trimesh

    from simgen.render.raycast import MeshRaycaster

    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])[:-1]
    V = np.concatenate([p.vertices for p in parts])
    F = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)])
    UV = np.concatenate([p.uv for p in parts])
    owner = np.concatenate([np.full(len(p.faces), k) for k, p in enumerate(parts)])
    hits = MeshRaycaster(trimesh.Trimesh(V, F, process=False)).cast(K, c2w)
    ok = hits.valid
    fid = hits.face[ok]
    bary = trimesh.triangles.points_to_barycentric(V[F[fid]], hits.points[ok].astype(np.float64))
    uv = (UV[F[fid]] * bary[:, :, None]).sum(1)
    vals = np.zeros((len(fid), 3))
    seg = np.zeros(len(fid), np.int32)
    for k, p in enumerate(parts):
        sel = owner[fid] == k
        tex = p.texture.astype(np.float64)
        H, W = tex.shape[:2]
        x, y = uv[sel, 0] * W - 0.5, (1.0 - uv[sel, 1]) * H - 0.5  # image row 0 is v = 1
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]

        def at(yy, xx, tex=tex, H=H, W=W):
            return tex[np.clip(yy, 0, H - 1).astype(int), np.clip(xx, 0, W - 1).astype(int)]

        vals[sel] = (
            at(y0, x0) * (1 - fx) * (1 - fy)
            + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy
            + at(y0 + 1, x0 + 1) * fx * fy
        )
        seg[sel] = p.segment
    rgb = np.zeros((*ok.shape, 3), np.uint8)
    rgb[ok] = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
    pan = np.zeros(ok.shape, np.int32)
    pan[ok] = seg
    return rgb, hits.depth, pan


def _assert_textured_match(parts: list, K: Intrinsics, c2w: np.ndarray, min_interior: float) -> np.ndarray:
    out = RA.GLRasterizer(None, parts=parts).render(K, c2w)
    rgb, depth, pan = reference_textured(parts, K, c2w)
    interior = away_from_edges(depth, out["depth"])
    assert interior.mean() > min_interior
    assert (np.abs(out["depth"] - depth)[interior] < 1e-3).mean() >= 0.995
    assert (out["panoptic"] == pan)[interior].mean() >= 0.995
    close = np.abs(out["rgb"].astype(int) - rgb.astype(int)).max(-1) <= 2
    assert close[interior].mean() >= 0.99, close[interior].mean()
    return out["rgb"]


def test_raster_draws_textures_like_a_cpu_uv_lookup():
    """A random-noise texture on two quads (one magnified near the camera, one minified far off; UVs
    rotated and scaled against the geometry) against the CPU bilinear lookup at the ray-cast hits."""
    _gl_or_skip()
    rng = np.random.default_rng(0)
    quad_f = np.array([[0, 1, 2], [0, 2, 3]])
    near = RA.TexturedPart(
        np.array([[-0.4, -0.3, 1.0], [0.4, -0.3, 1.2], [0.4, 0.3, 1.2], [-0.4, 0.3, 1.0]]),
        quad_f,
        np.array([[0.1, 0.0], [0.9, 0.1], [0.8, 0.9], [0.0, 0.8]]),
        rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),  # ~6 pixels per texel: bilinear blends show
        7,
        "near",
    )
    far = RA.TexturedPart(
        np.array([[-6.0, -5.0, 6.0], [6.0, -5.0, 6.5], [6.0, 5.0, 6.5], [-6.0, 5.0, 6.0]]),
        quad_f,
        np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
        rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8),  # ~2.5 texels per pixel: no mipmaps
        1000003,
        "far",
    )
    K = Intrinsics(200.0, 210.0, 160.3, 119.7, 320, 240)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.05, -0.02, 0.0]
    rgb = _assert_textured_match([near, far], K, c2w, min_interior=0.8)
    # The far quad shows around the near one, and the texture is drawn, not a flat colour.
    assert rgb[:, :20].std() > 40 and rgb[100:140, 140:180].std() > 40


@pytest.mark.slow
def test_raster_draws_the_exports_baked_textures(tmp_path):
    """The ``tiny`` preset's GT mesh exported by the real pipeline: its per-model visuals and baked textures
    (:func:`read_export_parts`) drawn from two cameras against the CPU reference, with the server's ids."""
    from helpers.sim import synthetic_export

    from simgen.data.camera import look_at, opengl_to_opencv

    _gl_or_skip()
    export = synthetic_export(tmp_path, "tiny")
    parts = RA.read_export_parts(export)
    ray = load_render_scene(export, rgb="mesh", backend="raycast")
    # Every model carries the server's segment id, and every thing of the build has its model.
    assert {p.segment for p in parts} <= set(ray.segments)
    assert {p.segment for p in parts} >= {i for i, s in ray.segments.items() if s["instance"] > 0}
    assert all(p.texture.shape == (64, 64, 3) for p in parts)  # synthetic_export bakes 64-texel textures
    K = Intrinsics(160.0, 160.0, 160.0, 120.0, 320, 240)
    for eye, target in (([0.5, 0.3, 1.2], [2.5, 1.5, 0.3]), ([3.5, 2.0, 0.8], [1.0, 0.5, 0.2])):
        c2w = opengl_to_opencv(look_at(np.array(eye), np.array(target)))
        _assert_textured_match(parts, K, c2w, min_interior=0.5)
        # Panoptic ids agree with the render server's (panoptic mesh) on the interior of both.
        a = ray.render(K, c2w, ("depth", "panoptic"))
        b = RA.GLRasterizer(None, parts=parts).render(K, c2w, ("depth", "panoptic"))
        interior = away_from_edges(a["depth"], b["depth"])
        assert (a["panoptic"] == b["panoptic"])[interior].mean() >= 0.98


def test_export_parts_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="export.json"):
        RA.read_export_parts(tmp_path)
    with pytest.raises(ValueError, match="texture must be"):
        RA.TexturedPart(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((3, 2)), np.zeros((2, 2)), 1)


def test_export_parts_follow_the_world_poses_and_panoptic_ids(tmp_path):
    """A hand-written export: a thing model included with a yaw and a stuff model whose texture baking
    failed (plain MTL colour); vertices land at include pose x model-frame vertex, ids as the server's."""
    from PIL import Image

    from simgen.data import io

    io.write_json(tmp_path / "export.json", {"scene": "s", "build_dir": "."})
    io.write_json(
        tmp_path / "panoptic.json",
        {
            "segments": [
                {"model": "chair_3", "id": 3, "kind": "thing", "category_id": 5},
                {"model": "floor", "id": 0, "kind": "floor", "category_id": 1},
            ]
        },
    )
    (tmp_path / "worlds").mkdir()
    (tmp_path / "worlds" / "s.sdf").write_text(
        "<sdf version='1.9'><world name='s'>"
        "<include><uri>model://chair_3</uri><name>chair_3</name><pose>1 2 0.5 0 0 1.5707963267948966</pose>"
        "</include><include><uri>model://floor</uri><name>floor</name><pose>0 0 0 0 0 0</pose></include>"
        "<include><uri>model://robot</uri><name>robot</name></include></world></sdf>"
    )
    tex = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name, textured in (("chair_3", True), ("floor", False)):
        d = tmp_path / "models" / name / "meshes"
        d.mkdir(parents=True)
        (d.parent / "model.sdf").write_text(
            f"<sdf version='1.9'><model name='{name}'><link name='link'><visual name='visual'><geometry><mesh>"
            f"<uri>model://{name}/meshes/visual.obj</uri></mesh></geometry></visual></link></model></sdf>"
        )
        obj = "mtllib visual.mtl\nusemtl visual\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
        if textured:
            obj += "vt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"
            Image.fromarray(tex).save(d / "visual.png")
            mtl = "newmtl visual\nKd 1 1 1\nmap_Kd visual.png\n"
        else:
            obj += "f 1 2 3\n"
            mtl = "newmtl visual\nKd 0.2 0.4 0.6\n"
        (d / "visual.obj").write_text(obj)
        (d / "visual.mtl").write_text(mtl)
    chair, floor = RA.read_export_parts(tmp_path)
    assert (chair.name, chair.segment, floor.name, floor.segment) == ("chair_3", 3, "floor", 1_000_001)
    # yaw +90 deg: model x -> world y, model y -> world -x; then the include's translation.
    np.testing.assert_allclose(chair.vertices, [[1, 3, 0.5], [0, 2, 0.5], [1, 2, 1.5]], atol=1e-9)
    np.testing.assert_allclose(chair.uv, [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(chair.texture, tex)
    np.testing.assert_allclose(floor.texture.reshape(3), [51, 102, 153], atol=1)  # Kd as a 1 x 1 texture
