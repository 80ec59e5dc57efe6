"""``simgen label``: 2D panoptic pseudo-labels from a real segmenter (see docs/label.md).

* :mod:`simgen.label.labeler`: model loading, batched inference, post-processing, scene writing.
* :mod:`simgen.label.classes`: mapping the model's classes onto the scene's categories.
* :mod:`simgen.label.coco`: the 133 COCO panoptic categories.
"""

from simgen.label.classes import ClassMap, LabelError, build_class_map
from simgen.label.coco import COCO_PANOPTIC
from simgen.label.labeler import LabelConfig, LabelReport, label_scene, load_segmenter, to_scene_labels

__all__ = [
    "COCO_PANOPTIC",
    "ClassMap",
    "LabelConfig",
    "LabelError",
    "LabelReport",
    "build_class_map",
    "label_scene",
    "load_segmenter",
    "to_scene_labels",
]
