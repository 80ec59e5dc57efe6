"""A ROS 2 bag of an RGB-D camera -> scene format (``simgen import rosbag BAG OUT``).

Reads rosbag2 recordings (MCAP or sqlite3 storage; the bag folder with ``metadata.yaml`` or a
single ``.mcap`` / ``.db3`` file) with the pure-Python ``rosbags`` library; ROS itself is not
needed. See docs/importers.md ("ROS 2 bags") for the user-facing description.

What is read:

* colour: ``sensor_msgs/msg/Image`` (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``; ``mono8`` when the
  topic is chosen with ``--color-topic``) or ``sensor_msgs/msg/CompressedImage`` (JPEG / PNG);
* depth: ``sensor_msgs/msg/Image`` ``16UC1`` (millimetres, REP 118) or ``32FC1`` (metres), or a
  ``compressedDepth`` ``CompressedImage`` holding ``16UC1`` PNG;
* intrinsics: ``sensor_msgs/msg/CameraInfo`` of each stream (``plumb_bob`` / ``rational_polynomial``
  distortion is removed, other models are refused);
* poses: ``/tf`` and ``/tf_static`` (:mod:`.rosbag_tf`), ``T_world_camera`` at each image's
  ``header.stamp`` in the image's ``header.frame_id`` (a ROS optical frame: x right, y down,
  z forward, i.e. OpenCV axes).

The import runs in two passes over the bag: the first reads TF, CameraInfo and the image headers
(and, with blur rejection on, a sharpness score of every colour image), pairs colour with depth,
looks up the poses and selects frames; the second decodes only the selected images and writes
them. Depth that is not registered to the colour camera (another optical frame, other intrinsics,
or a different stamp) is reprojected into it through TF (:func:`.rosbag_camera.reproject_depth`).
"""

from __future__ import annotations

import io as _io
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data.camera import opencv_to_opengl
from simgen.data.importers.common import DatasetImportError, prepare_output
from simgen.data.importers.rosbag_camera import (
    CameraModel,
    camera_from_info,
    reproject_depth,
    undistort_color,
    undistort_depth,
    undistort_map,
)
from simgen.data.importers.rosbag_tf import TFTree, format_stamp, strip_frame

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TF_TOPICS = {"/tf": False, "/tf_static": True}

# encoding -> (channels, bytes per channel) of sensor_msgs/Image
COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}
GREY_ENCODINGS = {"mono8": 1}  # accepted as colour only when chosen with --color-topic
DEPTH_ENCODINGS = {"16UC1": np.dtype(np.uint16), "mono16": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}
COMPRESSED_DEPTH_HEADER = 12  # image_transport compressed_depth: int32 format + 2 float32 quantisation


@dataclass
class RosbagConfig:
    """``simgen import rosbag`` settings (each becomes a ``--flag``)."""

    color_topic: str | None = field(
        default=None,
        metadata={"help": "colour topic (Image or CompressedImage); default: the bag's only colour stream"},
    )
    depth_topic: str | None = field(
        default=None,
        metadata={
            "help": "depth topic (Image 16UC1/32FC1 or compressedDepth); default: the bag's only depth stream"
        },
    )
    color_info_topic: str | None = field(
        default=None,
        metadata={"help": "CameraInfo of the colour camera; default: <colour namespace>/camera_info, else the "
                  "only CameraInfo with the colour images' frame and size"},
    )  # fmt: skip
    depth_info_topic: str | None = field(
        default=None, metadata={"help": "CameraInfo of the depth camera; default: found as for colour"}
    )
    world_frame: str | None = field(
        default=None,
        metadata={"help": "TF frame the poses are expressed in (map, odom, ...); default: the root of the "
                  "colour camera's TF tree"},
    )  # fmt: skip
    sync_tolerance: float = field(
        default=0.02,
        metadata={"help": "seconds: a colour image is paired with the depth image nearest in header stamp "
                  "if they are at most this far apart (colour images without one are skipped)"},
    )  # fmt: skip
    min_translation: float = field(
        default=0.05,
        metadata={"help": "metres: keep a frame once the camera moved this far from the last kept frame "
                  "(or turned --min-rotation); 0 = no translation criterion; both 0 keep every frame"},
    )  # fmt: skip
    min_rotation: float = field(
        default=5.0,
        metadata={
            "help": "degrees: keep a frame once the camera turned this much since the last kept one (0 = off)"
        },
    )
    blur_ratio: float = field(
        default=0.5,
        metadata={"help": "skip a colour image as blurred when its sharpness (variance of the Laplacian) is "
                  "below this fraction of the median within --blur-window; 0 = off"},
    )  # fmt: skip
    blur_window: float = field(default=1.0, metadata={"help": "seconds either side for the blur median"})
    max_frames: int = field(default=0, metadata={"help": "stop after this many written frames (0 = all)"})
    test_every: int = field(
        default=0,
        metadata={"help": "put every K-th written frame (0, K, 2K, ...) in the test split (0 = none)"},
    )
    depth_scale: float = field(
        default=1000.0, metadata={"help": "16UC1 depth units per metre (1000 = millimetres, REP 118)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty OUT folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar or summary"})

    def __post_init__(self) -> None:
        checks = (
            ("sync_tolerance", self.sync_tolerance >= 0),
            ("min_translation", self.min_translation >= 0),
            ("min_rotation", self.min_rotation >= 0),
            ("blur_ratio", 0 <= self.blur_ratio < 1),
            ("blur_window", self.blur_window > 0),
            ("max_frames", self.max_frames >= 0),
            ("test_every", self.test_every >= 0),
            ("depth_scale", np.isfinite(self.depth_scale) and self.depth_scale > 0),
        )
        for name, ok in checks:
            if not ok:
                limit = (
                    "in [0, 1)"
                    if name == "blur_ratio"
                    else "> 0"
                    if name in ("depth_scale", "blur_window")
                    else ">= 0"
                )
                raise ValueError(f"--{name.replace('_', '-')} must be {limit}, got {getattr(self, name)}")


@dataclass
class RosbagReport:
    """What ``import_rosbag`` did."""

    out: Path
    frames: int  # written
    test_frames: int
    color_images: int  # colour messages in the bag
    skipped: dict[str, int]  # reason -> number of colour images
    skipped_examples: list[str]  # "stamp S: reason" for the unexpected reasons (not motion gating)
    warnings: list[str]
    topics: dict[str, str]  # color, depth, color_info, depth_info
    world_frame: str
    camera_frame: str
    depth_registration: str  # "copied" (registered) or "reprojected"


@dataclass
class _Stream:
    """Headers of one image topic, sorted by header stamp."""

    topic: str
    msgtype: str
    stamps: np.ndarray  # (N,) int64 ns
    ordinals: np.ndarray  # (N,) position of each message in the topic's bag order
    frame_id: str
    size: tuple[int, int]  # (width, height)
    kind: str  # encoding or compressed format
    sharpness: np.ndarray | None = None  # (N,) variance of the Laplacian (colour, blur rejection on)


# ----------------------------------------------------------------------------- image decoding


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _raw_rows(msg, channels: int, dtype: np.dtype, where: str) -> np.ndarray:
    """``sensor_msgs/Image`` data -> ``(H, W, channels)`` array of ``dtype`` (row padding dropped)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels * dtype.itemsize
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < row or data.size < h * step:
        raise DatasetImportError(
            f"{where}: {msg.encoding} image {w}x{h} needs step >= {row} and {h * row} bytes, "
            f"got step {step} and {data.size} bytes"
        )
    rows = data[: h * step].reshape(h, step)[:, :row]
    dt = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(dt).reshape(h, w, channels).astype(dtype, copy=False)


def decode_color(msg, msgtype: str, where: str) -> np.ndarray:
    """Colour message -> ``(H, W, 3)`` uint8 RGB. ``where`` (topic and stamp) names errors."""
    from PIL import Image, UnidentifiedImageError

    if msgtype == COMPRESSED:
        try:
            with Image.open(_io.BytesIO(np.asarray(msg.data, dtype=np.uint8).tobytes())) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetImportError(
                f"{where}: CompressedImage format {msg.format!r} is not a readable JPEG/PNG ({e})"
            ) from None
    enc = str(msg.encoding)
    channels = COLOR_ENCODINGS.get(enc) or GREY_ENCODINGS.get(enc)
    if channels is None:
        raise DatasetImportError(
            f"{where}: unsupported colour encoding {enc!r} (supported: {', '.join([*COLOR_ENCODINGS, *GREY_ENCODINGS])})"
        )
    px = _raw_rows(msg, channels, np.dtype(np.uint8), where)
    if channels == 1:
        return np.repeat(px, 3, axis=2)
    rgb = px[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if enc.startswith("bgr") else rgb)


def decode_depth(msg, msgtype: str, where: str, units_per_metre: float) -> np.ndarray:
    """Depth message -> ``(H, W)`` float32 z-depth in metres, 0 = invalid (NaN, inf, <= 0)."""
    from PIL import Image, UnidentifiedImageError

    if msgtype == COMPRESSED:
        fmt = str(msg.format)
        if "compresseddepth" not in fmt.lower() or not fmt.strip().startswith(("16UC1", "mono16")):
            raise DatasetImportError(
                f"{where}: unsupported depth CompressedImage format {fmt!r} (supported: 16UC1 compressedDepth PNG)"
            )
        data = np.asarray(msg.data, dtype=np.uint8).tobytes()[COMPRESSED_DEPTH_HEADER:]
        try:
            with Image.open(_io.BytesIO(data)) as im:
                raw = np.asarray(im)
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetImportError(
                f"{where}: compressedDepth payload is not a readable PNG ({e})"
            ) from None
        if raw.dtype not in (np.uint16, np.int32) or raw.ndim != 2:
            raise DatasetImportError(
                f"{where}: compressedDepth PNG is not 16-bit single channel ({raw.dtype})"
            )
        depth = raw.astype(np.float32) / np.float32(units_per_metre)
    else:
        enc = str(msg.encoding)
        dtype = DEPTH_ENCODINGS.get(enc)
        if dtype is None:
            raise DatasetImportError(
                f"{where}: unsupported depth encoding {enc!r} (supported: {', '.join(DEPTH_ENCODINGS)})"
            )
        raw = _raw_rows(msg, 1, dtype, where)[..., 0]
        depth = raw.astype(np.float32)
        if dtype == np.uint16:
            depth /= np.float32(units_per_metre)
    depth[~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth


def _header(msg, msgtype: str, where: str, depth: bool) -> tuple[tuple[int, int], str]:
    """(width, height) and the encoding / format of an image message, checked; no pixel decoding."""
    from PIL import Image, UnidentifiedImageError

    if msgtype == COMPRESSED:
        fmt = str(msg.format)
        data = np.asarray(msg.data, dtype=np.uint8).tobytes()
        if depth:
            if "compresseddepth" not in fmt.lower() or not fmt.strip().startswith(("16UC1", "mono16")):
                raise DatasetImportError(
                    f"{where}: unsupported depth CompressedImage format {fmt!r} (supported: 16UC1 compressedDepth PNG)"
                )
            data = data[COMPRESSED_DEPTH_HEADER:]
        try:
            with Image.open(_io.BytesIO(data)) as im:  # reads the header only
                return im.size, fmt
        except (UnidentifiedImageError, OSError):
            raise DatasetImportError(
                f"{where}: CompressedImage format {fmt!r}: data is not a readable JPEG/PNG"
            ) from None
    enc = str(msg.encoding)
    known = DEPTH_ENCODINGS if depth else {**COLOR_ENCODINGS, **GREY_ENCODINGS}
    if enc not in known:
        what = "depth" if depth else "colour"
        raise DatasetImportError(
            f"{where}: unsupported {what} encoding {enc!r} (supported: {', '.join(known)})"
        )
    return (int(msg.width), int(msg.height)), enc


def message_sharpness(msg, msgtype: str, where: str) -> float:
    """:func:`sharpness` of a colour message. A JPEG is decoded at half size in grey (libjpeg's DCT
    scaling, several times faster than a full decode); the score is only compared between images of
    one topic, which all go the same way."""
    from PIL import Image, UnidentifiedImageError

    if msgtype == COMPRESSED:
        try:
            with Image.open(_io.BytesIO(np.asarray(msg.data, dtype=np.uint8).tobytes())) as im:
                if im.format == "JPEG":
                    im.draft("L", (im.size[0] // 2, im.size[1] // 2))
                return sharpness(np.asarray(im.convert("L")))
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetImportError(
                f"{where}: CompressedImage format {msg.format!r} is not a readable JPEG/PNG ({e})"
            ) from None
    return sharpness(decode_color(msg, msgtype, where))


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (Pech-Pacheco et al., ICPR 2000): lower = blurrier."""
    g = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


# ----------------------------------------------------------------------------- the bag


def open_bag(path: Path):
    """An open ``rosbags.highlevel.AnyReader`` of a rosbag2 bag; errors name the path."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise DatasetImportError(f"{path}: bag does not exist")
    if path.suffix == ".bag":
        raise DatasetImportError(
            f"{path}: a ROS 1 bag; convert it to rosbag2 first (rosbags-convert --src {path.name} --dst OUT)"
        )
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise DatasetImportError(
            f"{path}: not a rosbag2 folder (no metadata.yaml); pass the .mcap/.db3 file itself"
        )
    # Bags recorded before ROS 2 Iron carry no message definitions: fall back to Humble's.
    reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as e:
        raise DatasetImportError(f"{path}: unreadable rosbag2 bag ({e})") from None
    return reader


def _first(reader, topic: str) -> tuple[Any, int]:
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _, raw in reader.messages(connections=conns):
        return reader.deserialize(raw, conn.msgtype), conn
    raise DatasetImportError(f"topic {topic} has no messages")


def _topic_types(reader) -> dict[str, str]:
    return {c.topic: c.msgtype for c in reader.connections}


def _listing(types: dict[str, str], counts: dict[str, int], want: set[str] | None = None) -> str:
    items = [
        f"{t} [{types[t]}, {counts.get(t, 0)} msgs]"
        for t in sorted(types)
        if want is None or types[t] in want
    ]
    return "; ".join(items) or "none"


def _image_topic_kind(reader, topic: str, msgtype: str) -> str:
    """'color', 'depth' or 'other' from the first message's encoding / format."""
    msg, _ = _first(reader, topic)
    if msgtype == COMPRESSED:
        return "depth" if "compresseddepth" in str(msg.format).lower() else "color"
    enc = str(msg.encoding)
    return "color" if enc in COLOR_ENCODINGS else "depth" if enc in DEPTH_ENCODINGS else "other"


def _choose_stream(reader, flag: str | None, kind: str, types: dict[str, str], counts: dict[str, int]) -> str:
    what = "colour" if kind == "color" else "depth"
    option = f"--{kind}-topic"
    if flag:
        if flag not in types:
            raise DatasetImportError(
                f"{what} topic {flag} ({option}) is not in the bag; image topics: "
                f"{_listing(types, counts, {IMAGE, COMPRESSED})}"
            )
        if types[flag] not in (IMAGE, COMPRESSED):
            raise DatasetImportError(
                f"{what} topic {flag} has type {types[flag]}, expected {IMAGE} or {COMPRESSED}"
            )
        return flag
    cands = [t for t, ty in sorted(types.items()) if ty in (IMAGE, COMPRESSED) and counts.get(t, 0) > 0]
    found = [t for t in cands if _image_topic_kind(reader, t, types[t]) == kind]
    if len(found) == 1:
        return found[0]
    if not found:
        encs = "rgb8/bgr8/rgba8/bgra8 Image or JPEG/PNG CompressedImage" if kind == "color" else (
            "16UC1/32FC1 Image or 16UC1 compressedDepth CompressedImage")  # fmt: skip
        raise DatasetImportError(
            f"no {what} topic ({encs}) in the bag; image topics: {_listing(types, counts, {IMAGE, COMPRESSED})}"
            f" (pass {option})"
        )
    raise DatasetImportError(
        f"the bag has {len(found)} {what} streams; choose one with {option}",
        [f"{t} [{types[t]}, {counts.get(t, 0)} msgs]" for t in found],
    )


def _image_namespace(topic: str) -> str:
    parts = topic.rstrip("/").split("/")
    if parts[-1] in ("compressed", "compressedDepth", "theora"):
        parts = parts[:-1]
    return "/".join(parts[:-1])


def _choose_info(
    reader, flag: str | None, image_topic: str, frame_id: str, size: tuple[int, int], what: str,
    types: dict[str, str], counts: dict[str, int], prefer: str | None = None,
) -> str | None:  # fmt: skip
    """The CameraInfo topic of an image stream, or None when none matches (the caller decides).

    Without a flag: the sibling ``camera_info`` of the image topic, else the one CameraInfo whose
    frame and size match the images; among several, ``prefer`` (the colour camera's, for depth
    registered to it) wins, otherwise the choice is refused.
    """
    option = "--color-info-topic" if what == "colour" else "--depth-info-topic"
    infos = [t for t, ty in sorted(types.items()) if ty == CAMERA_INFO and counts.get(t, 0) > 0]
    if flag:
        if flag not in types:
            raise DatasetImportError(
                f"CameraInfo topic {flag} ({option}) is not in the bag; CameraInfo topics: {', '.join(infos) or 'none'}"
            )
        if types[flag] != CAMERA_INFO:
            raise DatasetImportError(f"{option} {flag} has type {types[flag]}, expected {CAMERA_INFO}")
        return flag
    sibling = _image_namespace(image_topic) + "/camera_info"
    if sibling in infos:
        return sibling
    matching = []
    for t in infos:
        msg, _ = _first(reader, t)
        if strip_frame(msg.header.frame_id) == frame_id and (int(msg.width), int(msg.height)) == size:
            matching.append(t)
    if len(matching) == 1:
        return matching[0]
    if prefer in matching:
        return prefer
    if len(matching) > 1:
        raise DatasetImportError(
            f"several CameraInfo topics match the {what} images of {image_topic} (frame {frame_id!r}, "
            f"{size[0]}x{size[1]}); choose one with {option}",
            matching,
        )
    return None


# ----------------------------------------------------------------------------- selection


def select_frames(
    c2w: np.ndarray, sharp: np.ndarray | None, stamps: np.ndarray, cfg: RosbagConfig
) -> tuple[list[int], dict[int, str]]:
    """Choose the frames to write among the paired, posed colour images (in stamp order).

    Args:
        c2w: ``(N, 4, 4)`` camera-to-world poses (any axes convention; only motion is compared).
        sharp: ``(N,)`` sharpness scores, or None (blur rejection off).
        stamps: ``(N,)`` int64 ns, ascending.

    Returns:
        kept indices, and ``{index: reason}`` for every dropped one ("blurred", "motion",
        "max-frames").
    """
    dropped: dict[int, str] = {}
    n = len(stamps)
    if sharp is not None and cfg.blur_ratio > 0 and n > 1:
        half = int(round(cfg.blur_window * 1e9))
        lo = np.searchsorted(stamps, stamps - half, side="left")
        hi = np.searchsorted(stamps, stamps + half, side="right")
        for i in range(n):
            if sharp[i] < cfg.blur_ratio * float(np.median(sharp[lo[i] : hi[i]])):
                dropped[i] = "blurred"
    kept: list[int] = []
    cos_min = np.cos(np.deg2rad(cfg.min_rotation))
    for i in range(n):
        if i in dropped:
            continue
        if kept:
            last = c2w[kept[-1]]
            moved = float(np.linalg.norm(c2w[i, :3, 3] - last[:3, 3]))
            # Angle between the two rotations from the trace of R_last^T R_i, clipped for rounding.
            cos = (np.trace(last[:3, :3].T @ c2w[i, :3, :3]) - 1.0) / 2.0
            far = cfg.min_translation > 0 and moved >= cfg.min_translation
            turned = cfg.min_rotation > 0 and cos <= cos_min
            if (cfg.min_translation > 0 or cfg.min_rotation > 0) and not (far or turned):
                dropped[i] = "motion"
                continue
        if cfg.max_frames and len(kept) >= cfg.max_frames:
            dropped[i] = "max-frames"
            continue
        kept.append(i)
    return kept, dropped


# ----------------------------------------------------------------------------- import


def _say(cfg: RosbagConfig, text: str) -> None:
    if not cfg.quiet:
        print(text, file=sys.stderr)


def import_rosbag(bag: str | Path, out: str | Path, cfg: RosbagConfig | None = None) -> RosbagReport:
    """Import the RGB-D camera of a rosbag2 bag as an unlabelled scene under ``out``.

    Raises :class:`DatasetImportError` naming the topic, frame and stamp of every problem; nothing
    is written before the bag has been checked, and ``transforms.json`` is written last.
    """
    from tqdm import tqdm

    cfg = cfg or RosbagConfig()
    bag, out = Path(bag), Path(out)
    warnings: list[str] = []
    reader = open_bag(bag)
    try:
        types = _topic_types(reader)
        counts = {t: info.msgcount for t, info in reader.topics.items()}
        color_topic = _choose_stream(reader, cfg.color_topic, "color", types, counts)
        depth_topic = _choose_stream(reader, cfg.depth_topic, "depth", types, counts)
        if color_topic == depth_topic:
            raise DatasetImportError(f"colour and depth topic are the same: {color_topic}")

        # ---- pass 1: TF, CameraInfo, image headers (+ sharpness)
        tf = TFTree()
        tf_conns = [c for c in reader.connections if c.topic in TF_TOPICS and c.msgtype == TF_MESSAGE]
        img_conns = [c for c in reader.connections if c.topic in (color_topic, depth_topic)]
        info_topics = {t for t, ty in types.items() if ty == CAMERA_INFO}
        info_conns = [c for c in reader.connections if c.topic in info_topics]
        heads: dict[str, list[tuple[int, int, str, tuple[int, int], str, float]]] = {
            color_topic: [],
            depth_topic: [],
        }
        infos: dict[str, list[tuple[int, Any]]] = {}
        ordinal = {color_topic: 0, depth_topic: 0}
        want_sharp = cfg.blur_ratio > 0
        total = sum(c.msgcount for c in tf_conns + img_conns + info_conns)
        pbar = tqdm(total=total, desc="read bag", unit="msg", disable=cfg.quiet or None, leave=False)
        for conn, _, raw in reader.messages(connections=tf_conns + img_conns + info_conns):
            pbar.update(1)
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in TF_TOPICS:
                tf.add_message(msg, conn.topic, TF_TOPICS[conn.topic])
                continue
            stamp = _stamp(msg)
            if conn.topic in info_topics:
                infos.setdefault(conn.topic, []).append((stamp, msg))
                continue
            is_depth = conn.topic == depth_topic
            where = f"{conn.topic} at stamp {format_stamp(stamp)}"
            size, kind = _header(msg, conn.msgtype, where, depth=is_depth)
            score = message_sharpness(msg, conn.msgtype, where) if want_sharp and not is_depth else 0.0
            heads[conn.topic].append(
                (stamp, ordinal[conn.topic], strip_frame(msg.header.frame_id), size, kind, score)
            )
            ordinal[conn.topic] += 1
        pbar.close()
        tf.finalize()
        warnings += tf.warnings
        color = _stream(color_topic, types[color_topic], heads[color_topic], warnings, want_sharp)
        depth = _stream(depth_topic, types[depth_topic], heads[depth_topic], warnings, False)

        # ---- cameras
        c_info = _choose_info(
            reader, cfg.color_info_topic, color_topic, color.frame_id, color.size, "colour", types, counts
        )
        if c_info is None:
            raise DatasetImportError(
                f"no CameraInfo for the colour images of {color_topic} (frame {color.frame_id!r}, "
                f"{color.size[0]}x{color.size[1]}); CameraInfo topics: {', '.join(sorted(info_topics)) or 'none'} "
                "(pass --color-info-topic)"
            )
        cam_c = _camera(c_info, infos, color)
        d_info = _choose_info(
            reader,
            cfg.depth_info_topic,
            depth_topic,
            depth.frame_id,
            depth.size,
            "depth",
            types,
            counts,
            c_info,
        )
        if d_info is None:
            if depth.frame_id == color.frame_id and depth.size == color.size:
                d_info = c_info
                warnings.append(
                    f"no CameraInfo for {depth_topic}: it shares the colour images' frame and size, so the colour "
                    f"camera's ({c_info}) is used"
                )
            else:
                raise DatasetImportError(
                    f"no CameraInfo for the depth images of {depth_topic} (frame {depth.frame_id!r}, "
                    f"{depth.size[0]}x{depth.size[1]}); CameraInfo topics: {', '.join(sorted(info_topics)) or 'none'} "
                    "(pass --depth-info-topic)"
                )
        cam_d = _camera(d_info, infos, depth)
    except BaseException:
        reader.close()
        raise

    try:
        # ---- pairing, poses, selection
        skipped: dict[str, int] = {}
        examples: list[str] = []

        def skip(i: int, reason: str, detail: str = "") -> None:
            skipped[reason] = skipped.get(reason, 0) + 1
            if detail and len(examples) < 200:
                examples.append(f"{color_topic} stamp {format_stamp(color.stamps[i])}: {detail}")

        pair = _pair(color.stamps, depth.stamps, int(round(cfg.sync_tolerance * 1e9)))
        if not (pair >= 0).any():
            gap = _closest(color.stamps, depth.stamps)
            raise DatasetImportError(
                f"colour ({color_topic}) and depth ({depth_topic}) header stamps never pair within "
                f"--sync-tolerance {cfg.sync_tolerance} s: the closest are colour {format_stamp(gap[0])} and depth "
                f"{format_stamp(gap[1])}, {abs(gap[0] - gap[1]) / 1e9:.6f} s apart (different clocks?)"
            )
        for i in np.flatnonzero(pair < 0):
            skip(
                int(i),
                "no depth within --sync-tolerance",
                f"no depth image on {depth_topic} within {cfg.sync_tolerance} s",
            )

        world = strip_frame(cfg.world_frame) if cfg.world_frame else None
        if world is None:
            if color.frame_id not in tf.frames:
                tf.path(color.frame_id, color.frame_id, f" (header.frame_id of {color_topic})")
            world = tf.root(color.frame_id)
        tf.path(world, color.frame_id, f" (--world-frame and the header.frame_id of {color_topic})")
        tf.path(world, depth.frame_id, f" (--world-frame and the header.frame_id of {depth_topic})")
        paired = np.flatnonzero(pair >= 0)
        T_wc, ok_c = tf.lookup(world, color.frame_id, color.stamps[paired])
        T_wd, ok_d = tf.lookup(world, depth.frame_id, depth.stamps[pair[paired]])
        for j in np.flatnonzero(~ok_c):
            skip(int(paired[j]), "outside the TF time range", _tf_range_text(tf, world, color.frame_id))
        for j in np.flatnonzero(ok_c & ~ok_d):
            skip(int(paired[j]), "outside the TF time range",
                 f"its depth image (stamp {format_stamp(depth.stamps[pair[paired[j]]])}) is outside "
                 + _tf_range_text(tf, world, depth.frame_id))  # fmt: skip
        posed = ok_c & ok_d
        if not posed.any():
            lo, hi = color.stamps[paired].min(), color.stamps[paired].max()
            raise DatasetImportError(
                f"no paired colour image of {color_topic} (stamps {format_stamp(lo)} .. {format_stamp(hi)}) lies "
                f"inside the TF time range: {_tf_range_text(tf, world, color.frame_id)}"
            )
        idx = paired[posed]
        T_wc, T_wd = T_wc[posed], T_wd[posed]
        sharp = color.sharpness[idx] if color.sharpness is not None else None
        kept, dropped = select_frames(T_wc, sharp, color.stamps[idx], cfg)
        for j, reason in sorted(dropped.items()):
            skip(
                int(idx[j]),
                reason,
                "blurred (sharpness below --blur-ratio x local median)" if reason == "blurred" else "",
            )

        # ---- pass 2: decode the selected images and write
        prepare_output(out, cfg.overwrite)
        from simgen.data.writer import SceneWriter

        sel_c = [int(color.ordinals[idx[j]]) for j in kept]
        sel_d = [int(depth.ordinals[pair[idx[j]]]) for j in kept]
        registration = "copied"
        writer = SceneWriter(
            out,
            cam_c.K,
            categories=[],
            depth_unit_scale=0.001,
            extra_meta={
                "source": {
                    "dataset": "rosbag",
                    "path": str(bag.resolve()),
                    "topics": {
                        "color": color_topic,
                        "depth": depth_topic,
                        "color_info": c_info,
                        "depth_info": d_info,
                    },
                    "world_frame": world,
                    "camera_frame": color.frame_id,
                    "depth_frame": depth.frame_id,
                    "distortion": {"color": cam_c.model, "depth": cam_d.model},
                    "stamps": [format_stamp(color.stamps[idx[j]]) for j in kept],
                    "depth_stamps": [format_stamp(depth.stamps[pair[idx[j]]]) for j in kept],
                    "config": asdict(cfg),
                }
            },
        )
        map_c = undistort_map(cam_c) if cam_c.distorted else None
        map_d = undistort_map(cam_d) if cam_d.distorted else None
        names: list[str] = []
        for k, (rgb_msg, d_msg) in enumerate(
            tqdm(
                _selected_messages(reader, color, depth, sel_c, sel_d),
                total=len(kept),
                desc="import rosbag",
                unit="frame",
                disable=cfg.quiet or None,
            )
        ):
            j = kept[k]
            c_where = f"{color_topic} at stamp {format_stamp(color.stamps[idx[j]])}"
            d_where = f"{depth_topic} at stamp {format_stamp(depth.stamps[pair[idx[j]]])}"
            if _stamp(rgb_msg) != color.stamps[idx[j]] or _stamp(d_msg) != depth.stamps[pair[idx[j]]]:
                # Messages are found again by their position in the topic; a storage that returned
                # them in another order the second time must not pair the wrong images silently.
                raise DatasetImportError(
                    f"{c_where}: the bag returned its messages in another order on the second read"
                )
            rgb = decode_color(rgb_msg, color.msgtype, c_where)
            dep = decode_depth(d_msg, depth.msgtype, d_where, cfg.depth_scale)
            for arr, st, where in ((rgb, color, c_where), (dep, depth, d_where)):
                if (arr.shape[1], arr.shape[0]) != st.size:
                    raise DatasetImportError(
                        f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, the topic's first was {st.size[0]}x{st.size[1]}"
                    )
            if map_c is not None:
                rgb = undistort_color(rgb, map_c)
            if map_d is not None:
                dep = undistort_depth(dep, map_d)
            T_cd = np.linalg.inv(T_wc[j]) @ T_wd[j]
            if not (_is_identity(T_cd) and cam_d.K == cam_c.K):
                dep = reproject_depth(dep, cam_d.K, cam_c.K, T_cd)
                registration = "reprojected"
            names.append(writer.add_frame(rgb, dep, None, [], opencv_to_opengl(T_wc[j]), name=f"{k:05d}"))
        if len(names) != len(kept):
            raise DatasetImportError(
                f"{bag}: {len(kept) - len(names)} selected message(s) were not found on the second read of the bag"
            )
    finally:
        reader.close()

    test = [n for i, n in enumerate(names) if cfg.test_every and i % cfg.test_every == 0]
    writer.extra_meta["source"]["depth_registration"] = registration
    writer.finish(
        train=[n for n in names if n not in set(test)] if cfg.test_every else None,
        test=test if cfg.test_every else None,
    )
    report = RosbagReport(
        out=out,
        frames=len(names),
        test_frames=len(test),
        color_images=len(color.stamps),
        skipped=skipped,
        skipped_examples=examples,
        warnings=warnings,
        topics={"color": color_topic, "depth": depth_topic, "color_info": c_info, "depth_info": d_info},
        world_frame=world,
        camera_frame=color.frame_id,
        depth_registration=registration,
    )
    _summary(cfg, report)
    return report


def _summary(cfg: RosbagConfig, r: RosbagReport) -> None:
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cfg.quiet:
        return
    lines = [
        f"wrote {r.frames} frame(s) ({r.test_frames} test) to {r.out} from {r.color_images} colour image(s) "
        f"of {r.topics['color']}",
        f"  depth {r.topics['depth']} ({r.depth_registration}), intrinsics {r.topics['color_info']}, "
        f"poses of {r.camera_frame!r} in {r.world_frame!r}",
    ]
    for reason, n in sorted(r.skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  skipped {n}: {reason}")
    for e in r.skipped_examples[:10]:
        lines.append(f"    - {e}")
    if len(r.skipped_examples) > 10:
        lines.append(f"    ... and {len(r.skipped_examples) - 10} more")
    lines.append("  no panoptic pseudo-labels: run `simgen label OUT` before building (docs/importers.md)")
    print("\n".join(lines), file=sys.stderr)


def _stream(topic: str, msgtype: str, heads: list, warnings: list[str], with_sharpness: bool) -> _Stream:
    """Sort one topic's headers by stamp; refuse mixed frames / sizes, drop repeated stamps."""
    if not heads:
        raise DatasetImportError(f"topic {topic} has no messages")
    heads = sorted(heads, key=lambda h: (h[0], h[1]))
    frames = {h[2] for h in heads}
    if len(frames) > 1:
        raise DatasetImportError(
            f"{topic}: images come in several header.frame_id values ({', '.join(sorted(map(repr, frames)))}); "
            "one camera per topic is expected"
        )
    frame = frames.pop()
    if not frame:
        raise DatasetImportError(
            f"{topic}: images have an empty header.frame_id (stamp {format_stamp(heads[0][0])}): "
            "cannot place them in TF"
        )
    for h in heads:
        if h[3] != heads[0][3]:
            raise DatasetImportError(
                f"{topic} at stamp {format_stamp(h[0])}: image is {h[3][0]}x{h[3][1]}, the first was "
                f"{heads[0][3][0]}x{heads[0][3][1]}"
            )
    stamps = np.array([h[0] for h in heads], dtype=np.int64)
    keep = np.append(True, stamps[1:] != stamps[:-1])
    if not keep.all():
        warnings.append(
            f"{topic}: {int((~keep).sum())} message(s) repeat an earlier header stamp; the first is used"
        )
    heads = [h for h, k in zip(heads, keep, strict=True) if k]
    return _Stream(
        topic=topic,
        msgtype=msgtype,
        stamps=stamps[keep],
        ordinals=np.array([h[1] for h in heads], dtype=np.int64),
        frame_id=frame,
        size=heads[0][3],
        kind=heads[0][4],
        sharpness=np.array([h[5] for h in heads]) if with_sharpness else None,
    )


def _camera(topic: str, infos: dict[str, list[tuple[int, Any]]], stream: _Stream) -> CameraModel:
    """The calibration of ``topic`` for ``stream``: one calibration for the whole bag, matching its images."""
    msgs = infos.get(topic) or []
    if not msgs:
        raise DatasetImportError(f"CameraInfo topic {topic} has no messages")
    cam = camera_from_info(msgs[0][1], topic, format_stamp(msgs[0][0]))
    for stamp, m in msgs[1:]:
        other = camera_from_info(m, topic, format_stamp(stamp))
        if not other.same_calibration(cam):
            raise DatasetImportError(
                f"{topic} at stamp {format_stamp(stamp)}: calibration changed during the bag "
                f"({other.K} vs {cam.K} at {format_stamp(msgs[0][0])}); import the parts separately"
            )
    if (cam.K.width, cam.K.height) != stream.size:
        raise DatasetImportError(
            f"{topic}: CameraInfo is {cam.K.width}x{cam.K.height} but the images of {stream.topic} are "
            f"{stream.size[0]}x{stream.size[1]}"
        )
    return cam


def _pair(color: np.ndarray, depth: np.ndarray, tol_ns: int) -> np.ndarray:
    """``(Nc,)`` index of the depth stamp nearest to each colour stamp within ``tol_ns``, else -1."""
    j = (
        np.clip(np.searchsorted(depth, color), 1, len(depth) - 1)
        if len(depth) > 1
        else np.zeros(len(color), int)
    )
    if len(depth) > 1:
        left = np.abs(color - depth[j - 1]) <= np.abs(depth[j] - color)
        j = np.where(left, j - 1, j)
    ok = np.abs(depth[j] - color) <= tol_ns
    return np.where(ok, j, -1)


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    j = _pair(a, b, 2**62)
    i = int(np.argmin(np.abs(b[j] - a)))
    return int(a[i]), int(b[j[i]])


def _tf_range_text(tf: TFTree, world: str, frame: str) -> str:
    lo, hi, edge = tf.time_range(world, frame)
    if edge is None:
        return f"TF from {world!r} to {frame!r} is static"
    return (
        f"TF from {world!r} to {frame!r} is known from {format_stamp(lo)} to {format_stamp(hi)} "
        f"(limited by {edge.describe()})"
    )


def _is_identity(T: np.ndarray, tol_m: float = 1e-6, tol_rad: float = 1e-6) -> bool:
    cos = (np.trace(T[:3, :3]) - 1.0) / 2.0
    return bool(np.linalg.norm(T[:3, 3]) <= tol_m and cos >= np.cos(tol_rad))


def _selected_messages(
    reader, color: _Stream, depth: _Stream, sel_c: list[int], sel_d: list[int]
) -> Iterator[tuple[Any, Any]]:
    """Yield the (colour, depth) message pairs of the selected frames, in selection order.

    Messages are matched by their position in their topic's bag order (as counted in pass 1); a
    pair is yielded once both halves were read and every earlier pair was yielded, so only the
    few images between the two halves of a pair are held in memory.
    """
    want_c: dict[int, list[int]] = {}
    want_d: dict[int, list[int]] = {}
    for k, (c, d) in enumerate(zip(sel_c, sel_d, strict=True)):
        want_c.setdefault(c, []).append(k)
        want_d.setdefault(d, []).append(k)
    got_c: dict[int, Any] = {}
    got_d: dict[int, Any] = {}
    n_c = n_d = 0
    nxt = 0
    conns = [c for c in reader.connections if c.topic in (color.topic, depth.topic)]
    for conn, _, raw in reader.messages(connections=conns):
        if conn.topic == color.topic:
            for k in want_c.get(n_c, ()):
                got_c[k] = reader.deserialize(raw, conn.msgtype)
            n_c += 1
        else:
            for k in want_d.get(n_d, ()):
                got_d[k] = reader.deserialize(raw, conn.msgtype)
            n_d += 1
        while nxt in got_c and nxt in got_d:
            yield got_c.pop(nxt), got_d.pop(nxt)
            nxt += 1
        if nxt == len(sel_c):
            return
