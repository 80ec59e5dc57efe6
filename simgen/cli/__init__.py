"""The ``simgen`` command. Each command group registers its subcommands (``register(subparsers)``); a
command turns flags into a config dataclass, calls one library function and prints its result.

Run as a program (``main()`` without ``argv``), Ctrl-C and SIGTERM stop any stage within
:data:`simgen.interrupts.FORCED_EXIT_S` and clean up (see :mod:`simgen.interrupts`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from simgen import interrupts
from simgen.cli.common import ConfigError, Formatter

# Modules exposing ``register(subparsers)``; one per command group.
COMMAND_MODULES = [
    "simgen.cli.data",
    "simgen.cli.export",
    "simgen.cli.importers",
    "simgen.cli.build",
    "simgen.cli.eval",
    "simgen.cli.serve",
    "simgen.cli.synth",
    "simgen.cli.splat",
    "simgen.cli.batch",
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
    """Run ``simgen``. With ``argv`` None (the ``simgen`` program) this process's SIGINT / SIGTERM handling
    is installed (see the module docstring); called from Python with ``argv`` it is left alone."""
    program = argv is None
    if program:
        interrupts.install_signal_handling()
    try:
        # Inside the try: building the parser imports every stage's module (seconds), Ctrl-C may come then.
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, interrupts.Terminated) else 130
        print("terminated" if code == 143 else "interrupted", file=sys.stderr)
        if program:
            interrupts.exit_now(code)
        return code
    finally:
        if program:
            interrupts.finished.set()
