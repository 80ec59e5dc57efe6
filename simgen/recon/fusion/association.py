"""Instance association: per-frame thing segments <-> global instances (PanoRecon sec. 3.3: keep / add / fuse).

Per-frame segment ids are arbitrary, so nothing here relies on them beyond one frame. The global instance
labels are rendered into the frame by looking up, for every sampled pixel with valid depth, the instance
voted for by the voxel that holds its back-projected point (the observed depth resolves occlusion).
Matching uses the mask IoU between segments and rendered instances plus a 3D box overlap term, solved as
an assignment problem (``scipy.optimize.linear_sum_assignment``). Unmatched global instances are kept,
unmatched segments become new instances, and segments lying inside an instance already matched in the same
frame (an over-segmented object) are fused into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from simgen.data.scene import Segment
from simgen.recon.fusion.config import FusionConfig


@dataclass
class FrameSegments:
    """One frame's pseudo-label segments in compact form (S segments)."""

    index: np.ndarray  # (H, W) int32 segment index 0..S-1 per pixel, -1 = void / unlisted id
    ids: np.ndarray  # (S,) int64 per-frame segment ids (sorted)
    column: np.ndarray  # (S,) int64 semantic column of each segment
    score: np.ndarray  # (S,) float32 segment score
    isthing: np.ndarray  # (S,) bool


def frame_segments(
    panoptic: np.ndarray,
    segments: tuple[Segment, ...],
    column_of: dict[int, int],
    thing_columns: np.ndarray,
    min_score: float = 0.0,
) -> FrameSegments:
    """Compact per-pixel segment indices from a ``(H, W) int32`` panoptic id image and its segments_info.

    Segments scoring below ``min_score`` are left out: their pixels become void.
    """
    segs = sorted((s for s in segments if s.score >= min_score), key=lambda s: s.id)
    ids = np.array([s.id for s in segs], dtype=np.int64)
    column = np.array([column_of[s.category_id] for s in segs], dtype=np.int64)
    score = np.array([s.score for s in segs], dtype=np.float32)
    if ids.size == 0:
        return FrameSegments(np.full(panoptic.shape, -1, np.int32), ids, column, score, np.zeros(0, bool))
    pos = np.clip(np.searchsorted(ids, panoptic), 0, len(ids) - 1)
    hit = (ids[pos] == panoptic) & (panoptic > 0)
    index = np.where(hit, pos, -1).astype(np.int32)
    return FrameSegments(index, ids, column, score, thing_columns[column])


@dataclass
class GlobalInstance:
    id: int
    class_weight: np.ndarray  # (C,) float64 score-weighted classes of the segments matched to it
    frames: set[int] = field(default_factory=set)  # keyframe indices (scene frame numbers) observed in
    box_min: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))  # (3,) world metres
    box_max: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))

    @property
    def column(self) -> int:
        return int(np.argmax(self.class_weight))


@dataclass
class InstanceTable:
    """The global instances and the bookkeeping the merge test needs."""

    n_classes: int
    instances: dict[int, GlobalInstance] = field(default_factory=dict)
    next_id: int = 1
    # Pairs (a < b) observed as different segments of one frame: evidence they are different objects.
    separate: set[tuple[int, int]] = field(default_factory=set)
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("created", "matched", "fused", "merged", "vanished", "dropped"), 0
        )
    )

    def create(self) -> GlobalInstance:
        inst = GlobalInstance(self.next_id, np.zeros(self.n_classes))
        self.instances[inst.id] = inst
        self.next_id += 1
        self.counters["created"] += 1
        return inst


def _box_containment(
    a_min: np.ndarray, a_max: np.ndarray, b_min: np.ndarray, b_max: np.ndarray
) -> np.ndarray:
    """Fraction of the volume of boxes ``a`` (``(S, 3)``) inside boxes ``b`` (``(G, 3)``): ``(G, S)``."""
    lo = np.maximum(a_min[None], b_min[:, None])
    hi = np.minimum(a_max[None], b_max[:, None])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    vol = np.prod(np.clip(a_max - a_min, 1e-9, None), axis=-1)
    return inter / vol[None]


def segment_boxes(
    seg_of_point: np.ndarray, points: np.ndarray, n_segments: int, pad: float, q: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust 3D boxes of each segment's back-projected points.

    Args:
        seg_of_point: ``(N,) int`` segment index per point (-1 none); points ``(N, 3)`` world metres.
        pad: added on every side (a voxel, so that flat segments have volume).
        q: quantile trimmed at both ends (mask edges bleed onto the background).

    Returns:
        box_min, box_max ``(S, 3)`` (inf / -inf for empty segments) and counts ``(S,)``.
    """
    counts = np.bincount(seg_of_point[seg_of_point >= 0], minlength=n_segments)
    bmin = np.full((n_segments, 3), np.inf)
    bmax = np.full((n_segments, 3), -np.inf)
    for s in np.flatnonzero(counts):  # loops over segments (tens), not points
        p = points[seg_of_point == s]
        lo, hi = np.quantile(p, [q, 1.0 - q], axis=0)
        bmin[s], bmax[s] = lo - pad, hi + pad
    return bmin, bmax, counts


def associate(
    table: InstanceTable,
    seg: FrameSegments,
    seg_of_point: np.ndarray,
    points: np.ndarray,
    rendered: np.ndarray,
    frame: int,
    cfg: FusionConfig,
) -> np.ndarray:
    """Match one frame's thing segments to global instances and update the table.

    Args:
        seg_of_point: ``(N,) int`` segment index of each sampled valid-depth pixel (-1 void).
        points: ``(N, 3)`` their world points.
        rendered: ``(N,) int32`` global instance id rendered at those pixels (0 = none).
        frame: the scene frame index (recorded in ``frames``).

    Returns:
        ``(S,) int64`` global instance id per segment: > 0 for associated thing segments, 0 for stuff
        segments, -1 for thing segments left out (too small).
    """
    S = len(seg.ids)
    out = np.where(seg.isthing, -1, 0).astype(np.int64)
    if S == 0:
        return out
    area_scale = cfg.lookup_stride**2
    min_px = max(1.0, cfg.min_segment_pixels / area_scale)
    bmin, bmax, n_s = segment_boxes(seg_of_point, points, S, pad=0.5 * cfg.voxel_size)
    thing = seg.isthing & (n_s >= min_px)
    if not thing.any():
        return out

    # Rendered global instances visible in the frame, and their overlap with each segment.
    gid, n_g = np.unique(rendered[rendered > 0], return_counts=True)
    keep = (n_g >= 0.5 * min_px) & np.isin(gid, list(table.instances))
    gid, n_g = gid[keep], n_g[keep]
    G = len(gid)
    joint = np.zeros((G, S))
    if G:
        sel = (seg_of_point >= 0) & np.isin(rendered, gid)
        g_idx = np.searchsorted(gid, rendered[sel])
        joint = np.bincount(g_idx * S + seg_of_point[sel], minlength=G * S).reshape(G, S).astype(np.float64)
    iou = joint / np.maximum(n_g[:, None] + n_s[None, :] - joint, 1)
    contain_2d = joint / np.maximum(n_s[None, :], 1)  # share of the segment inside the instance

    insts = [table.instances[int(g)] for g in gid]
    same_class = np.array([[inst.column == c for c in seg.column] for inst in insts], dtype=bool).reshape(
        G, S
    )
    if G:
        g_min = np.stack([i.box_min for i in insts]) - cfg.merge_margin
        g_max = np.stack([i.box_max for i in insts]) + cfg.merge_margin
        with np.errstate(invalid="ignore"):
            c3d = np.nan_to_num(_box_containment(bmin, bmax, g_min, g_max))
    else:
        c3d = np.zeros((0, S))
    score = (1.0 - cfg.match_weight_3d) * iou + cfg.match_weight_3d * c3d
    score -= cfg.class_mismatch_penalty * ~same_class
    ok = (iou >= cfg.match_min_iou) & (score >= cfg.match_min_score) & thing[None, :]

    # keep / match: one-to-one assignment on the admissible pairs.
    if ok.any():
        cost = np.where(ok, 1.0 - score, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            if ok[r, c]:
                out[c] = gid[r]
                table.counters["matched"] += 1
    # fuse: an unmatched segment lying mostly inside a visible instance of its class is a piece of it,
    # unless that instance matched another segment of this frame that lies apart from it in 3D: parts
    # of one over-segmented object touch, two objects once seen as one mask (and so made one instance)
    # do not, and fusing the second into the first would keep them one instance for good.
    for s in np.flatnonzero(thing & (out < 0)):
        if G == 0:
            break
        cand = np.where(same_class[:, s], contain_2d[:, s], 0.0)
        best = int(np.argmax(cand))
        if cand[best] >= cfg.fuse_containment:
            if cfg.fuse_max_gap > 0 and _apart(
                s, np.flatnonzero(out == gid[best]), seg_of_point, points, cfg
            ):
                table.counters["kept_apart"] = table.counters.get("kept_apart", 0) + 1
                continue
            out[s] = gid[best]
            table.counters["fused"] += 1
    # add: the rest are objects seen for the first time.
    for s in np.flatnonzero(thing & (out < 0)):
        out[s] = table.create().id

    # Bookkeeping: frames, class evidence, boxes, and pairs seen as separate objects in this frame.
    assigned = np.flatnonzero(out > 0)
    for s in assigned:
        inst = table.instances[int(out[s])]
        inst.frames.add(int(frame))
        inst.class_weight[seg.column[s]] += float(seg.score[s])
        inst.box_min = np.minimum(inst.box_min, bmin[s])
        inst.box_max = np.maximum(inst.box_max, bmax[s])
    distinct = sorted({int(out[s]) for s in assigned})
    for i, a in enumerate(distinct):
        for b in distinct[i + 1 :]:
            table.separate.add((a, b))
    return out


def _apart(
    s: int, partners: np.ndarray, seg_of_point: np.ndarray, points: np.ndarray, cfg: FusionConfig
) -> bool:
    """Whether segment ``s``'s points lie farther than ``cfg.fuse_max_gap`` metres from every point of
    the ``partners`` segments (``(N,)`` segment index and ``(N, 3)`` world point per sampled pixel)."""
    if partners.size == 0:
        return False
    a = points[seg_of_point == s]
    b = points[np.isin(seg_of_point, partners)]
    if len(a) == 0 or len(b) == 0:
        return False
    rng = np.random.default_rng(0)  # subsample: the gap test needs the nearest points, not all pairs
    a = a[rng.permutation(len(a))[:800]] if len(a) > 800 else a
    gap, _ = cKDTree(b).query(a, k=1, distance_upper_bound=cfg.fuse_max_gap)
    return bool(np.all(np.isinf(gap)))


def merged_segments(
    table: InstanceTable,
    seg: FrameSegments,
    seg_of_point: np.ndarray,
    rendered: np.ndarray,
    assigned: np.ndarray,
    frame: int,
    cfg: FusionConfig,
) -> dict[int, list[int]]:
    """Thing segments that cover two or more established instances of their class: under-segmentation.

    A 2D segmenter often returns two touching objects of one class as one mask. Association gives the
    whole mask to the best-matching instance, and its votes then overwrite the neighbour's voxels.
    Here a segment assigned to instance ``a`` also covers instance ``r`` when ``r`` is of the segment's
    class, is visible in the frame, matched no other segment of the frame, was observed in at least
    ``min_frames`` keyframes, and at least ``split_merged_coverage`` of ``r``'s rendered pixels lie
    inside the segment. The caller then lets each pixel of the segment vote for the instance already
    rendered there. ``r`` counts as observed in ``frame`` and as separate from ``a``.

    Args:
        seg_of_point, rendered: ``(N,)`` segment index and rendered global id of each sampled pixel.
        assigned: ``(S,)`` global id per segment from :func:`associate`.

    Returns:
        ``{segment index: [other instance ids it covers]}`` (empty for most frames).
    """
    out: dict[int, list[int]] = {}
    taken = {int(a) for a in assigned if a > 0}
    area_scale = cfg.lookup_stride**2
    min_px = max(1.0, cfg.min_segment_pixels / area_scale)
    gid, n_g = np.unique(rendered[rendered > 0], return_counts=True)
    visible = dict(zip(gid.tolist(), n_g.tolist(), strict=True))
    for s in np.flatnonzero(seg.isthing & (assigned > 0)):
        inside = rendered[(seg_of_point == s) & (rendered > 0)]
        if inside.size == 0:
            continue
        rid, cnt = np.unique(inside, return_counts=True)
        others = []
        for r, c in zip(rid.tolist(), cnt.tolist(), strict=True):
            inst = table.instances.get(r)
            if (
                r == assigned[s]
                or r in taken
                or inst is None
                or inst.column != seg.column[s]
                or len(inst.frames) < cfg.min_frames
                or c < min_px
                or c < cfg.split_merged_coverage * visible[r]
            ):
                continue
            others.append(r)
        if others:
            out[int(s)] = others
            a = int(assigned[s])
            for r in others:
                table.instances[r].frames.add(int(frame))
                table.separate.add((min(a, r), max(a, r)))
            table.counters["split"] = table.counters.get("split", 0) + 1
    return out


def instance_voxel_boxes(
    instance: np.ndarray, centres: np.ndarray, q: float = 0.02
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Robust per-instance boxes of labelled voxels.

    Args:
        instance: ``(N,) int`` instance id per voxel (> 0); centres ``(N, 3)`` voxel centres (metres).
        q: trimmed quantile at both ends, so a few stray voxels do not stretch a box across the scene.

    Returns:
        ids ``(M,)``, counts ``(M,)``, box_min ``(M, 3)``, box_max ``(M, 3)``.
    """
    ids, counts = np.unique(instance, return_counts=True)
    if ids.size == 0:
        z = np.zeros((0, 3))
        return ids, counts, z, z
    order0 = np.argsort(instance, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lo_pos = start + np.floor(q * (counts - 1)).astype(np.int64)
    hi_pos = start + np.ceil((1.0 - q) * (counts - 1)).astype(np.int64)
    bmin, bmax = np.empty((len(ids), 3)), np.empty((len(ids), 3))
    sorted_ids = instance[order0]
    for a in range(3):  # sort by (id, coordinate): the quantiles are then plain positions
        order = np.lexsort((centres[order0, a], sorted_ids))
        coord = centres[order0, a][order]
        bmin[:, a], bmax[:, a] = coord[lo_pos], coord[hi_pos]
    return ids, counts, bmin, bmax


def merge_instances(
    table: InstanceTable, ids: np.ndarray, bmin: np.ndarray, bmax: np.ndarray, cfg: FusionConfig
) -> dict[int, int]:
    """Merge instances never observed as separate objects, of one class, whose 3D boxes overlap strongly.

    Args:
        ids: ``(M,)`` instance ids that still own voxels; bmin, bmax ``(M, 3)`` their voxel boxes.

    Returns:
        ``{old id: surviving id}`` for merged instances (the survivor is the older, smaller id). The
        table is updated; the caller relabels voxels.
    """
    if len(ids) < 2:
        return {}
    lo, hi = bmin - cfg.merge_margin, bmax + cfg.merge_margin
    inter = np.prod(
        np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None), -1
    )
    vol = np.prod(hi - lo, axis=-1)
    overlap = inter / np.minimum(vol[:, None], vol[None])
    cols = np.array([table.instances[int(i)].column for i in ids])
    cand = (
        (overlap >= cfg.merge_overlap) & (cols[:, None] == cols[None]) & np.triu(np.ones_like(inter, bool), 1)
    )
    pairs = sorted(zip(*np.nonzero(cand), strict=True), key=lambda p: -overlap[p])
    group = {int(i): {int(i)} for i in ids}
    root = {int(i): int(i) for i in ids}
    for a, b in pairs:  # loops over candidate pairs (few), not voxels
        ra, rb = root[int(ids[a])], root[int(ids[b])]
        if ra == rb:
            continue
        if any((min(x, y), max(x, y)) in table.separate for x in group[ra] for y in group[rb]):
            continue
        keep, gone = min(ra, rb), max(ra, rb)
        group[keep] |= group.pop(gone)
        for m in group[keep]:
            root[m] = keep
    remap = {m: r for m, r in root.items() if m != r}
    for old, new in remap.items():
        src, dst = table.instances.pop(old), table.instances[new]
        dst.frames |= src.frames
        dst.class_weight += src.class_weight
        dst.box_min = np.minimum(dst.box_min, src.box_min)
        dst.box_max = np.maximum(dst.box_max, src.box_max)
        table.counters["merged"] += 1
    if remap:
        table.separate = {
            (min(a2, b2), max(a2, b2))
            for a, b in table.separate
            if (a2 := remap.get(a, a)) != (b2 := remap.get(b, b))
        }
    return remap
