"""Settings of ``simgen eval`` (one dataclass; every field is a ``--flag``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EvalConfig:
    split: Literal["test", "train", "all"] = field(
        default="test", metadata={"help": "which frames of the scene to render and compare"}
    )
    stride: int = field(
        default=1, metadata={"help": "use every n-th frame of the split (memory and time for long scans)"}
    )
    report: str | None = field(
        default=None, metadata={"help": "folder for the picture report (default: OUT/eval/report)"}
    )
    pictures: bool = field(
        default=True, metadata={"help": "write the picture report (--no-pictures: numbers only)"}
    )
    frames: int = field(default=4, metadata={"help": "number of frames shown side by side in the report"})
    samples: int = field(
        default=200_000, metadata={"help": "points sampled uniformly on each mesh for the 3D metrics"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the surface sampling"})
    threshold: float = field(
        default=0.05, metadata={"help": "precision / recall / F-score distance threshold in metres"}
    )
    ignore_pred_void: bool = field(
        default=False,
        metadata={
            "help": "PQ: leave unlabelled predicted pixels out of GT segments' unions (torchmetrics / "
            "Panoptic Lifting convention) instead of counting them as misses (COCO)"
        },
    )
    coverage_2d: Literal["panoptic", "max", "hungarian"] = field(
        default="panoptic",
        metadata={
            "help": "2D mCov pairing: the PQ^scene matches (same class, IoU > 0.5; the paper's protocol), the "
            "best IoU per GT instance (max) or a one-to-one class-agnostic assignment (hungarian)"
        },
    )
    coverage_3d: Literal["hungarian", "max"] = field(
        default="hungarian",
        metadata={
            "help": "3D mCov pairing: one-to-one assignment (hungarian; the paper's) or best IoU (max)"
        },
    )
    gt_culling: Literal["observed", "none"] = field(
        default="observed",
        metadata={
            "help": "3D metrics: score completeness, recall and labels only on GT surface some frame of the "
            "scene observed (depth test), or on the whole GT mesh (none)"
        },
    )
    poses: Literal["true", "stored"] = field(
        default="true",
        metadata={
            "help": "render the build at the true camera poses of gt/gt.json, rigidly aligned onto the "
            "stored ones, move the GT mesh by that alignment and cull the GT by exact visibility (true; "
            "used when gt/gt.json records true poses), or at the scene's stored poses with the GT culled "
            "by the scene's depth (stored)"
        },
    )
    observed_tolerance: float = field(
        default=0.05,
        metadata={"help": "a GT surface point is observed when within this many metres of a frame's depth"},
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bar and no table on stdout"})

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.poses not in ("true", "stored"):
            raise ValueError(f"poses must be 'true' or 'stored', got {self.poses!r}")
        if not self.observed_tolerance > 0:
            raise ValueError(f"observed_tolerance must be > 0, got {self.observed_tolerance}")
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0, got {self.frames}")
