"""``simgen eval``: render a build at a scene's frames and score it against the scene's ``gt/``.

Pipeline (see docs/evaluation.md for every metric's definition):

1. Ray-cast ``OUT/panoptic_mesh.ply`` at each frame of the split (the render server's code path:
   :class:`simgen.render.raycast.MeshRaycaster` + :mod:`simgen.render.mesh`).
2. 2D: concatenate all frames and compute PQ^scene (and per-frame PQ for contrast), semantic
   mIoU / mAcc and instance mCov / mW-Cov; RGB PSNR / SSIM and depth AbsRel of the rendered views.
3. 3D: sample both meshes uniformly (fixed count, seeded), compute accuracy / completeness /
   Chamfer-L1 / precision / recall / F-score from sample-to-surface distances, and label the GT
   samples from their nearest predicted sample for 3D mIoU / mAcc / mCov / mW-Cov. Completeness,
   recall and the 3D labels are scored on the GT surface some frame observed (``--gt-culling``).

Protocol (``--poses``): when ``gt/gt.json`` records the true camera poses, the GT frame is aligned onto
the build frame by the rigid transform that best maps the true camera centres onto the build's (the
stored poses, or those the build fused at when ``build.json`` records them; :func:`pose_alignment`,
the ATE convention of SLAM evaluation); the build is rendered at the aligned
true poses, the GT mesh is moved by the same transform, and the observed GT surface comes from ray
casting the GT mesh at the true poses. Otherwise (or with ``--poses stored``) the build is rendered at
the stored poses and the GT is culled with the scene's own depth.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data.scene import Scene, SceneError, load_scene
from simgen.eval import metrics as M
from simgen.eval.config import EvalConfig
from simgen.folders import (
    BUILD_FILE,
    GAUSSIANS_FILE,
    MESH_FILE,
    FolderError,
    PanopticMesh,
    read_fused_poses,
    read_panoptic_mesh,
)
from simgen.render.mesh import colors_at_hits, labels_at_hits


class EvalError(ValueError):
    """A build or scene that cannot be evaluated; the message names the file."""


@dataclass
class FrameData:
    """Concatenated per-pixel arrays of the evaluated frames, ``(N, H, W)`` each (frames of one size)."""

    indices: list[int]
    pred_sem: np.ndarray  # int32, -1 = no hit / unknown
    pred_inst: np.ndarray  # int32, 0 = none
    gt_sem: np.ndarray  # int32, -1 = void
    gt_inst: np.ndarray  # int32 GT segment id for things, 0 for stuff / void
    gt_seg: np.ndarray  # int32 GT segment id (0 = void)


def gt_labels(scene: Scene, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT semantic, instance and segment images of frame ``i``.

    Returns ``(H, W) int32`` each: category id (-1 = void), instance (GT segment id for things, 0 for
    stuff and void) and the raw scene-consistent segment id (0 = void).
    """
    seg = scene.gt.panoptic(i)
    ids, inv = np.unique(seg, return_inverse=True)
    unknown = [int(s) for s in ids if s != 0 and int(s) not in scene.gt.segments]
    if unknown:
        raise EvalError(
            f"{scene.gt.panoptic_paths[i]}: segment id(s) {unknown[:10]} are not listed in gt/gt.json"
        )
    cat = np.array([scene.gt.segments.get(int(s), -1) if s != 0 else -1 for s in ids], np.int32)
    thing = np.array([c in scene.categories and scene.categories[c].isthing for c in cat.tolist()])
    sem = cat[inv].reshape(seg.shape)
    inst = np.where(thing[inv], ids[inv], 0).reshape(seg.shape).astype(np.int32)
    return sem, inst, seg.astype(np.int32)


def gaussian_renderer(path: Path):
    """``callable(K, c2w_cv) -> (rgb (H, W, 3) uint8, depth (H, W) float32 metres, 0 = nothing)`` for the
    Gaussians in ``path`` (a 3DGS PLY), through :mod:`simgen.splat` (gsplat on CUDA, torch otherwise).

    Uses ``simgen.render.gaussians.render_gaussians`` (the render server's path: depth 0 where the accumulated
    alpha is below 0.5) when it is importable, else the rasteriser directly. Raises :class:`EvalError`
    naming the file when it cannot be read.
    """
    import torch

    from simgen.render.gaussians import load_ply

    try:
        g = load_ply(path)
    except Exception as e:  # plyfile raises its own parse errors besides OSError / ValueError
        raise EvalError(f"{path}: unreadable Gaussians ({type(e).__name__}: {e})") from e
    if torch.cuda.is_available():
        g = g.to("cuda")
    try:
        from simgen.render.gaussians import render_gaussians
    except ImportError:
        render_gaussians = None

    def render(K, c2w_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Km = np.array([[K.fx, 0, K.cx], [0, K.fy, K.cy], [0, 0, 1]], np.float64)
        if render_gaussians is not None:
            out = render_gaussians(g, Km, c2w_cv, K.width, K.height, outputs=("rgb", "depth"))
            return out["rgb"], out["depth"]
        with torch.no_grad():
            out = g.render(np.linalg.inv(c2w_cv).astype(np.float32), Km.astype(np.float32), K.width, K.height)
        rgb = np.clip(np.round(out["rgb"].float().cpu().numpy() * 255), 0, 255).astype(np.uint8)
        return rgb, out["depth"].float().cpu().numpy().astype(np.float32)

    return render


def _appearance_renderer(out_dir: Path):
    """``((name, callable(K, c2w_cv) -> (rgb, depth)) or None, note)`` for the build's Gaussians.

    Without ``gaussians.ply`` (or without a usable :mod:`simgen.splat`) the mesh's vertex colours are
    scored instead and metrics.json says so.
    """
    path = out_dir / GAUSSIANS_FILE
    if not path.is_file():
        return None, "no gaussians.ply in the build: RGB is the mesh's vertex colour"
    try:
        importlib.import_module("simgen.splat.gaussians")
    except ImportError as e:
        return None, f"gaussians.ply present but simgen.splat is not importable ({e})"
    return ("gaussians", gaussian_renderer(path)), None


def _check_inputs(out_dir: Path, scene_dir: Path) -> tuple[PanopticMesh, Scene]:
    mesh_path = out_dir / MESH_FILE
    if not out_dir.is_dir():
        raise EvalError(f"{out_dir}: build folder does not exist")
    if not mesh_path.is_file():
        raise EvalError(f"{mesh_path}: missing (not a build folder? run a builder first)")
    try:
        scene = load_scene(scene_dir, validate=True, check_images=False)
    except SceneError as e:
        raise EvalError(str(e)) from e
    if scene.gt is None:
        raise EvalError(
            f"{Path(scene_dir) / 'gt'}: the scene has no ground truth (gt/gt.json) to evaluate against"
        )
    if not scene.gt.panoptic_paths:
        raise EvalError(f"{scene.gt.root / 'gt.json'}: no GT panoptic frames")
    try:
        mesh = read_panoptic_mesh(mesh_path)
    except (ValueError, OSError) as e:
        raise EvalError(f"{mesh_path}: unreadable ({e})") from e
    if len(mesh.faces) == 0:
        raise EvalError(f"{mesh_path}: the mesh has no faces")
    known = set(scene.categories) | {-1}
    extra = sorted(set(np.unique(mesh.semantic).tolist()) - known)
    if extra:
        raise EvalError(
            f"{mesh_path}: semantic id(s) {extra[:10]} are not categories of the scene {scene.root}"
        )
    return mesh, scene


def _category_table(scene: Scene, ids, values: dict[str, Any]) -> dict[str, dict]:
    """{category name: {metric: value}} for JSON, nan -> None."""
    out = {}
    for j, c in enumerate(np.asarray(ids).tolist()):
        name = scene.categories[c].name if c in scene.categories else str(c)
        out[name] = {k: _clean(v[j]) for k, v in values.items()}
    return out


def _clean(v):
    """JSON-ready: numpy scalars to Python, nan/inf to None."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if np.isfinite(v) else None
    return v


@dataclass
class PoseAlignment:
    """The rigid map of the GT frame onto the build (scene) frame: ``x_build = T @ x_gt``.

    ``T`` is ``(4, 4)`` float64 (rotation and translation in metres, no scale); ``residual_rms_mm`` /
    ``residual_max_mm`` are the camera-centre residuals ``|T c_true - c_build|`` over ``frames``
    frames after alignment (``c_build``: the centres of ``trajectory``, the stored poses unless the
    build recorded the poses it fused at); ``points`` says what was aligned (``centres``, or
    ``centres+axes`` when the centres alone leave a rotation free: all on one line).
    """

    T: np.ndarray
    residual_rms_mm: float
    residual_max_mm: float
    frames: int
    points: str
    trajectory: str = "stored poses (transforms.json)"  # which poses stand for the build's trajectory

    def as_dict(self) -> dict[str, Any]:
        return {
            "trajectory": self.trajectory,
            "gt_to_build": np.round(self.T, 9).tolist(),
            "residual_rms_mm": self.residual_rms_mm,
            "residual_max_mm": self.residual_max_mm,
            "frames": self.frames,
            "points": self.points,
        }


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rigid transform (Kabsch / Umeyama without scale) mapping ``src`` onto ``dst``.

    ``src``, ``dst``: ``(N, 3)`` corresponding points (metres). Returns ``(4, 4)`` float64 ``T`` minimising
    ``sum |R src_i + t - dst_i|^2`` with ``det R = +1``.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    U, _, Vt = np.linalg.svd((dst - md).T @ (src - ms))
    # The sign fix keeps R a rotation when the best orthogonal map would be a reflection.
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    R = U @ D @ Vt
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, md - R @ ms
    return T


def pose_alignment(true_c2w: np.ndarray, stored_c2w: np.ndarray) -> PoseAlignment:
    """Align the true camera poses ``(N, 4, 4)`` onto the build's ``(N, 4, 4)`` (same frames, same camera
    axes, metres): the scene's stored poses or the ones the build fused at.

    Camera centres only (the ATE convention), unless they are collinear: then the camera axes' tips
    (1 m along each axis) join them so the rotation about that line is fixed too. Identical poses (a
    scene without pose noise; files round them to 8 decimals) give exactly the identity, so such a
    scene scores the same under either protocol.
    """
    true_c2w, stored_c2w = np.asarray(true_c2w, np.float64), np.asarray(stored_c2w, np.float64)
    src, dst = true_c2w[:, :3, 3], stored_c2w[:, :3, 3]
    if np.allclose(true_c2w, stored_c2w, rtol=0.0, atol=1e-8):
        T, points = np.eye(4), "centres"
    else:
        sv = np.linalg.svd(src - src.mean(axis=0), compute_uv=False)
        points = "centres" if sv[1] > 1e-6 * max(sv[0], 1e-12) else "centres+axes"
        if points == "centres":
            T = rigid_fit(src, dst)
        else:
            tips = [c[:, :3, 3][:, None] + c[:, :3, :3].transpose(0, 2, 1) for c in (true_c2w, stored_c2w)]
            T = rigid_fit(
                np.concatenate([src, tips[0].reshape(-1, 3)]), np.concatenate([dst, tips[1].reshape(-1, 3)])
            )
    res = np.linalg.norm(src @ T[:3, :3].T + T[:3, 3] - dst, axis=1) * 1000.0
    return PoseAlignment(T, float(np.sqrt(np.mean(res**2))), float(res.max()), len(src), points)


def _alignment(scene: Scene, build_dir: Path, cfg: EvalConfig) -> PoseAlignment | None:
    """The GT-to-build alignment of the true-pose protocol, or None for the stored-pose protocol.

    The build's trajectory is the poses it fused its frames at: build.json's ``poses`` when the builder
    refined them (frame-to-model alignment), else the scene's stored poses, all frames.
    """
    if cfg.poses == "stored" or scene.gt is None or scene.gt.true_c2w is None:
        return None
    if len(scene.gt.true_c2w) != len(scene.frames):
        raise EvalError(
            f"{scene.gt.root / 'gt.json'}: {len(scene.gt.true_c2w)} true poses for {len(scene.frames)} frames"
        )
    try:
        fused = read_fused_poses(build_dir, len(scene.frames))
    except FolderError as e:
        raise EvalError(str(e)) from e
    if fused is None:
        a = pose_alignment(scene.gt.true_c2w, np.stack([fr.c2w for fr in scene.frames]))
        a.trajectory = "stored poses (transforms.json)"
        return a
    frames, c2w = fused
    a = pose_alignment(scene.gt.true_c2w[frames], c2w)
    a.trajectory = f"the build's poses ({BUILD_FILE} poses)"
    return a


def evaluate(build_dir: str | Path, scene_dir: str | Path, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate the build in ``build_dir`` against ``scene_dir/gt``.

    Writes nothing; returns ``{"metrics": JSON-ready dict, "data": intermediate arrays for the report}``.
    Raises :class:`EvalError` with a message naming the file for unusable inputs.
    """
    from tqdm import tqdm

    from simgen.render.raycast import MeshRaycaster

    cfg = cfg or EvalConfig()
    build_dir, scene_dir = Path(build_dir), Path(scene_dir)
    t0 = time.perf_counter()
    mesh, scene = _check_inputs(build_dir, scene_dir)
    indices = scene.split_indices(cfg.split)[:: cfg.stride]
    if not indices:
        raise EvalError(f"{scene.root / 'transforms.json'}: split {cfg.split!r} has no frames")
    if len(scene.gt.panoptic_paths) != len(scene.frames):
        raise EvalError(f"{scene.gt.root / 'gt.json'}: GT frame count differs from transforms.json")
    sizes = {(scene.frames[i].intrinsics.width, scene.frames[i].intrinsics.height) for i in indices}
    if len(sizes) > 1:
        raise EvalError(
            f"{scene.root}: frames of several sizes {sorted(sizes)} (evaluate one size at a time)"
        )

    align = _alignment(scene, build_dir, cfg)
    raycaster = MeshRaycaster(mesh.to_trimesh())
    renderer, renderer_note = _appearance_renderer(build_dir)
    things, stuff = scene.thing_ids, scene.stuff_ids

    lists: dict[str, list] = {k: [] for k in ("pred_sem", "pred_inst", "gt_sem", "gt_inst", "gt_seg")}
    psnrs, ssims, absrels, dcov = [], [], [], []
    renders: dict[int, dict] = {}
    picture_frames = set(_picture_frames(indices, cfg.frames))
    t_render = time.perf_counter()
    for i in tqdm(indices, desc="eval: render", unit="frame", disable=cfg.quiet or None, leave=False):
        fr = scene.frames[i]
        # The GT images were taken at the true pose: render the build where that camera sits in the
        # build's frame (the stored pose carries the scan's drift).
        c2w_cv = fr.c2w_cv if align is None else align.T @ scene.gt.true_c2w_cv(i)
        hits = raycaster.cast(fr.intrinsics, c2w_cv)
        sem, inst = labels_at_hits(mesh, hits)
        if renderer is None:
            rgb, depth = colors_at_hits(mesh, hits), hits.depth
        else:
            rgb, depth = renderer[1](fr.intrinsics, c2w_cv)
        try:
            gs, gi, gseg = gt_labels(scene, i)
            gt_rgb, gt_depth = scene.rgb(i), scene.depth(i)
        except (OSError, ValueError) as e:
            raise EvalError(f"frame {i} ({fr.name}): cannot read ground truth: {e}") from e
        if gs.shape != sem.shape:
            raise EvalError(
                f"{scene.gt.panoptic_paths[i]}: size {gs.shape[::-1]} differs from the camera's {sem.shape[::-1]}"
            )
        for k, v in zip(lists, (sem, inst, gs, gi, gseg), strict=True):
            lists[k].append(v)
        psnrs.append(M.psnr(rgb, gt_rgb))
        ssims.append(M.ssim(rgb, gt_rgb))
        d = M.depth_absrel(depth, gt_depth)
        absrels.append(d["absrel"])
        dcov.append(d["coverage"])
        if i in picture_frames:
            renders[i] = {"rgb": gt_rgb, "pred_rgb": rgb, "depth": depth, "gt_depth": gt_depth}
    render_s = time.perf_counter() - t_render
    fd = FrameData(indices, *(np.stack(lists[k]) for k in lists))

    # ---- 2D panoptic, semantic, instance
    # PQ^scene: the (N, H, W) stacks are one concatenated image to match_segments.
    match = M.match_segments(
        fd.pred_sem, fd.pred_inst, fd.gt_sem, fd.gt_inst, things, stuff, -1, cfg.ignore_pred_void
    )
    pan = M.pq_from_match(match, things, stuff)
    pan_frame = M.per_frame_pq(
        fd.pred_sem, fd.pred_inst, fd.gt_sem, fd.gt_inst, things, stuff, -1, cfg.ignore_pred_void
    )
    class_ids = sorted(scene.categories)
    sem2d = M.semantic_iou(fd.pred_sem, fd.gt_sem, class_ids)
    if cfg.coverage_2d == "panoptic":
        cov2d = M.coverage_from_match(match)
    else:
        cov2d = M.coverage(fd.pred_inst, fd.gt_inst, ignore=fd.gt_sem == -1, matching=cfg.coverage_2d)

    # ---- 3D
    t3 = time.perf_counter()
    three_d, data3d = _evaluate_3d(mesh, scene, class_ids, cfg, align)
    time_3d = time.perf_counter() - t3

    per_class_pan = {
        (scene.categories[c].name if c in scene.categories else str(c)): v
        for c, v in pan["per_class"].items()
    }
    metrics = {
        "build": str(build_dir.resolve()),
        "scene": str(scene.root.resolve()),
        "split": cfg.split,
        "frames": indices,
        "config": dataclasses.asdict(cfg),
        "protocol": _protocol(scene, cfg, align),
        "panoptic": {**{k: v for k, v in pan.items() if k != "per_class"}, "per_class": per_class_pan},
        "panoptic_per_frame": {k: v for k, v in pan_frame.items() if k != "per_class"},
        "semantic_2d": {
            "miou": sem2d["miou"],
            "macc": sem2d["macc"],
            "pixel_acc": sem2d["pixel_acc"],
            "per_class": _category_table(scene, class_ids, {"iou": sem2d["iou"], "acc": sem2d["acc"]}),
        },
        "instance_2d": {
            "mcov": cov2d["mcov"],
            "mwcov": cov2d["mwcov"],
            "n_instances": cov2d["n_instances"],
            "matching": cfg.coverage_2d,
        },
        **three_d,
        "appearance": {
            "renderer": "gaussians" if renderer is not None else "mesh-vertex-colour",
            "note": renderer_note,
            "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "depth_absrel": float(np.nanmean(absrels)) if np.isfinite(absrels).any() else float("nan"),
            "depth_coverage": float(np.nanmean(dcov)) if np.isfinite(dcov).any() else float("nan"),
        },
        "timing_s": {
            "render": round(render_s, 3),
            "3d": round(time_3d, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    data = {
        "scene": scene,
        "mesh": mesh,
        "frames": fd,
        "match": match,
        "semantic_2d": sem2d,
        "renders": renders,
        "picture_frames": sorted(picture_frames),
        "class_ids": class_ids,
        **data3d,
    }
    return {"metrics": _clean(metrics), "data": data}


def _protocol(scene: Scene, cfg: EvalConfig, align: PoseAlignment | None) -> dict[str, Any]:
    """metrics.json's ``protocol``: which poses the build was rendered at and how the GT was culled."""
    has_true = scene.gt is not None and scene.gt.true_c2w is not None
    if align is None:
        why = "--poses stored" if has_true else "gt/gt.json records no true poses"
        culling = "scene depth at the stored poses" if cfg.gt_culling == "observed" else "none"
        return {"poses": "stored", "note": why, "gt_culling": culling, "alignment": None}
    culling = "GT mesh ray cast at the true poses" if cfg.gt_culling == "observed" else "none"
    return {"poses": "true", "note": None, "gt_culling": culling, "alignment": align.as_dict()}


def _picture_frames(indices: list[int], n: int) -> list[int]:
    """``n`` frames spread evenly over the evaluated ones."""
    if n <= 0:
        return []
    pos = np.unique(np.linspace(0, len(indices) - 1, min(n, len(indices))).round().astype(int))
    return [indices[p] for p in pos]


def observed_mask(points: np.ndarray, scene: Scene, tolerance: float, quiet: bool = True) -> np.ndarray:
    """Which world points ``(N, 3)`` some frame of ``scene`` observed: ``(N,) bool``.

    A point is observed by a frame when it projects inside the image in front of the camera and its
    camera z is within ``tolerance`` metres of the frame's depth at that pixel (nearest pixel; depth 0 =
    invalid never observes). All frames of the scene count (train and test): this is the surface the
    scan covers, the same for every builder. Uses the stored poses and the scene's own depth (the
    protocol without true poses; :func:`visible_mask` is the one with them).
    """

    def frames():
        for i, fr in enumerate(scene.frames):
            yield fr.intrinsics, fr.c2w_cv, _frame_depth(scene, i)

    return _depth_test(points, frames(), len(scene.frames), tolerance, "eval: observed GT", quiet)


def visible_mask(
    points: np.ndarray, scene: Scene, gt_raycaster, tolerance: float, quiet: bool = True
) -> np.ndarray:
    """Which GT-frame points ``(N, 3)`` some frame saw, by exact visibility: ``(N,) bool``.

    The depth test of :func:`observed_mask` against the GT mesh ray cast (``gt_raycaster``, a
    :class:`simgen.render.raycast.MeshRaycaster` of the GT mesh) at each frame's true pose, at pixels
    where the scene's sensor returned a depth (no builder can recover what the sensor gave nothing for;
    the depth image was taken at the true pose, so its pixels line up with the ray cast). Unlike the
    sensor's depth, the exact depth never lets a surface behind the visible one pass the test.
    """

    unit = scene.depth_unit_scale

    def frames():
        for i, fr in enumerate(scene.frames):
            c2w = scene.gt.true_c2w_cv(i)
            exact = gt_raycaster.cast(fr.intrinsics, c2w).depth.astype(np.float64)
            # At the scene's depth resolution (as a depth PNG stores it): far below the tolerance, and
            # a scene with exact depth then culls bit for bit as with its own depth.
            exact = np.round(exact / unit).astype(np.float32) * np.float32(unit)
            yield fr.intrinsics, c2w, np.where(_frame_depth(scene, i) > 0, exact, 0.0)

    return _depth_test(points, frames(), len(scene.frames), tolerance, "eval: visible GT", quiet)


def _frame_depth(scene: Scene, i: int) -> np.ndarray:
    fr = scene.frames[i]
    try:
        return scene.depth(i)
    except (OSError, ValueError) as e:
        raise EvalError(f"frame {i} ({fr.name}): cannot read depth {fr.depth_path}: {e}") from e


def _depth_test(points: np.ndarray, frames, n: int, tolerance: float, desc: str, quiet: bool) -> np.ndarray:
    """``(N,) bool``: points within ``tolerance`` m of some frame's depth at their pixel.

    ``frames`` yields ``(K, c2w_cv, depth (H, W) metres, 0 = none)``; ``n`` is their count (progress).
    """
    from tqdm import tqdm

    from simgen.data.camera import project

    pts = np.asarray(points, np.float64).reshape(-1, 3)
    seen = np.zeros(len(pts), bool)
    for K, c2w_cv, depth in tqdm(
        frames, desc=desc, unit="frame", total=n, disable=quiet or None, leave=False
    ):
        uv, z = project(pts, K, c2w_cv)
        with np.errstate(invalid="ignore"):
            u = np.floor(uv[:, 0]).astype(np.int64, copy=False)
            v = np.floor(uv[:, 1]).astype(np.int64, copy=False)
        inside = (z > 0) & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
        idx = np.flatnonzero(inside & ~seen)
        d = depth[v[idx], u[idx]]
        seen[idx[(d > 0) & (np.abs(z[idx] - d) < tolerance)]] = True
    return seen


def _evaluate_3d(
    mesh: PanopticMesh,
    scene: Scene,
    class_ids: list[int],
    cfg: EvalConfig,
    align: PoseAlignment | None = None,
):
    """Geometry and 3D label metrics on surface samples. Returns (metrics dict, arrays for the report).

    With ``align`` the GT mesh is moved into the build frame (``align.T``) before any distance.
    """
    if scene.gt.mesh_path is None or scene.gt.mesh_labels_path is None:
        note = "the scene's gt/gt.json names no mesh_path / mesh_labels_path"
        return {"geometry": {"note": note}, "semantic_3d": {"note": note}, "instance_3d": {"note": note}}, {}
    try:
        gt_mesh = scene.gt.mesh()
        gt_seg_v = scene.gt.mesh_labels()
    except (OSError, ValueError) as e:
        raise EvalError(f"{scene.gt.mesh_path}: cannot read the GT mesh or its labels ({e})") from e
    if len(gt_seg_v) != len(gt_mesh.vertices):
        raise EvalError(
            f"{scene.gt.mesh_labels_path}: {len(gt_seg_v)} labels for {len(gt_mesh.vertices)} GT mesh vertices"
        )
    gt_v, gt_f = np.asarray(gt_mesh.vertices), np.asarray(gt_mesh.faces)
    gt_pts, gt_vi, gt_fi = M.sample_surface(gt_v, gt_f, cfg.samples, seed=cfg.seed, return_faces=True)
    pred_pts, pred_vi, pred_fi = M.sample_surface(
        mesh.vertices, mesh.faces, cfg.samples, seed=cfg.seed, return_faces=True
    )
    if cfg.gt_culling == "none":
        observed = np.ones(len(gt_pts), bool)
    elif align is None:
        observed = observed_mask(gt_pts, scene, cfg.observed_tolerance, quiet=cfg.quiet)
    else:
        from simgen.render.raycast import MeshRaycaster

        observed = visible_mask(
            gt_pts, scene, MeshRaycaster(gt_mesh), cfg.observed_tolerance, quiet=cfg.quiet
        )
    if align is not None:
        # Culling above ran in the GT frame (true poses); distances run in the build frame.
        R, t = align.T[:3, :3], align.T[:3, 3]
        gt_v, gt_pts = gt_v @ R.T + t, gt_pts @ R.T + t
    # Accuracy is the distance to the true surface, seen or not; completeness, recall and the labels
    # are scored on the observed GT surface only: no builder can recover what no camera saw.
    # Distances to the other mesh's surface (its samples' triangles, see M.surface_distances), so the
    # scores carry no sampling floor; labels come from the nearest predicted sample.
    d_pg, _ = M.surface_distances(pred_pts, gt_pts, gt_fi, gt_v, gt_f)
    gt_pts, gt_vi = gt_pts[observed], gt_vi[observed]
    d_gp, nn = M.surface_distances(gt_pts, pred_pts, pred_fi, mesh.vertices, mesh.faces)
    geometry = M.geometry_from_distances(d_pg, d_gp, cfg.threshold)
    geometry["samples"] = cfg.samples
    geometry["gt_culling"] = cfg.gt_culling
    geometry["gt_observed_fraction"] = float(observed.mean()) if len(observed) else float("nan")
    # Mean spacing of the GT samples (how finely labels and distances are resolved).
    geometry["sample_spacing_cm"] = float(np.sqrt(gt_mesh.area / cfg.samples)) * 100

    # GT labels of the GT samples; predicted labels transferred from the nearest predicted sample.
    seg = gt_seg_v[gt_vi]
    cat_of = np.vectorize(lambda s: scene.gt.segments.get(int(s), -1) if s != 0 else -1, otypes=[np.int32])
    uniq, inv = np.unique(seg, return_inverse=True)
    ucat = cat_of(uniq) if len(uniq) else np.zeros(0, np.int32)
    gt_sem = ucat[inv]
    is_thing = np.isin(gt_sem, scene.thing_ids)
    gt_inst = np.where(is_thing, seg, 0)
    pred_sem = mesh.semantic[pred_vi][nn]
    pred_inst = mesh.instance[pred_vi][nn]
    sem3d = M.semantic_iou(pred_sem, gt_sem, class_ids)
    cov3d = M.coverage(pred_inst, gt_inst, ignore=gt_sem == -1, matching=cfg.coverage_3d)
    out = {
        "geometry": geometry,
        "semantic_3d": {
            "miou": sem3d["miou"],
            "macc": sem3d["macc"],
            "point_acc": sem3d["pixel_acc"],
            "per_class": _category_table(scene, class_ids, {"iou": sem3d["iou"], "acc": sem3d["acc"]}),
        },
        "instance_3d": {
            "mcov": cov3d["mcov"],
            "mwcov": cov3d["mwcov"],
            "n_instances": cov3d["n_instances"],
            "matching": cfg.coverage_3d,
        },
    }
    if align is not None:  # the report's top-down view overlays both meshes
        gt_mesh = gt_mesh.copy()
        gt_mesh.apply_transform(align.T)
    data = {"gt_mesh": gt_mesh, "gt_vertex_segments": gt_seg_v, "semantic_3d": sem3d, "coverage_3d": cov3d}
    return out, data


# ----------------------------------------------------------------------------- tables


def markdown_table(m: dict[str, Any]) -> str:
    """The headline numbers of a metrics.json dict as a Markdown table (percentages for ratios)."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    def num(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    p, pf = m["panoptic"], m["panoptic_per_frame"]
    rows = [
        ("PQ^scene", pct(p["pq"])),
        ("SQ^scene", pct(p["sq"])),
        ("RQ^scene", pct(p["rq"])),
        ("PQ^scene things", pct(p["pq_things"])),
        ("PQ^scene stuff", pct(p["pq_stuff"])),
        ("PQ per frame (no cross-frame consistency)", pct(pf["pq"])),
        ("mIoU 2D", pct(m["semantic_2d"]["miou"])),
        ("mAcc 2D", pct(m["semantic_2d"]["macc"])),
        ("mCov 2D", pct(m["instance_2d"]["mcov"])),
        ("mW-Cov 2D", pct(m["instance_2d"]["mwcov"])),
    ]
    if "miou" in m.get("semantic_3d", {}):
        rows += [
            ("mIoU 3D", pct(m["semantic_3d"]["miou"])),
            ("mAcc 3D", pct(m["semantic_3d"]["macc"])),
            ("mCov 3D", pct(m["instance_3d"]["mcov"])),
            ("mW-Cov 3D", pct(m["instance_3d"]["mwcov"])),
        ]
    g = m.get("geometry", {})
    if "accuracy_cm" in g:
        t = num(g["threshold_cm"], 0)
        rows += [
            ("Accuracy (cm)", num(g["accuracy_cm"])),
            ("Completeness (cm)", num(g["completeness_cm"])),
            ("Chamfer-L1 (cm)", num(g["chamfer_l1_cm"])),
            (f"Precision @ {t} cm", pct(g["precision"])),
            (f"Recall @ {t} cm", pct(g["recall"])),
            (f"F-score @ {t} cm", pct(g["fscore"])),
            ("GT surface observed (scored)", pct(g.get("gt_observed_fraction"))),
        ]
    a = m["appearance"]
    rows += [
        (f"PSNR (dB, {a['renderer']})", num(a["psnr"])),
        (f"SSIM ({a['renderer']})", num(a["ssim"], 4)),
        ("Depth AbsRel", num(a["depth_absrel"], 4)),
        ("Depth coverage", pct(a["depth_coverage"])),
    ]
    head = (
        f"Evaluation of `{m['build']}` on `{m['scene']}`, split `{m['split']}` ({len(m['frames'])} frames). "
        "Ratios in %.\n\n" + _protocol_line(m.get("protocol")) + "\n\n"
    )
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'metric':<{width}} | value |", f"| {'-' * width} | ----: |"]
    lines += [f"| {a_:<{width}} | {b} |" for a_, b in rows]
    return head + "\n".join(lines) + "\n"


def _protocol_line(p: dict[str, Any] | None) -> str:
    """One sentence on the protocol of a metrics.json dict (which poses, which culling)."""
    if not p or p["poses"] == "stored":
        why = f" ({p['note']})" if p and p.get("note") else ""
        return f"Protocol: build rendered at the scene's stored poses{why}."
    a = p["alignment"]
    return (
        f"Protocol: build rendered at the GT's true poses, aligned rigidly onto {a.get('trajectory', 'the stored poses')} "
        f"(camera-centre residual {a['residual_rms_mm']:.1f} mm RMS, {a['residual_max_mm']:.1f} mm max, "
        f"{a['frames']} frames); GT mesh moved by the same transform; observed GT: {p['gt_culling']}."
    )
