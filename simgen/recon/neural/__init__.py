"""Neural panoptic reconstruction (PanopticRecon++): ``simgen build --method neural``.

Entry points: :class:`NeuralConfig` (presets ``fast`` / ``quality``) and :func:`run_neural`.
"""

from simgen.recon.neural.config import PRESETS, NeuralConfig, neural_config

__all__ = [
    "CHECKPOINT",
    "LOG_FILE",
    "PRESETS",
    "NeuralConfig",
    "NeuralTrainingError",
    "neural_config",
    "run_neural",
]

_TRAIN = ("CHECKPOINT", "LOG_FILE", "NeuralTrainingError", "run_neural")


def __getattr__(name: str):
    # torch loads on first use of the trainer, not when the CLI registers its flags.
    if name in _TRAIN:
        from simgen.recon.neural import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
