"""OpenGL rasterizing mesh backend (moderngl, headless EGL): depth, panoptic ids and RGB in one pass.

The render server's GPU path for mesh outputs. It draws the panoptic mesh once per camera into four
colour attachments -- camera z-depth (``R32F``), the panoptic segment code (``R32I``), the vertex colour
(``RGBA8``) and the face index (``R32I``) -- with the same conventions as the ray caster (:class:`simgen.render.caster.FastCaster`):

* pixel ``(row i, column j)`` samples the ray through its centre ``(j + 0.5, i + 0.5)`` (OpenGL's pixel
  centres; the projection below puts image row 0 at framebuffer row 0, so no flip on read-back);
* depth is the interpolated camera z of the front-most surface (not the depth buffer), 0 where nothing is hit;
* panoptic: the segment id of the hit triangle's corner nearest to the hit point (a geometry shader hands
  the three corners to the fragment shader), 0 on a miss;
* rgb: the vertex colours interpolated with perspective-correct barycentrics, black on a miss;
* face (on request, :data:`simgen.render.caster.FACE`): the index of the face drawn, -1 on a miss.

So on any pixel away from depth edges both backends agree up to float rounding and the rasterizer's
coverage rule (tests/test_render_raster.py holds them to 1 mm / equal ids on >= 99.5 % of such pixels).
A near plane of 1 cm clips surfaces closer than that (the ray caster has none).

Why OpenGL and not a CUDA rasterizer: a GL driver is on every GPU machine (and Mesa's llvmpipe on every CPU
machine, so CI tests this path), and one draw of a mesh of a few 100 k triangles takes well under a
millisecond on a GPU. On the 2-core CPU machine llvmpipe draws a 400 k-face mesh at ~8 frames/s, slower
than embree, so :func:`resolve_backend` picks it only where a hardware GL device answers.

One GL context per process, made current by the rendering thread under a lock (a context can be current in
one thread at a time; the GPU serialises draws anyway).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh
from simgen.render.caster import FACE, OUTPUTS, segment_ids

BACKENDS = ("raycast", "raster", "auto")
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software rasterizer", "lavapipe")
NEAR, FAR = 0.01, 1000.0  # metres: the clip planes

_VS = """
#version 330
uniform mat4 world_to_clip_cv;  // rows: K-based clip of OpenCV camera coordinates, times world-to-camera
uniform mat4 world_to_cam;
in vec3 in_pos;
in vec3 in_color;
in int in_code;
out vec3 v_world;
out float v_z;
out vec3 v_color;
flat out int v_code;
void main() {
    vec4 p = vec4(in_pos, 1.0);
    v_world = in_pos;
    v_z = (world_to_cam * p).z;
    v_color = in_color;
    v_code = in_code;
    gl_Position = world_to_clip_cv * p;
}
"""

# The geometry shader passes the triangle's three corners and their segment codes to every fragment, so the
# fragment shader can apply the ray caster's nearest-corner rule.
_GS = """
#version 330
layout(triangles) in;
layout(triangle_strip, max_vertices = 3) out;
in vec3 v_world[];
in float v_z[];
in vec3 v_color[];
flat in int v_code[];
out vec3 g_world;
out float g_z;
out vec3 g_color;
flat out vec3 g_c0;
flat out vec3 g_c1;
flat out vec3 g_c2;
flat out ivec3 g_codes;
flat out int g_face;
void main() {
    for (int k = 0; k < 3; k++) {
        g_world = v_world[k];
        g_z = v_z[k];
        g_color = v_color[k];
        g_c0 = v_world[0];
        g_c1 = v_world[1];
        g_c2 = v_world[2];
        g_codes = ivec3(v_code[0], v_code[1], v_code[2]);
        g_face = gl_PrimitiveIDIn + 1;  // the face's index in the index buffer, + 1 (0 = nothing drawn)
        gl_Position = gl_in[k].gl_Position;
        EmitVertex();
    }
    EndPrimitive();
}
"""

_FS = """
#version 330
in vec3 g_world;
in float g_z;
in vec3 g_color;
flat in vec3 g_c0;
flat in vec3 g_c1;
flat in vec3 g_c2;
flat in ivec3 g_codes;
flat in int g_face;
layout(location = 0) out float out_depth;
layout(location = 1) out int out_code;
layout(location = 2) out vec4 out_color;
layout(location = 3) out int out_face;
void main() {
    vec3 d0 = g_world - g_c0, d1 = g_world - g_c1, d2 = g_world - g_c2;
    float e0 = dot(d0, d0), e1 = dot(d1, d1), e2 = dot(d2, d2);
    int c = g_codes.x;
    float best = e0;
    if (e1 < best) { c = g_codes.y; best = e1; }
    if (e2 < best) { c = g_codes.z; }
    out_depth = g_z;
    out_code = c + 1;  // 0 stays "nothing drawn"
    out_color = vec4(g_color, 1.0);
    out_face = g_face;
}
"""


def moderngl_available() -> bool:
    """True if moderngl imports (a GL context may still fail to open)."""
    try:
        import moderngl  # noqa: F401
    except Exception:
        return False
    return True


def create_context(backend: str = "egl"):
    """A headless moderngl context (EGL by default); raises RuntimeError naming what is missing."""
    try:
        import moderngl
    except ImportError as e:
        raise RuntimeError("the raster backend needs moderngl (pip install moderngl)") from e
    try:
        return moderngl.create_standalone_context(backend=backend, require=330)
    except Exception as e:
        raise RuntimeError(
            f"no OpenGL 3.3 context through {backend} ({e}); on Debian/Ubuntu install libegl1 and "
            "libgl1-mesa-dri (Mesa, software) or the GPU vendor's driver"
        ) from e


def gl_renderer() -> str | None:
    """The GL_RENDERER string of a headless EGL context, or None when none opens."""
    try:
        ctx = create_context()
    except RuntimeError:
        return None
    try:
        return str(ctx.info.get("GL_RENDERER", ""))
    finally:
        ctx.release()


def hardware_gl() -> bool:
    """True when a headless EGL context opens on a hardware device (not Mesa's software rasterizers)."""
    name = gl_renderer()
    return name is not None and not any(s in name.lower() for s in SOFTWARE_RENDERERS)


def resolve_backend(backend: str) -> str:
    """``raycast`` / ``raster`` as asked; ``auto``: raster only where a hardware GL device answers (on a
    CPU, embree's ray caster is faster than a software rasterizer)."""
    if backend not in BACKENDS:
        raise ValueError(f"mesh backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "raster" if hardware_gl() else "raycast"
    return backend


def clip_matrix(K: Intrinsics, near: float = NEAR, far: float = FAR) -> np.ndarray:
    """``(4, 4)`` OpenCV camera coordinates (x right, y down, z forward, metres) -> GL clip coordinates.

    ``ndc_x = 2 u / W - 1`` and ``ndc_y = 2 v / H - 1`` with ``(u, v) = (fx x / z + cx, fy y / z + cy)`` the
    pixel position, so image row 0 lands on framebuffer row 0; depth maps ``near..far`` to ``-1..1``."""
    W, H = K.width, K.height
    P = np.zeros((4, 4))
    P[0, 0], P[0, 2] = 2 * K.fx / W, 2 * K.cx / W - 1
    P[1, 1], P[1, 2] = 2 * K.fy / H, 2 * K.cy / H - 1
    P[2, 2], P[2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


class GLRasterizer:
    """Draws a :class:`PanopticMesh` with OpenGL for any pinhole camera.

    Args:
        mesh: panoptic mesh in the served world frame (vertices ``(V, 3)`` metres, faces ``(F, 3)``, vertex
            colours ``(V, 3)`` 0..255, per-vertex semantic / instance labels).
        ctx: a moderngl context (default: :func:`create_context`).

    Raises:
        RuntimeError: no GL 3.3 context (message says which packages give one).
    """

    def __init__(self, mesh: PanopticMesh, ctx: Any = None):
        self.ctx = ctx or create_context()
        self.renderer = str(self.ctx.info.get("GL_RENDERER", ""))
        seg = segment_ids(mesh.semantic, mesh.instance)  # (V,) int32
        self.segment_values, code = np.unique(seg, return_inverse=True)
        # Index 0 of the lookup is "nothing drawn" (the shader writes code + 1).
        self._lut = np.concatenate([[0], self.segment_values]).astype(np.int32)
        verts = np.ascontiguousarray(mesh.vertices, dtype="f4")
        colors = np.ascontiguousarray(np.asarray(mesh.colors, dtype="f4")[:, :3] / 255.0)
        codes = np.ascontiguousarray(code.reshape(-1), dtype="i4")
        faces = np.ascontiguousarray(mesh.faces, dtype="i4")
        self._lock = threading.Lock()
        with self._lock, self.ctx:
            self.prog = self.ctx.program(vertex_shader=_VS, geometry_shader=_GS, fragment_shader=_FS)
            self._bufs = [self.ctx.buffer(a.tobytes()) for a in (verts, colors, codes)]
            self._ibo = self.ctx.buffer(faces.tobytes())
            self.vao = self.ctx.vertex_array(
                self.prog,
                [
                    (self._bufs[0], "3f", "in_pos"),
                    (self._bufs[1], "3f", "in_color"),
                    (self._bufs[2], "i", "in_code"),
                ],
                index_buffer=self._ibo,
                index_element_size=4,
            )
        self._fbo: tuple[tuple[int, int], Any, list] | None = None

    def _framebuffer(self, width: int, height: int):
        if self._fbo is None or self._fbo[0] != (width, height):
            if self._fbo is not None:
                for obj in (self._fbo[1], *self._fbo[2]):
                    obj.release()
            size = (width, height)
            att = [
                self.ctx.renderbuffer(size, 1, dtype="f4"),
                self.ctx.renderbuffer(size, 1, dtype="i4"),
                self.ctx.renderbuffer(size, 4, dtype="f1"),
                self.ctx.renderbuffer(size, 1, dtype="i4"),
                self.ctx.depth_renderbuffer(size),
            ]
            fbo = self.ctx.framebuffer(color_attachments=att[:4], depth_attachment=att[4])
            self._fbo = (size, fbo, att)
        return self._fbo[1]

    def render(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, Any]:
        """``depth`` ``(H, W) float32`` metres (0 = no hit), ``panoptic`` ``(H, W) int32`` segment ids,
        ``rgb`` ``(H, W, 3) uint8`` for camera-to-world ``c2w_cv`` ``(4, 4)`` (OpenCV axes, world frame);
        with panoptic also ``segment_ids``: the sorted distinct ids drawn; :data:`FACE` ``(H, W) int32``
        the index of the face drawn (-1 = none) when asked. Only the outputs asked for."""
        w2c = np.linalg.inv(np.asarray(c2w_cv, dtype=np.float64))
        mvp = clip_matrix(K) @ w2c
        W, H = K.width, K.height
        with self._lock, self.ctx:
            fbo = self._framebuffer(W, H)
            fbo.use()
            fbo.viewport = (0, 0, W, H)
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)  # 0 in every attachment: no hit, void, black
            self.ctx.enable(self.ctx.DEPTH_TEST)
            self.ctx.disable(self.ctx.CULL_FACE)
            # GLSL matrices are column-major: upload the transposes.
            self.prog["world_to_clip_cv"].write(mvp.T.astype("f4").tobytes())
            self.prog["world_to_cam"].write(w2c.T.astype("f4").tobytes())
            self.vao.render()
            out: dict[str, Any] = {}
            if "depth" in outputs:
                out["depth"] = np.frombuffer(fbo.read(components=1, attachment=0, dtype="f4"), "f4").reshape(
                    H, W
                )
            if "panoptic" in outputs:
                code = np.frombuffer(fbo.read(components=1, attachment=1, dtype="i4"), "i4").reshape(H, W)
            if "rgb" in outputs:
                rgba = np.frombuffer(fbo.read(components=3, attachment=2), np.uint8)
                out["rgb"] = rgba.reshape(H, W, 3).copy()
            if FACE in outputs:
                face = np.frombuffer(fbo.read(components=1, attachment=3, dtype="i4"), "i4").reshape(H, W)
                out[FACE] = face - 1
        if "panoptic" in outputs:
            out["panoptic"] = self._lut[code]
            seen = np.bincount(code.reshape(-1), minlength=len(self._lut)) > 0
            seen[0] = False
            out["segment_ids"] = self._lut[seen]
        if "depth" in out:
            out["depth"] = out["depth"].copy()
        return out

    def release(self) -> None:
        with self._lock, self.ctx:
            if self._fbo is not None:
                for obj in (self._fbo[1], *self._fbo[2]):
                    obj.release()
            for obj in (self.vao, self._ibo, *self._bufs, self.prog):
                obj.release()
