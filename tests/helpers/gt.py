"""Ground truth of a synthetic scene in the shapes simgen's stages produce."""

from __future__ import annotations

import numpy as np

from simgen.folders import PanopticMesh


def gt_panoptic_mesh(scene) -> PanopticMesh:
    mesh = scene.gt.mesh()
    seg = scene.gt.mesh_labels()
    cat = np.array([scene.gt.segments.get(int(s), -1) for s in seg], dtype=np.int32)
    thing = np.array([c in scene.categories and scene.categories[c].isthing for c in cat])
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    return PanopticMesh(mesh.vertices, mesh.faces, colors, cat, np.where(thing, seg, 0))
