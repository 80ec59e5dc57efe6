"""The whole build as one library call: scene folder -> reconstruction -> Gaussians -> export.

:func:`build` is what ``simgen build`` and ``simgen batch`` run; the CLI only turns flags into a
:class:`BuildConfig` and prints the :class:`BuildResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from simgen import folders
from simgen.data.scene import Scene, load_scene
from simgen.export.config import ExportConfig
from simgen.recon.fusion.config import FusionConfig
from simgen.recon.neural.config import NeuralConfig
from simgen.splat.config import SplatConfig

Method = Literal["fusion", "neural"]
METHODS: tuple[str, ...] = ("fusion", "neural")


class BuildError(RuntimeError):
    """A build cannot start or a stage failed; the message names the folder, file or setting.

    ``stage`` is the stage that failed (``"prepare"``, ``"recon"``, ``"gaussians"``, ``"export"``); the
    stages before it are complete in the build folder."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class BuildConfig:
    """Settings of :func:`build`: the method, each stage's config, and which stages run."""

    method: Method = "fusion"
    """reconstruction method: ``fusion`` (online panoptic TSDF fusion) or ``neural`` (PanopticRecon++)"""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)
    splat: SplatConfig = field(default_factory=SplatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    gaussians: bool = True
    """train the 3D Gaussian appearance model after the reconstruction"""
    worlds: bool = True
    """export the Gazebo / MuJoCo worlds into the build folder"""
    overwrite: bool = False
    """replace an earlier build in the output folder (all of its stage outputs are removed first)"""
    torch_threads: int = 1
    """CPU threads for torch in the neural and Gaussian stages (docs/benchmarks.md: 1 is fastest on 2 cores)"""
    progress: bool = True
    """show progress bars"""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")

    @property
    def method_config(self) -> FusionConfig | NeuralConfig:
        return self.fusion if self.method == "fusion" else self.neural


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` made. ``record`` is ``build.json`` as written (with ``gaussians`` once trained)."""

    build_dir: Path
    scene: Scene
    record: dict[str, Any]
    gaussians: dict[str, Any] | None = None
    """the appearance stage's summary, None when it did not run"""
    export: dict[str, Any] | None = None
    """the export record (``export.json``), None when the export did not run"""
    validate_seconds: float = 0.0
    removed: tuple[str, ...] = ()
    """stage outputs of an earlier build that were removed (with ``overwrite``)"""


def _resumes(cfg: BuildConfig) -> tuple[str, ...]:
    """Files a resumed run continues from: kept when an earlier build is cleared."""
    keep: list[str] = []
    if cfg.method == "neural" and cfg.neural.resume:
        keep += [folders.NEURAL_CHECKPOINT_FILE, folders.NEURAL_LOG_FILE]
    if cfg.gaussians and cfg.splat.resume:
        keep.append(folders.GAUSSIAN_CHECKPOINT_FILE)
    return tuple(keep)


def prepare_build_dir(build_dir: str | Path, cfg: BuildConfig) -> tuple[str, ...]:
    """Make ``build_dir`` ready for a new build: refuse an earlier build without ``cfg.overwrite``, else
    remove all of its stage outputs (checkpoints a resumed run needs are kept). Returns what was removed."""
    build_dir = Path(build_dir)
    keep = set(_resumes(cfg))
    earlier = [n for n in folders.existing_build_outputs(build_dir) if n not in keep]
    if not earlier:
        return ()
    if not cfg.overwrite and not keep:
        raise BuildError(
            f"{build_dir} holds an earlier build ({', '.join(earlier)}); pass --overwrite to replace it "
            "(every stage output is removed first) or choose another output folder",
            "prepare",
        )
    return tuple(folders.clear_build_outputs(build_dir, earlier))


def build(
    scene_dir: str | Path, out_dir: str | Path | None = None, cfg: BuildConfig | None = None
) -> BuildResult:
    """Reconstruct a scene folder and turn it into simulator worlds.

    Stages: validate the scene (every problem listed), reconstruct the panoptic mesh (``cfg.method``),
    train the Gaussian appearance (``cfg.gaussians``), export Gazebo / MuJoCo worlds (``cfg.worlds``).
    Outputs follow :mod:`simgen.folders`; each file is written atomically and ``build.json`` last.

    Args:
        scene_dir: folder holding ``transforms.json`` (docs/scene-format.md). Never modified.
        out_dir: build folder (default ``scene_dir/simgen_out``). An earlier build there is refused
            unless ``cfg.overwrite``, which removes all of its stage outputs first, so a build folder never
            mixes two runs.
        cfg: settings (default :class:`BuildConfig`).

    Raises:
        simgen.data.scene.SceneError: the scene is invalid (``problems`` lists each, by file and frame).
        BuildError: the output folder holds another build, or a stage failed (``stage`` says which).
    """
    cfg = cfg or BuildConfig()
    scene_dir = Path(scene_dir)
    build_dir = Path(out_dir) if out_dir is not None else scene_dir / "simgen_out"
    t0 = time.perf_counter()
    scene = load_scene(scene_dir)
    t_validate = time.perf_counter() - t0
    removed = prepare_build_dir(build_dir, cfg)

    import torch

    torch.set_num_threads(cfg.torch_threads)
    try:
        if cfg.method == "fusion":
            from simgen.recon.fusion.pipeline import run_fusion

            run_fusion(scene, build_dir, cfg.fusion, progress=cfg.progress)
        else:
            from simgen.recon.neural.train import run_neural

            run_neural(scene, build_dir, cfg.neural, progress=cfg.progress)
    except (ValueError, MemoryError, OSError) as e:
        raise BuildError(str(e), "recon") from e
    record = folders.read_build_record(build_dir)
    gaussians = export = None
    if cfg.gaussians:
        from simgen.splat.train import run_gaussians

        try:
            gaussians = run_gaussians(scene, build_dir, cfg.splat, progress=cfg.progress)
        except (ValueError, MemoryError, OSError) as e:
            raise BuildError(
                f"Gaussian training failed: {e}; the mesh build is complete in {build_dir} "
                "(rerun with --no-gaussians to skip this stage)",
                "gaussians",
            ) from e
        record = folders.read_build_record(build_dir)
    if cfg.worlds:
        from simgen.export.pipeline import ExportError, run_export

        try:
            export_cfg = cfg.export if cfg.progress else replace(cfg.export, quiet=True)
            from simgen.sim.drive import robot_mjcf

            export = run_export(build_dir, build_dir, export_cfg, robot=robot_mjcf)
        except (ExportError, ValueError, OSError) as e:
            raise BuildError(
                f"export of {build_dir} failed: {e}; the build itself is complete "
                f"(rerun `simgen export {build_dir}`)",
                "export",
            ) from e
    return BuildResult(build_dir, scene, record, gaussians, export, t_validate, removed)
