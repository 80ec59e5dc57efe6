"""The batch report a team reads: ``OUT/batch.json`` (everything) and ``OUT/batch.md`` (one table row per
scene: status, stage times, models / hulls, ``simgen check`` problems, eval metrics when GT exists).

Rows come from the stage records on disk, so a rerun that skipped everything still reports what the
earlier run made (stage times are those of the run that did the work; ``skipped`` marks them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from simgen.batch import records
from simgen.data import io

if TYPE_CHECKING:
    from simgen.batch.driver import SceneState

REPORT_JSON = "batch.json"
REPORT_MD = "batch.md"
STATUSES = ("done", "failed", "interrupted", "running", "pending")


def scene_row(state: SceneState, out_dir: Path) -> dict[str, Any]:
    """One scene's report entry: status, per-stage status / seconds / attempts, and the stage results."""
    plan = state.plan
    scene_root = out_dir / plan.name
    results: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for stage in plan.stages:
        st = dict(state.stages.get(stage, {"status": "pending", "seconds": None, "attempts": 0}))
        rec = records.read_record(scene_root, stage) if st["status"] in ("done", "skipped") else None
        if rec is not None:
            results[stage] = rec.get("result") or {}
        stages[stage] = st
    build, export, check = results.get("build", {}), results.get("export", {}), results.get("check", {})
    row: dict[str, Any] = {
        "name": plan.name,
        "status": state.status,
        "source": (f"{plan.dataset}:" if plan.dataset else "") + plan.source,
        "scene_dir": str(plan.scene_dir(out_dir)),
        "build_dir": str(plan.build_dir(out_dir)),
        "method": plan.method,
        "stages": stages,
        "seconds": round(sum(s["seconds"] or 0 for s in stages.values() if s["status"] != "skipped"), 3),
        "frames": (results.get("validate") or {}).get("frames"),
        "instances": build.get("instances"),
        "models": export.get("models"),
        "things": export.get("things"),
        "hulls": export.get("hulls"),
        "check_problems": check.get("problems"),
        "check_details": check.get("details", []),
        "metrics": (results.get("eval") or {}).get("metrics"),
        "error": state.error,
    }
    return row


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"scenes": len(rows), **{k: sum(r["status"] == k for r in rows) for k in STATUSES}}
    stage_status = [s["status"] for r in rows for s in r["stages"].values()]
    out["stages_run"] = sum(s in ("done", "failed", "retrying", "interrupted") for s in stage_status)
    out["stages_skipped"] = stage_status.count("skipped")
    out["attempts"] = sum(s.get("attempts", 0) for r in rows for s in r["stages"].values())
    return out


def _cell(v: Any, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(report: dict[str, Any]) -> str:
    """``batch.md``: a header, one row per scene, then each failure with its message and problems."""
    b, t = report["batch"], report["totals"]
    stage_names: list[str] = []
    for r in report["scenes"]:
        stage_names += [s for s in r["stages"] if s not in stage_names]
    lines = [
        "# simgen batch report",
        "",
        f"- manifest: `{b.get('manifest')}`",
        f"- output: `{b.get('out')}`",
        f"- started {b.get('started')}, {b.get('seconds', 0):.1f} s"
        + (" (interrupted)" if b.get("interrupted") else ""),
        f"- Ray: {(b.get('ray') or {}).get('address', '?')}, {(b.get('ray') or {}).get('nodes', '?')} node(s), "
        f"{(b.get('ray') or {}).get('cpus', '?')} CPUs, {(b.get('ray') or {}).get('gpus', '?')} GPUs",
        f"- scenes: {t['scenes']}: {t['done']} done, {t['failed']} failed, {t['interrupted']} interrupted; "
        f"stages run {t['stages_run']}, skipped (already done) {t['stages_skipped']}",
        "",
        "Stage cells: seconds of the run that did the work; `(s)` = skipped, already done; "
        "`xN` = N attempts; `no-gt` = the scene has no ground truth.",
        "",
    ]
    metric_keys = ("pq", "miou_2d", "mcov_2d", "chamfer_l1_cm", "fscore")
    head = ["scene", "status", *stage_names, "models", "hulls", "check problems", *metric_keys]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["scenes"]:
        cells = [r["name"], r["status"]]
        for name in stage_names:
            s = r["stages"].get(name)
            if s is None:
                cells.append("")
                continue
            if s["status"] in ("no-gt", "pending", "running", "interrupted"):
                cells.append(s["status"])
                continue
            text = _cell(s["seconds"], "{:.1f}")
            text += " (s)" if s["status"] == "skipped" else ""
            text += f" x{s['attempts']}" if s.get("attempts", 0) > 1 else ""
            text += " FAILED" if s["status"] == "failed" else ""
            cells.append(text)
        cells += [_cell(r["models"]), _cell(r["hulls"]), _cell(r["check_problems"])]
        m = r["metrics"] or {}
        for k in metric_keys:
            v = m.get(k)
            cells.append(_cell(v, "{:.2f}" if k == "chamfer_l1_cm" else "{:.3f}"))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    failed = [r for r in report["scenes"] if r["error"]]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            e = r["error"]
            lines.append(f"- **{r['name']}**, stage {e.get('stage')}: {e.get('error')}")
            for p in (e.get("problems") or [])[:20]:
                lines.append(f"  - {p}")
            lines.append(f"  (log: `{r['name']}/logs/{e.get('stage')}.log`)")
    problems = [r for r in report["scenes"] if r["check_details"]]
    if problems:
        lines += ["", "## simgen check problems", ""]
        for r in problems:
            lines.append(f"- **{r['name']}** ({r['check_problems']}):")
            lines += [f"  - {p}" for p in r["check_details"][:10]]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, states: list[SceneState], info: dict[str, Any]) -> dict[str, Any]:
    """Write ``OUT/batch.json`` and ``OUT/batch.md`` atomically; returns the report."""
    rows = [scene_row(s, out_dir) for s in states]
    report = {"batch": info, "totals": totals(rows), "scenes": rows}
    io.write_json(Path(out_dir) / REPORT_JSON, report)
    with io.atomic_path(Path(out_dir) / REPORT_MD) as tmp:
        tmp.write_text(markdown(report))
    return report
