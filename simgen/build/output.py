"""The build output layout: the contract between builders (fusion, neural) and export / serve / eval.

A build folder holds (see docs/build-output.md):

* ``panoptic_mesh.ply`` -- binary PLY, world frame of the scene's ``transforms.json`` (metres).
  Vertex properties: ``x y z`` (float32), ``red green blue`` (uint8), ``semantic`` (int32 category id,
  -1 = unknown), ``instance`` (int32 global instance id, > 0 for things, 0 for stuff and unknown).
  Faces: ``vertex_indices`` (triangles).
* ``instances.json`` -- ``{"instances": [InstanceRecord...], "categories": [...]}``.
* ``build.json`` -- method, config, timings and counters of the build.

Read with :func:`read_panoptic_mesh` / :func:`read_instances`; write with the matching writers
(atomic: temporary file, then rename).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData, PlyElement

from simgen.data import io

MESH_FILE = "panoptic_mesh.ply"
INSTANCES_FILE = "instances.json"
BUILD_FILE = "build.json"


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


def write_panoptic_mesh(path: str | Path, mesh: PanopticMesh) -> None:
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
    f = np.empty(len(mesh.faces), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = mesh.faces
    ply = PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], text=False)
    with io.atomic_path(path) as tmp:
        ply.write(str(tmp))


def read_panoptic_mesh(path: str | Path) -> PanopticMesh:
    """Read ``panoptic_mesh.ply``; raises ValueError naming the file if a property is missing."""
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    names = set(v.dtype.names)
    missing = {"x", "y", "z", "semantic", "instance"} - names
    if missing:
        raise ValueError(f"{path}: vertex properties {sorted(missing)} missing (not a simgen panoptic mesh)")
    faces = np.stack(ply["face"].data["vertex_indices"]) if len(ply["face"].data) else np.zeros((0, 3))
    colors = (
        np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if {"red", "green", "blue"} <= names
        else np.full((len(v), 3), 200)
    )
    return PanopticMesh(
        np.stack([v["x"], v["y"], v["z"]], axis=1), faces, colors, v["semantic"], v["instance"]
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
