"""Scene format, loading/validation, synthetic scenes and dataset importers."""

from simgen.data.camera import Intrinsics
from simgen.data.scene import (
    Category,
    Frame,
    GroundTruth,
    Problem,
    Scene,
    SceneError,
    Segment,
    load_scene,
    validate_scene,
)

__all__ = [
    "Category",
    "Frame",
    "GroundTruth",
    "Intrinsics",
    "Problem",
    "Scene",
    "SceneError",
    "Segment",
    "load_scene",
    "validate_scene",
]
