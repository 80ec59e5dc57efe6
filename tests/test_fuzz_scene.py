"""Hostile and careless scene input (issue #19): each reported failure reproduced, then a seeded
corruption fuzzer over every kind of file in a scene (a few seconds; bench/bench_fuzz.py runs more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simgen.cli import fuzz, main
from simgen.data import io
from simgen.data.scene import load_scene, validate_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fuzz.make_base_scene(tmp_path_factory.mktemp("fuzz") / "base")


@pytest.fixture
def scene(base: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(base, tmp_path / "scene"))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def simgen(*args: str) -> subprocess.CompletedProcess:
    """``simgen ARGS`` in a subprocess: a traceback shows on stderr exactly as a user would see it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "simgen.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def problems(root: Path) -> list[str]:
    return [str(p) for p in validate_scene(root)[1]]


def edit(root: Path, fn, name: str = "transforms.json") -> None:
    path = root / name
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- items 1 and 2


@pytest.mark.slow
def test_truncated_depth_png_is_reported_by_validate_and_build(scene: Path, tmp_path: Path) -> None:
    truncate(scene / "depth/00000.png")
    r = simgen("validate", str(scene))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "depth/00000.png (frame 0): unreadable depth image: corrupt or truncated" in r.stderr
    out = tmp_path / "out"
    r = simgen("build", str(scene), "-o", str(out), "--no-gaussians", "--no-export", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "depth/00000.png (frame 0)" in r.stderr and not out.exists()


def test_truncated_rgb_png_fails_validation(scene: Path) -> None:
    truncate(scene / "rgb/00002.png")
    assert [p for p in problems(scene) if "rgb/00002.png (frame 2): unreadable RGB image" in p]


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_every_truncation_is_caught(scene: Path, keep: float) -> None:
    """Even a PNG that lost only its last byte (pixels complete, IEND cut) is refused."""
    path = scene / "panoptic/00001.png"
    data = path.read_bytes()
    path.write_bytes(data[:-1] if keep == -1 else data[: int(len(data) * keep)])
    assert any("panoptic/00001.png (frame 1)" in p for p in problems(scene))


def test_image_decode_error_during_build_names_file_and_frame(scene: Path) -> None:
    """A file damaged after validation (or read without it) still fails with file and frame, as the
    ValueError every stage reports as ``error: ...``."""
    s = load_scene(scene)
    truncate(s.frames[1].rgb_path)
    with pytest.raises(io.ImageError, match=r"rgb/00001\.png \(frame 1\): corrupt or truncated image"):
        s.rgb(1)
    with pytest.raises(ValueError, match=r"gt/panoptic/00002\.png \(frame 2\)"):
        truncate(s.gt.panoptic_paths[2])
        s.gt.panoptic(2)


def test_truncated_rgb_during_build_is_one_error_line(
    scene: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The build path itself (not only validation) turns a decode error into ``error: <file> (frame i)``:
    the image is damaged between validation and the fusion loop reading it."""
    import simgen.pipeline as pipeline

    real = pipeline.load_scene

    def load_then_damage(root):
        s = real(root)
        truncate(s.frames[2].rgb_path)
        return s

    monkeypatch.setattr(pipeline, "load_scene", load_then_damage)
    out = tmp_path / "out"
    assert main(["build", str(scene), "-o", str(out), "--no-gaussians", "--no-export", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rgb/00002.png (frame 2): corrupt or truncated image" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- item 7: paths stay inside


@pytest.mark.parametrize(
    "value, why",
    [
        ("../other_scene/rgb/00000.png", "through '..'"),
        ("/etc/passwd", "is absolute"),
        ("../../../../etc/passwd", "through '..'"),
    ],
)
def test_paths_outside_the_scene_folder_are_refused(
    scene: Path, value: str, why: str, tmp_path: Path
) -> None:
    other = tmp_path / "other_scene"
    (other / "rgb").mkdir(parents=True)
    (other / "rgb/00000.png").write_bytes((scene / "rgb/00000.png").read_bytes())
    edit(scene, lambda m: m["frames"][1].__setitem__("file_path", value))
    msgs = problems(scene)
    assert any("transforms.json (frame 1): file_path" in p and why in p for p in msgs), msgs
    out = tmp_path / "out"
    assert main(["build", str(scene), "-o", str(out), "--no-gaussians", "--no-export", "-q"]) == 1
    assert not out.exists()


def test_symlink_out_of_the_folder_is_refused(scene: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((scene / "depth/00002.png").read_bytes())
    (scene / "depth/00002.png").unlink()
    (scene / "depth/00002.png").symlink_to(outside)
    msgs = problems(scene)
    assert any(
        "depth_file_path 'depth/00002.png' leads outside the scene folder (through a symlink" in p
        for p in msgs
    )


def test_symlink_and_dotdot_inside_the_folder_are_fine(scene: Path) -> None:
    (scene / "rgb/link.png").symlink_to(scene / "rgb/00000.png")
    edit(scene, lambda m: m["frames"][0].__setitem__("file_path", "rgb/link.png"))
    edit(scene, lambda m: m["frames"][1].__setitem__("depth_file_path", "rgb/../depth/00001.png"))
    assert problems(scene) == []


def test_gt_paths_stay_inside(scene: Path) -> None:
    edit(scene, lambda g: g.__setitem__("mesh_path", "../../x.ply"), "gt/gt.json")
    assert any("gt.json: mesh_path '../../x.ply' leads outside" in p for p in problems(scene))


# ----------------------------------------------------------------------------- item 8: strict types


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("w", "320", 'w must be an integer, got str "320"'),
        ("h", 12.5, "h must be an integer, got float 12.5"),
        ("fl_x", True, "fl_x must be a number, got bool true"),
        ("cx", None, "intrinsics field cx is missing"),
    ],
)
def test_intrinsics_are_strictly_typed(scene: Path, key: str, value, text: str) -> None:
    edit(scene, lambda m: m.__setitem__(key, value))
    msgs = problems(scene)
    assert msgs and all("transforms.json (frame" in p for p in msgs)
    assert any(text in p for p in msgs), msgs


@pytest.mark.parametrize(
    "fn, text",
    [
        (
            lambda m: m.__setitem__("depth_unit_scale_factor", "abc"),
            "depth_unit_scale_factor must be a number",
        ),
        (lambda m: m.__setitem__("test_filenames", 5), "test_filenames must be a list of strings"),
        (lambda m: m["categories"].__setitem__(0, "floor"), "categories[0] is malformed: must be an object"),
        (
            lambda m: m["categories"][1].__setitem__("id", "7"),
            "categories[1] is malformed: id must be an integer",
        ),
        (lambda m: m["frames"][0]["segments_info"].__setitem__(0, 3), "segments_info[0] is malformed"),
        (lambda m: m["frames"][0].__setitem__("segments_info", {"id": 1}), "segments_info must be a list"),
        (lambda m: m["frames"][2].__setitem__("file_path", 7), "file_path must be a non-empty string"),
        # found by bench/bench_fuzz.py: an object as file_path was hashed while matching split names
        (lambda m: m["frames"][0].__setitem__("file_path", {"a": 1}), "file_path must be a non-empty string"),
    ],
)
def test_malformed_fields_are_problems_not_tracebacks(scene: Path, fn, text: str) -> None:
    edit(scene, fn)
    assert any(text in p for p in problems(scene)), problems(scene)


def test_deeply_nested_transforms_json(scene: Path) -> None:
    (scene / "transforms.json").write_text("[" * 100_000)
    msgs = problems(scene)
    assert len(msgs) == 1 and "transforms.json: unreadable JSON" in msgs[0]


def test_corrupt_gt_mesh_and_labels_are_named(scene: Path) -> None:
    truncate(scene / "gt/mesh.ply", 0.3)
    np.save(scene / "gt/mesh_panoptic.npy", np.zeros((2, 3), np.float32))
    msgs = problems(scene)
    assert any("gt/mesh.ply: unreadable GT mesh" in p for p in msgs), msgs
    assert any("gt/mesh_panoptic.npy: unreadable GT mesh labels" in p for p in msgs), msgs


def test_gt_labels_count_must_match_the_mesh(scene: Path) -> None:
    np.save(scene / "gt/mesh_panoptic.npy", np.zeros(3, np.int32))
    assert any("3 labels but the GT mesh has" in p for p in problems(scene))


# ----------------------------------------------------------------------------- the fuzzer


@pytest.mark.slow
def test_fuzz_validate_and_build_never_traceback(base: Path, tmp_path: Path) -> None:
    """A seeded sample over every file kind and corruption: every outcome is success or a refusal naming
    the damaged file; cases that must be refused (truncations, escaping paths ...) are; failed builds
    leave no output folder."""
    cases = fuzz.generate_cases(96, seed=19)
    assert {c.kind for c in cases} == set(fuzz.KINDS)
    tally = fuzz.run_cases(cases, base, tmp_path, build_every=8)
    details = "\n".join(f"{o.stage} {o.result} {o.case.label}\n{o.message}" for o in tally.failures)
    assert not tally.failures, details
    assert tally.total("validate") == 96 and tally.total("build") == 12
    assert tally.counts["validate"].get("refused", 0) > 60  # the sample does damage the scene


def test_fuzz_cases_are_reproducible() -> None:
    a = [(c.kind, c.op, c.target, c.seed) for c in fuzz.generate_cases(40, seed=3)]
    b = [(c.kind, c.op, c.target, c.seed) for c in fuzz.generate_cases(40, seed=3)]
    assert a == b and len({x[1] for x in a}) > 8


def test_a_symlinked_scene_folder_is_fine(scene: Path, tmp_path: Path) -> None:
    """What docs/scene-format.md recommends for data on another disk: link the folder, not its files."""
    link = tmp_path / "linked"
    link.symlink_to(scene, target_is_directory=True)
    assert problems(link) == []
