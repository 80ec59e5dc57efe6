"""Online panoptic TSDF fusion (``simgen build --method fusion``); see docs/fusion.md."""

from simgen.recon.fusion.config import FusionConfig

__all__ = ["FusionConfig", "SkippedFrameWarning", "run_fusion"]


def __getattr__(name: str):
    # The pipeline (scipy, scikit-image) loads on first use, so `simgen --help` and `simgen validate`
    # do not pay for it.
    if name in ("SkippedFrameWarning", "run_fusion"):
        from simgen.recon.fusion import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
