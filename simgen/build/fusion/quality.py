"""Ground-truth checks of a build (used by tests/test_fusion.py and bench/bench_fusion.py).

* Geometry: points sampled on the predicted mesh, distance to the GT surface (approximated by a dense,
  ~``gt_spacing`` sampling of the GT mesh, so distances are over-estimated by at most about half the
  spacing).
* Instances: GT segment ids are transferred to the predicted vertices from the nearest GT surface sample;
  a GT thing is matched by a predicted instance when their vertex sets have IoU > 0.5 (so the match is
  unique on both sides).

simgen.eval holds the full metric suite; this module checks only the figures the fusion issue names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from simgen.build.output import PanopticMesh
from simgen.data.scene import Scene


def gt_samples(scene: Scene, spacing: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3)`` points on the GT mesh about ``spacing`` apart and their ``(N,)`` GT segment ids."""
    mesh = scene.gt.mesh()
    labels = scene.gt.mesh_labels()
    n = int(np.ceil(mesh.area / spacing**2))
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts), labels[mesh.faces[face, 0]]


def visible_pixels(scene: Scene, frames: list[int]) -> dict[int, int]:
    """GT segment id -> number of pixels showing it over ``frames``."""
    total: dict[int, int] = {}
    for i in frames:
        ids, counts = np.unique(scene.gt.panoptic(i), return_counts=True)
        for k, c in zip(ids.tolist(), counts.tolist(), strict=True):
            total[k] = total.get(k, 0) + c
    return total


def gt_quality(
    scene: Scene,
    mesh: PanopticMesh,
    voxel_size: float,
    frames: list[int],
    min_visible_px: int = 500,
    n_pred_samples: int = 100_000,
    gt_spacing: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """The fusion issue's quality figures for ``mesh`` against the scene's GT.

    Returns a dict with ``within_2_voxels`` (fraction of predicted surface samples within 2 voxels of the
    GT surface), ``things`` (GT thing ids with >= ``min_visible_px`` visible pixels over ``frames``),
    ``matched`` (GT id -> (predicted instance id, IoU)) for those with IoU > 0.5, ``unmatched``,
    ``predicted_instances`` and ``false_instances`` (predicted instances matching no GT thing).
    """
    gt_pts, gt_lab = gt_samples(scene, gt_spacing, seed)
    tree = cKDTree(gt_pts)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    pred_pts, _ = trimesh.sample.sample_surface(tm, n_pred_samples, seed=seed)
    dist, _ = tree.query(pred_pts, workers=1)
    _, nearest = tree.query(mesh.vertices, workers=1)
    transferred = gt_lab[nearest]

    thing_cats = set(scene.thing_ids)
    visible = visible_pixels(scene, frames)
    things = sorted(
        g for g, c in scene.gt.segments.items() if c in thing_cats and visible.get(g, 0) >= min_visible_px
    )
    pred_ids = np.unique(mesh.instance[mesh.instance > 0])
    matched: dict[int, tuple[int, float]] = {}
    for g in things:  # loops over GT objects (tens)
        in_g = transferred == g
        if not in_g.any():
            continue
        cand, inter = np.unique(mesh.instance[in_g & (mesh.instance > 0)], return_counts=True)
        if cand.size == 0:
            continue
        sizes = np.array([np.count_nonzero(mesh.instance == p) for p in cand])
        iou = inter / (in_g.sum() + sizes - inter)
        best = int(np.argmax(iou))
        if iou[best] > 0.5:
            matched[g] = (int(cand[best]), float(iou[best]))
    used = {p for p, _ in matched.values()}
    return {
        "within_2_voxels": float(np.mean(dist <= 2 * voxel_size)),
        "median_distance_m": float(np.median(dist)),
        "things": things,
        "matched": matched,
        "unmatched": [g for g in things if g not in matched],
        "predicted_instances": int(pred_ids.size),
        "false_instances": int(sum(1 for p in pred_ids if p not in used)),
    }
