"""Settings of the neural builder (``simgen build --method neural``): one dataclass, presets fast / quality.

Fields left ``None`` take the preset's value (:meth:`NeuralConfig.resolved`). Schedule switch points
are fractions of ``steps`` so changing ``steps`` keeps the schedule's shape (paper section V-D).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

PresetName = Literal["fast", "quality"]

# Values the presets set; every key is a NeuralConfig field whose default is None.
PRESETS: dict[str, dict] = {
    # CPU, minutes: small tables, few rays, few samples, semantic/instance fields at 4 samples per ray;
    # warm start from an in-process fusion build (docs/method.md: PQ^scene on room 0.54 -> 0.79 at 300 steps).
    "fast": dict(
        device="auto", steps=2500, downscale=2, frames_per_batch=4, rays_per_frame=256, n_uniform=12,
        n_surface=12, seg_samples=4, geo_levels=12, geo_log2_table=15, geo_max_res=512, seg_levels=8,
        seg_log2_table=14, seg_max_res=128, mesh_voxel=0.03, n_eikonal=1024, init="fusion",
    ),
    # GPU: instant-NGP-sized tables, more rays and samples, finer mesh.
    "quality": dict(
        device="auto", steps=20000, downscale=1, frames_per_batch=8, rays_per_frame=1024, n_uniform=32,
        n_surface=32, seg_samples=16, geo_levels=16, geo_log2_table=19, geo_max_res=2048, seg_levels=12,
        seg_log2_table=17, seg_max_res=512, mesh_voxel=0.01, n_eikonal=8192, init="none",
    ),
}  # fmt: skip


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class NeuralConfig:
    """Settings of the neural panoptic builder (PanopticRecon++ fields, tokens, losses, schedule)."""

    preset: PresetName = _f("fast", "fast (CPU, minutes) or quality (GPU); fields left unset take its values")
    device: Literal["auto", "cpu", "cuda"] | None = _f(None, "auto picks cuda when available")
    backend: Literal["auto", "torch", "tcnn"] = _f("auto", "hash-grid backend; auto uses tinycudann on CUDA")
    amp: bool = _f(True, "mixed precision (float16 autocast + grad scaling) on CUDA; ignored on CPU")
    seed: int = _f(0, "random seed")
    resume: bool = _f(False, "continue from OUT/checkpoint.pt")
    split: Literal["train", "all"] = _f("train", "frames to train on")
    # --- data and rays
    steps: int | None = _f(None, "optimisation steps")
    downscale: int | None = _f(None, "use every k-th pixel in x and y")
    frames_per_batch: int | None = _f(None, "frames per step (one Hungarian matching per frame)")
    rays_per_frame: int | None = _f(None, "rays sampled per frame per step")
    n_uniform: int | None = _f(None, "stratified samples per ray from near to the observed depth")
    n_surface: int | None = _f(None, "samples per ray in the band observed depth +- trunc")
    seg_samples: int | None = _f(None, "semantic / instance fields evaluated at the k highest-weight samples")
    near: float = _f(0.05, "near plane, metres")
    trunc: float = _f(0.1, "SDF truncation tau, metres (eq. 24)")
    depth_normalise: bool = _f(True, "divide rendered depth by the ray's accumulated opacity (eq. 10)")
    sdf_beta: float = _f(5.0, "free-space penalty sharpness beta (eq. 24)")
    n_eikonal: int | None = _f(None, "points per step for the eikonal loss")
    # --- fields
    geo_levels: int | None = _f(None, "geometry hash grid levels")
    geo_log2_table: int | None = _f(None, "geometry hash table size, log2")
    geo_max_res: int | None = _f(None, "geometry finest grid resolution")
    seg_levels: int | None = _f(None, "semantic / instance hash grid levels")
    seg_log2_table: int | None = _f(None, "semantic / instance hash table size, log2")
    seg_max_res: int | None = _f(None, "semantic / instance finest grid resolution")
    base_res: int = _f(16, "coarsest grid resolution of every hash grid")
    hidden: int = _f(64, "MLP width")
    xi_mode: Literal["learnable", "scheduled"] = _f(
        "scheduled", "S-density sharpness xi: learned or scheduled"
    )
    xi_init: float = _f(30.0, "initial xi (1/m)")
    xi_final: float = _f(300.0, "xi at the end when scheduled (geometric growth)")
    init_radius: float = _f(0.0, "initial SDF sphere radius in metres; 0 = half the box diagonal / 2")
    # --- warm start from a fusion build (simgen.recon.neural.warmstart)
    init: Literal["none", "fusion"] | None = _f(
        None,
        "fusion: pre-fit SDF / semantic / instance fields and tokens to a fusion build first "
        "(unset: the preset's; fast: fusion, quality: none)",
    )
    init_build: str = _f("", "fusion build folder to warm-start from; empty = run fusion in-process")
    init_voxel: float = _f(0.03, "voxel size (metres) of the in-process fusion build")
    init_steps: int = _f(300, "pre-fit steps (direct regression, no volume rendering)")
    init_batch: int = _f(4096, "points per pre-fit step (SDF pool and labelled surface samples each)")
    init_pool: int = _f(200000, "points with SDF targets (near the fused surface and along training rays)")
    init_samples: int = _f(200000, "labelled samples drawn on the fused surface")
    init_token_spread: float = _f(2.0, "token std = this x the std of its fused instance's surface samples")
    init_extra_tokens: int = _f(
        4, "extra tokens at random thing pixels no fused instance explains (things fusion missed)"
    )
    # --- tokens
    n_tokens: int = _f(24, "initial instance tokens (back-projected random thing pixels)")
    max_tokens: int = _f(96, "token capacity (splitting stops there)")
    token_scale: float = _f(0.3, "initial Gaussian std of a token, metres")
    # --- optimiser
    lr_grid: float = _f(1e-2, "learning rate of hash tables")
    lr_mlp: float = _f(5e-3, "learning rate of MLPs")
    lr_xi: float = _f(1e-2, "learning rate of log(xi) when xi is learnable")
    lr_token: float = _f(5e-3, "learning rate of token parameters")
    lr_decay: float = _f(0.1, "learning-rate factor reached at the last step (exponential)")
    # --- loss weights (eq. 23)
    w_depth: float = _f(1.0, "weight of L_depth")
    w_sdf: float = _f(10.0, "weight of L_sdf")
    w_eik: float = _f(0.1, "weight of L_eik")
    w_sem: float = _f(0.5, "weight of L_sem")
    w_ins: float = _f(1.0, "weight of L_ins")
    w_ins_neg: float = _f(
        1.0,
        "weight of L_ins for unmatched tokens (empty target; 0: matched pairs only; not used without the "
        "spatial prior; docs/method.md)",
    )
    w_c: float = _f(0.1, "weight of L_c")
    w_pan: float = _f(0.5, "weight of L_pan")
    dice_eps: float = _f(1.0, "Dice smoothing epsilon (eq. 28)")
    # --- schedule (fractions of steps; section V-D)
    seg_start: float = _f(0.15, "semantic, instance and class losses from this fraction of steps")
    pan_start: float = _f(0.4, "panoptic loss from this fraction")
    dice_stop: float = _f(0.75, "Dice term of L_ins dropped from this fraction")
    # --- dynamic token adjustment (section IV-C)
    adjust_start: float = _f(0.25, "token pruning / splitting from this fraction")
    adjust_stop: float = _f(0.9, "no token changes after this fraction")
    adjust_every: int = _f(100, "steps between token adjustments")
    prune_min_assign: int = _f(2, "prune tokens assigned fewer times than this between adjustments")
    iom_threshold: float = _f(0.7, "duplicate when 3D Intersection-over-Mask (eq. 9) exceeds this")
    split_patience: int = _f(3, "split a token after this many 'two masks prefer it' events")
    surface_points: int = _f(20000, "surface points for 3D masks (IoM) and vertex labelling checks")
    # --- baselines (ablations of the paper's Tab. V)
    spatial_prior: bool = _f(True, "Gaussian prior G (off = Panoptic Lifting ID field, eq. 3)")
    dynamic_tokens: bool = _f(True, "dynamic token adjustment")
    panoptic_head: bool = _f(True, "panoptic head and L_pan (off = semantic argmax + instance argmax)")
    # --- output
    mesh_voxel: float | None = _f(None, "marching-cubes voxel size, metres")
    cull_unobserved: bool = _f(True, "drop mesh parts no training camera saw")
    fragment_ratio: float = _f(
        0.25,
        "a thing piece with at most this fraction of the vertices of a same-class instance it touches joins "
        "it (0: off)",
    )
    log_every: int = _f(10, "steps between JSONL log lines")
    ckpt_every: int = _f(250, "steps between checkpoints")

    def resolved(self) -> NeuralConfig:
        """A copy with every None field set from the preset."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        vals = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        return replace(self, **vals) if vals else self

    def __post_init__(self) -> None:
        """Raise ValueError naming the first inconsistent setting (of the preset-resolved values)."""
        c = self.resolved()
        for f in fields(c):
            v = getattr(c, f.name)
            if f.name.startswith(("w_", "lr_")) and v < 0:
                raise ValueError(f"neural.{f.name} must be >= 0, got {v}")
        positive = ("steps", "downscale", "frames_per_batch", "rays_per_frame", "n_uniform", "n_surface",
                    "n_eikonal", "geo_levels", "seg_levels", "n_tokens", "max_tokens", "adjust_every",
                    "init_batch", "init_pool", "init_samples")  # fmt: skip
        for name in positive:
            if getattr(c, name) <= 0:
                raise ValueError(f"neural.{name} must be > 0, got {getattr(c, name)}")
        if c.max_tokens < c.n_tokens:
            raise ValueError(f"neural.max_tokens ({c.max_tokens}) < neural.n_tokens ({c.n_tokens})")
        for name in ("seg_start", "pan_start", "dice_stop", "adjust_start", "adjust_stop"):
            if not 0.0 <= getattr(c, name) <= 1.0:
                raise ValueError(f"neural.{name} is a fraction of steps in [0, 1], got {getattr(c, name)}")
        if c.init_steps < 0 or c.init_extra_tokens < 0 or c.init_voxel <= 0 or c.init_token_spread <= 0:
            raise ValueError(
                "neural.init_steps and init_extra_tokens must be >= 0, init_voxel and init_token_spread > 0"
            )
        if c.init_build and c.init != "fusion":
            raise ValueError("neural.init_build is only read with neural.init fusion")
        if not 0.0 <= c.fragment_ratio < 1.0:
            raise ValueError(f"neural.fragment_ratio must be in [0, 1), got {c.fragment_ratio}")
        if c.mesh_voxel <= 0 or c.trunc <= 0:
            raise ValueError("neural.mesh_voxel and neural.trunc must be > 0")


def neural_config(preset: str = "fast", **overrides) -> NeuralConfig:
    """A resolved :class:`NeuralConfig` for ``preset`` with ``overrides`` applied."""
    return NeuralConfig(preset=preset, **overrides).resolved()  # type: ignore[arg-type]
