"""Typed dataclass configuration, overridable from the command line.

Each stage defines one dataclass of its settings (fields with defaults and a ``help`` in the field
metadata). :func:`add_dataclass_args` exposes every field as ``--field-name`` (nested dataclasses as
``--group.field-name``); :func:`dataclass_from_args` builds the instance back from the parsed args.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names the flag or field."""


def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be at least 1 (threads, workers)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace(".", "__")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip ``X | None``; returns (type, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, prefix: str = ""
) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (recursively for nested dataclasses)."""
    hints = typing.get_type_hints(cls)
    # A caller that already made a group (argparse deprecates nesting them) gets the flags in that group.
    nest = not prefix and isinstance(parser, argparse.ArgumentParser)
    group = parser.add_argument_group(f"{cls.__name__} options") if nest else parser
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_dataclass_args(parser, tp, prefix=f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": _dest(prefix, f.name), "default": default}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            (inner, *_) = typing.get_args(tp) or (str,)
            kw.update(nargs="+", type=inner if inner is not Ellipsis else str)
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            kw.update(choices=choices, type=type(choices[0]))
        else:
            kw["type"] = tp
        group.add_argument(_flag(prefix, f.name), help=help_text or " ", **kw)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """Build ``cls`` from a namespace filled by :func:`add_dataclass_args`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            values[f.name] = dataclass_from_args(tp, args, prefix=f"{prefix}{f.name}.")
        else:
            v = getattr(args, _dest(prefix, f.name))
            if typing.get_origin(tp) is tuple and isinstance(v, list):
                v = tuple(v)
            values[f.name] = v
    try:
        cfg = cls(**values)  # configs validate themselves in __post_init__
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (written beside every output)."""
    return dataclasses.asdict(cfg)
