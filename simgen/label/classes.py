"""Mapping a segmentation model's classes onto a scene's categories (``simgen label --classes``).

Default (no file): the scene's categories are the 133 COCO panoptic categories and every model class
is matched by name (Mask2Former / OneFormer COCO-panoptic checkpoints name their classes so).

A ``--classes`` file (JSON) remaps or merges::

    {
      "categories": [{"id": 1, "name": "floor", "isthing": 0}, {"id": 5, "name": "chair", "isthing": 1}],
      "map": {"floor-wood": "floor", "floor-other-merged": "floor", "rug-merged": "floor",
              "chair": "chair", "couch": "sofa", "person": null}
    }

* ``categories`` (optional): the scene's categories. Without it: the categories already in the
  scene's ``transforms.json`` if it has any (so a scene with ground truth keeps its class space),
  else COCO panoptic.
* ``map``: model class name -> category name (or id); several model classes may map to one category
  (merging). A model class not in ``map``, or mapped to ``null``, is ignored: its pixels are void.
  Without ``map``, model classes are matched to categories by (case-insensitive) name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simgen.data.scene import Category
from simgen.label.coco import COCO_PANOPTIC


class LabelError(ValueError):
    """Bad ``simgen label`` input; the message names the file, field or frame."""


@dataclass(frozen=True)
class ClassMap:
    """Model label id -> scene category.

    Attributes:
        categories: the scene's categories after labelling.
        to_category: model label id -> category id (model ids absent: ignored, void).
        ignored: names of the model classes that map to nothing (their pixels stay void).
    """

    categories: tuple[Category, ...]
    to_category: dict[int, int]
    ignored: tuple[str, ...] = ()

    def category(self, cid: int) -> Category:
        return next(c for c in self.categories if c.id == cid)


def _categories(items: Any, where: str) -> tuple[Category, ...]:
    if not isinstance(items, list) or not items:
        raise LabelError(f"{where}: 'categories' must be a non-empty list of {{id, name, isthing}}")
    cats, seen = [], set()
    for j, c in enumerate(items):
        try:
            cat = Category(int(c["id"]), str(c["name"]), bool(int(c.get("isthing", 1))))
        except (KeyError, TypeError, ValueError) as e:
            raise LabelError(f"{where}: categories[{j}] needs an integer id and a name ({e!r})") from None
        if cat.id <= 0 or cat.id in seen:
            raise LabelError(f"{where}: categories[{j}]: id {cat.id} is not positive or used twice")
        seen.add(cat.id)
        cats.append(cat)
    return tuple(cats)


def build_class_map(
    id2label: dict[int, str],
    classes_file: str | Path | None = None,
    scene_categories: list[Category] | None = None,
) -> ClassMap:
    """The mapping of a model with labels ``id2label`` (its config's ``id2label``).

    Raises:
        LabelError: a malformed file, a map entry naming an unknown model class or category (each
            listed), or no model class mapping to any category.
    """
    data: dict[str, Any] = {}
    where = str(classes_file) if classes_file else "model classes"
    if classes_file is not None:
        try:
            data = json.loads(Path(classes_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LabelError(f"{classes_file}: unreadable class file ({e})") from None
        if not isinstance(data, dict) or not ({"categories", "map"} & set(data)):
            raise LabelError(f"{classes_file}: expected a JSON object with 'categories' and/or 'map'")
    if "categories" in data:
        cats = _categories(data["categories"], where)
    elif scene_categories:
        cats = tuple(scene_categories)
    else:
        cats = COCO_PANOPTIC
    by_name = {c.name.strip().lower(): c.id for c in cats}
    by_id = {c.id for c in cats}
    model_by_name = {str(n).strip().lower(): int(i) for i, n in id2label.items()}
    to_cat: dict[int, int] = {}
    problems = []
    if "map" in data:
        if not isinstance(data["map"], dict):
            raise LabelError(f"{where}: 'map' must be an object {{model class name: category name}}")
        for src, dst in data["map"].items():
            mid = model_by_name.get(str(src).strip().lower())
            if mid is None:
                problems.append(f"map: {src!r} is not a class of the model")
                continue
            if dst is None:
                continue
            cid = dst if isinstance(dst, int) and dst in by_id else by_name.get(str(dst).strip().lower())
            if cid is None:
                problems.append(f"map: {src!r} -> {dst!r}: no such category")
                continue
            to_cat[mid] = int(cid)
    else:
        for mid, name in sorted(id2label.items()):
            cid = by_name.get(str(name).strip().lower())
            if cid is not None:
                to_cat[int(mid)] = cid
    if problems:
        raise LabelError(f"{where}: bad class mapping:\n" + "\n".join(f"  - {p}" for p in problems))
    if not to_cat:
        raise LabelError(
            f"{where}: no model class maps to a category (categories: "
            f"{', '.join(c.name for c in cats[:8])}{' ...' if len(cats) > 8 else ''}); pass --classes FILE with a 'map'"
        )
    if not any(c.isthing for c in cats):
        raise LabelError(f"{where}: no thing category (isthing: 1): nothing to separate into objects")
    ignored = tuple(str(n) for i, n in sorted(id2label.items()) if int(i) not in to_cat)
    return ClassMap(cats, to_cat, ignored)
