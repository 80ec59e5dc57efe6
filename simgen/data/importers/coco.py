"""Reading 2D panoptic predictions in COCO panoptic form (``--labels DIR``).

Layout: ``DIR/panoptic.json`` with

* ``categories``: ``[{"id": int, "name": str, "isthing": 0|1}, ...]``,
* ``annotations``: ``[{"file_name": "rgb_12.png", "segments_info": [{"id": int, "category_id": int,
  "score": float (optional)}, ...]}, ...]``,

and the PNGs at ``DIR/<file_name>`` or ``DIR/panoptic/<file_name>`` (RGB, id = R + 256 G + 256^2 B,
0 = void). An annotation belongs to the source frame whose RGB file stem (``rgb_12`` for Replica,
``12`` for ScanNet) or frame number (``12``) equals the stem of its ``file_name``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simgen.data import io
from simgen.data.importers.base import DatasetImportError, same_aspect
from simgen.data.scene import Category, Segment

PANOPTIC_JSON = "panoptic.json"


@dataclass(frozen=True)
class Annotation:
    file_name: str
    png_path: Path
    segments: tuple[Segment, ...]


@dataclass
class Predictions:
    json_path: Path
    categories: list[Category]
    annotations: list[Annotation]


def load_predictions(folder: str | Path) -> Predictions:
    """Parse and check ``folder/panoptic.json``; raises DatasetImportError listing every problem."""
    folder = Path(folder)
    jpath = folder / PANOPTIC_JSON
    if not folder.is_dir():
        raise DatasetImportError(f"{folder}: predictions folder does not exist")
    if not jpath.is_file():
        raise DatasetImportError(f"{jpath}: missing (COCO panoptic predictions need DIR/{PANOPTIC_JSON})")
    try:
        data = json.loads(jpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetImportError(f"{jpath}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetImportError(f"{jpath}: top level must be a JSON object")

    problems: list[str] = []
    categories: dict[int, Category] = {}
    for j, c in enumerate(data.get("categories") or []):
        try:
            cat = Category(int(c["id"]), str(c["name"]), bool(int(c["isthing"])))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{jpath}: categories[{j}] needs id, name and isthing ({e!r})")
            continue
        if cat.id <= 0:
            problems.append(f"{jpath}: categories[{j}]: id must be > 0")
        if cat.id in categories:
            problems.append(f"{jpath}: categories[{j}]: duplicate id {cat.id}")
        categories[cat.id] = cat
    if not categories:
        problems.append(f"{jpath}: no categories")
    elif not any(c.isthing for c in categories.values()):
        problems.append(f"{jpath}: no thing category (isthing: 1)")

    anns: list[Annotation] = []
    raw = data.get("annotations")
    if not isinstance(raw, list) or not raw:
        problems.append(f"{jpath}: 'annotations' is missing or empty")
        raw = []
    for j, a in enumerate(raw):
        if not isinstance(a, dict) or "file_name" not in a:
            problems.append(f"{jpath}: annotations[{j}] has no file_name")
            continue
        name = str(a["file_name"])
        where = f"{jpath}: annotation {name!r}"
        segs: list[Segment] = []
        seen: set[int] = set()
        for k, s in enumerate(a.get("segments_info") or []):
            try:
                seg = Segment(int(s["id"]), int(s["category_id"]), float(s.get("score", 1.0)))
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"{where}: segments_info[{k}] is malformed ({e!r})")
                continue
            if seg.id <= 0 or seg.id >= 256**3:
                problems.append(f"{where}: segment id {seg.id} outside [1, 2**24)")
            if seg.id in seen:
                problems.append(f"{where}: duplicate segment id {seg.id}")
            if categories and seg.category_id not in categories:
                problems.append(f"{where}: segment {seg.id} has unknown category_id {seg.category_id}")
            seen.add(seg.id)
            segs.append(seg)
        candidates = [folder / name, folder / "panoptic" / name]
        png = next((p for p in candidates if p.is_file()), None)
        if png is None:
            problems.append(f"{folder / name}: missing prediction PNG (also looked in {folder / 'panoptic'})")
            png = candidates[0]
        anns.append(Annotation(name, png, tuple(segs)))
    if problems:
        raise DatasetImportError(f"{jpath}: invalid COCO panoptic predictions", problems)
    return Predictions(jpath, sorted(categories.values(), key=lambda c: c.id), anns)


def match_frames(
    preds: Predictions, frames: list[tuple[str, int]]
) -> tuple[dict[str, Annotation], list[str], list[str]]:
    """Match annotations to frames ``(rgb stem, frame number)`` by file-name stem.

    Returns ``{frame stem: annotation}``, problems (frames without or with two annotations, two
    annotations with one stem) and the file names of annotations no selected frame used.
    """
    problems: list[str] = []
    by_stem: dict[str, Annotation] = {}
    for a in preds.annotations:
        stem = Path(a.file_name).stem
        if stem in by_stem:
            problems.append(f"{preds.json_path}: two annotations with file name stem {stem!r}")
        by_stem[stem] = a
    matched: dict[str, Annotation] = {}
    for stem, number in frames:
        keys = list(dict.fromkeys([stem, str(number)]))
        hits = [by_stem[k] for k in keys if k in by_stem]
        if not hits:
            problems.append(
                f"{preds.json_path}: no annotation for frame {stem!r} (file name stem {' or '.join(map(repr, keys))})"
            )
        elif len(hits) > 1:
            problems.append(
                f"{preds.json_path}: frame {stem!r} matches two annotations {[h.file_name for h in hits]}"
            )
        else:
            matched[stem] = hits[0]
    used = {a.file_name for a in matched.values()}
    unused = [a.file_name for a in preds.annotations if a.file_name not in used]
    return matched, problems, unused


def check_files(annotations: Iterable[Annotation], size: tuple[int, int]) -> list[str]:
    """Header-only checks: each PNG is RGB and has the output size or at least its aspect ratio."""
    problems = []
    for a in annotations:
        try:
            with Image.open(a.png_path) as im:
                mode, got = im.mode, im.size
        except OSError as e:
            problems.append(f"{a.png_path}: unreadable image ({e})")
            continue
        if mode not in ("RGB", "RGBA"):
            problems.append(f"{a.png_path}: panoptic PNG must be RGB (COCO id encoding), got mode {mode!r}")
        if got != size and not same_aspect(got, size):
            problems.append(
                f"{a.png_path}: size {got[0]}x{got[1]} does not match the frames ({size[0]}x{size[1]}) "
                "nor their aspect ratio"
            )
    return problems


def read_prediction(
    ann: Annotation, to_output: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, list[Segment], list[str]]:
    """One prediction on the output camera.

    Returns ``(H, W)`` int32 segment ids, the segments present in it (listed segments that do not
    appear, e.g. lost to resampling, are dropped) and problems (ids in the PNG missing from
    ``segments_info``).
    """
    ids = io.read_panoptic(ann.png_path)
    ids = to_output(ids).astype(np.int32)
    present = set(np.unique(ids).tolist()) - {0}
    listed = {s.id for s in ann.segments}
    problems = []
    if present - listed:
        problems.append(
            f"{ann.png_path}: segment id(s) {sorted(present - listed)[:10]} missing from segments_info"
        )
    return ids, [s for s in ann.segments if s.id in present], problems
