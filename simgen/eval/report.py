"""The picture report of ``simgen eval``: what a person looks at before the numbers.

Files written into the report folder (all PNG through matplotlib's object API, so no global
pyplot state and no display are needed; every file is written atomically):

* ``frames.png`` -- one row per chosen frame: RGB | GT panoptic | predicted panoptic | error map.
  Panoptic colours are keyed by segment: a predicted segment matched to a GT segment (IoU > 0.5 in
  PQ^scene) wears that GT segment's colour, so a colour change between the two columns *is* an error.
* ``per_class_iou.png`` -- per-class IoU bars, 2D and 3D.
* ``confusion.png`` -- the row-normalised 2D confusion matrix (GT rows, predicted columns).
* ``topdown.png`` -- the GT and the predicted panoptic meshes seen from above (orthographic).
* ``report.md`` -- the metrics table with the pictures embedded.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from simgen.data import io
from simgen.folders import PanopticMesh
from simgen.render.mesh import labels_at_hits

# Error-map classes and their colours (RGB 0-1).
ERROR_CLASSES = [
    ("GT void (not scored)", (0.55, 0.55, 0.55)),
    ("correct segment", (0.20, 0.70, 0.30)),
    ("wrong class", (0.85, 0.15, 0.15)),
    ("right class, wrong segment", (1.00, 0.60, 0.00)),
    ("no prediction", (0.45, 0.15, 0.65)),
]


def key_colors(cls: np.ndarray, inst: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic, well-spread colours ``(..., 3) float`` in [0, 1] for (class, instance) keys.

    The same key gets the same colour in every picture (frames and meshes); ``salt`` gives unmatched
    predictions colours of their own.
    """
    from matplotlib.colors import hsv_to_rgb

    cls, inst = np.broadcast_arrays(np.asarray(cls, np.int64), np.asarray(inst, np.int64))
    h = (cls * 7919 + inst * 104729 + salt * 15485863) % 1_000_003
    hue = (h * 0.6180339887) % 1.0
    # Things saturated, stuff (instance 0) pale, so objects stand out against floor and walls.
    thing = inst > 0
    sat = np.where(thing, 0.65 + 0.3 * ((h // 7) % 3) / 2, 0.18 + 0.12 * ((h // 7) % 3) / 2)
    val = np.where(thing, 0.8 + 0.2 * ((h // 21) % 2), 0.78 + 0.14 * ((h // 21) % 2))
    return hsv_to_rgb(np.stack([hue, sat, val], axis=-1))


def _pixel_colors(match: dict, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT colours, predicted colours ``(N, H, W, 3)`` and error codes ``(N, H, W)`` from a matching."""
    G, P = len(match["gt_keys"]), len(match["pred_keys"])
    gt_col = key_colors(match["gt_class"], match["gt_instance"])
    pred_col = key_colors(match["pred_class"], match["pred_instance"], salt=1)
    pred_col[match["match_pred"]] = gt_col[match["match_gt"]]
    pg, pp = match["pixel_gt"], match["pixel_pred"]
    black = np.zeros(3)
    gt_img = np.where((pg >= 0)[:, None], gt_col[np.maximum(pg, 0)] if G else black, black)
    pred_img = np.where((pp >= 0)[:, None], pred_col[np.maximum(pp, 0)] if P else black, black)

    matched_pred_of_gt = np.full(G + 1, -2)
    matched_pred_of_gt[match["match_gt"]] = match["match_pred"]
    gcls = np.r_[match["gt_class"], -1][pg]
    pcls = np.r_[match["pred_class"], -1][pp]
    err = np.full(pg.shape, 3, np.int8)  # right class, wrong segment
    err[pcls != gcls] = 2
    err[matched_pred_of_gt[pg] == pp] = 1
    err[pp < 0] = 4
    err[pg < 0] = 0
    return gt_img.reshape(*shape, 3), pred_img.reshape(*shape, 3), err.reshape(shape)


def _save(fig, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi, bbox_inches="tight")


def frames_figure(data: dict, path: Path) -> None:
    """RGB | GT panoptic | predicted panoptic | error map, one row per picture frame."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fd = data["frames"]
    chosen = data["picture_frames"]
    if not chosen:
        return
    gt_img, pred_img, err = _pixel_colors(data["match"], fd.gt_sem.shape)
    err_lut = np.array([c for _, c in ERROR_CLASSES])
    rows = len(chosen)
    h, w = fd.gt_sem.shape[1:]
    fig = Figure(figsize=(4 * 3.2, rows * 3.2 * h / w + 1.0), dpi=110, layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    titles = ["RGB (input)", "GT panoptic", "predicted panoptic", "error map"]
    for r, i in enumerate(chosen):
        k = fd.indices.index(i)
        gray = data["renders"][i]["rgb"].mean(axis=2, keepdims=True) / 255.0
        # Errors in full colour over a dimmed image; correct pixels only tinted, so errors stand out.
        alpha = np.where(err[k] == 1, 0.3, 0.7)[..., None]
        overlay = (1 - alpha) * gray + alpha * err_lut[err[k]]
        for c, img in enumerate([data["renders"][i]["rgb"], gt_img[k], pred_img[k], overlay]):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        share = np.bincount(err[k].ravel(), minlength=len(ERROR_CLASSES)) / err[k].size
        scored = 1 - share[0]
        correct = share[1] / scored if scored > 0 else float("nan")
        axes[r, 0].set_ylabel(f"frame {i}", fontsize=9)
        axes[r, 3].set_xlabel(f"{100 * correct:.1f}% of scored pixels correct", fontsize=8)
    fig.legend(
        handles=[Patch(color=c, label=n) for n, c in ERROR_CLASSES],
        loc="outside lower center",
        ncol=len(ERROR_CLASSES),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Matched segments share their GT colour; error map: per pixel against the scene-level matching",
        fontsize=10,
    )
    _save(fig, path)


def per_class_iou_figure(metrics: dict, path: Path) -> None:
    """Horizontal bars of per-class IoU (2D and, when present, 3D), sorted by 2D IoU."""
    from matplotlib.figure import Figure

    t2 = metrics["semantic_2d"]["per_class"]
    t3 = metrics.get("semantic_3d", {}).get("per_class", {})
    names = [n for n, v in t2.items() if v["iou"] is not None or (t3.get(n, {}).get("iou") is not None)]
    if not names:
        return
    v2 = np.array([t2[n]["iou"] if t2[n]["iou"] is not None else np.nan for n in names], float)
    v3 = np.array(
        [t3.get(n, {}).get("iou") if t3.get(n, {}).get("iou") is not None else np.nan for n in names]
    )
    order = np.argsort(np.nan_to_num(v2, nan=-1))
    names = [names[j] for j in order]
    v2, v3 = v2[order], v3[order]
    y = np.arange(len(names))
    fig = Figure(figsize=(7, 0.35 * len(names) + 1.4), dpi=110)
    ax = fig.subplots()
    bh = 0.4 if t3 else 0.7
    ax.barh(
        y + (bh / 2 if t3 else 0), np.nan_to_num(100 * v2), height=bh, color="#3b7dd8", label="2D (rendered)"
    )
    if t3:
        ax.barh(y - bh / 2, np.nan_to_num(100 * v3), height=bh, color="#e08a2c", label="3D (mesh points)")
    for yy, a, b in zip(y, v2, v3, strict=True):
        if np.isfinite(a):
            ax.text(100 * a + 1, yy + (bh / 2 if t3 else 0), f"{100 * a:.0f}", va="center", fontsize=7)
        if t3 and np.isfinite(b):
            ax.text(100 * b + 1, yy - bh / 2, f"{100 * b:.0f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 108)
    ax.set_xlabel("IoU (%)")
    s2, s3 = metrics["semantic_2d"]["miou"], metrics.get("semantic_3d", {}).get("miou")
    title = f"Per-class IoU -- mIoU 2D {100 * (s2 or 0):.1f}%"
    if s3 is not None:
        title += f", 3D {100 * s3:.1f}%"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def confusion_figure(data: dict, scene, path: Path) -> None:
    """Row-normalised 2D confusion matrix over the classes present in GT or prediction."""
    from matplotlib.figure import Figure

    sem = data["semantic_2d"]
    conf = sem["confusion"].astype(np.float64)
    ids = list(sem["class_ids"])
    present = (conf.sum(1) > 0) | (conf[:, :-1].sum(0) > 0)
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        return
    cols = np.r_[rows, conf.shape[1] - 1]
    sub = conf[np.ix_(rows, cols)]
    norm = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    names = [scene.categories[ids[r]].name if ids[r] in scene.categories else str(ids[r]) for r in rows]
    n = len(rows)
    size = max(4.5, 0.45 * n + 2.5)
    fig = Figure(figsize=(size + 1, size), dpi=110)
    ax = fig.subplots()
    im = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n + 1), names + ["(none)"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("GT class")
    if n <= 25:
        for r in range(n):
            for c in range(n + 1):
                if norm[r, c] >= 0.005:
                    ax.text(
                        c,
                        r,
                        f"{100 * norm[r, c]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[r, c] > 0.6 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the GT class's pixels")
    ax.set_title("2D semantic confusion (rows sum to 100%)", fontsize=10)
    _save(fig, path)


def _up_vector(scene) -> np.ndarray:
    """World up from the cameras (mean OpenGL camera y axis), snapped to a world axis when close."""
    ups = np.array([f.c2w[:3, 1] for f in scene.frames])
    up = ups.mean(0)
    up /= np.linalg.norm(up) if np.linalg.norm(up) > 0 else 1.0
    axis = np.argmax(np.abs(up))
    if abs(up[axis]) > 0.9:
        up = np.sign(up[axis]) * np.eye(3)[axis]
    return up


def topdown_render(mesh: PanopticMesh, up: np.ndarray, bounds: tuple, width: int, colors_of) -> np.ndarray:
    """Orthographic top-down image ``(h, w, 3)`` float of a panoptic mesh through the project's ray caster.

    Args:
        mesh: panoptic mesh.
        up: unit world up; the camera looks along ``-up``.
        bounds: ``(e1, e2, lo (2,), hi (2,), top)``: image axes, extent in those axes and the height the
            rays start from.
        width: image width in pixels (height follows the extent's aspect).
        colors_of: ``(semantic (n,), instance (n,)) -> (n, 3)`` colours of hit labels.
    """
    from simgen.render.raycast import MeshRaycaster

    e1, e2, lo, hi, top = bounds
    ext = np.maximum(hi - lo, 1e-6)
    height = max(1, int(round(width * ext[1] / ext[0])))
    u = lo[0] + (np.arange(width) + 0.5) / width * ext[0]
    v = hi[1] - (np.arange(height) + 0.5) / height * ext[1]
    uu, vv = np.meshgrid(u, v)
    origins = uu[..., None] * e1 + vv[..., None] * e2 + top * up
    dirs = np.broadcast_to(-up, origins.shape)
    rc = MeshRaycaster(mesh.to_trimesh())
    face, dist = rc.intersect(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    hit = face >= 0
    pts = np.full((len(face), 3), np.nan)
    pts[hit] = origins.reshape(-1, 3)[hit] - up * dist[hit, None]
    hits = SimpleNamespace(face=face.reshape(height, width), points=pts.reshape(height, width, 3))
    sem, inst = labels_at_hits(mesh, hits)
    img = np.ones((height, width, 3))
    valid = hits.face >= 0
    shade = 0.55 + 0.45 * np.abs(rc.mesh.face_normals[face[hit]] @ up)
    img[valid] = colors_of(sem[valid], inst[valid]) * shade[:, None]
    return img


def topdown_figure(data: dict, path: Path, width: int = 700) -> None:
    """GT and predicted panoptic meshes from above, coloured like the frame pictures."""
    from matplotlib.figure import Figure

    if "gt_mesh" not in data:
        return
    scene, mesh = data["scene"], data["mesh"]
    gt_mesh = data["gt_mesh"]
    seg = data["gt_vertex_segments"]
    cat = np.array([scene.gt.segments.get(int(s), -1) if s != 0 else -1 for s in seg], np.int32)
    thing = np.isin(cat, scene.thing_ids)
    gt_pm = PanopticMesh(
        gt_mesh.vertices,
        gt_mesh.faces,
        np.full((len(seg), 3), 200),
        cat,
        np.where(thing, seg, 0),
    )
    up = _up_vector(scene)
    e1 = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    allv = np.concatenate([gt_pm.vertices, mesh.vertices]).astype(np.float64)
    p2 = np.stack([allv @ e1, allv @ e2], 1)
    lo, hi = p2.min(0), p2.max(0)
    pad = 0.03 * (hi - lo).max()
    # Rays start just above the highest camera: a room's ceiling would hide everything, and what the
    # cameras looked down on is what the scan covers.
    cam_top = max(float(f.c2w[:3, 3] @ up) for f in scene.frames) + 0.25
    bounds = (e1, e2, lo - pad, hi + pad, min(cam_top, float((allv @ up).max()) + 1.0))

    # Predicted thing instances take the colour of the GT instance they cover best in 3D.
    cov = data["coverage_3d"]
    pred_to_gt: dict[int, tuple[int, float]] = {}
    for g, p, iou in zip(cov["gt_ids"].tolist(), cov["best_pred"].tolist(), cov["iou"].tolist(), strict=True):
        if p > 0 and iou > pred_to_gt.get(p, (0, -1.0))[1]:
            pred_to_gt[p] = (g, iou)

    def gt_colors(sem, inst):
        return np.where((sem < 0)[:, None], 0.3, key_colors(sem, inst))

    def pred_colors(sem, inst):
        out = key_colors(sem, inst, salt=1)
        stuff = inst == 0
        out[stuff] = key_colors(sem[stuff], 0)  # stuff matches by class, like the 2D keys
        for p, (g, _) in pred_to_gt.items():
            sel = inst == p
            if sel.any():
                out[sel] = key_colors(scene.gt.segments.get(g, -1), g)
        out[sem < 0] = 0.3
        return out

    img_gt = topdown_render(gt_pm, up, bounds, width, gt_colors)
    img_pred = topdown_render(mesh, up, bounds, width, pred_colors)
    h, w = img_gt.shape[:2]
    fig = Figure(figsize=(2 * 5.5, 5.5 * h / w + 0.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    m = data.get("metrics3d_title", "")
    for ax, img, title in zip(
        axes, (img_gt, img_pred), ("GT panoptic mesh", "predicted panoptic mesh"), strict=True
    ):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Top-down view (orthographic, cut above the highest camera){m}", fontsize=10)
    _save(fig, path)


def write_report(result: dict[str, Any], report_dir: str | Path, table_md: str) -> list[Path]:
    """Write every picture and ``report.md`` into ``report_dir``; returns the files written."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    data, metrics = result["data"], result["metrics"]
    g = metrics.get("geometry", {})
    if "fscore" in g:
        data["metrics3d_title"] = (
            f" -- F-score {100 * g['fscore']:.1f}%, Chamfer-L1 {g['chamfer_l1_cm']:.2f} cm, "
            f"mCov 3D {100 * (metrics['instance_3d']['mcov'] or 0):.1f}%"
        )
    jobs = [
        ("frames.png", lambda p: frames_figure(data, p)),
        ("per_class_iou.png", lambda p: per_class_iou_figure(metrics, p)),
        ("confusion.png", lambda p: confusion_figure(data, data["scene"], p)),
        ("topdown.png", lambda p: topdown_figure(data, p)),
    ]
    written = []
    for name, fn in jobs:
        fn(report_dir / name)
        if (report_dir / name).is_file():
            written.append(report_dir / name)
    captions = {
        "frames.png": "Frames: RGB | GT panoptic | predicted panoptic | error map",
        "per_class_iou.png": "Per-class IoU",
        "confusion.png": "Confusion matrix",
        "topdown.png": "Top-down view of the panoptic meshes",
    }
    md = ["# simgen evaluation report", "", table_md, ""]
    for p in written:
        md += [f"## {captions[p.name]}", "", f"![{captions[p.name]}]({p.name})", ""]
    with io.atomic_path(report_dir / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    written.append(report_dir / "report.md")
    return written
