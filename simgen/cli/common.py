"""What every ``simgen`` command shares: the help formatter, registering a command, config flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeVar

from simgen.config import ConfigError, add_dataclass_args, dataclass_from_args, positive_int

T = TypeVar("T")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and examples kept as written."""


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    description: str | None = None,
    examples: str | None = None,
    func: Any = None,
) -> argparse.ArgumentParser:
    """A subcommand with simgen's help layout; ``func(args) -> int`` runs it."""
    p = sub.add_parser(
        name, help=help, description=description or help, epilog=examples, formatter_class=Formatter
    )
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_config(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", title: str | None = None
) -> None:
    """One ``--[prefix]field-name`` flag per field of the config dataclass ``cls``, in one help group."""
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    add_dataclass_args(group, cls, prefix=prefix)  # type: ignore[arg-type]


def config_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """The config dataclass back from the flags; a bad value raises :class:`ConfigError` (exit 2)."""
    return dataclass_from_args(cls, args, prefix=prefix)


def add_torch_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="CPU threads for torch (neural and Gaussian stages); see docs/benchmarks.md for why 1 is the default",
    )


def error(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


__all__ = [
    "ConfigError",
    "Formatter",
    "add_command",
    "add_config",
    "add_torch_threads",
    "config_from_args",
    "error",
]
