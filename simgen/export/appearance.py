"""Texture colours from the Gaussians' rendered appearance (``gaussians.ply`` of a build).

The fused mesh's vertex colours have the voxel's resolution (a few cm), so textures baked from them are
blurry. When the build holds trained Gaussians and its scene folder, the export renders the Gaussians
(RGB and expected depth) from an evenly spread subset of the scene's training cameras once, in the main
process, and stores the renders as ``.npy`` files in a temporary folder that the worker processes
memory-map. Each part's worker then colours every covered texel of its atlas from the views that see
the texel's surface point (:func:`shade_texels`); texels no view sees keep the vertex colour.

Frames: camera poses and the Gaussians are in the scene's ``transforms.json`` frame; parts are in the
export's model frame (floor-aligned world, minus the model origin). ``scene_from_model`` (4, 4) maps the
latter into the former.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simgen import folders
from simgen.export.config import ExportConfig

# Renders are made at the frame's resolution, shrunk so the longer side is at most this (CPU render cost
# grows with the pixel count; the room preset's 320 x 240 frames stay as they are).
MAX_VIEW_SIDE = 640
# A texel is seen by a view when its camera depth matches the rendered expected depth within
# max(DEPTH_TOL_M, DEPTH_TOL_REL * depth): the Gaussians' surface and the decimated visual mesh disagree by
# a centimetre or two, while occluders in front are usually much further off.
DEPTH_TOL_M = 0.03
DEPTH_TOL_REL = 0.02
# Views closer to grazing than this cosine between the face normal and the view ray are left out (their
# pixels smear a long stretch of surface); views closer than NEAR_M are left out too.
MIN_COS = 0.15
NEAR_M = 0.05
# View weight cos^COS_POWER / distance^DIST_POWER: frontal, close views count most. Sharper weights
# (cos^4 / d^2, cos^16 / d^2) did not lower the room preset's colour error (7.91, 7.97 vs 7.89 / 255).
COS_POWER = 1.0
DIST_POWER = 1.0
# Rendered pixels with less accumulated opacity are background / silhouette blends, not surface.
MIN_ALPHA = 0.5
VIEW_ARRAYS = ("rgb", "depth", "K", "c2w_cv", "size", "frames")


@dataclass
class Views:
    """``V`` rendered views (arrays may be read-only memory maps).

    rgb: (V, H, W, 3) uint8, the Gaussians' colour divided by their accumulated opacity (so silhouette
        pixels are not darkened by the black background). depth: (V, H, W) float32 expected camera z in
        metres, 0 where nothing opaque was hit or outside the view's own size. K: (V, 3, 3) float64 pinhole
        intrinsics in pixels. c2w_cv: (V, 4, 4) float64 camera-to-scene with OpenCV axes. size: (V, 2)
        int64 (width, height) of each view (views smaller than (W, H) sit in the top-left corner).
        frames: (V,) int64 scene frame index of each view.
    """

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    c2w_cv: np.ndarray
    size: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def save(self, folder: str | Path) -> Path:
        """One ``.npy`` per array in ``folder`` (created); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in VIEW_ARRAYS:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
        return folder


@functools.lru_cache(maxsize=2)
def load_views(folder: str) -> Views:
    """The views saved by :meth:`Views.save`, memory-mapped read-only (cached per process, so a worker
    reads them once however many parts it textures)."""
    return Views(**{n: np.load(Path(folder) / f"{n}.npy", mmap_mode="r") for n in VIEW_ARRAYS})


@dataclass(frozen=True)
class AppearanceSource:
    """What a worker needs to colour a part's texels: the saved views and the scene-from-world transform
    (the inverse of the export's floor alignment)."""

    views_dir: str
    scene_from_world: np.ndarray  # (4, 4) float64


def select_frames(indices: list[int], count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spread over the list (frames are in capture order, so this
    spreads them along the camera path)."""
    if count <= 0 or not indices:
        return []
    if len(indices) <= count:
        return list(indices)
    pick = np.round(np.linspace(0, len(indices) - 1, count)).astype(int)
    return [indices[i] for i in np.unique(pick)]


def render_views(
    gaussians, scene, frames: list[int], max_side: int = MAX_VIEW_SIDE, progress: bool = False
) -> Views:
    """Render ``gaussians`` (a :class:`simgen.render.gaussians.GaussianScene`) from the cameras of ``scene``'s
    ``frames``, each shrunk so its longer side is at most ``max_side``; see :class:`Views`."""
    from tqdm.auto import tqdm

    from simgen.render.gaussians import render_gaussians

    intr = []
    for i in frames:
        k = scene.frames[i].intrinsics
        intr.append(k.scaled(min(1.0, max_side / max(k.width, k.height))))
    W = max(k.width for k in intr)
    H = max(k.height for k in intr)
    n = len(frames)
    rgb = np.zeros((n, H, W, 3), np.uint8)
    depth = np.zeros((n, H, W), np.float32)
    for v, (i, k) in enumerate(
        tqdm(list(zip(frames, intr, strict=True)), desc="texture views", disable=not progress)
    ):
        out = render_gaussians(
            gaussians,
            k.matrix(),
            scene.frames[i].c2w_cv,
            k.width,
            k.height,
            ("rgb", "depth", "alpha"),
            min_alpha=MIN_ALPHA,
        )
        a = np.maximum(out["alpha"], 1e-6)[..., None]
        rgb[v, : k.height, : k.width] = np.clip(out["rgb"] / a + 0.5, 0, 255).astype(np.uint8)
        depth[v, : k.height, : k.width] = out["depth"]
    return Views(
        rgb=rgb,
        depth=depth,
        K=np.stack([k.matrix() for k in intr]) if n else np.zeros((0, 3, 3)),
        c2w_cv=np.stack([scene.frames[i].c2w_cv for i in frames]) if n else np.zeros((0, 4, 4)),
        size=np.array([[k.width, k.height] for k in intr], np.int64).reshape(-1, 2),
        frames=np.asarray(frames, np.int64),
    )


def prepare_appearance(
    build_dir: Path, cfg: ExportConfig, scene_from_world: np.ndarray, work_dir: Path
) -> tuple[AppearanceSource | None, dict, list[str]]:
    """Decide the texture source and, for Gaussians, render and save the views into ``work_dir``.

    Returns (the source for the workers or None for vertex colours, a JSON-ready record for export.json
    with ``source`` and, when rendered, ``views``, ``frames``, ``view_size``, ``seconds``, warnings).
    Raises FileNotFoundError naming ``gaussians.ply`` when ``texture_source`` is "gaussians" and the build
    has none; a missing scene folder only falls back to vertex colours, with a warning naming it.
    """
    from simgen.folders import GAUSSIANS_FILE

    record: dict = {"requested": cfg.texture_source, "source": "vertex"}
    if cfg.texture_source == "vertex":
        return None, record, []
    ply = build_dir / GAUSSIANS_FILE
    if not ply.is_file():
        if cfg.texture_source == "gaussians":
            raise FileNotFoundError(
                f"{ply}: no trained Gaussians to texture from (build without --no-gaussians, or use "
                "--texture-source vertex)"
            )
        record["reason"] = f"{ply.name} not in the build"
        return None, record, []
    scene_dir, problem = folders.scene_of_build(build_dir)
    scene = None
    if scene_dir is not None:
        from simgen.data.scene import SceneError, load_scene

        try:
            scene = load_scene(scene_dir)
        except (SceneError, OSError, ValueError) as e:
            problem = f"scene folder {scene_dir} cannot be loaded ({e})"
    if scene is None:
        warning = f"textures from vertex colours, not the Gaussians: {problem}"
        record["reason"] = problem
        return None, record, [warning]
    frames = select_frames(scene.split_indices("train") or scene.split_indices("all"), cfg.texture_views)
    if not frames:
        record["reason"] = f"scene {scene_dir} has no frames"
        return None, record, [f"textures from vertex colours, not the Gaussians: {record['reason']}"]
    from simgen.render.gaussians import load_gaussians

    t0 = time.perf_counter()
    g = load_gaussians(build_dir)
    views = render_views(g, scene, frames, progress=not cfg.quiet)
    views_dir = views.save(work_dir / "views")
    record.update(
        source="gaussians",
        scene=str(scene_dir),
        gaussians=len(g),
        views=len(frames),
        frames=[int(i) for i in frames],
        view_size=[int(views.rgb.shape[2]), int(views.rgb.shape[1])],
        render_seconds=round(time.perf_counter() - t0, 2),
    )
    return AppearanceSource(str(views_dir), np.asarray(scene_from_world, np.float64)), record, []


def shade_texels(
    points: np.ndarray, normals: np.ndarray, views: Views, scene_from_model: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the rendered colours of the views that see each surface point.

    A view sees a point when the point is in front of it (z > NEAR_M), projects inside its image, its
    camera depth matches the rendered depth at the four pixels its colour is interpolated from (within
    max(DEPTH_TOL_M, DEPTH_TOL_REL * z); this rejects occluded points and silhouette pixels) and the face
    is turned towards the camera (cosine of normal and view ray above MIN_COS). Colours are sampled
    bilinearly and weighted by cosine / distance (frontal, close views count most). The mesh's
    winding decides which side is the front; if more (point, view) pairs see the back, the part's faces
    are taken to be wound inwards and the backs are used.

    Args:
        points: (T, 3) float surface points in the model frame; normals: (T, 3) float unit face normals.
        views: the rendered views; scene_from_model: (4, 4) model frame -> scene frame.
    Returns:
        (rgb (T, 3) float32 in 0..255, seen (T,) bool); rgb is 0 where not seen.
    """
    T = len(points)
    R, t = scene_from_model[:3, :3], scene_from_model[:3, 3]
    P = (np.asarray(points, np.float64) @ R.T + t).astype(np.float32)
    N = (np.asarray(normals, np.float64) @ R.T).astype(np.float32)
    acc = np.zeros((2, T, 3), np.float32)  # [front, back]
    wsum = np.zeros((2, T), np.float32)
    hits = np.zeros(2, np.int64)
    if T == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, bool)
    lo, hi = P.min(0), P.max(0)
    corners = (
        np.stack(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij"), -1).reshape(8, 3).astype(np.float64)
    )
    for v in range(len(views)):
        c2w = np.asarray(views.c2w_cv[v], np.float64)
        w2c = np.linalg.inv(c2w)
        K = np.asarray(views.K[v], np.float64)
        w, h = (int(x) for x in views.size[v])
        if _box_outside(corners @ w2c[:3, :3].T + w2c[:3, 3], K, w, h):
            continue  # most views of a room miss any one object: skip them before touching every texel
        pc = P @ w2c[:3, :3].T.astype(np.float32) + w2c[:3, 3].astype(np.float32)
        z = pc[:, 2]
        front = z > NEAR_M
        zs = np.where(front, z, 1.0)
        u = K[0, 0] * pc[:, 0] / zs + K[0, 2] - 0.5  # pixel-centre coordinates: pixel i covers [i, i+1)
        y = K[1, 1] * pc[:, 1] / zs + K[1, 2] - 0.5
        ok = front & (u >= 0) & (u <= w - 1) & (y >= 0) & (y <= h - 1)
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            continue
        u, y, z = u[idx], y[idx], z[idx]
        depth = np.asarray(views.depth[v])
        tol = np.maximum(DEPTH_TOL_M, DEPTH_TOL_REL * z)
        # All four pixels the colour is interpolated from must show this surface: at silhouettes the
        # blend would otherwise pull in the background's colour.
        ok = np.ones(len(idx), bool)
        for yy, xx in _corners(u, y, w, h)[0]:
            d = depth[yy, xx]
            ok &= (d > 0) & (np.abs(d - z) < tol)
        ray = c2w[:3, 3].astype(np.float32) - P[idx]
        dist = np.linalg.norm(ray, axis=1)
        cos = np.einsum("ij,ij->i", N[idx], ray) / np.maximum(dist, 1e-9)
        for side, sel in enumerate((ok & (cos > MIN_COS), ok & (cos < -MIN_COS))):
            if not sel.any():
                continue
            k = idx[sel]
            wgt = np.abs(cos[sel]) ** COS_POWER / dist[sel] ** DIST_POWER
            acc[side, k] += wgt[:, None] * _bilinear(np.asarray(views.rgb[v]), u[sel], y[sel])
            wsum[side, k] += wgt
            hits[side] += len(k)
    side = 1 if hits[1] > hits[0] else 0
    seen = wsum[side] > 0
    rgb = np.zeros((T, 3), np.float32)
    rgb[seen] = acc[side, seen] / wsum[side, seen, None]
    return rgb, seen


def _box_outside(corners_cam: np.ndarray, K: np.ndarray, w: int, h: int) -> bool:
    """True when a box, given by its 8 corners (8, 3) in camera coordinates, cannot appear in the image:
    all corners behind the near plane, or (all in front and) all beyond one image edge."""
    z = corners_cam[:, 2]
    if (z <= NEAR_M).all():
        return True
    if (z <= NEAR_M).any():
        return False  # straddles the camera plane: projections are meaningless, keep the view
    u = K[0, 0] * corners_cam[:, 0] / z + K[0, 2]
    y = K[1, 1] * corners_cam[:, 1] / z + K[1, 2]
    return bool((u < 0).all() or (u > w).all() or (y < 0).all() or (y > h).all())


def _corners(x: np.ndarray, y: np.ndarray, w: int, h: int):
    """The 4 pixels (row, column index arrays, each (K,) int64) bilinear interpolation at pixel-centre
    coordinates x, y (K,) in [0, w-1] x [0, h-1] reads, in the order (y0 x0, y0 x1, y1 x0, y1 x1), and the
    fractional offsets fx, fy (K,) float32."""
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    corners = ((y0, x0), (y0, x1), (y1, x0), (y1, x1))
    return corners, (x - x0).astype(np.float32), (y - y0).astype(np.float32)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(K, 3) float32 bilinear samples of an (H, W, 3) image at pixel-centre coordinates x, y (K,) that lie
    in [0, W-1] x [0, H-1]."""
    ((a, b), (c, d), (e, f), (g, k)), fx, fy = _corners(x, y, img.shape[1], img.shape[0])
    fx, fy = fx[:, None], fy[:, None]
    top = img[a, b] * (1 - fx) + img[c, d] * fx
    bottom = img[e, f] * (1 - fx) + img[g, k] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def texel_shader(source: AppearanceSource, origin: np.ndarray):
    """The :data:`simgen.export.texture.TexelShader` of a part whose model frame is the world frame shifted
    by ``origin`` (3,)."""
    world_from_model = np.eye(4)
    world_from_model[:3, 3] = origin
    scene_from_model = source.scene_from_world @ world_from_model
    views = load_views(source.views_dir)

    def shade(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return shade_texels(points, normals, views, scene_from_model)

    return shade
