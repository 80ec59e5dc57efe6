"""``simgen batch MANIFEST -o OUT``: many scenes through the pipeline as Ray tasks (docs/cluster.md)."""

from __future__ import annotations

import argparse
import sys

from simgen.cli.common import add_command, error
from simgen.config import positive_int

EXAMPLES = """examples:
  simgen batch scenes.yaml -o runs/                       # embedded Ray sized to this machine
  simgen batch scenes.yaml -o runs/ --num-cpus 8 --retries 2
  simgen batch scenes.yaml -o /shared/runs --address auto # join the Ray cluster of this node
  simgen batch scenes.yaml -o /shared/runs --address ray://head:10001
  simgen batch scenes.yaml -o runs/ --stages validate,build,export   # these stages only
  simgen batch scenes.yaml -o runs/ --force               # redo every stage

minimal manifest (YAML or JSON; every key in docs/cluster.md):
  {"scenes": [{"name": "a", "path": "scenes/a"}, {"name": "s0", "path": "scannet:/data/scans/scene0000_00"}]}

outputs: OUT/<scene>/{scene,build,stages,logs}/, OUT/batch.json, OUT/batch.md.
A rerun skips the stages whose records say done and redoes the rest. Exit status: 0 all scenes done,
1 some scene failed, 2 bad manifest or settings, 130 interrupted (Ctrl-C / SIGTERM).
"""


def _stages(text: str) -> tuple[str, ...]:
    from simgen.batch.manifest import STAGES

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STAGES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"stages are a comma-separated list of {', '.join(STAGES)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "batch",
        help="run many scenes (a manifest) through import/validate/build/export/check/eval on Ray",
        description="Run every scene of a manifest through the stages of `simgen build`, `export`, `check` "
        "and `eval`, one Ray task per scene stage, on an embedded Ray instance or a cluster. Finished stages "
        "are recorded and skipped on a rerun; a failing stage is retried, then its scene is reported as "
        "failed and the others go on. Writes OUT/batch.json and OUT/batch.md.",
        examples=EXAMPLES,
        func=cmd_batch,
    )
    p.add_argument("manifest", help="manifest file (.yaml, .yml or .json)")
    p.add_argument("-o", "--output", required=True, help="output folder (on storage every Ray node sees)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, ray://HOST:10001 or HOST:6379; None starts an embedded instance",
    )
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the embedded Ray instance")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of the embedded Ray instance")
    p.add_argument(
        "--retries", type=int, default=1, help="tries again of a failed stage before its scene is failed"
    )
    p.add_argument(
        "--stages",
        type=_stages,
        default=None,
        help="comma-separated stages for every scene (overrides the manifest)",
    )
    p.add_argument("--force", action="store_true", help="redo every stage, ignoring the completion records")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def cmd_batch(args: argparse.Namespace) -> int:
    from simgen.batch import BatchConfig, BatchError, ManifestError, load_manifest, run_batch
    from simgen.batch.report import REPORT_JSON, REPORT_MD
    from simgen.config import ConfigError

    if args.address is not None and (args.num_cpus is not None or args.num_gpus is not None):
        raise ConfigError(
            "--num-cpus / --num-gpus size the embedded Ray instance; a cluster (--address) has its own"
        )
    try:
        cfg = BatchConfig(
            address=args.address,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            retries=args.retries,
            force=args.force,
            progress=not args.quiet,
        )
        manifest = load_manifest(args.manifest, stages=args.stages)
    except (ValueError, ManifestError) as e:
        raise ConfigError(str(e)) from None
    try:
        result = run_batch(manifest, args.output, cfg)
    except BatchError as e:
        return error(str(e))
    t = result.report["totals"]
    if not args.quiet:
        print(
            f"{t['done']} of {t['scenes']} scene(s) done, {t['failed']} failed"
            + (f", {t['interrupted']} interrupted" if t["interrupted"] else "")
            + f"; stages run {t['stages_run']}, skipped {t['stages_skipped']}"
        )
        for row in result.report["scenes"]:
            if row["error"]:
                e = row["error"]
                print(f"  {row['name']}: {e.get('stage')} failed: {e.get('error')}", file=sys.stderr)
        print(f"wrote {result.out_dir / REPORT_JSON} and {result.out_dir / REPORT_MD}")
    if result.interrupted:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    return 1 if t["failed"] else 0
