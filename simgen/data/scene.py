"""The scene format: loading and validating ``scene_dir`` (see docs/scene-format.md).

A :class:`Scene` holds only metadata; images are read on demand (``scene.rgb(i)``, ``scene.depth(i)``,
``scene.panoptic(i)``), so a scan of thousands of frames costs little memory.

:func:`validate_scene` collects every problem it finds (it does not stop at the first), each naming
the file and frame; :func:`load_scene` raises :class:`SceneError` carrying that list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data import io
from simgen.data.camera import Intrinsics, is_rigid, opengl_to_opencv

TRANSFORMS = "transforms.json"
GT_DIR = "gt"
GT_JSON = "gt.json"


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool


@dataclass(frozen=True)
class Segment:
    """One entry of a frame's ``segments_info``: a per-frame segment id and its class."""

    id: int
    category_id: int
    score: float = 1.0


@dataclass(frozen=True)
class Frame:
    """Metadata of one frame; paths are absolute."""

    index: int
    name: str  # file_path exactly as written in transforms.json
    rgb_path: Path
    depth_path: Path
    panoptic_path: Path | None
    segments: tuple[Segment, ...]
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenGL camera axes (as stored)
    intrinsics: Intrinsics
    split: str  # "train" or "test"

    @property
    def c2w_cv(self) -> np.ndarray:
        """(4, 4) camera-to-world with OpenCV camera axes (x right, y down, z forward)."""
        return opengl_to_opencv(self.c2w)


@dataclass(frozen=True)
class Problem:
    """One validation finding."""

    file: str
    message: str
    frame: int | None = None

    def __str__(self) -> str:
        where = self.file if self.frame is None else f"{self.file} (frame {self.frame})"
        return f"{where}: {self.message}"


class SceneError(ValueError):
    """A scene failed validation; ``problems`` lists every finding."""

    def __init__(self, root: Path, problems: list[Problem]):
        self.root = root
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"scene {root} is invalid ({len(problems)} problem(s)):\n{lines}")


@dataclass
class GroundTruth:
    """Optional exact ground truth under ``scene_dir/gt``."""

    root: Path
    segments: dict[int, int]  # scene-consistent segment id -> category id
    panoptic_paths: list[Path]  # per frame, same order as transforms.json frames
    mesh_path: Path | None
    mesh_labels_path: Path | None

    def panoptic(self, i: int) -> np.ndarray:
        """(H, W) int32 scene-consistent GT segment ids of frame ``i`` (0 = void)."""
        return io.read_panoptic(self.panoptic_paths[i])

    def mesh(self):
        """The GT mesh as a ``trimesh.Trimesh`` (not processed: vertex order matches the labels)."""
        import trimesh

        if self.mesh_path is None:
            raise FileNotFoundError(f"{self.root / GT_JSON}: no mesh_path")
        return trimesh.load(self.mesh_path, process=False, force="mesh")

    def mesh_labels(self) -> np.ndarray:
        """(V,) int32 GT segment id per mesh vertex (0 = void)."""
        if self.mesh_labels_path is None:
            raise FileNotFoundError(f"{self.root / GT_JSON}: no mesh_labels_path")
        return np.load(self.mesh_labels_path).astype(np.int32)


@dataclass
class Scene:
    root: Path
    frames: list[Frame]
    categories: dict[int, Category]
    depth_unit_scale: float = 0.001
    gt: GroundTruth | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the raw transforms.json minus frames

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def thing_ids(self) -> list[int]:
        return sorted(c.id for c in self.categories.values() if c.isthing)

    @property
    def stuff_ids(self) -> list[int]:
        return sorted(c.id for c in self.categories.values() if not c.isthing)

    def split_indices(self, split: str = "train") -> list[int]:
        """Frame indices of ``"train"``, ``"test"`` or ``"all"``."""
        if split == "all":
            return list(range(len(self.frames)))
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r} (train, test or all)")
        return [f.index for f in self.frames if f.split == split]

    def rgb(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8."""
        return io.read_rgb(self.frames[i].rgb_path)

    def depth(self, i: int) -> np.ndarray:
        """(H, W) float32 z-depth in metres, 0 = invalid."""
        return io.read_depth(self.frames[i].depth_path, self.depth_unit_scale)

    def panoptic(self, i: int) -> np.ndarray:
        """(H, W) int32 per-frame pseudo-label segment ids, 0 = void."""
        path = self.frames[i].panoptic_path
        if path is None:
            raise FileNotFoundError(f"frame {i} ({self.frames[i].name}) has no panoptic_file_path")
        return io.read_panoptic(path)

    def semantic(self, i: int) -> np.ndarray:
        """(H, W) int32 category id per pixel from the pseudo-labels, -1 = void."""
        pan = self.panoptic(i)
        lut = {s.id: s.category_id for s in self.frames[i].segments}
        return _map_ids(pan, lut, default=-1)

    def gt_semantic(self, i: int) -> np.ndarray:
        """(H, W) int32 GT category id per pixel, -1 = void (needs ``gt/``)."""
        if self.gt is None:
            raise FileNotFoundError(f"{self.root}: scene has no gt/")
        return _map_ids(self.gt.panoptic(i), self.gt.segments, default=-1)


def _map_ids(ids: np.ndarray, lut: dict[int, int], default: int) -> np.ndarray:
    out = np.full(ids.shape, default, dtype=np.int32)
    for k, v in lut.items():  # loops over segments (tens), not pixels
        out[ids == k] = v
    return out


# ----------------------------------------------------------------------------- parsing


def _parse(root: Path, problems: list[Problem]) -> Scene | None:
    """Parse transforms.json (and gt/gt.json) into a Scene, recording structural problems."""
    tpath = root / TRANSFORMS
    if not root.is_dir():
        problems.append(Problem(str(root), "scene folder does not exist"))
        return None
    if not tpath.is_file():
        problems.append(Problem(str(tpath), "missing transforms.json"))
        return None
    try:
        meta = json.loads(tpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.append(Problem(str(tpath), f"unreadable JSON: {e}"))
        return None
    if not isinstance(meta, dict):
        problems.append(Problem(str(tpath), "top level must be a JSON object"))
        return None

    categories: dict[int, Category] = {}
    for j, c in enumerate(meta.get("categories") or []):
        try:
            cat = Category(int(c["id"]), str(c["name"]), bool(int(c.get("isthing", 0))))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem(str(tpath), f"categories[{j}] is malformed ({e!r})"))
            continue
        if cat.id in categories:
            problems.append(Problem(str(tpath), f"categories[{j}]: duplicate category id {cat.id}"))
        categories[cat.id] = cat
    if not categories:
        problems.append(Problem(str(tpath), "no categories"))
    elif not any(c.isthing for c in categories.values()):
        problems.append(
            Problem(str(tpath), "no thing categories (isthing: 1): nothing to separate into objects")
        )

    frames_raw = meta.get("frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        problems.append(Problem(str(tpath), "empty scene: 'frames' is missing or empty"))
        frames_raw = []

    depth_scale = float(meta.get("depth_unit_scale_factor", 0.001))
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        problems.append(Problem(str(tpath), f"depth_unit_scale_factor must be > 0, got {depth_scale}"))
        depth_scale = 0.001

    train_names = meta.get("train_filenames")
    test_names = set(meta.get("test_filenames") or [])
    train_set = set(train_names) if train_names is not None else None

    frames: list[Frame] = []
    seen: dict[str, int] = {}
    for i, fr in enumerate(frames_raw):
        frame = _parse_frame(root, tpath, meta, i, fr, categories, train_set, test_names, problems)
        if frame is None:
            continue
        for key, p in (("file_path", frame.rgb_path), ("depth_file_path", frame.depth_path)):
            if str(p) in seen:
                problems.append(
                    Problem(str(tpath), f"duplicate {key} {p.name!r} (also used by frame {seen[str(p)]})", i)
                )
            seen[str(p)] = i
        frames.append(frame)

    for name in sorted((train_set or set()) | test_names):
        if not any(f.name == name for f in frames):
            problems.append(Problem(str(tpath), f"train/test_filenames names unknown frame {name!r}"))

    rest = {k: v for k, v in meta.items() if k != "frames"}
    scene = Scene(root=root, frames=frames, categories=categories, depth_unit_scale=depth_scale, meta=rest)
    scene.gt = _parse_gt(root, len(frames_raw), categories, problems)
    return scene


def _parse_frame(
    root: Path,
    tpath: Path,
    meta: dict,
    i: int,
    fr: Any,
    categories: dict[int, Category],
    train_set: set[str] | None,
    test_names: set[str],
    problems: list[Problem],
) -> Frame | None:
    where = str(tpath)
    if not isinstance(fr, dict):
        problems.append(Problem(where, "frame entry must be an object", i))
        return None
    missing = [k for k in ("file_path", "depth_file_path", "transform_matrix") if k not in fr]
    if missing:
        problems.append(Problem(where, f"missing field(s) {', '.join(missing)}", i))
        return None

    try:
        c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.full((4, 4), np.nan)
    if c2w.shape != (4, 4):
        problems.append(Problem(where, f"transform_matrix must be 4x4, got shape {c2w.shape}", i))
        c2w = np.eye(4)
    elif not np.all(np.isfinite(c2w)):
        problems.append(Problem(where, "transform_matrix has non-finite values", i))
    elif not is_rigid(c2w):
        problems.append(
            Problem(where, "transform_matrix is not rigid (rotation not orthonormal or det != 1)", i)
        )

    try:
        K = Intrinsics(
            float(fr.get("fl_x", meta.get("fl_x"))),
            float(fr.get("fl_y", meta.get("fl_y", fr.get("fl_x", meta.get("fl_x"))))),
            float(fr.get("cx", meta.get("cx"))),
            float(fr.get("cy", meta.get("cy"))),
            int(fr.get("w", meta.get("w"))),
            int(fr.get("h", meta.get("h"))),
        )
    except (TypeError, ValueError):
        problems.append(Problem(where, "intrinsics fl_x, fl_y, cx, cy, w, h missing or not numbers", i))
        return None
    if not (K.fx > 0 and K.fy > 0 and K.width > 0 and K.height > 0):
        problems.append(Problem(where, f"invalid intrinsics {K}", i))

    segments: list[Segment] = []
    seg_ids: set[int] = set()
    for j, s in enumerate(fr.get("segments_info") or []):
        try:
            seg = Segment(int(s["id"]), int(s["category_id"]), float(s.get("score", 1.0)))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem(where, f"segments_info[{j}] is malformed ({e!r})", i))
            continue
        if seg.id <= 0:
            problems.append(Problem(where, f"segments_info[{j}]: segment id must be > 0 (0 is void)", i))
        if seg.id in seg_ids:
            problems.append(Problem(where, f"segments_info[{j}]: duplicate segment id {seg.id}", i))
        if seg.category_id not in categories:
            problems.append(Problem(where, f"segment {seg.id}: unknown category_id {seg.category_id}", i))
        seg_ids.add(seg.id)
        segments.append(seg)

    name = str(fr["file_path"])
    if name in test_names:
        split = "test"
    elif train_set is None or name in train_set:
        split = "train"
    else:
        split = "unused"
    pan = fr.get("panoptic_file_path")
    return Frame(
        index=i,
        name=name,
        rgb_path=(root / name).resolve(),
        depth_path=(root / str(fr["depth_file_path"])).resolve(),
        panoptic_path=(root / str(pan)).resolve() if pan else None,
        segments=tuple(segments),
        c2w=c2w,
        intrinsics=K,
        split=split,
    )


def _parse_gt(root: Path, n_frames: int, categories: dict[int, Category], problems: list[Problem]):
    gpath = root / GT_DIR / GT_JSON
    if not gpath.exists():
        return None
    try:
        g = json.loads(gpath.read_text())
        segments = {int(s["id"]): int(s["category_id"]) for s in g.get("segments", [])}
        pan = [root / GT_DIR / str(f["panoptic_file_path"]) for f in g.get("frames", [])]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        problems.append(Problem(str(gpath), f"unreadable ground truth: {e!r}"))
        return None
    for sid, cid in segments.items():
        if cid not in categories:
            problems.append(Problem(str(gpath), f"GT segment {sid}: unknown category_id {cid}"))
    if pan and len(pan) != n_frames:
        problems.append(Problem(str(gpath), f"{len(pan)} GT frames but transforms.json has {n_frames}"))
    mesh = root / GT_DIR / g["mesh_path"] if g.get("mesh_path") else None
    labels = root / GT_DIR / g["mesh_labels_path"] if g.get("mesh_labels_path") else None
    for p in (mesh, labels):
        if p is not None and not p.is_file():
            problems.append(Problem(str(p), "GT file named in gt.json is missing"))
    return GroundTruth(root / GT_DIR, segments, pan, mesh, labels)


# ----------------------------------------------------------------------------- validation


def _check_frame_files(scene: Scene, f: Frame, problems: list[Problem]) -> dict[str, Any]:
    """Open the frame's images and check sizes, depth bit depth and segment ids. Returns stats."""
    stats: dict[str, Any] = {}
    want = (f.intrinsics.width, f.intrinsics.height)

    def check_size(path: Path, what: str) -> bool:
        if not path.is_file():
            problems.append(Problem(str(path), f"missing {what} file", f.index))
            return False
        try:
            size = io.image_size(path)
        except OSError as e:
            problems.append(Problem(str(path), f"unreadable {what} image ({e})", f.index))
            return False
        if size != want:
            problems.append(
                Problem(
                    str(path), f"wrong image size {size[0]}x{size[1]}, expected {want[0]}x{want[1]}", f.index
                )
            )
            return False
        return True

    check_size(f.rgb_path, "RGB")
    if check_size(f.depth_path, "depth"):
        try:
            d = io.read_depth(f.depth_path, scene.depth_unit_scale)
            valid = d[d > 0]
            stats["depth"] = (float(valid.min()), float(valid.max())) if valid.size else None
        except ValueError as e:
            problems.append(Problem(str(f.depth_path), str(e), f.index))
    if f.panoptic_path is None:
        problems.append(Problem(str(scene.root / TRANSFORMS), "missing panoptic_file_path", f.index))
    elif check_size(f.panoptic_path, "panoptic"):
        try:
            ids = set(np.unique(io.read_panoptic(f.panoptic_path)).tolist()) - {0}
        except (ValueError, OSError) as e:
            problems.append(Problem(str(f.panoptic_path), str(e), f.index))
        else:
            listed = {s.id for s in f.segments}
            if ids - listed:
                problems.append(
                    Problem(
                        str(f.panoptic_path),
                        f"segment id(s) {sorted(ids - listed)} in the PNG are missing from segments_info",
                        f.index,
                    )
                )
            if listed - ids:
                problems.append(
                    Problem(
                        str(f.panoptic_path),
                        f"segments_info id(s) {sorted(listed - ids)} do not appear in the PNG",
                        f.index,
                    )
                )
    return stats


def validate_scene(root: str | Path, check_images: bool = True) -> tuple[Scene | None, list[Problem], dict]:
    """Validate ``root``; returns (scene or None, every problem found, summary statistics).

    With ``check_images`` every image header is read and every depth and panoptic PNG decoded
    (segment ids compared with ``segments_info``); without it only the JSON files are checked.
    """
    root = Path(root)
    problems: list[Problem] = []
    scene = _parse(root, problems)
    stats: dict[str, Any] = {}
    if scene is None:
        return None, problems, stats
    depth_ranges = []
    if check_images:
        from tqdm import tqdm

        for f in tqdm(scene.frames, desc="validate", unit="frame", leave=False, disable=None):
            s = _check_frame_files(scene, f, problems)
            if s.get("depth"):
                depth_ranges.append(s["depth"])
        if scene.gt is not None:
            for i, p in enumerate(scene.gt.panoptic_paths):
                if not p.is_file():
                    problems.append(Problem(str(p), "missing GT panoptic file", i))
    stats = summarize(scene, depth_ranges if check_images else None)
    return scene, problems, stats


def load_scene(root: str | Path, validate: bool = True, check_images: bool = True) -> Scene:
    """Load a scene; with ``validate`` raise :class:`SceneError` listing every problem found."""
    scene, problems, _ = validate_scene(root, check_images=check_images and validate)
    if scene is None or (validate and problems):
        raise SceneError(Path(root), problems)
    return scene


def summarize(scene: Scene, depth_ranges: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Summary statistics of a scene (what ``simgen info`` prints)."""
    n = len(scene.frames)
    res = sorted({(f.intrinsics.width, f.intrinsics.height) for f in scene.frames})
    segs = [len(f.segments) for f in scene.frames] or [0]
    centres = np.array([f.c2w[:3, 3] for f in scene.frames]) if n else np.zeros((0, 3))
    finite = centres[np.all(np.isfinite(centres), axis=1)] if n else centres
    path_len = float(np.linalg.norm(np.diff(finite, axis=0), axis=1).sum()) if len(finite) > 1 else 0.0
    out: dict[str, Any] = {
        "root": str(scene.root),
        "frames": n,
        "train_frames": len(scene.split_indices("train")),
        "test_frames": len(scene.split_indices("test")),
        "resolution": [f"{w}x{h}" for w, h in res],
        "categories": len(scene.categories),
        "thing_categories": [scene.categories[c].name for c in scene.thing_ids],
        "stuff_categories": [scene.categories[c].name for c in scene.stuff_ids],
        "segments_per_frame": {"min": int(min(segs)), "mean": float(np.mean(segs)), "max": int(max(segs))},
        "pose_extent_m": (finite.max(0) - finite.min(0)).round(3).tolist() if len(finite) else None,
        "trajectory_length_m": round(path_len, 3),
        "ground_truth": scene.gt is not None,
    }
    if depth_ranges is not None:
        out["depth_range_m"] = (
            [round(min(r[0] for r in depth_ranges), 3), round(max(r[1] for r in depth_ranges), 3)]
            if depth_ranges
            else None
        )
    return out
