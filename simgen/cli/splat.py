"""``simgen gaussians``: train (or resume) the Gaussian appearance model of an existing build."""

from __future__ import annotations

import argparse
import json
import sys

from simgen.cli.common import add_command, add_config, config_from_args

EXAMPLES = """examples:
  simgen gaussians scenes/room -b builds/room                    # train, init from builds/room/panoptic_mesh.ply
  simgen gaussians scenes/room -b builds/room --resume --iterations 400   # continue to 400 steps
  simgen gaussians scenes/room -b builds/room --downscale 2 --device cpu  # faster on CPU
  simgen gaussians scenes/room -b builds/room --init rgbd         # from back-projected RGB-D points
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.splat.config import SplatConfig

    p = add_command(
        sub,
        "gaussians",
        help="train the Gaussian appearance model of a build",
        description="Optimise 3D Gaussians against the scene's training frames (L1 + SSIM + depth loss, "
        "densification), bake panoptic labels from the build's panoptic_mesh.ply and write gaussians.ply "
        "(standard 3DGS layout) and gaussians_labels.npz into the build folder. `simgen build` runs the "
        "same stage unless given --no-gaussians; this command re-runs or resumes it on its own.",
        examples=EXAMPLES,
    )
    p.add_argument("scene_dir", help="scene folder holding transforms.json")
    p.add_argument("-b", "--build", required=True, help="build folder (output of `simgen build`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config(p, SplatConfig)
    p.set_defaults(func=cmd_gaussians)


def cmd_gaussians(args: argparse.Namespace) -> int:
    from simgen.api import train_gaussians
    from simgen.data.scene import SceneError
    from simgen.splat.config import SplatConfig

    cfg = config_from_args(SplatConfig, args)
    try:
        summary = train_gaussians(args.scene_dir, args.build, cfg, progress=not args.quiet).summary
    except (SceneError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    line = f"{summary['count']} Gaussians ({summary['init']} init, labels: {summary['labels']})"
    if summary["steps"]:
        line += f", {summary['steps']} steps in {summary['seconds']:.1f} s"
    print(line)
    for key, name in (("test_initial", "initial"), ("test", "trained")):
        t = summary.get(key)
        if t and t["psnr"] is not None:
            print(
                f"test views ({t['views']}), {name}: PSNR {t['psnr']:.2f} dB, SSIM {t['ssim']:.3f}, "
                f"depth AbsRel {t['depth_absrel']:.4f}"
            )
    print(f"wrote {', '.join(summary['files'])} in {args.build}")
    return 0
