"""A synthetic scene's exact GT mesh served through a non-trivial alignment, with the images the server
must give at GT frame poses (for the render-server tests), and small HTTP helpers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from simgen.data.io import write_json
from simgen.data.scene import load_scene
from simgen.folders import PanopticMesh, instance_records, write_instances, write_panoptic_mesh
from simgen.render.caster import STUFF_ID_OFFSET
from simgen.synth import synthesize

_A = np.radians(30.0)

WORLD_FROM_SCENE = np.array(
    [
        [np.cos(_A), -np.sin(_A), 0.0, 1.5],
        [np.sin(_A), np.cos(_A), 0.0, -0.7],
        [0.0, 0.0, 1.0, 0.05],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

FRAMES = (0, 5, 11)


def make_served_gt(root: Path):
    """(scene with GT, served folder, {GT segment id: expected server segment id})."""
    scene = load_scene(synthesize(root / "scene", "tiny", seed=0, noise=False))
    mesh = scene.gt.mesh()
    labels = scene.gt.mesh_labels()
    semantic = np.array([scene.gt.segments.get(int(i), -1) for i in labels])
    isthing = np.array([c >= 0 and scene.categories[int(c)].isthing for c in semantic])
    instance = np.where(isthing, labels, 0)
    colors = np.stack([labels * 37 % 256, labels * 91 % 256, labels * 53 % 256], 1).astype(np.uint8)
    pmesh = PanopticMesh(mesh.vertices, mesh.faces, colors, semantic, instance)
    folder = root / "export"
    folder.mkdir()
    write_panoptic_mesh(folder / "panoptic_mesh.ply", pmesh)
    write_instances(folder / "instances.json", instance_records(pmesh, scene.categories), scene.categories)
    write_json(folder / "alignment.json", {"world_from_scene": WORLD_FROM_SCENE.tolist()})
    return read_served_gt(root)


def read_served_gt(root: Path):
    """What :func:`make_served_gt` returns, from the folder it wrote."""
    scene = load_scene(root / "scene")
    expected = {0: 0}
    for gid, cid in scene.gt.segments.items():
        expected[gid] = gid if scene.categories[cid].isthing else STUFF_ID_OFFSET + cid
    return scene, root / "export", expected


def expected_panoptic(gt, i: int) -> np.ndarray:
    scene, _, table = gt
    gp = scene.gt.panoptic(i)
    ids, inv = np.unique(gp, return_inverse=True)
    return np.array([table[int(g)] for g in ids])[inv].reshape(gp.shape)


def post(url: str, path: str, body, raw: bytes | None = None) -> tuple[int, dict, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    return _open(req)


def get(url: str, path: str) -> tuple[int, dict, bytes]:
    return _open(urllib.request.Request(url + path))


def _open(req) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
