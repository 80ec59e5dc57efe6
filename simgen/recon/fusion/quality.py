"""Ground-truth checks of a build (used by tests/test_fusion.py and bench/bench_fusion.py).

* Geometry: points sampled on the predicted mesh, distance to the GT surface (the exact distance to the
  GT face holding the nearest of a dense, ~``gt_spacing`` sampling of the GT mesh: an upper bound that
  differs from the true distance only near creases).
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

from simgen.data.scene import Scene
from simgen.folders import PanopticMesh


def gt_samples(
    scene: Scene, spacing: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the GT mesh about ``spacing`` apart: ``(N, 3)`` positions, ``(N,)`` GT segment ids and
    ``(N,)`` the GT face each lies on."""
    mesh = scene.gt.mesh()
    labels = scene.gt.mesh_labels()
    n = int(np.ceil(mesh.area / spacing**2))
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts), labels[mesh.faces[face, 0]], np.asarray(face)


def visible_pixels(scene: Scene, frames: list[int]) -> dict[int, int]:
    """GT segment id -> number of pixels showing it over ``frames``."""
    total: dict[int, int] = {}
    for i in frames:
        ids, counts = np.unique(scene.gt.panoptic(i), return_counts=True)
        for k, c in zip(ids.tolist(), counts.tolist(), strict=True):
            total[k] = total.get(k, 0) + c
    return total


def labelled_pixels(scene: Scene, frames: list[int]) -> dict[int, int]:
    """GT segment id -> number of its visible pixels that carry a *thing* pseudo-label, over ``frames``.

    A GT object that the 2D segmenter (or the synthetic noise) never labels cannot be reconstructed as an
    instance; at low resolution boundary shrinking erases thin objects entirely. This is the support the
    fusion actually receives, used to pick the objects a small test scene can fairly require.
    """
    total: dict[int, int] = {}
    thing_cats = set(scene.thing_ids)
    for i in frames:
        segs = scene.frames[i].segments
        thing_seg = np.array(sorted(s.id for s in segs if s.category_id in thing_cats), dtype=np.int64)
        pan = scene.panoptic(i)
        labelled = np.isin(pan, thing_seg) & (pan > 0)
        ids, counts = np.unique(scene.gt.panoptic(i)[labelled], return_counts=True)
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
    gt_spacing: float = 0.02,
    seed: int = 0,
    support: str = "visible",
) -> dict[str, Any]:
    """The fusion issue's quality figures for ``mesh`` against the scene's GT.

    ``support`` picks the GT things that must be matched: ``"visible"`` (the issue's criterion: at least
    ``min_visible_px`` visible pixels over ``frames``) or ``"labelled"`` (at least that many visible pixels
    covered by a thing pseudo-label, see :func:`labelled_pixels`).

    Returns a dict with ``within_2_voxels`` (fraction of predicted surface samples within 2 voxels of the
    GT surface), ``median_distance_m``, ``semantic_accuracy`` (share of labelled vertices whose category is
    the GT category of the nearest GT surface sample), ``semantic_unknown`` (share of unlabelled vertices),
    ``things`` (GT thing ids with >= ``min_visible_px`` visible pixels over ``frames``),
    ``matched`` (GT id -> (predicted instance id, IoU)) for those with IoU > 0.5, ``unmatched``,
    ``predicted_instances``, ``false_instances`` (predicted instances matching no GT thing at all) and
    ``gt_to_pred`` (GT thing id -> (predicted id, IoU) for every GT thing with an IoU > 0.5 match) and
    ``dominant`` (GT thing id -> the predicted instance covering most of its vertices, if any).
    """
    gt_pts, gt_lab, gt_face = gt_samples(scene, gt_spacing, seed)
    tree = cKDTree(gt_pts)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    pred_pts, _ = trimesh.sample.sample_surface(tm, n_pred_samples, seed=seed)
    _, near_pred = tree.query(pred_pts, workers=1)
    # Exact distance to the GT face of the nearest sample: an upper bound on the distance to the GT surface,
    # much tighter than the sample distance, without a BVH query per point.
    tri = scene.gt.mesh().triangles[gt_face[near_pred]]
    dist = np.linalg.norm(trimesh.triangles.closest_point(tri, pred_pts) - pred_pts, axis=1)
    _, nearest = tree.query(mesh.vertices, workers=1)
    transferred = gt_lab[nearest]
    # GT category of every predicted vertex (GT ids absent from the segment table count as unknown, -2).
    gt_cat = np.array([scene.gt.segments.get(int(g), -2) for g in range(int(gt_lab.max()) + 1)])[transferred]
    known = mesh.semantic >= 0

    thing_cats = set(scene.thing_ids)
    if support not in ("visible", "labelled"):
        raise ValueError(f"support must be 'visible' or 'labelled', got {support!r}")
    visible = visible_pixels(scene, frames) if support == "visible" else labelled_pixels(scene, frames)
    things = sorted(
        g for g, c in scene.gt.segments.items() if c in thing_cats and visible.get(g, 0) >= min_visible_px
    )
    pred_ids = np.unique(mesh.instance[mesh.instance > 0])
    # Best predicted instance of every GT thing (IoU > 0.5 makes it unique on both sides); all GT things
    # count for ``false_instances``, only the required ones for ``matched`` / ``unmatched``.
    best_match: dict[int, tuple[int, float]] = {}
    dominant: dict[int, int] = {}
    for g in sorted(g for g, c in scene.gt.segments.items() if c in thing_cats):  # GT objects (tens)
        in_g = transferred == g
        cand, inter = np.unique(mesh.instance[in_g & (mesh.instance > 0)], return_counts=True)
        if cand.size == 0:
            continue
        dominant[g] = int(cand[np.argmax(inter)])
        sizes = np.array([np.count_nonzero(mesh.instance == p) for p in cand])
        iou = inter / (in_g.sum() + sizes - inter)
        best = int(np.argmax(iou))
        if iou[best] > 0.5:
            best_match[g] = (int(cand[best]), float(iou[best]))
    matched = {g: best_match[g] for g in things if g in best_match}
    used = {p for p, _ in best_match.values()}
    return {
        "within_2_voxels": float(np.mean(dist <= 2 * voxel_size)),
        "median_distance_m": float(np.median(dist)),
        "semantic_accuracy": float(np.mean(mesh.semantic[known] == gt_cat[known])) if known.any() else 0.0,
        "semantic_unknown": float(np.mean(~known)) if known.size else 1.0,
        "things": things,
        "matched": matched,
        "unmatched": [g for g in things if g not in matched],
        "predicted_instances": int(pred_ids.size),
        "false_instances": int(sum(1 for p in pred_ids if p not in used)),
        "gt_to_pred": best_match,
        "dominant": dominant,
    }
