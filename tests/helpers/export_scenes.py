"""Small labelled scenes for the export tests, built from trimesh primitives (world z up, floor z = 0).

Used by the tests/test_export*.py files; tests/test_export.py checks the scenes are what they claim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from simgen.data.scene import Category
from simgen.folders import PanopticMesh, instance_records, write_instances, write_panoptic_mesh

CATEGORIES = {
    1: Category(1, "floor", False),
    2: Category(2, "wall", False),
    3: Category(3, "ceiling", False),
    10: Category(10, "table", True),
    11: Category(11, "cabinet", True),
    12: Category(12, "bin", True),
}

ROOM = 4.0  # room spans [0, ROOM] in x and y
WALL_X = ROOM  # wall plane x = ROOM (faces the room), wall plane y = ROOM
HEIGHT = 2.5
# Small but real export settings for the test room (few hulls, small textures, no MuJoCo checks: those
# have their own tests in test_export_physics.py).
FAST_EXPORT = dict(
    max_hulls=6, texture_size=128, coacd_resolution=500, face_budget=5000, quiet=True, physics=False
)


def _grid(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """A (nx+1)*(ny+1) vertex grid on [0, 1]^2 as (V, 2) and its (F, 3) triangles."""
    u, v = np.meshgrid(np.linspace(0, 1, nx + 1), np.linspace(0, 1, ny + 1), indexing="ij")
    uv = np.stack([u.ravel(), v.ravel()], 1)
    idx = np.arange((nx + 1) * (ny + 1)).reshape(nx + 1, ny + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return uv, faces


def plane(origin, e1, e2, n=16) -> trimesh.Trimesh:
    """An open rectangle origin + s*e1 + t*e2 (s, t in [0, 1]) with n x n cells."""
    uv, faces = _grid(n, n)
    v = np.asarray(origin) + uv[:, :1] * np.asarray(e1) + uv[:, 1:] * np.asarray(e2)
    return trimesh.Trimesh(v, faces, process=False)


def table(centre_xy, size=(0.8, 0.6, 0.7), top=0.04, leg=0.05) -> trimesh.Trimesh:
    """Top + 4 legs, concatenated (not a clean manifold union): a concave object for CoACD."""
    sx, sy, h = size
    parts = [
        trimesh.creation.box([sx, sy, top], trimesh.transformations.translation_matrix([0, 0, h - top / 2]))
    ]
    for dx in (-1, 1):
        for dy in (-1, 1):
            c = [dx * (sx / 2 - leg), dy * (sy / 2 - leg), (h - top) / 2]
            parts.append(
                trimesh.creation.box([leg, leg, h - top], trimesh.transformations.translation_matrix(c))
            )
    m = trimesh.util.concatenate(parts)
    m.apply_translation([centre_xy[0], centre_xy[1], 0])
    return trimesh.Trimesh(m.vertices, m.faces, process=False)


def room_parts() -> list[tuple[trimesh.Trimesh, int, int, tuple[int, int, int]]]:
    """[(mesh, semantic id, instance id, rgb)] of the test room."""
    floor = plane([0, 0, 0], [ROOM, 0, 0], [0, ROOM, 0])
    wall_x = plane([ROOM, 0, 0], [0, ROOM, 0], [0, 0, HEIGHT])
    wall_y = plane([0, ROOM, 0], [0, 0, HEIGHT], [ROOM, 0, 0])
    ceiling = plane([0, 0, HEIGHT], [0, ROOM, 0], [ROOM, 0, 0], n=4)
    cab = trimesh.creation.box([0.5, 0.4, 0.9], trimesh.transformations.translation_matrix([1.0, 3.0, 0.45]))
    cab = cab.subdivide().subdivide()
    bin_ = trimesh.creation.cylinder(
        0.2, 0.5, sections=24, transform=trimesh.transformations.translation_matrix([3.0, 1.0, 0.25])
    )
    return [
        (floor, 1, 0, (150, 120, 90)),
        (wall_x, 2, 0, (220, 220, 210)),
        (wall_y, 2, 0, (200, 210, 220)),
        (ceiling, 3, 0, (250, 250, 250)),
        (table((2.0, 2.0)), 10, 1, (120, 70, 30)),
        (cab, 11, 2, (60, 90, 160)),
        (bin_, 12, 3, (30, 160, 60)),
    ]


def holed(mesh: trimesh.Trimesh, lo, hi) -> trimesh.Trimesh:
    """``mesh`` without the faces whose centre lies in the box [lo, hi] (a region the scan never saw)."""
    c = mesh.triangles_center
    keep = ~((c >= lo) & (c <= hi)).all(1)
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)


def holed_room() -> list:
    """Floor and four walls with unseen patches: 1 x 1 m of floor, the top 0.5 m of two walls, a 1 x 1.2 m
    corner of a third."""
    floor = holed(plane([0, 0, 0], [ROOM, 0, 0], [0, ROOM, 0], n=40), [1, 1, -1], [2, 2, 1])
    walls = [
        holed(plane([ROOM, 0, 0], [0, ROOM, 0], [0, 0, HEIGHT], n=40), [-9, -9, 2.0], [9, 9, 9]),
        holed(plane([0, ROOM, 0], [0, 0, HEIGHT], [ROOM, 0, 0], n=40), [-9, -9, 2.0], [9, 9, 9]),
        holed(plane([0, 0, 0], [0, 0, HEIGHT], [0, ROOM, 0], n=40), [-1, 3.0, -1], [1, 9, 1.2]),
        plane([0, 0, 0], [ROOM, 0, 0], [0, 0, HEIGHT], n=40),
    ]
    parts = [(floor, 1, 0, (150, 120, 90))] + [(w, 2, 0, (210, 210, 200)) for w in walls]
    box = trimesh.creation.box([0.5, 0.5, 0.5], trimesh.transformations.translation_matrix([2.5, 2.5, 0.25]))
    return parts + [(box.subdivide(), 11, 1, (60, 90, 160))]


def make_mesh(parts=None, transform: np.ndarray | None = None) -> PanopticMesh:
    parts = room_parts() if parts is None else parts
    vs, fs, cs, ss, is_ = [], [], [], [], []
    off = 0
    for m, sem, inst, rgb in parts:
        v = np.asarray(m.vertices, np.float64)
        # Vertex colours vary over the object so texture baking has something to carry.
        shade = (0.75 + 0.25 * np.cos(7 * v[:, :1]) * np.cos(5 * v[:, 2:3])) * np.asarray(rgb)
        vs.append(v)
        fs.append(np.asarray(m.faces) + off)
        cs.append(np.clip(shade, 0, 255).astype(np.uint8))
        ss.append(np.full(len(v), sem))
        is_.append(np.full(len(v), inst))
        off += len(v)
    v = np.concatenate(vs)
    if transform is not None:
        v = v @ transform[:3, :3].T + transform[:3, 3]
    return PanopticMesh(v, np.concatenate(fs), np.concatenate(cs), np.concatenate(ss), np.concatenate(is_))


def write_build(build_dir: Path, mesh: PanopticMesh | None = None, categories=None) -> Path:
    mesh = make_mesh() if mesh is None else mesh
    categories = CATEGORIES if categories is None else categories
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    write_panoptic_mesh(build_dir / "panoptic_mesh.ply", mesh)
    write_instances(build_dir / "instances.json", instance_records(mesh, categories), categories)
    return build_dir
