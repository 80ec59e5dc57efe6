"""``simgen export`` and ``simgen check``."""

from __future__ import annotations

import argparse
import json
import sys

from simgen.cli.common import add_torch_threads
from simgen.config import add_dataclass_args, dataclass_from_args
from simgen.export.config import ExportConfig

EXPORT_EXAMPLES = """examples:
  simgen export builds/room                       # writes builds/room/{models,worlds,mjcf,...}
  simgen export builds/room -o worlds/room --format sdf --dynamic-things
  simgen export builds/scan -o out --up 0 -1 0    # no floor class: give the scene's up axis
  simgen export builds/room --max-hulls 8 --coacd-threshold 0.1 --face-budget 20000 --quiet
  simgen export builds/room --texture-source vertex  # textures from vertex colours, not the Gaussians
  simgen export builds/room --fuel --fuel-author "Ada" --fuel-license CC-BY-4.0  # + fuel/<model>.zip to upload

then: GZ_SIM_RESOURCE_PATH=OUT/models gz sim OUT/worlds/<scene>.sdf   (see OUT/README.md)
"""

CHECK_EXAMPLES = """examples:
  simgen check builds/room            # validator, mesh URIs, convex colliders, names; exit 1 on any problem
  simgen check out --json
  simgen check out --no-validator     # where neither `gz` nor `ign` is installed
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.cli.common import Formatter

    p = sub.add_parser(
        "export",
        help="export a build to a Gazebo world (SDFormat) and MuJoCo (MJCF)",
        description="Turn a build folder (panoptic_mesh.ply + instances.json) into simulation worlds: the floor is "
        "aligned to z = 0 (z up), each thing becomes its own model with a textured visual and CoACD convex "
        "colliders, stuff (floor, walls) becomes static models with box colliders, every model carries a "
        "Gazebo Label. The previous export in OUT is replaced only when the new one completes.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=Formatter,
    )
    p.add_argument("build_dir", help="build folder (panoptic_mesh.ply, instances.json)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: BUILD_DIR)")
    add_torch_threads(p)
    add_dataclass_args(p, ExportConfig)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "check",
        help="validate an exported world folder",
        description="Run libsdformat's validator (`gz sdf -k`, or `ign sdf -k`) on every model and world of an "
        "export, check every mesh URI resolves to a readable file, every collider is convex and watertight, "
        "model names are unique and the MJCF loads in MuJoCo. Lists each problem by file; exits 1 if any.",
        epilog=CHECK_EXAMPLES,
        formatter_class=Formatter,
    )
    p.add_argument("out_dir", help="export folder (holding models/ and worlds/)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-validator", action="store_true", help="skip libsdformat's validator")
    p.add_argument(
        "--no-physics",
        action="store_true",
        help="skip the MuJoCo physics checks (spawn overlaps, 3 s rest test, robot push tests) and the void "
        "figures",
    )
    p.set_defaults(func=cmd_check)


def cmd_export(args: argparse.Namespace) -> int:
    from simgen.export.align import AlignmentError
    from simgen.export.pipeline import ExportError, format_summary, run_export

    try:
        cfg = dataclass_from_args(ExportConfig, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.texture_source != "vertex":
        import torch

        torch.set_num_threads(args.torch_threads)
    from simgen.sim.drive import robot_mjcf  # the robot of `simgen drive` runs the push tests

    try:
        summary = run_export(args.build_dir, args.out, cfg, robot=robot_mjcf)
    except (ExportError, AlignmentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not cfg.quiet:
        print(format_summary(summary))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from simgen.export.check import check_export
    from simgen.sim.drive import robot_mjcf  # the robot of `simgen drive` runs the push tests

    problems, stats = check_export(
        args.out_dir, validator=not args.no_validator, physics=not args.no_physics, robot=robot_mjcf
    )
    if not args.no_physics:  # next to `void` (the export's visual meshes): what the render server shows
        from simgen.serve.scene import SceneLoadError, served_void

        try:
            stats["served_void"] = served_void(args.out_dir)
        except SceneLoadError as e:
            stats["served_void"] = f"not measured: {e}"
    if args.json:
        print(json.dumps({"summary": stats, "problems": [vars(p) for p in problems]}, indent=2))
    else:
        from simgen.export.check import format_collider_figures

        for k, v in stats.items():
            text = format_collider_figures(v) if k == "collider_fidelity" else v
            print(f"{k.replace('_', ' ')}: {text}")
        if problems:
            print(f"\n{len(problems)} problem(s):", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print("\nvalid")
    return 1 if problems else 0
