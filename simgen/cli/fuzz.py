"""A corruption fuzzer for the scene format: damage one file of a valid scene, run ``simgen validate`` and
``simgen build``, classify what happened.

Every kind of file in a scene (transforms.json, RGB, depth and panoptic PNGs, gt.json, GT panoptic PNGs,
the GT mesh and its labels) gets truncations, byte flips, wrong modes and sizes, swapped files, deletions,
empty files, folders in place of files, symlinks out of the scene folder, and (for the JSON files)
wrong-typed, missing, escaping or absurdly nested values. The contract checked (issue #19): each command
either succeeds or exits non-zero with a message naming the damaged file (and frame); it never ends in a
traceback and a failed build never leaves an output folder behind.

Used by tests/test_fuzz_scene.py (a seeded sample of a few seconds) and bench/bench_fuzz.py (many more
cases, counts for docs/benchmarks.md). Cases are generated from a seed alone, so a failing case is
reproduced by its seed and index.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import random
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from simgen.data.camera import Intrinsics, look_at
from simgen.data.scene import Category, Segment
from simgen.data.writer import SceneWriter

K = Intrinsics(20.0, 20.0, 8.0, 6.0, 16, 12)
CATEGORIES = [Category(1, "floor", False), Category(7, "chair", True)]
N_FRAMES = 3

# File kinds and the relative paths of each in the base scene.
KINDS: dict[str, list[str]] = {
    "transforms": ["transforms.json"],
    "rgb": [f"rgb/{i:05d}.png" for i in range(N_FRAMES)],
    "depth": [f"depth/{i:05d}.png" for i in range(N_FRAMES)],
    "panoptic": [f"panoptic/{i:05d}.png" for i in range(N_FRAMES)],
    "gt_json": ["gt/gt.json"],
    "gt_panoptic": [f"gt/panoptic/{i:05d}.png" for i in range(N_FRAMES)],
    "gt_mesh": ["gt/mesh.ply"],
    "gt_labels": ["gt/mesh_panoptic.npy"],
}
IMAGE_KINDS = ("rgb", "depth", "panoptic", "gt_panoptic")
JSON_KINDS = ("transforms", "gt_json")

# Outcomes. "valid"/"built": the command succeeded; "refused": non-zero exit with a message naming the
# damaged file; the rest break the contract.
OK_OUTCOMES = ("valid", "built", "refused")
BAD_OUTCOMES = ("unnamed", "accepted", "traceback", "partial")


def make_base_scene(root: Path) -> Path:
    """A valid 3-frame 16x12 scene (floor + chair) with every optional file: gt.json, GT PNGs, mesh, labels."""
    import trimesh

    w = SceneWriter(root, K, CATEGORIES)
    for i in range(N_FRAMES):
        pan = np.zeros((12, 16), np.int32)
        floor_id, chair_id = 100 + 3 * i, 5000 + 11 * i
        pan[8:, :] = floor_id
        pan[2:6, 4:9] = chair_id
        gt = np.where(pan == floor_id, 1, np.where(pan == chair_id, 2, 0))
        depth = np.full((12, 16), 1.0 + 0.1 * i)
        rgb = np.full((12, 16, 3), 40 * i + 30, np.uint8)
        segs = [Segment(floor_id, 1, 0.9), Segment(chair_id, 7, 0.8)]
        w.add_frame(rgb, depth, pan, segs, look_at([0.2 * i, 0, 1.5], [0.2 * i + 1, 0, 1.0]), gt_panoptic=gt)
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    w.write_gt_mesh(box, np.where(box.vertices[:, 2] < 0, 1, 2).astype(np.int32))
    w.finish({1: 1, 2: 7}, test=["rgb/00001.png"])
    return root


@dataclass
class Case:
    """One corruption: ``op`` applied to the file ``target`` (relative to the scene folder)."""

    index: int
    kind: str
    op: str
    target: str
    detail: str = ""
    must_refuse: bool = False  # accepting the scene would be a bug (truncated image, escaping path ...)
    seed: int = 0

    @property
    def label(self) -> str:
        return f"#{self.index} {self.kind}/{self.op} {self.target} {self.detail}".rstrip()


@dataclass
class Outcome:
    case: Case
    stage: str  # "validate" or "build"
    result: str  # one of OK_OUTCOMES or BAD_OUTCOMES
    rc: int | None
    message: str = ""


@dataclass
class Tally:
    """Counts of outcomes by stage and result, and the contract breaches in full."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        row = self.counts.setdefault(o.stage, {})
        row[o.result] = row.get(o.result, 0) + 1
        if o.result in BAD_OUTCOMES:
            self.failures.append(o)

    def total(self, stage: str) -> int:
        return sum(self.counts.get(stage, {}).values())


# ----------------------------------------------------------------------------- case generation

IMAGE_OPS = ("truncate", "flip", "mode", "size", "swap_frame", "swap_kind", "delete", "empty", "directory",
             "symlink_out", "text", "jpeg")  # fmt: skip
BINARY_OPS = ("truncate", "flip", "swap_kind", "delete", "empty", "directory", "symlink_out", "text")
JSON_OPS = ("truncate", "flip", "json_value", "json_delete", "json_nest", "json_path", "delete", "empty",
            "directory", "symlink_out", "swap_kind")  # fmt: skip
# Values of the wrong type or range that a careless writer produces.
BAD_VALUES: list[Any] = ["320", "", True, None, -1, 0, 1e308, -1e308, 2**70, 0.5, [], {}, [1, 2], {"a": 1},
                         "x" * 300, float("nan"), float("inf")]  # fmt: skip


def generate_cases(n: int, seed: int) -> list[Case]:
    """``n`` cases, round-robin over the file kinds so every kind is covered even for small ``n``."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    cases = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        ops = JSON_OPS if kind in JSON_KINDS else IMAGE_OPS if kind in IMAGE_KINDS else BINARY_OPS
        op = ops[(i // len(kinds) + rng.randrange(len(ops))) % len(ops)]
        target = rng.choice(KINDS[kind])
        must = op in ("truncate", "delete", "empty", "directory", "symlink_out", "text", "json_nest")
        if kind == "gt_json" and op == "delete":
            must = False  # ground truth is optional: without gt.json the scene simply has none
        if kind in IMAGE_KINDS and op == "size":
            must = True
        cases.append(Case(i, kind, op, target, must_refuse=must, seed=rng.randrange(2**31)))
    return cases


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            out += _json_paths(v, prefix + (k,))
    return out


def _set(node: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def apply_case(case: Case, scene: Path, outside: Path) -> str:
    """Damage ``scene`` (a fresh copy of the base scene) as ``case`` says; returns a one-line detail.

    ``outside`` is a folder beside the scene holding intact copies of its files, the targets of the
    symlink and escaping-path cases (so only the containment rule can refuse them).
    """
    rng = random.Random(case.seed)
    path = scene / case.target
    data = path.read_bytes()
    op = case.op
    if op == "truncate":
        cut = rng.choice([0.1, 0.5, 0.9, None])
        # None: only the last byte goes (for JSON the last non-blank one: a dropped newline is no damage)
        keep = len(data.rstrip()) - 1 if cut is None else int(len(data) * cut)
        path.write_bytes(data[:keep])
        return f"kept {keep}/{len(data)} bytes"
    if op == "flip":
        buf = bytearray(data)
        k = rng.choice([1, 2, 8])
        where = sorted(rng.randrange(len(buf)) for _ in range(k))
        for j in where:
            buf[j] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(buf))
        return f"flipped bits at {where}"
    if op == "mode":
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        mode = rng.choice(["L", "RGBA", "I;16", "1", "P", "LA"])
        if mode == "I;16":
            img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
        else:
            img = Image.fromarray(arr).convert(mode)
        img.save(path, format="PNG")
        # What the format allows: any mode for RGB (converted), RGB or RGBA for panoptic PNGs (alpha
        # ignored), 16-bit only for depth.
        allowed = {"rgb": True, "panoptic": mode == "RGBA", "gt_panoptic": mode == "RGBA", "depth": False}
        case.must_refuse = not allowed[case.kind] and not (case.kind == "depth" and mode == "I;16")
        return f"re-saved as mode {mode}"
    if op == "size":
        with Image.open(path) as im:
            w, h = rng.choice([(15, 12), (16, 13), (32, 24), (1, 1), (12, 16)])
            im.resize((w, h)).save(path, format="PNG")
        return f"resized to {w}x{h}"
    if op == "jpeg":
        with Image.open(path) as im:
            im.convert("RGB").save(path, format="JPEG")
        return "JPEG data under a .png name"
    if op == "swap_frame":
        others = [p for p in KINDS[case.kind] if p != case.target]
        other = scene / rng.choice(others)
        _swap(path, other)
        return f"swapped with {other.relative_to(scene)}"
    if op == "swap_kind":
        pool = [p for k, ps in KINDS.items() if k != case.kind for p in ps]
        other = scene / rng.choice(pool)
        _swap(path, other)
        return f"swapped with {other.relative_to(scene)}"
    if op == "delete":
        path.unlink()
        return "deleted"
    if op == "empty":
        path.write_bytes(b"")
        return "emptied"
    if op == "directory":
        path.unlink()
        path.mkdir()
        return "replaced by a folder"
    if op == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
        return "replaced by text"
    if op == "symlink_out":
        copy = outside / case.target
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(data)
        path.unlink()
        if rng.random() < 0.5:
            path.symlink_to(copy)
            return f"symlink to {copy}"
        # the whole folder holding the file: rgb/ -> outside/rgb
        folder = path.parent
        if folder == scene:
            path.symlink_to(copy)
            return f"symlink to {copy}"
        shutil.copytree(folder, outside / folder.relative_to(scene), dirs_exist_ok=True)
        shutil.rmtree(folder)
        folder.symlink_to(outside / folder.relative_to(scene), target_is_directory=True)
        return f"folder {folder.relative_to(scene)} is a symlink out"
    # JSON structure mutations
    meta = json.loads(data)
    if op == "json_nest":
        depth = rng.choice([2_000, 100_000])
        path.write_text("[" * depth + "]" * depth if rng.random() < 0.5 else '{"frames": ' + "[" * depth)
        return f"nested {depth} deep"
    paths = _json_paths(meta)
    where = rng.choice(paths)
    if op == "json_value":
        value = rng.choice(BAD_VALUES)
        _set(meta, where, value)
        detail = f"{'/'.join(map(str, where))} = {json.dumps(value)[:40]}"
    elif op == "json_delete":
        _set(meta, where, None, delete=True)
        detail = f"deleted {'/'.join(map(str, where))}"
    else:  # json_path: a file path that leaves the folder (to an intact copy, or to a system file)
        strings = [p for p in paths if str(p[-1]).endswith("path")] or paths
        where = rng.choice(strings)
        target = scene / KINDS["rgb"][0]
        copy = outside / "escaped.png"
        copy.write_bytes(target.read_bytes())
        value = rng.choice([f"../{outside.name}/escaped.png", str(copy), "../../../../../../etc/passwd",
                            "rgb/../../" + scene.name + "/rgb/00000.png"])  # fmt: skip
        _set(meta, where, value)
        detail = f"{'/'.join(map(str, where))} = {value}"
        case.must_refuse = not value.startswith("rgb/../../")  # that one leads back inside: allowed
    path.write_text(json.dumps(meta))
    return detail


def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


# ----------------------------------------------------------------------------- running


def _names(case: Case, scene: Path) -> list[str]:
    """Strings one of which a refusal must contain: the damaged file (or, for JSON edits, any scene file:
    a bad value there is reported against the file it names, e.g. a missing image)."""
    if case.kind in JSON_KINDS:
        return [str(scene), scene.name]
    names = [case.target]
    if "swapped with " in case.detail:
        names.append(case.detail.split("swapped with ")[1])
    if case.detail.startswith("folder "):  # the folder is the damage: any file under it names it
        names.append(case.detail.split()[1] + "/")
    return names


def _call(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run ``simgen ARGV`` in this process: (exit code, stderr + stdout, traceback text or None)."""
    from simgen.cli import main

    out, err = _io.StringIO(), _io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as e:  # argparse
        return (e.code if isinstance(e.code, int) else 1), err.getvalue() + out.getvalue(), None
    except Exception:
        return None, err.getvalue() + out.getvalue(), traceback.format_exc()
    return rc, err.getvalue() + out.getvalue(), None


def classify(case: Case, stage: str, scene: Path, out_dir: Path | None = None) -> Outcome:
    if stage == "validate":
        rc, text, tb = _call(["validate", str(scene)])
    else:
        assert out_dir is not None
        rc, text, tb = _call(["build", str(scene), "-o", str(out_dir), "--no-gaussians", "--no-export", "-q"])
    if tb is not None or "Traceback" in text:
        return Outcome(case, stage, "traceback", rc, (tb or text)[-2000:])
    if stage == "build" and out_dir is not None:
        complete = (out_dir / "build.json").is_file()
        if (rc == 0) != complete or (rc != 0 and out_dir.exists()):
            return Outcome(case, stage, "partial", rc, text[-2000:])
    if rc == 0:
        if case.must_refuse:
            return Outcome(case, stage, "accepted", rc, text[-500:])
        return Outcome(case, stage, "valid" if stage == "validate" else "built", rc)
    errors = text.split("problem(s):", 1)[-1]
    if not any(n in errors for n in _names(case, scene)):
        return Outcome(case, stage, "unnamed", rc, text[-2000:])
    return Outcome(case, stage, "refused", rc, errors.strip().splitlines()[0][:300] if errors.strip() else "")


def run_cases(
    cases: list[Case],
    base: Path,
    work: Path,
    build_every: int = 0,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Tally:
    """Apply each case to a fresh copy of ``base`` under ``work``; validate it, and build every
    ``build_every``-th case (0: never). Returns the tally; ``on_outcome`` sees each outcome."""
    tally = Tally()
    for case in cases:
        root = work / f"case{case.index:05d}"
        scene, outside = root / "scene", root / "outside"
        shutil.copytree(base, scene, symlinks=True)
        outside.mkdir()
        case.detail = apply_case(case, scene, outside)
        outcomes = [classify(case, "validate", scene)]
        if build_every and case.index % build_every == 0:
            outcomes.append(classify(case, "build", scene, root / "build"))
        for o in outcomes:
            tally.add(o)
            if on_outcome is not None:
                on_outcome(o)
        _rmtree(root)
    return tally


def _rmtree(root: Path) -> None:
    # shutil.rmtree removes symlinks without following them: the intact copies outside stay untouched
    # until their own folder goes.
    shutil.rmtree(root, ignore_errors=True)
