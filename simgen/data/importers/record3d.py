"""Record3D captures (iPhone / iPad LiDAR) -> scene format (``simgen import record3d SRC OUT``).

Supported layouts (both are the app's ``.r3d`` export; the second is that file unzipped):

* ``capture.r3d``: a zip archive holding
    - ``metadata``: JSON with ``w``, ``h`` (RGB size), ``dw``, ``dh`` (depth size, e.g. 256x192),
      ``K`` (the RGB camera's 3x3 intrinsics, 9 numbers in column-major order), ``poses`` (one
      ``[qx, qy, qz, qw, tx, ty, tz]`` per frame: camera-to-world, ARKit's camera axes = OpenGL's,
      metres), ``fps``;
    - ``rgbd/N.jpg``: colour of frame N (N = 0, 1, ...);
    - ``rgbd/N.depth``: LZFSE-compressed ``float32`` depth in metres, ``dh x dw``, row-major
      (0 / NaN = no depth);
    - ``rgbd/N.conf`` (optional): LZFSE-compressed ``uint8`` ARKit confidence, 0 low, 1 medium, 2 high.
* a folder holding ``metadata`` (or ``metadata.json``) and ``rgbd/`` as above.

Record3D's other export, "EXR + JPG sequence" (``rgb/``, ``depth/N.exr``), is refused with a
message: reading OpenEXR needs a library simgen does not depend on; export the ``.r3d`` instead.
LZFSE decoding needs the ``pyliblzfse`` package (``pip install 'simgen[phone]'``).

The output camera is the depth map's (``dw x dh``): the RGB is area-averaged down to it and
``K`` scaled by ``dw / w``, ``dh / h`` (:func:`.common.rescaled`). Depth with an ARKit confidence
below ``--min-confidence`` is written as invalid. No labels: run ``simgen label`` next.
"""

from __future__ import annotations

import io as _io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics, is_rigid
from simgen.data.importers.common import DatasetImportError, rescaled
from simgen.data.importers.nerfstudio import (
    PhoneFrame,
    PhoneImportConfig,
    phone_indices,
    resize_rgb,
    write_unlabelled_scene,
)


@dataclass
class Record3DConfig(PhoneImportConfig):
    """``simgen import record3d`` settings."""

    min_confidence: int = field(
        default=1,
        metadata={
            "help": "drop depth whose ARKit confidence is lower (0 low, 1 medium, 2 high; 0 keeps all)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_confidence not in (0, 1, 2):
            raise ValueError(f"min_confidence must be 0, 1 or 2, got {self.min_confidence}")


class _Archive:
    """Read members of a ``.r3d`` zip or of an unzipped folder by their archive name."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self.names = set(self.zip.namelist()) if self.zip else None

    def has(self, name: str) -> bool:
        return name in self.names if self.names is not None else (self.path / name).is_file()

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError) as e:
            raise DatasetImportError(f"{self.where(name)}: unreadable ({e})") from None

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.zip is not None else str(self.path / name)


def _lzfse(data: bytes, where: str) -> bytes:
    try:
        import liblzfse
    except ImportError:
        raise DatasetImportError(
            f"{where}: Record3D depth is LZFSE-compressed; install the decoder: pip install 'simgen[phone]' (pyliblzfse)"
        ) from None
    try:
        return liblzfse.decompress(data)
    except Exception as e:  # the binding raises its own error types
        raise DatasetImportError(f"{where}: not LZFSE data ({e})") from None


def quat_pose(q: list[float] | np.ndarray) -> np.ndarray:
    """``[qx, qy, qz, qw, tx, ty, tz]`` (scalar-last quaternion, as Record3D and scipy) -> ``(4, 4)``."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(q, dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q[:4]).as_matrix()
    T[:3, 3] = q[4:7]
    return T


def read_record3d(
    src: str | Path, cfg: Record3DConfig
) -> tuple[Intrinsics, list[Callable[[], PhoneFrame]], dict]:
    """Index a Record3D ``.r3d`` (or unzipped) capture; the output camera and one loader per kept frame."""
    path = Path(src)
    if not path.exists():
        raise DatasetImportError(f"{path}: does not exist")
    if path.is_dir() and (path / "depth").is_dir() and any((path / "depth").glob("*.exr")):
        raise DatasetImportError(
            f"{path / 'depth'}: Record3D's EXR export is not supported (no OpenEXR reader); export the .r3d file"
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DatasetImportError(f"{path}: not a .r3d file (a zip archive with metadata and rgbd/)")
    ar = _Archive(path)
    meta_name = next((n for n in ("metadata", "metadata.json") if ar.has(n)), None)
    if meta_name is None:
        raise DatasetImportError(f"{path}: no 'metadata' (not a Record3D .r3d capture)")
    try:
        meta = json.loads(ar.read(meta_name))
    except json.JSONDecodeError as e:
        raise DatasetImportError(f"{ar.where(meta_name)}: not JSON ({e})") from None
    where = ar.where(meta_name)
    missing = [k for k in ("w", "h", "K", "poses") if k not in meta]
    if missing:
        raise DatasetImportError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        w, h = int(meta["w"]), int(meta["h"])
        dw, dh = int(meta.get("dw", w)), int(meta.get("dh", h))
        Kc = np.asarray(meta["K"], dtype=np.float64)
        poses = np.asarray(meta["poses"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetImportError(f"{where}: w, h, dw, dh, K or poses are not numbers ({e})") from None
    if Kc.size != 9:
        raise DatasetImportError(f"{where}: K must have 9 numbers (3x3, column-major), got {Kc.size}")
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise DatasetImportError(
            f"{where}: poses must be [qx, qy, qz, qw, tx, ty, tz] per frame, got shape {poses.shape}"
        )
    K3 = Kc.reshape(3, 3).T  # stored column-major
    K_rgb = Intrinsics(float(K3[0, 0]), float(K3[1, 1]), float(K3[0, 2]), float(K3[1, 2]), w, h)
    K = rescaled(K_rgb, dw, dh) if (dw, dh) != (w, h) else K_rgb
    problems = []
    loaders: list[Callable[[], PhoneFrame]] = []
    for i in phone_indices(len(poses), cfg):
        rgb_name, depth_name, conf_name = f"rgbd/{i}.jpg", f"rgbd/{i}.depth", f"rgbd/{i}.conf"
        for n in (rgb_name, depth_name):
            if not ar.has(n):
                problems.append(f"{ar.where(n)}: missing (metadata has {len(poses)} poses)")
        norm = np.linalg.norm(poses[i, :4])
        if not np.all(np.isfinite(poses[i])) or abs(norm - 1.0) > 1e-3:
            problems.append(
                f"{where}: poses[{i}] is not a unit quaternion + translation ({poses[i].tolist()})"
            )
            continue
        c2w = quat_pose(poses[i])
        if not is_rigid(c2w):
            problems.append(f"{where}: poses[{i}] is not rigid")
            continue

        def load(i=i, rgb_name=rgb_name, depth_name=depth_name, conf_name=conf_name, c2w=c2w) -> PhoneFrame:
            from PIL import Image

            try:
                with Image.open(_io.BytesIO(ar.read(rgb_name))) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise DatasetImportError(f"{ar.where(rgb_name)}: unreadable JPEG ({e})") from None
            if rgb.shape[:2] != (h, w):
                raise DatasetImportError(
                    f"{ar.where(rgb_name)}: {rgb.shape[1]}x{rgb.shape[0]}, metadata says {w}x{h}"
                )
            raw = _lzfse(ar.read(depth_name), ar.where(depth_name))
            if len(raw) != dw * dh * 4:
                raise DatasetImportError(
                    f"{ar.where(depth_name)}: {len(raw)} bytes, expected {dw}x{dh} float32 = {dw * dh * 4}"
                )
            depth = np.frombuffer(raw, dtype=np.float32).reshape(dh, dw).copy()
            depth[~np.isfinite(depth) | (depth < 0)] = 0.0
            if cfg.min_confidence > 0 and ar.has(conf_name):
                conf_raw = _lzfse(ar.read(conf_name), ar.where(conf_name))
                if len(conf_raw) != dw * dh:
                    raise DatasetImportError(
                        f"{ar.where(conf_name)}: {len(conf_raw)} bytes, expected {dw}x{dh} uint8"
                    )
                conf = np.frombuffer(conf_raw, dtype=np.uint8).reshape(dh, dw)
                depth[conf < cfg.min_confidence] = 0.0
            return PhoneFrame(resize_rgb(rgb, dw, dh), depth, c2w, rgb_name)

        loaders.append(load)
    if problems:
        raise DatasetImportError(f"{path}: cannot import", problems)
    source: dict[str, Any] = {
        "format": "record3d",
        "path": str(path.resolve()),
        "rgb_size": [w, h],
        "depth_size": [dw, dh],
        "fps": meta.get("fps"),
        "min_confidence": cfg.min_confidence,
    }
    return K, loaders, source


def import_record3d(src: str | Path, out: str | Path, cfg: Record3DConfig | None = None) -> Path:
    """Import a Record3D capture ``src`` (``.r3d`` or unzipped) as an unlabelled scene under ``out``."""
    cfg = cfg or Record3DConfig()
    K, loaders, source = read_record3d(src, cfg)
    return write_unlabelled_scene(Path(out), K, (ld() for ld in loaders), len(loaders), cfg, source)
