"""Request parsing and response encoding of the render API (no Flask here, so the CLI reuses it).

Every invalid input raises :class:`ApiError` carrying the HTTP status and the request field it is about.
Field names are the JSON body's (``pose.qw``, ``poses[3].x``, ``width``...); GET query parameters use
the same names, flattened (``x, y, z, qx, qy, qz, qw`` or ``matrix``).
"""

from __future__ import annotations

import io as _io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from simgen.data.camera import Intrinsics
from simgen.data.io import id_to_rgb
from simgen.data.poses import CONVENTIONS, DEFAULT_CONVENTION, PoseError, from_c2w_cv, parse_pose
from simgen.serve.config import ServeConfig
from simgen.serve.scene import OUTPUTS, STUFF_ID_OFFSET, RenderScene

ENCODINGS = ("npz", "multipart")
DEPTH_FORMATS = ("float32", "uint16_mm")
DEFAULT_SIZE = (320, 240)  # Gazebo's default camera image size
DEFAULT_HFOV_DEG = 60.0  # Gazebo's default <horizontal_fov> (1.047 rad)
POSE_FIELDS = ("x", "y", "z", "qx", "qy", "qz", "qw")
CAMERA_FIELDS = ("convention", "width", "height", "fx", "fy", "cx", "cy", "hfov_deg", "hfov_rad")
RENDER_FIELDS = ("pose", *CAMERA_FIELDS, "outputs", "encoding", "depth_format")
BATCH_FIELDS = ("poses", *CAMERA_FIELDS, "outputs", "encoding", "depth_format")
PNG_QUERY_FIELDS = (*POSE_FIELDS, "matrix", *CAMERA_FIELDS, "vis", "depth_max")
MULTIPART_BOUNDARY = "simgen-render-part"
# Sane camera ranges: outside them ray directions overflow float32 in the ray caster.
FOCAL_RANGE = (1e-3, 1e9)  # pixels
MAX_PRINCIPAL = 1e7  # |cx|, |cy| in pixels
# Deepest JSON nesting accepted (a batch of matrix poses needs 4). Checked on the raw bytes before parsing:
# json.loads recurses per level and a body of 100 000 '[' ended in RecursionError (a 500) before.
MAX_JSON_DEPTH = 32
JSON_MEDIA_TYPES = ("application/json",)


class ApiError(Exception):
    """A client error: HTTP ``status``, the offending request ``field`` and a message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message

    def to_json(self) -> dict:
        return {"error": self.message, "field": self.field}


def bad(field: str | None, message: str) -> ApiError:
    return ApiError(400, field, message)


@dataclass(frozen=True)
class Camera:
    """Intrinsics + image size shared by every pose of a request."""

    convention: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)


@dataclass(frozen=True)
class RenderParams:
    camera: Camera
    c2w_cv: tuple[np.ndarray, ...]  # one (4, 4) OpenCV-axes camera-to-world per pose
    outputs: tuple[str, ...]
    encoding: str
    depth_format: str


# -- scalar parsing ------------------------------------------------------------------------------------


def _number(value: Any, field: str, text: bool = False) -> float:
    """A finite number. ``text``: the value comes from a query string, so a numeric string is the number;
    in a JSON body a string is refused (strict types: ``"width": "320"`` is a client bug to report)."""
    if isinstance(value, bool) or value is None:
        raise bad(field, f"must be a number, got {json.dumps(value)}")
    if isinstance(value, str) and not text:
        raise bad(field, f"must be a JSON number, got the string {value[:40]!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad(field, f"must be a number, got {value!r}") from None
    if not isinstance(value, int | float):
        raise bad(field, f"must be a number, got {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:  # an integer beyond float range
        raise bad(field, "must be a finite number, got a huge integer") from None
    if not math.isfinite(f):
        raise bad(field, f"must be finite, got {value!r}")
    return f


def _integer(
    value: Any, field: str, lo: int, hi: int, limit_name: str | None = None, text: bool = False
) -> int:
    """An integer in [lo, hi]; a float with no fraction counts (JSON Schema's "integer"). ``text`` as in
    :func:`_number`."""
    if isinstance(value, str) and not text:
        raise bad(field, f"must be a JSON integer, got the string {value[:40]!r}")
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise bad(field, f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad(field, f"must be an integer, got {json.dumps(value) if value is None else value!r}")
    if value < lo:
        raise bad(field, f"must be >= {lo}, got {value}")
    if value > hi:
        extra = f" (server limit --{limit_name.replace('_', '-')})" if limit_name else ""
        raise bad(field, f"must be <= {hi}{extra}, got {value}")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise bad(field, f"unknown value {value!r}; expected one of {list(choices)}")
    return value


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise bad(field, f"must be a boolean (1/0, true/false), got {value!r}")


def _unknown_fields(data: Mapping, allowed: tuple[str, ...], where: str = "") -> None:
    for k in data:
        if k not in allowed:
            raise bad(f"{where}{k}", f"unknown field; expected some of {list(allowed)}")


# -- camera, outputs -----------------------------------------------------------------------------------


def parse_camera(data: Mapping, cfg: ServeConfig, text: bool = False) -> Camera:
    """Image size and intrinsics: ``fx`` (+ optional ``fy, cx, cy``) or ``hfov_deg`` / ``hfov_rad``.
    ``text``: ``data`` is a query string (numbers arrive as strings); otherwise a JSON object."""

    conv = data.get("convention", DEFAULT_CONVENTION)
    conv = _choice(conv, "convention", CONVENTIONS)
    W = _integer(data.get("width", DEFAULT_SIZE[0]), "width", 1, cfg.max_width, "max_width", text)
    H = _integer(data.get("height", DEFAULT_SIZE[1]), "height", 1, cfg.max_height, "max_height", text)
    has_k = [k for k in ("fx", "fy", "cx", "cy") if k in data]
    has_fov = [k for k in ("hfov_deg", "hfov_rad") if k in data]
    if has_k and has_fov:
        raise bad(has_fov[0], f"give either fx/fy/cx/cy or a field of view, not both (got {has_k[0]} too)")
    if len(has_fov) > 1:
        raise bad("hfov_rad", "give hfov_deg or hfov_rad, not both")
    if has_k:
        if "fx" not in data:
            raise bad("fx", "required when fy, cx or cy is given")
        fx = _number(data["fx"], "fx", text)
        fy = _number(data.get("fy", fx), "fy", text)
        cx = _number(data.get("cx", W / 2), "cx", text)
        cy = _number(data.get("cy", H / 2), "cy", text)
        for name, f in (("fx", fx), ("fy", fy)):
            if not FOCAL_RANGE[0] <= f <= FOCAL_RANGE[1]:
                raise bad(
                    name, f"focal length must lie in [{FOCAL_RANGE[0]:g}, {FOCAL_RANGE[1]:g}] pixels, got {f}"
                )
        for name, c in (("cx", cx), ("cy", cy)):
            if abs(c) > MAX_PRINCIPAL:
                raise bad(name, f"principal point must lie within +-{MAX_PRINCIPAL:g} pixels, got {c}")
    else:
        field = has_fov[0] if has_fov else "hfov_deg"
        if field == "hfov_rad":
            hfov = _number(data["hfov_rad"], "hfov_rad", text)
            if not 0 < hfov < math.pi:
                raise bad("hfov_rad", f"horizontal field of view must lie in (0, pi) radians, got {hfov}")
        else:
            deg = _number(data.get("hfov_deg", DEFAULT_HFOV_DEG), "hfov_deg", text)
            if not 0 < deg < 180:
                raise bad("hfov_deg", f"horizontal field of view must lie in (0, 180) degrees, got {deg}")
            hfov = math.radians(deg)
        t = math.tan(hfov / 2)
        fx = fy = W / 2 / t if t > 0 else math.inf
        cx, cy = W / 2, H / 2
        if not FOCAL_RANGE[0] <= fx <= FOCAL_RANGE[1]:
            raise bad(
                field,
                f"field of view gives focal length {fx:g} px, outside [{FOCAL_RANGE[0]:g}, {FOCAL_RANGE[1]:g}]",
            )
    return Camera(conv, W, H, fx, fy, cx, cy)


def parse_outputs(value: Any, text: bool = False) -> tuple[str, ...]:
    """A list of output names; ``text`` (query string) also takes ``"rgb,depth"``."""
    if isinstance(value, str) and text:
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise bad("outputs", f"must be a non-empty list of {list(OUTPUTS)}")
    for v in value:
        if not isinstance(v, str) or v not in OUTPUTS:
            raise bad("outputs", f"unknown output {v!r}; expected some of {list(OUTPUTS)}")
    return tuple(o for o in OUTPUTS if o in value)


def _encoding(data: Mapping) -> tuple[str, str]:
    enc = _choice(data.get("encoding", "npz"), "encoding", ENCODINGS)
    default_depth = "float32" if enc == "npz" else "uint16_mm"
    depth_format = _choice(data.get("depth_format", default_depth), "depth_format", DEPTH_FORMATS)
    if enc == "multipart" and depth_format == "float32":
        raise bad("depth_format", "multipart PNG parts hold depth as 16-bit millimetres: use 'uint16_mm'")
    return enc, depth_format


def _pose(pose: Any, convention: str, field: str) -> np.ndarray:
    """A JSON pose: numbers must be JSON numbers (parse_pose also serves query strings, which are text)."""
    if isinstance(pose, Mapping):
        for k in POSE_FIELDS:
            if k in pose and isinstance(pose[k], str):
                raise bad(f"{field}.{k}", f"must be a JSON number, got the string {pose[k][:40]!r}")
        rows = pose.get("matrix")
        if isinstance(rows, list) and any(
            isinstance(v, str) for row in rows if isinstance(row, list) for v in row
        ):
            raise bad(f"{field}.matrix", "must hold JSON numbers, not strings")
    try:
        return parse_pose(pose, convention, field=field)
    except PoseError as e:
        raise bad(e.field, e.message) from None


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings not counted; linear time in
    numpy (no recursion, no Python loop per byte: 7 ms for 100 000 ``[``, less than ``json.loads`` takes
    for a body of the same size), so it runs before ``json.loads`` on any body."""
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size == 0:
        return 0
    quotes = b == ord('"')
    if b"\\" in raw:  # a quote is escaped when preceded by an odd run of backslashes
        idx = np.arange(b.size, dtype=np.int32)
        last_plain = np.maximum.accumulate(np.where(b != ord("\\"), idx, -1))
        run = np.zeros(b.size, dtype=np.int32)
        run[1:] = idx[:-1] - last_plain[:-1]
        quotes &= (run & 1) == 0
    outside = ((np.cumsum(quotes, dtype=np.int32) & 1) == 0) & ~quotes
    delta = ((b == ord("[")) | (b == ord("{"))).astype(np.int32) - ((b == ord("]")) | (b == ord("}")))
    delta *= outside
    return int(np.cumsum(delta, dtype=np.int32).max())


def require_json(content_type: str | None) -> None:
    """415 naming ``body`` unless the media type is ``application/json`` (parameters such as charset ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in JSON_MEDIA_TYPES:
        raise ApiError(415, "body", f"Content-Type must be application/json, got {media or 'none'!r}")


def parse_json_body(raw: bytes, content_type: str | None) -> Any:
    """A request body -> the parsed JSON value, bounded before parsing (the size by the caller's
    ``max_body_bytes``, the nesting here).

    * 415 unless the Content-Type is ``application/json``: a browser page elsewhere can POST
      ``text/plain`` (or a form) to this server without a CORS preflight, but not ``application/json``.
    * 400 naming ``body`` for nesting deeper than ``MAX_JSON_DEPTH``, undecodable or invalid JSON.
    """
    require_json(content_type)
    # Fewer brackets than the limit cannot nest deeper: the common case skips the exact scan.
    depth = json_depth(raw) if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH else 0
    if depth > MAX_JSON_DEPTH:
        raise bad("body", f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} accepted")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and over-long integers
        raise bad("body", f"not valid JSON ({str(e)[:200]})") from None


def _body_object(data: Any) -> Mapping:
    if not isinstance(data, Mapping):
        raise bad("body", "must be a JSON object")
    return data


def parse_render_body(data: Any, cfg: ServeConfig) -> RenderParams:
    """``POST /render`` JSON body -> parameters (ApiError naming the field on bad input)."""
    data = _body_object(data)
    _unknown_fields(data, RENDER_FIELDS)
    if "pose" not in data:
        raise bad("pose", "missing: {x, y, z, qx, qy, qz, qw} or {matrix: 4x4}")
    cam = parse_camera(data, cfg)
    c2w = _pose(data["pose"], cam.convention, "pose")
    outputs = parse_outputs(data.get("outputs", list(OUTPUTS)))
    enc, depth_format = _encoding(data)
    return RenderParams(cam, (c2w,), outputs, enc, depth_format)


def parse_batch_body(data: Any, cfg: ServeConfig) -> RenderParams:
    """``POST /render/batch`` JSON body: ``poses`` (a list) + the camera fields of ``/render``."""
    data = _body_object(data)
    _unknown_fields(data, BATCH_FIELDS)
    poses = data.get("poses")
    if not isinstance(poses, list) or not poses:
        raise bad("poses", "must be a non-empty list of poses")
    if len(poses) > cfg.max_batch:
        raise bad(
            "poses", f"at most {cfg.max_batch} poses per batch (server limit --max-batch), got {len(poses)}"
        )
    cam = parse_camera(data, cfg)
    pixels = len(poses) * cam.width * cam.height
    if pixels > cfg.max_batch_pixels:
        raise bad(
            "poses",
            f"{len(poses)} poses x {cam.width}x{cam.height} = {pixels} pixels exceeds the server limit "
            f"--max-batch-pixels {cfg.max_batch_pixels}; send fewer poses or smaller images",
        )
    c2w = tuple(_pose(p, cam.convention, f"poses[{i}]") for i, p in enumerate(poses))
    outputs = parse_outputs(data.get("outputs", list(OUTPUTS)))
    enc, depth_format = _encoding(data)
    return RenderParams(cam, c2w, outputs, enc, depth_format)


def parse_png_query(
    args: Mapping[str, str], output: str, cfg: ServeConfig
) -> tuple[RenderParams, bool, float | None]:
    """``GET /render/<output>.png`` query -> (parameters, vis, depth_max)."""
    _unknown_fields(args, PNG_QUERY_FIELDS)
    cam = parse_camera(args, cfg, text=True)
    if "matrix" in args:
        extra = [k for k in POSE_FIELDS if k in args]
        if extra:
            raise bad(extra[0], "give either matrix or x, y, z, qx, qy, qz, qw")
        try:
            vals = [float(v) for v in args["matrix"].split(",")]
        except ValueError:
            raise bad("matrix", "must be 16 comma-separated numbers (row-major 4x4)") from None
        if len(vals) != 16:
            raise bad("matrix", f"must be 16 comma-separated numbers (row-major 4x4), got {len(vals)}")
        pose: dict[str, Any] = {"matrix": np.array(vals).reshape(4, 4).tolist()}
    else:
        for k in POSE_FIELDS:
            if k not in args:
                raise bad(k, "missing query parameter (pose: x, y, z, qx, qy, qz, qw or matrix)")
        pose = {k: args[k] for k in POSE_FIELDS}
    try:
        c2w = parse_pose(pose, cam.convention, field="pose")
    except PoseError as e:  # query parameters are flat: report "qw", not "pose.qw"
        raise bad(e.field.removeprefix("pose."), e.message) from None
    vis = _flag(args.get("vis", "0"), "vis")
    depth_max = None
    if "depth_max" in args:
        depth_max = _number(args["depth_max"], "depth_max", text=True)
        if depth_max <= 0:
            raise bad("depth_max", f"must be > 0 metres, got {depth_max}")
    return RenderParams(cam, (c2w,), (output,), "png", "uint16_mm"), vis, depth_max


# -- encoding ------------------------------------------------------------------------------------------


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """``float32`` metres (0 = no hit) -> ``uint16`` millimetres (0 = no hit, saturates at 65535)."""
    mm = np.rint(np.asarray(depth, dtype=np.float64) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of an ``(H, W, 3) uint8`` or ``(H, W) uint16`` image (fast compression: latency over size)."""
    buf = _io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def camera_meta(cam: Camera, world_frame: str) -> dict:
    return {
        "intrinsics": {
            "fx": cam.fx,
            "fy": cam.fy,
            "cx": cam.cx,
            "cy": cam.cy,
            "width": cam.width,
            "height": cam.height,
        },
        "world_frame": world_frame,
        "camera_axes": "opencv (x right, y down, z forward) for c2w_cv",
        "depth": "z-depth along the optical axis; float32 metres or uint16 millimetres; 0 = no hit",
        "panoptic": f"segment id per pixel: instance id for things, {STUFF_ID_OFFSET} + category_id for "
        "category-only regions, 0 = void",
        "stuff_id_offset": STUFF_ID_OFFSET,
    }


def _arrays(results: list[dict], params: RenderParams) -> dict[str, np.ndarray]:
    """Stack per-pose results into the response arrays (leading pose axis when batched)."""
    out: dict[str, np.ndarray] = {}
    for name in params.outputs:
        if name == "depth" and params.depth_format == "uint16_mm":
            out["depth_mm"] = np.stack([depth_to_mm(r["depth"]) for r in results])
        else:
            out[name] = np.stack([r[name] for r in results])
    return out


def encode_npz(results: list[dict], params: RenderParams, world_frame: str, batch: bool) -> bytes:
    """The ``.npz`` response (uncompressed: encoding time matters more than bytes on a LAN).

    Members: ``rgb (H, W, 3) uint8``, ``depth (H, W) float32`` or ``depth_mm (H, W) uint16``,
    ``panoptic (H, W) int32``, ``K (3, 3) float64``, ``c2w_cv (4, 4) float64``, and JSON strings (0-d
    unicode arrays, no pickle) ``segments`` and ``meta``. A batch adds a leading pose axis ``N`` and
    ``segments`` is a list of lists.
    """
    arrays = _arrays(results, params)
    K = params.camera.intrinsics().matrix()
    c2w = np.stack(params.c2w_cv)
    segs = [r.get("segments", []) for r in results]
    if not batch:
        arrays = {k: v[0] for k, v in arrays.items()}
        c2w, segs = c2w[0], segs[0]
    meta = camera_meta(params.camera, world_frame) | {"outputs": list(params.outputs), "count": len(results)}
    buf = _io.BytesIO()
    np.savez(
        buf, **arrays, K=K, c2w_cv=c2w, segments=np.array(json.dumps(segs)), meta=np.array(json.dumps(meta))
    )
    return buf.getvalue()


def encode_multipart(results: list[dict], params: RenderParams, world_frame: str, batch: bool) -> bytes:
    """``multipart/mixed`` response: one PNG part per image plus a ``meta.json`` part.

    Parts (``name`` in Content-Disposition; batches append ``_<index>``): ``rgb`` (RGB PNG), ``depth``
    (16-bit PNG, millimetres), ``panoptic`` (RGB PNG, COCO id = R + 256 G + 256² B), and ``meta`` (JSON:
    intrinsics, ``c2w_cv`` per pose, ``segments`` per pose).
    """
    parts: list[tuple[str, str, bytes]] = []
    for i, r in enumerate(results):
        suffix = f"_{i}" if batch else ""
        for name in params.outputs:
            if name == "rgb":
                data = png_bytes(r["rgb"])
            elif name == "depth":
                data = png_bytes(depth_to_mm(r["depth"]))
            else:
                data = png_bytes(id_to_rgb(r["panoptic"]))
            parts.append((f"{name}{suffix}", "image/png", data))
    meta = camera_meta(params.camera, world_frame) | {
        "outputs": list(params.outputs),
        "count": len(results),
        "c2w_cv": [c.tolist() for c in params.c2w_cv] if batch else params.c2w_cv[0].tolist(),
        "segments": [r.get("segments", []) for r in results] if batch else results[0].get("segments", []),
    }
    parts.append(("meta", "application/json", json.dumps(meta).encode()))
    chunks = []
    for name, ctype, data in parts:
        ext = "json" if ctype == "application/json" else "png"
        chunks.append(
            f"--{MULTIPART_BOUNDARY}\r\nContent-Type: {ctype}\r\n"
            f'Content-Disposition: attachment; name="{name}"; filename="{name}.{ext}"\r\n'
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{MULTIPART_BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


def parse_multipart(body: bytes, boundary: str = MULTIPART_BOUNDARY) -> dict[str, bytes]:
    """Split a response of :func:`encode_multipart` into ``{name: bytes}`` (used by the client and tests)."""
    out: dict[str, bytes] = {}
    delim = f"--{boundary}".encode()
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        name = headers["Content-Disposition"].split('name="', 1)[1].split('"', 1)[0]
        out[name] = data[: int(headers["Content-Length"])]
    return out


# -- visualisation (browser) ---------------------------------------------------------------------------

_TURBO: np.ndarray | None = None


def _turbo_lut() -> np.ndarray:
    global _TURBO
    if _TURBO is None:
        from matplotlib import colormaps

        _TURBO = (colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _TURBO


def colorize_depth(depth: np.ndarray, depth_max: float | None = None) -> np.ndarray:
    """Depth ``(H, W)`` metres -> turbo colours ``(H, W, 3) uint8`` (near blue, far red; no hit black)."""
    valid = depth > 0
    top = depth_max or (float(depth[valid].max()) if valid.any() else 1.0)
    idx = np.clip(depth / max(top, 1e-6) * 255, 0, 255).astype(np.uint8)
    out = _turbo_lut()[idx]
    out[~valid] = 0
    return out


def colorize_panoptic(pan: np.ndarray) -> np.ndarray:
    """Segment ids ``(H, W)`` -> distinct colours ``(H, W, 3) uint8`` (stable per id; void black)."""
    ids, inverse = np.unique(pan, return_inverse=True)
    # Golden-ratio hue steps keep neighbouring ids apart; value/saturation vary with the id's high bits.
    h = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    s = 0.55 + 0.4 * ((ids * 7) % 5) / 4
    v = np.where(ids >= STUFF_ID_OFFSET, 0.7, 0.95)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    lut = (np.stack([r, g, b], 1) * 255).astype(np.uint8)
    lut[ids == 0] = 0
    return lut[inverse.reshape(pan.shape)]


# -- several cameras per request (a robot's camera rig) ------------------------------------------------

RIG_FIELDS = ("pose", "convention", "cameras", "encoding", "depth_format")
RIG_CAMERA_FIELDS = ("name", "offset", *CAMERA_FIELDS[1:], "outputs")  # convention is the rig's
RIG_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class RigParams:
    """``POST /render/rig``: one render per camera, each a single-pose :class:`RenderParams`."""

    names: tuple[str, ...]
    cameras: tuple[RenderParams, ...]
    base_c2w: np.ndarray  # (4, 4) the rig's pose with the request convention's axes, world frame
    encoding: str
    depth_format: str


def _rig_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= RIG_NAME_CHARS:
        raise bad(field, f"must be 1-64 characters of letters, digits, '_' or '-', got {value!r}")
    return value


def parse_rig_body(data: Any, cfg: ServeConfig) -> RigParams:
    """``POST /render/rig`` JSON body -> per-camera parameters (ApiError naming the field on bad input).

    ``pose`` is the rig (robot) frame in the world with ``convention``'s axes; each ``cameras[i]`` has its own
    image size and intrinsics (the ``/render`` camera fields), ``outputs``, a unique ``name`` (default
    ``cam<i>``) and ``offset``: its camera frame in the rig frame, a pose in the same convention (default:
    the rig frame itself). A camera's world pose is ``pose * offset``, as a robot's camera links are.
    """
    data = _body_object(data)
    _unknown_fields(data, RIG_FIELDS)
    conv = _choice(data.get("convention", DEFAULT_CONVENTION), "convention", CONVENTIONS)
    if "pose" not in data:
        raise bad("pose", "missing: the rig's {x, y, z, qx, qy, qz, qw} or {matrix: 4x4}")
    base_cv = _pose(data["pose"], conv, "pose")
    base = from_c2w_cv(base_cv, conv)
    cams = data.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise bad("cameras", "must be a non-empty list of cameras")
    if len(cams) > cfg.max_batch:
        raise bad("cameras", f"at most {cfg.max_batch} cameras (server limit --max-batch), got {len(cams)}")
    enc, depth_format = _encoding(data)
    if enc != "npz":
        raise bad("encoding", "/render/rig answers npz only (one member per camera and output)")
    names: list[str] = []
    out: list[RenderParams] = []
    pixels = 0
    for i, c in enumerate(cams):
        where = f"cameras[{i}]."
        if not isinstance(c, Mapping):
            raise bad(f"cameras[{i}]", "must be an object")
        _unknown_fields(c, RIG_CAMERA_FIELDS, where)
        name = _rig_name(c.get("name", f"cam{i}"), f"{where}name")
        if name in names:
            raise bad(f"{where}name", f"duplicate camera name {name!r}")
        names.append(name)
        try:
            cam = parse_camera({**c, "convention": conv}, cfg)
            outputs = parse_outputs(c.get("outputs", list(OUTPUTS)))
        except ApiError as e:
            raise bad(f"{where}{e.field}", e.message) from None
        # world <- camera (cv axes) = world <- rig (convention axes) @ rig <- camera (cv axes)
        c2w = base @ _pose(c["offset"], conv, f"{where}offset") if "offset" in c else base_cv
        pixels += cam.width * cam.height
        out.append(RenderParams(cam, (c2w,), outputs, enc, depth_format))
    if pixels > cfg.max_batch_pixels:
        raise bad(
            "cameras",
            f"{len(cams)} cameras with {pixels} pixels in all exceed the server limit --max-batch-pixels "
            f"{cfg.max_batch_pixels}",
        )
    return RigParams(tuple(names), tuple(out), base, enc, depth_format)


def render_rig(scene: RenderScene, rig: RigParams) -> list[dict]:
    """Render every camera of a parsed rig request with ``scene`` (a :class:`simgen.serve.scene.RenderScene`):
    one result per camera in request order, each :meth:`RenderScene.render`'s. The server's ``/render/rig``
    and ``simgen drive``'s in-process renders both call this, so they render the same images."""
    return [scene.render(p.camera.intrinsics(), p.c2w_cv[0], p.outputs) for p in rig.cameras]


def encode_rig_npz(results: list[dict], rig: RigParams, world_frame: str) -> bytes:
    """The ``/render/rig`` ``.npz``: per camera ``<name>/rgb``, ``<name>/depth`` (or ``<name>/depth_mm``),
    ``<name>/panoptic``, ``<name>/K`` ``(3, 3)``, ``<name>/c2w_cv`` ``(4, 4)`` (the arrays of ``/render``),
    and JSON strings ``segments`` (``{name: [segment, ...]}``) and ``meta`` (``cameras``: per camera its
    name, intrinsics and outputs, in request order; ``rig_pose`` the rig's ``(4, 4)``)."""
    arrays: dict[str, np.ndarray] = {}
    segs: dict[str, list] = {}
    cams = []
    for name, params, r in zip(rig.names, rig.cameras, results, strict=True):
        for k, v in _arrays([r], params).items():
            arrays[f"{name}/{k}"] = v[0]
        arrays[f"{name}/K"] = params.camera.intrinsics().matrix()
        arrays[f"{name}/c2w_cv"] = params.c2w_cv[0]
        segs[name] = r.get("segments", [])
        m = camera_meta(params.camera, world_frame)
        cams.append({"name": name, "intrinsics": m["intrinsics"], "outputs": list(params.outputs)})
    meta = camera_meta(rig.cameras[0].camera, world_frame)
    meta.pop("intrinsics")
    meta |= {"cameras": cams, "count": len(results), "rig_pose": rig.base_c2w.tolist()}
    buf = _io.BytesIO()
    np.savez(buf, **arrays, segments=np.array(json.dumps(segs)), meta=np.array(json.dumps(meta)))
    return buf.getvalue()
