"""``simgen.build`` (the library entry the CLI and batch call) and the one rule for output folders:
a build folder holds one build, and nothing pairs one build's outputs with another's."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import simgen
from simgen import folders
from simgen.cli import main
from simgen.export.config import ExportConfig
from simgen.splat.config import SplatConfig
from simgen.synth import synthesize

# small but real stages: the export and the Gaussians run for real, with few hulls and steps (the physics
# checks have their own tests; test_stage_functions_return_typed_results runs them through the pipeline)
EXPORT = ExportConfig(
    max_hulls=2,
    coacd_iterations=10,
    texture_size=128,
    face_budget=5000,
    collider_faces=200,
    workers=0,
    physics=False,
)
SPLAT = SplatConfig(iterations=5, evaluate=False)
FAST = simgen.BuildConfig(gaussians=False, progress=False, export=EXPORT, splat=SPLAT)


@pytest.fixture(scope="module")
def other_scene_dir(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("other") / "tiny1", preset="tiny", seed=1)


def test_public_api_names_resolve():
    for name in simgen.__all__:
        assert getattr(simgen, name) is not None
    with pytest.raises(AttributeError):
        simgen.no_such_function  # noqa: B018


def test_build_writes_a_complete_record(tiny_scene_dir, tmp_path):
    result = simgen.build(tiny_scene_dir, tmp_path / "b", replace(FAST, worlds=False))
    assert isinstance(result, simgen.BuildResult) and result.build_dir == tmp_path / "b"
    record = json.loads((tmp_path / "b" / folders.BUILD_FILE).read_text())
    assert record == result.record
    assert record["scene"] == str(Path(tiny_scene_dir).resolve()) and Path(record["scene"]).is_absolute()
    assert record["simgen_version"] == simgen.__version__ and len(record["id"]) == 32
    n_instances = len(json.loads((tmp_path / "b" / folders.INSTANCES_FILE).read_text())["instances"])
    assert n_instances == record["counters"]["instances"] > 0
    assert result.export is None and not (tmp_path / "b" / folders.WORLDS_DIR).exists()


@pytest.mark.slow
def test_build_exports_into_its_own_folder(tiny_scene_dir, tmp_path):
    result = simgen.build(tiny_scene_dir, tmp_path / "b", FAST)
    # the export ran into the build folder and locates its build relative to itself
    assert result.export is not None and result.export["build_dir"] == "."
    assert json.loads(json.dumps(result.export)) == json.loads(
        (tmp_path / "b" / folders.EXPORT_FILE).read_text()
    )
    assert (tmp_path / "b" / folders.WORLDS_DIR / f"{result.export['scene']}.sdf").is_file()


@pytest.mark.slow
def test_a_build_folder_holds_one_build(tiny_scene_dir, other_scene_dir, tmp_path, capsys):
    """The reported mix-up: build A with everything, then build B without Gaussians and export into the
    same folder. B is refused; with --overwrite nothing of A is left for export, serve or eval to read."""
    out = tmp_path / "x"
    first = simgen.build(tiny_scene_dir, out, replace(FAST, gaussians=True))
    a_id = first.record["id"]
    assert folders.ply_build_id(out / folders.GAUSSIANS_FILE) == a_id
    (out / folders.EVAL_DIR).mkdir()  # an evaluation of A
    (out / "notes.txt").write_text("mine")  # not simgen's: must survive

    rc = main(["build", str(other_scene_dir), "-o", str(out), "--no-gaussians", "--no-export", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds an earlier build" in err and "--overwrite" in err and "gaussians.ply" in err
    assert folders.build_id(out) == a_id  # refused before anything was touched

    rc = main(
        [
            "build",
            str(other_scene_dir),
            "-o",
            str(out),
            "--no-gaussians",
            "--no-export",
            "--quiet",
            "--overwrite",
        ]
    )
    assert rc == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([folders.MESH_FILE, folders.INSTANCES_FILE, folders.BUILD_FILE, "notes.txt"])
    record = folders.read_build_record(out)
    assert record["id"] != a_id and record["scene"] == str(other_scene_dir.resolve())


@pytest.mark.slow
def test_the_server_never_pairs_a_mesh_with_another_builds_gaussians(tiny_scene_dir, tmp_path):
    out = tmp_path / "g"
    simgen.build(tiny_scene_dir, out, replace(FAST, gaussians=True, worlds=False))
    assert simgen.load_render_scene(out, warm=False).rgb_source == "gaussians"
    keep = tmp_path / "gaussians.ply"
    shutil.copy(out / folders.GAUSSIANS_FILE, keep)
    simgen.build(
        tiny_scene_dir, out, simgen.BuildConfig(gaussians=False, worlds=False, overwrite=True, progress=False)
    )
    shutil.copy(keep, out / folders.GAUSSIANS_FILE)  # the old build's Gaussians, copied back by hand
    with pytest.warns(UserWarning, match="was trained on build"):
        assert simgen.load_render_scene(out, warm=False).rgb_source == "mesh"


@pytest.mark.slow
def test_retraining_gaussians_records_them_like_build_does(tiny_scene_dir, tmp_path):
    out = tmp_path / "r"
    simgen.build(tiny_scene_dir, out, FAST)
    result = simgen.train_gaussians(
        tiny_scene_dir, out, SplatConfig(iterations=5, evaluate=False), progress=False
    )
    record = folders.read_build_record(out)
    assert isinstance(result, simgen.GaussiansResult) and result.path == out / folders.GAUSSIANS_FILE
    assert record["gaussians"]["count"] == result.summary["count"] > 0
    assert folders.ply_build_id(out / folders.GAUSSIANS_FILE) == record["id"]


@pytest.mark.slow
def test_stage_functions_return_typed_results(tiny_scene_dir, tmp_path):
    """export_worlds / check / evaluate as a notebook calls them: typed results that agree with what
    the stages wrote, and a PQ^scene that a correct build of the exact tiny scene reaches."""
    build = simgen.build(tiny_scene_dir, tmp_path / "b", replace(FAST, worlds=False))
    assert build.export is None
    # The default colliders (only the texture small): `check` holds them to the physics checks too, which
    # EXPORT's two-hull, 200-face colliders are not made for.
    exported = simgen.export_worlds(
        build.build_dir, tmp_path / "e", ExportConfig(texture_size=128, workers=0)
    )
    assert isinstance(exported, simgen.ExportResult) and exported.out_dir == tmp_path / "e"
    assert exported.record == json.loads((tmp_path / "e" / folders.EXPORT_FILE).read_text())
    assert exported.world is not None and exported.world.is_file() and exported.mjcf is not None
    n_instances = len(json.loads((build.build_dir / folders.INSTANCES_FILE).read_text())["instances"])
    assert sum(m["kind"] == "thing" for m in exported.models) == n_instances
    report = simgen.check(exported.out_dir)
    assert isinstance(report, simgen.CheckResult) and report.ok == (report.problems == [])
    assert report.ok, report.problems
    scores = simgen.evaluate(build.build_dir, tiny_scene_dir)
    assert isinstance(scores, simgen.EvalResult)
    assert scores.pq_scene == scores.metrics["panoptic"]["pq"] > 0.7


def test_invalid_scene_is_refused_before_the_folder_is_touched(tiny_scene_dir, tmp_path):
    scene = tmp_path / "bad"
    shutil.copytree(tiny_scene_dir, scene)
    (scene / "depth" / "00002.png").unlink()
    with pytest.raises(simgen.SceneError) as e:
        simgen.build(scene, tmp_path / "out", FAST)
    assert any("00002.png" in str(p) for p in e.value.problems)
    assert not (tmp_path / "out").exists()
