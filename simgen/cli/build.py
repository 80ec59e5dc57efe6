"""``simgen build``: scene folder -> build folder (panoptic mesh, instances, Gaussians, worlds)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from simgen.cli.common import add_command, add_config, add_torch_threads, config_from_args, error
from simgen.export.config import ExportConfig
from simgen.recon.fusion.config import FusionConfig
from simgen.recon.neural.config import NeuralConfig
from simgen.splat.config import SplatConfig

EXAMPLES = """examples:
  simgen build scenes/room                              # fusion, output in scenes/room/simgen_out/
  simgen build scenes/room -o builds/room --quiet       # no progress bar
  simgen build scenes/room -o builds/room --overwrite   # replace the earlier build in builds/room
  simgen build scenes/room --fusion.voxel-size 0.02 --fusion.keyframe-translation 0.1
  simgen build scenes/room --fusion.split all           # fuse the test views too
  simgen build scenes/room --method neural --neural.steps 3000
  simgen build scenes/room --no-export                  # reconstruction only

output (docs/build-output.md): panoptic_mesh.ply, instances.json, build.json, gaussians.ply,
then the simulation export (docs/export.md): worlds/, models/, mjcf/, alignment.json
"""

METHOD_HELP = {
    "fusion": "online panoptic TSDF fusion (fast, CPU)",
    "neural": "PanopticRecon++ neural fields (quality; faster on CUDA)",
}
METHOD_CONFIGS: dict[str, type] = {"fusion": FusionConfig, "neural": NeuralConfig}


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "build",
        help="reconstruct a panoptic mesh from a scene folder and export its worlds",
        description="Reconstruct a panoptic mesh (geometry, colour, semantic class and instance id per vertex) "
        "from a scene folder, train its 3D Gaussian appearance and export Gazebo / MuJoCo worlds. The scene "
        "is validated first and refused with every problem listed. Methods: "
        + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items())
        + ".",
        examples=EXAMPLES,
        func=cmd_build,
    )
    p.add_argument("scene_dir", help="folder holding transforms.json")
    p.add_argument("-o", "--output", default=None, help="build folder (default: SCENE_DIR/simgen_out)")
    p.add_argument("--method", choices=sorted(METHOD_CONFIGS), default="fusion", help="reconstruction method")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier build in the output folder (all its stage outputs are removed first)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    add_torch_threads(p)
    p.add_argument(
        "--no-gaussians", action="store_true", help="skip training the 3D Gaussian appearance model"
    )
    p.add_argument("--no-export", action="store_true", help="skip the Gazebo / MuJoCo export step")
    for name, cls in METHOD_CONFIGS.items():
        add_config(p, cls, prefix=f"{name}.", title=f"{name} method options")
    add_config(p, SplatConfig, prefix="splat.", title="Gaussian appearance options (docs/gaussians.md)")
    add_config(p, ExportConfig, prefix="export.", title="export options (see `simgen export -h`)")


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from simgen.data.scene import SceneError
    from simgen.export.pipeline import format_summary
    from simgen.pipeline import BuildConfig, BuildError, build

    export_cfg = config_from_args(ExportConfig, args, prefix="export.")
    cfg = BuildConfig(
        method=args.method,
        fusion=config_from_args(FusionConfig, args, prefix="fusion.")
        if args.method == "fusion"
        else FusionConfig(),
        neural=config_from_args(NeuralConfig, args, prefix="neural.")
        if args.method == "neural"
        else NeuralConfig(),
        splat=config_from_args(SplatConfig, args, prefix="splat."),
        export=replace(export_cfg, quiet=True) if args.quiet else export_cfg,
        gaussians=not args.no_gaussians,
        worlds=not args.no_export,
        overwrite=args.overwrite,
        torch_threads=args.torch_threads,
        progress=not args.quiet,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            result = build(args.scene_dir, args.output, cfg)
        except SceneError as e:
            print(
                f"error: scene {args.scene_dir} is invalid ({len(e.problems)} problem(s)):", file=sys.stderr
            )
            for prob in e.problems:
                print(f"  - {prob}", file=sys.stderr)
            return 1
        except BuildError as e:
            return error(str(e))
    if not args.quiet:
        if result.removed:
            print(f"replaced the earlier build in {result.build_dir} ({', '.join(result.removed)})")
        print(_summary(args.method, result.record, result.validate_seconds))
        if result.gaussians is not None:
            print(_gaussian_summary(result.gaussians))
        if result.export is not None:
            print(format_summary(result.export))
        print(f"wrote {result.build_dir}")
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
