"""Synthetic indoor scenes with exact ground truth (``simgen synth``); see docs/synth.md."""

from simgen.synth.generate import (
    PRESETS,
    SynthConfig,
    generate,
    make_scene,
    preset_config,
    render_frame,
    synthesize,
)
from simgen.synth.layout import CATEGORIES, STUFF_IDS, THING_IDS
from simgen.synth.noise import NoiseConfig

__all__ = [
    "CATEGORIES",
    "PRESETS",
    "STUFF_IDS",
    "THING_IDS",
    "NoiseConfig",
    "SynthConfig",
    "generate",
    "make_scene",
    "preset_config",
    "render_frame",
    "synthesize",
]
