"""A scene of 3D Gaussians with panoptic labels: initialisation, rendering and the standard 3DGS PLY file.

Parameters are stored the way 3DGS, gsplat and common splat viewers store them: ``log_scales`` (so
``scale = exp(log_scale)``), ``opacity_logits`` (``opacity = sigmoid(logit)``), unnormalised ``wxyz``
quaternions and SH coefficients ``sh`` ``(N, K, 3)`` with the DC term first (:mod:`simgen.splat.sh`).
Labels follow the build output contract (:mod:`simgen.build.output`): ``semantic`` is a category id
(-1 = unknown), ``instance`` a global instance id (> 0 for things, 0 for stuff and unknown).
World frame: the scene's ``transforms.json`` frame, metres.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from simgen.data import io
from simgen.data.camera import backproject
from simgen.splat.rasterize import rasterize
from simgen.splat.sh import num_sh_bases, rgb_to_sh0, sh0_to_rgb, sh_degree_from_bases

GAUSSIANS_FILE = "gaussians.ply"


@dataclass
class GaussianScene:
    """``N`` Gaussians (torch tensors on one device; float32 unless stated)."""

    means: torch.Tensor  # (N, 3) world positions, metres
    quats: torch.Tensor  # (N, 4) rotation, w x y z, not necessarily unit length
    log_scales: torch.Tensor  # (N, 3) log standard deviations along the rotated axes
    opacity_logits: torch.Tensor  # (N,) logit of opacity
    sh: torch.Tensor  # (N, K, 3) SH coefficients, K = (degree+1)^2
    semantic: torch.Tensor  # (N,) int32 category id, -1 = unknown
    instance: torch.Tensor  # (N,) int32 instance id, > 0 things, 0 stuff / unknown

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
            "semantic": (n,),
            "instance": (n,),
        }
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"GaussianScene.{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}"
                )
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"GaussianScene.sh must have shape (N, K, 3), got {tuple(self.sh.shape)}")
        sh_degree_from_bases(self.sh.shape[1])

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    def to(self, device: str | torch.device) -> GaussianScene:
        return GaussianScene(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def detach(self) -> GaussianScene:
        return GaussianScene(**{f.name: getattr(self, f.name).detach().clone() for f in fields(self)})

    def subset(self, index: torch.Tensor) -> GaussianScene:
        """The Gaussians selected by a bool mask or index tensor."""
        return GaussianScene(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def render(
        self,
        viewmat: torch.Tensor | np.ndarray,
        K: torch.Tensor | np.ndarray,
        width: int,
        height: int,
        *,
        sh_degree: int | None = None,
        features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Render one camera (world-to-camera ``viewmat`` with OpenCV axes, ``K`` 3x3); see
        :func:`simgen.splat.rasterize.rasterize` for the outputs and the other keyword arguments."""
        dev, dt = self.means.device, self.means.dtype
        return rasterize(
            self.means,
            self.quats,
            self.scales,
            self.opacities,
            self.sh,
            torch.as_tensor(viewmat, dtype=dt, device=dev),
            torch.as_tensor(K, dtype=dt, device=dev),
            width,
            height,
            sh_degree=sh_degree,
            features=features,
            **kwargs,
        )


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
    """Gaussians on a :class:`simgen.build.output.PanopticMesh`, carrying its colours and labels.

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


def _ply_names(k: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(path: str | Path, g: GaussianScene) -> None:
    """Write the standard 3DGS PLY (binary little endian, float32 properties in Inria's order) plus int32
    ``semantic`` and ``instance``. ``f_rest_*`` is channel-major (all R coefficients, then G, then B) as in
    3DGS. Atomic."""
    k = g.sh.shape[1]
    sh = g.sh.detach().cpu().float()
    cols = [
        g.means.detach().cpu().float(),
        torch.zeros(len(g), 3),  # normals: unused by 3DGS, present for viewers that expect them
        sh[:, 0, :],
        sh[:, 1:, :].transpose(1, 2).reshape(len(g), 3 * (k - 1)),
        g.opacity_logits.detach().cpu().float()[:, None],
        g.log_scales.detach().cpu().float(),
        g.quats.detach().cpu().float(),
    ]
    data = torch.cat(cols, dim=1).numpy()
    names = _ply_names(k)
    arr = np.empty(len(g), dtype=[(n, "f4") for n in names] + [("semantic", "i4"), ("instance", "i4")])
    for i, n in enumerate(names):
        arr[n] = data[:, i]
    arr["semantic"] = g.semantic.cpu().numpy()
    arr["instance"] = g.instance.cpu().numpy()
    with io.atomic_path(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")], text=False).write(str(tmp))


def load_ply(path: str | Path) -> GaussianScene:
    """Read a 3DGS PLY (ours or any tool's). Missing ``semantic`` / ``instance`` read as unknown.
    Raises ValueError naming the file and the missing properties."""
    ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element (not a Gaussian splat PLY)")
    v = ply["vertex"].data
    names = set(v.dtype.names)
    n_rest = sum(1 for n in names if n.startswith("f_rest_"))
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
    k = 1 + n_rest // 3
    try:
        sh_degree_from_bases(k)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    need = [n for n in _ply_names(k) if n not in ("nx", "ny", "nz")]
    missing = [n for n in need if n not in names]
    if missing:
        raise ValueError(f"{path}: vertex properties {missing} missing (not a 3DGS PLY)")

    def col(*ns: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[n], np.float32) for n in ns], axis=1))

    n = len(v)
    dc = col("f_dc_0", "f_dc_1", "f_dc_2")
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(1, 2)], dim=1)
    sem = np.asarray(v["semantic"], np.int32) if "semantic" in names else np.full(n, -1, np.int32)
    ins = np.asarray(v["instance"], np.int32) if "instance" in names else np.zeros(n, np.int32)
    return GaussianScene(
        means=col("x", "y", "z"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        opacity_logits=col("opacity")[:, 0],
        sh=sh.contiguous(),
        semantic=torch.from_numpy(sem),
        instance=torch.from_numpy(ins),
    )


def base_colors(g: GaussianScene) -> np.ndarray:
    """``(N, 3)`` uint8 view-independent colour of each Gaussian (the DC term), e.g. for previews."""
    rgb = sh0_to_rgb(g.sh[:, 0, :].detach().cpu()).clamp(0, 1)
    return (rgb.numpy() * 255 + 0.5).astype(np.uint8)
