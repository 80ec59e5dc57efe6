"""The ``simgen`` command. Each stage registers its own subcommands (``register(subparsers)``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from simgen.cli.common import ConfigError, Formatter

# Modules exposing ``register(subparsers)``; one per pipeline stage.
COMMAND_MODULES = [
    "simgen.cli.data",
    "simgen.cli.export",
    "simgen.cli.importers",
    "simgen.cli.build",
    "simgen.cli.eval",
    "simgen.cli.serve",
    "simgen.cli.synth",
    "simgen.cli.splat",
    "simgen.cli.label",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simgen",
        description="Scanned indoor scenes -> panoptic reconstruction -> Gazebo/MuJoCo worlds and robot cameras.",
        formatter_class=Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
