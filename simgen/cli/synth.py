"""``simgen synth``: write a synthetic scene with exact ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from typing import get_args

from simgen.config import add_dataclass_args, dataclass_from_args

EXAMPLES = """examples:
  simgen synth scenes/tiny --preset tiny                      # 16 frames, 96x72, for unit tests
  simgen synth scenes/room --preset room --seed 3             # ~150 frames, 320x240, 8-15 objects
  simgen synth scenes/two --preset two-rooms                  # two rooms, twin chairs never co-visible
  simgen synth scenes/clean --preset room --no-noise.enabled  # exact pseudo-labels, depth, RGB, poses
  simgen synth scenes/hard --preset room --noise.miss-prob 0.3 --noise.depth-sigma-m 0.005 \\
      --noise.depth-sigma-quad 0.002
  simgen synth scenes/room --preset room --overwrite --preview docs/images/synth_room.png
  simgen synth scenes/real --preset two-rooms --noise-profile realistic  # sensor depth, drift, segmenter errors
  simgen synth scenes/drift --preset two-rooms --noise-profile realistic --noise.drift-rot-deg 0
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.cli.common import add_command
    from simgen.synth.generate import SynthConfig
    from simgen.synth.noise import NoiseProfile

    p = add_command(
        sub,
        "synth",
        help="generate a synthetic indoor scene with exact ground truth",
        description="Procedural indoor scene (floor, walls, ceiling; tables, chairs, shelves, ...) ray cast "
        "along a hand-held walk: RGB, depth, noisy pseudo-label panoptic images imitating a 2D segmenter, "
        "and exact GT (gt/: panoptic images, mesh.ply with per-vertex segment ids, synth.json). "
        "Deterministic for a seed. See docs/synth.md.",
        examples=EXAMPLES,
    )
    p.add_argument("out_dir", help="scene folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a scene already in OUT_DIR")
    p.add_argument(
        "--preview", metavar="PNG", help="also write a figure (RGB | depth | pseudo-labels | GT) of a frame"
    )
    p.add_argument(
        "--preview-frame", type=int, default=None, help="frame for --preview (default: the middle one)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--noise-profile",
        dest="noise__profile",
        choices=get_args(NoiseProfile),
        default=argparse.SUPPRESS,
        help="noise profile (same as --noise.profile): clean (default) or realistic; single "
        "--noise.<field> flags override the profile's values (docs/synth.md)",
    )
    add_dataclass_args(p, SynthConfig)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from simgen.synth.generate import SynthConfig, generate

    try:
        cfg = dataclass_from_args(SynthConfig, args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = generate(cfg, args.out_dir, overwrite=args.overwrite, quiet=args.quiet)
    except (FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{cfg.preset} (seed {cfg.seed}): {out} in {time.perf_counter() - t0:.1f} s")
    if args.preview:
        from simgen.synth.preview import write_preview

        try:
            path = write_preview(out, args.preview, args.preview_frame)
        except IndexError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"preview: {path}")
    return 0
