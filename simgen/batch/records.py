"""Stage completion records: what makes a rerun skip finished work and redo the rest.

After a stage of a scene succeeds its task writes ``OUT/<scene>/stages/<stage>.json`` (atomically, after
the stage's own outputs are complete)::

    {"stage": "build", "fingerprint": "<sha256>", "inputs": {...}, "seconds": 7.2,
     "finished": "2026-12-06T08:00:00Z", "host": "node-3", "attempt": 1, "result": {...}}

The fingerprint hashes the stage name, the simgen version, the stage's settings and the fingerprints of
the stages it reads from (plus, for the first stage, the source folder's path and modification times). A
stage is done when its record's fingerprint equals the one the driver computes now *and* its outputs are
still there; changing a setting therefore redoes that stage and every stage after it, and nothing else.
A failed stage writes ``<stage>.error.json`` instead (removed when the stage later succeeds).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from simgen import folders
from simgen.data import io

STAGES_DIR = "stages"
LOGS_DIR = "logs"
RECORD_SUFFIX = ".json"
ERROR_SUFFIX = ".error.json"


def record_path(scene_root: Path, stage: str) -> Path:
    return Path(scene_root) / STAGES_DIR / f"{stage}{RECORD_SUFFIX}"


def error_path(scene_root: Path, stage: str) -> Path:
    return Path(scene_root) / STAGES_DIR / f"{stage}{ERROR_SUFFIX}"


def log_path(scene_root: Path, stage: str) -> Path:
    return Path(scene_root) / LOGS_DIR / f"{stage}.log"


def digest(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _stat(path: Path) -> list[Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def folder_state(folder: Path, files: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What identifies a source folder's contents cheaply: its absolute path and the modification time and
    size of the named index files (a scene's ``transforms.json`` and ``gt/gt.json``; by default every
    entry at the top of the folder, for importer sources).

    Image files are not hashed: rewriting an image in place without touching its index is not detected
    (``simgen batch --force`` redoes everything); hashing every image of hundreds of scans on a shared
    file system on each rerun would cost more than it saves."""
    folder = Path(folder).resolve()
    if files is None:  # an importer's source: every entry at its top (a sub-folder's mtime changes when
        # a file is added to or removed from it)
        try:
            files = tuple(sorted(p.name for p in folder.iterdir()))
        except OSError:
            files = ()
    # Not the folder's own mtime: builds written into the scene folder (simgen_out/) change it.
    return {"path": str(folder), **{f: _stat(folder / f) for f in files}}


def fingerprint(stage: str, config: dict[str, Any], upstream: dict[str, str], inputs: dict[str, Any]) -> str:
    """The fingerprint of a stage run: stage, simgen version, settings, upstream fingerprints, inputs."""
    from simgen import __version__

    return digest(
        {"stage": stage, "simgen": __version__, "config": config, "upstream": upstream, "inputs": inputs}
    )


def read_record(scene_root: Path, stage: str) -> dict[str, Any] | None:
    """The stage's completion record, None when absent or unreadable (an unreadable record means redo)."""
    try:
        data = json.loads(record_path(scene_root, stage).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) else None


def read_error(scene_root: Path, stage: str) -> dict[str, Any] | None:
    try:
        data = json.loads(error_path(scene_root, stage).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(scene_root: Path, stage: str, record: dict[str, Any]) -> None:
    """Write the completion record atomically and drop an earlier failure record of the stage."""
    record = {"stage": stage, "finished": _now(), "host": os.uname().nodename, **record}
    io.write_json(record_path(scene_root, stage), record)
    error_path(scene_root, stage).unlink(missing_ok=True)


def write_error(scene_root: Path, stage: str, error: dict[str, Any]) -> None:
    io.write_json(error_path(scene_root, stage), {"stage": stage, "finished": _now(), **error})


def invalidate(scene_root: Path, stages: tuple[str, ...]) -> None:
    """Remove the completion records of ``stages`` (before a stage they depend on is redone)."""
    for s in stages:
        record_path(scene_root, s).unlink(missing_ok=True)


def outputs_present(stage: str, record: dict[str, Any], scene_dir: Path, build_dir: Path) -> bool:
    """Whether a finished stage's outputs are still where it left them (someone may have deleted them)."""
    result = record.get("result") or {}
    if stage == "import":
        return (scene_dir / "transforms.json").is_file()
    if stage == "build":
        recorded = result.get("build_id")
        return recorded is not None and folders.build_id(build_dir) == recorded
    if stage == "gaussians":
        ply = build_dir / folders.GAUSSIANS_FILE
        return ply.is_file() and folders.ply_build_id(ply) == result.get("build_id")
    if stage == "export":
        return (build_dir / folders.EXPORT_FILE).is_file()
    if stage == "eval":
        return (
            not result.get("metrics_file") or (build_dir / folders.EVAL_DIR / folders.METRICS_JSON).is_file()
        )
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
