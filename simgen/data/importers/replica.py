"""Semantic-NeRF's Replica renders -> scene format (``simgen import replica SRC OUT``).

Source layout (e.g. ``Replica_Dataset/room_0/Sequence_1/``)::

    traj_w_c.txt                              one camera-to-world per line: 16 numbers, a row-major 4x4,
                                              OpenCV camera axes (x right, y down, z forward)
    rgb/rgb_N.png                             colour, N = 0, 1, ... (sorted numerically, not as text)
    depth/depth_N.png                         16-bit z-depth, 1/1000 m (--depth-scale)
    semantic_class/semantic_class_N.png       class id per pixel (8- or 16-bit), 0 = void   (optional)
    semantic_instance/semantic_instance_N.png instance (object) id per pixel                (optional)

Line N of ``traj_w_c.txt`` is the pose of frame N. The camera is a pinhole with a 90 degree
horizontal field of view (``--hfov``), square pixels, principal point at the image centre:
``fx = fy = W / 2 / tan(hfov / 2)``, ``cx = W / 2``, ``cy = H / 2`` in simgen's convention (pixel
corners at integers; Semantic-NeRF writes the same centre as ``(W - 1) / 2`` with pixel centres at
integers).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simgen.data import io
from simgen.data.camera import Intrinsics
from simgen.data.importers.common import (
    DEFAULT_STUFF_NAMES,
    DEPTH_MODES,
    ID_MODES,
    DatasetImportError,
    FrameData,
    ImportConfig,
    ImportReport,
    Source,
    SourceFrame,
    check_image,
    import_scene,
    nearest_map,
    read_depth_m,
    read_ids,
    rescaled,
)
from simgen.data.scene import Category

TRAJ = "traj_w_c.txt"
FOLDERS = {  # key -> (folder, file prefix)
    "rgb": ("rgb", "rgb_"),
    "depth": ("depth", "depth_"),
    "class": ("semantic_class", "semantic_class_"),
    "instance": ("semantic_instance", "semantic_instance_"),
}


@dataclass
class ReplicaConfig(ImportConfig):
    """``simgen import replica`` settings."""

    classes: str | None = field(
        default=None,
        metadata={
            "help": 'class names: a JSON list of {"id", "name", "isthing"} (isthing optional) or Replica\'s '
            "info_semantic.json; without it classes are named class_<id> and all are things unless --stuff"
        },
    )
    hfov: float = field(default=90.0, metadata={"help": "horizontal field of view of the renders in degrees"})


def read_class_table(path: str | Path) -> dict[int, Category]:
    """Class table from ``--classes``: a list of ``{"id", "name", "isthing"?}`` or ``{"classes": [...]}``.

    Without ``isthing`` a class is stuff when its lower-cased name is in ``DEFAULT_STUFF_NAMES``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetImportError(f"{path}: unreadable class list ({e})") from None
    items = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise DatasetImportError(
            f"{path}: expected a JSON list of classes or an object with a 'classes' list"
        )
    table: dict[int, Category] = {}
    problems = []
    for j, c in enumerate(items):
        try:
            cid, name = int(c["id"]), str(c["name"])
            isthing = (
                bool(int(c["isthing"])) if "isthing" in c else name.strip().lower() not in DEFAULT_STUFF_NAMES
            )
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{path}: classes[{j}] needs id and name ({e!r})")
            continue
        if cid in table:
            problems.append(f"{path}: classes[{j}]: duplicate id {cid}")
        if cid > 0:  # 0 is void
            table[cid] = Category(cid, name, isthing)
    if problems:
        raise DatasetImportError(f"{path}: invalid class list", problems)
    return table


def _numbered(folder: Path, prefix: str) -> dict[int, Path]:
    """``{N: path}`` of ``folder/<prefix>N.png``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.png$")
    out = {}
    for p in folder.iterdir():
        m = pat.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def read_trajectory(path: Path) -> np.ndarray:
    """``(N, 4, 4)`` float64 poses of ``traj_w_c.txt``; errors name the file and line."""
    poses = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetImportError(f"{path}: unreadable ({e})") from None
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            vals = [float(x) for x in line.replace(",", " ").split()]
        except ValueError:
            raise DatasetImportError(f"{path}:{k}: not numbers: {line[:60]!r}") from None
        if len(vals) != 16:
            raise DatasetImportError(f"{path}:{k}: expected 16 numbers (a flattened 4x4), got {len(vals)}")
        poses.append(np.array(vals).reshape(4, 4))
    if not poses:
        raise DatasetImportError(f"{path}: no poses")
    return np.stack(poses)


def read_source(src: str | Path, cfg: ReplicaConfig) -> Source:
    """Index a Semantic-NeRF Replica sequence folder; raises DatasetImportError naming missing files."""
    root = Path(src)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: source folder does not exist")
    problems = []
    for need in (TRAJ, "rgb", "depth"):
        if not (root / need).exists():
            problems.append(f"{root / need}: missing")
    if problems:
        raise DatasetImportError(f"{root}: not a Semantic-NeRF Replica sequence", problems)
    poses = read_trajectory(root / TRAJ)
    files = {k: _numbered(root / d, pre) for k, (d, pre) in FOLDERS.items() if (root / d).is_dir()}
    numbers = sorted(files["rgb"])  # numeric, so rgb_10 follows rgb_9
    if not numbers:
        raise DatasetImportError(f"{root / 'rgb'}: no rgb_N.png files")
    for k, found in files.items():
        folder, prefix = FOLDERS[k]
        for n in numbers:
            if n not in found:
                problems.append(f"{root / folder / f'{prefix}{n}.png'}: missing (rgb/rgb_{n}.png exists)")
        for n in sorted(set(found) - set(numbers))[:5]:
            problems.append(f"{found[n]}: no matching rgb/rgb_{n}.png")
    if len(poses) != len(numbers):
        problems.append(f"{root / TRAJ}: {len(poses)} poses but rgb/ has {len(numbers)} images")
    elif numbers[-1] >= len(poses):
        problems.append(
            f"{root / TRAJ}: rgb/rgb_{numbers[-1]}.png has no pose line (frame numbers must be 0..N-1)"
        )
    if problems:
        raise DatasetImportError(f"{root}: inconsistent Replica sequence", problems)

    width, height = io.image_size(files["rgb"][numbers[0]])
    f = width / 2.0 / math.tan(math.radians(cfg.hfov) / 2.0)
    K = Intrinsics(f, f, width / 2.0, height / 2.0, width, height)
    frames = [SourceFrame(n, f"rgb_{n}", poses[n], {k: files[k][n] for k in files}) for n in numbers]
    table = read_class_table(cfg.classes) if cfg.classes else {}

    def check(fr: SourceFrame) -> list[str]:
        out = check_image(fr.paths["rgb"], "RGB", (width, height))
        out += check_image(fr.paths["depth"], "depth", (width, height), DEPTH_MODES)
        for k in ("class", "instance"):
            if k in fr.paths:
                out += check_image(fr.paths[k], FOLDERS[k][0], (width, height), ID_MODES)
        return out

    def to_output(ids: np.ndarray) -> np.ndarray:
        if ids.shape == (height, width):
            return ids
        return nearest_map(ids, rescaled(K, ids.shape[1], ids.shape[0]), K)

    def load_classes(fr: SourceFrame) -> np.ndarray:
        return read_ids(fr.paths["class"])

    def load(fr: SourceFrame) -> FrameData:
        rgb = io.read_rgb(fr.paths["rgb"])
        depth = read_depth_m(fr.paths["depth"], cfg.depth_scale)
        classes = read_ids(fr.paths["class"]) if "class" in fr.paths else None
        instances = read_ids(fr.paths["instance"]) if "instance" in fr.paths else None
        return FrameData(rgb, depth, classes, instances)

    return Source(
        dataset="replica",
        root=root.resolve(),
        frames=frames,
        intrinsics=K,
        class_table=table,
        has_labels="class" in files,
        has_instances="instance" in files,
        load=load,
        load_classes=load_classes,
        check=check,
        to_output=to_output,
        void_instance=None,
        meta={"hfov_deg": cfg.hfov},
    )


def import_replica(src: str | Path, out: str | Path, cfg: ReplicaConfig | None = None) -> ImportReport:
    """Import a Semantic-NeRF Replica sequence ``src`` as a scene under ``out``."""
    cfg = cfg or ReplicaConfig()
    return import_scene(read_source(src, cfg), out, cfg)
