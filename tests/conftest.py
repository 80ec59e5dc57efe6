"""Session-wide fixtures: one synthetic ``tiny`` scene (exact ground truth) shared read-only by the suite.

Tests that modify a scene copy it first (``shutil.copytree``); the shared folder is never written after
it is made, so tests can run in any order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/helpers is imported as the top-level package ``helpers`` (pytest puts tests/ on sys.path)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory) -> Path:
    """The built-in ``tiny`` preset, seed 0, with its default sensor and label noise."""
    from simgen.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("tiny_scene") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_scene(tiny_scene_dir):
    """:func:`tiny_scene_dir` loaded (validated) as a :class:`simgen.data.scene.Scene`."""
    from simgen.data.scene import load_scene

    return load_scene(tiny_scene_dir)
