"""A scene of 3D Gaussians with panoptic labels: the data type, its 3DGS PLY file, and rendering for
inference (serving, evaluation, export texturing). Fitting them to images is :mod:`simgen.splat`.

Parameters are stored the way 3DGS, gsplat and common splat viewers store them: ``log_scales`` (so
``scale = exp(log_scale)``), ``opacity_logits`` (``opacity = sigmoid(logit)``), unnormalised ``wxyz``
quaternions and SH coefficients ``sh`` ``(N, K, 3)`` with the DC term first (:mod:`simgen.render.sh`).
Labels follow the build folder contract (:mod:`simgen.folders`): ``semantic`` is a category id
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
from simgen.folders import BUILD_ID_COMMENT, GAUSSIANS_FILE
from simgen.render.rasterize import rasterize
from simgen.render.sh import sh_degree_from_bases


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
        :func:`simgen.render.rasterize.rasterize` for the outputs and the other keyword arguments.

        On the compiled CPU path, what no camera changes is computed on the first render and kept until a
        parameter tensor is replaced or changed in place (:meth:`numba_prepared`)."""
        dev, dt = self.means.device, self.means.dtype
        if "prepared" not in kwargs and self._uses_numba(kwargs.get("backend", "auto"), features):
            kwargs["prepared"] = self.numba_prepared()
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

    def _uses_numba(self, backend: str, features: torch.Tensor | None) -> bool:
        """Whether :func:`simgen.render.rasterize.rasterize` takes the compiled CPU path for this render."""
        if self.means.is_cuda or backend not in ("auto", "numba"):
            return False
        params = (self.means, self.quats, self.log_scales, self.opacity_logits, self.sh, features)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params):
            return False  # autograd path (or rasterize's error for an explicit numba request)
        from simgen.render.rasterize_numba import numba_available

        return numba_available()

    def _param_key(self) -> tuple:
        # identity, storage and in-place version of each parameter tensor: any assignment or in-place
        # update (an optimiser step, densification) changes it
        params = (self.means, self.quats, self.log_scales, self.opacity_logits, self.sh)
        return tuple((id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in params)

    def numba_prepared(self):
        """The compiled CPU rasterizer's camera-independent arrays of these Gaussians
        (:class:`simgen.render.rasterize_numba.Prepared`), computed once and reused while the parameters
        are unchanged."""
        from simgen.render.rasterize_numba import prepare

        key = self._param_key()
        cached = self.__dict__.get("_numba_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            prep = prepare(self.means, self.quats, self.scales, self.opacities, self.sh)
        # keyed by the tensors read before computing: a concurrent update leaves a key that no longer matches
        self.__dict__["_numba_cache"] = (key, prep)
        return prep


def _ply_names(k: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(path: str | Path, g: GaussianScene, build_id: str | None = None) -> None:
    """Write the standard 3DGS PLY (binary little endian, float32 properties in Inria's order) plus int32
    ``semantic`` and ``instance``. ``f_rest_*`` is channel-major (all R coefficients, then G, then B) as in
    3DGS. ``build_id`` (the build the Gaussians were fitted to) goes into a header comment that 3DGS
    viewers ignore. Atomic."""
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
        comments = [f"{BUILD_ID_COMMENT} {build_id}"] if build_id else []
        PlyData([PlyElement.describe(arr, "vertex")], text=False, comments=comments).write(str(tmp))


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


def load_gaussians(build_dir: str | Path, device: str | torch.device = "cpu") -> GaussianScene:
    """The trained Gaussians of a build folder (``gaussians.ply``), for serve / eval / export.

    Raises FileNotFoundError naming the file when the build has none (built with ``--no-gaussians``)."""
    path = Path(build_dir) / GAUSSIANS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no trained Gaussians in this build (was it built with --no-gaussians?)"
        )
    return load_ply(path).to(device)


def render_gaussians(
    g: GaussianScene,
    K: np.ndarray,
    c2w_cv: np.ndarray,
    width: int,
    height: int,
    outputs: tuple[str, ...] = ("rgb", "depth", "panoptic"),
    *,
    background: tuple[float, float, float] | None = None,
    min_alpha: float = 0.5,
) -> dict[str, np.ndarray]:
    """Render one camera for serving / evaluation (no gradients).

    ``K`` ``(3, 3)`` pinhole intrinsics in pixels, ``c2w_cv`` ``(4, 4)`` camera-to-world with OpenCV axes
    (``frame.c2w_cv``). ``outputs`` any of ``rgb``, ``depth``, ``alpha``, ``panoptic``. Returns numpy arrays:
    ``rgb`` ``(H, W, 3)`` uint8; ``depth`` ``(H, W)`` float32 camera z in metres, 0 where the accumulated
    alpha is below ``min_alpha`` (the scene-format convention for invalid depth); ``alpha`` ``(H, W)``
    float32; ``panoptic`` adds ``semantic`` (int32, -1 void) and ``instance`` (int32, 0 stuff / void) by
    label blending (:func:`simgen.render.gaussians.render_panoptic`).
    """
    unknown = set(outputs) - {"rgb", "depth", "alpha", "panoptic"}
    if unknown:
        raise ValueError(f"render_gaussians: unknown outputs {sorted(unknown)} (rgb, depth, alpha, panoptic)")
    K = np.asarray(K, dtype=np.float64)
    c2w_cv = np.asarray(c2w_cv, dtype=np.float64)
    if K.shape != (3, 3) or c2w_cv.shape != (4, 4):
        raise ValueError(
            f"render_gaussians: K must be (3, 3) and c2w_cv (4, 4), got {K.shape} and {c2w_cv.shape}"
        )
    viewmat = np.linalg.inv(c2w_cv)
    res: dict[str, np.ndarray] = {}
    if {"rgb", "depth", "alpha"} & set(outputs):
        bg = None if background is None else torch.tensor(background, dtype=torch.float32)
        with torch.no_grad():
            out = g.render(viewmat, K, width, height, background=bg)
        alpha = out["alpha"].cpu().numpy().astype(np.float32)
        if "rgb" in outputs:
            res["rgb"] = (out["rgb"].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        if "depth" in outputs:
            res["depth"] = np.where(alpha >= min_alpha, out["depth"].cpu().numpy(), 0).astype(np.float32)
        if "alpha" in outputs:
            res["alpha"] = alpha
    if "panoptic" in outputs:
        pan = render_panoptic(g, viewmat, K, width, height, min_alpha=min_alpha)
        res["semantic"], res["instance"] = pan["semantic"], pan["instance"]
    return res


def render_panoptic(
    g: GaussianScene,
    viewmat,
    K,
    width: int,
    height: int,
    *,
    min_alpha: float = 0.5,
    group: int = 32,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Label-blended panoptic rendering of one camera (no gradients).

    The distinct (semantic, instance) pairs of ``g`` are blended as one-hot feature channels, ``group``
    channels per rasterization pass, and each pixel takes the pair with the largest weight. Pixels with
    accumulated alpha below ``min_alpha`` are void. Returns ``semantic`` ``(H, W)`` int32 (-1 void / unknown),
    ``instance`` ``(H, W)`` int32 (0 stuff / void), ``confidence`` ``(H, W)`` float32 (winning weight / alpha)
    and ``alpha`` ``(H, W)`` float32.
    """
    pairs, inverse = torch.unique(
        torch.stack([g.semantic, g.instance], dim=1).cpu(), dim=0, return_inverse=True
    )
    inverse = inverse.to(g.means.device)
    best_w = torch.zeros(height, width, device=g.means.device)
    best_i = torch.zeros(height, width, dtype=torch.int64, device=g.means.device)
    alpha = None
    with torch.no_grad():
        for c0 in range(0, len(pairs), group):
            c1 = min(c0 + group, len(pairs))
            onehot = (inverse[:, None] == torch.arange(c0, c1, device=inverse.device)[None, :]).to(
                g.means.dtype
            )
            out = g.render(viewmat, K, width, height, features=onehot, **kwargs)
            w, i = out["features"].max(dim=-1)
            better = w > best_w
            best_w = torch.where(better, w, best_w)
            best_i = torch.where(better, i + c0, best_i)
            alpha = out["alpha"]
    if alpha is None:  # no Gaussians at all
        alpha = torch.zeros(height, width, device=g.means.device)
    sem = pairs[best_i.cpu(), 0].numpy().astype(np.int32)
    ins = pairs[best_i.cpu(), 1].numpy().astype(np.int32)
    void = (alpha < min_alpha).cpu().numpy()
    sem[void], ins[void] = -1, 0
    conf = (best_w / torch.clamp_min(alpha, 1e-10)).cpu().numpy().astype(np.float32)
    return {
        "semantic": sem,
        "instance": ins,
        "confidence": conf,
        "alpha": alpha.cpu().numpy().astype(np.float32),
    }
