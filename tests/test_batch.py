"""``simgen batch`` on a real local Ray: three ``tiny`` scenes and a broken one.

Fast tests run the validate stage on one module-scoped Ray instance (retries, the failure report, a
rerun that does nothing). The slow ones build, export, check and evaluate, compare with a sequential
``simgen build`` of the same scenes, and kill / interrupt the ``simgen batch`` process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from simgen import folders
from simgen.batch import BatchConfig, load_manifest, run_batch
from simgen.batch import records as R

GOOD = ("a", "b", "c")
# Cheap export settings: the tests are about batch, not collider quality.
CHEAP_EXPORT = {
    "coacd_iterations": 10,
    "coacd_resolution": 200,
    "max_hulls": 2,
    "collider_faces": 200,
    "face_budget": 3000,
    "texture_size": 128,
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Three tiny synthetic scenes and ``broken`` (frame 2 names an RGB file that does not exist)."""
    from simgen.synth import synthesize

    root = tmp_path_factory.mktemp("batch_scenes")
    for seed, name in enumerate(GOOD):
        synthesize(root / name, "tiny", seed=seed)
    shutil.copytree(root / "a", root / "broken")
    t = json.loads((root / "broken/transforms.json").read_text())
    t["frames"][2]["file_path"] = "rgb/missing.png"
    (root / "broken/transforms.json").write_text(json.dumps(t))
    return root


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield ray
    ray.shutdown()


def manifest(path: Path, scenes: Path, names, stages, **defaults) -> Path:
    data = {
        "defaults": {"stages": list(stages), **defaults},
        "scenes": [{"name": n, "path": str(scenes / n)} for n in names],
    }
    path.write_text(json.dumps(data))
    return path


def rows(report) -> dict:
    return {r["name"]: r for r in report["scenes"]}


def record_times(out: Path, names, stages) -> dict:
    return {(n, s): R.record_path(out / n, s).stat().st_mtime_ns for n in names for s in stages}


@pytest.mark.slow
def test_validate_batch_reports_the_broken_scene_after_its_retries(ray_local, scenes, tmp_path):
    m = load_manifest(manifest(tmp_path / "m.json", scenes, (*GOOD, "broken"), ["validate"]))
    out = tmp_path / "out"
    result = run_batch(m, out, BatchConfig(retries=2, progress=False))
    r = rows(result.report)
    assert [r[n]["status"] for n in GOOD] == ["done"] * 3
    assert r["a"]["frames"] == 16  # the tiny preset's frame count, from the validate record
    bad = r["broken"]
    assert bad["status"] == "failed" and result.failed == ["broken"]
    assert bad["stages"]["validate"]["status"] == "failed"
    assert bad["stages"]["validate"]["attempts"] == 3  # the first try and two retries
    assert bad["error"]["stage"] == "validate" and bad["error"]["type"] == "SceneError"
    # the validation message names the file and frame
    assert any("rgb/missing.png (frame 2): missing RGB file" in p for p in bad["error"]["problems"])
    err = R.read_error(out / "broken", "validate")
    assert err["attempt"] == 3 and "missing RGB file" in err["message"]
    assert R.read_record(out / "broken", "validate") is None
    assert (out / "broken/logs/validate.log").read_text().count("--- validate attempt") == 3
    md = (out / "batch.md").read_text()
    assert "| broken | failed |" in md and "missing RGB file" in md
    on_disk = json.loads((out / "batch.json").read_text())
    assert on_disk["totals"] == result.report["totals"]
    assert on_disk["totals"]["done"] == 3 and on_disk["totals"]["failed"] == 1

    # rerun: the finished stages are skipped (records untouched), the failed one is tried again
    before = record_times(out, GOOD, ["validate"])
    again = run_batch(m, out, BatchConfig(retries=0, progress=False))
    r2 = rows(again.report)
    assert record_times(out, GOOD, ["validate"]) == before
    assert all(r2[n]["stages"]["validate"]["status"] == "skipped" for n in GOOD)
    assert all(r2[n]["status"] == "done" and r2[n]["seconds"] == 0 for n in GOOD)
    assert r2["broken"]["stages"]["validate"]["attempts"] == 1 and r2["broken"]["status"] == "failed"
    assert again.report["totals"]["stages_run"] == 1 and again.report["totals"]["stages_skipped"] == 3

    # --force redoes everything
    forced = run_batch(m, out, BatchConfig(retries=0, force=True, progress=False))
    assert forced.report["totals"]["stages_skipped"] == 0
    assert record_times(out, GOOD, ["validate"]) != before


def test_a_changed_scene_is_validated_again(ray_local, scenes, tmp_path):
    src = tmp_path / "a"
    shutil.copytree(scenes / "a", src)
    m = load_manifest(manifest(tmp_path / "m.json", tmp_path, ["a"], ["validate"]))
    run_batch(m, tmp_path / "out", BatchConfig(progress=False))
    t = json.loads((src / "transforms.json").read_text())
    t["frames"][0]["file_path"] = "rgb/gone.png"
    (src / "transforms.json").write_text(json.dumps(t))
    result = run_batch(m, tmp_path / "out", BatchConfig(retries=0, progress=False))
    row = rows(result.report)["a"]
    assert row["status"] == "failed" and "gone.png" in " ".join(row["error"]["problems"])


def test_importer_source_is_imported_then_validated(ray_local, tmp_path):
    from helpers.datasets import make_scannet  # the ScanNet-layout fixture of the importer tests

    from simgen.data.importers.scannet import ScanNetConfig, import_scannet

    src = tmp_path / "scene0000_00"
    fx = make_scannet(src)
    data = {
        "defaults": {"stages": ["validate"]},
        "scenes": [
            {
                "name": "s0",
                "path": f"scannet:{src}",
                "import": {"labels_from_gt": True, "label_map": str(fx["tsv"]), "test_every": 2},
            }
        ],
    }
    (tmp_path / "m.yaml").write_text(json.dumps(data))  # JSON is YAML
    m = load_manifest(tmp_path / "m.yaml")
    out = tmp_path / "out"
    row = rows(run_batch(m, out, BatchConfig(retries=0, progress=False)).report)["s0"]
    assert row["status"] == "done", row["error"]
    assert list(row["stages"]) == ["import", "validate"]
    rec = R.read_record(out / "s0", "import")["result"]
    assert rec["frames"] == 4 and rec["skipped_frames"] == 1 and rec["ground_truth"]
    # the same scene `simgen import scannet` writes
    direct = tmp_path / "direct"
    import_scannet(src, direct, ScanNetConfig(labels_from_gt=True, label_map=str(fx["tsv"]), test_every=2))
    assert json.loads((out / "s0/scene/transforms.json").read_text()) == json.loads(
        (direct / "transforms.json").read_text()
    )
    assert row["frames"] == 4
    again = run_batch(m, out, BatchConfig(progress=False))
    assert again.report["totals"]["stages_run"] == 0
    assert again.report["batch"]["ray"]["address"].startswith("not started")  # nothing to run, no Ray
    # the source changed (its label map rewritten): imported and validated again
    tsv = Path(fx["tsv"])
    tsv.write_text(tsv.read_text())
    os.utime(tsv, ns=(0, time.time_ns() + 10**9))
    third = run_batch(m, out, BatchConfig(retries=0, progress=False))
    assert rows(third.report)["s0"]["status"] == "done"
    assert third.report["totals"]["stages_run"] == 2


def test_output_folder_is_locked(ray_local, scenes, tmp_path):
    import fcntl

    from simgen.batch import BatchError
    from simgen.batch.driver import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    m = load_manifest(manifest(tmp_path / "m.json", scenes, ["a"], ["validate"]))
    with open(out / LOCK_FILE, "w") as f:
        f.write("pid 1 on elsewhere\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        # flock locks belong to the open file description: a second open in this process conflicts too
        with pytest.raises(BatchError, match="another simgen batch"):
            run_batch(m, out, BatchConfig(progress=False))


def test_a_stage_no_node_can_run_is_refused_before_the_batch(ray_local, scenes, tmp_path):
    from simgen.batch import BatchError

    m = load_manifest(
        manifest(
            tmp_path / "m.json", scenes, ["a"], ["validate"], resources={"validate": {"memory_gb": 100000}}
        )
    )
    with pytest.raises(BatchError, match="scene a, stage validate: asks for"):
        run_batch(m, tmp_path / "out", BatchConfig(progress=False))
    assert not (tmp_path / "out" / "a").exists()


def test_cli_refuses_a_bad_manifest_with_exit_2(scenes, tmp_path, capsys):
    from simgen.cli import main

    p = tmp_path / "m.json"
    p.write_text(json.dumps({"scenes": [{"name": "a", "path": str(scenes / "a"), "fusion": {"nope": 1}}]}))
    assert main(["batch", str(p), "-o", str(tmp_path / "out")]) == 2
    assert "(a).fusion.nope" in capsys.readouterr().err


# ----------------------------------------------------------------------------- slow: the whole pipeline
def tree(folder: Path) -> set[str]:
    skip = {folders.EVAL_DIR}
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in skip
    }


@pytest.mark.slow
def test_batch_matches_sequential_build_and_reruns_nothing(ray_local, scenes, tmp_path):
    from simgen.pipeline import BuildConfig, build

    stages = ["validate", "build", "export", "check", "eval"]
    mpath = manifest(
        tmp_path / "m.json",
        scenes,
        (*GOOD, "broken"),
        stages,
        export=CHEAP_EXPORT,
        eval={"samples": 20000},
    )
    m = load_manifest(mpath)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = run_batch(m, out, BatchConfig(retries=1, progress=False))
    first = time.perf_counter() - t0
    r = rows(result.report)
    assert r["broken"]["status"] == "failed" and r["broken"]["stages"]["validate"]["attempts"] == 2
    assert r["broken"]["stages"]["build"]["status"] == "pending"
    assert not (out / "broken/build").exists()  # a failed scene writes nothing past its failure

    for plan in m.scenes[:3]:
        row = r[plan.name]
        assert row["status"] == "done", row
        # the same library call as `simgen build --no-gaussians` with the same settings
        seq = tmp_path / "seq" / plan.name
        build(scenes / plan.name, seq, BuildConfig(gaussians=False, export=plan.export, progress=False))
        got = plan.build_dir(out)
        inst_batch, _ = folders.read_instances(got / folders.INSTANCES_FILE)
        inst_seq, _ = folders.read_instances(seq / folders.INSTANCES_FILE)
        assert len(inst_batch) == len(inst_seq) == row["instances"] > 0
        assert tree(got) == tree(seq)
        assert (got / folders.WORLDS_DIR / f"{plan.name}.sdf").is_file()
        exp_b = json.loads((got / folders.EXPORT_FILE).read_text())
        exp_s = json.loads((seq / folders.EXPORT_FILE).read_text())
        assert [x["name"] for x in exp_b["models"]] == [x["name"] for x in exp_s["models"]]
        assert row["models"] == len(exp_b["models"]) and row["hulls"] == sum(
            x["hulls"] for x in exp_b["models"]
        )
        assert row["check_problems"] is not None
        assert 0 < row["metrics"]["pq"] <= 1 and row["metrics"]["chamfer_l1_cm"] > 0
        assert (got / folders.EVAL_DIR / folders.METRICS_JSON).is_file()
    md = (out / "batch.md").read_text()
    for n in GOOD:
        assert f"| {n} | done |" in md

    # rerun: nothing is redone (records untouched) and it takes a fraction of the first run
    before = record_times(out, GOOD, stages)
    t0 = time.perf_counter()
    again = run_batch(m, out, BatchConfig(retries=0, progress=False))
    rerun = time.perf_counter() - t0
    assert record_times(out, GOOD, stages) == before
    assert again.report["totals"]["stages_skipped"] == 3 * len(stages)
    assert again.report["totals"]["stages_run"] == 1  # the broken scene's validate, tried again
    assert rerun < 0.25 * first, (rerun, first)
    # the report still carries what the first run made
    assert rows(again.report)["a"]["models"] == r["a"]["models"]

    # a per-scene override redoes that scene's stages from the changed one on, and nothing else
    data = json.loads(mpath.read_text())
    data["scenes"][1]["export"] = {"max_hulls": 1}
    mpath.write_text(json.dumps(data))
    changed = run_batch(load_manifest(mpath), out, BatchConfig(retries=0, progress=False))
    st = rows(changed.report)
    assert {s: v["status"] for s, v in st["b"]["stages"].items()} == {
        "validate": "skipped",
        "build": "skipped",
        "export": "done",
        "check": "done",
        "eval": "done",
    }
    assert all(v["status"] == "skipped" for n in ("a", "c") for v in st[n]["stages"].values())
    assert st["b"]["hulls"] <= st["b"]["models"]  # one hull (or box) per model now


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc; the tests start them, the tests may end them)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    live = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(p)
    return live


def start_batch(mpath: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "simgen",
        "batch",
        str(mpath),
        "-o",
        str(out),
        "--num-cpus",
        "1",
        "-q",
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_for(cond, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while not cond():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def cleanup(pids: set[int]) -> None:
    for p in alive(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.slow
def test_killed_batch_resumes_without_redoing_the_finished_scene(scenes, tmp_path):
    stages = ["validate", "build"]
    mpath = manifest(tmp_path / "m.json", scenes, GOOD, stages)
    out = tmp_path / "out"
    proc = start_batch(mpath, out, "--retries", "0")
    seen: set[int] = set()

    def first_done() -> bool:
        seen.update(descendants(proc.pid))
        return any(R.read_record(out / n, "build") for n in GOOD)

    try:
        wait_for(first_done, proc, 300)
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(30)
        finished = [n for n in GOOD if R.read_record(out / n, "build")]
        assert finished and len(finished) < len(GOOD)
        before = record_times(out, finished, stages)
    finally:
        proc.kill()
        time.sleep(3)  # Ray's own processes notice their driver is gone
        cleanup(seen)
    # A worker may finish its stage (record and outputs complete) in the seconds between the driver's
    # SIGKILL and the clean-up: that stage is done, and the rerun must not redo it either.
    finished = [n for n in GOOD if R.read_record(out / n, "build")]
    before = record_times(out, finished, stages)
    rerun = start_batch(mpath, out, "--retries", "0")
    try:
        assert rerun.wait(600) == 0, rerun.stdout.read().decode()
    finally:
        cleanup(descendants(rerun.pid))
    report = json.loads((out / "batch.json").read_text())
    r = rows(report)
    assert all(r[n]["status"] == "done" for n in GOOD)
    for n in finished:
        assert all(v["status"] == "skipped" for v in r[n]["stages"].values())
    assert record_times(out, finished, stages) == before
    for n in set(GOOD) - set(finished):
        assert r[n]["stages"]["build"]["status"] == "done"
        assert folders.build_id(out / n / "build") == R.read_record(out / n, "build")["result"]["build_id"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly(scenes, tmp_path):
    mpath = manifest(tmp_path / "m.json", scenes, GOOD, ["validate", "build"])
    out = tmp_path / "out"
    proc = start_batch(mpath, out)
    seen: set[int] = set()

    def building() -> bool:
        seen.update(descendants(proc.pid))
        return any((out / n / "logs/build.log").exists() for n in GOOD)

    try:
        wait_for(building, proc, 300)
        seen.update(descendants(proc.pid))
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        rc = proc.wait(60)
        took = time.time() - t0
        output = proc.stdout.read().decode()
        assert rc == 130, output
        assert took < 30, took
        time.sleep(2)
        assert not alive(seen), [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive(seen)]
    finally:
        proc.kill()
        cleanup(seen)
    report = json.loads((out / "batch.json").read_text())
    assert report["batch"]["interrupted"] is True
    assert any(r["status"] == "interrupted" for r in report["scenes"])
    # nothing half-done is recorded as done: every build record matches a complete build folder
    for n in GOOD:
        rec = R.read_record(out / n, "build")
        if rec:
            assert folders.build_id(out / n / "build") == rec["result"]["build_id"]
