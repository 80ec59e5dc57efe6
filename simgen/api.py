"""The stage functions of the public API (``simgen.export``, ``simgen.check``, ...), each a thin,
typed entry over its package, with the arguments in one order: inputs, output, config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simgen.eval.config import EvalConfig
    from simgen.export.check import Problem
    from simgen.export.config import ExportConfig
    from simgen.serve.config import ServeConfig
    from simgen.splat.config import SplatConfig


@dataclass(frozen=True)
class GaussiansResult:
    """What :func:`train_gaussians` wrote into ``build_dir``; ``summary`` is the ``gaussians`` entry of
    ``build.json`` (init, counts, timings, training PSNR, test-view metrics when evaluated)."""

    build_dir: Path
    summary: dict[str, Any]

    @property
    def path(self) -> Path:
        """the trained ``gaussians.ply``"""
        from simgen import folders

        return self.build_dir / folders.GAUSSIANS_FILE


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_worlds` wrote; ``record`` is ``export.json`` as written."""

    out_dir: Path
    record: dict[str, Any]

    @property
    def models(self) -> list[dict[str, Any]]:
        """one row per model: name, kind, class, instance, collider method and fidelity, physics"""
        return list(self.record["models"])

    @property
    def warnings(self) -> list[str]:
        return list(self.record.get("warnings", []))

    @property
    def world(self) -> Path | None:
        """the Gazebo world ``worlds/<scene>.sdf`` (None with ``format="mjcf"``)"""
        path = self.out_dir / "worlds" / f"{self.record['scene']}.sdf"
        return path if path.is_file() else None

    @property
    def mjcf(self) -> Path | None:
        """the MuJoCo scene ``mjcf/<scene>.xml`` (None with ``format="sdf"``)"""
        path = self.out_dir / "mjcf" / f"{self.record['scene']}.xml"
        return path if path.is_file() else None


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found: ``problems`` (each names its file) and the summary figures."""

    problems: list[Problem]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured: ``metrics`` is the record ``simgen eval`` writes (PQ^scene,
    mIoU, mCov, Chamfer-L1 in cm, F-score, appearance), ``report`` the rest of its output."""

    metrics: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def pq_scene(self) -> float | None:
        """PQ^scene on the evaluated split, 0-1 (all frames concatenated: ids must agree across frames)"""
        value = self.metrics.get("panoptic", {}).get("pq")
        return None if value is None else float(value)


def train_gaussians(
    scene_dir: str | Path, build_dir: str | Path, cfg: SplatConfig | None = None, progress: bool = True
) -> GaussiansResult:
    """Train (or retrain) the 3D Gaussian appearance of the build in ``build_dir`` on ``scene_dir``'s
    frames; writes ``gaussians.ply`` (tagged with the build's id) and adds the summary to ``build.json``
    under ``gaussians``, as ``simgen build`` does."""
    from simgen.data.scene import load_scene
    from simgen.splat.train import run_gaussians

    summary = run_gaussians(load_scene(scene_dir), build_dir, cfg, progress=progress)
    return GaussiansResult(Path(build_dir), summary)


def export_worlds(
    build_dir: str | Path, out_dir: str | Path | None = None, cfg: ExportConfig | None = None
) -> ExportResult:
    """Export a build folder to Gazebo (SDFormat) and MuJoCo (MJCF) worlds in ``out_dir`` (default: the
    build folder). Raises :class:`simgen.export.pipeline.ExportError` naming the file or setting."""
    from simgen import folders
    from simgen.export.pipeline import run_export
    from simgen.sim.drive import robot_mjcf

    out = Path(out_dir if out_dir is not None else build_dir)
    run_export(build_dir, out, cfg, robot=robot_mjcf)
    return ExportResult(out, folders.read_json(out / folders.EXPORT_FILE))  # as written (lists, not tuples)


def check(export_dir: str | Path, validator: bool = True, workers: int = 2) -> CheckResult:
    """Check every model and world of an export folder: libsdformat's validator, mesh URIs, convex
    colliders, MJCF loading in MuJoCo, the physics checks (spawn overlaps, rest test, robot push tests)
    and the void seen by level cameras (in the exported visuals: ``stats["void"]``; through the render
    server: ``stats["served_void"]``)."""
    from simgen.export.check import check_export
    from simgen.serve.scene import SceneLoadError, served_void
    from simgen.sim.drive import robot_mjcf

    problems, stats = check_export(export_dir, validator=validator, workers=workers, robot=robot_mjcf)
    try:  # what the render server shows a robot camera (`void` measures the exported visual meshes)
        stats["served_void"] = served_void(export_dir)
    except SceneLoadError as e:
        stats["served_void"] = f"not measured: {e}"
    return CheckResult(problems, stats)


def evaluate(build_dir: str | Path, scene_dir: str | Path, cfg: EvalConfig | None = None) -> EvalResult:
    """Score the build in ``build_dir`` against the ground truth of ``scene_dir`` (docs/evaluation.md):
    PQ^scene, mIoU, mCov, Chamfer-L1, F-score and the appearance metrics."""
    from simgen.eval.evaluate import evaluate as _evaluate

    out = _evaluate(build_dir, scene_dir, cfg)
    return EvalResult(out["metrics"], {k: v for k, v in out.items() if k != "metrics"})


def run_server(build_dir: str | Path, cfg: ServeConfig | None = None) -> int:
    """Serve RGB, depth and panoptic images of a build or export folder over HTTP until interrupted
    (docs/serve.md). Returns the exit code."""
    from simgen.serve.config import ServeConfig
    from simgen.serve.server import serve as _serve

    return _serve(build_dir, cfg or ServeConfig())
