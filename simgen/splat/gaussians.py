"""Initial 3D Gaussians for a scene: from back-projected RGB-D frames or from the panoptic mesh.

The data type, its PLY file and rendering are :mod:`simgen.render.gaussians`.
"""

from __future__ import annotations

import numpy as np
import torch

from simgen.data.camera import backproject
from simgen.render.gaussians import GaussianScene
from simgen.render.sh import num_sh_bases, rgb_to_sh0


def knn_scale(points: np.ndarray, k: int = 3) -> np.ndarray:
    """``(M,)`` mean distance of each point to its ``k`` nearest neighbours (3DGS's initial scale)."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return np.full(len(points), 0.01)
    k = min(k, len(points) - 1)
    d, _ = cKDTree(points).query(points, k=k + 1)
    return np.maximum(d[:, 1:].mean(axis=1), 1e-4)


def from_points(
    points: np.ndarray,
    colors: np.ndarray,
    *,
    semantic: np.ndarray | None = None,
    instance: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    sh_degree: int = 3,
    opacity: float = 0.1,
    scale_factor: float = 1.0,
    flatness: float = 0.1,
) -> GaussianScene:
    """Gaussians at ``points`` ``(M, 3)`` with colours ``(M, 3)`` in [0, 1] (or uint8).

    Scales are ``scale_factor`` times the mean distance to the 3 nearest points, opacity ``opacity``,
    higher SH bands zero. Labels default to unknown (-1 / 0). Without ``normals`` the Gaussians are
    isotropic; with unit ``normals`` ``(M, 3)`` they are flat discs in the surface (the scale along the
    normal is ``flatness`` times the others), so that a Gaussian on a surface seen edge-on does not hang
    3 sigma over its neighbours in the image.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors)
    colors = colors.astype(np.float32) / 255.0 if colors.dtype == np.uint8 else colors.astype(np.float32)
    colors = colors.reshape(-1, 3)
    m = len(points)
    if len(colors) != m:
        raise ValueError(f"from_points: {m} points but {len(colors)} colours")
    sh = torch.zeros(m, num_sh_bases(sh_degree), 3)
    sh[:, 0] = rgb_to_sh0(torch.from_numpy(colors))
    log_scale = torch.from_numpy(np.log(knn_scale(points) * scale_factor).astype(np.float32))[:, None].repeat(
        1, 3
    )
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(m, 1)
    if normals is not None:
        normals = np.asarray(normals, np.float32).reshape(-1, 3)
        if len(normals) != m:
            raise ValueError(f"from_points: {m} points but {len(normals)} normals")
        quats = torch.from_numpy(quats_z_to(normals))
        log_scale[:, 2] += float(np.log(flatness))
    p = float(np.clip(opacity, 1e-4, 1 - 1e-4))
    return GaussianScene(
        means=torch.from_numpy(points.copy()),
        quats=quats,
        log_scales=log_scale,
        opacity_logits=torch.full((m,), float(np.log(p / (1 - p)))),
        sh=sh,
        semantic=torch.from_numpy(
            np.full(m, -1, np.int32) if semantic is None else np.asarray(semantic, np.int32).reshape(m)
        ),
        instance=torch.from_numpy(
            np.zeros(m, np.int32) if instance is None else np.asarray(instance, np.int32).reshape(m)
        ),
    )


def quats_z_to(normals: np.ndarray) -> np.ndarray:
    """``(M, 4)`` float32 wxyz unit quaternions rotating the z axis onto each of ``normals`` ``(M, 3)``.

    Shortest-arc rotation ``q = (1 + z.n, z x n)`` normalised; zero or -z normals get a half turn about x.
    """
    n = np.asarray(normals, np.float64).reshape(-1, 3)
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    q = np.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))], axis=1)
    norm = np.linalg.norm(q, axis=1)
    q[norm < 1e-6] = (0.0, 1.0, 0.0, 0.0)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def voxel_downsample(points: np.ndarray, voxel: float, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Average ``points`` ``(M, 3)`` and per-point ``values`` ``(M, C)`` per cubic voxel of side ``voxel``."""
    keys = np.floor(points / voxel).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)

    def mean(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64).reshape(len(points), -1)
        out = np.zeros((len(counts), a.shape[1]))
        np.add.at(out, inv, a)
        return out / counts[:, None]

    return (mean(points).astype(np.float32), *(mean(v).astype(np.float32) for v in values))


def rgbd_points(scene, frames: list[int] | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Back-projected points ``(M, 3)`` and colours ``(M, 3)`` float in [0, 1] of a scene's frames.

    ``scene`` is a :class:`simgen.data.scene.Scene`; ``frames`` default to the training split; ``stride``
    subsamples pixels in both directions. Pixels with invalid depth (0) are skipped.
    """
    frames = scene.split_indices("train") if frames is None else frames
    pts, cols = [], []
    for i in frames:
        f = scene.frames[i]
        depth = scene.depth(i)[::stride, ::stride]
        rgb = scene.rgb(i)[::stride, ::stride]
        K = f.intrinsics.scaled(1.0 / stride) if stride != 1 else f.intrinsics
        if depth.shape != (K.height, K.width):  # rounding of odd sizes: fit K to the strided image
            K = type(K)(K.fx, K.fy, K.cx, K.cy, depth.shape[1], depth.shape[0])
        p = backproject(depth, K, f.c2w_cv)
        ok = np.isfinite(p).all(axis=-1)
        pts.append(p[ok])
        cols.append(rgb[ok].astype(np.float32) / 255.0)
    if not pts or sum(len(p) for p in pts) == 0:
        raise ValueError(f"{scene.root}: no valid depth pixels in frames {frames}")
    return np.concatenate(pts), np.concatenate(cols)


def init_from_rgbd(
    scene,
    *,
    frames: list[int] | None = None,
    voxel: float = 0.02,
    max_points: int | None = 200_000,
    sh_degree: int = 3,
    seed: int = 0,
) -> GaussianScene:
    """Gaussians from the back-projected RGB-D training frames, voxel-downsampled (``voxel`` metres),
    then randomly subsampled to ``max_points``. Labels are unknown (bake them with
    :func:`simgen.splat.labels.bake_labels_from_mesh`)."""
    pts, cols = rgbd_points(scene, frames)
    pts, cols = voxel_downsample(pts, voxel, cols)
    if max_points is not None and len(pts) > max_points:
        keep = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    return from_points(pts, cols, sh_degree=sh_degree)


def init_from_mesh(
    mesh,
    *,
    count: int | None = None,
    sh_degree: int = 3,
    seed: int = 0,
    opacity: float = 0.1,
    flat: bool = True,
) -> GaussianScene:
    """Gaussians on a :class:`simgen.folders.PanopticMesh`, carrying its colours and labels.

    With ``count`` None, one Gaussian per vertex. Otherwise ``count`` points are sampled uniformly on the
    surface (meshes of large flat faces have too few vertices); each takes the colour and labels of the
    nearest corner of its face. With ``flat`` the Gaussians are discs in the surface (vertex or face
    normal); otherwise isotropic.
    """
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    if count is None:
        normals = tm.vertex_normals if (flat and len(mesh.faces)) else None
        return from_points(
            mesh.vertices,
            mesh.colors,
            semantic=mesh.semantic,
            instance=mesh.instance,
            normals=normals,
            sh_degree=sh_degree,
            opacity=opacity,
        )
    if len(mesh.faces) == 0:
        raise ValueError("init_from_mesh: the mesh has no faces to sample")
    pts, face = trimesh.sample.sample_surface(tm, count, seed=seed)
    corners = mesh.faces[face]  # (count, 3)
    d = np.linalg.norm(mesh.vertices[corners] - pts[:, None, :], axis=-1)
    v = corners[np.arange(len(pts)), d.argmin(axis=1)]
    return from_points(
        pts,
        mesh.colors[v],
        semantic=mesh.semantic[v],
        instance=mesh.instance[v],
        normals=tm.face_normals[face] if flat else None,
        sh_degree=sh_degree,
        opacity=opacity,
    )
