"""Online panoptic TSDF fusion (``simgen build --method fusion``); see docs/fusion.md."""

from simgen.build.fusion.config import FusionConfig
from simgen.build.fusion.pipeline import SkippedFrameWarning, run_fusion

__all__ = ["FusionConfig", "SkippedFrameWarning", "run_fusion"]
