"""simgen label: a tiny randomly initialised Mask2Former (built from a config, saved with
save_pretrained, loaded offline) through the whole command; the post-processing and class mapping
with constructed logits whose masks are known."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from simgen.cli import main as simgen_main  # noqa: E402
from simgen.data.scene import load_scene  # noqa: E402
from simgen.label import COCO_PANOPTIC, LabelConfig, LabelError, build_class_map, to_scene_labels  # noqa: E402
from simgen.label.labeler import panoptic_inference  # noqa: E402
from simgen.synth import CATEGORIES, synthesize  # noqa: E402

COCO_ID2LABEL = {i: c.name for i, c in enumerate(COCO_PANOPTIC)}
LABEL = {c.name: i for i, c in enumerate(COCO_PANOPTIC)}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # weights cannot be downloaded here: never try


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 1.4 MB Mask2Former (Swin backbone, 1 layer per stage) with the 133 COCO panoptic classes."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    cfg = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
        decoder_layers=2, num_queries=12, encoder_feedforward_dim=32, dim_feedforward=32,
        num_attention_heads=2, id2label=COCO_ID2LABEL, label2id={v: k for k, v in COCO_ID2LABEL.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(cfg)
    out = tmp_path_factory.mktemp("model") / "tiny-m2f"
    model.save_pretrained(out)
    Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def synth_classes(tmp_path_factory) -> Path:
    """A --classes file mapping COCO classes onto the synthetic scenes' categories."""
    path = tmp_path_factory.mktemp("classes") / "synth_classes.json"
    mapping = {
        "floor-wood": "floor", "floor-other-merged": "floor", "rug-merged": "floor",
        "wall-other-merged": "wall", "wall-brick": "wall", "ceiling-merged": "ceiling",
        "dining table": "table", "table-merged": "table", "chair": "chair", "shelf": "shelf",
        "cabinet-merged": "cabinet", "couch": "sofa", "cardboard": "box", "light": "lamp",
        "sports ball": "ball", "potted plant": "plant",
    }  # fmt: skip
    cats = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in CATEGORIES]
    path.write_text(json.dumps({"categories": cats, "map": mapping}))
    return path


def _unlabelled(src: Path, dst: Path, keep_gt: bool = True) -> Path:
    """A copy of scene ``src`` without pseudo-labels (``keep_gt=False``: nor GT and categories, as a
    phone import writes it)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    if not keep_gt:
        meta["categories"] = []
    for f in meta["frames"]:
        f.pop("panoptic_file_path")
        f.pop("segments_info")
    (dst / "transforms.json").write_text(json.dumps(meta))
    shutil.rmtree(dst / "panoptic")
    if not keep_gt:
        shutil.rmtree(dst / "gt")
    return dst


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("scene") / "tiny", "tiny", seed=0, noise=False, frames=6)


# ----------------------------------------------------------------------------- post-processing


def _outputs(queries: list[tuple[int, float, np.ndarray]], n_labels: int) -> SimpleNamespace:
    """Model outputs for one image: per query (label id, class logit, (h, w) bool mask)."""
    cls = torch.zeros(1, len(queries), n_labels + 1)
    masks = torch.full((1, len(queries)) + queries[0][2].shape, -20.0)
    for q, (label, logit, mask) in enumerate(queries):
        cls[0, q, label] = logit
        masks[0, q][torch.from_numpy(mask)] = 20.0
    return SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)


def test_postprocess_constructed_logits(synth_classes):
    H, W = 96, 128

    def box(r0, r1, c0, c1):
        m = np.zeros((H, W), dtype=bool)
        m[r0:r1, c0:c1] = True
        return m

    chair_a, chair_b = box(8, 40, 8, 40), box(8, 40, 64, 96)
    floor, rug = box(64, 96, 0, 96), box(64, 96, 96, 128)
    queries = [
        (LABEL["chair"], 10.0, chair_a),
        (LABEL["chair"], 10.0, chair_b),
        (LABEL["floor-wood"], 10.0, floor),
        (LABEL["rug-merged"], 10.0, rug),
        (LABEL["person"], 4.0, box(40, 60, 40, 60)),  # p = e^4 / (e^4 + 133) = 0.29 < 0.5: dropped
        (LABEL["tv"], 10.0, box(44, 48, 100, 104)),  # 16 px < min_area_px: void
        (LABEL["bird"], 10.0, box(44, 60, 0, 8)),  # a class the map ignores: void
    ]
    cmap = build_class_map(COCO_ID2LABEL, synth_classes)
    cfg = LabelConfig(score_threshold=0.5, min_area_px=32)
    fuse = {m for m, c in cmap.to_category.items() if not cmap.category(c).isthing}
    out = _outputs(queries, 133)
    res = panoptic_inference(out.class_queries_logits[0], out.masks_queries_logits[0], (H, W), cfg, fuse)
    pan, segs = to_scene_labels(res["segmentation"], res["segments_info"], cmap, cfg.min_area_px)
    cat = {c.name: c.id for c in CATEGORIES}
    by_cat: dict[int, list] = {}
    for s in segs:
        by_cat.setdefault(s.category_id, []).append(s)
    assert sorted(by_cat) == [cat["floor"], cat["chair"]]
    assert len(by_cat[cat["chair"]]) == 2 and len(by_cat[cat["floor"]]) == 1  # floor-wood + rug merged
    assert all(s.score == pytest.approx(np.exp(10) / (np.exp(10) + 133), abs=1e-3) for s in segs)
    # Masks: exact (the logits are given at the output size); everything else is void.
    floor_id = by_cat[cat["floor"]][0].id
    a_id = np.bincount(pan[chair_a].ravel()).argmax()
    b_id = np.bincount(pan[chair_b].ravel()).argmax()
    assert {int(a_id), int(b_id)} == {s.id for s in by_cat[cat["chair"]]}
    expect = np.zeros((H, W), dtype=np.int32)
    expect[chair_a], expect[chair_b], expect[floor | rug] = a_id, b_id, floor_id
    np.testing.assert_array_equal(pan, expect)
    # Logits at a quarter of a padded input (valid top-left 96x128 of 128x128): cropped, then resized.
    pad = torch.full((len(queries), 32, 32), -20.0)
    pad[:, :24, :] = torch.nn.functional.interpolate(out.masks_queries_logits, size=(24, 32))[0]
    res2 = panoptic_inference(out.class_queries_logits[0], pad, (H, W), cfg, fuse, (128, 128), (96, 128))
    pan2, _ = to_scene_labels(res2["segmentation"], res2["segments_info"], cmap, cfg.min_area_px)
    assert (pan2 == expect).mean() > 0.97  # box edges move by at most a few pixels


def test_class_map_defaults_and_errors(tmp_path):
    cmap = build_class_map(COCO_ID2LABEL)  # COCO panoptic, by name
    assert len(cmap.categories) == 133 and cmap.category(cmap.to_category[LABEL["chair"]]).name == "chair"
    assert cmap.category(cmap.to_category[LABEL["wall-other-merged"]]).isthing is False
    assert cmap.ignored == ()
    # The scene's own categories by name: only matching classes map, the others are void.
    synth = build_class_map(COCO_ID2LABEL, None, list(CATEGORIES))
    assert synth.categories == CATEGORIES and "person" in synth.ignored
    assert synth.category(synth.to_category[LABEL["chair"]]).name == "chair"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"map": {"chiar": "chair", "couch": "settee"}}))
    with pytest.raises(LabelError, match="'chiar' is not a class of the model") as e:
        build_class_map(COCO_ID2LABEL, bad)
    assert "'couch' -> 'settee': no such category" in str(e.value)
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(LabelError, match="expected a JSON object"):
        build_class_map(COCO_ID2LABEL, tmp_path / "x.json")
    with pytest.raises(LabelError, match="no model class maps to a category"):
        build_class_map({0: "zzz"}, None, list(CATEGORIES))
    stuff_only = tmp_path / "s.json"
    stuff_only.write_text(json.dumps({"categories": [{"id": 1, "name": "wall", "isthing": 0}]}))
    with pytest.raises(LabelError, match="no thing category"):
        build_class_map({0: "wall"}, stuff_only)


# ----------------------------------------------------------------------------- the command


def test_label_command_with_tiny_model(tiny_model, tiny_scene, synth_classes, tmp_path, capsys):
    scene = _unlabelled(tiny_scene, tmp_path / "s")
    args = ["label", str(scene), "--model", str(tiny_model), "--classes", str(synth_classes),
            "--score-threshold", "0.0", "--mask-threshold", "0.0", "--overlap-threshold", "0.0", "--min-area-px", "1",
            "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    assert simgen_main(args) == 0
    out = capsys.readouterr().out
    assert "labelled 6 frame(s)" in out and "s/frame" in out
    loaded = load_scene(scene)  # valid: every PNG id is in segments_info and the reverse
    assert [c.name for c in loaded.categories.values()] == [c.name for c in CATEGORIES]
    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["label"]["model"] == str(tiny_model) and meta["label"]["model_type"] == "mask2former"
    assert sum(len(f.segments) for f in loaded.frames) > 0  # a random model at threshold 0 finds segments
    before = {p.name: p.read_bytes() for p in (scene / "panoptic").iterdir()}
    # Existing labels are never replaced silently.
    assert simgen_main(args) == 1
    assert "already has pseudo-labels; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (scene / "panoptic").iterdir()} == before
    # Same model, same frames: the same labels (inference is deterministic on CPU).
    assert simgen_main([*args, "--overwrite", "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in (scene / "panoptic").iterdir()} == before


def test_label_default_coco_categories(tiny_model, tiny_scene, tmp_path):
    scene = _unlabelled(tiny_scene, tmp_path / "s", keep_gt=False)
    assert simgen_main(["label", str(scene), "--model", str(tiny_model), "--score-threshold", "0", "--mask-threshold", "0", "--overlap-threshold", "0",
                        "--min-area-px", "1", "--quiet"]) == 0  # fmt: skip
    loaded = load_scene(scene)
    assert len(loaded.categories) == 133 and loaded.categories[199].name == "wall-other-merged"


def test_label_errors(tiny_model, tiny_scene, tmp_path, capsys):
    scene = _unlabelled(tiny_scene, tmp_path / "s")
    assert simgen_main(["label", str(tmp_path / "nope"), "--model", str(tiny_model)]) == 1
    assert "transforms.json: missing" in capsys.readouterr().err
    assert simgen_main(["label", str(scene), "--model", str(tmp_path / "no-model")]) == 1
    assert "cannot load a universal-segmentation model" in capsys.readouterr().err
    # GT in the synthetic class space, labels in COCO's: refused before any file is written.
    cats = tmp_path / "coco_cats.json"
    cats.write_text(json.dumps({"categories": [{"id": c.id, "name": c.name, "isthing": int(c.isthing)}
                                               for c in COCO_PANOPTIC]}))  # fmt: skip
    assert simgen_main(["label", str(scene), "--model", str(tiny_model), "--classes", str(cats)]) == 1
    assert "ground truth uses category id(s)" in capsys.readouterr().err
    assert not (scene / "panoptic").exists()
    os.remove(scene / "rgb" / "00002.png")
    assert simgen_main(["label", str(scene), "--model", str(tiny_model)]) == 1
    assert "00002.png: missing RGB image (frame 2)" in capsys.readouterr().err
    assert simgen_main(["label", str(scene), "--model", str(tiny_model), "--score-threshold", "2"]) == 2
