"""Seeded noise: pseudo-labels that imitate an open-vocabulary 2D segmenter, and sensor noise.

Pseudo-labels start from the exact GT panoptic image of a frame and then, in this order:

1. missed detections: each visible GT *thing* segment is dropped with ``miss_prob``;
2. over-segmentation: each remaining thing segment of at least ``split_min_area_px`` pixels is cut
   in two along a random line through its centroid with ``split_prob``;
3. boundary shrinking: every segment loses the pixels within ``r`` pixels of any other label
   (``r`` drawn per segment in ``[shrink_min_px, shrink_max_px]``), which leaves unlabeled gaps
   between neighbours (and along the cuts of step 2);
4. wrong class: each segment gets another category of its kind (thing -> thing, stuff -> stuff)
   with ``wrong_class_prob``;
5. spurious segments: ``Poisson(spurious_per_frame)`` small ellipses of random thing classes are
   pasted on top;
6. segments smaller than ``min_area_px`` are removed; the rest get random per-frame ids and scores.

Every step works on whole images (scipy.ndimage filters, boolean masks); loops run over segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from simgen.data.scene import Segment

MAX_ID = 2**24 - 1  # largest id a COCO panoptic PNG can hold


@dataclass
class NoiseConfig:
    """Noise of the synthetic observations (pseudo-labels, depth, RGB, poses)."""

    enabled: bool = field(
        default=True,
        metadata={
            "help": "master switch; --no-noise.enabled gives exact pseudo-labels (GT masks), depth, RGB and poses"
        },
    )
    random_ids: bool = field(
        default=True,
        metadata={
            "help": "random per-frame pseudo-label ids (as a 2D segmenter gives); off: the GT segment ids"
        },
    )
    miss_prob: float = field(
        default=0.08, metadata={"help": "probability that a visible thing is not detected"}
    )
    split_prob: float = field(
        default=0.05, metadata={"help": "probability that a thing is split in two segments"}
    )
    split_min_area_px: int = field(
        default=400, metadata={"help": "only things at least this large are split"}
    )
    shrink_min_px: int = field(default=1, metadata={"help": "smallest boundary shrink of a mask (pixels)"})
    shrink_max_px: int = field(default=3, metadata={"help": "largest boundary shrink of a mask (pixels)"})
    wrong_class_prob: float = field(default=0.04, metadata={"help": "probability of a wrong category"})
    spurious_per_frame: float = field(
        default=0.6, metadata={"help": "mean number of spurious small segments per frame"}
    )
    spurious_radius_px: tuple[float, float] = field(
        default=(3.0, 8.0),
        metadata={"help": "range of the spurious ellipses' semi-axes, pixels at 320 px width"},
    )
    min_area_px: int = field(default=6, metadata={"help": "segments smaller than this (pixels) are dropped"})
    score_range: tuple[float, float] = field(
        default=(0.5, 1.0), metadata={"help": "range of detection scores"}
    )
    depth_sigma_m: float = field(
        default=0.0, metadata={"help": "depth noise std at 1 m, metres (0 = exact depth)"}
    )
    depth_sigma_quad: float = field(
        default=0.0,
        metadata={"help": "depth noise grows as depth_sigma_m + depth_sigma_quad * (z^2 - 1), z in m"},
    )
    depth_dropout: float = field(default=0.0, metadata={"help": "fraction of depth pixels set invalid"})
    rgb_sigma: float = field(default=0.0, metadata={"help": "std of Gaussian RGB noise in 0-255 units"})
    pose_rot_deg: float = field(
        default=0.0, metadata={"help": "std of the stored poses' rotation error (degrees)"}
    )
    pose_trans_m: float = field(
        default=0.0, metadata={"help": "std of the stored poses' translation error (metres)"}
    )

    def __post_init__(self) -> None:
        for name in ("miss_prob", "split_prob", "wrong_class_prob", "depth_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"noise.{name} must lie in [0, 1], got {v}")
        for name in (
            "spurious_per_frame",
            "depth_sigma_m",
            "depth_sigma_quad",
            "rgb_sigma",
            "pose_rot_deg",
            "pose_trans_m",
            "split_min_area_px",
            "min_area_px",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"noise.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.shrink_min_px <= self.shrink_max_px:
            raise ValueError(
                f"need 0 <= noise.shrink_min_px <= noise.shrink_max_px, got {self.shrink_min_px}, {self.shrink_max_px}"
            )
        for name in ("spurious_radius_px", "score_range"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"noise.{name} needs two numbers (min max), got {getattr(self, name)}")
        lo, hi = self.spurious_radius_px
        if not 0 < lo <= hi:
            raise ValueError(f"noise.spurious_radius_px must be 0 < lo <= hi, got {self.spurious_radius_px}")
        lo, hi = self.score_range
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"noise.score_range must be 0 <= lo <= hi <= 1, got {self.score_range}")

    @classmethod
    def off(cls, random_ids: bool = True) -> NoiseConfig:
        """No noise at all: pseudo-labels are the GT masks (with random per-frame ids by default)."""
        return cls(enabled=False, random_ids=random_ids)


@dataclass
class PseudoLabels:
    """One frame's pseudo-labels.

    Attributes:
        panoptic: ``(H, W) int32`` per-frame segment ids, 0 = unlabeled.
        segments: their ids, categories and scores.
        source: per-frame id -> GT segment id it came from (-1 for spurious segments).
        events: what the noise did (missed / split / wrong_class GT ids, spurious count, shrink radii).
    """

    panoptic: np.ndarray
    segments: list[Segment]
    source: dict[int, int]
    events: dict[str, Any]


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r + r  # a digital disk (r=1 gives the full 3x3 square)


def shrink_labels(labels: np.ndarray, radius: dict[int, int]) -> np.ndarray:
    """Remove from each label the pixels within ``radius[label]`` of a different label.

    Args:
        labels: ``(H, W)`` int label image, 0 = unlabeled (0 also counts as a different label).
        radius: label -> shrink radius in pixels (labels not listed keep every pixel).

    Returns:
        ``(H, W)`` labels with shrunk masks (removed pixels are 0). The image border is no boundary.
    """
    out = labels.copy()
    radii = sorted({r for r in radius.values() if r > 0})
    if not radii:
        return out
    lut_max = max(int(labels.max()), max(radius)) + 1
    r_of = np.zeros(lut_max, dtype=np.int64)
    for k, r in radius.items():
        r_of[k] = r
    r_pix = r_of[labels]
    for r in radii:
        fp = _disk(r)
        # A pixel is interior at radius r iff every label in its r-disk equals its own.
        hi = ndimage.maximum_filter(labels, footprint=fp, mode="nearest")
        lo = ndimage.minimum_filter(labels, footprint=fp, mode="nearest")
        out[(r_pix == r) & ((hi != labels) | (lo != labels))] = 0
    return out


def _split(labels: np.ndarray, lab: int, new: int, rng: np.random.Generator) -> bool:
    """Relabel the pixels of ``lab`` on one side of a random line through its centroid as ``new``."""
    ys, xs = np.nonzero(labels == lab)
    if len(ys) < 2:
        return False
    ang = rng.uniform(0, np.pi)
    side = (xs - xs.mean()) * np.cos(ang) + (ys - ys.mean()) * np.sin(ang) > 0
    if side.all() or not side.any():
        return False
    labels[ys[side], xs[side]] = new
    return True


def pseudo_labels(
    gt_panoptic: np.ndarray,
    gt_segments: dict[int, int],
    thing_ids: tuple[int, ...],
    stuff_ids: tuple[int, ...],
    cfg: NoiseConfig,
    rng: np.random.Generator,
) -> PseudoLabels:
    """Noisy per-frame panoptic labels from one frame's exact GT.

    Args:
        gt_panoptic: ``(H, W) int32`` scene-consistent GT segment ids, 0 = void.
        gt_segments: GT segment id -> category id.
        thing_ids, stuff_ids: the category ids of each kind (wrong classes stay within a kind).
        cfg: the noise settings (``cfg.enabled == False``: exact masks).
        rng: this frame's generator (the only source of randomness).
    """
    H, W = gt_panoptic.shape
    present = [int(i) for i in np.unique(gt_panoptic) if i != 0]
    is_thing = {i: gt_segments[i] in thing_ids for i in present}
    labels = gt_panoptic.astype(np.int64)  # working labels; values > max GT id are new segments
    category = {i: gt_segments[i] for i in present}
    source = {i: i for i in present}
    events: dict[str, Any] = {"missed": [], "split": [], "wrong_class": [], "spurious": 0, "shrink_px": {}}
    next_label = max(gt_segments, default=0) + 1
    on = cfg.enabled

    if on and cfg.miss_prob > 0:
        for i in present:
            if is_thing[i] and rng.random() < cfg.miss_prob:
                labels[labels == i] = 0
                events["missed"].append(i)
                del category[i]
    if on and cfg.split_prob > 0:
        areas = dict(zip(*np.unique(labels, return_counts=True), strict=True))
        for i in list(category):
            if is_thing[i] and areas.get(i, 0) >= cfg.split_min_area_px and rng.random() < cfg.split_prob:
                if _split(labels, i, next_label, rng):
                    category[next_label], source[next_label] = category[i], i
                    events["split"].append(i)
                    next_label += 1
    if on and cfg.shrink_max_px > 0:
        radius = {k: int(rng.integers(cfg.shrink_min_px, cfg.shrink_max_px + 1)) for k in category}
        labels = shrink_labels(labels, radius)
        events["shrink_px"] = {str(source[k]): r for k, r in radius.items() if source[k] == k}
    if on and cfg.wrong_class_prob > 0:
        for k in list(category):
            if rng.random() < cfg.wrong_class_prob:
                pool = [c for c in (thing_ids if category[k] in thing_ids else stuff_ids) if c != category[k]]
                if pool:
                    category[k] = int(pool[int(rng.integers(len(pool)))])
                    events["wrong_class"].append([source[k], category[k]])
    if on and cfg.spurious_per_frame > 0:
        n = int(rng.poisson(cfg.spurious_per_frame))
        yy, xx = np.mgrid[0:H, 0:W]
        scale = W / 320.0  # radii are given for 320 px wide images
        for _ in range(n):
            a, b = rng.uniform(*cfg.spurious_radius_px, 2) * scale
            cy, cx, th = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
            v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
            blob = (u / max(a, 0.5)) ** 2 + (v / max(b, 0.5)) ** 2 <= 1.0
            if blob.any():
                labels[blob] = next_label
                category[next_label], source[next_label] = (
                    int(thing_ids[int(rng.integers(len(thing_ids)))]),
                    -1,
                )
                next_label += 1
                events["spurious"] += 1

    # Final segments: those still present and large enough.
    ids, counts = np.unique(labels, return_counts=True)
    keep = [
        int(k) for k, c in zip(ids, counts, strict=True) if k != 0 and c >= (cfg.min_area_px if on else 1)
    ]
    labels[~np.isin(labels, keep)] = 0
    if cfg.random_ids:
        new_ids = rng.choice(MAX_ID, size=len(keep), replace=False) + 1
    else:
        # Keep GT ids; extra segments (splits, spurious) get ids above every GT id.
        new_ids = np.array(keep, dtype=np.int64)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[keep] = new_ids
    panoptic = lut[labels].astype(np.int32)
    lo, hi = cfg.score_range if on else (1.0, 1.0)
    segments, src = [], {}
    for k, nid in zip(keep, new_ids, strict=True):
        score = float(rng.uniform(lo, hi)) if source[k] != -1 else float(rng.uniform(lo, (lo + hi) / 2))
        segments.append(Segment(int(nid), int(category[k]), round(score, 4)))
        src[int(nid)] = int(source[k])
    return PseudoLabels(panoptic, segments, src, events)


def noisy_depth(depth: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Sensor-like depth noise: ``N(0, sigma(z))`` with ``sigma(z) = depth_sigma_m + depth_sigma_quad
    * (z^2 - 1)`` (clamped at 0; the noise of structured-light / ToF sensors grows roughly with z^2),
    plus random dropouts. ``depth (H, W) float32`` metres, 0 = invalid -> same."""
    if not cfg.enabled or (cfg.depth_sigma_m == 0 and cfg.depth_sigma_quad == 0 and cfg.depth_dropout == 0):
        return depth
    valid = depth > 0
    sigma = np.maximum(cfg.depth_sigma_m + cfg.depth_sigma_quad * (depth.astype(np.float64) ** 2 - 1.0), 0.0)
    out = depth + rng.normal(0.0, 1.0, depth.shape) * sigma
    if cfg.depth_dropout > 0:
        valid &= rng.random(depth.shape) >= cfg.depth_dropout
    return np.where(valid & (out > 0), out, 0.0).astype(np.float32)


def noisy_rgb(rgb: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pixel noise of std ``rgb_sigma`` (0-255 units). ``(H, W, 3) uint8`` -> same."""
    if not cfg.enabled or cfg.rgb_sigma == 0:
        return rgb
    return np.clip(np.round(rgb + rng.normal(0.0, cfg.rgb_sigma, rgb.shape)), 0, 255).astype(np.uint8)


def noisy_pose(c2w: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """A camera-to-world ``(4, 4)`` with a random rotation (axis-angle, std ``pose_rot_deg``) and
    translation (std ``pose_trans_m`` per axis) error applied in the camera frame."""
    if not cfg.enabled or (cfg.pose_rot_deg == 0 and cfg.pose_trans_m == 0):
        return c2w
    from scipy.spatial.transform import Rotation

    delta = np.eye(4)
    delta[:3, :3] = Rotation.from_rotvec(np.deg2rad(rng.normal(0.0, cfg.pose_rot_deg, 3))).as_matrix()
    delta[:3, 3] = rng.normal(0.0, cfg.pose_trans_m, 3)
    return c2w @ delta
