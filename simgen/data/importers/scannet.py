"""A ScanNet scene exported by its SensReader -> scene format (``simgen import scannet SRC OUT``).

Source layout (e.g. ``scans/scene0000_00/``, with the label zips unpacked in place)::

    color/N.jpg                       colour, 1296x968 (any size)
    depth/N.png                       16-bit z-depth in millimetres (--depth-scale), 640x480
    pose/N.txt                        4x4 camera-to-world, OpenCV camera axes; all -inf/NaN where
                                      tracking was lost (those frames are skipped and counted)
    intrinsic/intrinsic_color.txt     4x4 (top-left 3x3 = K of the colour camera)
    intrinsic/intrinsic_depth.txt     4x4 (K of the depth camera)
    label-filt/N.png                  class id per pixel, 0 = unannotated              (optional)
    instance-filt/N.png               instance (object) id per pixel, 0 = unannotated  (optional)

The scene format has one image size per frame, so everything is written on the **depth camera**
(its resolution and ``intrinsic_depth``); depth is copied unchanged. The colour camera shares the
depth camera's pose (ScanNet's depth-to-colour extrinsics are the identity), so colour is mapped onto
the depth camera through the two intrinsic matrices alone: an axis-aligned scale and shift, done by
an antialiased bilinear resize of the matching colour window. Where the depth camera sees slightly
beyond the colour camera (a pixel or two at the border) the colour's edge pixels are repeated.
Label, instance and prediction images are taken to be images of the colour camera at whatever
size they have (the raw ``*_2d-label-filt.zip`` PNGs are at colour resolution; the preprocessed
25k-frame subset is resized to 640x480) and are mapped the same way with nearest-neighbour lookup.

Label ids: the raw ``label-filt`` PNGs hold ScanNet label ids (line numbers of
``scannetv2-labels.combined.tsv``); ``--label-map`` maps them to NYU40 through the TSV's ``nyu40id``
column. Without it the PNGs must already hold NYU40 ids (0..40), as ScanNet's ``2d_helpers`` and the
25k-frame subset write them. ``--label-set scannet20`` keeps only the 20 benchmark classes (others
become void). Intrinsics in the files count pixel centres from 0; simgen counts from the pixel
corner, so ``cx``, ``cy`` gain 0.5.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

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
    same_aspect,
)
from simgen.data.scene import Category

# The NYUv2 40-class label set used by ScanNet (id, name); 0 is void/unannotated.
NYU40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
NYU40 = {i: Category(i, name, name not in DEFAULT_STUFF_NAMES) for i, name in enumerate(NYU40_NAMES, 1)}
TSV = "scannetv2-labels.combined.tsv"
# The 20 classes of ScanNet's semantic benchmark, as NYU40 ids.
SCANNET20_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)


@dataclass
class ScanNetConfig(ImportConfig):
    """``simgen import scannet`` settings."""

    label_map: str | None = field(
        default=None,
        metadata={
            "help": "scannetv2-labels.combined.tsv: map raw ScanNet label ids (column id) to NYU40 (column "
            "nyu40id); needed for the raw label-filt PNGs of the ScanNet release"
        },
    )
    label_set: Literal["nyu40", "scannet20"] = field(
        default="nyu40", metadata={"help": "category set: all 40 NYU40 classes, or the 20 benchmark classes"}
    )


def read_label_map(path: str | Path) -> np.ndarray:
    """``(max raw id + 1,)`` int64 lookup raw ScanNet label id -> NYU40 id (0 where unmapped)."""
    path = Path(path)
    pairs = []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            if not reader.fieldnames or not {"id", "nyu40id"} <= set(reader.fieldnames):
                raise DatasetImportError(f"{path}: needs tab-separated columns 'id' and 'nyu40id'")
            for k, row in enumerate(reader, 2):
                try:
                    pairs.append((int(row["id"]), int(row["nyu40id"] or 0)))
                except ValueError:
                    raise DatasetImportError(f"{path}:{k}: id / nyu40id are not integers") from None
    except OSError as e:
        raise DatasetImportError(f"{path}: unreadable ({e})") from None
    if not pairs:
        raise DatasetImportError(f"{path}: no rows")
    lut = np.zeros(max(p[0] for p in pairs) + 1, dtype=np.int64)
    for raw, nyu in pairs:
        lut[raw] = nyu if 0 <= nyu <= 40 else 0
    return lut


def read_matrix(path: Path, what: str) -> np.ndarray:
    """A 4x4 text matrix (16 whitespace-separated numbers); errors name the file."""
    try:
        vals = [float(x) for x in path.read_text().split()]
    except OSError as e:
        raise DatasetImportError(f"{path}: unreadable {what} ({e})") from None
    except ValueError:
        raise DatasetImportError(f"{path}: {what} is not numbers") from None
    if len(vals) != 16:
        raise DatasetImportError(f"{path}: {what} must be a 4x4 matrix (16 numbers), got {len(vals)}")
    return np.array(vals).reshape(4, 4)


def _intrinsics(path: Path, width: int, height: int) -> Intrinsics:
    M = read_matrix(path, "intrinsic matrix")
    fx, fy, cx, cy = M[0, 0], M[1, 1], M[0, 2], M[1, 2]
    if not (np.all(np.isfinite(M[:3, :3])) and fx > 0 and fy > 0):
        raise DatasetImportError(f"{path}: invalid intrinsics fx={fx} fy={fy}")
    return Intrinsics(float(fx), float(fy), float(cx) + 0.5, float(cy) + 0.5, width, height)


def warp_color(rgb: np.ndarray, K_src: Intrinsics, K_dst: Intrinsics) -> np.ndarray:
    """Colour ``(Hs, Ws, 3)`` uint8 on ``K_src`` -> ``(K_dst.height, K_dst.width, 3)`` uint8 on ``K_dst``.

    Both cameras share centre and axes, so the map is x_src = fx_s / fx_d * (x_dst - cx_d) + cx_s
    (same for y); PIL resamples the source window it spans, antialiased when shrinking.
    """
    x0 = (0 - K_dst.cx) / K_dst.fx * K_src.fx + K_src.cx
    x1 = (K_dst.width - K_dst.cx) / K_dst.fx * K_src.fx + K_src.cx
    y0 = (0 - K_dst.cy) / K_dst.fy * K_src.fy + K_src.cy
    y1 = (K_dst.height - K_dst.cy) / K_dst.fy * K_src.fy + K_src.cy
    h, w = rgb.shape[:2]
    # PIL refuses a box outside the image: pad by repeating the edge far enough.
    pad = max(0, math.ceil(max(-x0, -y0, x1 - w, y1 - h))) + 1
    src = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad > 1 else rgb
    off = pad if pad > 1 else 0
    box = (x0 + off, y0 + off, x1 + off, y1 + off)
    im = Image.fromarray(src).resize((K_dst.width, K_dst.height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(im)


_NUM = re.compile(r"(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def read_source(src: str | Path, cfg: ScanNetConfig) -> Source:
    """Index an exported ScanNet scene; raises DatasetImportError naming missing or bad files."""
    root = Path(src)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: source folder does not exist")
    intr = root / "intrinsic"
    needed = [
        root / "color",
        root / "depth",
        root / "pose",
        intr / "intrinsic_color.txt",
        intr / "intrinsic_depth.txt",
    ]
    problems = [f"{p}: missing" for p in needed if not p.exists()]
    if problems:
        raise DatasetImportError(f"{root}: not an exported ScanNet scene (SensReader layout)", problems)

    colors = {}
    for p in (root / "color").iterdir():
        m = _NUM.match(p.name)
        if m:
            colors[int(m.group(1))] = p
    numbers = sorted(colors)
    if not numbers:
        raise DatasetImportError(f"{root / 'color'}: no N.jpg colour images")
    label_dir, inst_dir = root / "label-filt", root / "instance-filt"
    has_labels, has_instances = label_dir.is_dir(), inst_dir.is_dir()
    frames = []
    for n in numbers:
        paths = {"rgb": colors[n], "depth": root / "depth" / f"{n}.png", "pose": root / "pose" / f"{n}.txt"}
        if has_labels:
            paths["class"] = label_dir / f"{n}.png"
        if has_instances:
            paths["instance"] = inst_dir / f"{n}.png"
        missing = [p for p in paths.values() if not p.is_file()]
        problems += [f"{p}: missing ({colors[n].name} exists)" for p in missing]
        if missing:
            continue
        frames.append(SourceFrame(n, str(n), read_matrix(paths["pose"], "pose"), paths))
    for folder, ext in ((root / "depth", ".png"), (root / "pose", ".txt")):
        extra = sorted(
            p.name for p in folder.glob(f"*{ext}") if p.stem.isdigit() and int(p.stem) not in colors
        )
        if extra:
            problems.append(f"{folder}: {len(extra)} file(s) without a colour image, e.g. {extra[0]}")
    if problems:
        raise DatasetImportError(f"{root}: inconsistent ScanNet export", problems)

    color_size = io.image_size(colors[numbers[0]])
    depth_size = io.image_size(frames[0].paths["depth"])
    K_color = _intrinsics(intr / "intrinsic_color.txt", *color_size)
    K = _intrinsics(intr / "intrinsic_depth.txt", *depth_size)
    warnings = _check_extrinsics(intr)
    lut = read_label_map(cfg.label_map) if cfg.label_map else None
    keep = np.zeros(41, dtype=bool)
    keep[list(SCANNET20_IDS) if cfg.label_set == "scannet20" else list(range(1, 41))] = True
    table = {c: NYU40[c] for c in range(1, 41) if keep[c]}

    def check(fr: SourceFrame) -> list[str]:
        out = check_image(fr.paths["rgb"], "colour", color_size)
        out += check_image(fr.paths["depth"], "depth", depth_size, DEPTH_MODES)
        for k in ("class", "instance"):
            if k in fr.paths:
                bad = check_image(fr.paths[k], k, None, ID_MODES)
                if not bad and not same_aspect(size := io.image_size(fr.paths[k]), color_size):
                    bad.append(
                        f"{fr.paths[k]}: size {size[0]}x{size[1]} is not a resize of the colour images "
                        f"({color_size[0]}x{color_size[1]})"
                    )
                out += bad
        return out

    def to_output(ids: np.ndarray) -> np.ndarray:
        return nearest_map(ids, rescaled(K_color, ids.shape[1], ids.shape[0]), K)

    def load_classes(fr: SourceFrame) -> np.ndarray:
        raw = read_ids(fr.paths["class"])
        if lut is not None:
            nyu = np.where(raw < len(lut), lut[np.minimum(raw, len(lut) - 1)], 0)
        elif raw.max(initial=0) > 40:
            hint = next(
                (str(p / TSV) for p in (root, root.parent, root.parent.parent) if (p / TSV).is_file()), None
            )
            raise DatasetImportError(
                f"{fr.paths['class']}: label id {int(raw.max())} > 40: these look like raw ScanNet label ids; "
                f"pass --label-map {hint or 'scannetv2-labels.combined.tsv'}"
            )
        else:
            nyu = raw
        nyu = np.where(keep[nyu], nyu, 0)
        return to_output(nyu)

    def load(fr: SourceFrame) -> FrameData:
        rgb = warp_color(io.read_rgb(fr.paths["rgb"]), K_color, K)
        depth = read_depth_m(fr.paths["depth"], cfg.depth_scale)
        classes = load_classes(fr) if has_labels else None
        instances = to_output(read_ids(fr.paths["instance"])) if has_instances else None
        return FrameData(rgb, depth, classes, instances)

    return Source(
        dataset="scannet",
        root=root.resolve(),
        frames=frames,
        intrinsics=K,
        class_table=table,
        has_labels=has_labels,
        has_instances=has_instances,
        load=load,
        load_classes=load_classes,
        check=check,
        to_output=to_output,
        void_instance=0,
        meta={"scene": root.name, "label_set": cfg.label_set, "color_intrinsics": K_color.matrix().tolist()},
        warnings=warnings,
    )


def _check_extrinsics(intr: Path) -> list[str]:
    """The colour mapping assumes colour and depth share a pose; say so when the export disagrees."""
    paths = [intr / "extrinsic_color.txt", intr / "extrinsic_depth.txt"]
    if not all(p.is_file() for p in paths):
        return []
    E_c, E_d = (read_matrix(p, "extrinsic matrix") for p in paths)
    rel = (
        np.linalg.solve(E_c, E_d)
        if np.all(np.isfinite(E_c)) and np.all(np.isfinite(E_d))
        else np.full((4, 4), np.nan)
    )
    if np.allclose(rel, np.eye(4), atol=1e-3):
        return []
    return [
        f"{paths[0]} and {paths[1]} differ: colour and labels are mapped onto the depth camera as if they "
        "shared its pose (ScanNet's exports normally have identity extrinsics)"
    ]


def import_scannet(src: str | Path, out: str | Path, cfg: ScanNetConfig | None = None) -> ImportReport:
    """Import an exported ScanNet scene ``src`` as a scene under ``out``."""
    cfg = cfg or ScanNetConfig()
    return import_scene(read_source(src, cfg), out, cfg)
