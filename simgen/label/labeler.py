"""``simgen label SCENE``: per-frame 2D panoptic pseudo-labels from a real segmenter.

A Hugging Face ``transformers`` universal-segmentation model (Mask2Former, MaskFormer, OneFormer; a
COCO-panoptic checkpoint or any compatible one, from a local folder or the hub) is run on every
frame's RGB in batches (CPU or CUDA); its output goes through Mask2Former's panoptic inference
(:func:`panoptic_inference`: score threshold, mask threshold, overlap filter, stuff fusion), then the model's classes are mapped onto the scene's categories
(:mod:`simgen.label.classes`), stuff segments of one category are merged, segments smaller than an
area threshold become void, and the frame is written in the scene format (COCO panoptic PNG +
``segments_info``). PNGs are written atomically one by one; ``transforms.json`` last, atomically,
so an interrupted run leaves the scene as it was described before.

``transformers`` is an optional dependency (``pip install 'simgen[label]'``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simgen.data import io
from simgen.data.scene import GT_DIR, GT_JSON, TRANSFORMS, Category, Segment
from simgen.label.classes import ClassMap, LabelError, build_class_map

DEFAULT_MODEL = "facebook/mask2former-swin-tiny-coco-panoptic"
PANOPTIC_DIR = "panoptic"


@dataclass
class LabelConfig:
    """Settings of ``simgen label``."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "transformers universal-segmentation checkpoint: a local folder (save_pretrained) or a hub "
            "id (needs network access or the hub cache)"
        },
    )
    classes: str | None = field(
        default=None,
        metadata={
            "help": "JSON file mapping the model's classes onto the scene's categories (remap / merge); "
            "default: match by name, onto the scene's categories if it has any, else COCO panoptic"
        },
    )
    score_threshold: float = field(
        default=0.5, metadata={"help": "segments whose class probability is lower are dropped"}
    )
    mask_threshold: float = field(default=0.5, metadata={"help": "mask probability threshold of a pixel"})
    overlap_threshold: float = field(
        default=0.8,
        metadata={"help": "a segment keeping less than this fraction of its mask after overlaps is dropped"},
    )
    min_area_px: int = field(
        default=32, metadata={"help": "segments smaller than this (pixels, after class mapping) become void"}
    )
    batch_size: int = field(default=4, metadata={"help": "frames per forward pass"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "auto: CUDA when available, else CPU"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace the scene's existing pseudo-labels"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar or summary"})

    def __post_init__(self) -> None:
        for name in ("score_threshold", "mask_threshold", "overlap_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.min_area_px < 0:
            raise ValueError(f"min_area_px must be >= 0, got {self.min_area_px}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class LabelReport:
    scene: Path
    frames: int
    segments: int
    seconds: float  # model + post-processing + writing, all frames
    device: str
    categories: int
    ignored_classes: tuple[str, ...]

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / max(1, self.frames)


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise LabelError(
            "simgen label needs the optional dependency transformers: pip install 'simgen[label]'"
        ) from None
    return transformers


@dataclass
class Segmenter:
    """A loaded model with its processor; ``kind`` is its config's ``model_type``."""

    model: Any
    processor: Any
    kind: str
    device: str

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.model.config.id2label.items()}


def load_segmenter(name: str, device: str = "auto") -> Segmenter:
    """Load a universal-segmentation checkpoint (folder or hub id) in eval mode on ``device``."""
    _require_transformers()
    import torch
    from transformers import AutoModelForUniversalSegmentation, AutoProcessor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LabelError("--device cuda: torch sees no CUDA device")
    try:
        model = AutoModelForUniversalSegmentation.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "folder" if Path(name).exists() else "hub id (no network here? use a local folder)"
        raise LabelError(
            f"{name}: cannot load a universal-segmentation model from this {where}: {e}"
        ) from None
    return Segmenter(model.eval().to(device), processor, str(model.config.model_type), device)


def predict(seg: Segmenter, images: list[np.ndarray], cfg: LabelConfig, fuse: set[int]) -> list[dict]:
    """Run the model on ``images`` (each ``(H, W, 3) uint8``) and :func:`panoptic_inference`.

    Returns one dict per image with ``segmentation`` ``(H, W)`` int64 (0 = void) and
    ``segments_info`` (``id``, ``label_id``, ``score``), at each image's own size.
    """
    import torch

    kwargs: dict[str, Any] = {}
    if seg.kind == "oneformer":  # OneFormer is conditioned on the task by a text token
        kwargs["task_inputs"] = ["panoptic"] * len(images)
    inputs = seg.processor(images=images, return_tensors="pt", **kwargs)
    inputs = {k: v.to(seg.device) if hasattr(v, "to") else v for k, v in inputs.items()}
    with torch.inference_mode():
        outputs = seg.model(**inputs)
    if not (hasattr(outputs, "class_queries_logits") and hasattr(outputs, "masks_queries_logits")):
        raise LabelError(
            f"{type(seg.model).__name__}: outputs carry no class_queries_logits / masks_queries_logits"
        )
    pixel_mask = inputs.get("pixel_mask")
    input_hw = tuple(inputs["pixel_values"].shape[-2:])
    out = []
    for b, im in enumerate(images):
        if pixel_mask is not None:  # the processor padded the batch: crop the padding off again
            valid = (int(pixel_mask[b].any(1).sum()), int(pixel_mask[b].any(0).sum()))
        else:
            valid = input_hw
        out.append(
            panoptic_inference(
                outputs.class_queries_logits[b],
                outputs.masks_queries_logits[b],
                im.shape[:2],
                cfg,
                fuse,
                input_hw=input_hw,
                valid_hw=valid,
            )  # fmt: skip
        )
    return out


def panoptic_inference(
    class_logits: Any,
    mask_logits: Any,
    size: tuple[int, int],
    cfg: LabelConfig,
    fuse: set[int],
    input_hw: tuple[int, int] | None = None,
    valid_hw: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Mask2Former's panoptic inference for one image (detectron2's ``panoptic_inference``).

    Written here rather than calling ``transformers``' ``post_process_panoptic_segmentation``
    because that one gives every pixel to its highest-scoring query even where no mask reaches
    ``mask_threshold`` (so nothing is ever void) and resizes through a fixed 384x384 without
    cropping the batch padding; pseudo-labels need unconfident pixels void and masks aligned.

    Args:
        class_logits: ``(Q, C + 1)`` torch tensor, the last class is "no object".
        mask_logits: ``(Q, h, w)`` torch tensor of mask logits on the (padded) model input, at any
            resolution (Mask2Former: 1/4 of the input).
        size: ``(H, W)`` of the output (the original image).
        cfg: ``score_threshold`` (class probability), ``mask_threshold`` (mask probability),
            ``overlap_threshold`` (kept fraction of a mask after overlaps).
        fuse: model label ids whose segments are fused into one per image (stuff).
        input_hw: ``(H', W')`` of the padded model input; ``valid_hw`` its unpadded part (top left).

    Returns:
        ``{"segmentation": (H, W) int64 ids 1..n (0 = void), "segments_info": [{"id", "label_id",
        "score"}]}``.
    """
    import torch
    import torch.nn.functional as F

    probs = F.softmax(class_logits.float(), dim=-1)
    scores, labels = probs.max(-1)
    keep = labels.ne(class_logits.shape[-1] - 1) & (scores > cfg.score_threshold)
    seg = torch.zeros(size, dtype=torch.int64, device=class_logits.device)
    info: list[dict[str, Any]] = []
    if not bool(keep.any()):
        return {"segmentation": seg.cpu().numpy(), "segments_info": info}
    masks = mask_logits[keep].float()[None]
    if input_hw is not None:
        masks = F.interpolate(masks, size=input_hw, mode="bilinear", align_corners=False)
        if valid_hw is not None:
            masks = masks[..., : valid_hw[0], : valid_hw[1]]
    masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)[0].sigmoid()
    scores, labels = scores[keep], labels[keep]
    owner = (scores[:, None, None] * masks).argmax(0)
    stuff_id: dict[int, int] = {}
    for k in range(len(labels)):  # queries (tens to hundreds), not pixels
        label = int(labels[k])
        mask_area = int((owner == k).sum())
        original_area = int((masks[k] >= cfg.mask_threshold).sum())
        mask = (owner == k) & (masks[k] >= cfg.mask_threshold)
        if mask_area == 0 or original_area == 0 or not bool(mask.any()):
            continue
        if mask_area / original_area < cfg.overlap_threshold:
            continue
        if label in fuse and label in stuff_id:
            seg[mask] = stuff_id[label]
            continue
        new = len(info) + 1
        seg[mask] = new
        info.append({"id": new, "label_id": label, "score": round(float(scores[k]), 6)})
        if label in fuse:
            stuff_id[label] = new
    return {"segmentation": seg.cpu().numpy(), "segments_info": info}


def to_scene_labels(
    segmentation: np.ndarray, segments_info: list[dict], cmap: ClassMap, min_area_px: int
) -> tuple[np.ndarray, list[Segment]]:
    """A model's per-image panoptic output -> the scene's pseudo-labels.

    Args:
        segmentation: ``(H, W)`` int segment ids of the model's output, 0 or -1 = void.
        segments_info: ``{"id", "label_id", "score"}`` per segment (model label ids).
        cmap: model label id -> scene category.
        min_area_px: segments smaller than this after mapping become void.

    Returns:
        ``(H, W) int32`` ids ``1..n`` (0 = void) and their :class:`Segment`s. Segments of unmapped
        classes are void; stuff segments mapping to one category are one segment (score: the
        largest); thing segments stay separate instances.
    """
    stuff = {c.id for c in cmap.categories if not c.isthing}
    out = np.zeros(segmentation.shape, dtype=np.int32)
    groups: dict[Any, tuple[list[int], int, float]] = {}  # key -> (model segment ids, category, score)
    for s in segments_info:
        cid = cmap.to_category.get(int(s["label_id"]))
        if cid is None:
            continue
        key: Any = ("stuff", cid) if cid in stuff else ("thing", int(s["id"]))
        ids, _, score = groups.get(key, ([], cid, 0.0))
        groups[key] = ([*ids, int(s["id"])], cid, max(score, float(s.get("score", 1.0))))
    segments = []
    for ids, cid, score in groups.values():
        mask = np.isin(segmentation, ids)
        if mask.sum() < max(1, min_area_px):
            continue
        new = len(segments) + 1
        out[mask] = new
        segments.append(Segment(new, cid, round(score, 4)))
    return out, segments


def has_labels(meta: dict[str, Any]) -> bool:
    return any(f.get("panoptic_file_path") or f.get("segments_info") for f in meta.get("frames", []))


def label_scene(
    scene_dir: str | Path, cfg: LabelConfig | None = None, segmenter: Segmenter | None = None
) -> LabelReport:
    """Write pseudo-labels for every frame of ``scene_dir`` (see the module docstring).

    Raises:
        LabelError: no scene, existing labels without ``cfg.overwrite``, a model that does not load,
            a bad class mapping, GT categories the new class space lacks, an unreadable RGB frame.
    """
    from tqdm import tqdm

    cfg = cfg or LabelConfig()
    root = Path(scene_dir)
    tpath = root / TRANSFORMS
    try:
        meta = json.loads(tpath.read_text())
    except FileNotFoundError:
        raise LabelError(f"{tpath}: missing: {root} is not a scene folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise LabelError(f"{tpath}: unreadable ({e})") from None
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise LabelError(f"{tpath}: no frames")
    if has_labels(meta) and not cfg.overwrite:
        raise LabelError(f"{tpath}: the scene already has pseudo-labels; pass --overwrite to replace them")
    for i, f in enumerate(frames):
        if not isinstance(f, dict) or "file_path" not in f:
            raise LabelError(f"{tpath}: frames[{i}] has no file_path")
        if not (root / str(f["file_path"])).is_file():
            raise LabelError(f"{root / str(f['file_path'])}: missing RGB image (frame {i})")

    seg = segmenter or load_segmenter(cfg.model, cfg.device)
    scene_cats = []
    for c in meta.get("categories") or []:
        try:
            scene_cats.append(Category(int(c["id"]), str(c["name"]), bool(int(c.get("isthing", 0)))))
        except (KeyError, TypeError, ValueError):
            raise LabelError(f"{tpath}: malformed categories entry {c!r}") from None
    cmap = build_class_map(seg.id2label, cfg.classes, scene_cats)
    gt_json = root / GT_DIR / GT_JSON
    if gt_json.is_file():
        gt_cats = {int(s["category_id"]) for s in json.loads(gt_json.read_text()).get("segments", [])}
        old = {c.id: c.name.strip().lower() for c in scene_cats}
        new = {c.id: c.name.strip().lower() for c in cmap.categories}
        # The GT's ids must keep their meaning: same id, and the same name where the scene names it.
        missing = sorted(c for c in gt_cats if c not in new or (c in old and old[c] != new[c]))
        if missing:
            raise LabelError(
                f"{gt_json}: ground truth uses category id(s) {missing[:10]} that the new categories lack or name differently; "
                "pass --classes FILE mapping the model onto the scene's categories"
            )
    fuse = {mid for mid, cid in cmap.to_category.items() if not cmap.category(cid).isthing}

    t0 = time.perf_counter()
    written: list[tuple[str, list[Segment]]] = []
    n_seg = 0
    with tqdm(total=len(frames), desc="label", unit="frame", disable=cfg.quiet or None) as bar:
        for start in range(0, len(frames), cfg.batch_size):
            batch = frames[start : start + cfg.batch_size]
            images = []
            for k, f in enumerate(batch):
                try:
                    images.append(io.read_rgb(root / str(f["file_path"])))
                except OSError as e:
                    raise LabelError(
                        f"{root / str(f['file_path'])}: unreadable RGB (frame {start + k}): {e}"
                    ) from None
            for k, (f, res) in enumerate(zip(batch, predict(seg, images, cfg, fuse), strict=True)):
                pan, segments = to_scene_labels(
                    res["segmentation"], res["segments_info"], cmap, cfg.min_area_px
                )
                rel = f"{PANOPTIC_DIR}/{Path(str(f['file_path'])).stem}.png"
                if any(rel == r for r, _ in written):
                    raise LabelError(f"{tpath}: frames {start + k} and another share the RGB stem of {rel}")
                io.write_panoptic(root / rel, pan)
                written.append((rel, segments))
                n_seg += len(segments)
            bar.update(len(batch))
    seconds = time.perf_counter() - t0

    new_meta = dict(meta)
    new_meta["categories"] = [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in cmap.categories
    ]
    new_frames = []
    for f, (rel, segments) in zip(frames, written, strict=True):
        g = dict(f)
        g["panoptic_file_path"] = rel
        g["segments_info"] = [{"id": s.id, "category_id": s.category_id, "score": s.score} for s in segments]
        new_frames.append(g)
    new_meta["label"] = {
        "generator": "simgen label",
        "model": cfg.model,
        "model_type": seg.kind,
        "classes": cfg.classes,
        "score_threshold": cfg.score_threshold,
        "mask_threshold": cfg.mask_threshold,
        "overlap_threshold": cfg.overlap_threshold,
        "min_area_px": cfg.min_area_px,
    }
    new_meta.pop("frames")
    new_meta["frames"] = new_frames  # frames stay last, as SceneWriter writes them
    io.write_json(tpath, new_meta)
    report = LabelReport(root, len(frames), n_seg, seconds, seg.device, len(cmap.categories), cmap.ignored)
    if not cfg.quiet:
        print(
            f"labelled {report.frames} frame(s) of {root} on {report.device}: {report.segments} segments, "
            f"{report.seconds_per_frame:.3f} s/frame; {report.categories} categories"
            + (f"; {len(cmap.ignored)} model class(es) unmapped (void)" if cmap.ignored else "")
        )
    return report
