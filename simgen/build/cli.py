"""``simgen build``: scene folder -> build folder (panoptic mesh, instances, build record)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simgen.build.output import BUILD_FILE
from simgen.config import add_dataclass_args, dataclass_from_args, positive_int
from simgen.data.io import write_json
from simgen.data.scene import SceneError, load_scene
from simgen.export.config import ExportConfig
from simgen.splat.config import SplatConfig

EXAMPLES = """examples:
  simgen build scenes/room                              # fusion, output in scenes/room/simgen_out/
  simgen build scenes/room -o builds/room --quiet       # no progress bar
  simgen build scenes/room --fusion.voxel-size 0.02 --fusion.keyframe-translation 0.1
  simgen build scenes/room --fusion.split all           # fuse the test views too
  simgen build scenes/room --method neural --neural.steps 3000
  simgen build scenes/room --no-export                  # reconstruction only

output (docs/build-output.md): panoptic_mesh.ply, instances.json, build.json (written last),
then the simulation export (docs/export.md): worlds/, models/, mjcf/, alignment.json
"""


@dataclass(frozen=True)
class Method:
    """A build method: its config dataclass and ``module:function`` of ``run(scene, cfg, out_dir, progress)``."""

    config: type
    run: str  # imported only when the method runs: registering flags must not import torch
    help: str

    def runner(self) -> Callable[..., dict[str, Any]]:
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)


def _methods() -> dict[str, Method]:
    # One entry per method; the flags of each method's config get the prefix "--<method>.".
    from simgen.build.fusion.config import FusionConfig
    from simgen.build.neural.config import NeuralConfig

    return {
        "fusion": Method(
            FusionConfig, "simgen.build.fusion.pipeline:run_fusion", "online panoptic TSDF fusion (fast, CPU)"
        ),
        "neural": Method(
            NeuralConfig,
            "simgen.build.neural.train:run_neural",
            "PanopticRecon++ neural fields (quality; faster on CUDA)",
        ),
    }


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.cli import _Formatter

    methods = _methods()
    p = sub.add_parser(
        "build",
        help="reconstruct a panoptic mesh from a scene folder",
        description="Reconstruct a panoptic mesh (geometry, colour, semantic class and instance id per vertex) "
        "from a scene folder. The scene is validated first and refused with every problem listed. Methods: "
        + "; ".join(f"{k}: {m.help}" for k, m in methods.items())
        + ".",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    p.add_argument("scene_dir", help="folder holding transforms.json")
    p.add_argument("-o", "--output", default=None, help="build folder (default: SCENE_DIR/simgen_out)")
    p.add_argument("--method", choices=sorted(methods), default="fusion", help="reconstruction method")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="CPU threads for torch (neural and Gaussian stages). 1 is the measured best on a 2-core machine "
        "with anything else running: a Gaussian run took 26 s with 1 thread and 357 s with 2 (OpenMP spin-waits)",
    )
    p.add_argument(
        "--no-gaussians", action="store_true", help="skip training the 3D Gaussian appearance model"
    )
    p.add_argument("--no-export", action="store_true", help="skip the Gazebo / MuJoCo export step")
    for name, m in methods.items():
        group = p.add_argument_group(f"{name} method options")
        add_dataclass_args(group, m.config, prefix=f"{name}.")
    add_dataclass_args(
        p.add_argument_group("Gaussian appearance options (docs/gaussians.md)"), SplatConfig, prefix="splat."
    )
    add_dataclass_args(
        p.add_argument_group("export options (see `simgen export -h`)"), ExportConfig, prefix="export."
    )
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    method = _methods()[args.method]
    try:
        cfg = dataclass_from_args(method.config, args, prefix=f"{args.method}.")
        if hasattr(cfg, "validate"):
            cfg.validate()
        splat_cfg = dataclass_from_args(SplatConfig, args, prefix="splat.")
        export_cfg = dataclass_from_args(ExportConfig, args, prefix="export.")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.torch_threads)
    scene_dir = Path(args.scene_dir)
    out_dir = Path(args.output) if args.output else scene_dir / "simgen_out"
    t0 = time.perf_counter()
    try:
        scene = load_scene(scene_dir)
    except SceneError as e:
        print(f"error: scene {scene_dir} is invalid ({len(e.problems)} problem(s)):", file=sys.stderr)
        for prob in e.problems:
            print(f"  - {prob}", file=sys.stderr)
        return 1
    t_validate = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            result = method.runner()(scene, cfg, out_dir, progress=not args.quiet)
        except (ValueError, MemoryError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if not args.quiet:
        print(_summary(args.method, result, t_validate))
        print(f"wrote {out_dir}")
    if not args.no_gaussians:
        from simgen.splat.train import run_gaussians

        try:
            g = run_gaussians(scene, out_dir, splat_cfg, progress=not args.quiet)
        except (ValueError, MemoryError, OSError) as e:
            print(f"error: Gaussian training failed: {e}", file=sys.stderr)
            print(
                f"the mesh build is complete in {out_dir}; rerun with --no-gaussians to skip it",
                file=sys.stderr,
            )
            return 1
        # build.json is the complete-build marker: it gains the appearance record only once it exists.
        record = json.loads((out_dir / BUILD_FILE).read_text())
        record["gaussians"] = g
        write_json(out_dir / BUILD_FILE, record)
        if not args.quiet:
            print(_gaussian_summary(g))
    if args.no_export:
        return 0
    from simgen.export.pipeline import ExportError, format_summary, run_export

    if args.quiet:
        export_cfg = replace(export_cfg, quiet=True)
    try:
        summary = run_export(out_dir, out_dir, export_cfg)
    except (ExportError, ValueError, OSError) as e:
        print(f"error: export of {out_dir} failed: {e}", file=sys.stderr)
        print(f"the build itself is complete in {out_dir}; rerun `simgen export {out_dir}`", file=sys.stderr)
        return 1
    if not args.quiet:
        print(format_summary(summary))
    return 0


def _gaussian_summary(g: dict[str, Any]) -> str:
    line = f"gaussians: {g.get('count', '?')} Gaussians ({g.get('init', '?')} init), {g.get('total_seconds', 0):.1f} s"
    before, after = g.get("test_initial", {}), g.get("test", {})
    if "psnr" in after:
        line += f"; test PSNR {before.get('psnr', float('nan')):.2f} -> {after['psnr']:.2f} dB"
    return line


def _summary(method: str, record: dict[str, Any], t_validate: float) -> str:
    """One line from the build record's counters and timings (whatever the method reports)."""
    c, t = record.get("counters", {}), record.get("timings_s", {})
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in c.items() if isinstance(v, int)]
    times = [f"validate {t_validate:.1f} s"]
    for k, v in t.items():
        if isinstance(v, float):
            rate = k.endswith("_per_second")
            name = k.removesuffix("_per_second" if rate else "_s").replace("_", " ")
            times.append(f"{v:.1f} {name}/s" if rate else f"{name} {v:.1f} s")
    return f"{method}: " + ", ".join(parts) + "; " + ", ".join(times)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
