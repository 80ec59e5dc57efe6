"""Evaluation metrics of panoptic reconstructions: pure functions on numpy arrays.

Conventions shared by every function here (see docs/evaluation.md):

* Label images are flat or any-shaped integer arrays of equal shape. A scene-level metric gets all
  frames of a split *concatenated* (stacked along a new first axis or flattened, it does not matter),
  so a segment is the same object in every frame it appears in.
* Semantic labels are category ids; ``void`` (default -1) marks GT pixels that are not evaluated and
  predicted pixels with no label (a ray that hit nothing, an unlabelled vertex).
* Instance labels: > 0 for a thing instance; stuff pixels carry instance 0 (any instance id given on a
  stuff class is ignored), so a stuff segment is ``(class)`` and a thing segment ``(class, instance)``.
  A thing-class element with instance 0 ("class known, instance unknown" in the build contract) has no
  panoptic label: in the panoptic metrics it is void in GT and unlabelled in a prediction, so a builder
  cannot score by leaving a class's instances merged into one id-0 segment. Semantic metrics still use
  its class.
* Points are ``(N, 3)`` float arrays in metres; distances are reported in centimetres.

Returned dictionaries hold plain Python floats / ints / lists (JSON-ready); a metric with nothing
to average over is ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Bits reserved for the instance id when a (class, instance) pair is packed into one int64 key.
_INST_BITS = 32
_VOID_KEY = -1


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))


def _segment_keys(
    sem: np.ndarray, inst: np.ndarray, thing_ids: np.ndarray, stuff_ids: np.ndarray, void: int, what: str
) -> np.ndarray:
    """Pack per-pixel (class, instance) into int64 keys; stuff instances forced to 0, void -> -1."""
    sem = np.asarray(sem).reshape(-1).astype(np.int64)
    inst = np.asarray(inst).reshape(-1).astype(np.int64)
    if sem.shape != inst.shape:
        raise ValueError(f"{what}: semantic and instance arrays differ in size ({sem.size} vs {inst.size})")
    is_void = sem == void
    is_thing = np.isin(sem, thing_ids)
    is_stuff = np.isin(sem, stuff_ids)
    unknown = ~(is_void | is_thing | is_stuff)
    if unknown.any():
        bad = np.unique(sem[unknown])[:10].tolist()
        raise ValueError(f"{what}: category id(s) {bad} are neither things, stuff nor void ({void})")
    if (inst[is_thing] < 0).any() or (inst >= 2**31).any():
        raise ValueError(f"{what}: instance ids must lie in [0, 2**31)")
    keys = (sem << _INST_BITS) | np.where(is_thing, inst, 0)
    keys[is_void | (is_thing & (inst == 0))] = _VOID_KEY
    return keys


def _key_class(keys: np.ndarray) -> np.ndarray:
    return np.where(keys == _VOID_KEY, -1, keys >> _INST_BITS)


def _key_instance(keys: np.ndarray) -> np.ndarray:
    return np.where(keys == _VOID_KEY, 0, keys & ((1 << _INST_BITS) - 1))


def _pair_table(a: np.ndarray, b: np.ndarray):
    """Unique values of ``a`` and ``b`` with areas, and the sparse table of their co-occurrences.

    Returns ``(ua, inv_a, area_a, ub, inv_b, area_b, ia, ib, inter)``: ``inv_*`` index each element's
    value in ``u*``; ``ia[k], ib[k]`` index ``ua, ub`` and ``inter[k]`` counts the elements where both
    occur (only non-zero pairs are listed).
    """
    ua, inv_a = np.unique(a, return_inverse=True)
    ub, inv_b = np.unique(b, return_inverse=True)
    inv_a, inv_b = inv_a.reshape(-1).astype(np.int64), inv_b.reshape(-1).astype(np.int64)
    area_a = np.bincount(inv_a, minlength=len(ua))
    area_b = np.bincount(inv_b, minlength=len(ub))
    joint = inv_a * len(ub) + inv_b
    if len(ua) * len(ub) <= 1 << 24:
        table = np.bincount(joint, minlength=len(ua) * len(ub))
        pairs = np.flatnonzero(table)
        inter = table[pairs]
    else:
        # Noisy predictions concatenated over many frames can have thousands of segments on each
        # side; then a dense table is too large and only the pairs that occur are built.
        pairs, inter = np.unique(joint, return_counts=True)
    return ua, inv_a, area_a, ub, inv_b, area_b, pairs // len(ub), pairs % len(ub), inter


def match_segments(
    pred_sem: np.ndarray,
    pred_inst: np.ndarray,
    gt_sem: np.ndarray,
    gt_inst: np.ndarray,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    void: int = -1,
    ignore_pred_void: bool = False,
) -> dict:
    """Segments of a prediction and a GT label image and their IoU > 0.5 matching (COCO panoptic rules).

    Args:
        pred_sem, pred_inst, gt_sem, gt_inst: equal-shaped int arrays (see the module conventions).
        thing_ids, stuff_ids: the evaluated categories; any other id except ``void`` is an error.
        void: semantic label of void pixels (in GT: not evaluated; in the prediction: no label).
        ignore_pred_void: ``False`` (COCO): predicted-void pixels inside a GT segment count against it.
            ``True`` (torchmetrics / Panoptic Lifting): they are left out of the union, and a GT segment
            that is mostly predicted void is not a false negative.

    Matching rule: a predicted and a GT segment of the same class match when their IoU is > 0.5. The
    IoU's union leaves out predicted pixels lying on GT void. Segments within one image are disjoint,
    so a segment can have IoU > 0.5 with at most one segment of the other image: the matching is unique
    and needs no assignment solver.

    Returns:
        dict of arrays: ``gt_keys (G,)``/``pred_keys (P,)`` packed segment keys (void excluded),
        ``gt_class``/``gt_instance (G,)``, ``pred_class``/``pred_instance (P,)``, ``gt_area``/``pred_area``,
        ``gt_void_fraction (P,)`` (share of each predicted segment on GT void), ``pred_void_fraction (G,)``
        (share of each GT segment predicted void), ``match_gt``/``match_pred (M,)`` indices into the
        segment arrays and ``match_iou (M,)``; ``pixel_gt``/``pixel_pred`` (N,) index of each pixel's
        segment (-1 = void).
    """
    things, stuff = _as_ids(thing_ids), _as_ids(stuff_ids)
    if np.intersect1d(things, stuff).size:
        raise ValueError(f"thing and stuff ids overlap: {np.intersect1d(things, stuff).tolist()}")
    pk = _segment_keys(pred_sem, pred_inst, things, stuff, void, "prediction")
    gk = _segment_keys(gt_sem, gt_inst, things, stuff, void, "ground truth")
    if pk.shape != gk.shape:
        raise ValueError(f"prediction has {pk.size} pixels, ground truth {gk.size}")
    ug, g_pix, g_area, up, p_pix, p_area, ig, ip, inter = _pair_table(gk, pk)

    g_void = ug == _VOID_KEY
    p_void = up == _VOID_KEY
    # Pixels of each predicted segment on GT void, and of each GT segment predicted void.
    p_on_void = np.zeros(len(up), np.int64)
    sel = g_void[ig]
    np.add.at(p_on_void, ip[sel], inter[sel])
    g_pred_void = np.zeros(len(ug), np.int64)
    sel = p_void[ip]
    np.add.at(g_pred_void, ig[sel], inter[sel])

    cand = ~g_void[ig] & ~p_void[ip] & (_key_class(ug)[ig] == _key_class(up)[ip])
    cg, cp, ci = ig[cand], ip[cand], inter[cand].astype(np.float64)
    union = p_area[cp] - p_on_void[cp] + g_area[cg] - ci
    if ignore_pred_void:
        union = union - g_pred_void[cg]
    iou = ci / union
    m = iou > 0.5

    # Re-index to segment arrays without the void entry.
    g_keep = np.flatnonzero(~g_void)
    p_keep = np.flatnonzero(~p_void)
    g_new = np.full(len(ug), -1)
    g_new[g_keep] = np.arange(len(g_keep))
    p_new = np.full(len(up), -1)
    p_new[p_keep] = np.arange(len(p_keep))
    return {
        "gt_keys": ug[g_keep],
        "pred_keys": up[p_keep],
        "gt_class": _key_class(ug[g_keep]),
        "gt_instance": _key_instance(ug[g_keep]),
        "pred_class": _key_class(up[p_keep]),
        "pred_instance": _key_instance(up[p_keep]),
        "gt_area": g_area[g_keep],
        "pred_area": p_area[p_keep],
        "gt_void_fraction": p_on_void[p_keep] / np.maximum(p_area[p_keep], 1),
        "pred_void_fraction": g_pred_void[g_keep] / np.maximum(g_area[g_keep], 1),
        "match_gt": g_new[cg[m]],
        "match_pred": p_new[cp[m]],
        "match_iou": iou[m],
        "pixel_gt": g_new[g_pix],
        "pixel_pred": p_new[p_pix],
        "ignore_pred_void": ignore_pred_void,
    }


def _pq_counts(match: dict, class_ids: np.ndarray) -> np.ndarray:
    """Per-class (iou_sum, tp, fp, fn) ``(C, 4)`` from :func:`match_segments` output."""
    C = len(class_ids)
    out = np.zeros((C, 4))
    cls_index = {int(c): i for i, c in enumerate(class_ids)}
    gi = np.array([cls_index[int(c)] for c in match["gt_class"]], dtype=np.int64)
    pi = np.array([cls_index[int(c)] for c in match["pred_class"]], dtype=np.int64)
    matched_g = np.zeros(len(gi), bool)
    matched_g[match["match_gt"]] = True
    matched_p = np.zeros(len(pi), bool)
    matched_p[match["match_pred"]] = True
    out[:, 0] = np.bincount(gi[match["match_gt"]], weights=match["match_iou"], minlength=C)
    out[:, 1] = np.bincount(gi[match["match_gt"]], minlength=C)
    # An unmatched predicted segment lying mostly on GT void is not a false positive (COCO rule).
    fp = ~matched_p & ~(match["gt_void_fraction"] > 0.5)
    out[:, 2] = np.bincount(pi[fp], minlength=C)
    fn = ~matched_g
    if match["ignore_pred_void"]:
        fn &= ~(match["pred_void_fraction"] > 0.5)
    out[:, 3] = np.bincount(gi[fn], minlength=C)
    return out


def _nanmean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _pq_summary(counts: np.ndarray, things: np.ndarray, stuff: np.ndarray) -> dict:
    """COCO-style class-averaged PQ / SQ / RQ from per-class counts (classes: things then stuff)."""
    iou_sum, tp, fp, fn = counts.T
    denom = tp + 0.5 * fp + 0.5 * fn
    seen = denom > 0  # classes with no GT and no predicted segment do not enter the averages
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
        rq = np.where(seen, tp / np.where(seen, denom, 1), 0.0)
    pq = sq * rq
    is_thing = np.r_[np.ones(len(things), bool), np.zeros(len(stuff), bool)]
    out: dict = {}
    for name, sel in (("", seen), ("_things", seen & is_thing), ("_stuff", seen & ~is_thing)):
        out[f"pq{name}"] = _nanmean(pq[sel])
        out[f"sq{name}"] = _nanmean(sq[sel])
        out[f"rq{name}"] = _nanmean(rq[sel])
        out[f"n_classes{name}"] = int(sel.sum())
    out["tp"], out["fp"], out["fn"] = int(tp.sum()), int(fp.sum()), int(fn.sum())
    ids = np.r_[things, stuff]
    out["per_class"] = {
        int(c): {
            "pq": float(pq[i]),
            "sq": float(sq[i]),
            "rq": float(rq[i]),
            "tp": int(tp[i]),
            "fp": int(fp[i]),
            "fn": int(fn[i]),
        }
        for i, c in enumerate(ids)
        if seen[i]
    }
    return out


def panoptic_quality(
    pred_sem: np.ndarray,
    pred_inst: np.ndarray,
    gt_sem: np.ndarray,
    gt_inst: np.ndarray,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    void: int = -1,
    ignore_pred_void: bool = False,
) -> dict:
    """Panoptic quality of one (concatenated) label image: PQ^scene when all frames are concatenated.

    Args:
        pred_sem, pred_inst, gt_sem, gt_inst: equal-shaped int arrays; all frames of a split
            concatenated, so instance ids must be consistent across frames (module conventions).
        thing_ids, stuff_ids: evaluated categories.
        void: void semantic label. GT void pixels are ignored; see :func:`match_segments` for the
            matching rule and ``ignore_pred_void``.

    Per class c: ``SQ_c = sum IoU / |TP|`` (0 without TP), ``RQ_c = |TP| / (|TP| + |FP|/2 + |FN|/2)``,
    ``PQ_c = SQ_c * RQ_c``. The reported PQ, SQ and RQ are means over the classes with at least one GT
    or (non-void) predicted segment (so mean PQ is not mean SQ x mean RQ), as in the COCO panoptic API
    and torchmetrics; ``_things`` / ``_stuff`` average over thing / stuff classes only.

    Returns:
        dict with ``pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff``,
        ``n_classes*``, total ``tp, fp, fn`` and ``per_class {category id: {pq, sq, rq, tp, fp, fn}}``.
    """
    things, stuff = _as_ids(thing_ids), _as_ids(stuff_ids)
    match = match_segments(pred_sem, pred_inst, gt_sem, gt_inst, things, stuff, void, ignore_pred_void)
    return pq_from_match(match, things, stuff)


def pq_from_match(match: dict, thing_ids: Sequence[int], stuff_ids: Sequence[int]) -> dict:
    """:func:`panoptic_quality`'s result from an existing :func:`match_segments` result (same categories)."""
    things, stuff = _as_ids(thing_ids), _as_ids(stuff_ids)
    return _pq_summary(_pq_counts(match, np.r_[things, stuff]), things, stuff)


def per_frame_pq(
    pred_sem: np.ndarray,
    pred_inst: np.ndarray,
    gt_sem: np.ndarray,
    gt_inst: np.ndarray,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    void: int = -1,
    ignore_pred_void: bool = False,
) -> dict:
    """Classic per-image PQ over a set of frames: segments are matched within each frame only.

    Args:
        pred_sem, pred_inst, gt_sem, gt_inst: ``(N, ...)`` int arrays, one entry per frame along axis 0.

    The per-class IoU sums and TP / FP / FN counts of all frames are added up before averaging (as the
    COCO API does over a dataset), so this is PQ^scene's counterpart without cross-frame consistency:
    an instance id swapped between frames costs nothing here. Returns the same keys as
    :func:`panoptic_quality`.
    """
    things, stuff = _as_ids(thing_ids), _as_ids(stuff_ids)
    arrays = [np.asarray(a) for a in (pred_sem, pred_inst, gt_sem, gt_inst)]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("per_frame_pq: all four arrays need the same number of frames (axis 0)")
    counts = np.zeros((len(things) + len(stuff), 4))
    for i in range(n):  # loop over frames; each frame is vectorised
        match = match_segments(*(a[i] for a in arrays), things, stuff, void, ignore_pred_void)
        counts += _pq_counts(match, np.r_[things, stuff])
    return _pq_summary(counts, things, stuff)


def semantic_iou(pred: np.ndarray, gt: np.ndarray, class_ids: Sequence[int], void: int = -1) -> dict:
    """Semantic segmentation scores from a confusion matrix.

    Args:
        pred: int array of predicted category ids (``void`` or any id outside ``class_ids`` = unlabelled).
        gt: int array of the same shape; ``void`` elements are ignored.
        class_ids: the evaluated category ids (GT ids outside them and not void are an error).

    Returns:
        dict with ``class_ids (C,)``, ``iou (C,)`` (TP / (TP + FP + FN), nan for classes absent from GT),
        ``acc (C,)`` (TP / (TP + FN), the class's recall), ``miou`` and ``macc`` (means over the classes
        present in GT), ``pixel_acc`` (share of evaluated elements labelled correctly) and ``confusion``
        ``(C, C + 1) int64`` with rows = GT class, columns = predicted class, last column = unlabelled.
        Predicting a class absent from GT lowers the IoU of the true class of those pixels.
    """
    ids = _as_ids(class_ids)
    C = len(ids)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"semantic_iou: prediction has {pred.size} elements, ground truth {gt.size}")
    valid = gt != void
    g, p = gt[valid], pred[valid]
    gi = np.searchsorted(ids, g)
    gi_c = np.minimum(gi, C - 1)
    if C == 0 or not np.all(ids[gi_c] == g):
        bad = np.unique(g[ids[gi_c] != g])[:10].tolist() if C else np.unique(g)[:10].tolist()
        raise ValueError(f"semantic_iou: GT category id(s) {bad} are not among the evaluated classes")
    pi = np.minimum(np.searchsorted(ids, p), C - 1)
    pi = np.where(ids[pi] == p, pi, C)  # unlabelled / unknown -> last column
    conf = np.bincount(gi * (C + 1) + pi, minlength=C * (C + 1)).reshape(C, C + 1)
    tp = np.diag(conf[:, :C]).astype(np.float64)
    gt_n = conf.sum(1).astype(np.float64)
    pred_n = conf[:, :C].sum(0).astype(np.float64)
    present = gt_n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / (gt_n + pred_n - tp), np.nan)
        acc = np.where(present, tp / gt_n, np.nan)
    return {
        "class_ids": ids,
        "iou": iou,
        "acc": acc,
        "miou": _nanmean(iou[present]),
        "macc": _nanmean(acc[present]),
        "pixel_acc": float(tp.sum() / gt_n.sum()) if gt_n.sum() else float("nan"),
        "confusion": conf,
    }


def coverage(
    pred_inst: np.ndarray, gt_inst: np.ndarray, ignore: np.ndarray | None = None, matching: str = "max"
) -> dict:
    """Instance coverage mCov and mW-Cov (PanopticRecon++ eq. 41-42).

    Args:
        pred_inst: int array, predicted instance id per element (> 0 an instance, <= 0 none).
        gt_inst: int array of the same shape, GT instance id (> 0 a thing instance, <= 0 stuff / none).
        ignore: optional bool array, elements left out entirely (GT void).
        matching: ``"max"``: each GT instance takes its best IoU over all predicted instances (the
            classic coverage; one prediction may cover several GT instances). ``"hungarian"``: one-to-one
            assignment maximising the summed IoU (scipy's linear_sum_assignment); unassigned GT get 0.

    Instances are class-agnostic. IoU is over the non-ignored elements; predicted-instance elements on
    GT stuff count in the union. ``mCov = mean_i IoU_i``; ``mW-Cov = sum_i w_i IoU_i`` with
    ``w_i = |G_i| / sum_j |G_j|`` (area in 2D, surface samples in 3D).

    Returns:
        dict ``mcov, mwcov`` (nan without GT instances), ``n_instances``, ``gt_ids (O,)``,
        ``iou (O,)``, ``best_pred (O,)`` (matched predicted id, 0 if none).
    """
    pred_inst = np.asarray(pred_inst).reshape(-1).astype(np.int64)
    gt_inst = np.asarray(gt_inst).reshape(-1).astype(np.int64)
    if pred_inst.shape != gt_inst.shape:
        raise ValueError(f"coverage: prediction has {pred_inst.size} elements, ground truth {gt_inst.size}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool).reshape(-1)
        pred_inst, gt_inst = pred_inst[keep], gt_inst[keep]
    pred_inst = np.where(pred_inst > 0, pred_inst, 0)
    gt_inst = np.where(gt_inst > 0, gt_inst, 0)
    ug, _, g_area, up, _, p_area, ig, ip, inter = _pair_table(gt_inst, pred_inst)
    gsel, psel = ug > 0, up > 0
    gt_ids = ug[gsel]
    O = len(gt_ids)
    empty = {"mcov": float("nan"), "mwcov": float("nan"), "n_instances": 0}
    if O == 0:
        return {**empty, "gt_ids": gt_ids, "iou": np.zeros(0), "best_pred": np.zeros(0, np.int64)}
    g_new = np.cumsum(gsel) - 1
    p_new = np.cumsum(psel) - 1
    pair = gsel[ig] & psel[ip]
    gi, pi, ci = g_new[ig[pair]], p_new[ip[pair]], inter[pair].astype(np.float64)
    ga, pa = g_area[gsel].astype(np.float64), p_area[psel].astype(np.float64)
    iou_pairs = ci / (ga[gi] + pa[pi] - ci)
    best = np.zeros(O)
    best_pred = np.zeros(O, np.int64)
    if matching == "max":
        order = np.lexsort((iou_pairs, gi))  # by GT, IoU ascending: the last of each GT run is its max
        last = np.r_[gi[order][1:] != gi[order][:-1], True]
        sel = order[last]
        best[gi[sel]] = iou_pairs[sel]
        best_pred[gi[sel]] = up[psel][pi[sel]]
    elif matching == "hungarian":
        from scipy.optimize import linear_sum_assignment

        dense = np.zeros((O, int(psel.sum())))
        dense[gi, pi] = iou_pairs
        rows, cols = linear_sum_assignment(dense, maximize=True)
        hit = dense[rows, cols] > 0
        best[rows[hit]] = dense[rows[hit], cols[hit]]
        best_pred[rows[hit]] = up[psel][cols[hit]]
    else:
        raise ValueError(f"coverage: matching must be 'max' or 'hungarian', got {matching!r}")
    w = ga / ga.sum()
    return {
        "mcov": float(best.mean()),
        "mwcov": float((w * best).sum()),
        "n_instances": O,
        "gt_ids": gt_ids,
        "iou": best,
        "best_pred": best_pred,
    }


def coverage_from_match(match: dict) -> dict:
    """mCov and mW-Cov (eq. 41-42) over the pairs of a panoptic matching (the paper's 2D protocol).

    Args:
        match: a :func:`match_segments` result (usually of all frames concatenated, PQ^scene).

    Each GT thing segment (instance > 0) takes the IoU of the predicted segment matched to it (same
    class, IoU > 0.5, void handled as in the matching) or 0 when unmatched. Weights are the GT
    segments' areas without void pixels. Unlike :func:`coverage`, a right mask with the wrong class
    scores 0 here, as in the panoptic protocol.

    Returns:
        the keys of :func:`coverage`: ``mcov, mwcov, n_instances, gt_ids (O,), iou (O,), best_pred (O,)``.
    """
    things = np.flatnonzero(match["gt_instance"] > 0)
    O = len(things)
    iou = np.zeros(len(match["gt_keys"]))
    iou[match["match_gt"]] = match["match_iou"]
    best_pred = np.zeros(len(match["gt_keys"]), np.int64)
    best_pred[match["match_gt"]] = match["pred_instance"][match["match_pred"]]
    if O == 0:
        nan = float("nan")
        return {"mcov": nan, "mwcov": nan, "n_instances": 0, "gt_ids": np.zeros(0, np.int64),
                "iou": np.zeros(0), "best_pred": np.zeros(0, np.int64)}  # fmt: skip
    area = match["gt_area"][things].astype(np.float64)
    return {
        "mcov": float(iou[things].mean()),
        "mwcov": float((area * iou[things]).sum() / area.sum()),
        "n_instances": O,
        "gt_ids": match["gt_instance"][things].astype(np.int64),
        "iou": iou[things],
        "best_pred": best_pred[things],
    }


def nearest_distances(query: np.ndarray, ref: np.ndarray, tree=None) -> tuple[np.ndarray, np.ndarray]:
    """Distance ``(N,)`` and index ``(N,)`` of each query point's nearest point in ``ref`` (scipy KD-tree).

    ``tree`` may be a prebuilt ``scipy.spatial.cKDTree`` of ``ref``.
    """
    from scipy.spatial import cKDTree

    query = np.asarray(query, dtype=np.float64).reshape(-1, 3)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, 3)
    if len(ref) == 0:
        return np.full(len(query), np.inf), np.full(len(query), -1, np.int64)
    tree = tree if tree is not None else cKDTree(ref)
    d, i = tree.query(query, k=1, workers=1)
    return d, i.astype(np.int64)


def geometry_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, threshold: float = 0.05) -> dict:
    """Reconstruction scores from nearest-neighbour distances (metres).

    Args:
        pred_to_gt: ``(N,)`` distance of each predicted point to the GT point set.
        gt_to_pred: ``(M,)`` distance of each GT point to the predicted point set.
        threshold: distance (metres) below which a point counts as correct.

    Returns:
        ``accuracy_cm`` = mean(pred_to_gt), ``completeness_cm`` = mean(gt_to_pred),
        ``chamfer_l1_cm`` = (accuracy + completeness) / 2, ``precision`` = share of predicted points
        within ``threshold``, ``recall`` = share of GT points within it, ``fscore`` their harmonic mean,
        and ``threshold_cm``.
    """
    pred_to_gt = np.asarray(pred_to_gt, dtype=np.float64)
    gt_to_pred = np.asarray(gt_to_pred, dtype=np.float64)
    acc = float(pred_to_gt.mean()) * 100 if pred_to_gt.size else float("nan")
    comp = float(gt_to_pred.mean()) * 100 if gt_to_pred.size else float("nan")
    precision = float((pred_to_gt < threshold).mean()) if pred_to_gt.size else 0.0
    recall = float((gt_to_pred < threshold).mean()) if gt_to_pred.size else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy_cm": acc,
        "completeness_cm": comp,
        "chamfer_l1_cm": (acc + comp) / 2,
        "precision": precision,
        "recall": recall,
        "fscore": f,
        "threshold_cm": threshold * 100,
    }


def geometry_metrics(pred_pts: np.ndarray, gt_pts: np.ndarray, threshold: float = 0.05) -> dict:
    """Accuracy, completeness, Chamfer-L1 (cm), precision, recall and F-score between two point sets.

    Args:
        pred_pts: ``(N, 3)`` points on the reconstruction, metres (sample both surfaces uniformly with
            the same count, e.g. :func:`sample_surface`, so the means are per unit area).
        gt_pts: ``(M, 3)`` points on the ground truth, metres.
        threshold: precision / recall distance threshold in metres (5 cm by default).

    Returns: see :func:`geometry_from_distances`.
    """
    d_pg, _ = nearest_distances(pred_pts, gt_pts)
    d_gp, _ = nearest_distances(gt_pts, pred_pts)
    return geometry_from_distances(d_pg, d_gp, threshold)


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0, return_faces: bool = False
) -> tuple[np.ndarray, ...]:
    """``count`` points uniformly (by area) on a triangle mesh, reproducibly.

    Returns:
        points ``(count, 3) float64`` and ``nearest_vertex (count,) int64``: for each point the index of
        its triangle's corner nearest to it (to carry per-vertex labels, as the label renderer does);
        with ``return_faces`` also ``face (count,) int64``, the triangle each point lies on.
    """
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), process=False)
    if len(mesh.faces) == 0 or mesh.area <= 0:
        empty = (np.zeros((0, 3)), np.zeros(0, np.int64))
        return (*empty, np.zeros(0, np.int64)) if return_faces else empty
    pts, face_idx = trimesh.sample.sample_surface(mesh, count, seed=seed)
    pts = np.asarray(pts, np.float64)
    corners = np.asarray(mesh.vertices, np.float64)[mesh.faces[face_idx]]  # (count, 3, 3)
    corner = np.argmin(np.linalg.norm(corners - pts[:, None], axis=2), axis=1)
    nearest = mesh.faces[face_idx, corner].astype(np.int64)
    return (pts, nearest, np.asarray(face_idx, np.int64)) if return_faces else (pts, nearest)


def surface_distances(
    query: np.ndarray,
    ref_points: np.ndarray,
    ref_faces: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    k: int = 8,
    tree=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each query point to a mesh surface, via its samples: ``(N,)`` metres and ``(N,)`` the
    index of the nearest sample.

    Args:
        query: ``(N, 3)`` points.
        ref_points: ``(M, 3)`` samples on the reference mesh; ``ref_faces (M,)`` the triangle of each
            (:func:`sample_surface` with ``return_faces``).
        vertices, faces: the reference mesh ``(V, 3)`` / ``(F, 3)``.
        k: nearest samples (scipy KD-tree) whose triangles are tested.
        tree: optional prebuilt ``cKDTree`` of ``ref_points``.

    Point-to-sample distances carry a floor of about half the sample spacing (about 2 cm for 200 k
    samples on a 300 m^2 room) that no reconstruction can beat. The exact distance to the triangles
    of the ``k`` nearest samples removes it: it is never above the point-to-sample distance, never
    below the true point-to-surface distance, and equal to it whenever one of those triangles holds
    the closest surface point (almost always with dense samples). No library offers this pairing of
    a KD-tree over samples with exact triangle distances; trimesh's proximity query is exact but
    needs minutes for a million-face mesh.
    """
    import trimesh

    query = np.asarray(query, np.float64).reshape(-1, 3)
    ref_points = np.asarray(ref_points, np.float64).reshape(-1, 3)
    if len(ref_points) == 0:
        return np.full(len(query), np.inf), np.full(len(query), -1, np.int64)
    from scipy.spatial import cKDTree

    tree = tree if tree is not None else cKDTree(ref_points)
    k = min(k, len(ref_points))
    d_pts, idx = tree.query(query, k=k, workers=1)
    d_pts, idx = d_pts.reshape(len(query), k), idx.reshape(len(query), k)
    tris = np.asarray(vertices, np.float64)[np.asarray(faces)[np.asarray(ref_faces)[idx]]]  # (N, k, 3, 3)
    best = d_pts[:, 0].copy()
    for j in range(k):  # k vectorised passes over all points
        closest = trimesh.triangles.closest_point(tris[:, j], query)
        best = np.minimum(best, np.linalg.norm(closest - query, axis=1))
    return best, idx[:, 0].astype(np.int64)


def psnr(
    pred: np.ndarray, gt: np.ndarray, data_range: float = 255.0, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio (dB) between two images ``(H, W[, 3])``; ``mask (H, W)`` bool limits
    the pixels compared. ``inf`` for identical images."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"psnr: shapes differ {pred.shape} vs {gt.shape}")
    diff = (pred - gt) ** 2
    if mask is not None:
        diff = diff[np.asarray(mask, bool)]
    mse = float(diff.mean()) if diff.size else float("nan")
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (scikit-image, 7x7 uniform window, mean over channels) of ``(H, W[, 3])``."""
    from skimage.metrics import structural_similarity

    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"ssim: shapes differ {pred.shape} vs {gt.shape}")
    return float(
        structural_similarity(pred, gt, data_range=data_range, channel_axis=2 if pred.ndim == 3 else None)
    )


def depth_absrel(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Mean absolute relative depth error ``|d - d*| / d*`` over pixels valid (> 0) in both maps.

    Args:
        pred, gt: ``(H, W)`` z-depth in metres, 0 = invalid / no hit.

    Returns:
        ``absrel`` (nan if no pixel is valid in both) and ``coverage``: share of valid GT pixels that
        also have a predicted depth (a reconstruction with holes has low coverage, not high AbsRel).
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    g = gt > 0
    both = g & (pred > 0)
    absrel = float(np.mean(np.abs(pred[both] - gt[both]) / gt[both])) if both.any() else float("nan")
    return {"absrel": absrel, "coverage": float(both.sum() / g.sum()) if g.any() else float("nan")}
