"""Scene corruption fuzzer, long run: many more cases than tests/test_fuzz_scene.py (issue #19).

Usage: python bench/bench_fuzz.py [--cases 2000] [--seed 19] [--build-every 10] [--subprocess-builds 5]
       [--json out.json]

Each case damages one file of a fresh copy of a small valid scene (simgen.cli.fuzz: truncations, byte
flips, wrong modes and sizes, swapped files, deletions, folders and symlinks out of the scene folder, bad
JSON values, escaping paths, absurd nesting), then runs ``simgen validate`` on it in this process, and every
``--build-every``-th case ``simgen build --no-gaussians --no-export`` too. ``--subprocess-builds`` builds
of damaged scenes run as real ``simgen`` processes, to see stderr exactly as a user would (no traceback).
Prints the outcome counts per stage and per file kind and exits 1 if any case broke the contract.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simgen.cli import fuzz  # noqa: E402


def subprocess_builds(cases: list[fuzz.Case], base: Path, work: Path) -> Counter:
    """Build damaged scenes with the real program; count rc / traceback / partial output."""
    out: Counter = Counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for case in cases:
        root = work / f"sub{case.index:05d}"
        scene, outside = root / "scene", root / "outside"
        shutil.copytree(base, scene, symlinks=True)
        outside.mkdir()
        case.detail = fuzz.apply_case(case, scene, outside)
        build = root / "build"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "simgen",
                "build",
                str(scene),
                "-o",
                str(build),
                "--no-gaussians",
                "--no-export",
                "-q",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if "Traceback" in r.stderr:
            out["traceback"] += 1
            print(f"TRACEBACK {case.label}\n{r.stderr[-2000:]}")
        elif r.returncode != 0 and build.exists():
            out["partial"] += 1
        else:
            out["built" if r.returncode == 0 else "refused"] += 1
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--build-every", type=int, default=10, help="build every N-th case (0: never)")
    ap.add_argument("--subprocess-builds", type=int, default=5, help="cases built as real processes")
    ap.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    by_kind: dict[str, Counter] = {}
    by_op: Counter = Counter()
    t0 = time.perf_counter()
    try:
        base = fuzz.make_base_scene(work / "base")
        cases = fuzz.generate_cases(args.cases, args.seed)

        def record(o: fuzz.Outcome) -> None:
            if o.stage == "validate":
                by_kind.setdefault(o.case.kind, Counter())[o.result] += 1
                by_op[o.case.op] += 1
            if o.result in fuzz.BAD_OUTCOMES:
                print(f"BAD {o.stage} {o.result} {o.case.label}\n{o.message}")

        tally = fuzz.run_cases(cases, base, work, build_every=args.build_every, on_outcome=record)
        seconds = time.perf_counter() - t0
        sub_cases = fuzz.generate_cases(args.subprocess_builds, args.seed + 1)
        sub = subprocess_builds(sub_cases, base, work) if sub_cases else Counter()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"cases: {args.cases} (seed {args.seed}), {seconds:.1f} s in process")
    for stage in ("validate", "build"):
        row = tally.counts.get(stage, {})
        cols = ", ".join(f"{k} {row.get(k, 0)}" for k in (*fuzz.OK_OUTCOMES, *fuzz.BAD_OUTCOMES) if k in row)
        print(f"{stage:>9}: {tally.total(stage)} runs: {cols or '-'}")
    if sub_cases:
        print(
            f"subprocess builds: {sum(sub.values())}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(sub.items()))
        )
    print("\nvalidate outcomes by file kind:")
    for kind in fuzz.KINDS:
        row = by_kind.get(kind, Counter())
        print(f"  {kind:<12} " + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
    print("cases by corruption: " + ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())))
    bad = len(tally.failures) + sub.get("traceback", 0) + sub.get("partial", 0)
    print(f"\ncontract breaches (unnamed / accepted / traceback / partial): {bad}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cases": args.cases,
                    "seed": args.seed,
                    "seconds": round(seconds, 1),
                    "counts": tally.counts,
                    "subprocess_builds": dict(sub),
                    "by_kind": {k: dict(v) for k, v in by_kind.items()},
                    "by_op": dict(by_op),
                    "breaches": bad,
                },
                indent=2,
            )
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
