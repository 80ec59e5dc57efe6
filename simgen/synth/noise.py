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

With ``profile="realistic"`` (``simgen synth --noise-profile realistic``) the segmenter also
merges touching things of one class, confuses similar classes, misses objects over runs of
consecutive frames and adds low-score duplicates; depth gets a sensor model (:func:`sensor_depth`:
range limits, grazing-angle, dark- and glossy-surface holes, flying pixels at depth edges, disparity
quantisation), poses drift (:func:`drift_poses`) and a few RGB frames are motion blurred
(:func:`motion_blur`). Every rate and its source is in docs/synth.md.

Every step works on whole images (scipy.ndimage filters, boolean masks); loops run over segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
from scipy import ndimage

from simgen.data.scene import Segment

MAX_ID = 2**24 - 1  # largest id a COCO panoptic PNG can hold


NoiseProfile = Literal["clean", "realistic"]

# Settings each profile gives to the fields left at None. "clean" holds the historical defaults
# (every realistic family off); "realistic" imitates a hand-held RGB-D sensor, a visual-inertial
# tracker and a COCO-trained panoptic network. Sources of each number: docs/synth.md.
PROFILES: dict[str, dict[str, Any]] = {
    "clean": {
        "miss_prob": 0.08,
        "split_prob": 0.05,
        "split_min_area_px": 400,
        "wrong_class_prob": 0.04,
        "merge_prob": 0.0,
        "similar_class_prob": 0.0,
        "miss_run_rate": 0.0,
        "miss_run_frames": 10.0,
        "duplicate_prob": 0.0,
        "depth_sigma_m": 0.0,
        "depth_sigma_quad": 0.0,
        "depth_quant": 0.0,
        "depth_min_m": 0.0,
        "depth_max_m": 0.0,
        "grazing_deg": 90.0,
        "dark_threshold": 0.0,
        "dark_drop": 0.0,
        "glossy_categories": (),
        "glossy_drop": 0.0,
        "flying_prob": 0.0,
        "rgb_sigma": 0.0,
        "pose_rot_deg": 0.0,
        "pose_trans_m": 0.0,
        "drift_trans_m": 0.0,
        "drift_rot_deg": 0.0,
        "blur_prob": 0.0,
    },
    "realistic": {
        "miss_prob": 0.05,
        "split_prob": 0.10,
        "split_min_area_px": 1500,
        "wrong_class_prob": 0.02,
        "merge_prob": 0.5,
        "similar_class_prob": 0.08,
        "miss_run_rate": 0.05,
        "miss_run_frames": 10.0,
        "duplicate_prob": 0.05,
        "depth_sigma_m": 0.0019,
        "depth_sigma_quad": 0.0015,
        "depth_quant": 0.00285,
        "depth_min_m": 0.25,
        "depth_max_m": 5.0,
        "grazing_deg": 70.0,
        "dark_threshold": 0.08,
        "dark_drop": 0.5,
        "glossy_categories": ("lamp", "ball"),
        "glossy_drop": 0.3,
        "flying_prob": 0.5,
        "rgb_sigma": 2.0,
        "pose_rot_deg": 0.1,
        "pose_trans_m": 0.002,
        "drift_trans_m": 0.015,
        "drift_rot_deg": 1.0,
        "blur_prob": 0.03,
    },
}

_PROFILE_HELP = " (None: the --noise.profile value)"


def _p(help_text: str) -> Any:
    """A field whose default comes from the profile."""
    return field(default=None, metadata={"help": help_text + _PROFILE_HELP})


@dataclass
class NoiseConfig:
    """Noise of the synthetic observations (pseudo-labels, depth, RGB, poses).

    Fields left at None take the value of ``profile`` (:data:`PROFILES`); a value given explicitly
    always wins, so ``profile="realistic", drift_rot_deg=0`` is the realistic profile without
    rotation drift.
    """

    enabled: bool = field(
        default=True,
        metadata={
            "help": "master switch; --no-noise.enabled gives exact pseudo-labels (GT masks), depth, RGB and poses"
        },
    )
    profile: NoiseProfile = field(
        default="clean",
        metadata={
            "help": "clean (the historical defaults) or realistic (RGB-D sensor depth, pose drift, "
            "segmenter merge/split/confusion/run-miss/duplicate errors); see docs/synth.md"
        },
    )
    random_ids: bool = field(
        default=True,
        metadata={
            "help": "random per-frame pseudo-label ids (as a 2D segmenter gives); off: the GT segment ids"
        },
    )
    miss_prob: float | None = _p("probability that a visible thing is not detected (independently per frame)")
    split_prob: float | None = _p("probability that a thing is split in two segments")
    split_min_area_px: int | None = _p("only things at least this large (pixels) are split")
    shrink_min_px: int = field(default=1, metadata={"help": "smallest boundary shrink of a mask (pixels)"})
    shrink_max_px: int = field(default=3, metadata={"help": "largest boundary shrink of a mask (pixels)"})
    wrong_class_prob: float | None = _p("probability of a wrong category (any of the same kind)")
    similar_class_prob: float | None = _p(
        "probability that a thing takes a similar class (one of its --noise.similar-groups)"
    )
    similar_groups: tuple[str, ...] = field(
        default=("chair/sofa", "table/cabinet/shelf", "box/cabinet"),
        metadata={"help": "groups of category names a segmenter confuses, '/'-separated"},
    )
    merge_prob: float | None = _p(
        "probability that two touching things of one class (sharing a pixel edge) become one segment"
    )
    miss_run_rate: float | None = _p(
        "fraction of frames in which an object is missed by runs of consecutive frames"
    )
    miss_run_frames: float | None = _p("mean length of such a run of missed frames")
    duplicate_prob: float | None = _p(
        "probability that a thing gets a low-score duplicate segment over a fifth to a half of its pixels"
    )
    duplicate_score: tuple[float, float] = field(
        default=(0.05, 0.3), metadata={"help": "range of the duplicates' scores"}
    )
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
    depth_sigma_m: float | None = _p("depth noise std at 1 m, metres (0 = exact depth)")
    depth_sigma_quad: float | None = _p(
        "depth noise grows as depth_sigma_m + depth_sigma_quad * (z^2 - 1), z in m"
    )
    depth_dropout: float = field(default=0.0, metadata={"help": "fraction of depth pixels set invalid"})
    depth_quant: float | None = _p(
        "disparity quantisation step in 1/m: depth steps of depth_quant * z^2 (0 = none)"
    )
    depth_min_m: float | None = _p("no depth nearer than this (metres; 0 = no limit)")
    depth_max_m: float | None = _p("no depth beyond this (metres; 0 = no limit)")
    grazing_deg: float | None = _p(
        "incidence angle beyond which depth goes missing, with a probability rising linearly to 1 at 90 deg"
    )
    dark_threshold: float | None = _p("surfaces darker than this luminance (0-1) lose depth")
    dark_drop: float | None = _p("fraction of dark-surface pixels without depth (in blobs)")
    glossy_categories: tuple[str, ...] | None = _p("category names with glossy surfaces")
    glossy_drop: float | None = _p("fraction of glossy-surface pixels without depth (in blobs)")
    flying_prob: float | None = _p(
        "probability that a pixel at a depth edge gets a depth between its two sides (flying pixel)"
    )
    flying_edge_m: float = field(
        default=0.1, metadata={"help": "a depth jump larger than this (metres) to a 4-neighbour is an edge"}
    )
    rgb_sigma: float | None = _p("std of Gaussian RGB noise in 0-255 units")
    pose_rot_deg: float | None = _p("std of the stored poses' per-frame rotation jitter (degrees)")
    pose_trans_m: float | None = _p("std of the stored poses' per-frame translation jitter (metres)")
    drift_trans_m: float | None = _p(
        "pose drift: RMS of the accumulated translation error after 10 m travelled (random walk), metres"
    )
    drift_rot_deg: float | None = _p(
        "pose drift: RMS of the accumulated rotation error after 10 m travelled (random walk), degrees"
    )
    blur_prob: float | None = _p("fraction of frames whose RGB is motion blurred")
    blur_px: tuple[float, float] = field(
        default=(4.0, 12.0), metadata={"help": "range of motion-blur lengths, pixels at 320 px width"}
    )

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"noise.profile must be one of {', '.join(get_args(NoiseProfile))}, got {self.profile!r}"
            )
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.glossy_categories = tuple(self.glossy_categories or ())
        for name in (
            "miss_prob",
            "split_prob",
            "wrong_class_prob",
            "similar_class_prob",
            "merge_prob",
            "miss_run_rate",
            "duplicate_prob",
            "depth_dropout",
            "dark_threshold",
            "dark_drop",
            "glossy_drop",
            "flying_prob",
            "blur_prob",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"noise.{name} must lie in [0, 1], got {v}")
        if self.miss_run_rate >= 1.0:
            raise ValueError(f"noise.miss_run_rate must be < 1, got {self.miss_run_rate}")
        for name in (
            "spurious_per_frame",
            "depth_sigma_m",
            "depth_sigma_quad",
            "depth_quant",
            "depth_min_m",
            "depth_max_m",
            "flying_edge_m",
            "rgb_sigma",
            "pose_rot_deg",
            "pose_trans_m",
            "drift_trans_m",
            "drift_rot_deg",
            "split_min_area_px",
            "min_area_px",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"noise.{name} must be >= 0, got {getattr(self, name)}")
        if self.miss_run_frames < 1:
            raise ValueError(f"noise.miss_run_frames must be >= 1, got {self.miss_run_frames}")
        if not 0.0 < self.grazing_deg <= 90.0:
            raise ValueError(f"noise.grazing_deg must lie in (0, 90], got {self.grazing_deg}")
        if self.depth_max_m and self.depth_min_m >= self.depth_max_m:
            raise ValueError(
                f"need noise.depth_min_m < noise.depth_max_m, got {self.depth_min_m}, {self.depth_max_m}"
            )
        if not 0 <= self.shrink_min_px <= self.shrink_max_px:
            raise ValueError(
                f"need 0 <= noise.shrink_min_px <= noise.shrink_max_px, got {self.shrink_min_px}, {self.shrink_max_px}"
            )
        for name in ("spurious_radius_px", "score_range", "duplicate_score", "blur_px"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"noise.{name} needs two numbers (min max), got {getattr(self, name)}")
        for name in ("spurious_radius_px", "blur_px"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"noise.{name} must be 0 < lo <= hi, got {getattr(self, name)}")
        for name in ("score_range", "duplicate_score"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"noise.{name} must be 0 <= lo <= hi <= 1, got {getattr(self, name)}")
        for g in self.similar_groups:
            if len([n for n in g.split("/") if n.strip()]) < 2:
                raise ValueError(f"noise.similar_groups: {g!r} needs two or more names separated by '/'")

    @property
    def sensor_artifacts(self) -> bool:
        """Whether :func:`sensor_depth` has anything to do (range, grazing, holes, flying pixels, steps)."""
        return self.enabled and bool(
            self.depth_quant
            or self.depth_min_m
            or self.depth_max_m
            or self.grazing_deg < 90
            or self.dark_drop
            or self.glossy_drop
            or self.flying_prob
        )

    @classmethod
    def off(cls, random_ids: bool = True) -> NoiseConfig:
        """No noise at all: pseudo-labels are the GT masks (with random per-frame ids by default)."""
        return cls(enabled=False, random_ids=random_ids)

    @classmethod
    def realistic(cls, **overrides: Any) -> NoiseConfig:
        """The realistic profile; ``overrides`` set single fields (e.g. ``drift_rot_deg=0``)."""
        return cls(profile="realistic", **overrides)


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


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of non-zero labels of ``labels (H, W)`` sharing a pixel edge."""
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
            for x, y in np.unique(np.stack([lo, hi], axis=1), axis=0):
                pairs.add((int(x), int(y)))
    return pairs


def similar_lookup(groups: tuple[str, ...], names: dict[int, str]) -> dict[int, tuple[int, ...]]:
    """Category id -> the ids of the categories it is confused with (``groups``: 'a/b/c' names).

    A name that is not a category of the scene is ignored (groups are written for any scene).
    """
    by_name = {n.strip().lower(): i for i, n in names.items()}
    out: dict[int, set[int]] = {}
    for g in groups:
        ids = [by_name[n.strip().lower()] for n in g.split("/") if n.strip().lower() in by_name]
        for i in ids:
            out.setdefault(i, set()).update(j for j in ids if j != i)
    return {i: tuple(sorted(s)) for i, s in out.items() if s}


def miss_runs(
    n_frames: int, n_objects: int, rate: float, mean_len: float, rng: np.random.Generator
) -> np.ndarray:
    """Which object is missed in which frame, in runs: ``(n_frames, n_objects) bool``.

    Each object follows a two-state Markov chain over the frames (started from its stationary
    distribution): a missed run ends with probability ``1 / mean_len`` per frame (runs are
    geometric with mean ``mean_len``) and starts with ``rate / (mean_len * (1 - rate))``, so the
    long-run fraction of missed frames is ``rate``. A real network misses an object over several
    consecutive frames (the same viewpoint, blur or occlusion persists), not frame by frame.
    """
    out = np.zeros((n_frames, n_objects), dtype=bool)
    if rate <= 0 or n_frames == 0 or n_objects == 0:
        return out
    p_end = 1.0 / mean_len
    p_start = min(1.0, rate * p_end / (1.0 - rate))
    state = rng.random(n_objects) < rate
    u = rng.random((n_frames, n_objects))
    for t in range(n_frames):  # frames (hundreds), vectorised over objects
        if t > 0:
            state = np.where(state, u[t] >= p_end, u[t] < p_start)
        out[t] = state
    return out


def _part(labels: np.ndarray, lab: int, new: int, rng: np.random.Generator) -> bool:
    """Relabel a band of ``lab``'s pixels (a fifth to a half of them, beyond a random line) as ``new``."""
    ys, xs = np.nonzero(labels == lab)
    if len(ys) < 4:
        return False
    ang = rng.uniform(0, 2 * np.pi)
    proj = xs * np.cos(ang) + ys * np.sin(ang)
    side = proj > np.quantile(proj, 1.0 - rng.uniform(0.2, 0.5))
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
    forced_miss: set[int] | frozenset[int] = frozenset(),
    similar: dict[int, tuple[int, ...]] | None = None,
) -> PseudoLabels:
    """Noisy per-frame panoptic labels from one frame's exact GT.

    Args:
        gt_panoptic: ``(H, W) int32`` scene-consistent GT segment ids, 0 = void.
        gt_segments: GT segment id -> category id.
        thing_ids, stuff_ids: the category ids of each kind (wrong classes stay within a kind).
        cfg: the noise settings (``cfg.enabled == False``: exact masks).
        rng: this frame's generator (the only source of randomness).
        forced_miss: GT thing ids missed in this frame by a run of misses (:func:`miss_runs`).
        similar: category id -> similar category ids (:func:`similar_lookup`), for
            ``cfg.similar_class_prob``.
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
    low_score: set[int] = set()

    if on and forced_miss:
        run = [i for i in present if is_thing[i] and i in forced_miss]
        for i in run:
            labels[labels == i] = 0
            del category[i]
        events["missed_run"] = run
    if on and cfg.miss_prob > 0:
        for i in present:
            if i in category and is_thing[i] and rng.random() < cfg.miss_prob:
                labels[labels == i] = 0
                events["missed"].append(i)
                del category[i]
    if on and cfg.merge_prob > 0:
        # Touching things of one class: a network's instance masks often swallow both.
        cand = sorted(
            (a, b)
            for a, b in touching_pairs(labels)
            if a in category and b in category and is_thing[a] and category[a] == category[b]
        )
        merged = [(a, b) for a, b in cand if rng.random() < cfg.merge_prob]
        root = {i: i for i in category}

        def find(i: int) -> int:
            while root[i] != i:
                i = root[i]
            return i

        for a, b in merged:
            ra, rb = find(a), find(b)
            if ra != rb:
                root[max(ra, rb)] = min(ra, rb)
        for i in list(category):
            r = find(i)
            if r != i:
                labels[labels == i] = r
                del category[i]
        events["merge_candidates"] = len(cand)
        events["merged"] = [[a, b] for a, b in merged]
    if on and cfg.split_prob > 0:
        areas = dict(zip(*np.unique(labels, return_counts=True), strict=True))
        for i in list(category):
            if is_thing[i] and areas.get(i, 0) >= cfg.split_min_area_px and rng.random() < cfg.split_prob:
                if _split(labels, i, next_label, rng):
                    category[next_label], source[next_label] = category[i], i
                    events["split"].append(i)
                    next_label += 1
    if on and cfg.duplicate_prob > 0:
        events["duplicate"] = []
        for i in [k for k in category if source[k] == k and is_thing[k]]:
            if rng.random() < cfg.duplicate_prob and _part(labels, i, next_label, rng):
                category[next_label], source[next_label] = category[i], i
                low_score.add(next_label)
                events["duplicate"].append(i)
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
    if on and cfg.similar_class_prob > 0 and similar:
        events["similar_class"] = []
        events["similar_candidates"] = 0
        for k in list(category):
            pool = similar.get(category[k], ())
            if pool and category[k] in thing_ids:
                events["similar_candidates"] += 1
                if rng.random() < cfg.similar_class_prob:
                    category[k] = int(pool[int(rng.integers(len(pool)))])
                    events["similar_class"].append([source[k], category[k]])
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
        if k in low_score:
            score = float(rng.uniform(*cfg.duplicate_score))
        elif source[k] != -1:
            score = float(rng.uniform(lo, hi))
        else:
            score = float(rng.uniform(lo, (lo + hi) / 2))
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


def blobs(shape: tuple[int, int], frac: float, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """A ``(H, W) bool`` mask of smooth blobs covering a fraction ``frac`` of the image on average.

    White noise low-passed by a Gaussian of ``sigma_px`` pixels, normalised to unit variance and
    thresholded at the standard normal's ``1 - frac`` quantile: depth holes on dark or shiny
    surfaces come in patches, not as salt-and-pepper.
    """
    if frac <= 0:
        return np.zeros(shape, dtype=bool)
    if frac >= 1:
        return np.ones(shape, dtype=bool)
    from scipy.special import ndtri

    g = ndimage.gaussian_filter(rng.normal(size=shape), sigma_px, mode="wrap")
    g /= max(float(g.std()), 1e-12)
    return g > ndtri(1.0 - frac)


@dataclass
class DepthArtifacts:
    """What :func:`sensor_depth` did to one frame (pixel counts, for the rate checks in the tests)."""

    valid_in: int  # pixels with a true depth
    range_dropped: int
    grazing_dropped: int
    grazing_expected: float  # sum of the grazing drop probabilities (its expectation)
    dark_pixels: int
    dark_dropped: int
    glossy_pixels: int
    glossy_dropped: int
    edge_pixels: int
    flying: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def sensor_depth(
    depth: np.ndarray,
    true_depth: np.ndarray,
    cfg: NoiseConfig,
    rng: np.random.Generator,
    luminance: np.ndarray | None = None,
    cos_incidence: np.ndarray | None = None,
    glossy: np.ndarray | None = None,
) -> tuple[np.ndarray, DepthArtifacts]:
    """The artefacts of a real RGB-D sensor on top of :func:`noisy_depth`'s Gaussian noise.

    In this order, each decided on the exact scene (true depth, surface, colour):

    1. range: no depth outside ``[depth_min_m, depth_max_m]``;
    2. grazing incidence: a pixel whose surface is seen at angle ``theta`` from its normal loses its
       depth with probability ``clip((theta - grazing_deg) / (90 - grazing_deg), 0, 1)``;
    3. dark surfaces (``luminance < dark_threshold``) and glossy ones (``glossy``) lose a fraction
       ``dark_drop`` / ``glossy_drop`` of their pixels, in blobs (:func:`blobs`);
    4. flying pixels: a pixel with a 4-neighbour more than ``flying_edge_m`` away in depth gets,
       with ``flying_prob``, a depth between the two (a mixed return straddling the edge);
    5. quantisation of disparity (``1 / z``) in steps of ``depth_quant`` (1/m): depth steps of
       ``depth_quant * z**2``, as a structured-light sensor's sub-pixel disparity gives.

    Args:
        depth: ``(H, W) float32`` metres, 0 = invalid: the (Gaussian-)noisy depth.
        true_depth: ``(H, W) float32`` metres, 0 = no surface: the exact depth.
        luminance: ``(H, W)`` in [0, 1], the surface's noise-free brightness (for dark surfaces).
        cos_incidence: ``(H, W)`` cosine of the angle between the viewing ray and the surface normal.
        glossy: ``(H, W) bool`` pixels on glossy surfaces.

    Returns:
        ``(H, W) float32`` metres (0 = invalid) and the counts of what was done.
    """
    out = depth.astype(np.float64).copy()
    valid = true_depth > 0
    n_valid = int(valid.sum())
    drop = np.zeros(depth.shape, dtype=bool)
    zero = DepthArtifacts(n_valid, 0, 0, 0.0, 0, 0, 0, 0, 0, 0)
    if not cfg.enabled:
        return depth, zero
    art = zero
    if cfg.depth_max_m > 0 or cfg.depth_min_m > 0:
        far = valid & (
            (true_depth < cfg.depth_min_m)
            | ((true_depth > cfg.depth_max_m) if cfg.depth_max_m > 0 else False)
        )
        drop |= far
        art.range_dropped = int(far.sum())
    if cfg.grazing_deg < 90 and cos_incidence is not None:
        theta = np.degrees(np.arccos(np.clip(np.abs(cos_incidence), 0.0, 1.0)))
        p = np.clip((theta - cfg.grazing_deg) / (90.0 - cfg.grazing_deg), 0.0, 1.0) * (valid & ~drop)
        hit = rng.random(depth.shape) < p
        art.grazing_expected = float(p.sum())
        art.grazing_dropped = int(hit.sum())
        drop |= hit
    sigma = 2.0 * depth.shape[1] / 320.0  # blob size in pixels at 320 px width
    if cfg.dark_drop > 0 and luminance is not None:
        dark = valid & ~drop & (luminance < cfg.dark_threshold)
        hit = dark & blobs(depth.shape, cfg.dark_drop, rng, sigma)
        art.dark_pixels, art.dark_dropped = int(dark.sum()), int(hit.sum())
        drop |= hit
    if cfg.glossy_drop > 0 and glossy is not None:
        shiny = valid & ~drop & glossy
        hit = shiny & blobs(depth.shape, cfg.glossy_drop, rng, sigma)
        art.glossy_pixels, art.glossy_dropped = int(shiny.sum()), int(hit.sum())
        drop |= hit
    if cfg.flying_prob > 0:
        z = np.where(valid, out, np.nan)
        pad = np.pad(z, 1, mode="edge")
        nbrs = np.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
        jump = np.abs(nbrs - z)
        jump = np.where(np.isnan(jump), -1.0, jump)
        k = np.argmax(jump, axis=0)
        far_z = np.take_along_axis(nbrs, k[None], axis=0)[0]
        edge = valid & ~drop & (np.take_along_axis(jump, k[None], axis=0)[0] > cfg.flying_edge_m)
        fly = edge & (rng.random(depth.shape) < cfg.flying_prob)
        t = rng.uniform(0.2, 0.8, depth.shape)
        out = np.where(fly, out + t * (far_z - out), out)
        art.edge_pixels, art.flying = int(edge.sum()), int(fly.sum())
    if cfg.depth_quant > 0:
        ok = out > 0
        disparity = np.round(1.0 / (np.where(ok, out, 1.0) * cfg.depth_quant))
        out = np.where(ok & (disparity > 0), 1.0 / (np.maximum(disparity, 1.0) * cfg.depth_quant), 0.0)
    out[drop] = 0.0
    return out.astype(np.float32), art


def motion_blur(rgb: np.ndarray, length_px: float, angle_rad: float) -> np.ndarray:
    """Linear motion blur: the mean of ``rgb (H, W, 3) uint8`` along a ``length_px`` long line at
    ``angle_rad`` (image x axis = 0), as a camera moving during the exposure records -> same."""
    n = max(2, int(np.ceil(length_px)) | 1)
    c = n // 2
    kern = np.zeros((n, n))
    for s in np.linspace(-length_px / 2, length_px / 2, 4 * n):
        kern[int(round(c + s * np.sin(angle_rad))), int(round(c + s * np.cos(angle_rad)))] += 1.0
    kern /= kern.sum()
    out = np.stack(
        [ndimage.convolve(rgb[..., ch].astype(np.float64), kern, mode="nearest") for ch in range(3)], axis=-1
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def drift_poses(c2w: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poses with tracking drift: a random walk in position and orientation driven by distance travelled.

    Between frames ``i - 1`` and ``i`` (the camera centre moved ``ds`` metres) the accumulated error
    gets an increment of per-axis std ``drift_trans_m / sqrt(3) * sqrt(ds / 10)`` (translation) and
    ``drift_rot_deg / sqrt(3) * sqrt(ds / 10)`` (rotation vector), so the RMS error after 10 m is
    ``drift_trans_m`` and ``drift_rot_deg``. The rotation error turns the camera about its own
    centre (world axes) and the translation error shifts it: the stored pose of frame ``i`` is
    ``[dR_i R_i | t_i + dt_i]``.

    Args:
        c2w: ``(N, 4, 4)`` true camera-to-world poses (any camera axes), metres, in capture order.

    Returns:
        ``(N, 4, 4)`` drifted poses and ``(N, 6)`` the accumulated errors (rotation vector in
        radians, translation in metres; world frame), 0 at the first frame.
    """
    from scipy.spatial.transform import Rotation

    n = len(c2w)
    err = np.zeros((n, 6))
    if not cfg.enabled or n == 0 or (cfg.drift_trans_m == 0 and cfg.drift_rot_deg == 0):
        return np.asarray(c2w).copy(), err
    ds = np.r_[0.0, np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)]
    scale = np.sqrt(ds / 10.0)[:, None] / np.sqrt(3.0)
    d_rot = rng.normal(size=(n, 3)) * scale * np.deg2rad(cfg.drift_rot_deg)
    d_trans = rng.normal(size=(n, 3)) * scale * cfg.drift_trans_m
    out = np.array(c2w, dtype=np.float64)
    rot = Rotation.identity()
    trans = np.zeros(3)
    for i in range(n):  # frames, not pixels
        rot = Rotation.from_rotvec(d_rot[i]) * rot
        trans = trans + d_trans[i]
        out[i, :3, :3] = rot.as_matrix() @ c2w[i, :3, :3]
        out[i, :3, 3] = c2w[i, :3, 3] + trans
        err[i, :3], err[i, 3:] = rot.as_rotvec(), trans
    return out, err
