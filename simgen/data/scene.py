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
    # (N, 4, 4) float64 true camera-to-world per frame (OpenGL camera axes, the convention of
    # transforms.json), when the source knows the poses exactly; None when gt.json carries none.
    true_c2w: np.ndarray | None = None

    def true_c2w_cv(self, i: int) -> np.ndarray:
        """(4, 4) true camera-to-world of frame ``i`` with OpenCV camera axes (raises if none is known)."""
        if self.true_c2w is None:
            raise ValueError(f"{self.root / GT_JSON}: the frames carry no transform_matrix (true poses)")
        return opengl_to_opencv(self.true_c2w[i])

    def panoptic(self, i: int) -> np.ndarray:
        """(H, W) int32 scene-consistent GT segment ids of frame ``i`` (0 = void)."""
        return _read_frame_image(io.read_panoptic, self.panoptic_paths[i], i)

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
        """(H, W, 3) uint8. Raises :class:`io.ImageError` naming the file and frame if undecodable."""
        return _read_frame_image(io.read_rgb, self.frames[i].rgb_path, i)

    def depth(self, i: int) -> np.ndarray:
        """(H, W) float32 z-depth in metres, 0 = invalid."""
        return _read_frame_image(
            lambda p: io.read_depth(p, self.depth_unit_scale), self.frames[i].depth_path, i
        )

    def panoptic(self, i: int) -> np.ndarray:
        """(H, W) int32 per-frame pseudo-label segment ids, 0 = void."""
        path = self.frames[i].panoptic_path
        if path is None:
            raise FileNotFoundError(f"frame {i} ({self.frames[i].name}) has no panoptic_file_path")
        return _read_frame_image(io.read_panoptic, path, i)

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


def _read_frame_image(read, path: Path, i: int) -> np.ndarray:
    """``read(path)``, with the frame index added to a decode error (the build names file and frame)."""
    try:
        return read(path)
    except io.ImageError as e:
        raise io.ImageError(path, e.reason, frame=i) from e


def _map_ids(ids: np.ndarray, lut: dict[int, int], default: int) -> np.ndarray:
    out = np.full(ids.shape, default, dtype=np.int32)
    for k, v in lut.items():  # loops over segments (tens), not pixels
        out[ids == k] = v
    return out


# ----------------------------------------------------------------------------- parsing


class _FieldError(ValueError):
    """A transforms.json / gt.json value of the wrong type or out of range (message names the field)."""


def _number(value: Any, name: str) -> float:
    # bool is an int subclass and "320" parses with float(): both are refused, the format says number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldError(f"{name} must be a number, got {_show(value)}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():  # 320.0 from a writer that only has floats
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"{name} must be an integer, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _FieldError(f"{name} must be a list of strings, got {_show(value)}")
    return value


def _inside(root: Path, base: Path, value: Any, name: str) -> Path:
    """``base / value`` resolved, refused unless it stays inside the scene folder ``root``.

    The format makes every path relative to the scene folder: an absolute path, ``..`` or a symlink that
    leads outside would let a scene read (and a build print fragments of) arbitrary files, and a
    scene copied elsewhere would silently keep using another scene's images.
    """
    if not isinstance(value, str) or not value.strip():
        raise _FieldError(f"{name} must be a non-empty string, got {_show(value)}")
    if "\x00" in value:
        raise _FieldError(f"{name} {value!r} contains a NUL character")
    if Path(value).is_absolute():
        raise _FieldError(f"{name} {value!r} is absolute; paths are relative to the scene folder")
    try:
        full = (base / value).resolve()
        inside = full.is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:  # symlink loop, name too long
        raise _FieldError(f"{name} {value!r} cannot be resolved ({e})") from e
    if not inside:
        how = "through '..'" if ".." in Path(value).parts else f"through a symlink: {base / value} -> {full}"
        raise _FieldError(f"{name} {value!r} leads outside the scene folder ({how})")
    return full


def _parse(root: Path, problems: list[Problem]) -> Scene | None:
    """Parse transforms.json (and gt/gt.json) into a Scene, recording structural problems."""
    tpath = root / TRANSFORMS
    if not root.is_dir():
        problems.append(Problem(str(root), "scene folder does not exist"))
        return None
    if not tpath.is_file():
        problems.append(Problem(str(tpath), "missing transforms.json"))
        return None
    if not tpath.resolve().is_relative_to(root.resolve()):
        problems.append(Problem(str(tpath), "is a symlink that leads outside the scene folder"))
        return None
    try:
        meta = json.loads(tpath.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        problems.append(Problem(str(tpath), f"unreadable JSON: {_short(e)}"))
        return None
    if not isinstance(meta, dict):
        problems.append(Problem(str(tpath), "top level must be a JSON object"))
        return None

    categories: dict[int, Category] = {}
    cats_raw = meta.get("categories") or []
    if not isinstance(cats_raw, list):
        problems.append(Problem(str(tpath), f"categories must be a list, got {_show(cats_raw)}"))
        cats_raw = []
    for j, c in enumerate(cats_raw):
        try:
            if not isinstance(c, dict):
                raise _FieldError(f"must be an object, got {_show(c)}")
            if "id" not in c or "name" not in c:
                raise _FieldError("needs 'id' and 'name'")
            if not isinstance(c["name"], str):
                raise _FieldError(f"name must be a string, got {_show(c['name'])}")
            isthing = _integer(c.get("isthing", 0), "isthing")
            if isthing not in (0, 1):
                raise _FieldError(f"isthing must be 0 or 1, got {isthing}")
            cat = Category(_integer(c["id"], "id"), c["name"], bool(isthing))
        except _FieldError as e:
            problems.append(Problem(str(tpath), f"categories[{j}] is malformed: {e}"))
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

    try:
        depth_scale = _number(meta.get("depth_unit_scale_factor", 0.001), "depth_unit_scale_factor")
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise _FieldError(f"depth_unit_scale_factor must be > 0, got {depth_scale}")
    except _FieldError as e:
        problems.append(Problem(str(tpath), str(e)))
        depth_scale = 0.001

    train_set: set[str] | None = None
    test_names: set[str] = set()
    try:
        if meta.get("train_filenames") is not None:
            train_set = set(_string_list(meta["train_filenames"], "train_filenames"))
        test_names = set(_string_list(meta.get("test_filenames") or [], "test_filenames"))
    except _FieldError as e:
        problems.append(Problem(str(tpath), str(e)))

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

    # Names of every frame entry, parsed or not: a malformed frame is reported once, not again here.
    listed = {
        fr["file_path"] for fr in frames_raw if isinstance(fr, dict) and isinstance(fr.get("file_path"), str)
    }
    for name in sorted((train_set or set()) | test_names):
        if name not in listed:
            problems.append(Problem(str(tpath), f"train/test_filenames names unknown frame {name!r}"))

    rest = {k: v for k, v in meta.items() if k != "frames"}
    scene = Scene(root=root, frames=frames, categories=categories, depth_unit_scale=depth_scale, meta=rest)
    scene.gt = _parse_gt(root, len(frames_raw), categories, problems)
    return scene


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _intrinsics(fr: dict, meta: dict) -> Intrinsics:
    """Per-frame values override the top-level ones; fl_y defaults to fl_x. Strictly typed."""

    def get(key: str, default: Any = None) -> Any:
        value = fr.get(key, meta.get(key, default))
        if value is None:
            raise _FieldError(f"intrinsics field {key} is missing")
        return value

    fx = _number(get("fl_x"), "fl_x")
    return Intrinsics(
        fx,
        _number(get("fl_y", fx), "fl_y"),
        _number(get("cx"), "cx"),
        _number(get("cy"), "cy"),
        _integer(get("w"), "w"),
        _integer(get("h"), "h"),
    )


def _rigid(c2w: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 entries: not rigid, and no warning
        return bool(is_rigid(c2w))


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
    except (TypeError, ValueError, OverflowError):
        c2w = np.full((4, 4), np.nan)
    if c2w.shape != (4, 4):
        problems.append(Problem(where, f"transform_matrix must be 4x4, got shape {c2w.shape}", i))
        c2w = np.eye(4)
    elif not np.all(np.isfinite(c2w)):
        problems.append(Problem(where, "transform_matrix has non-finite values", i))
    elif not _rigid(c2w):
        problems.append(
            Problem(where, "transform_matrix is not rigid (rotation not orthonormal or det != 1)", i)
        )

    try:
        K = _intrinsics(fr, meta)
    except _FieldError as e:
        problems.append(Problem(where, str(e), i))
        return None
    if not (K.fx > 0 and K.fy > 0 and K.width > 0 and K.height > 0):
        problems.append(Problem(where, f"invalid intrinsics {K}", i))
    elif not all(np.isfinite([K.fx, K.fy, K.cx, K.cy])):
        problems.append(Problem(where, f"non-finite intrinsics {K}", i))

    segments: list[Segment] = []
    seg_ids: set[int] = set()
    segs_raw = fr.get("segments_info") or []
    if not isinstance(segs_raw, list):
        problems.append(Problem(where, f"segments_info must be a list, got {_show(segs_raw)}", i))
        segs_raw = []
    for j, s in enumerate(segs_raw):
        try:
            if not isinstance(s, dict):
                raise _FieldError(f"must be an object, got {_show(s)}")
            if "id" not in s or "category_id" not in s:
                raise _FieldError("needs 'id' and 'category_id'")
            seg = Segment(
                _integer(s["id"], "id"),
                _integer(s["category_id"], "category_id"),
                _number(s.get("score", 1.0), "score"),
            )
        except _FieldError as e:
            problems.append(Problem(where, f"segments_info[{j}] is malformed: {e}", i))
            continue
        if seg.id <= 0:
            problems.append(Problem(where, f"segments_info[{j}]: segment id must be > 0 (0 is void)", i))
        elif seg.id >= 256**3:
            problems.append(Problem(where, f"segments_info[{j}]: segment id {seg.id} >= 2**24 (RGB code)", i))
        if seg.id in seg_ids:
            problems.append(Problem(where, f"segments_info[{j}]: duplicate segment id {seg.id}", i))
        if seg.category_id not in categories:
            problems.append(Problem(where, f"segment {seg.id}: unknown category_id {seg.category_id}", i))
        seg_ids.add(seg.id)
        segments.append(seg)

    paths: dict[str, Path | None] = {}
    for key in ("file_path", "depth_file_path", "panoptic_file_path"):
        if key == "panoptic_file_path" and not fr.get(key):
            paths[key] = None  # reported by the image check ("missing panoptic_file_path")
            continue
        try:
            paths[key] = _inside(root, root, fr[key], key)
        except _FieldError as e:
            problems.append(Problem(where, str(e), i))
    if len(paths) < 3:
        return None

    name = fr["file_path"]
    if name in test_names:
        split = "test"
    elif train_set is None or name in train_set:
        split = "train"
    else:
        split = "unused"
    return Frame(
        index=i,
        name=name,
        rgb_path=paths["file_path"],
        depth_path=paths["depth_file_path"],
        panoptic_path=paths["panoptic_file_path"],
        segments=tuple(segments),
        c2w=c2w,
        intrinsics=K,
        split=split,
    )


def _parse_gt(root: Path, n_frames: int, categories: dict[int, Category], problems: list[Problem]):
    gdir = root / GT_DIR
    gpath = gdir / GT_JSON
    if not gpath.exists():
        return None
    where = str(gpath)
    if not gpath.resolve().is_relative_to(root.resolve()):
        problems.append(Problem(where, "leads outside the scene folder (through a symlink)"))
        return None
    try:
        g = json.loads(gpath.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        problems.append(Problem(where, f"unreadable ground truth: {_short(e)}"))
        return None
    if not isinstance(g, dict):
        problems.append(Problem(where, "top level must be a JSON object"))
        return None
    segments: dict[int, int] = {}
    pan: list[Path] = []
    mesh = labels = None
    ok = True
    try:
        segs = g.get("segments", [])
        if not isinstance(segs, list):
            raise _FieldError(f"segments must be a list, got {_show(segs)}")
        for j, s in enumerate(segs):
            if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
                raise _FieldError(f"segments[{j}] must be an object with id and category_id")
            segments[_integer(s["id"], f"segments[{j}].id")] = _integer(
                s["category_id"], f"segments[{j}].category_id"
            )
        frames = g.get("frames", [])
        if not isinstance(frames, list):
            raise _FieldError(f"frames must be a list, got {_show(frames)}")
    except _FieldError as e:
        problems.append(Problem(where, f"unreadable ground truth: {e}"))
        return None
    poses: list[np.ndarray] = []
    for i, f in enumerate(frames):
        try:
            if not isinstance(f, dict) or "panoptic_file_path" not in f:
                raise _FieldError("frame entry must be an object with panoptic_file_path")
            pan.append(_inside(root, gdir, f["panoptic_file_path"], "panoptic_file_path"))
            if "transform_matrix" in f:
                poses.append(_gt_pose(f["transform_matrix"]))
        except _FieldError as e:
            problems.append(Problem(where, str(e), i))
            ok = False
    # True poses are all or nothing: a partial list cannot be matched to the frames by index.
    if ok and poses and len(poses) != len(frames):
        problems.append(
            Problem(
                where, f"transform_matrix (true pose) on {len(poses)} of {len(frames)} GT frames: all or none"
            )
        )
        ok = False
    try:
        if g.get("mesh_path"):
            mesh = _inside(root, gdir, g["mesh_path"], "mesh_path")
        if g.get("mesh_labels_path"):
            labels = _inside(root, gdir, g["mesh_labels_path"], "mesh_labels_path")
    except _FieldError as e:
        problems.append(Problem(where, str(e)))
        ok = False
    if not ok:
        return None
    for sid, cid in segments.items():
        if cid not in categories:
            problems.append(Problem(where, f"GT segment {sid}: unknown category_id {cid}"))
    if pan and len(pan) != n_frames:
        problems.append(Problem(where, f"{len(pan)} GT frames but transforms.json has {n_frames}"))
    for p in (mesh, labels):
        if p is not None and not p.is_file():
            problems.append(Problem(str(p), "GT file named in gt.json is missing"))
    return GroundTruth(gdir, segments, pan, mesh, labels, np.stack(poses) if poses else None)


def _gt_pose(value: Any) -> np.ndarray:
    """A GT frame's ``transform_matrix``: (4, 4) rigid float64, else :class:`_FieldError`."""
    try:
        c2w = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _FieldError(
            f"transform_matrix (true pose) must be a 4x4 number matrix, got {_show(value)}"
        ) from None
    if c2w.shape != (4, 4):
        raise _FieldError(f"transform_matrix (true pose) must be 4x4, got shape {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise _FieldError("transform_matrix (true pose) has non-finite values")
    if not _rigid(c2w):
        raise _FieldError("transform_matrix (true pose) is not rigid (rotation not orthonormal or det != 1)")
    return c2w


# ----------------------------------------------------------------------------- validation


def _check_image(path: Path, what: str, want: tuple[int, int], frame: int, problems: list[Problem]) -> bool:
    """Existence, integrity (CRCs, full decode) and size of one image; True if it can be read further."""
    if not path.is_file():
        problems.append(Problem(str(path), f"missing {what} file", frame))
        return False
    try:
        size = io.verify_image(path)
    except io.ImageError as e:
        problems.append(Problem(str(path), f"unreadable {what} image: {e.reason}", frame))
        return False
    if size != want:
        problems.append(
            Problem(str(path), f"wrong image size {size[0]}x{size[1]}, expected {want[0]}x{want[1]}", frame)
        )
        return False
    return True


def _check_frame_files(scene: Scene, f: Frame, problems: list[Problem]) -> dict[str, Any]:
    """Open the frame's images and check integrity, sizes, depth bit depth and segment ids. Returns stats."""
    stats: dict[str, Any] = {}
    want = (f.intrinsics.width, f.intrinsics.height)

    _check_image(f.rgb_path, "RGB", want, f.index, problems)
    if _check_image(f.depth_path, "depth", want, f.index, problems):
        try:
            d = io.read_depth(f.depth_path, scene.depth_unit_scale)
            valid = d[d > 0]
            stats["depth"] = (float(valid.min()), float(valid.max())) if valid.size else None
        except io.ImageError as e:
            problems.append(Problem(str(f.depth_path), e.reason, f.index))
    if f.panoptic_path is None:
        problems.append(Problem(str(scene.root / TRANSFORMS), "missing panoptic_file_path", f.index))
    elif _check_image(f.panoptic_path, "panoptic", want, f.index, problems):
        try:
            ids = set(np.unique(io.read_panoptic(f.panoptic_path)).tolist()) - {0}
        except io.ImageError as e:
            problems.append(Problem(str(f.panoptic_path), e.reason, f.index))
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


def _check_gt_files(scene: Scene, problems: list[Problem]) -> None:
    """GT panoptic PNGs (integrity, size, RGB mode) and the GT mesh / label pair (loadable, same count)."""
    gt = scene.gt
    assert gt is not None
    sizes = {f.index: (f.intrinsics.width, f.intrinsics.height) for f in scene.frames}
    for i, p in enumerate(gt.panoptic_paths):
        if not p.is_file():
            problems.append(Problem(str(p), "missing GT panoptic file", i))
            continue
        want = sizes.get(i)
        if want is None:  # the frame itself is malformed (already reported): integrity only
            try:
                want = io.verify_image(p)
            except io.ImageError as e:
                problems.append(Problem(str(p), f"unreadable GT panoptic image: {e.reason}", i))
                continue
        if _check_image(p, "GT panoptic", want, i, problems):
            try:
                io.read_panoptic(p)
            except io.ImageError as e:
                problems.append(Problem(str(p), e.reason, i))
    n_labels = None
    if gt.mesh_labels_path is not None and gt.mesh_labels_path.is_file():
        try:
            lab = np.load(gt.mesh_labels_path, mmap_mode="r", allow_pickle=False)
            if lab.ndim != 1 or lab.dtype.kind not in "iu":
                raise ValueError(f"expected a 1-D integer array, got {lab.dtype} of shape {lab.shape}")
            n_labels = len(lab)
        except Exception as e:  # np.load raises many types on corrupt headers; all mean "unreadable"
            if isinstance(e, MemoryError):
                raise
            problems.append(Problem(str(gt.mesh_labels_path), f"unreadable GT mesh labels: {_short(e)}"))
    if gt.mesh_path is not None and gt.mesh_path.is_file():
        try:
            if gt.mesh_path.suffix.lower() == ".ply":  # plyfile: no mesh processing, fast
                from plyfile import PlyData

                n_vertices = len(PlyData.read(str(gt.mesh_path))["vertex"].data)
            else:
                n_vertices = len(gt.mesh().vertices)
        except Exception as e:  # the loaders raise PlyParseError, ValueError, KeyError, struct errors ...
            if isinstance(e, MemoryError):
                raise
            problems.append(Problem(str(gt.mesh_path), f"unreadable GT mesh: {_short(e)}"))
        else:
            if n_labels is not None and n_labels != n_vertices:
                problems.append(
                    Problem(
                        str(gt.mesh_labels_path),
                        f"{n_labels} labels but the GT mesh has {n_vertices} vertices",
                    )
                )


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
            _check_gt_files(scene, problems)
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
