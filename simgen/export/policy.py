"""Which exported models are fixed (static) and which are dynamic (free bodies with mass and inertia).

The rule, in order (the first that matches decides; docs/export.md):

1. stuff (floor, walls, any non-thing class) is fixed;
2. a class named in ``dynamic_classes`` is dynamic, one named in ``fixed_classes`` is fixed (a name
   matches when it is the class name, a word of it or its category id);
3. a thing taller than ``max_dynamic_height`` or wider (footprint diagonal) than ``max_dynamic_width``,
   or heavier than ``max_dynamic_mass``, is fixed (large furniture whatever its class is called);
4. every other thing is dynamic.

The class lists are words, not preset ids, so the rule holds for any scan's label set; sizes come from the
model's own bounding box, so an unknown class still gets a sensible decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Furniture and fittings that a mobile robot should not move (by a word of the class name).
FIXED_CLASSES = (
    "table",
    "desk",
    "counter",
    "cabinet",
    "shelf",
    "shelves",
    "bookshelf",
    "bookcase",
    "wardrobe",
    "closet",
    "dresser",
    "sofa",
    "couch",
    "bed",
    "refrigerator",
    "fridge",
    "oven",
    "stove",
    "dishwasher",
    "washer",
    "sink",
    "toilet",
    "bathtub",
    "shower",
    "piano",
    "door",
    "window",
    "radiator",
    "column",
    "stairs",
    "fireplace",
)


@dataclass
class Decision:
    dynamic: bool
    reason: str  # "stuff", "class", "size", "mass", "override" or "movable"


def _singular(word: str) -> str:
    """English plural -> singular for furniture words (shelves -> shelf, boxes -> box, chairs -> chair)."""
    if word.endswith("ves") and len(word) > 4:
        return word[:-3] + "f"
    if word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _words(name: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", name.lower())
    return set(words) | {_singular(w) for w in words}


def _matches(names: tuple[str, ...], category_id: int, class_name: str) -> bool:
    words = _words(class_name)
    for n in names:
        n = n.strip().lower()
        if n == str(category_id) or n == class_name.lower() or n in words or _singular(n) in words:
            return True
        # Plural / compound class names ("bookshelves", "coffee_table") match their word stem.
        if len(n) >= 4 and any(w.startswith(n) for w in words):
            return True
    return False


def decide(
    kind: str,
    category_id: int,
    class_name: str,
    size: np.ndarray,
    mass: float | None,
    fixed_classes: tuple[str, ...],
    dynamic_classes: tuple[str, ...],
    max_dynamic_height: float,
    max_dynamic_width: float,
    max_dynamic_mass: float,
) -> Decision:
    """Fixed or dynamic for one model.

    Args:
        kind: "thing", "floor" or "stuff" (simgen.export.split.Part.kind).
        size: (3,) bounding-box extents of the model (m, world axes, z up).
        mass: estimated mass (kg) if it were dynamic, or None when unknown.
    """
    if kind != "thing":
        return Decision(False, "stuff")
    if _matches(dynamic_classes, category_id, class_name):
        return Decision(True, "override")
    if _matches(fixed_classes, category_id, class_name):
        return Decision(False, "class")
    size = np.asarray(size, float)
    if size[2] > max_dynamic_height or float(np.hypot(size[0], size[1])) > max_dynamic_width:
        return Decision(False, "size")
    if mass is not None and mass > max_dynamic_mass:
        return Decision(False, "mass")
    return Decision(True, "movable")
