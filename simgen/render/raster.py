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

Textured meshes (:class:`TexturedPart`: UVs, a texture image and one segment id per part) are drawn in the
same pass by a second program: RGB is the texture sampled bilinearly (``GL_LINEAR``, clamped at the edges,
no mipmaps) at the perspective-correct UV, depth as above, panoptic the part's segment id. The export's
per-model visuals are such parts (:func:`read_export_parts`: ``models/<name>/meshes/visual.obj`` + its
baked ``visual.png`` at the model's ``<include>`` pose); the render server's scene holds only the panoptic
mesh, which has vertex colours and no texture.

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

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simgen import folders
from simgen.data.camera import Intrinsics
from simgen.folders import PanopticMesh
from simgen.render.caster import FACE, OUTPUTS, STUFF_ID_OFFSET, segment_ids

BACKENDS = ("raycast", "zbuffer", "raster", "auto")
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


_VS_TEX = """
#version 330
uniform mat4 world_to_clip_cv;
uniform mat4 world_to_cam;
in vec3 in_pos;
in vec2 in_uv;
out float v_z;
out vec2 v_uv;
void main() {
    vec4 p = vec4(in_pos, 1.0);
    v_z = (world_to_cam * p).z;
    v_uv = in_uv;
    gl_Position = world_to_clip_cv * p;
}
"""

# The texture is uploaded with image row 0 (the top, v = 1) first, so texture row coordinate t = 1 - v.
_FS_TEX = """
#version 330
uniform sampler2D tex;
uniform int code;
in float v_z;
in vec2 v_uv;
layout(location = 0) out float out_depth;
layout(location = 1) out int out_code;
layout(location = 2) out vec4 out_color;
void main() {
    out_depth = v_z;
    out_code = code + 1;
    out_color = vec4(texture(tex, vec2(v_uv.x, 1.0 - v_uv.y)).rgb, 1.0);
}
"""


@dataclass(frozen=True)
class TexturedPart:
    """A textured triangle mesh with one panoptic segment id.

    Attributes:
        vertices: ``(V, 3)`` float, metres, in the frame the cameras are given in (the served world).
        faces: ``(F, 3)`` int indices into ``vertices``.
        uv: ``(V, 2)`` float texture coordinates, ``[0, 1]`` with v up (OBJ convention).
        texture: ``(H, W, 3)`` uint8 RGB image, row 0 at the top (v = 1).
        segment: panoptic segment id its pixels get (:func:`simgen.render.caster.segment_ids`; 0 = void).
        name: where it came from (a model name), for messages.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    segment: int
    name: str = ""

    def __post_init__(self) -> None:
        v, f, uv, t = self.vertices, self.faces, self.uv, self.texture
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or uv.shape != (len(v), 2):
            raise ValueError(
                f"textured part {self.name!r}: need vertices (V, 3), faces (F, 3), uv (V, 2); got "
                f"{v.shape}, {f.shape}, {uv.shape}"
            )
        if t.ndim != 3 or t.shape[2] != 3 or t.dtype != np.uint8:
            raise ValueError(
                f"textured part {self.name!r}: texture must be (H, W, 3) uint8, got {t.shape} {t.dtype}"
            )
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"textured part {self.name!r}: face index outside 0..{len(v) - 1}")


def _sdf_pose(text: str | None, where: str) -> np.ndarray:
    """SDF ``<pose>`` text ``x y z roll pitch yaw`` (fixed-axis XYZ, as Gazebo) -> ``(4, 4)``."""
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    if text is None or not text.strip():
        return T
    try:
        vals = [float(t) for t in text.split()]
    except ValueError:
        vals = []
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{where}: <pose> must be 6 finite numbers 'x y z roll pitch yaw', got {text!r}")
    T[:3, :3] = Rotation.from_euler("xyz", vals[3:]).as_matrix()
    T[:3, 3] = vals[:3]
    return T


def read_export_parts(export_dir: str | Path) -> list[TexturedPart]:
    """The export's per-model visuals as :class:`TexturedPart` in its Gazebo world frame: every
    ``<include>`` of ``worlds/<scene>.sdf`` with its ``<pose>`` (times the model's link and visual poses, if
    any), the model's ``meshes/visual.obj`` with its UVs and baked ``visual.png`` (a model whose texture
    baking failed carries a plain ``Kd`` colour: a 1 x 1 texture of it), and the model's segment id from
    ``panoptic.json``: the instance id for things, ``STUFF_ID_OFFSET + category_id`` for stuff (the ids the
    render server gives the same surfaces).

    Raises:
        ValueError: naming the file that is missing or unreadable.
    """
    import trimesh
    from lxml import etree

    export_dir = Path(export_dir)
    try:
        world = folders.read_export_record(export_dir).world_file
    except folders.FolderError as e:
        raise ValueError(str(e)) from None
    pan_path = export_dir / folders.PANOPTIC_FILE
    try:
        segments = json.loads(pan_path.read_text())["segments"]
        seg_of = {
            str(s["model"]): int(s["id"]) if s["kind"] == "thing" else STUFF_ID_OFFSET + int(s["category_id"])
            for s in segments
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{pan_path}: cannot read model segments ({e})") from None
    try:
        root = etree.parse(str(world)).getroot()
    except (OSError, etree.XMLSyntaxError) as e:
        raise ValueError(f"{world}: cannot read the world ({e})") from None
    parts = []
    for inc in root.iterfind(".//include"):
        name = (inc.findtext("name") or "").strip()
        if name not in seg_of:
            continue  # not an exported model (a robot, the sun...)
        model_dir = export_dir / folders.MODELS_DIR / name
        T = _sdf_pose(inc.findtext("pose"), f"{world} <include> {name}")
        sdf_path = model_dir / "model.sdf"
        try:
            model = etree.parse(str(sdf_path)).getroot().find("model")
        except (OSError, etree.XMLSyntaxError) as e:
            raise ValueError(f"{sdf_path}: cannot read ({e})") from None
        link = model.find("link") if model is not None else None
        visual = link.find("visual") if link is not None else None
        if visual is not None:
            T = T @ _sdf_pose(link.findtext("pose"), f"{sdf_path} <link>")
            T = T @ _sdf_pose(visual.findtext("pose"), f"{sdf_path} <visual>")
        path = model_dir / folders.MODEL_VISUAL_FILE
        try:
            mesh = trimesh.load(path, force="mesh", process=False)
        except Exception as e:  # trimesh raises many types on a missing or corrupt file
            raise ValueError(f"{path}: cannot read ({e})") from None
        vis = mesh.visual
        uv = getattr(vis, "uv", None)
        image = getattr(getattr(vis, "material", None), "image", None)
        if uv is None or image is None:
            colour = getattr(getattr(vis, "material", None), "main_color", None)
            colour = np.asarray(colour if colour is not None else [128, 128, 128], np.uint8)[:3]
            uv, tex = np.zeros((len(mesh.vertices), 2)), colour.reshape(1, 1, 3)
        else:
            tex = np.asarray(image.convert("RGB"), np.uint8)
        v = np.asarray(mesh.vertices, np.float64) @ T[:3, :3].T + T[:3, 3]
        parts.append(
            TexturedPart(
                v, np.asarray(mesh.faces, np.int64), np.asarray(uv, np.float64), tex, seg_of[name], name
            )
        )
    if not parts:
        raise ValueError(f"{world}: includes no model of {pan_path}")
    return parts


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
    """``raycast`` / ``zbuffer`` / ``raster`` as asked; ``auto``: raster where a hardware GL device answers,
    else the compiled CPU z-buffer where numba imports (faster than embree's per-ray traversal on the same
    images: docs/benchmarks.md), else raycast (on a CPU, both beat a software GL rasterizer).

    Raises:
        ValueError: an unknown backend name.
        RuntimeError: ``zbuffer`` asked for where numba is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"mesh backend must be one of {BACKENDS}, got {backend!r}")
    from simgen.render.zbuffer import numba_available

    if backend == "auto":
        if hardware_gl():
            return "raster"
        return "zbuffer" if numba_available() else "raycast"
    if backend == "zbuffer" and not numba_available():
        raise RuntimeError("mesh backend 'zbuffer' needs numba (pip install numba); use raycast or auto")
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
    """Draws a :class:`PanopticMesh` (vertex colours) and/or :class:`TexturedPart` meshes with OpenGL for any
    pinhole camera, all in one depth-tested pass.

    Args:
        mesh: panoptic mesh in the served world frame (vertices ``(V, 3)`` metres, faces ``(F, 3)``, vertex
            colours ``(V, 3)`` 0..255, per-vertex semantic / instance labels), or None.
        ctx: a moderngl context (default: :func:`create_context`).
        parts: textured meshes in the same frame (e.g. :func:`read_export_parts`); their RGB comes from
            their texture, their panoptic id is the part's segment.

    Raises:
        RuntimeError: no GL 3.3 context (message says which packages give one).
        ValueError: neither a mesh nor parts.
    """

    def __init__(self, mesh: PanopticMesh | None, ctx: Any = None, parts: Sequence[TexturedPart] = ()):
        parts = list(parts)
        if mesh is None and not parts:
            raise ValueError("GLRasterizer needs a mesh or textured parts to draw")
        self.ctx = ctx or create_context()
        self.renderer = str(self.ctx.info.get("GL_RENDERER", ""))
        seg = segment_ids(mesh.semantic, mesh.instance) if mesh is not None else np.zeros(0, np.int32)
        part_segs = np.array([p.segment for p in parts], np.int32)
        self.segment_values = np.unique(np.concatenate([seg.reshape(-1), part_segs]))
        # Index 0 of the lookup is "nothing drawn" (the shaders write code + 1).
        self._lut = np.concatenate([[0], self.segment_values]).astype(np.int32)
        self._lock = threading.Lock()
        self.vao = None
        self._bufs: list = []
        self._parts: list[tuple[Any, Any, list, int]] = []  # (vertex array, texture, buffers) per part
        with self._lock, self.ctx:
            self.prog = self.ctx.program(vertex_shader=_VS, geometry_shader=_GS, fragment_shader=_FS)
            self.tex_prog = self.ctx.program(vertex_shader=_VS_TEX, fragment_shader=_FS_TEX)
            if mesh is not None:
                code = np.searchsorted(self.segment_values, seg.reshape(-1))
                verts = np.ascontiguousarray(mesh.vertices, dtype="f4")
                colors = np.ascontiguousarray(np.asarray(mesh.colors, dtype="f4")[:, :3] / 255.0)
                codes = np.ascontiguousarray(code, dtype="i4")
                faces = np.ascontiguousarray(mesh.faces, dtype="i4")
                self._bufs = [self.ctx.buffer(a.tobytes()) for a in (verts, colors, codes, faces)]
                self.vao = self.ctx.vertex_array(
                    self.prog,
                    [
                        (self._bufs[0], "3f", "in_pos"),
                        (self._bufs[1], "3f", "in_color"),
                        (self._bufs[2], "i", "in_code"),
                    ],
                    index_buffer=self._bufs[3],
                    index_element_size=4,
                )
            for p in parts:
                bufs = [
                    self.ctx.buffer(np.ascontiguousarray(p.vertices, dtype="f4").tobytes()),
                    self.ctx.buffer(np.ascontiguousarray(p.uv, dtype="f4").tobytes()),
                    self.ctx.buffer(np.ascontiguousarray(p.faces, dtype="i4").tobytes()),
                ]
                vao = self.ctx.vertex_array(
                    self.tex_prog,
                    [(bufs[0], "3f", "in_pos"), (bufs[1], "2f", "in_uv")],
                    index_buffer=bufs[2],
                    index_element_size=4,
                )
                img = np.ascontiguousarray(p.texture)
                tex = self.ctx.texture((img.shape[1], img.shape[0]), 3, img.tobytes(), alignment=1)
                tex.filter = (self.ctx.LINEAR, self.ctx.LINEAR)
                tex.repeat_x = tex.repeat_y = False  # clamp to edge, as the baked atlas is padded
                code = int(np.searchsorted(self.segment_values, p.segment))
                self._parts.append((vao, tex, bufs, code))
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
            for prog in (self.prog, self.tex_prog):
                prog["world_to_clip_cv"].write(mvp.T.astype("f4").tobytes())
                prog["world_to_cam"].write(w2c.T.astype("f4").tobytes())
            if self.vao is not None:
                self.vao.render()
            for vao, tex, _, code in self._parts:
                tex.use(location=0)
                self.tex_prog["tex"].value = 0
                self.tex_prog["code"].value = code
                vao.render()
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
            for vao, tex, bufs, _ in self._parts:
                for obj in (vao, tex, *bufs):
                    obj.release()
            for obj in (*([self.vao] if self.vao is not None else []), *self._bufs, self.prog, self.tex_prog):
                obj.release()
