"""A labelled box scene with exact geometry for the render-server and simulator tests (z up, metres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from simgen.data.camera import Intrinsics
from simgen.data.io import write_json
from simgen.data.scene import Category
from simgen.folders import PanopticMesh, instance_records, write_instances, write_panoptic_mesh

CATEGORIES = {1: Category(1, "floor", False), 2: Category(2, "box", True), 3: Category(3, "wall", False)}


BOX1 = ((2.0, 0.0, 0.5), (1.0, 1.0, 1.0))  # centre, extents: straight ahead of a camera at the origin


BOX2 = ((0.0, 2.5, 0.4), (0.8, 0.8, 0.8))


def _part(mesh: trimesh.Trimesh, color, semantic: int, instance: int) -> PanopticMesh:
    n = len(mesh.vertices)
    return PanopticMesh(
        mesh.vertices, mesh.faces, np.tile(color, (n, 1)), np.full(n, semantic), np.full(n, instance)
    )


def scene_mesh() -> PanopticMesh:
    """Floor z = 0 (6 x 6 m, stuff 1), wall x = -3 (stuff 3), box 1 and box 2 (thing 2, instances 1, 2)."""
    floor = trimesh.creation.box(
        extents=(6, 6, 0.02), transform=trimesh.transformations.translation_matrix((0, 0, -0.01))
    )
    wall = trimesh.creation.box(
        extents=(0.02, 6, 2.5), transform=trimesh.transformations.translation_matrix((-3, 0, 1.25))
    )
    b1 = trimesh.creation.box(extents=BOX1[1], transform=trimesh.transformations.translation_matrix(BOX1[0]))
    b2 = trimesh.creation.box(extents=BOX2[1], transform=trimesh.transformations.translation_matrix(BOX2[0]))
    parts = [
        _part(floor, (128, 128, 128), 1, 0),
        _part(wall, (40, 40, 200), 3, 0),
        _part(b1, (220, 30, 30), 2, 1),
        _part(b2, (30, 220, 30), 2, 2),
    ]
    verts, faces, off = [], [], 0
    for p in parts:
        verts.append(p.vertices)
        faces.append(p.faces + off)
        off += len(p.vertices)
    return PanopticMesh(
        np.concatenate(verts),
        np.concatenate(faces),
        np.concatenate([p.colors for p in parts]),
        np.concatenate([p.semantic for p in parts]),
        np.concatenate([p.instance for p in parts]),
    )


def make_build(folder: Path, world_from_scene: np.ndarray | None = None) -> Path:
    """A build folder; with ``world_from_scene`` the mesh is stored in a scene frame and an export's
    ``alignment.json`` maps it back to the world frame the boxes are defined in."""
    folder.mkdir(parents=True, exist_ok=True)
    mesh = scene_mesh()
    if world_from_scene is not None:
        inv = np.linalg.inv(world_from_scene)
        v = mesh.vertices.astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
        mesh = PanopticMesh(v, mesh.faces, mesh.colors, mesh.semantic, mesh.instance)
        write_json(folder / "alignment.json", {"world_from_scene": world_from_scene.tolist()})
    write_panoptic_mesh(folder / "panoptic_mesh.ply", mesh)
    write_instances(folder / "instances.json", instance_records(mesh, CATEGORIES), CATEGORIES)
    write_json(folder / "build.json", {"id": f"test-{folder.name}", "method": "test"})
    return folder


def gazebo_pose(x=0.0, y=0.0, z=0.5, yaw=0.0) -> dict:
    return {
        "x": x,
        "y": y,
        "z": z,
        "qx": 0.0,
        "qy": 0.0,
        "qz": float(np.sin(yaw / 2)),
        "qw": float(np.cos(yaw / 2)),
    }


K = Intrinsics(100.0, 100.0, 80.0, 60.0, 160, 120)
