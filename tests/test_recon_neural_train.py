"""End to end: train the neural builder briefly on the ``tiny`` synthetic scene and check it against GT.

One short training run (module fixture, ~20-40 s on 2 CPU cores) is shared by the checks; resume and
the NaN guard run a few extra steps each.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from simgen.data.camera import backproject
from simgen.folders import BUILD_FILE, INSTANCES_FILE, MESH_FILE, read_instances, read_panoptic_mesh
from simgen.recon.neural import CHECKPOINT, LOG_FILE, NeuralTrainingError, neural_config, run_neural
from simgen.recon.neural.config import NeuralConfig
from simgen.recon.neural.data import load_rays, sample_batch
from simgen.recon.neural.tokens import TokenStats
from simgen.recon.neural.train import load_model, train_step

STEPS = 200
# the fast preset shrunk so the run takes seconds: smaller geometry grid, fewer rays, coarser mesh
SMALL = dict(
    steps=STEPS, frames_per_batch=2, rays_per_frame=256, downscale=2, geo_levels=8, geo_log2_table=14,
    geo_max_res=128, n_eikonal=256, n_tokens=12, adjust_every=40, seg_start=0.1, mesh_voxel=0.05,
    ckpt_every=100, log_every=10, device="cpu", init="none",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tiny_scene):
    return tiny_scene


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread is steadier
    try:
        out = tmp_path_factory.mktemp("build") / "neural"
        record = run_neural(tiny, out, neural_config("fast", **SMALL), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, record


def observed_points(scene, frames, stride=2):
    """GT-labelled observed surface points of ``frames``: points ``(P, 3)``, GT segment ids ``(P,)``."""
    pts, seg = [], []
    for i in frames:
        fr = scene.frames[i]
        p = backproject(scene.depth(i), fr.intrinsics, fr.c2w_cv)[::stride, ::stride].reshape(-1, 3)
        g = scene.gt.panoptic(i)[::stride, ::stride].reshape(-1)
        ok = np.isfinite(p).all(1) & (g > 0)
        pts.append(p[ok])
        seg.append(g[ok])
    return np.concatenate(pts), np.concatenate(seg)


@pytest.mark.slow
def test_build_folder_layout(trained):
    out, record = trained
    for name in (MESH_FILE, INSTANCES_FILE, BUILD_FILE, CHECKPOINT, LOG_FILE):
        assert (out / name).is_file(), name
    build = json.loads((out / BUILD_FILE).read_text())
    assert build["method"] == "neural"
    for key in ("steps", "frames", "vertices", "instances", "tokens", "token_history"):
        assert key in build["counters"], key
    for key in ("train", "mesh", "total", "step_mean"):
        assert build["timings_s"][key] >= 0, key
    assert build["counters"]["token_history"][0] == [0, SMALL["n_tokens"]]
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert log[-1]["step"] == STEPS - 1
    assert all("tokens" in r and "depth" in r for r in log)
    mesh = read_panoptic_mesh(out / MESH_FILE)
    assert len(mesh.faces) > 1000
    assert record["mesh"].vertices.shape == mesh.vertices.shape
    instances = read_instances(out / INSTANCES_FILE)
    ids = {r.id for r in (instances[0] if isinstance(instances, tuple) else instances)}
    assert ids == set(np.unique(mesh.instance[mesh.instance > 0]).tolist())


@pytest.mark.slow
def test_training_plot_draws_the_logged_curves(trained, tmp_path):
    """training.png is written; its figure has one curve per logged loss term (plus the total) whose
    points are the log's, and the token panel follows the logged token count."""
    from simgen.recon.neural.plot import PLOT_FILE, read_log, training_figure

    out, _ = trained
    assert (out / PLOT_FILE).stat().st_size > 10_000
    rows = read_log(out / LOG_FILE)
    ax_loss, ax_tok = training_figure(rows).axes
    curves = {line.get_label(): line for line in ax_loss.get_lines()}
    assert {k for k in curves if not k.startswith("_")} == {
        "total (weighted)", "L_c", "L_depth", "L_eik", "L_ins", "L_ins_neg", "L_pan", "L_sdf", "L_sem"
    }  # fmt: skip
    sem = [(r["step"], r["sem"]) for r in rows if r.get("sem", 0) > 0]
    assert list(curves["_sem logged"].get_xdata()) == [s for s, _ in sem]
    assert list(curves["_sem logged"].get_ydata()) == [v for _, v in sem]
    w = max(1, len(sem) // 40)
    assert curves["L_sem"].get_ydata()[-1] == pytest.approx(np.mean([v for _, v in sem][-w:]))
    assert sem[0][0] >= SMALL["seg_start"] * STEPS  # the term starts when its group switches on
    assert list(ax_tok.get_lines()[0].get_ydata()) == [r["tokens"] for r in rows]
    cfg = neural_config("fast", **SMALL)
    marks = {t.get_text().strip(): t.get_position()[0] for t in training_figure(rows, cfg).axes[0].texts}
    assert marks == {"sem/ins on": 0.1 * STEPS, "L_pan on": 0.4 * STEPS, "Dice off": 0.75 * STEPS}
    no_head = training_figure(rows, replace(cfg, panoptic_head=False)).axes[0].texts
    assert "L_pan on" not in {t.get_text().strip() for t in no_head}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON line"):
        read_log(bad)


@pytest.mark.slow
def test_losses_fall(trained):
    out, _ = trained
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    first, last = log[0], log[-1]
    assert last["depth"] < first["depth"] / 5
    assert last["sdf"] < first["sdf"] / 5
    seg = [r for r in log if "sem" in r]
    assert seg[-1]["sem"] < seg[0]["sem"] / 3
    assert "pan" in last and "pan" not in first  # the schedule switched L_pan on


@pytest.mark.slow
def test_geometry_is_near_the_gt_mesh(tiny, trained):
    _, record = trained
    pred = record["mesh"].to_trimesh()
    gt = tiny.gt.mesh()
    gt_pts, _ = trimesh.sample.sample_surface_even(gt, 60000, seed=0)
    pred_pts, _ = trimesh.sample.sample_surface(pred, 60000, seed=0)
    accuracy = cKDTree(gt_pts).query(pred_pts)[0]  # predicted surface -> GT
    obs, _ = observed_points(tiny, tiny.split_indices("train"), stride=3)
    completeness = cKDTree(pred_pts).query(obs)[0]  # observed GT surface -> prediction
    assert np.median(accuracy) < 0.03 and accuracy.mean() < 0.05
    assert np.median(completeness) < 0.03 and completeness.mean() < 0.05
    assert (completeness < 0.05).mean() > 0.9


@pytest.mark.slow
def test_labels_beat_chance_and_things_are_separated(tiny, trained):
    _, record = trained
    mesh = record["mesh"]
    pts, seg = observed_points(tiny, tiny.split_indices("test"))
    near = cKDTree(mesh.vertices).query(pts)[1]
    pred_cat, pred_inst = mesh.semantic[near], mesh.instance[near]
    gt_cat = np.array([tiny.gt.segments[int(s)] for s in seg])
    classes = np.unique(gt_cat)
    per_class = [(pred_cat[gt_cat == c] == c).mean() for c in classes]
    # chance for a labelling that ignores the geometry is 1 / len(classes) per class
    assert len(classes) >= 3 and np.mean(per_class) > 0.7, dict(zip(classes.tolist(), per_class, strict=True))
    things = [s for s in np.unique(seg) if tiny.categories[tiny.gt.segments[int(s)]].isthing]
    assert len(things) >= 2
    majority = {}
    for s in things:
        ids, counts = np.unique(pred_inst[seg == s], return_counts=True)
        majority[int(s)] = int(ids[np.argmax(counts)])
        assert (pred_inst[seg == s] > 0).mean() > 0.3, f"GT thing {s} mostly unlabelled"
    fg = [v for v in majority.values() if v > 0]
    assert len(set(fg)) == len(fg) == len(things), f"GT things -> predicted ids {majority}"
    stuff = ~np.isin(seg, things)
    assert (pred_inst[stuff] == 0).mean() > 0.9


@pytest.mark.slow
def test_checkpoint_reloads_the_same_model(tiny, trained):
    out, record = trained
    model, meta = load_model(out / CHECKPOINT)
    assert meta["step"] == STEPS
    p = torch.as_tensor(record["mesh"].vertices[:2000])
    cls_a, tok_a = record["model"].label_points(p)
    cls_b, tok_b = model.label_points(p)
    assert torch.equal(cls_a, cls_b) and torch.equal(tok_a, tok_b)


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(tiny, trained, tmp_path):
    out, _ = trained
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    cfg = neural_config("fast", **{**SMALL, "steps": STEPS + 10, "resume": True})
    record = run_neural(tiny, copy, cfg, progress=False)
    assert record["counters"]["resumed_from"] == STEPS
    log = [json.loads(line) for line in (copy / LOG_FILE).read_text().splitlines()]
    assert log[-1]["step"] == STEPS + 9
    assert log[-1]["depth"] < log[0]["depth"] / 5  # continued, not restarted
    assert load_model(copy / CHECKPOINT)[1]["step"] == STEPS + 10


@pytest.mark.slow
def test_checkpoint_of_another_version_loads_or_says_why(trained, tmp_path):
    """A config field this version does not know is ignored with a warning naming it (the weights
    decide whether the model fits); weights that do not fit their config are refused naming the file."""
    out, record = trained
    ckpt = torch.load(out / CHECKPOINT, weights_only=False)
    ckpt["config"]["field_from_the_future"] = 1
    torch.save(ckpt, tmp_path / "newer.pt")
    with pytest.warns(UserWarning, match="field_from_the_future"):
        model, _ = load_model(tmp_path / "newer.pt")
    p = torch.as_tensor(record["mesh"].vertices[:500])
    assert torch.equal(model.label_points(p)[0], record["model"].label_points(p)[0])
    del ckpt["config"]["field_from_the_future"]
    ckpt["config"]["geo_levels"] += 2
    torch.save(ckpt, tmp_path / "misfit.pt")
    with pytest.raises(ValueError, match=r"misfit\.pt: the model in the checkpoint does not fit"):
        load_model(tmp_path / "misfit.pt")


def test_quality_preset_on_cpu_warns_before_loading_anything(tiny, tmp_path):
    """The quality preset on a CPU warns that training takes days; fast does not. (resume without a
    checkpoint stops both runs right after the start.)"""
    cfg = neural_config("quality", device="cpu", resume=True)
    with pytest.warns(UserWarning, match="sized for a GPU"), pytest.raises(ValueError, match="no checkpoint"):
        run_neural(tiny, tmp_path / "q", cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="no checkpoint"):
            run_neural(tiny, tmp_path / "f", neural_config("fast", device="cpu", resume=True), progress=False)


def test_resume_refuses_missing_or_foreign_checkpoints(tiny, tmp_path):
    cfg = neural_config("fast", **{**SMALL, "resume": True})
    with pytest.raises(ValueError, match="no checkpoint"):
        run_neural(tiny, tmp_path / "empty", cfg, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        load_model(tmp_path / "bad" / CHECKPOINT)


def test_nan_loss_stops_with_the_term_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch):
    from simgen.recon.neural import losses

    real = losses.eikonal_loss
    calls = {"n": 0}

    def flaky(grad):
        calls["n"] += 1
        value = real(grad)
        return value * float("nan") if calls["n"] > 5 else value

    monkeypatch.setattr(losses, "eikonal_loss", flaky)
    cfg = neural_config("fast", **{**SMALL, "steps": 20, "ckpt_every": 2})
    with pytest.raises(NeuralTrainingError, match=r"L_eik .*step 5.*checkpoint.*step 4"):
        run_neural(tiny, tmp_path / "nan", cfg, progress=False)
    _, meta = load_model(tmp_path / "nan" / CHECKPOINT)
    assert meta["step"] == 4


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tiny, tmp_path, monkeypatch):
    """Ctrl-C in the middle of step 7 (no checkpoint due before step 100): the checkpoint holds the 7
    finished steps, nothing half-written is left beside it, and --resume trains on from step 7."""
    from simgen.recon.neural import train

    real = train.train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", interrupted)
    out = tmp_path / "ctrl-c"
    cfg = neural_config("fast", **{**SMALL, "steps": 12})
    with pytest.raises(KeyboardInterrupt):
        run_neural(tiny, out, cfg, progress=False)
    assert load_model(out / CHECKPOINT)[1]["step"] == 7
    assert sorted(f.name for f in out.iterdir()) == sorted([CHECKPOINT, LOG_FILE])
    monkeypatch.setattr(train, "train_step", real)
    record = run_neural(tiny, out, replace(cfg, resume=True), progress=False)
    assert record["counters"]["resumed_from"] == 7
    assert [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines()] == [0, 10, 11]


@pytest.mark.slow
def test_unmatched_token_term_pushes_other_tokens_off_the_frame(tiny, trained):
    """``w_ins_neg``: on a fixed batch, descending L_ins_neg alone lowers the unmatched tokens' rendered
    masks on the labelled rays; with the weight 0, or without the spatial prior (a softmax over tokens
    cannot be empty everywhere), the term is not computed."""
    out, _ = trained
    model, meta = load_model(out / CHECKPOINT)
    cfg = replace(NeuralConfig(**meta["config"]).resolved(), w_ins_neg=1.0)
    data = load_rays(tiny, tiny.split_indices("train"), cfg.downscale, "cpu", cfg.trunc, False)
    batch = sample_batch(data, 4, 512, np.random.default_rng(0))
    step = cfg.steps - 1  # every loss group on
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=5e-3)
    values = []
    for _ in range(15):
        torch.manual_seed(0)  # the same samples along the rays every time
        terms = train_step(model, data, batch, cfg, step, TokenStats(cfg.max_tokens))
        values.append(float(terms["ins_neg"].detach()))
        opt.zero_grad()
        terms["ins_neg"].backward()
        opt.step()
    assert values[0] > 0
    assert values[-1] < 0.3 * values[0]
    for off in (replace(cfg, w_ins_neg=0.0), replace(cfg, spatial_prior=False)):
        assert "ins_neg" not in train_step(model, data, batch, off, step, TokenStats(cfg.max_tokens))
