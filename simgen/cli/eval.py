"""``simgen eval``: score a build against a scene's ground truth, with a picture report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simgen.cli.common import add_command, add_config, config_from_args

EXAMPLES = """examples:
  simgen eval runs/room --scene scenes/room                 # test split; writes runs/room/eval/
  simgen eval runs/room --scene scenes/room --split all --report /tmp/room_report
  simgen eval runs/room --scene scenes/room --no-pictures --quiet   # numbers only, silently
  simgen eval runs/room --scene scenes/room --ignore-pred-void      # torchmetrics / Panoptic Lifting PQ
  simgen eval runs/room --scene scenes/room --gt-culling none       # score the whole GT mesh, seen or not

outputs (OUT/eval/): metrics.json (every number), metrics.md (the table), report/ (pictures + report.md).
Metric definitions: docs/evaluation.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.eval.config import EvalConfig

    p = add_command(
        sub,
        "eval",
        help="score a build against the scene's ground truth (PQ, mIoU, mCov, geometry, appearance)",
        description="Render the build's panoptic mesh at the scene's frames (the render server's ray caster) "
        "and compare with gt/: scene-level panoptic quality, semantic mIoU / mAcc, instance mCov / mW-Cov "
        "(2D and 3D), geometry accuracy / completeness / Chamfer-L1 / F-score, and RGB / depth of the "
        "rendered views. Writes OUT/eval/metrics.json, OUT/eval/metrics.md and a picture report.",
        examples=EXAMPLES,
    )
    p.add_argument("out", help="build folder holding panoptic_mesh.ply")
    p.add_argument("--scene", required=True, help="scene folder (transforms.json and gt/)")
    add_config(p, EvalConfig)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from simgen.data import io
    from simgen.eval.config import EvalConfig
    from simgen.eval.evaluate import EvalError, evaluate, markdown_table
    from simgen.folders import EVAL_DIR, METRICS_JSON, METRICS_MD

    cfg = config_from_args(EvalConfig, args)
    out = Path(args.out)
    try:
        result = evaluate(out, Path(args.scene), cfg)
    except (EvalError, io.ImageError) as e:  # ImageError: a scene image that cannot be decoded (file, frame)
        print(f"error: {e}", file=sys.stderr)
        return 1
    metrics = result["metrics"]
    table = markdown_table(metrics)
    eval_dir = out / EVAL_DIR
    io.write_json(eval_dir / METRICS_JSON, metrics)
    with io.atomic_path(eval_dir / METRICS_MD) as tmp:
        tmp.write_text(table)
    written = [eval_dir / METRICS_JSON, eval_dir / METRICS_MD]
    if cfg.pictures:
        from simgen.eval.report import write_report

        written += write_report(result, Path(cfg.report) if cfg.report else eval_dir / "report", table)
    if not cfg.quiet:
        print(table)
        print("wrote:")
        for p in written:
            print(f"  {p}")
    return 0
