"""``simgen validate`` and ``simgen info``."""

from __future__ import annotations

import argparse
import json
import sys

from simgen.cli.common import add_command
from simgen.data.scene import validate_scene

VALIDATE_EXAMPLES = """examples:
  simgen validate scenes/room            # summary, then every problem; exit 1 if any
  simgen validate scenes/room --json     # machine-readable summary and problems
  simgen validate scenes/room --quick    # JSON files only, do not open the images
"""

INFO_EXAMPLES = """examples:
  simgen info scenes/room
  simgen info scenes/room --json
"""


def register(sub: argparse._SubParsersAction) -> None:

    p = add_command(
        sub,
        "validate",
        help="check a scene folder and list every problem",
        description="Check a scene folder against the scene format (docs/scene-format.md). Prints a summary "
        "and every problem found, each naming its file and frame; exits 1 if there is any.",
        examples=VALIDATE_EXAMPLES,
    )
    p.add_argument("scene_dir", help="folder holding transforms.json")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--quick", action="store_true", help="check the JSON files only, do not open images")
    p.set_defaults(func=cmd_validate)

    p = add_command(
        sub,
        "info",
        help="print a scene's summary",
        description="Print a scene's summary (frames, resolution, categories, segments, depth range, poses).",
        examples=INFO_EXAMPLES,
    )
    p.add_argument("scene_dir", help="folder holding transforms.json")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def _print_summary(stats: dict) -> None:
    width = max((len(k) for k in stats), default=0)
    for k, v in stats.items():
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v) if v else "-"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
        print(f"{k.replace('_', ' '):<{width}}  {v}")


def cmd_validate(args: argparse.Namespace) -> int:
    scene, problems, stats = validate_scene(args.scene_dir, check_images=not args.quick)
    if args.json:
        print(json.dumps({"summary": stats, "problems": [str(p) for p in problems]}, indent=2))
    else:
        if stats:
            _print_summary(stats)
        if problems:
            print(f"\n{len(problems)} problem(s):", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print("\nvalid")
    return 1 if problems else 0


def cmd_info(args: argparse.Namespace) -> int:
    scene, problems, stats = validate_scene(args.scene_dir, check_images=True)
    if scene is None:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_summary(stats)
        if problems:
            print(f"\n({len(problems)} validation problem(s); run `simgen validate`)", file=sys.stderr)
    return 0
