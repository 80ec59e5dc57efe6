"""Image and file I/O shared by every stage.

Conventions (the scene-format contract, see docs/scene-format.md):

* RGB: ``(H, W, 3) uint8``.
* Depth: 16-bit PNG, stored value ``d`` means ``d * depth_unit_scale_factor`` metres; 0 is invalid.
  In memory depth is ``(H, W) float32`` metres with 0 for invalid.
* Panoptic: RGB PNG, segment id ``R + 256 * G + 256**2 * B`` (COCO panoptic), 0 = void.
  In memory ``(H, W) int32``.

All writers are atomic: they write to a temporary file in the destination folder and rename it,
so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PathLike = str | os.PathLike[str]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colour ``(H, W, 3) uint8`` -> segment ids ``(H, W) int32``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids ``(H, W)`` (0 <= id < 2**24) -> COCO panoptic colour ``(H, W, 3) uint8``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("panoptic ids must lie in [0, 2**24)")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // (256 * 256)
    return out


def _umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which is not thread-safe later on.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 & ~umask).
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_image(path: PathLike, array: np.ndarray) -> None:
    """Write an 8-bit RGB/gray or 16-bit gray image; format from the file suffix."""
    array = np.asarray(array)
    fmt = _pil_format(path)
    # Fast zlib level: PNG encoding dominated scene writing at the default level 6, for ~10 % larger files.
    opts = {"compress_level": 1} if fmt == "PNG" else {"quality": 95}
    image = Image.fromarray(array if array.dtype == np.uint16 else array.astype(np.uint8))
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **opts)


def _pil_format(path: PathLike) -> str:
    ext = Path(path).suffix.lower()
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext, "PNG")


def write_depth(path: PathLike, depth_m: np.ndarray, unit_scale: float = 0.001) -> None:
    """Write metric depth ``(H, W) float`` as a 16-bit PNG; non-finite or <= 0 becomes 0 (invalid)."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    q = np.where(np.isfinite(depth_m) & (depth_m > 0), np.round(depth_m / unit_scale), 0)
    write_image(path, np.clip(q, 0, 65535).astype(np.uint16))


def write_panoptic(path: PathLike, ids: np.ndarray) -> None:
    write_image(path, id_to_rgb(ids))


class ImageError(ValueError):
    """An image file that cannot be opened or decoded (truncated, corrupt, not an image, wrong mode).

    ``str(e)`` is ``"<path>: <reason>"`` (``"<path> (frame <i>): <reason>"`` when read as a scene frame);
    ``reason`` alone is kept for callers that print the path
    themselves (the validator's problems). A ValueError, so every stage that reports bad input as
    ``error: ...`` reports this too instead of a traceback.
    """

    def __init__(self, path: PathLike, reason: str, frame: int | None = None):
        self.path = Path(path)
        self.reason = reason
        self.frame = frame
        where = str(path) if frame is None else f"{path} (frame {frame})"
        super().__init__(f"{where}: {reason}")


@contextlib.contextmanager
def _decoded(path: PathLike) -> Iterator[Image.Image]:
    """Open ``path`` and decode every pixel now, turning any decoder failure into :class:`ImageError`.

    Pillow decodes lazily: a truncated PNG opens fine and fails later inside ``np.asarray`` with a bare
    ``OSError: image file is truncated`` that names no file. Decoding inside this block ties the error to
    the path. Pillow raises many types for corrupt data (OSError, SyntaxError, ValueError, zlib.error,
    struct.error, EOFError, DecompressionBombError ...), so everything but MemoryError is converted.
    """
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(path, f"not a readable image ({_reason(e)})") from e
    with im:
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as e:
            raise ImageError(path, f"corrupt or truncated image ({_reason(e)})") from e
        yield im


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    # Pillow's messages sometimes repeat the path ("cannot identify image file '/x/y.png'"): drop it.
    text = re.sub(r"\s*'[^']*'$", "", text)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def verify_image(path: PathLike) -> tuple[int, int]:
    """Check an image's integrity without keeping pixels: header, every PNG chunk's CRC (Pillow's
    ``verify``), then a full decode. Returns ``(width, height)``; raises :class:`ImageError`.

    The CRC pass catches flipped bytes that still decode (a PNG's pixels carry no checksum of their own
    Pillow looks at); the decode catches truncation and broken compressed data.
    """
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(path, f"not a readable image ({_reason(e)})") from e
    try:
        with im:
            fmt = im.format
            im.verify()
        # verify() stops at IEND without reading its CRC, and a PNG cut inside that last chunk decodes
        # completely: only the fixed 12-byte IEND chunk at the end shows the file is whole.
        if fmt == "PNG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 12))
                if f.read() != _PNG_IEND:
                    raise ImageError(path, "truncated or trailing data (the file does not end with IEND)")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except MemoryError:
        raise
    except Exception as e:
        raise ImageError(path, f"corrupt or truncated image ({_reason(e)})") from e
    with _decoded(path) as im:
        return im.size


def read_rgb(path: PathLike) -> np.ndarray:
    """``(H, W, 3) uint8``; raises :class:`ImageError` naming the file if it cannot be decoded."""
    with _decoded(path) as im:
        return np.asarray(im.convert("RGB"))


def read_depth(path: PathLike, unit_scale: float = 0.001) -> np.ndarray:
    """16-bit PNG -> ``(H, W) float32`` metres (0 = invalid). Raises :class:`ImageError` if not 16-bit
    or not decodable."""
    with _decoded(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ImageError(path, f"depth must be a 16-bit PNG, got PIL mode {im.mode!r}")
        arr = np.asarray(im)
    return arr.astype(np.float32) * np.float32(unit_scale)


def read_panoptic(path: PathLike) -> np.ndarray:
    """COCO panoptic RGB PNG -> ``(H, W) int32`` ids; raises :class:`ImageError` (not RGB, undecodable)."""
    with _decoded(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            raise ImageError(path, f"panoptic PNG must be RGB (COCO id encoding), got PIL mode {im.mode!r}")
        return rgb_to_id(np.asarray(im))


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) read from the header only."""
    with Image.open(path) as im:
        return im.size
