"""Metric functions of simgen.eval.metrics on hand-computed cases and against reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from simgen.eval import metrics as M

THINGS, STUFF = [3, 4], [1, 2]


def _scene_frames(n_frames=4, h=6, w=8):
    """GT frames: stuff 1 on the top rows, stuff 2 at the bottom, thing instances 10 (class 3) and 20 (class 4)
    as two equal 2x2 blocks, so a swapped pair has hand-computable IoU."""
    sem = np.zeros((n_frames, h, w), np.int64)
    inst = np.zeros_like(sem)
    sem[:, :3] = 1
    sem[:, 3:] = 2
    sem[:, 1:3, 1:3], inst[:, 1:3, 1:3] = 3, 10
    sem[:, 1:3, 5:7], inst[:, 1:3, 5:7] = 3, 20
    return sem, inst


# ----------------------------------------------------------------------------- panoptic quality


def test_perfect_prediction_scores_one():
    sem, inst = _scene_frames()
    r = M.panoptic_quality(sem, inst, sem, inst, THINGS, STUFF)
    for k in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert r[k] == 1.0
    assert (r["tp"], r["fp"], r["fn"]) == (4, 0, 0)  # stuff 1, stuff 2, two class-3 instances
    assert r["n_classes"] == 3 and r["n_classes_things"] == 1 and r["n_classes_stuff"] == 2
    # Renumbering predicted instances does not matter.
    r2 = M.panoptic_quality(
        sem, np.where(inst == 10, 7, np.where(inst == 20, 99, 0)), sem, inst, THINGS, STUFF
    )
    assert r2["pq"] == 1.0


def test_swapped_instances_across_frames_penalised_by_scene_pq_only():
    sem, inst = _scene_frames(n_frames=4)
    pred = inst.copy()
    # In the last frame the two instances swap ids.
    last = pred[-1]
    a, b = last == 10, last == 20
    last[a], last[b] = 20, 10
    scene = M.panoptic_quality(sem, pred, sem, inst, THINGS, STUFF)
    frame = M.per_frame_pq(sem, pred, sem, inst, THINGS, STUFF)
    # Per frame every segment is perfect.
    assert frame["pq"] == 1.0 and frame["tp"] == 16
    # Scene level: GT instance 10 has 4 blocks of 4 px, predicted 10 covers 3 of them plus one block of
    # instance 20: IoU = 12 / (16 + 16 - 12) = 0.6 for both instances, RQ = 1.
    assert scene["per_class"][3]["sq"] == pytest.approx(0.6)
    assert scene["per_class"][3]["rq"] == 1.0
    assert scene["pq_things"] == pytest.approx(0.6)
    assert scene["pq_stuff"] == 1.0
    assert scene["pq"] == pytest.approx((0.6 + 1 + 1) / 3)


def test_iou_of_exactly_half_is_not_a_match():
    # Three frames, swap in the last: IoU = 8 / (12 + 12 - 8) = 0.5, which must not match.
    sem, inst = _scene_frames(n_frames=3)
    pred = inst.copy()
    a, b = pred[-1] == 10, pred[-1] == 20
    pred[-1][a], pred[-1][b] = 20, 10
    r = M.panoptic_quality(sem, pred, sem, inst, THINGS, STUFF)
    assert r["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 2, "fn": 2}


def test_gt_void_pixels_are_ignored():
    gt_sem = np.array([3, 3, 3, 3, -1, -1, 1, 1])
    gt_inst = np.array([5, 5, 5, 5, 0, 0, 0, 0])
    # The predicted instance spills onto the void pixels: they leave the union, IoU stays 1.
    pred_sem = np.array([3, 3, 3, 3, 3, 3, 1, 1])
    pred_inst = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    r = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
    assert r["pq"] == 1.0
    # A predicted segment lying (mostly) on void is not a false positive.
    pred_sem2 = np.array([3, 3, 3, 3, 4, 4, 1, 1])
    pred_inst2 = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    r2 = M.panoptic_quality(pred_sem2, pred_inst2, gt_sem, gt_inst, THINGS, STUFF)
    assert r2["fp"] == 0 and r2["pq"] == 1.0
    # The same segment half on void, half on stuff 1: not mostly void -> a false positive of class 4.
    pred_sem3 = np.array([3, 3, 3, 3, 4, 4, 4, 4])
    pred_inst3 = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    r3 = M.panoptic_quality(pred_sem3, pred_inst3, gt_sem, gt_inst, THINGS, STUFF)
    assert r3["per_class"][4]["fp"] == 1 and r3["per_class"][1]["fn"] == 1


def test_predicted_void_counts_against_gt_unless_ignored():
    gt_sem, gt_inst = np.array([3, 3, 3, 3]), np.array([1, 1, 1, 1])
    pred_sem, pred_inst = np.array([3, 3, -1, -1]), np.array([1, 1, 0, 0])
    # COCO: IoU = 2 / 4 = 0.5 -> no match: one FN and one FP.
    r = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
    assert (r["tp"], r["fp"], r["fn"], r["pq"]) == (0, 1, 1, 0.0)
    # torchmetrics / Panoptic Lifting: predicted-void pixels leave the union -> IoU 1.
    r = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF, ignore_pred_void=True)
    assert (r["tp"], r["fp"], r["fn"], r["pq"]) == (1, 0, 0, 1.0)
    # ... and a GT segment predicted mostly void is no false negative there.
    r = M.panoptic_quality(np.full(4, -1), np.zeros(4), gt_sem, gt_inst, THINGS, STUFF, ignore_pred_void=True)
    assert (r["fn"], r["n_classes"]) == (0, 0) and np.isnan(r["pq"])
    r = M.panoptic_quality(np.full(4, -1), np.zeros(4), gt_sem, gt_inst, THINGS, STUFF)
    assert (r["fn"], r["pq"]) == (1, 0.0)


def test_stuff_instance_ids_and_class_mismatch():
    gt_sem, gt_inst = np.array([1, 1, 1, 1, 3, 3]), np.array([0, 0, 0, 0, 9, 9])
    # Instance ids on stuff are ignored: still one stuff segment.
    r = M.panoptic_quality(gt_sem, np.array([0, 1, 2, 3, 9, 9]), gt_sem, gt_inst, THINGS, STUFF)
    assert r["pq"] == 1.0
    # Right pixels, wrong class: no match.
    r = M.panoptic_quality(
        np.array([1, 1, 1, 1, 4, 4]), np.array([0, 0, 0, 0, 9, 9]), gt_sem, gt_inst, THINGS, STUFF
    )
    assert r["per_class"][3]["fn"] == 1 and r["per_class"][4]["fp"] == 1 and r["pq"] == pytest.approx(1 / 3)


def test_unknown_category_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prediction: category id\(s\) \[7\]"):
        M.panoptic_quality(np.array([7, 1]), np.zeros(2), np.array([1, 1]), np.zeros(2), THINGS, STUFF)
    with pytest.raises(ValueError, match="overlap"):
        M.panoptic_quality(np.array([1]), np.zeros(1), np.array([1]), np.zeros(1), [1], [1])


def _random_panoptic(rng, n_frames=3, h=24, w=32, void=True):
    """Random blocky GT and a noisy prediction (renumbered ids, class flips, merges, void patches)."""
    gt_sem = np.zeros((n_frames, h, w), np.int64)
    gt_inst = np.zeros_like(gt_sem)
    for f in range(n_frames):
        gt_sem[f] = rng.choice(STUFF)
        gt_sem[f, h // 2 :] = 2
        for _ in range(rng.integers(2, 6)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            hh, ww = rng.integers(3, 10), rng.integers(3, 10)
            gt_sem[f, y : y + hh, x : x + ww] = rng.choice(THINGS)
            gt_inst[f, y : y + hh, x : x + ww] = rng.integers(1, 6)
        if void:
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            gt_sem[f, y : y + 3, x : x + 5] = -1
    pred_sem, pred_inst = gt_sem.copy(), gt_inst.copy()
    pred_sem[pred_sem == -1] = rng.choice(THINGS + STUFF)
    flip = rng.random(gt_sem.shape) < 0.15
    pred_sem[flip] = rng.choice(THINGS + STUFF, size=flip.sum())
    pred_inst[flip] = rng.integers(0, 4, size=flip.sum())
    pred_inst = (pred_inst * 7 + 3) % 11  # renumber (and merge some) instances
    for f in range(n_frames):  # shifted blocks
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        pred_sem[f, y : y + 6, x : x + 6] = rng.choice(THINGS)
        pred_inst[f, y : y + 6, x : x + 6] = rng.integers(1, 12)
    return pred_sem, pred_inst, gt_sem, gt_inst


def _torchmetrics_pq(pred_sem, pred_inst, gt_sem, gt_inst, batch: bool):
    """torchmetrics' PanopticQuality on the same inputs.

    Void convention: torchmetrics has no void label of its own; any category outside things/stuffs is
    mapped to its internal void colour (for the target always, for predictions when
    allow_unknown_preds_category=True). So our -1 (GT void, predicted unlabelled) becomes an unused
    category id. torchmetrics then also drops predicted-void pixels from each GT segment's union and
    skips GT segments that are mostly predicted void, which is our ignore_pred_void=True.
    """
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.detection")
    unused = max(THINGS + STUFF) + 1
    # A thing pixel with instance 0 has no panoptic label in simgen (unlabelled): torchmetrics' void.
    pred_sem = np.where(np.isin(pred_sem, THINGS) & (pred_inst == 0), -1, pred_sem)
    p = np.stack([np.where(pred_sem == -1, unused, pred_sem), pred_inst], -1)
    t = np.stack([np.where(gt_sem == -1, unused, gt_sem), gt_inst], -1)
    if not batch:  # scene level: one image, all frames concatenated
        p, t = p.reshape(1, -1, 2), t.reshape(1, -1, 2)
    metric = tm.PanopticQuality(
        things=set(THINGS),
        stuffs=set(STUFF),
        allow_unknown_preds_category=True,
        return_sq_and_rq=True,
        return_per_class=True,
    )
    per_class = metric(torch.as_tensor(p), torch.as_tensor(t)).numpy()  # (C, 3): pq, sq, rq
    metric = tm.PanopticQuality(
        things=set(THINGS), stuffs=set(STUFF), allow_unknown_preds_category=True, return_sq_and_rq=True
    )
    avg = metric(torch.as_tensor(p), torch.as_tensor(t)).numpy()
    return per_class.reshape(-1, 3), avg


@pytest.mark.parametrize("seed", range(6))
def test_pq_matches_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    pred_sem, pred_inst, gt_sem, gt_inst = _random_panoptic(rng)
    if seed % 2:  # predicted-void patches as well
        pred_sem[:, :3, :4] = -1
    ours = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF, ignore_pred_void=True)
    per_class, avg = _torchmetrics_pq(pred_sem, pred_inst, gt_sem, gt_inst, batch=False)
    assert [ours["pq"], ours["sq"], ours["rq"]] == pytest.approx(avg.tolist(), abs=1e-6)
    for i, c in enumerate(sorted(THINGS) + sorted(STUFF)):  # torchmetrics orders things, then stuff
        mine = ours["per_class"].get(c, {"pq": 0.0, "sq": 0.0, "rq": 0.0})
        assert [mine["pq"], mine["sq"], mine["rq"]] == pytest.approx(per_class[i].tolist(), abs=1e-6)
    # Per-frame PQ is torchmetrics' batched mode (each sample matched on its own).
    frame = M.per_frame_pq(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF, ignore_pred_void=True)
    _, avg_b = _torchmetrics_pq(pred_sem, pred_inst, gt_sem, gt_inst, batch=True)
    assert [frame["pq"], frame["sq"], frame["rq"]] == pytest.approx(avg_b.tolist(), abs=1e-6)
    assert ours["tp"] > 0 and ours["fp"] > 0  # the random case exercises matches and misses
    if seed % 2 == 0:  # without predicted void the COCO convention gives the same numbers
        coco = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
        assert [coco["pq"], coco["sq"], coco["rq"]] == pytest.approx(avg.tolist(), abs=1e-6)


def test_matching_is_iou_above_half_not_max_sum_assignment():
    """IoU > 0.5 pairs are unique, but a max-summed-IoU assignment (then thresholded at 0.5, as the
    PanopticRecon++ text words it) can drop one: here g1-p1 has IoU 0.54 while g1-pa plus gb-p1 sum to 0.6.
    We keep the COCO / torchmetrics / Panoptic Lifting code's rule: the 0.54 pair is a true positive."""
    from scipy.optimize import linear_sum_assignment

    x = np.arange(130)
    gt_sem = np.full(130, 3)
    gt_inst = np.where(x < 100, 1, 2)  # g1 = [0, 100), gb = [100, 130)
    pred_sem = np.full(130, 3)
    pred_inst = np.where(x < 30, 7, 8)  # pa = [0, 30), p1 = [30, 130)
    m = M.match_segments(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
    assert m["gt_instance"][m["match_gt"]].tolist() == [1]
    assert m["pred_instance"][m["match_pred"]].tolist() == [8]
    assert m["match_iou"] == pytest.approx([70 / 130])
    iou = np.array([[30 / 100, 70 / 130], [0.0, 30 / 100]])  # rows g1, gb; columns pa, p1
    rows, cols = linear_sum_assignment(iou, maximize=True)
    assert not (iou[rows, cols] > 0.5).any()
    r = M.panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)


# ----------------------------------------------------------------------------- semantic


def test_semantic_iou_hand_computed():
    gt = np.array([0, 0, 1, 1, -1, 2])
    pred = np.array([0, 1, 1, 1, 0, -1])
    r = M.semantic_iou(pred, gt, [0, 1, 2])
    # class 0: TP 1, GT 2, pred 1 -> 1/2; class 1: TP 2, GT 2, pred 3 -> 2/3; class 2: TP 0 -> 0.
    np.testing.assert_allclose(r["iou"], [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(r["acc"], [0.5, 1.0, 0.0])
    assert r["miou"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert r["macc"] == pytest.approx(0.5)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["confusion"].tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]]
    # A class absent from GT does not enter the means; it is nan in the per-class table.
    r = M.semantic_iou(np.array([0, 5]), np.array([0, 0]), [0, 5])
    assert np.isnan(r["iou"][1]) and r["miou"] == 0.5
    perfect = M.semantic_iou(gt, gt, [0, 1, 2])
    assert perfect["miou"] == 1.0 and perfect["macc"] == 1.0
    with pytest.raises(ValueError, match=r"GT category id\(s\) \[2\]"):
        M.semantic_iou(pred, gt, [0, 1])


# ----------------------------------------------------------------------------- coverage


def test_coverage_hand_computed():
    gt = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([5, 5, 0, 0, 5, 5, 6, 6])
    # GT 1 (4 px): best pred 5 (4 px), IoU 2 / 6; GT 2 (2 px): pred 5, IoU 2 / 4. Pred 6 lies on
    # non-instance GT. With "max" pred 5 covers both.
    r = M.coverage(pred, gt)
    np.testing.assert_allclose(r["iou"], [1 / 3, 1 / 2])
    assert r["mcov"] == pytest.approx(5 / 12)
    assert r["mwcov"] == pytest.approx(4 / 6 * 1 / 3 + 2 / 6 * 1 / 2)
    assert r["best_pred"].tolist() == [5, 5]
    # One-to-one assignment: pred 5 goes to GT 2 only.
    h = M.coverage(pred, gt, matching="hungarian")
    np.testing.assert_allclose(h["iou"], [0.0, 0.5])
    assert h["best_pred"].tolist() == [0, 5]
    # Weighted by GT size: a perfect small instance and a missed large one.
    gt = np.array([1, 1, 1, 2, 0])
    pred = np.array([0, 0, 0, 3, 0])
    r = M.coverage(pred, gt)
    assert r["mcov"] == 0.5 and r["mwcov"] == pytest.approx(1 / 4)
    # Ignored elements leave both masks.
    r = M.coverage(np.array([4, 4, 4]), np.array([1, 1, 0]), ignore=np.array([False, False, True]))
    assert r["mcov"] == 1.0
    assert np.isnan(M.coverage(np.array([1]), np.array([0]))["mcov"])


# ----------------------------------------------------------------------------- geometry


def test_geometry_matches_brute_force():
    rng = np.random.default_rng(0)
    pred = rng.random((300, 3))
    gt = pred[:250] + rng.normal(0, 0.03, (250, 3))
    r = M.geometry_metrics(pred, gt, threshold=0.05)
    dist = np.linalg.norm(pred[:, None] - gt[None], axis=2)
    d_pg, d_gp = dist.min(1), dist.min(0)
    assert r["accuracy_cm"] == pytest.approx(d_pg.mean() * 100)
    assert r["completeness_cm"] == pytest.approx(d_gp.mean() * 100)
    assert r["chamfer_l1_cm"] == pytest.approx((d_pg.mean() + d_gp.mean()) * 50)
    p, rc = (d_pg < 0.05).mean(), (d_gp < 0.05).mean()
    assert (r["precision"], r["recall"]) == pytest.approx((p, rc))
    assert r["fscore"] == pytest.approx(2 * p * rc / (p + rc))
    assert 0 < r["precision"] < 1 and 0 < r["recall"] < 1


def test_geometry_shifted_plane_and_identity():
    # A dense unit square sampled twice; the second shifted 10 cm along its normal.
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    a, _ = M.sample_surface(verts, faces, 20000, seed=1)
    b, _ = M.sample_surface(verts, faces, 20000, seed=2)
    same = M.geometry_metrics(a, b)
    assert same["fscore"] == 1.0 and same["chamfer_l1_cm"] < 0.5
    shifted = M.geometry_metrics(a + [0, 0, 0.1], b)
    assert shifted["accuracy_cm"] == pytest.approx(10, abs=0.05)
    assert shifted["completeness_cm"] == pytest.approx(10, abs=0.05)
    assert shifted["fscore"] == 0.0
    exact = M.geometry_metrics(a, a)
    assert exact["chamfer_l1_cm"] == 0.0 and exact["fscore"] == 1.0


def test_sample_surface_is_seeded_and_labels_nearest_vertex():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    faces = np.array([[0, 1, 2]])
    p1, v1 = M.sample_surface(verts, faces, 500, seed=7)
    p2, v2 = M.sample_surface(verts, faces, 500, seed=7)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(v1, v2)
    # Each point carries its triangle's corner nearest to it.
    d = np.linalg.norm(p1[:, None] - verts[None], axis=2)
    np.testing.assert_array_equal(d.argmin(1), v1)
    assert len(np.unique(v1)) == 3
    assert len(M.sample_surface(verts, np.zeros((0, 3), int), 10)[0]) == 0


# ----------------------------------------------------------------------------- appearance


def test_psnr_ssim_absrel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3)).astype(np.uint8)
    assert M.psnr(img, img) == np.inf
    assert M.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + 10, 0, 255)
    mse = ((noisy - img.astype(int)) ** 2).mean()
    assert M.psnr(noisy, img) == pytest.approx(10 * np.log10(255**2 / mse))
    assert M.ssim(noisy, img) < 1.0
    assert M.ssim(np.zeros_like(img), img) < 0.1
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    pred = np.array([[1.1, 0.0], [3.0, 5.0]])
    r = M.depth_absrel(pred, gt)
    assert r["absrel"] == pytest.approx((0.1 + 0.25) / 2)
    assert r["coverage"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- label rendering


def test_render_panoptic_labels_nearest_corner_and_interpolates_colour():
    from simgen.data.camera import Intrinsics, look_at, opengl_to_opencv
    from simgen.folders import PanopticMesh
    from simgen.render.mesh import colors_at_hits, labels_at_hits, render_panoptic
    from simgen.render.raycast import MeshRaycaster

    # A 2 x 2 m square at z = 0 split into two triangles; each corner its own label and colour.
    verts = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]])
    mesh = PanopticMesh(verts, faces, colors, semantic=[1, 2, 3, 4], instance=[0, 5, 6, 7])
    K = Intrinsics(40.0, 40.0, 32.0, 32.0, 64, 64)
    c2w = opengl_to_opencv(look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3), up=(0.0, 1.0, 0.0)))
    rc = MeshRaycaster(mesh.to_trimesh())
    sem, inst, depth = render_panoptic(mesh, rc, K, c2w)
    hits = rc.cast(K, c2w)
    valid = hits.face >= 0
    assert valid.any() and (~valid).any()  # the square fills part of the view
    assert (sem[~valid] == -1).all() and (inst[~valid] == 0).all() and (depth[~valid] == 0).all()
    np.testing.assert_allclose(depth[valid], 2.0, atol=1e-5)
    # Every hit pixel carries the label of the corner of its own triangle nearest to the hit point.
    pts = hits.points[valid].astype(float)
    corner_ids = faces[hits.face[valid]]
    d = np.linalg.norm(verts[corner_ids] - pts[:, None], axis=2)
    want = corner_ids[np.arange(len(pts)), d.argmin(1)]
    np.testing.assert_array_equal(sem[valid], mesh.semantic[want])
    np.testing.assert_array_equal(inst[valid], mesh.instance[want])
    assert set(np.unique(sem[valid])) == {1, 2, 3, 4}
    # Colours: barycentric interpolation reproduces a colour that is an affine function of position
    # exactly (here red grows with x, green with y).
    ramp = np.round(np.c_[127.5 * (verts[:, :2] + 1), np.full(4, 50)])
    rgb = colors_at_hits(PanopticMesh(verts, faces, ramp, [1] * 4, [0] * 4), hits)
    assert (rgb[~valid] == 0).all()
    want_rgb = np.c_[127.5 * (pts[:, :2] + 1), np.full(len(pts), 50)]
    np.testing.assert_allclose(rgb[valid], want_rgb, atol=1.0)
    # A single-colour mesh renders that colour everywhere it is hit.
    flat = PanopticMesh(verts, faces, np.tile([10, 120, 230], (4, 1)), [1] * 4, [0] * 4)
    assert (colors_at_hits(flat, hits)[valid] == [10, 120, 230]).all()
    sem2, _ = labels_at_hits(mesh, hits)
    np.testing.assert_array_equal(sem2, sem)


def test_coverage_from_panoptic_matching():
    # The four-frame swap: scene-level IoU 0.6 for both class-3 instances (see the PQ test above).
    sem, inst = _scene_frames(n_frames=4)
    pred = inst.copy()
    a, b = pred[-1] == 10, pred[-1] == 20
    pred[-1][a], pred[-1][b] = 20, 10
    m = M.match_segments(sem, pred, sem, inst, THINGS, STUFF)
    r = M.coverage_from_match(m)
    assert r["n_instances"] == 2 and r["gt_ids"].tolist() == [10, 20]
    np.testing.assert_allclose(r["iou"], [0.6, 0.6])
    assert r["mcov"] == pytest.approx(0.6) and r["mwcov"] == pytest.approx(0.6)
    assert r["best_pred"].tolist() == [10, 20]
    # Right mask, wrong class: no panoptic pair, so 0 here while the class-agnostic coverage gives 1.
    gt_sem, gt_inst = np.array([3, 3, 3, 3, 3, 3, 1, 1]), np.array([1, 1, 1, 1, 2, 2, 0, 0])
    pred_sem = np.array([3, 3, 3, 3, 4, 4, 1, 1])
    m = M.match_segments(pred_sem, gt_inst, gt_sem, gt_inst, THINGS, STUFF)
    r = M.coverage_from_match(m)
    np.testing.assert_allclose(r["iou"], [1.0, 0.0])
    assert r["mcov"] == 0.5 and r["mwcov"] == pytest.approx(4 / 6)
    assert M.coverage(gt_inst, gt_inst)["mcov"] == 1.0
    # Below the 0.5 threshold a pair does not count: IoU 2/4 -> 0. GT void pixels leave the union.
    gt_sem, gt_inst = np.array([3, 3, 3, 3, -1, -1]), np.array([1, 1, 1, 1, 0, 0])
    m = M.match_segments(
        np.array([3, 3, 1, 1, 3, 3]), np.array([5, 5, 0, 0, 5, 5]), gt_sem, gt_inst, THINGS, STUFF
    )
    assert M.coverage_from_match(m)["mcov"] == 0.0
    m = M.match_segments(
        np.array([3, 3, 3, 1, 3, 3]), np.array([5, 5, 5, 0, 5, 5]), gt_sem, gt_inst, THINGS, STUFF
    )
    assert M.coverage_from_match(m)["mcov"] == pytest.approx(3 / 4)
    # No GT thing: nan.
    m = M.match_segments(np.array([1, 1]), np.zeros(2), np.array([1, 1]), np.zeros(2), THINGS, STUFF)
    assert np.isnan(M.coverage_from_match(m)["mcov"])


def test_surface_distances_against_exact_point_to_mesh():
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    ref, _, ref_f = M.sample_surface(v, f, 5000, seed=3, return_faces=True)
    rng = np.random.default_rng(0)
    on, _ = M.sample_surface(v, f, 2000, seed=4)
    query = on + rng.normal(0, 0.02, on.shape)
    d, nn = M.surface_distances(query, ref, ref_f, v, f)
    _, exact, _ = trimesh.proximity.closest_point(box, query)
    point_to_point = np.linalg.norm(query - ref[nn], axis=1)
    assert (d >= exact - 1e-9).all() and (d <= point_to_point + 1e-9).all()
    assert np.mean(np.abs(d - exact) < 1e-9) > 0.99
    # Points on the surface are at distance 0 (up to rounding), unlike their distance to the samples.
    d_on, _ = M.surface_distances(on, ref, ref_f, v, f)
    assert d_on.max() < 1e-9 and np.linalg.norm(on[:, None] - ref[None, :200], axis=2).min(1).mean() > 1e-3
    assert np.isinf(M.surface_distances(query, np.zeros((0, 3)), np.zeros(0, int), v, f)[0]).all()


def test_thing_pixels_without_instance_are_unlabelled():
    gt_sem, gt_inst = np.array([3, 3, 3, 3, 3, 3, 1, 1]), np.array([1, 1, 1, 1, 2, 2, 0, 0])
    # Instance 1 predicted, the two pixels of instance 2 carry the class but no instance: no segment is
    # made of them (no false positive), GT instance 2 is missed, and semantics still count the class.
    pred_inst = np.array([7, 7, 7, 7, 0, 0, 0, 0])
    r = M.panoptic_quality(gt_sem, pred_inst, gt_sem, gt_inst, THINGS, STUFF)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1)
    assert r["per_class"][3]["rq"] == pytest.approx(1 / 1.5)
    assert M.semantic_iou(gt_sem, gt_sem, THINGS + STUFF)["miou"] == 1.0
    # One id-0 segment over a class's every instance would match the biggest one if it were a segment.
    gt_inst = np.array([1, 1, 1, 1, 1, 2, 0, 0])
    r = M.panoptic_quality(gt_sem, np.zeros(8, int), gt_sem, gt_inst, THINGS, STUFF)
    assert r["per_class"][3]["tp"] == 0 and r["pq_things"] == 0.0
    # In GT, a thing pixel without instance is void: not scored.
    r = M.panoptic_quality(gt_sem, np.array([7, 7, 7, 7, 7, 7, 0, 0]), gt_sem, np.array([1, 1, 1, 1, 0, 0, 0, 0]),
                           THINGS, STUFF)  # fmt: skip
    assert r["pq"] == 1.0
