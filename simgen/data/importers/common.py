"""The importer pipeline shared by every dataset (see docs/importers.md).

A dataset module (:mod:`.replica`, :mod:`.scannet`) turns its folder into a :class:`Source`: the
frame list with source paths and OpenCV camera-to-world poses, the output camera, the dataset's
class table, and a loader giving one frame's images already mapped onto the output camera.
:func:`import_scene` then selects frames (``--every``, invalid poses, ``--max-frames``), converts
the dataset labels into panoptic ids, builds the pseudo-labels (scrambled GT or COCO panoptic
predictions) and writes everything with :class:`simgen.data.writer.SceneWriter`.

Label conventions:

* Class id 0 is void in every supported dataset (Replica renders and NYU40 / ScanNet labels).
* GT segment id (scene-consistent) = ``class * GT_INSTANCE_OFFSET + instance`` for thing classes and
  ``class * GT_INSTANCE_OFFSET`` for stuff classes: one segment per (class, instance) pair for
  things, one per class for stuff, the same id in every frame (the "label * 1000 + instance"
  encoding ScanNet's and Cityscapes' tools use).
* Pseudo-label ids (``--labels-from-gt``) are drawn per frame from a seeded RNG, so the same object
  has unrelated ids in different frames, as the output of a 2D panoptic network would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics, is_rigid, opencv_to_opengl
from simgen.data.importers import coco
from simgen.data.importers.base import DatasetImportError as DatasetImportError  # re-exported for importers
from simgen.data.importers.base import same_aspect as same_aspect
from simgen.data.scene import GT_DIR, GT_JSON, TRANSFORMS, Category, Segment

GT_INSTANCE_OFFSET = 1000
# Class names that are stuff by default: the room's structure, never a separable object. Doors and
# windows stay things, as in ScanNet's instance benchmark; ``--stuff`` overrides the split.
DEFAULT_STUFF_NAMES = frozenset(
    {
        "wall",
        "floor",
        "ceiling",
        "otherstructure",
        "other structure",
        "beam",
        "pillar",
        "column",
        "stair",
        "stairs",
    }
)
MAX_SEGMENT_ID = 256**3 - 1  # COCO panoptic RGB encoding holds 24 bits


@dataclass
class ImportConfig:
    """Settings shared by every importer (each becomes a ``--flag``)."""

    labels: str | None = field(
        default=None,
        metadata={
            "help": "folder of 2D panoptic predictions in COCO panoptic form (panoptic.json + PNGs) "
            "used as the per-frame pseudo-labels"
        },
    )
    labels_from_gt: bool = field(
        default=False,
        metadata={
            "help": "use the dataset's own class + instance labels as pseudo-labels, with per-frame "
            "segment ids scrambled (exactly one of --labels / --labels-from-gt is required)"
        },
    )
    every: int = field(default=1, metadata={"help": "keep every N-th source frame (after numeric sorting)"})
    max_frames: int = field(default=0, metadata={"help": "stop after this many written frames (0 = all)"})
    test_every: int = field(
        default=0,
        metadata={"help": "put every K-th written frame (0, K, 2K, ...) in the test split (0 = none)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the per-frame pseudo-label id scrambling"})
    stuff: list[int] | None = field(
        default=None,
        metadata={
            "help": "dataset class ids that are stuff (one segment per class); overrides the default split"
        },
    )
    depth_scale: float = field(
        default=1000.0, metadata={"help": "source depth PNG units per metre (1000 = millimetres)"}
    )
    gt: bool = field(
        default=True,
        metadata={"help": "write gt/ (scene-consistent GT panoptic) when the dataset has labels"},
    )
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty OUT folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar or summary"})


@dataclass(frozen=True)
class SourceFrame:
    """One source frame before import."""

    number: int  # N in the source file names
    stem: str  # stem of the source RGB file ("rgb_12", "12"): what predictions are matched against
    c2w_cv: np.ndarray  # (4, 4) float64 camera-to-world, OpenCV camera axes; may be non-finite
    paths: dict[str, Path]  # "rgb", "depth" and, when the dataset has them, "class", "instance"


@dataclass
class FrameData:
    """One frame on the output camera (H, W = output size)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, 0 = invalid
    classes: np.ndarray | None  # (H, W) int64 dataset class id, 0 = void
    instances: np.ndarray | None  # (H, W) int64 dataset instance id


@dataclass
class Source:
    """A dataset folder, read by a dataset module; images are loaded on demand."""

    dataset: str  # "replica" or "scannet"
    root: Path
    frames: list[SourceFrame]
    intrinsics: Intrinsics  # of the output camera
    class_table: dict[int, Category]  # known class names/split (may be empty: names unknown)
    has_labels: bool  # class label images exist
    has_instances: bool  # instance images exist
    load: Callable[[SourceFrame], FrameData]
    load_classes: Callable[[SourceFrame], np.ndarray]  # (H, W) int64 class ids on the output camera
    check: Callable[[SourceFrame], list[str]]  # header-only checks of one frame's files
    to_output: Callable[[np.ndarray], np.ndarray]  # RGB-camera id image (any size) -> output camera, nearest
    void_instance: int | None = None  # thing pixels with this instance id are void (ScanNet: 0)
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # found while indexing, printed by import_scene


@dataclass
class ImportReport:
    out: Path
    frames: int
    test_frames: int
    skipped: list[str]  # "<file>: reason" per skipped source frame
    warnings: list[str]
    gt_written: bool
    gt_segments: int
    categories: int


# ----------------------------------------------------------------------------- label conversion


def labels_to_panoptic(
    classes: np.ndarray,
    instances: np.ndarray | None,
    stuff_ids: Sequence[int],
    void_instance: int | None = None,
    where: str = "",
) -> tuple[np.ndarray, dict[int, int]]:
    """Dataset class + instance images -> scene-consistent GT segment ids.

    Args:
        classes: ``(H, W)`` integer class ids, 0 = void.
        instances: ``(H, W)`` integer instance ids, or None (then every thing class is one segment, as stuff).
        stuff_ids: class ids that are stuff (one segment per class); every other class > 0 is a thing.
        void_instance: thing pixels whose instance equals it become void (ScanNet: 0 = unannotated).
        where: file name used in error messages.

    Returns:
        ``(H, W)`` int32 ids (``class * 1000 + instance`` for things, ``class * 1000`` for stuff, 0 void)
        and ``{segment id: class id}`` for the ids present.
    """
    classes = np.asarray(classes, dtype=np.int64)
    valid = classes > 0
    ids = classes * GT_INSTANCE_OFFSET
    if instances is not None:
        instances = np.asarray(instances, dtype=np.int64)
        thing = valid & ~np.isin(classes, np.asarray(list(stuff_ids), dtype=np.int64))
        if void_instance is not None:
            unannotated = thing & (instances == void_instance)
            valid &= ~unannotated
            thing &= ~unannotated
        inst = instances[thing]
        if inst.size and (inst.min() < 0 or inst.max() >= GT_INSTANCE_OFFSET):
            raise DatasetImportError(
                f"{where}: instance id {int(inst.max() if inst.max() >= GT_INSTANCE_OFFSET else inst.min())} "
                f"outside [0, {GT_INSTANCE_OFFSET}) (GT ids are class * {GT_INSTANCE_OFFSET} + instance)"
            )
        ids[thing] += inst
    ids[~valid] = 0
    if ids.size and ids.max() > MAX_SEGMENT_ID:
        raise DatasetImportError(f"{where}: class id {int(classes.max())} too large for 24-bit panoptic ids")
    present = np.unique(ids)
    present = present[present > 0]
    return ids.astype(np.int32), {int(s): int(s) // GT_INSTANCE_OFFSET for s in present}


def scramble_ids(ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, int]]:
    """Give every non-zero id of ``ids`` ``(H, W)`` a fresh random id in [1, 2**24).

    Returns the ``(H, W)`` int32 scrambled image and ``{old id: new id}``. The new ids are distinct
    within the frame; across frames they are unrelated (drawn from ``rng``).
    """
    present = np.unique(ids)
    present = present[present > 0]
    fresh = rng.choice(MAX_SEGMENT_ID, size=present.size, replace=False) + 1
    out = np.zeros(ids.shape, dtype=np.int32)
    nz = ids > 0
    out[nz] = fresh[np.searchsorted(present, ids[nz])]
    return out, {int(a): int(b) for a, b in zip(present, fresh, strict=True)}


def nearest_map(image: np.ndarray, src_K: Intrinsics, dst_K: Intrinsics) -> np.ndarray:
    """Resample an id image from camera ``src_K`` to ``dst_K`` (same centre and axes), nearest neighbour.

    Args:
        image: ``(Hs, Ws)`` ids on ``src_K`` (``src_K.width == Ws``).
    Returns:
        ``(dst_K.height, dst_K.width)`` ids; output pixels whose centre falls outside the source take
        the nearest border pixel.
    """
    u = (np.arange(dst_K.width) + 0.5 - dst_K.cx) / dst_K.fx * src_K.fx + src_K.cx
    v = (np.arange(dst_K.height) + 0.5 - dst_K.cy) / dst_K.fy * src_K.fy + src_K.cy
    cols = np.clip(np.floor(u).astype(np.int64), 0, image.shape[1] - 1)
    rows = np.clip(np.floor(v).astype(np.int64), 0, image.shape[0] - 1)
    return image[rows[:, None], cols[None, :]]


def rescaled(K: Intrinsics, width: int, height: int) -> Intrinsics:
    """Intrinsics of the same camera's image resized to ``width`` x ``height``."""
    sx, sy = width / K.width, height / K.height
    return Intrinsics(K.fx * sx, K.fy * sy, K.cx * sx, K.cy * sy, width, height)


DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")
ID_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def check_image(
    path: Path, what: str, size: tuple[int, int] | None = None, modes: Sequence[str] = ()
) -> list[str]:
    """Header-only check of one source image: readable, ``size`` (w, h) if given, PIL mode in ``modes``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            got, mode = im.size, im.mode
    except OSError as e:
        return [f"{path}: unreadable {what} image ({e})"]
    out = []
    if size is not None and got != size:
        out.append(f"{path}: {what} size {got[0]}x{got[1]}, expected {size[0]}x{size[1]}")
    if modes and mode not in modes:
        out.append(f"{path}: {what} image has PIL mode {mode!r}, expected one of {', '.join(modes)}")
    return out


def read_ids(path: Path) -> np.ndarray:
    """Single-channel 8/16-bit id PNG -> ``(H, W)`` int64."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ID_MODES:
            raise DatasetImportError(
                f"{path}: label image must be single-channel 8/16-bit ids, got mode {im.mode!r}"
            )
        return np.asarray(im).astype(np.int64)


def read_depth_m(path: Path, units_per_metre: float) -> np.ndarray:
    """16-bit depth PNG -> ``(H, W)`` float32 metres (0 = invalid)."""
    from simgen.data import io

    try:
        return io.read_depth(path, 1.0 / units_per_metre)
    except io.ImageError as e:  # already names the file
        raise DatasetImportError(str(e)) from None
    except (ValueError, OSError) as e:
        raise DatasetImportError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- the pipeline


def _say(cfg: ImportConfig, text: str) -> None:
    if not cfg.quiet:
        print(text, file=sys.stderr)


def _warn(warnings: list[str], text: str) -> None:
    warnings.append(text)
    print(f"warning: {text}", file=sys.stderr)


def _check_config(cfg: ImportConfig) -> None:
    if bool(cfg.labels) == bool(cfg.labels_from_gt):
        raise DatasetImportError(
            "pass exactly one of --labels DIR (COCO panoptic predictions) or --labels-from-gt "
            "(the dataset's own labels, ids scrambled per frame)"
        )
    for name, low in (("every", 1), ("max_frames", 0), ("test_every", 0)):
        if getattr(cfg, name) < low:
            raise DatasetImportError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    if not (np.isfinite(cfg.depth_scale) and cfg.depth_scale > 0):
        raise DatasetImportError(f"--depth-scale must be > 0, got {cfg.depth_scale}")


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove the files that make it a scene.

    Removing transforms.json and gt/gt.json first means an interrupted re-import is never mistaken
    for a finished scene, and a stale gt.json never describes the new frames.
    """
    if out.exists() and not out.is_dir():
        raise DatasetImportError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DatasetImportError(f"{out}: output folder is not empty (pass --overwrite to write into it)")
        for p in (out / TRANSFORMS, out / GT_DIR / GT_JSON):
            if p.is_file():
                p.unlink()


def select_frames(frames: list[SourceFrame], cfg: ImportConfig, skipped: list[str]) -> list[SourceFrame]:
    """``--every`` subsampling, then dropping frames without a valid pose, then ``--max-frames``."""
    chosen = []
    for f in frames[:: cfg.every]:
        if not np.all(np.isfinite(f.c2w_cv)):
            skipped.append(f"{f.paths.get('pose', f.paths['rgb'])}: pose has inf/NaN values (tracking lost)")
            continue
        if not is_rigid(f.c2w_cv):
            skipped.append(f"{f.paths.get('pose', f.paths['rgb'])}: pose is not a rigid transform")
            continue
        chosen.append(f)
        if cfg.max_frames and len(chosen) >= cfg.max_frames:
            break
    return chosen


def _stuff_ids(source: Source, cfg: ImportConfig) -> set[int]:
    if cfg.stuff is not None:
        return set(int(s) for s in cfg.stuff)
    return {c.id for c in source.class_table.values() if not c.isthing}


def dataset_categories(source: Source, cfg: ImportConfig, observed: set[int]) -> list[Category]:
    """The scene categories in the dataset's class space: the known table plus observed unknown ids."""
    stuff = _stuff_ids(source, cfg)
    ids = set(source.class_table) | {c for c in observed if c > 0}
    cats = []
    for cid in sorted(ids):
        known = source.class_table.get(cid)
        name = known.name if known else f"class_{cid}"
        cats.append(Category(cid, name, cid not in stuff))
    return cats


def import_scene(source: Source, out: str | Path, cfg: ImportConfig) -> ImportReport:
    """Write ``source`` as a scene under ``out``; returns what was done. Raises DatasetImportError."""
    from tqdm import tqdm

    from simgen.data.writer import SceneWriter

    _check_config(cfg)
    out = Path(out)
    skipped: list[str] = []
    warnings: list[str] = []
    for w in source.warnings:
        _warn(warnings, w)
    if cfg.labels_from_gt and not source.has_labels:
        raise DatasetImportError(
            f"{source.root}: --labels-from-gt needs the dataset's label images, none found"
        )
    if cfg.labels_from_gt and not source.has_instances:
        raise DatasetImportError(
            f"{source.root}: --labels-from-gt needs the dataset's instance images to separate objects, none found"
        )

    frames = select_frames(source.frames, cfg, skipped)
    if not frames:
        raise DatasetImportError(f"{source.root}: no frame left to import", skipped)
    problems = [p for f in frames for p in source.check(f)]
    if problems:
        raise DatasetImportError(f"{source.root}: bad input files", problems)

    predictions: dict[str, coco.Annotation] = {}
    pred_categories: list[Category] = []
    if cfg.labels:
        preds = coco.load_predictions(cfg.labels)
        predictions, problems, unused = coco.match_frames(preds, [(f.stem, f.number) for f in frames])
        all_stems = {f.stem for f in source.frames} | {str(f.number) for f in source.frames}
        stray = sorted(a for a in unused if Path(a).stem not in all_stems)
        if stray:
            _warn(
                warnings,
                f"{len(stray)} annotation(s) in {preds.json_path} match no source frame: {stray[:5]}",
            )
        size = (source.intrinsics.width, source.intrinsics.height)
        problems += coco.check_files(predictions.values(), size)
        if problems:
            raise DatasetImportError(f"{preds.json_path}: predictions do not fit the frames", problems)
        pred_categories = preds.categories

    stuff = _stuff_ids(source, cfg)
    write_gt = cfg.gt and source.has_labels
    if write_gt and cfg.labels:
        # GT lives in the dataset's class space; it is comparable with the predictions only if the
        # predictions use the same class ids and names.
        observed: set[int] = set()
        for f in tqdm(frames, desc="scan labels", unit="frame", disable=cfg.quiet or None, leave=False):
            observed |= set(np.unique(source.load_classes(f)).tolist())
        mismatch = _category_mismatch(dataset_categories(source, cfg, observed), observed, pred_categories)
        if mismatch:
            write_gt = False
            _warn(
                warnings,
                f"not writing gt/: the predictions' categories differ from the dataset's ({mismatch})",
            )
    if write_gt and not source.has_instances:
        _warn(warnings, "no instance images: each thing class is one GT segment")

    prepare_output(out, cfg.overwrite)
    writer = SceneWriter(
        out,
        source.intrinsics,
        categories=[],
        depth_unit_scale=0.001,
        extra_meta={
            "source": {
                "dataset": source.dataset,
                "path": str(source.root),
                "frames": [f.stem for f in frames],
                **source.meta,
            }
        },
    )
    gt_segments: dict[int, int] = {}
    observed_classes: set[int] = set()
    names: list[str] = []
    pred_problems: list[str] = []
    for i, f in enumerate(
        tqdm(frames, desc=f"import {source.dataset}", unit="frame", disable=cfg.quiet or None)
    ):
        data = source.load(f)
        gt_ids = None
        if data.classes is not None and (write_gt or cfg.labels_from_gt):
            observed_classes |= set(np.unique(data.classes).tolist())
            gt_ids, segs = labels_to_panoptic(
                data.classes, data.instances, stuff, source.void_instance, where=str(f.paths.get("class"))
            )
            gt_segments.update(segs)
        if cfg.labels_from_gt:
            assert gt_ids is not None
            rng = np.random.default_rng([cfg.seed, i])
            pan, mapping = scramble_ids(gt_ids, rng)
            segments = [Segment(new, gt_segments[old], 1.0) for old, new in mapping.items()]
        else:
            pan, segments, probs = coco.read_prediction(predictions[f.stem], source.to_output)
            pred_problems += probs
            if probs:
                continue
        names.append(
            writer.add_frame(
                data.rgb,
                data.depth_m,
                pan,
                segments,
                opencv_to_opengl(f.c2w_cv),
                gt_panoptic=gt_ids if write_gt else None,
                name=f"{i:05d}",
            )
        )
    if pred_problems:
        raise DatasetImportError(f"{cfg.labels}: bad prediction PNGs (nothing was finished)", pred_problems)

    if cfg.labels_from_gt:
        categories = dataset_categories(source, cfg, observed_classes)
    else:
        categories = list(pred_categories)
    unknown = sorted(c for c in observed_classes if c > 0 and c not in source.class_table)
    if source.class_table and unknown:
        _warn(warnings, f"class id(s) {unknown[:10]} are not in the class table; named class_<id>")
    if cfg.labels_from_gt and not any(c.isthing for c in categories):
        raise DatasetImportError(
            f"{source.root}: every class is stuff (check --stuff): nothing to separate into objects"
        )
    writer.categories = categories
    test = [n for k, n in enumerate(names) if cfg.test_every and k % cfg.test_every == 0]
    train = [n for n in names if n not in set(test)] if cfg.test_every else None
    writer.finish(
        gt_segments=gt_segments if write_gt else None, train=train, test=test if cfg.test_every else None
    )
    report = ImportReport(
        out=out,
        frames=len(names),
        test_frames=len(test),
        skipped=skipped,
        warnings=warnings,
        gt_written=write_gt,
        gt_segments=len(gt_segments) if write_gt else 0,
        categories=len(categories),
    )
    if skipped:
        _warn(warnings, f"skipped {len(skipped)} frame(s) without a valid pose:")
        for s in skipped[:10]:
            print(f"  - {s}", file=sys.stderr)
    _say(
        cfg,
        f"wrote {report.frames} frame(s) ({report.test_frames} test) to {out}; "
        f"{report.categories} categories; GT: {f'{report.gt_segments} segments' if write_gt else 'none'}",
    )
    return report


def _category_mismatch(dataset: list[Category], observed: set[int], predicted: list[Category]) -> str:
    """'' if every observed dataset class has a prediction category of the same id, name and kind."""
    by_id = {c.id: c for c in predicted}
    table = {c.id: c for c in dataset}
    bad = []
    for cid in sorted(c for c in observed if c > 0):
        d, p = table[cid], by_id.get(cid)
        if p is None or p.name.strip().lower() != d.name.strip().lower() or p.isthing != d.isthing:
            bad.append(
                f"{cid} {d.name!r}: " + ("absent" if p is None else f"{p.name!r} isthing={int(p.isthing)}")
            )
    return "; ".join(bad[:5]) + (f"; ... {len(bad) - 5} more" if len(bad) > 5 else "")
