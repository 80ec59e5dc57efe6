"""Neural panoptic reconstruction (PanopticRecon++): ``simgen build --method neural``.

Entry points: :class:`NeuralConfig` (presets ``fast`` / ``quality``) and :func:`run_neural`.
"""

from simgen.build.neural.config import PRESETS, NeuralConfig, neural_config
from simgen.build.neural.train import CHECKPOINT, LOG_FILE, NeuralTrainingError, run_neural

__all__ = [
    "CHECKPOINT",
    "LOG_FILE",
    "PRESETS",
    "NeuralConfig",
    "NeuralTrainingError",
    "neural_config",
    "run_neural",
]
