"""Settings of the fusion builder (one dataclass; every field is a ``simgen build`` flag)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class FusionConfig:
    """Online panoptic TSDF fusion (``simgen build --method fusion``); see docs/fusion.md."""

    split: Literal["train", "all"] = field(
        default="train",
        metadata={"help": "frames to fuse: 'train' keeps the scene's test views held out for evaluation"},
    )
    # --- volume
    voxel_size: float = field(default=0.03, metadata={"help": "TSDF voxel edge in metres"})
    trunc_voxels: float = field(default=3.0, metadata={"help": "TSDF truncation distance in voxels"})
    max_depth: float = field(default=6.0, metadata={"help": "depth beyond this many metres is ignored"})
    min_depth: float = field(default=0.1, metadata={"help": "depth below this many metres is ignored"})
    max_weight: float = field(
        default=64.0, metadata={"help": "cap of the per-voxel TSDF weight (bounds how slowly a voxel adapts)"}
    )
    label_band_voxels: float = field(
        default=2.0,
        metadata={"help": "only voxels within this many voxels of the observed surface receive labels"},
    )
    min_valid_depth_fraction: float = field(
        default=0.01, metadata={"help": "a frame with less valid depth than this fraction is skipped"}
    )
    # --- depth pre-filter and sensor-noise weights (depthfilter.py)
    flying_pixel_slope: float = field(
        default=3.0,
        metadata={
            "help": "drop flying pixels: a depth pixel needs flying_pixel_support of its 8 neighbours within "
            "slope * z / focal_px + 3 sigma(z) of its depth (a surface seen up to atan(slope) from its normal "
            "keeps its pixels; sigma from the sensor noise model), else it is removed before fusion; 0 = off"
        },
    )
    flying_pixel_support: int = field(
        default=3, metadata={"help": "same-surface neighbours (of 8) a depth pixel needs to be kept"}
    )
    noise_weighting: bool = field(
        default=False,
        metadata={
            "help": "weight each depth pixel's TSDF update by its inverse noise variance, "
            "(sigma(1 m) / sigma(z))^2 capped at 1, with sigma(z) = sensor_sigma_m + sensor_sigma_quad * z^2"
        },
    )
    sensor_sigma_m: float = field(
        default=0.0012,
        metadata={"help": "depth noise model: constant term in metres (for --noise-weighting)"},
    )
    sensor_sigma_quad: float = field(
        default=0.0019,
        metadata={"help": "depth noise model: metres per squared metre of depth (for --noise-weighting)"},
    )
    # --- keyframes and fragments
    keyframe_translation: float = field(
        default=0.05, metadata={"help": "a frame is a keyframe once the camera moved this many metres"}
    )
    keyframe_rotation_deg: float = field(
        default=5.0, metadata={"help": "... or turned this many degrees since the last keyframe"}
    )
    fragment_size: int = field(
        default=9, metadata={"help": "keyframes per fragment; instance merging runs after each fragment"}
    )
    # --- instance association
    min_segment_pixels: int = field(
        default=60, metadata={"help": "thing segments with fewer valid-depth pixels are ignored"}
    )
    min_segment_score: float = field(
        default=0.3,
        metadata={
            "help": "segments scoring lower are ignored (their pixels are void): the low-confidence duplicates "
            "a segmenter's own score threshold would have dropped"
        },
    )
    match_min_iou: float = field(
        default=0.15, metadata={"help": "a segment matches a global instance only above this mask IoU"}
    )
    match_min_score: float = field(
        default=0.3, metadata={"help": "... and above this combined score (mask IoU and 3D overlap)"}
    )
    match_weight_3d: float = field(
        default=0.3,
        metadata={"help": "weight of the 3D box overlap in the match score (mask IoU gets the rest)"},
    )
    class_mismatch_penalty: float = field(
        default=0.3, metadata={"help": "subtracted from the match score when the classes differ"}
    )
    fuse_containment: float = field(
        default=0.6,
        metadata={
            "help": "an unmatched segment lying this much inside an instance matched in the same frame is "
            "fused into it (over-segmented pseudo-labels)"
        },
    )
    fuse_max_gap: float = field(
        default=0.1,
        metadata={
            "help": "... but not when it lies farther than this many metres (3D) from the segment that instance "
            "matched in the same frame: a second object, not a piece; 0 = always fuse"
        },
    )
    merge_overlap: float = field(
        default=0.5,
        metadata={
            "help": "instances never seen together, of one class, whose inflated boxes overlap this much "
            "(of the smaller box) are merged"
        },
    )
    merge_margin: float = field(default=0.05, metadata={"help": "box inflation (metres) for the merge test"})
    split_merged: bool = field(
        default=False,
        metadata={
            "help": "a thing segment that also covers another established instance of its class (two touching "
            "objects segmented as one) votes, pixel by pixel, for the instance already there"
        },
    )
    split_merged_coverage: float = field(
        default=0.5,
        metadata={"help": "... when it covers at least this share of that instance's visible pixels"},
    )
    min_instance_area: float = field(
        default=0.004,
        metadata={
            "help": "an instance whose mesh surface is smaller (m², counted in mesh vertices at about 1.5 per "
            "voxel_size²) gives its vertices to the labels around it"
        },
    )
    orphan_instance_area: float = field(
        default=0.03,
        metadata={
            "help": "a connected thing-class surface that no instance claims and that touches none (an object "
            "whose segments were too small or too few to found one) becomes an instance from this area (m²)"
        },
    )
    min_frames: int = field(default=3, metadata={"help": "instances observed in fewer keyframes are dropped"})
    lookup_stride: int = field(
        default=2, metadata={"help": "pixel stride of the global-instance lookup used for association"}
    )

    align_to_model: bool = field(
        default=True,
        metadata={
            "help": "refine each keyframe's pose against the TSDF fused so far (frame-to-model alignment "
            "against tracking drift; the fused poses go to build.json); --no-fusion.align-to-model fuses at "
            "the given poses (exact ones: synthetic scenes, a pose graph already optimised)"
        },
    )
    align_degeneracy: float = field(
        default=0.0,
        metadata={
            "help": "with --fusion.align-to-model: update directions carrying less than this fraction of the "
            "best-constrained one's information are left unchanged (e.g. sliding along a lone wall); 0 = off"
        },
    )
    prefetch: bool = field(
        default=True,
        metadata={
            "help": "decode the next keyframe's images in a background thread while the current one fuses"
        },
    )

    @property
    def trunc(self) -> float:
        """Truncation distance in metres."""
        return self.voxel_size * self.trunc_voxels

    def __post_init__(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        checks = [
            (self.voxel_size > 0, "voxel_size must be > 0"),
            (self.trunc_voxels >= 1, "trunc_voxels must be >= 1"),
            (self.max_depth > self.min_depth >= 0, "need max_depth > min_depth >= 0"),
            (self.max_weight >= 1, "max_weight must be >= 1"),
            (self.fragment_size >= 1, "fragment_size must be >= 1"),
            (self.min_frames >= 1, "min_frames must be >= 1"),
            (self.min_instance_area >= 0, "min_instance_area must be >= 0"),
            (self.orphan_instance_area >= 0, "orphan_instance_area must be >= 0"),
            (self.lookup_stride >= 1, "lookup_stride must be >= 1"),
            (0 <= self.match_weight_3d <= 1, "match_weight_3d must lie in [0, 1]"),
            (0 <= self.min_segment_score <= 1, "min_segment_score must lie in [0, 1]"),
            (self.fuse_max_gap >= 0, "fuse_max_gap must be >= 0"),
            (0 < self.split_merged_coverage <= 1, "split_merged_coverage must lie in (0, 1]"),
            (0 <= self.align_degeneracy < 1, "align_degeneracy must lie in [0, 1)"),
            (self.flying_pixel_slope >= 0, "flying_pixel_slope must be >= 0"),
            (0 <= self.flying_pixel_support <= 8, "flying_pixel_support must lie in 0..8"),
            (
                self.sensor_sigma_m > 0 and self.sensor_sigma_quad >= 0,
                "need sensor_sigma_m > 0, sensor_sigma_quad >= 0",
            ),
            (self.keyframe_translation >= 0 and self.keyframe_rotation_deg >= 0, "keyframe thresholds >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid fusion config: {msg}")
