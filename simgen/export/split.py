"""Split a panoptic mesh into parts: one per thing instance, one per stuff class."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from simgen.folders import InstanceRecord, PanopticMesh

FLOOR_WORDS = ("floor", "ground")
CEILING_WORDS = ("ceiling",)


@dataclass
class Part:
    """One exported object. Arrays in the aligned world frame (metres, z up, floor at z = 0)."""

    name: str  # unique model name
    kind: str  # "thing", "floor" or "stuff"
    category_id: int
    category_name: str
    instance_id: int  # > 0 for things, 0 for stuff
    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (N, 3) uint8
    warnings: list[str] = field(default_factory=list)


def is_floor(name: str) -> bool:
    return any(w in name.lower() for w in FLOOR_WORDS)


def is_wall(name: str) -> bool:
    return "wall" in name.lower()  # COCO's wall-brick, wall-stone, wall-other-merged, ScanNet's wall ...


def is_ceiling(name: str) -> bool:
    return any(w in name.lower() for w in CEILING_WORDS)


def sanitize(name: str) -> str:
    """A model / file name: lower case letters, digits and underscores."""
    s = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return s or "object"


def face_labels(labels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-face label from per-vertex labels (V,) by majority of the 3 corners (first corner on a tie).

    Returns (F,) of the labels' dtype.
    """
    a, b, c = labels[faces[:, 0]], labels[faces[:, 1]], labels[faces[:, 2]]
    return np.where((b == c) & (a != b), b, a)


def submesh(vertices, faces, colors, face_sel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces ``face_sel`` (F,) bool of a mesh with their used vertices, reindexed."""
    f = faces[face_sel]
    used, inverse = np.unique(f.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64), colors[used]


def split_parts(
    mesh: PanopticMesh,
    vertices: np.ndarray,
    categories: dict[int, dict],
    records: list[InstanceRecord],
    keep_ceiling: bool = False,
) -> tuple[list[Part], list[str]]:
    """Split into parts (things by instance id, stuff by category id).

    Args:
        mesh: the build's panoptic mesh (labels and colours are read from it).
        vertices: (V, 3) float64 aligned vertices (replace ``mesh.vertices``).
        categories: {category id: {"name", "isthing"}}.
        records: instances.json records; an instance listed there without faces in the mesh becomes a
            warning (and, if it has vertices, a part without faces that export turns into a convex hull).
    Returns:
        (parts, warnings) -- parts sorted things first by instance id, then stuff by category id.
    """
    faces = mesh.faces.astype(np.int64)
    inst_f = face_labels(mesh.instance, faces)
    sem_f = face_labels(mesh.semantic, faces)
    parts: list[Part] = []
    warnings: list[str] = []
    used_names: set[str] = set()

    def unique(name: str) -> str:
        base, k = sanitize(name), 1
        out = base
        while out in used_names:
            k += 1
            out = f"{base}_{k}"
        used_names.add(out)
        return out

    rec_by_id = {r.id: r for r in records}
    thing_ids = sorted(set(np.unique(mesh.instance[mesh.instance > 0]).tolist()) | set(rec_by_id))
    for iid in thing_ids:
        sel = inst_f == iid
        rec = rec_by_id.get(iid)
        if rec is not None:
            cid, cname = rec.category_id, rec.category_name
        else:
            sem = mesh.semantic[mesh.instance == iid]
            sem = sem[sem >= 0]
            cid = int(np.bincount(sem).argmax()) if sem.size else -1
            cname = categories.get(cid, {}).get("name", "unknown")
        name = unique(f"{cname}_{iid}")
        if sel.any():
            v, f, c = submesh(vertices, faces, mesh.colors, sel)
            parts.append(Part(name, "thing", cid, cname, int(iid), v.astype(np.float64), f, c))
            continue
        vsel = mesh.instance == iid
        msg = f"{name}: instance {iid} has no faces in the mesh"
        if vsel.sum() >= 4:
            parts.append(
                Part(
                    name,
                    "thing",
                    cid,
                    cname,
                    int(iid),
                    vertices[vsel].astype(np.float64),
                    np.zeros((0, 3), np.int64),
                    mesh.colors[vsel],
                    [msg + f" ({int(vsel.sum())} vertices): using their convex hull"],
                )
            )
        else:
            used_names.discard(name)
            warnings.append(msg + f" and {int(vsel.sum())} vertices: skipped")

    stuff_sel = inst_f <= 0
    for cid in np.unique(sem_f[stuff_sel]):
        cid = int(cid)
        cat = categories.get(cid)
        if cid < 0 or cat is None:
            n = int((stuff_sel & (sem_f == cid)).sum())
            warnings.append(f"{n} faces of unknown category {cid} without instance: left out")
            continue
        if cat.get("isthing"):
            n = int((stuff_sel & (sem_f == cid)).sum())
            warnings.append(f"{n} faces of thing class {cat['name']!r} without an instance id: left out")
            continue
        if is_ceiling(cat["name"]) and not keep_ceiling:
            continue
        v, f, c = submesh(vertices, faces, mesh.colors, stuff_sel & (sem_f == cid))
        kind = "floor" if is_floor(cat["name"]) else "stuff"
        parts.append(Part(unique(cat["name"]), kind, cid, cat["name"], 0, v.astype(np.float64), f, c))
    return parts, warnings
