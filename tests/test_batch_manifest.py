"""The batch manifest: forms that must work, and every refusal naming the scene and key (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simgen.batch import records
from simgen.batch.manifest import DEFAULT_STAGES, ManifestError, load_manifest


def write(tmp_path: Path, data, name: str = "m.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_minimal_json_manifest(tmp_path):
    m = load_manifest(write(tmp_path, {"scenes": [{"name": "a", "path": "scenes/a"}]}))
    (plan,) = m.scenes
    assert plan.name == "a" and plan.dataset is None
    assert plan.source == str((tmp_path / "scenes/a").resolve())  # relative to the manifest's folder
    assert plan.stages == DEFAULT_STAGES
    assert plan.method == "fusion"
    assert plan.export.scene_name == "a"  # the world is named after the scene, not OUT/a/build
    assert plan.scene_dir(tmp_path / "out") == tmp_path / "scenes/a"
    assert plan.build_dir(tmp_path / "out") == tmp_path / "out/a/build"


def test_yaml_defaults_and_per_scene_overrides(tmp_path):
    text = """
defaults:
  method: fusion
  stages: [validate, build, export]
  fusion: {voxel_size: 0.04, max_depth: 5}
  export: {max_hulls: 4}
  resources:
    build: {num_cpus: 2, memory_gb: 3}
scenes:
  - name: a
    path: /data/a
  - name: b
    path: /data/b
    fusion: {voxel-size: 0.02}
    resources: {build: {memory_gb: 6}}
    stages: [validate, build]
  - name: s0
    path: scannet:/data/scans/scene0000_00
    import: {labels_from_gt: true, every: 10}
"""
    a, b, s0 = load_manifest(write(tmp_path, text, "m.yaml")).scenes
    assert a.fusion.voxel_size == 0.04 and a.fusion.max_depth == 5.0
    # b overrides one field; the other default fields stay
    assert b.fusion.voxel_size == 0.02 and b.fusion.max_depth == 5.0
    assert b.stages == ("validate", "build")
    assert b.resources["build"].num_cpus == 2 and b.resources["build"].memory_gb == 6
    assert a.resources["build"].memory_gb == 3
    assert a.export.max_hulls == 4
    # an importer source gets the import stage and its config
    assert s0.dataset == "scannet" and s0.source == "/data/scans/scene0000_00"
    assert s0.stages[0] == "import"
    assert s0.importer.labels_from_gt is True and s0.importer.every == 10
    assert s0.scene_dir(tmp_path) == tmp_path / "s0" / "scene"
    # settings feed the fingerprints: a changed override changes the build stage's config, only there
    assert a.stage_config("build") != b.stage_config("build")
    assert a.stage_config("validate") == b.stage_config("validate")


def test_stages_override_from_the_command_line(tmp_path):
    p = write(tmp_path, {"scenes": [{"name": "a", "path": "a", "stages": ["validate"]}]})
    assert load_manifest(p, stages=("validate", "build")).scenes[0].stages == ("validate", "build")


def test_export_workers_follow_the_declared_cpus(tmp_path):
    p = write(
        tmp_path,
        {
            "defaults": {"resources": {"export": {"num_cpus": 3}}},
            "scenes": [{"name": "a", "path": "a"}, {"name": "b", "path": "b", "export": {"workers": 1}}],
        },
    )
    a, b = load_manifest(p).scenes
    assert a.export.workers == 3 and b.export.workers == 1


@pytest.mark.parametrize(
    "data, words",
    [
        (
            {"scenes": [{"name": "a", "path": "a", "fusion": {"voxel_sise": 0.1}}]},
            ["scenes[0] (a)", "voxel_sise"],
        ),
        (
            {"scenes": [{"name": "a", "path": "a", "fusion": {"voxel_size": "big"}}]},
            ["(a).fusion.voxel_size"],
        ),
        ({"scenes": [{"name": "a", "path": "a", "fusion": {"voxel_size": -1}}]}, ["(a).fusion", "voxel"]),
        ({"scenes": [{"name": "a", "path": "a", "colour": 1}]}, ["(a).colour", "unknown key"]),
        ({"scenes": [{"name": "a", "path": "a", "method": "magic"}]}, ["(a).method", "fusion"]),
        ({"scenes": [{"name": "a", "path": "a", "stages": ["build"]}]}, ["(a).stages", "'validate'"]),
        ({"scenes": [{"name": "a", "path": "a", "stages": ["bake"]}]}, ["(a).stages", "bake"]),
        ({"scenes": [{"name": "a", "path": "a", "import": {"every": 2}}]}, ["(a).import", "importer source"]),
        ({"scenes": [{"name": "a", "path": "nerf:/x"}]}, ["(a).path", "nerf"]),
        ({"scenes": [{"name": "a", "path": "a", "resources": {"bake": {}}}]}, ["resources.bake"]),
        (
            {"scenes": [{"name": "a", "path": "a", "resources": {"build": {"memory_gb": -1}}}]},
            ["resources.build"],
        ),
        ({"scenes": [{"name": "../a", "path": "a"}]}, ["scenes[0].name"]),
        ({"scenes": [{"name": "a"}]}, ["(a)", "no 'path'"]),
        (
            {"scenes": [{"name": "a", "path": "a"}, {"name": "A", "path": "b"}]},
            ["scenes[1] (A)", "scenes[0]"],
        ),
        ({"scenes": []}, ["non-empty"]),
        ({"scene": [{"name": "a", "path": "a"}]}, ["unknown top-level"]),
        ({"defaults": {"fusion": {"nope": 1}}, "scenes": [{"name": "a", "path": "a"}]}, ["(a).fusion.nope"]),
        ({"defaults": {"what": 1}, "scenes": [{"name": "a", "path": "a"}]}, ["defaults.what"]),
    ],
)
def test_refusals_name_the_scene_and_key(tmp_path, data, words):
    p = write(tmp_path, data)
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    assert str(p) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(write(tmp_path, "{", "bad.json"))
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(write(tmp_path, "scenes: [a, {", "bad.yaml"))
    with pytest.raises(ManifestError, match="expected a mapping"):
        load_manifest(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_fingerprint_follows_settings_and_sources(tmp_path):
    scene = tmp_path / "s"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    state = records.folder_state(scene, ("transforms.json", "gt/gt.json"))
    fp = records.fingerprint("validate", {}, {}, {"scene": state})
    assert fp == records.fingerprint(
        "validate", {}, {}, {"scene": records.folder_state(scene, ("transforms.json", "gt/gt.json"))}
    )
    (scene / "simgen_out").mkdir()  # a build written into the scene folder is not a change of the scene
    assert fp == records.fingerprint(
        "validate", {}, {}, {"scene": records.folder_state(scene, ("transforms.json", "gt/gt.json"))}
    )
    (scene / "transforms.json").write_text('{"frames": []}')
    assert fp != records.fingerprint(
        "validate", {}, {}, {"scene": records.folder_state(scene, ("transforms.json", "gt/gt.json"))}
    )
    assert records.fingerprint("build", {"a": 1}, {}, {}) != records.fingerprint("build", {"a": 2}, {}, {})
    assert records.fingerprint("build", {}, {"validate": "x"}, {}) != records.fingerprint(
        "build", {}, {"validate": "y"}, {}
    )


def test_records_round_trip_and_error_cleared(tmp_path):
    root = tmp_path / "a"
    assert records.read_record(root, "build") is None
    records.write_error(root, "build", {"error": "boom"})
    assert records.read_error(root, "build")["error"] == "boom"
    records.write_record(root, "build", {"fingerprint": "f", "result": {"build_id": "x"}})
    rec = records.read_record(root, "build")
    assert rec["fingerprint"] == "f" and rec["stage"] == "build" and "finished" in rec
    assert records.read_error(root, "build") is None  # success clears the earlier failure
    # the build's outputs are gone: the record alone does not count as done
    assert not records.outputs_present("build", rec, tmp_path, tmp_path / "build")
    records.record_path(root, "build").write_text("{not json")
    assert records.read_record(root, "build") is None  # an unreadable record means redo


def test_declared_resources_per_stage(tmp_path):
    from simgen.batch.driver import stage_resources

    p = write(
        tmp_path,
        {
            "defaults": {"stages": ["validate", "build", "gaussians", "export"]},
            "scenes": [
                {"name": "f", "path": "f"},
                {"name": "n", "path": "n", "method": "neural"},
                {"name": "h", "path": "h", "method": "neural", "resources": {"build": {"num_gpus": 0.5}}},
            ],
        },
    )
    f, n, h = load_manifest(p).scenes
    # CUDA stages get a GPU only when the cluster has one; the fusion build never does
    assert stage_resources(n, "build", gpus=True)["num_gpus"] == 1
    assert stage_resources(n, "build", gpus=False)["num_gpus"] == 0
    assert stage_resources(f, "build", gpus=True)["num_gpus"] == 0
    assert stage_resources(f, "gaussians", gpus=True)["num_gpus"] == 1
    assert stage_resources(f, "export", gpus=True)["num_gpus"] == 0
    assert stage_resources(h, "build", gpus=True)["num_gpus"] == 0.5  # the manifest's choice wins
    assert stage_resources(f, "build", gpus=False)["memory"] == 2 * 2**30
    assert stage_resources(f, "build", gpus=False)["num_cpus"] == 1
