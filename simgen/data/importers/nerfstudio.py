"""nerfstudio ``ns-process-data`` folders with depth -> scene format (``simgen import nerfstudio SRC OUT``).

Source layout (what ``ns-process-data polycam --use-depth`` / ``record3d`` and nerfstudio's data
parser use)::

    transforms.json
      fl_x, fl_y, cx, cy, w, h      pinhole intrinsics (pixels; may instead be given per frame)
      camera_model                  OPENCV / PINHOLE / SIMPLE_PINHOLE (others are refused)
      k1, k2, k3, k4, p1, p2        distortion: must be absent or 0 (the scene format is pinhole)
      depth_unit_scale_factor       metres per depth unit (nerfstudio's default 1e-3: millimetres)
      frames[]:
        file_path                   RGB image, relative to the folder
        depth_file_path             16-bit depth PNG (required here: simgen fuses depth)
        transform_matrix            camera-to-world 4x4, OpenGL camera axes (x right, y up, z back)
        fl_x ... h                  optional per-frame intrinsics (Polycam writes them)
    images/frame_00001.jpg ...
    depth/frame_00001.png ...       may be smaller than the images (same aspect)

Frames are taken in the order of ``transforms.json`` (capture order). The output camera is the
depth map's: when the depth is smaller than the RGB (phones record 256x192 depth), the RGB is
area-averaged down to it and the intrinsics scaled (``rescaled``). No labels are written: run
``simgen label`` next (docs/label.md).

The writer shared with :mod:`.record3d` lives here too (:func:`write_unlabelled_scene`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data import io
from simgen.data.camera import Intrinsics, is_rigid
from simgen.data.importers.common import DatasetImportError, prepare_output, rescaled, same_aspect
from simgen.data.scene import TRANSFORMS

PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")


@dataclass
class PhoneImportConfig:
    """Settings shared by the phone-capture importers (each becomes a ``--flag``)."""

    every: int = field(default=1, metadata={"help": "keep every N-th frame"})
    max_frames: int = field(default=0, metadata={"help": "stop after this many written frames (0 = all)"})
    test_every: int = field(
        default=0,
        metadata={"help": "put every K-th written frame (0, K, 2K, ...) in the test split (0 = none)"},
    )
    max_depth_m: float = field(
        default=0.0, metadata={"help": "depth beyond this (metres) is written as invalid (0 = keep all)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty OUT folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar or summary"})

    def __post_init__(self) -> None:
        for name, low in (("every", 1), ("max_frames", 0), ("test_every", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_depth_m < 0:
            raise ValueError(f"max_depth_m must be >= 0, got {self.max_depth_m}")


@dataclass
class NerfstudioConfig(PhoneImportConfig):
    """``simgen import nerfstudio`` settings."""

    depth_scale: float = field(
        default=0.0,
        metadata={
            "help": "depth PNG units per metre (0: from transforms.json's depth_unit_scale_factor, else 1000)"
        },
    )


@dataclass
class PhoneFrame:
    """One frame on the output camera, ready to write.

    Attributes:
        rgb: ``(H, W, 3) uint8``.
        depth_m: ``(H, W) float32`` metres, 0 = invalid.
        c2w_gl: ``(4, 4)`` camera-to-world, OpenGL camera axes, metres.
        source: the source file(s) it came from (for the record and error messages).
    """

    rgb: np.ndarray
    depth_m: np.ndarray
    c2w_gl: np.ndarray
    source: str


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(h, w, 3) uint8`` -> ``(height, width, 3)``, area-averaged (PIL's box filter) when shrinking."""
    if rgb.shape[:2] == (height, width):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BOX))


def _write_frames(
    out: Path,
    frames: Iterable[PhoneFrame],
    n_frames: int,
    cfg: PhoneImportConfig,
    source: dict[str, Any],
    written: list[dict[str, Any]],
) -> None:
    """Write each frame's RGB and depth PNGs; appends its transforms.json entry to ``written``."""
    from tqdm import tqdm

    for i, fr in enumerate(tqdm(frames, total=n_frames, desc=f"import {source['format']}", unit="frame",
                                disable=cfg.quiet or None)):  # fmt: skip
        depth = fr.depth_m
        if cfg.max_depth_m > 0:
            depth = np.where(depth <= cfg.max_depth_m, depth, 0.0).astype(np.float32)
        if depth.max(initial=0.0) * 1000.0 > 65535:
            depth = np.where(depth * 1000.0 <= 65535, depth, 0.0).astype(np.float32)  # beyond 16-bit mm
        name = f"{i:05d}"
        io.write_image(out / "rgb" / f"{name}.png", fr.rgb)
        io.write_depth(out / "depth" / f"{name}.png", depth, 0.001)
        written.append(
            {
                "file_path": f"rgb/{name}.png",
                "depth_file_path": f"depth/{name}.png",
                "transform_matrix": np.asarray(fr.c2w_gl, dtype=float).round(8).tolist(),
                "source": fr.source,
            }
        )


def write_unlabelled_scene(
    out: Path,
    K: Intrinsics,
    frames: Iterable[PhoneFrame],
    n_frames: int,
    cfg: PhoneImportConfig,
    source: dict[str, Any],
) -> Path:
    """Write posed RGB-D frames as a scene without pseudo-labels (no ``categories``, no panoptic).

    Such a scene is what ``simgen label`` takes; ``simgen validate`` reports the missing labels until
    then. Images are written one by one (atomically), ``transforms.json`` last, so an interrupted
    import is never mistaken for a scene.
    """
    prepare_output(out, cfg.overwrite)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    try:
        _write_frames(out, frames, n_frames, cfg, source, written)
    except BaseException:
        # A frame failed to decode half way: take back what this run wrote, leave the rest alone.
        for f in written:
            for key in ("file_path", "depth_file_path"):
                (out / f[key]).unlink(missing_ok=True)
        for sub in ("rgb", "depth"):
            if (out / sub).is_dir() and not any((out / sub).iterdir()):
                (out / sub).rmdir()
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    if not written:
        raise DatasetImportError(f"{source['path']}: no frame to import")
    names = [f["file_path"] for f in written]
    meta: dict[str, Any] = {
        "fl_x": K.fx,
        "fl_y": K.fy,
        "cx": K.cx,
        "cy": K.cy,
        "w": K.width,
        "h": K.height,
        "depth_unit_scale_factor": 0.001,
        "categories": [],  # no labels yet: simgen label writes them
        "source": source,
    }
    if cfg.test_every:
        test = names[:: cfg.test_every]
        meta["train_filenames"] = [n for n in names if n not in set(test)]
        meta["test_filenames"] = test
    meta["frames"] = written
    io.write_json(out / TRANSFORMS, meta)
    if not cfg.quiet:
        print(
            f"wrote {len(written)} frame(s) ({K.width}x{K.height}) to {out}; no pseudo-labels yet: "
            f"run 'simgen label {out}'",
            file=sys.stderr,
        )
    return out


def phone_indices(n: int, cfg: PhoneImportConfig) -> list[int]:
    idx = list(range(0, n, cfg.every))
    return idx[: cfg.max_frames] if cfg.max_frames else idx


# ----------------------------------------------------------------------------- nerfstudio


def _intrinsics(d: dict[str, Any], base: dict[str, Any], where: str) -> Intrinsics:
    def get(k: str) -> Any:
        return d.get(k, base.get(k))

    try:
        fx = float(get("fl_x"))
        fy = float(get("fl_y") if get("fl_y") is not None else fx)
        K = Intrinsics(fx, fy, float(get("cx")), float(get("cy")), int(get("w")), int(get("h")))
    except (TypeError, ValueError):
        raise DatasetImportError(
            f"{where}: intrinsics fl_x, fl_y, cx, cy, w, h missing or not numbers"
        ) from None
    if not (K.fx > 0 and K.fy > 0 and K.width > 0 and K.height > 0):
        raise DatasetImportError(f"{where}: invalid intrinsics {K}")
    model = str(get("camera_model") or "OPENCV").upper()
    if model not in PINHOLE_MODELS:
        raise DatasetImportError(
            f"{where}: camera_model {model} is not a pinhole model ({', '.join(PINHOLE_MODELS)}); undistort first"
        )
    bad = {k: get(k) for k in DISTORTION if get(k) not in (None, 0, 0.0)}
    if bad:
        raise DatasetImportError(
            f"{where}: non-zero distortion {bad}: the scene format is pinhole; undistort first"
        )
    return K


def read_nerfstudio(
    src: str | Path, cfg: NerfstudioConfig
) -> tuple[Intrinsics, list[Callable[[], PhoneFrame]], dict]:
    """Index an ``ns-process-data`` folder; returns the output camera and one loader per kept frame.

    Raises:
        DatasetImportError: naming the file and frame (missing depth, distortion, bad pose, ...).
    """
    root = Path(src)
    tpath = root / TRANSFORMS if root.is_dir() else root
    root = tpath.parent
    try:
        meta = json.loads(tpath.read_text())
    except FileNotFoundError:
        raise DatasetImportError(f"{tpath}: missing (not an ns-process-data folder)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetImportError(f"{tpath}: unreadable ({e})") from None
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetImportError(f"{tpath}: no frames")
    scale = cfg.depth_scale or (
        1.0 / float(meta["depth_unit_scale_factor"]) if "depth_unit_scale_factor" in meta else 1000.0
    )
    problems: list[str] = []
    loaders: list[Callable[[], PhoneFrame]] = []
    out_K: Intrinsics | None = None
    for i in phone_indices(len(frames), cfg):
        f = frames[i]
        where = f"{tpath} (frames[{i}])"
        if not isinstance(f, dict) or "file_path" not in f:
            problems.append(f"{where}: no file_path")
            continue
        if not f.get("depth_file_path"):
            problems.append(
                f"{where}: no depth_file_path (simgen needs depth: e.g. ns-process-data polycam --use-depth)"
            )
            continue
        try:
            K = _intrinsics(f, meta, where)
            c2w = np.asarray(f["transform_matrix"], dtype=np.float64)
        except DatasetImportError as e:
            problems.append(str(e))
            continue
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: transform_matrix missing or not numbers")
            continue
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        if c2w.shape != (4, 4) or not is_rigid(c2w):
            problems.append(f"{where}: transform_matrix is not a rigid 4x4 (or 3x4) transform")
            continue
        rgb_path, depth_path = root / str(f["file_path"]), root / str(f["depth_file_path"])
        for p in (rgb_path, depth_path):
            if not p.is_file():
                problems.append(f"{p}: missing ({where})")
        if not (rgb_path.is_file() and depth_path.is_file()):
            continue
        rgb_size, depth_size = io.image_size(rgb_path), io.image_size(depth_path)
        if rgb_size != (K.width, K.height):
            problems.append(
                f"{rgb_path}: size {rgb_size[0]}x{rgb_size[1]}, transforms.json says {K.width}x{K.height}"
            )
            continue
        if not same_aspect(depth_size, rgb_size):
            problems.append(
                f"{depth_path}: {depth_size[0]}x{depth_size[1]} has not the aspect of the RGB {rgb_size[0]}x{rgb_size[1]}"
            )
            continue
        fK = rescaled(K, *depth_size) if depth_size != rgb_size else K
        if out_K is None:
            out_K = fK
        elif not np.allclose([fK.fx, fK.fy, fK.cx, fK.cy, fK.width, fK.height],
                             [out_K.fx, out_K.fy, out_K.cx, out_K.cy, out_K.width, out_K.height], rtol=1e-6):  # fmt: skip
            problems.append(
                f"{where}: intrinsics differ from the first frame's ({fK} vs {out_K}); one camera per scene"
            )
            continue

        def load(rgb_path=rgb_path, depth_path=depth_path, c2w=c2w, size=depth_size) -> PhoneFrame:
            try:
                rgb = resize_rgb(io.read_rgb(rgb_path), *size)
                depth = io.read_depth(depth_path, 1.0 / scale)
            except (OSError, ValueError) as e:
                raise DatasetImportError(f"{rgb_path} / {depth_path}: {e}") from None
            return PhoneFrame(rgb, depth, c2w, str(rgb_path.relative_to(root)))

        loaders.append(load)
    if problems:
        raise DatasetImportError(f"{tpath}: cannot import", problems)
    assert out_K is not None
    return (
        out_K,
        loaders,
        {"format": "nerfstudio", "path": str(root.resolve()), "depth_units_per_metre": scale},
    )


def import_nerfstudio(src: str | Path, out: str | Path, cfg: NerfstudioConfig | None = None) -> Path:
    """Import an ``ns-process-data`` folder (with depth) ``src`` as an unlabelled scene under ``out``."""
    cfg = cfg or NerfstudioConfig()
    K, loaders, source = read_nerfstudio(src, cfg)
    return write_unlabelled_scene(Path(out), K, (ld() for ld in loaders), len(loaders), cfg, source)
