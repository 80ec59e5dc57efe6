"""Every file name and folder contract of simgen, in one place (torch-free).

A **build folder** (``simgen build``; docs/build-output.md) holds the reconstruction:

* ``panoptic_mesh.ply`` -- binary PLY, world frame of the scene's ``transforms.json`` (metres).
  Vertex properties: ``x y z`` (float32), ``red green blue`` (uint8), ``semantic`` (int32 category id,
  -1 = unknown), ``instance`` (int32 global instance id, > 0 for things, 0 for stuff and unknown).
  Faces: ``vertex_indices`` (triangles).
* ``instances.json`` -- ``{"instances": [InstanceRecord...], "categories": [...]}``.
* ``build.json`` -- the build record (:class:`BuildRecord` fields: id, simgen version, absolute scene
  path, method, config, timings, counters; ``gaussians`` once the appearance stage ran). Written last by
  the reconstruction: its presence marks a complete reconstruction.
* ``gaussians.ply`` (+ ``gaussians_labels.npz``, ``gaussians_ckpt.pt``) -- the 3D Gaussian appearance;
  the PLY carries the id of the build it was trained on (a PLY comment), so nothing pairs it with
  another build's mesh.
* method files: ``checkpoint.pt``, ``train_log.jsonl``, ``training.png`` (neural).

An **export folder** (``simgen export``, by default the build folder itself; docs/export.md) holds
``export.json`` (the export record; ``build_dir`` is the build folder *relative to the export folder*),
``alignment.json`` (``world_from_scene``), ``panoptic.json``, ``README.md``, ``models/``, ``worlds/``,
``mjcf/``, with ``--fuel`` ``fuel/<model>.zip``, and, when floor / walls were completed, ``stuff_fill.ply``
(:func:`write_stuff_fill`: the completed surfaces in the export's world frame, so the render server draws
what the Gazebo visuals show). A model folder ``models/<name>/`` holds ``model.config``, ``model.sdf``,
``meshes/`` and ``thumbnails/<k>.png``. An **eval folder** ``eval/`` holds ``metrics.json``, ``metrics.md``
and ``report/``.

Writers are atomic (temporary file, then rename); readers raise :class:`FolderError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData, PlyElement, PlyElementParseError

from simgen.data import io

# build folder
MESH_FILE = "panoptic_mesh.ply"
INSTANCES_FILE = "instances.json"
BUILD_FILE = "build.json"
GAUSSIANS_FILE = "gaussians.ply"
GAUSSIAN_LABELS_FILE = "gaussians_labels.npz"
GAUSSIAN_CHECKPOINT_FILE = "gaussians_ckpt.pt"
NEURAL_CHECKPOINT_FILE = "checkpoint.pt"
NEURAL_LOG_FILE = "train_log.jsonl"
NEURAL_PLOT_FILE = "training.png"
# export folder
EXPORT_FILE = "export.json"
ALIGNMENT_FILE = "alignment.json"
PANOPTIC_FILE = "panoptic.json"
EXPORT_README = "README.md"
MODELS_DIR = "models"
WORLDS_DIR = "worlds"
MJCF_DIR = "mjcf"
FUEL_DIR = "fuel"  # ``simgen export --fuel``: one <model>.zip per model, ready to upload to Gazebo Fuel
# model folder (OUT/models/<name>/): Gazebo's model layout, which Gazebo Fuel also expects
MODEL_CONFIG_FILE = "model.config"
MODEL_SDF_FILE = "model.sdf"
MODEL_MESHES_DIR = "meshes"
MODEL_MATERIALS_DIR = "materials"
MODEL_VISUAL_FILE = "meshes/visual.obj"  # with visual.mtl and the baked texture visual.png beside it
MODEL_THUMBNAILS_DIR = "thumbnails"  # <k>.png, k = 1.. (Fuel shows them on the model's page)
STUFF_FILL_FILE = "stuff_fill.ply"
# eval folder
EVAL_DIR = "eval"
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
REPORT_DIR = "report"

#: what ``simgen export`` owns in its output folder (replaced together, never anything else)
EXPORT_ENTRIES = (
    MODELS_DIR,
    WORLDS_DIR,
    MJCF_DIR,
    FUEL_DIR,
    PANOPTIC_FILE,
    ALIGNMENT_FILE,
    EXPORT_FILE,
    EXPORT_README,
    STUFF_FILL_FILE,
)
#: what the reconstruction stage owns in a build folder
RECON_ENTRIES = (
    MESH_FILE,
    INSTANCES_FILE,
    BUILD_FILE,
    NEURAL_CHECKPOINT_FILE,
    NEURAL_LOG_FILE,
    NEURAL_PLOT_FILE,
)
GAUSSIAN_ENTRIES = (GAUSSIANS_FILE, GAUSSIAN_LABELS_FILE, GAUSSIAN_CHECKPOINT_FILE)
#: every stage output a build folder can hold: a new build removes them all before it writes
BUILD_ENTRIES = (*RECON_ENTRIES, *GAUSSIAN_ENTRIES, *EXPORT_ENTRIES, EVAL_DIR)

BUILD_ID_COMMENT = "simgen_build_id"  # PLY comment tying gaussians.ply to its build


class FolderError(ValueError):
    """A build / export folder is missing a file or holds an unreadable one (the message names it)."""


def new_build_record(method: str, scene_dir: str | Path) -> dict[str, Any]:
    """The fields every build record starts with: a fresh build id, the simgen version, the method and
    the scene folder as an absolute path (so the record means the same from any working directory)."""
    from simgen import __version__

    return {
        "id": uuid.uuid4().hex,
        "simgen_version": __version__,
        "method": method,
        "scene": str(Path(scene_dir).resolve()),
    }


def fused_poses_record(poses: dict[int, np.ndarray]) -> dict[str, Any]:
    """build.json's ``poses``: ``{"frames": [scene frame index], "transform_matrix": [(4, 4) list]}`` from
    ``{frame index: (4, 4) camera-to-world with OpenCV axes}``, stored with OpenGL axes (the convention of
    transforms.json), for builders that fuse frames at poses other than the scene's."""
    frames = sorted(poses)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV -> OpenGL camera axes (and back): flip y and z
    return {
        "frames": frames,
        "transform_matrix": [np.round(np.asarray(poses[i], np.float64) @ flip, 8).tolist() for i in frames],
    }


def read_fused_poses(build_dir: str | Path, n_frames: int) -> tuple[list[int], np.ndarray] | None:
    """The build's own poses from ``build_dir/build.json`` (``poses``, see :func:`fused_poses_record`):
    ``(frame indices, (M, 4, 4) camera-to-world with OpenGL axes)``, or None when the build fused the
    scene's stored poses (no ``poses`` entry, or no build.json). :class:`FolderError` names the file when
    the entry is malformed or names a frame outside ``[0, n_frames)``."""
    path = Path(build_dir) / BUILD_FILE
    if not path.is_file():
        return None
    entry = read_json(path).get("poses")
    if entry is None:
        return None
    try:
        frames = [int(i) for i in entry["frames"]]
        c2w = np.asarray(entry["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise FolderError(f"{path}: malformed 'poses' ({type(e).__name__}: {e})") from None
    if c2w.shape != (len(frames), 4, 4) or not np.all(np.isfinite(c2w)):
        raise FolderError(f"{path}: 'poses.transform_matrix' must be {len(frames)} finite 4x4 matrices")
    if any(i < 0 or i >= n_frames for i in frames) or len(set(frames)) != len(frames):
        raise FolderError(f"{path}: 'poses.frames' must be distinct frame indices in [0, {n_frames})")
    return frames, c2w


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`FolderError` naming the file when missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FolderError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as e:
        raise FolderError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise FolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_build_record(build_dir: str | Path) -> dict[str, Any]:
    """``build_dir/build.json`` (raises :class:`FolderError` naming the file)."""
    return read_json(Path(build_dir) / BUILD_FILE)


def build_id(build_dir: str | Path) -> str | None:
    """The id of the build in ``build_dir`` (None for a build record without one, or none at all)."""
    try:
        value = read_build_record(build_dir).get("id")
    except FolderError:
        return None
    return str(value) if value else None


def scene_of_build(build_dir: str | Path) -> tuple[Path | None, str]:
    """The scene folder recorded in ``build_dir/build.json`` (absolute) if it still exists, else None and
    the reason naming the file or folder."""
    build_dir = Path(build_dir)
    try:
        record = read_build_record(build_dir)
    except FolderError as e:
        return None, f"cannot read the build record: {e}"
    scene = record.get("scene")
    if not scene:
        return None, f"{build_dir / BUILD_FILE}: no 'scene' entry naming the scene folder"
    path = Path(str(scene))
    # records written before simgen 0.2 hold the path as typed: relative to the build's working directory
    path = path if path.is_absolute() else Path.cwd() / path
    if (path / "transforms.json").is_file():
        return path, ""
    return None, f"scene folder {path} (from {build_dir / BUILD_FILE}) is missing"


def clear_build_outputs(build_dir: str | Path, names: Sequence[str] = BUILD_ENTRIES) -> list[str]:
    """Remove the stage outputs ``names`` (default: all) of an earlier build from ``build_dir``; returns
    the names removed.

    A build replaces all stage outputs, so a mesh never sits beside another build's Gaussians, export
    or metrics. Files that are not simgen's are left alone."""
    build_dir = Path(build_dir)
    removed = []
    for name in names:
        if name not in BUILD_ENTRIES:
            raise ValueError(f"{name!r} is not a simgen stage output")
        p = build_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def existing_build_outputs(build_dir: str | Path) -> list[str]:
    """The stage outputs of an earlier build present in ``build_dir``."""
    return [n for n in BUILD_ENTRIES if (Path(build_dir) / n).exists()]


@dataclass(frozen=True)
class ExportRecord:
    """What ``export.json`` says about an export folder (paths resolved, absolute)."""

    export_dir: Path
    scene: str  # the world's name: worlds/<scene>.sdf, mjcf/<scene>.xml
    build_dir: Path
    data: dict[str, Any]

    @property
    def world_file(self) -> Path:
        return self.export_dir / WORLDS_DIR / f"{self.scene}.sdf"

    @property
    def mjcf_file(self) -> Path:
        return self.export_dir / MJCF_DIR / f"{self.scene}.xml"


def export_record_fields(export_dir: str | Path, build_dir: str | Path) -> dict[str, str]:
    """The ``export.json`` entries that locate the build: ``build_dir`` relative to the export folder
    (so both folders can move together), and the absolute paths at export time, for people."""
    export_dir, build_dir = Path(export_dir).resolve(), Path(build_dir).resolve()
    return {
        "build_dir": os.path.relpath(build_dir, export_dir),
        "build_dir_absolute": str(build_dir),
        "out_dir": str(export_dir),
    }


def read_export_record(export_dir: str | Path) -> ExportRecord:
    """``export_dir/export.json`` with its build folder resolved (raises :class:`FolderError`)."""
    export_dir = Path(export_dir).resolve()
    path = export_dir / EXPORT_FILE
    data = read_json(path)
    scene = data.get("scene")
    if not isinstance(scene, str) or not scene:
        raise FolderError(f"{path}: no readable 'scene' (run simgen export again)")
    raw = data.get("build_dir")
    if not isinstance(raw, str) or not raw:
        raise FolderError(f"{path}: no readable 'build_dir' (run simgen export again)")
    # Relative to the export folder; records of simgen 0.1 held the path as typed (absolute or relative
    # to the working directory of the export), which only the absolute form resolves without guessing.
    build_dir = (export_dir / raw).resolve()
    return ExportRecord(export_dir, scene, build_dir, data)


def mesh_folder(folder: str | Path) -> Path:
    """The build folder behind ``folder``: ``folder`` itself when it holds ``panoptic_mesh.ply`` (a build,
    or an export written into its build folder, the default), else the build its ``export.json`` records."""
    folder = Path(folder)
    if (folder / MESH_FILE).is_file():
        return folder
    if (folder / EXPORT_FILE).is_file():
        rec = read_export_record(folder)
        if (rec.build_dir / MESH_FILE).is_file():
            return rec.build_dir
        raise FolderError(
            f"{folder / MESH_FILE}: missing, and the build folder {rec.build_dir} named in "
            f"{folder / EXPORT_FILE} has no {MESH_FILE}; serve the build folder, or export into it"
        )
    raise FolderError(f"{folder / MESH_FILE}: missing (not a build folder or an export of one)")


def read_alignment(export_dir: str | Path) -> np.ndarray | None:
    """``world_from_scene`` (4, 4) float64 from ``export_dir/alignment.json``; None when there is none."""
    path = Path(export_dir) / ALIGNMENT_FILE
    if not path.exists():
        return None
    data = read_json(path)
    try:
        T = np.asarray(data["world_from_scene"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise FolderError(f"{path}: no readable 'world_from_scene' 4x4 matrix ({e})") from None
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise FolderError(f"{path}: 'world_from_scene' must be a finite 4x4 matrix, got shape {T.shape}")
    return T


@dataclass
class PanopticMesh:
    """A triangle mesh with per-vertex colour and panoptic labels (plain arrays)."""

    vertices: np.ndarray  # (V, 3) float32, metres, scene world frame
    faces: np.ndarray  # (F, 3) int32
    colors: np.ndarray  # (V, 3) uint8
    semantic: np.ndarray  # (V,) int32 category id, -1 = unknown
    instance: np.ndarray  # (V,) int32 instance id, > 0 things, 0 stuff / unknown

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int32).reshape(-1, 3)
        n = len(self.vertices)
        self.colors = np.asarray(self.colors, dtype=np.uint8).reshape(n, 3)
        self.semantic = np.asarray(self.semantic, dtype=np.int32).reshape(n)
        self.instance = np.asarray(self.instance, dtype=np.int32).reshape(n)

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` with vertex colours (vertex order kept)."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=self.colors, process=False)


@dataclass
class InstanceRecord:
    id: int
    category_id: int
    category_name: str
    isthing: bool
    vertex_count: int
    bbox_min: list[float]
    bbox_max: list[float]
    centroid: list[float]
    frames_observed: list[int] = field(default_factory=list)


def _panoptic_ply(
    mesh: PanopticMesh, face_flags: dict[str, np.ndarray] | None = None, comments: Sequence[str] = ()
) -> PlyData:
    v = np.empty(
        len(mesh.vertices),
        dtype=[
            ("x", "f4"),
            ("y", "f4"),
            ("z", "f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("semantic", "i4"),
            ("instance", "i4"),
        ],
    )
    v["x"], v["y"], v["z"] = mesh.vertices.T
    v["red"], v["green"], v["blue"] = mesh.colors.T
    v["semantic"], v["instance"] = mesh.semantic, mesh.instance
    flags = face_flags or {}
    f = np.empty(len(mesh.faces), dtype=[("vertex_indices", "i4", (3,))] + [(k, "u1") for k in flags])
    f["vertex_indices"] = mesh.faces
    for k, a in flags.items():
        f[k] = np.asarray(a, dtype=np.uint8).reshape(len(mesh.faces))
    return PlyData(
        [PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")],
        text=False,
        comments=list(comments),
    )


def write_panoptic_mesh(path: str | Path, mesh: PanopticMesh) -> None:
    ply = _panoptic_ply(mesh)
    with io.atomic_path(path) as tmp:
        ply.write(str(tmp))


def write_stuff_fill(
    path: str | Path, mesh: PanopticMesh, filled: np.ndarray, build: str | None = None
) -> None:
    """Write ``stuff_fill.ply``: the completed floor / wall surfaces of an export (simgen.export.stuff).

    A panoptic mesh PLY (:func:`write_panoptic_mesh`'s vertex properties; vertices in the export's world
    frame, metres, z up, floor z = 0; ``semantic`` the stuff part's category id, ``instance`` 0) whose
    faces carry one more property, ``filled`` (uchar, 1 = in a cell the scan never saw, 0 = behind scanned
    surface). ``build``: the id of the build the export was cut from, kept as a PLY comment
    (``BUILD_ID_COMMENT``) so the server never draws it into another build's mesh.
    """
    comments = [f"{BUILD_ID_COMMENT} {build}"] if build else []
    ply = _panoptic_ply(mesh, {"filled": np.asarray(filled, bool)}, comments)
    with io.atomic_path(path) as tmp:
        ply.write(str(tmp))


def read_stuff_fill(path: str | Path) -> tuple[PanopticMesh, np.ndarray]:
    """``stuff_fill.ply`` as (mesh in the export's world frame, ``filled`` ``(F,)`` bool per face); raises
    :class:`FolderError` naming the file when it is unreadable or not a fill file."""
    path = Path(path)
    try:
        ply = _read_triangles(path)
        mesh = _mesh_from_ply(ply, path)
    except Exception as e:  # plyfile raises many types on corrupt input
        raise FolderError(f"{path}: cannot read ({e})") from None
    names = ply["face"].data.dtype.names or ()
    if "filled" not in names:
        raise FolderError(f"{path}: faces have no 'filled' property (not a simgen stuff fill file)")
    if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices)):
        raise FolderError(f"{path}: face indices outside the {len(mesh.vertices)} vertices")
    if (mesh.instance != 0).any() or (mesh.semantic < 0).any():
        raise FolderError(f"{path}: fill vertices must be stuff (instance 0) with a category (semantic >= 0)")
    return mesh, np.asarray(ply["face"].data["filled"], dtype=bool)


def read_panoptic_mesh(path: str | Path) -> PanopticMesh:
    """Read ``panoptic_mesh.ply``; raises ValueError naming the file if a property is missing."""
    return _mesh_from_ply(_read_triangles(path), path)


def _read_triangles(path: str | Path) -> PlyData:
    """A PLY of triangles, its face block memory-mapped when every face is a triangle."""
    try:
        # Told the list length, plyfile memory-maps the face block in one go; otherwise it parses it
        # face by face in Python (seconds for a 200 k-face mesh). A file whose faces are not all
        # triangles is refused by that fast path and read the slow way.
        return PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except PlyElementParseError:
        return PlyData.read(str(path))


def _mesh_from_ply(ply: PlyData, path: str | Path) -> PanopticMesh:
    v = ply["vertex"].data
    names = set(v.dtype.names)
    missing = {"x", "y", "z", "semantic", "instance"} - names
    if missing:
        raise ValueError(f"{path}: vertex properties {sorted(missing)} missing (not a simgen panoptic mesh)")
    face_data = ply["face"].data["vertex_indices"]
    if not len(face_data):
        faces = np.zeros((0, 3), np.int64)
    elif face_data.dtype == object:
        faces = np.stack(face_data)
    else:
        faces = np.array(face_data)  # a copy: nothing keeps the memory map (and the file) open
    colors = (
        np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if {"red", "green", "blue"} <= names
        else np.full((len(v), 3), 200)
    )
    return PanopticMesh(
        np.stack([v["x"], v["y"], v["z"]], axis=1),
        faces,
        colors,
        np.array(v["semantic"]),
        np.array(v["instance"]),
    )


def instance_records(
    mesh: PanopticMesh, categories: dict[int, Any], frames_observed=None
) -> list[InstanceRecord]:
    """Per-instance summary of a panoptic mesh. ``categories`` maps id -> Category (name, isthing)."""
    records = []
    frames_observed = frames_observed or {}
    for iid in np.unique(mesh.instance):
        if iid <= 0:
            continue
        sel = mesh.instance == iid
        pts = mesh.vertices[sel].astype(np.float64)  # float64: rounded values print as written
        sem = mesh.semantic[sel]
        sem = sem[sem >= 0]
        cid = int(np.bincount(sem).argmax()) if sem.size else -1
        cat = categories.get(cid)
        records.append(
            InstanceRecord(
                id=int(iid),
                category_id=cid,
                category_name=cat.name if cat else "unknown",
                isthing=bool(cat.isthing) if cat else True,
                vertex_count=int(sel.sum()),
                bbox_min=pts.min(0).round(4).tolist(),
                bbox_max=pts.max(0).round(4).tolist(),
                centroid=pts.mean(0).round(4).tolist(),
                frames_observed=sorted(int(f) for f in frames_observed.get(int(iid), [])),
            )
        )
    return records


def write_instances(path: str | Path, records: list[InstanceRecord], categories: dict[int, Any]) -> None:
    io.write_json(
        path,
        {
            "instances": [asdict(r) for r in records],
            "categories": [
                {"id": c.id, "name": c.name, "isthing": int(c.isthing)}
                for c in sorted(categories.values(), key=lambda c: c.id)
            ],
        },
    )


def read_instances(path: str | Path) -> tuple[list[InstanceRecord], list[dict]]:
    data = json.loads(Path(path).read_text())
    return [InstanceRecord(**r) for r in data["instances"]], data.get("categories", [])


def ply_build_id(path: str | Path) -> str | None:
    """The build id in a Gaussian PLY's header (written by :func:`save_ply`), None if it has none.
    Reads the header only."""
    with open(path, "rb") as f:
        for _ in range(1000):  # a PLY header is a few dozen lines; stop on anything else
            line = f.readline()
            if not line or line.startswith(b"end_header"):
                break
            words = line.split()
            if len(words) == 3 and words[0] == b"comment" and words[1] == BUILD_ID_COMMENT.encode():
                return words[2].decode("ascii", "replace")
    return None
