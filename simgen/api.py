"""The stage functions of the public API (``simgen.export``, ``simgen.check``, ...), each a thin,
typed entry over its package, with the arguments in one order: inputs, output, config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simgen.eval.config import EvalConfig
    from simgen.export.check import Problem
    from simgen.export.config import ExportConfig
    from simgen.serve.config import ServeConfig
    from simgen.splat.config import SplatConfig


def train_gaussians(
    scene_dir: str | Path, build_dir: str | Path, cfg: SplatConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train (or retrain) the 3D Gaussian appearance of the build in ``build_dir`` on ``scene_dir``'s
    frames; writes ``gaussians.ply`` (tagged with the build's id) and adds the summary to ``build.json``
    under ``gaussians``, as ``simgen build`` does. Returns that summary."""
    from simgen.data.scene import load_scene
    from simgen.splat.train import run_gaussians

    return run_gaussians(load_scene(scene_dir), build_dir, cfg, progress=progress)


def export_worlds(
    build_dir: str | Path, out_dir: str | Path | None = None, cfg: ExportConfig | None = None
) -> dict[str, Any]:
    """Export a build folder to Gazebo (SDFormat) and MuJoCo (MJCF) worlds in ``out_dir`` (default: the
    build folder). Returns the export record written to ``export.json`` (per-model rows, warnings,
    timings). Raises :class:`simgen.export.pipeline.ExportError` naming the file or setting."""
    from simgen.export.pipeline import run_export
    from simgen.sim.drive import robot_mjcf

    return run_export(build_dir, out_dir, cfg, robot=robot_mjcf)


def check(export_dir: str | Path, validator: bool = True, workers: int = 2) -> tuple[list[Problem], dict]:
    """Check every model and world of an export folder: libsdformat's validator, mesh URIs, convex
    colliders, MJCF loading in MuJoCo, the physics checks (spawn overlaps, rest test, robot push tests)
    and the void seen by level cameras. Returns ``(problems, stats)``; each problem names its file."""
    from simgen.export.check import check_export
    from simgen.sim.drive import robot_mjcf

    return check_export(export_dir, validator=validator, workers=workers, robot=robot_mjcf)


def evaluate(build_dir: str | Path, scene_dir: str | Path, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Score the build in ``build_dir`` against the ground truth of ``scene_dir`` (docs/evaluation.md):
    PQ^scene, mIoU, mCov, Chamfer-L1, F-score and the appearance metrics. Returns the metrics record."""
    from simgen.eval.evaluate import evaluate as _evaluate

    return _evaluate(build_dir, scene_dir, cfg)["metrics"]


def run_server(build_dir: str | Path, cfg: ServeConfig | None = None) -> int:
    """Serve RGB, depth and panoptic images of a build or export folder over HTTP until interrupted
    (docs/serve.md). Returns the exit code."""
    from simgen.serve.config import ServeConfig
    from simgen.serve.server import serve as _serve

    return _serve(build_dir, cfg or ServeConfig())
