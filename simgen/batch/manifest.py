"""The batch manifest: which scenes, from where, through which stages, with which settings.

A manifest is a YAML or JSON file (docs/cluster.md)::

    defaults:                      # optional: settings shared by every scene
      method: fusion               # or neural
      stages: [validate, build, export, check, eval]
      fusion: {voxel_size: 0.03}   # any FusionConfig field
      export: {max_hulls: 8}       # any ExportConfig field (also: neural, splat, eval, import, check)
      resources:                   # what each stage's Ray task declares
        build: {num_cpus: 1, memory_gb: 2}
    scenes:
      - name: a
        path: scenes/a             # a scene folder (docs/scene-format.md), relative to the manifest
      - name: s0000
        path: scannet:/data/scans/scene0000_00    # an importer source: imported first
        import: {labels_from_gt: true, every: 10}
        fusion: {voxel_size: 0.02}                 # per-scene override of the defaults

Every key of ``defaults`` may also appear in a scene entry, where it overrides the default (nested
config sections merge field by field). Unknown keys and bad values are refused with the scene and key
named. The minimal manifest is ``{"scenes": [{"name": "a", "path": "scenes/a"}]}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simgen.eval.config import EvalConfig
from simgen.export.config import ExportConfig
from simgen.pipeline import METHODS
from simgen.recon.fusion.config import FusionConfig
from simgen.recon.neural.config import NeuralConfig
from simgen.splat.config import SplatConfig

#: every stage, in the order a scene goes through them
STAGES: tuple[str, ...] = ("import", "validate", "build", "gaussians", "export", "check", "eval")
#: the stages a scene runs when neither the manifest nor ``--stages`` names them (import is added for
#: importer sources). Gaussians are left out: on CPU they cost more than the rest together.
DEFAULT_STAGES: tuple[str, ...] = ("validate", "build", "export", "check", "eval")
#: stage -> stages whose outputs it reads (gaussians are optional for export and eval: used when run)
REQUIRES: dict[str, tuple[str, ...]] = {
    "import": (),
    "validate": (),
    "build": ("validate",),
    "gaussians": ("build",),
    "export": ("build",),
    "check": ("export",),
    "eval": ("build",),
}
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {"export": ("gaussians",), "eval": ("gaussians",)}
#: importer sources: ``<dataset>:<path>`` in a scene's ``path``
IMPORTERS: tuple[str, ...] = ("scannet", "replica")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ManifestError(ValueError):
    """A manifest that cannot be run; the message names the file, the scene and the key."""


@dataclass(frozen=True)
class Resources:
    """What one stage's Ray task declares to the scheduler (Ray's logical resources)."""

    num_cpus: float = 1.0
    """CPU cores reserved for the task"""
    num_gpus: float | None = None
    """GPUs reserved; None: 1 for the neural build and the Gaussian stage when the cluster has GPUs, else 0"""
    memory_gb: float = 0.0
    """memory reserved in GiB (0: none declared); a node runs only the tasks whose reservations fit"""

    def __post_init__(self) -> None:
        if not self.num_cpus >= 0 or (self.num_gpus is not None and not self.num_gpus >= 0):
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if not self.memory_gb >= 0:
            raise ValueError(f"memory_gb must be >= 0, got {self.memory_gb}")


@dataclass(frozen=True)
class CheckSettings:
    """Settings of the check stage (``simgen check``)."""

    validator: bool = True
    """run libsdformat's validator (``gz sdf -k`` / ``ign sdf -k``) on every SDF file"""
    workers: int = 1
    """validator processes"""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


def _default_resources() -> dict[str, Resources]:
    return {
        "import": Resources(1, 0, 1.0),
        "validate": Resources(1, 0, 0.5),
        "build": Resources(1, None, 2.0),
        "gaussians": Resources(1, None, 2.0),
        "export": Resources(1, 0, 2.0),
        "check": Resources(1, 0, 1.0),
        "eval": Resources(1, 0, 2.0),
    }


@dataclass(frozen=True)
class ScenePlan:
    """One scene of a batch with every setting resolved (picklable: it travels to the Ray workers)."""

    name: str
    source: str
    """the scene folder, or the importer source folder when ``dataset`` is set (absolute)"""
    dataset: str | None
    """importer (``scannet`` / ``replica``) or None for a scene folder"""
    stages: tuple[str, ...]
    method: str = "fusion"
    torch_threads: int = 1
    fusion: FusionConfig = field(default_factory=FusionConfig)
    neural: NeuralConfig = field(default_factory=NeuralConfig)
    splat: SplatConfig = field(default_factory=SplatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    check: CheckSettings = field(default_factory=CheckSettings)
    importer: Any = None
    """the importer's config (ScanNetConfig / ReplicaConfig) when ``dataset`` is set"""
    resources: dict[str, Resources] = field(default_factory=_default_resources)

    def scene_dir(self, out_root: Path) -> Path:
        """The scene folder the build reads: the imported copy under ``OUT/<name>/scene`` or the source."""
        return Path(out_root) / self.name / "scene" if self.dataset else Path(self.source)

    def build_dir(self, out_root: Path) -> Path:
        """``OUT/<name>/build``: the build folder (mesh, Gaussians, export, eval/)."""
        return Path(out_root) / self.name / "build"

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The settings a stage's output depends on (JSON-ready; hashed into its fingerprint)."""
        asdict = dataclasses.asdict
        if stage == "import":
            return {"dataset": self.dataset, "config": asdict(self.importer) if self.importer else None}
        if stage == "validate":
            return {}
        if stage == "build":
            cfg = self.fusion if self.method == "fusion" else self.neural
            return {"method": self.method, "config": asdict(cfg)}
        if stage == "gaussians":
            return {"config": asdict(self.splat)}
        if stage == "export":
            return {"config": asdict(self.export)}
        if stage == "check":
            return {"config": asdict(self.check)}
        if stage == "eval":
            return {"config": asdict(self.eval)}
        raise ValueError(f"unknown stage {stage!r}")


@dataclass(frozen=True)
class Manifest:
    path: Path
    scenes: tuple[ScenePlan, ...]


# ----------------------------------------------------------------------------- value checking
def _base(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as a field of type ``tp`` wants it; raises ValueError saying what was expected."""
    tp, optional = _base(tp)
    if value is None:
        if optional:
            return None
        raise ValueError("must not be null")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list, got {value!r}")
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [_coerce(inner[0], v) for v in value] if inner else list(value)
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        return value
    return value


def _norm(key: Any) -> str:
    return str(key).replace("-", "_")


def apply_overrides(base: Any, values: dict[str, Any], where: str) -> Any:
    """``dataclasses.replace(base, **values)`` with every key and value checked; the config's own
    checks (``__post_init__``, ``validate()``) run too. Raises :class:`ManifestError` naming ``where``
    and the key."""
    if not isinstance(values, dict):
        raise ManifestError(f"{where}: expected a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    kw = {}
    for key, value in values.items():
        k = _norm(key)
        if k not in names:
            raise ManifestError(
                f"{where}.{key}: unknown setting of {type(base).__name__} (known: {', '.join(sorted(names))})"
            )
        try:
            kw[k] = _coerce(hints[k], value)
        except ValueError as e:
            raise ManifestError(f"{where}.{key}: {e}") from None
    try:
        cfg = dataclasses.replace(base, **kw)  # validates in the config's __post_init__
    except (ValueError, TypeError) as e:
        raise ManifestError(f"{where}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------- parsing
SECTIONS: dict[str, type] = {
    "fusion": FusionConfig,
    "neural": NeuralConfig,
    "splat": SplatConfig,
    "export": ExportConfig,
    "eval": EvalConfig,
    "check": CheckSettings,
}
SETTING_KEYS = {"method", "torch_threads", "stages", "import", "resources", *SECTIONS}
SCENE_KEYS = {"name", "path"} | SETTING_KEYS


def _importer_config(dataset: str):
    if dataset == "scannet":
        from simgen.data.importers.scannet import ScanNetConfig

        return ScanNetConfig(quiet=True)
    from simgen.data.importers.replica import ReplicaConfig

    return ReplicaConfig(quiet=True)


def _merge(defaults: dict[str, Any], scene: dict[str, Any]) -> dict[str, Any]:
    """Scene settings over the defaults; config sections (and resources per stage) merge field by field."""
    out = {_norm(k): v for k, v in defaults.items()}
    for key, value in scene.items():
        k = _norm(key)
        if k in (*SECTIONS, "import") and isinstance(out.get(k), dict) and isinstance(value, dict):
            out[k] = {**out[k], **value}
        elif k == "resources" and isinstance(out.get(k), dict) and isinstance(value, dict):
            merged = dict(out[k])
            for stage, res in value.items():
                prev = merged.get(stage)
                merged[stage] = {**prev, **res} if isinstance(prev, dict) and isinstance(res, dict) else res
            out[k] = merged
        else:
            out[k] = value
    return out


def _stages(value: Any, where: str, dataset: str | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ManifestError(f"{where}.stages: expected a non-empty list of stages ({', '.join(STAGES)})")
    unknown = [s for s in value if s not in STAGES]
    if unknown:
        raise ManifestError(f"{where}.stages: unknown stage(s) {unknown} (known: {', '.join(STAGES)})")
    chosen = set(value)
    if dataset:
        chosen.add("import")
    elif "import" in chosen:
        raise ManifestError(f"{where}.stages: 'import' needs an importer source (path: scannet:/...)")
    for s in chosen:
        missing = [r for r in REQUIRES[s] if r not in chosen]
        if missing:
            raise ManifestError(
                f"{where}.stages: {s!r} needs {', '.join(repr(m) for m in missing)} in the stages too"
            )
    return tuple(s for s in STAGES if s in chosen)


def _source(value: Any, where: str, base: Path) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}.path: expected a folder or an importer source such as scannet:/data/x")
    dataset = None
    head, sep, rest = value.partition(":")
    if sep and head in IMPORTERS:
        dataset, value = head, rest
    elif sep and re.fullmatch(r"[a-z][a-z0-9+.-]+", head) and rest.startswith("/") and len(head) > 1:
        raise ManifestError(f"{where}.path: unknown importer {head!r} (known: {', '.join(IMPORTERS)})")
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else base / path).resolve()), dataset


def plan_scene(
    entry: dict[str, Any], defaults: dict[str, Any], where: str, base: Path, stages: tuple[str, ...] | None
) -> ScenePlan:
    """One scene entry (merged over ``defaults``) resolved into a :class:`ScenePlan`."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with 'name' and 'path', got {entry!r}")
    name = entry.get("name")
    for key in entry:
        if _norm(key) not in SCENE_KEYS:
            label = f"{where} ({name})" if isinstance(name, str) else where
            raise ManifestError(f"{label}.{key}: unknown key (known: {', '.join(sorted(SCENE_KEYS))})")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(
            f"{where}.name: {name!r} is not a usable folder name (letters, digits, '_', '.', '-'; up to 128)"
        )
    where = f"{where} ({name})"
    if "path" not in entry:
        raise ManifestError(f"{where}: no 'path' (a scene folder or an importer source)")
    source, dataset = _source(entry["path"], where, base)
    s = _merge(defaults, {k: v for k, v in entry.items() if k not in ("name", "path")})
    method = s.get("method", "fusion")
    if method not in METHODS:
        raise ManifestError(f"{where}.method: must be one of {', '.join(METHODS)}, got {method!r}")
    threads = s.get("torch_threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ManifestError(f"{where}.torch_threads: must be an integer >= 1, got {threads!r}")
    chosen = _stages(stages if stages is not None else s.get("stages", DEFAULT_STAGES), where, dataset)
    configs = {
        k: apply_overrides(cls(), s.get(k) or {}, f"{where}.{k}")
        for k, cls in SECTIONS.items()
        if k not in ("eval",)
    }
    # Batch writes metrics only (the picture report is opt-in) and never draws progress bars in workers.
    eval_defaults = dataclasses.replace(EvalConfig(), pictures=False, quiet=True)
    configs["eval"] = apply_overrides(eval_defaults, s.get("eval") or {}, f"{where}.eval")
    # The world is named after the scene (worlds/<name>.sdf), not after its build folder OUT/<name>/build.
    configs["export"] = dataclasses.replace(
        configs["export"], quiet=True, scene_name=configs["export"].scene_name or name
    )
    importer = None
    if dataset:
        importer = apply_overrides(_importer_config(dataset), s.get("import") or {}, f"{where}.import")
    elif s.get("import"):
        raise ManifestError(f"{where}.import: import settings need an importer source (path: scannet:/...)")
    resources = _default_resources()
    raw_res = s.get("resources") or {}
    if not isinstance(raw_res, dict):
        raise ManifestError(
            f"{where}.resources: expected a mapping stage -> {{num_cpus, num_gpus, memory_gb}}"
        )
    for stage, values in raw_res.items():
        if stage not in STAGES:
            raise ManifestError(f"{where}.resources.{stage}: unknown stage (known: {', '.join(STAGES)})")
        resources[stage] = apply_overrides(resources[stage], values, f"{where}.resources.{stage}")
    # Processes a stage starts follow the CPUs its task declares, unless the manifest sets them.
    for section, stage in (("export", "export"), ("check", "check")):
        if "workers" not in {_norm(k) for k in (s.get(section) or {})}:
            workers = max(1, int(resources[stage].num_cpus))
            configs[section] = dataclasses.replace(configs[section], workers=workers)
    return ScenePlan(
        name=name,
        source=source,
        dataset=dataset,
        stages=chosen,
        method=method,
        torch_threads=threads,
        importer=importer,
        resources=resources,
        **configs,
    )


def read_manifest_file(path: str | Path) -> dict[str, Any]:
    """The manifest's mapping from a ``.json``, ``.yaml`` or ``.yml`` file (JSON is valid YAML too)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with a 'scenes' list, got {type(data).__name__}")
    return data


def load_manifest(path: str | Path, stages: tuple[str, ...] | None = None) -> Manifest:
    """Read and resolve a manifest; every scene's settings are checked before anything runs.

    Args:
        path: the manifest (YAML or JSON). Relative scene paths are relative to its folder.
        stages: run these stages for every scene (overrides the manifest's ``stages``).
    Raises:
        ManifestError: naming the file, the scene and the key.
    """
    path = Path(path)
    data = read_manifest_file(path)
    unknown = set(data) - {"defaults", "scenes"}
    if unknown:
        raise ManifestError(f"{path}: unknown top-level key(s) {sorted(unknown)} (known: defaults, scenes)")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path}: 'defaults' must be a mapping")
    for key in defaults:
        if _norm(key) not in SETTING_KEYS:
            raise ManifestError(
                f"{path}: defaults.{key}: unknown key (known: {', '.join(sorted(SETTING_KEYS))})"
            )
    scenes = data.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise ManifestError(f"{path}: 'scenes' must be a non-empty list of {{name, path}} entries")
    base = path.resolve().parent
    plans = [plan_scene(e, defaults, f"{path}: scenes[{i}]", base, stages) for i, e in enumerate(scenes)]
    seen: dict[str, int] = {}
    for i, p in enumerate(plans):
        # Case-insensitive: two names differing only in case share a folder on macOS / Windows shares.
        if p.name.lower() in seen:
            raise ManifestError(
                f"{path}: scenes[{i}] ({p.name}): name used by scenes[{seen[p.name.lower()]}] too "
                "(each scene writes OUT/<name>/)"
            )
        seen[p.name.lower()] = i
    return Manifest(path, tuple(plans))
