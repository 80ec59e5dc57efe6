"""One stage of one scene, as a Ray task runs it: the library calls of ``simgen build`` / ``export`` /
``check`` / ``eval``, outputs into ``OUT/<scene>/``, then the completion record.

Nothing here imports Ray: :func:`run_stage` is a plain function (the driver wraps it in ``ray.remote``),
so it can be called and tested without a cluster. It never raises for a failing stage: the failure comes
back as a JSON-ready dict (Ray would otherwise have to pickle arbitrary exception objects across nodes)
and is recorded in ``OUT/<scene>/stages/<stage>.error.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from simgen import folders
from simgen.batch import records
from simgen.batch.manifest import ScenePlan

HEADLINE_METRICS = {
    "pq": ("panoptic", "pq"),
    "pq_things": ("panoptic", "pq_things"),
    "pq_stuff": ("panoptic", "pq_stuff"),
    "miou_2d": ("semantic_2d", "miou"),
    "mcov_2d": ("instance_2d", "mcov"),
    "miou_3d": ("semantic_3d", "miou"),
    "chamfer_l1_cm": ("geometry", "chamfer_l1_cm"),
    "fscore": ("geometry", "fscore"),
}


def _import(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    if plan.dataset == "scannet":
        from simgen.data.importers.scannet import import_scannet as run
    else:
        from simgen.data.importers.replica import import_replica as run
    # The scene folder is batch's own (OUT/<scene>/scene): a redo replaces an interrupted import.
    report = run(plan.source, scene_dir, dataclasses.replace(plan.importer, overwrite=True, quiet=True))
    return {
        "frames": report.frames,
        "test_frames": report.test_frames,
        "skipped_frames": len(report.skipped),
        "warnings": report.warnings[:20],
        "ground_truth": report.gt_written,
    }


def _validate(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.data.scene import SceneError, validate_scene

    scene, problems, stats = validate_scene(scene_dir)
    if scene is None or problems:
        raise SceneError(scene_dir, problems)
    return {
        "frames": len(scene.frames),
        "ground_truth": scene.gt is not None,
        **{k: stats[k] for k in ("categories", "trajectory_length_m") if k in stats},
    }


def _build(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.pipeline import BuildConfig, build

    cfg = BuildConfig(
        method=plan.method,  # type: ignore[arg-type]
        fusion=plan.fusion,
        neural=plan.neural,
        gaussians=False,
        worlds=False,
        # Batch decides from its own records that this stage must run; an earlier (unrecorded or stale)
        # build in its folder is replaced, never mixed with.
        overwrite=True,
        torch_threads=plan.torch_threads,
        progress=False,
    )
    result = build(scene_dir, build_dir, cfg)
    instances, _ = folders.read_instances(build_dir / folders.INSTANCES_FILE)
    return {
        "build_id": result.record.get("id"),
        "method": plan.method,
        "instances": len(instances),
        "things": sum(1 for r in instances if r.isthing),
        "counters": result.record.get("counters", {}),
        "timings_s": result.record.get("timings_s", {}),
    }


def _gaussians(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.api import train_gaussians

    summary = train_gaussians(scene_dir, build_dir, plan.splat, progress=False).summary
    return {
        "build_id": folders.build_id(build_dir),
        "count": summary.get("count"),
        "test_psnr": (summary.get("test") or {}).get("psnr"),
        "seconds": summary.get("total_seconds"),
    }


def _export(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.api import export_worlds

    # Into the build folder, as `simgen build` does: the same files in the same places.
    rec = export_worlds(build_dir, build_dir, plan.export).record
    rows = rec.get("models", [])
    return {
        "scene": rec.get("scene"),
        "models": len(rows),
        "things": sum(1 for r in rows if r.get("kind") == "thing"),
        "hulls": sum(int(r.get("hulls", 0)) for r in rows),
        "boxes": sum(int(r.get("boxes", 0)) for r in rows),
        "fallbacks": len(rec.get("fallbacks", [])),
        "warnings": len(rec.get("warnings", [])),
        "seconds": rec.get("seconds"),
    }


def _check(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.api import check

    report = check(build_dir, validator=plan.check.validator, workers=plan.check.workers)
    problems, stats = report.problems, report.stats
    # Problems are findings about the export, reported per scene; they do not fail the stage.
    return {"problems": len(problems), "details": [str(p) for p in problems[:50]], "stats": stats}


def _eval(plan: ScenePlan, scene_dir: Path, build_dir: Path) -> dict[str, Any]:
    from simgen.data import io
    from simgen.eval.evaluate import evaluate, markdown_table  # what `simgen eval` calls (report data too)

    result = evaluate(build_dir, scene_dir, plan.eval)
    metrics = result["metrics"]
    eval_dir = build_dir / folders.EVAL_DIR
    # The files `simgen eval` writes, in the same place.
    io.write_json(eval_dir / folders.METRICS_JSON, metrics)
    table = markdown_table(metrics)
    with io.atomic_path(eval_dir / folders.METRICS_MD) as tmp:
        tmp.write_text(table)
    if plan.eval.pictures:
        from simgen.eval.report import write_report

        write_report(result, Path(plan.eval.report) if plan.eval.report else eval_dir / "report", table)
    headline = {}
    for key, (section, name) in HEADLINE_METRICS.items():
        value = (metrics.get(section) or {}).get(name)
        if isinstance(value, int | float):
            headline[key] = round(float(value), 4)
    return {"metrics": headline, "metrics_file": str(Path(folders.EVAL_DIR) / folders.METRICS_JSON)}


STAGE_FUNCTIONS = {
    "import": _import,
    "validate": _validate,
    "build": _build,
    "gaussians": _gaussians,
    "export": _export,
    "check": _check,
    "eval": _eval,
}


def describe_error(e: BaseException) -> dict[str, Any]:
    """A JSON-ready account of a failure: message, type, every listed problem, the traceback's tail."""
    problems = [str(p) for p in getattr(e, "problems", None) or []]
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return {
        "error": str(e).splitlines()[0] if str(e) else type(e).__name__,
        "message": str(e),
        "type": type(e).__name__,
        "problems": problems[:100],
        "traceback": "".join(tb)[-4000:],
    }


def run_stage(
    plan: ScenePlan, stage: str, out_root: str, fingerprint: str, inputs: dict[str, Any], attempt: int = 1
) -> dict[str, Any]:
    """Run ``stage`` of ``plan``'s scene; on success write its completion record.

    Args:
        plan: the scene and its settings.
        stage: one of :data:`simgen.batch.manifest.STAGES`.
        out_root: the batch's output folder (a path every node sees).
        fingerprint: the stage's fingerprint as the driver computed it (stored in the record).
        inputs: what the fingerprint covers (stored for people reading the record).
        attempt: 1 for the first try.
    Returns:
        ``{"ok": True, "seconds", "result"}`` or ``{"ok": False, "seconds", "error", "message", "type",
        "problems", "traceback"}``. Output printed by the stage goes to ``OUT/<scene>/logs/<stage>.log``.
    """
    out = Path(out_root)
    scene_root = out / plan.name
    scene_dir, build_dir = plan.scene_dir(out), plan.build_dir(out)
    log = records.log_path(scene_root, stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"--- {stage} attempt {attempt} on {plan.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = STAGE_FUNCTIONS[stage](plan, scene_dir, build_dir)
            for w in caught:
                print(f"warning: {w.message}")
        except Exception as e:
            seconds = time.perf_counter() - t0
            info = describe_error(e)
            print(info["traceback"])
            records.write_error(scene_root, stage, {**info, "attempt": attempt, "seconds": round(seconds, 3)})
            return {"ok": False, "seconds": seconds, **info}
    seconds = time.perf_counter() - t0
    records.write_record(
        scene_root,
        stage,
        {
            "fingerprint": fingerprint,
            "inputs": inputs,
            "seconds": round(seconds, 3),
            "attempt": attempt,
            "result": result,
        },
    )
    return {"ok": True, "seconds": seconds, "result": result}
