"""Settings of the Gaussian appearance stage (``simgen build --splat.*``, ``simgen gaussians``).

Kept apart from :mod:`simgen.splat.train` so that registering the CLI flags does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SplatConfig:
    """Settings of the Gaussian appearance stage (``simgen build``, skipped with ``--no-gaussians``)."""

    iterations: int = field(default=200, metadata={"help": "optimisation steps (one training frame each)"})
    init: Literal["auto", "mesh", "rgbd"] = field(
        default="auto",
        metadata={
            "help": "initial Gaussians: the build's panoptic_mesh.ply, RGB-D points, or auto (mesh if any)"
        },
    )
    init_count: int = field(
        default=20_000,
        metadata={"help": "initial Gaussians (sampled on the mesh / kept of the RGB-D points)"},
    )
    init_voxel: float = field(default=0.03, metadata={"help": "voxel size (m) that thins RGB-D init points"})
    init_opacity: float = field(default=0.5, metadata={"help": "initial opacity of every Gaussian"})
    sh_degree: int = field(default=3, metadata={"help": "spherical harmonics degree (0..3)"})
    sh_degree_every: int = field(
        default=50, metadata={"help": "raise the active SH degree by one every N steps (3DGS: 1000)"}
    )
    downscale: int = field(default=1, metadata={"help": "train on images shrunk by this integer factor"})
    lr_means: float = field(default=1.6e-3, metadata={"help": "Adam lr of the means, times the scene extent"})
    lr_means_final: float = field(
        default=0.05, metadata={"help": "final / initial mean lr (exponential decay)"}
    )
    lr_scales: float = field(default=5e-3, metadata={"help": "Adam lr of the log scales"})
    lr_quats: float = field(default=1e-3, metadata={"help": "Adam lr of the quaternions"})
    lr_opacities: float = field(default=5e-2, metadata={"help": "Adam lr of the opacity logits"})
    lr_sh0: float = field(default=1e-2, metadata={"help": "Adam lr of the SH DC term"})
    lr_shN: float = field(default=5e-4, metadata={"help": "Adam lr of the higher SH bands"})
    lambda_ssim: float = field(
        default=0.2, metadata={"help": "weight of 1 - SSIM in the RGB loss (eq. 34: 0.2)"}
    )
    lambda_depth: float = field(default=0.1, metadata={"help": "weight of the depth L1 loss (eq. 34: 0.1)"})
    refine_start: int = field(default=60, metadata={"help": "first step of densification / pruning"})
    refine_stop: int = field(default=141, metadata={"help": "no densification from this step on"})
    refine_every: int = field(default=40, metadata={"help": "densify / prune every N steps"})
    grow_grad2d: float = field(
        default=2e-4, metadata={"help": "mean view-space gradient (NDC units) above which Gaussians grow"}
    )
    grow_scale3d: float = field(
        default=0.01, metadata={"help": "grow by cloning below this scale (times extent), else by splitting"}
    )
    prune_opacity: float = field(default=0.005, metadata={"help": "prune Gaussians below this opacity"})
    prune_scale3d: float = field(
        default=0.1, metadata={"help": "prune Gaussians above this scale (times extent)"}
    )
    opacity_reset_every: int = field(default=0, metadata={"help": "reset opacities every N steps (0: never)"})
    max_gaussians: int = field(
        default=50_000, metadata={"help": "densification stops growing at this count (CPU speed)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed (frame order, initial sampling)"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "auto: CUDA when available (gsplat kernels if installed), else CPU"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from gaussians_ckpt.pt in the build folder"}
    )
    checkpoint_every: int = field(
        default=100, metadata={"help": "write a checkpoint every N steps (0: only at the end)"}
    )
    bake_labels: bool = field(default=True, metadata={"help": "bake panoptic labels from panoptic_mesh.ply"})
    evaluate: bool = field(
        default=True, metadata={"help": "report PSNR / SSIM / depth AbsRel on test frames"}
    )

    def __post_init__(self) -> None:
        checks = {
            "iterations": self.iterations >= 0,
            "init_count": self.init_count > 0,
            "init_voxel": self.init_voxel > 0,
            "init_opacity": 0 < self.init_opacity < 1,
            "sh_degree": 0 <= self.sh_degree <= 3,
            "sh_degree_every": self.sh_degree_every > 0,
            "downscale": self.downscale >= 1,
            "refine_every": self.refine_every > 0,
            "max_gaussians": self.max_gaussians > 0,
            "lambda_ssim": 0 <= self.lambda_ssim <= 1,
            "lambda_depth": self.lambda_depth >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SplatConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.init not in ("auto", "mesh", "rgbd"):
            raise ValueError(f"SplatConfig: init must be auto, mesh or rgbd, got {self.init!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"SplatConfig: device must be auto, cpu or cuda, got {self.device!r}")
