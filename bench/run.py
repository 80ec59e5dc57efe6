"""The benchmark suite: build every synthetic preset with every method and ablation, evaluate, and write
the results section of docs/benchmarks.md.

Usage:
    python bench/run.py                                   # every preset x every method (hours on a CPU)
    python bench/run.py --presets tiny room --methods fusion
    python bench/run.py --presets tiny --methods neural neural-no-spatial-prior --steps 300
    python bench/run.py --docs /tmp/benchmarks.md --out /tmp/bench   # write somewhere else

Each build runs in a fresh process (so its peak memory is its own), then ``simgen eval``'s
:func:`simgen.eval.evaluate.evaluate` scores it on the scene's test split. Results accumulate in
``OUT/results.json`` keyed by (preset, method): a later run with other presets or methods adds rows
and replaces the rows it reruns (``--fresh`` starts over). Scenes are synthesised once into
``OUT/scenes/`` and reused while their preset and seed match (delete the folder after changing the
synthesiser). The docs section between the markers
``<!-- bench:run:start -->`` and ``<!-- bench:run:end -->`` is rewritten from all accumulated rows;
text outside the markers is never touched (the markers are appended when the file lacks them).

Methods: ``fusion`` (online panoptic TSDF fusion), ``neural`` (PanopticRecon++, preset "fast") and its
ablations ``neural-no-spatial-prior``, ``neural-no-dynamic-tokens``, ``neural-no-panoptic-head`` (the
paper's Table V). Not part of CI; tests/test_bench_smoke.py runs a tiny fusion-only pass.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # bench/machine.py, also when run.py is loaded by path
from machine import machine_info, machine_line

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:run:start -->", "<!-- bench:run:end -->"
PRESETS = ("tiny", "room", "two-rooms")

# Method name -> (builder, NeuralConfig overrides). Order is the tables' row order.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fusion": ("fusion", {}),
    "neural": ("neural", {}),
    "neural-no-spatial-prior": ("neural", {"spatial_prior": False}),
    "neural-no-dynamic-tokens": ("neural", {"dynamic_tokens": False}),
    "neural-no-panoptic-head": ("neural", {"panoptic_head": False}),
}
LABELS = {
    "fusion": "fusion (TSDF)",
    "neural": "neural (PanopticRecon++, fast)",
    "neural-no-spatial-prior": "neural w/o spatial prior",
    "neural-no-dynamic-tokens": "neural w/o dynamic tokens",
    "neural-no-panoptic-head": "neural w/o panoptic head",
}


# ----------------------------------------------------------------------------- machine


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# ----------------------------------------------------------------------------- scenes and builds


def ensure_scene(preset: str, root: Path, seed: int, quiet: bool) -> Path:
    """``root/<preset>``: synthesised unless a scene of that preset and seed is already there."""
    from simgen.synth import synthesize

    scene_dir = root / preset
    meta = scene_dir / "gt" / "synth.json"
    if (scene_dir / "transforms.json").is_file() and meta.is_file():
        try:
            m = json.loads(meta.read_text())
            if m.get("preset") == preset and m.get("seed") == seed:
                return scene_dir
        except (OSError, ValueError):
            pass
    if not quiet:
        print(f"[bench] synthesising {preset} (seed {seed}) -> {scene_dir}", flush=True)
    return Path(synthesize(scene_dir, preset=preset, seed=seed, overwrite=True, quiet=quiet))


WORKER = "_build-worker"  # first argument of the child process that runs one build


def build_once(
    method: str, scene_dir: str, out_dir: str, steps: int | None, quiet: bool, threads: int = 1
) -> dict[str, Any]:
    """One build in this process; returns its summary with this process's peak RSS and GPU peak."""
    from simgen.data.scene import load_scene

    builder, overrides = METHODS[method]
    scene = load_scene(scene_dir)
    t0 = time.perf_counter()
    if builder == "fusion":
        from simgen.recon.fusion import FusionConfig, run_fusion

        rec = run_fusion(scene, out_dir, FusionConfig(), progress=not quiet)
        wall = time.perf_counter() - t0
        n_iter, iter_name, iter_s = (
            rec["counters"]["frames"],
            "frame",
            wall / max(1, rec["counters"]["frames"]),
        )
    else:
        import torch

        from simgen.recon.neural import NeuralConfig, run_neural

        torch.set_num_threads(threads)
        if steps is not None:
            overrides = {**overrides, "steps": steps}
        rec = run_neural(scene, out_dir, NeuralConfig(preset="fast", **overrides), progress=not quiet)
        wall = time.perf_counter() - t0
        n_iter, iter_name, iter_s = rec["counters"]["steps"], "step", rec["timings_s"].get("step_mean")
    torch = sys.modules.get("torch")  # only a builder that imported torch can have used the GPU
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch and torch.cuda.is_available() else None
    return {
        "ok": True,
        "build_s": wall,
        "iterations": n_iter,
        "iteration": iter_name,
        "s_per_iter": iter_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # kB on Linux
        "peak_gpu_mb": gpu_mb,
        "device": rec["counters"].get("device", "cpu"),
        "vertices": int(len(rec["mesh"].vertices)),
        "instances": len(rec["instances"]),
        "config": rec.get("config"),
    }


def _worker_main(spec_json: str) -> int:
    """Child entry point: run :func:`build_once` and write its report (or the error) as JSON."""
    from simgen.data import io

    spec = json.loads(spec_json)
    try:
        report = build_once(
            spec["method"], spec["scene"], spec["out"], spec["steps"], spec["quiet"], spec.get("threads", 1)
        )
    except Exception as e:  # the parent records the failure and goes on with the next build
        report = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    io.write_json(spec["report"], report)
    return 0


def run_build(
    method: str, scene_dir: Path, out_dir: Path, steps: int | None, quiet: bool, threads: int = 1
) -> dict[str, Any]:
    """Build in a fresh Python process (so peak memory and imports are the build's own); its report."""
    report_path = out_dir.parent / f".{out_dir.name}.report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.unlink(missing_ok=True)
    spec = {"method": method, "scene": str(scene_dir), "out": str(out_dir), "steps": steps, "quiet": quiet,
            "threads": threads, "report": str(report_path)}  # fmt: skip
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), WORKER, json.dumps(spec)])
    if not report_path.is_file():
        return {"ok": False, "error": f"build process exited with code {proc.returncode} and no report"}
    report = json.loads(report_path.read_text())
    report_path.unlink()
    return report


def run_eval(build: Path, scene_dir: Path, samples: int, pictures: bool, quiet: bool) -> dict[str, Any]:
    """``simgen eval`` on the test split; writes BUILD/eval/ like the command and returns metrics.json."""
    from simgen.data import io
    from simgen.eval.config import EvalConfig
    from simgen.eval.evaluate import evaluate, markdown_table
    from simgen.folders import EVAL_DIR, METRICS_JSON, METRICS_MD

    cfg = EvalConfig(split="test", samples=samples, pictures=pictures, quiet=quiet)
    result = evaluate(build, scene_dir, cfg)
    metrics = result["metrics"]
    table = markdown_table(metrics)
    io.write_json(build / EVAL_DIR / METRICS_JSON, metrics)
    with io.atomic_path(build / EVAL_DIR / METRICS_MD) as tmp:
        tmp.write_text(table)
    if pictures:
        from simgen.eval.report import write_report

        write_report(result, build / EVAL_DIR / "report", table)
    return metrics


# ----------------------------------------------------------------------------- tables


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _ordered(results: dict[str, dict]) -> list[tuple[str, str, dict]]:
    keys = [tuple(k.split("/", 1)) for k in results]
    pre = {p: i for i, p in enumerate(PRESETS)}
    met = {m: i for i, m in enumerate(METHODS)}
    keys.sort(key=lambda k: (pre.get(k[0], 99), k[0], met.get(k[1], 99), k[1]))
    return [(p, m, results[f"{p}/{m}"]) for p, m in keys]


def render_section(results: dict[str, dict]) -> str:
    """The Markdown between the markers: per preset, Tables I-III / IV shaped tables, appearance, cost."""
    out = [
        "## Results",
        "",
        "Generated by `bench/run.py`; do not edit between the markers. Metrics are `simgen eval` on each "
        "scene's test split (definitions: [evaluation.md](evaluation.md)); ratios in %, distances in cm. "
        "2D panoptic numbers are scene-level (PQ^scene: all test frames concatenated). "
        "s/iter is seconds per fused frame (fusion) or per optimisation step (neural); "
        "peak memory is the build process's peak resident set (and GPU allocation when on CUDA).",
        "",
    ]
    by_preset: dict[str, list[tuple[str, dict]]] = {}
    for p, m, r in _ordered(results):
        by_preset.setdefault(p, []).append((m, r))
    for preset, rows in by_preset.items():
        ok = [(m, r) for m, r in rows if r.get("metrics")]
        out += [f"### Preset `{preset}`", ""]
        if ok:
            out += ["Panoptic segmentation (shape of the paper's Tables I-III):", ""]
            seg_rows = []
            for m, r in ok:
                x = r["metrics"]
                s3, i3 = x.get("semantic_3d", {}), x.get("instance_3d", {})
                seg_rows.append(
                    [LABELS.get(m, m)]
                    + [_pct(x["panoptic"][k]) for k in ("pq", "sq", "rq")]
                    + [_pct(x["semantic_2d"][k]) for k in ("miou", "macc")]
                    + [_pct(x["instance_2d"][k]) for k in ("mcov", "mwcov")]
                    + [
                        _pct(s3.get("miou")),
                        _pct(s3.get("macc")),
                        _pct(i3.get("mcov")),
                        _pct(i3.get("mwcov")),
                    ]
                )
            head = ["method", "PQ", "SQ", "RQ", "mIoU", "mAcc", "mCov", "mW-Cov"]
            head += ["mIoU 3D", "mAcc 3D", "mCov 3D", "mW-Cov 3D"]
            out += _table(head, seg_rows) + [""]
            out += ["Reconstruction (shape of the paper's Table IV; thresholds 5 cm):", ""]
            geo_rows = []
            for m, r in ok:
                g = r["metrics"].get("geometry", {})
                geo_rows.append(
                    [LABELS.get(m, m)]
                    + [_num(g.get(k)) for k in ("accuracy_cm", "completeness_cm", "chamfer_l1_cm")]
                    + [_pct(g.get(k)) for k in ("precision", "recall", "fscore")]
                )
            out += _table(["method", "Acc (cm)", "Comp (cm)", "C-L1 (cm)", "Prec", "Rec", "F1"], geo_rows)
            out += [
                "",
                "Rendering of the test views (mesh vertex colours unless the build has Gaussians):",
                "",
            ]
            app_rows = []
            for m, r in ok:
                a = r["metrics"]["appearance"]
                app_rows.append(
                    [
                        LABELS.get(m, m),
                        a["renderer"],
                        _num(a["psnr"]),
                        _num(a["ssim"], 4),
                        _num(a["depth_absrel"], 4),
                    ]
                )
            out += _table(["method", "renderer", "PSNR (dB)", "SSIM", "depth AbsRel"], app_rows, "llrrr") + [
                ""
            ]
        out += ["Cost:", ""]
        cost_rows = []
        for m, r in rows:
            b = r.get("build", {})
            if not b.get("ok"):
                cost_rows.append(
                    [LABELS.get(m, m), "failed: " + b.get("error", "?").replace("|", "/")[:120]] + [""] * 6
                )
                continue
            gpu = "-" if b.get("peak_gpu_mb") is None else f"{b['peak_gpu_mb']:.0f}"
            cost_rows.append(
                [
                    LABELS.get(m, m),
                    f"{b['build_s']:.1f}",
                    f"{b['iterations']} {b['iteration']}s",
                    f"{b['s_per_iter']:.4f}" if b.get("s_per_iter") is not None else "-",
                    f"{b['peak_rss_mb']:.0f}",
                    gpu,
                    f"{r['eval_s']:.1f}" if r.get("eval_s") is not None else "-",
                    r.get("date", "-"),
                ]
            )
        out += _table(
            [
                "method",
                "build (s)",
                "iterations",
                "s/iter",
                "peak RSS (MB)",
                "peak GPU (MB)",
                "eval (s)",
                "run",
            ],
            cost_rows,
            "lrrrrrrl",
        )
        out += [""]
    runs = {}
    for _, _, r in _ordered(results):
        # Two runs can start in the same minute (parallel builds), so the command is part of the key.
        runs.setdefault((r.get("run_id", "?"), r.get("command")), r)
    out += ["### Runs", ""]
    for (run_id, _), r in runs.items():
        out += [
            f"- `{run_id}`: `{r.get('command', '?')}` at commit `{r.get('commit')}` on "
            f"{machine_line(r['machine']) if r.get('machine') else '?'}"
        ]
    out += [""]
    return "\n".join(out)


def write_docs(path: Path, section: str) -> None:
    """Replace the text between the markers of ``path`` (append the markers when missing), atomically."""
    from simgen.data import io

    text = path.read_text() if path.is_file() else ""
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        i, j = text.index(START), text.index(END) + len(END)
        new = text[:i] + block + text[j:]
    elif START in text or END in text:
        raise SystemExit(
            f"error: {path}: only one of the markers {START} / {END} is present (or out of order)"
        )
    else:
        new = (
            text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + block + "\n"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        tmp.write_text(new)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS, help="synthetic presets")
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods / ablations"
    )
    ap.add_argument("--steps", type=int, default=None, help="override the neural preset's optimisation steps")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of a neural build (1 is fastest on a 2-core machine with anything else running)",
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "out" / "bench", help="scenes, builds and results.json"
    )
    ap.add_argument("--docs", type=Path, default=DOCS, help="Markdown file whose marked section is rewritten")
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs file")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results in OUT/results.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    ap.add_argument(
        "--samples", type=int, default=200_000, help="surface samples per mesh for the 3D metrics"
    )
    ap.add_argument("--pictures", action="store_true", help="also write each build's picture report")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.samples < 1:
        ap.error(f"--samples must be >= 1, got {args.samples}")
    return args


def main(argv: list[str] | None = None) -> int:
    from simgen.data import io
    from simgen.eval.evaluate import EvalError

    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, dict] = {}
    if results_path.is_file() and not args.fresh:
        try:
            results = json.loads(results_path.read_text())["results"]
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {results_path}: unreadable ({e}); rerun with --fresh", file=sys.stderr)
            return 1
    mach = machine_info()
    run_id = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    commit = git_commit()
    print(f"[bench] {machine_line(mach)}", flush=True)
    failures = 0
    for preset in args.presets:
        scene_dir = ensure_scene(preset, out / "scenes", args.seed, args.quiet)
        for method in args.methods:
            build = out / "builds" / preset / method
            if not args.quiet:
                print(f"[bench] {preset} / {method}: building -> {build}", flush=True)
            entry: dict[str, Any] = {
                "preset": preset,
                "method": method,
                "steps": args.steps if METHODS[method][0] == "neural" else None,
                "threads": args.threads if METHODS[method][0] == "neural" else None,
                "seed": args.seed,
                "run_id": run_id,
                "date": run_id.split(" ")[0],
                "command": command,
                "commit": commit,
                "machine": mach,
            }
            entry["build"] = run_build(method, scene_dir, build, args.steps, args.quiet, args.threads)
            if entry["build"].get("ok"):
                t = time.perf_counter()
                try:
                    entry["metrics"] = run_eval(build, scene_dir, args.samples, args.pictures, args.quiet)
                    entry["eval_s"] = time.perf_counter() - t
                except (EvalError, ValueError, OSError) as e:
                    entry["build"] = {**entry["build"], "ok": False, "error": f"evaluation failed: {e}"}
            if not entry["build"].get("ok"):
                failures += 1
                print(f"[bench] {preset} / {method} FAILED: {entry['build'].get('error')}", file=sys.stderr)
                if entry["build"].get("traceback") and not args.quiet:
                    print(entry["build"]["traceback"], file=sys.stderr)
            else:
                x = entry["metrics"]
                print(
                    f"[bench] {preset} / {method}: PQ {_pct(x['panoptic']['pq'])}  mIoU {_pct(x['semantic_2d']['miou'])}"
                    f"  F1 {_pct(x.get('geometry', {}).get('fscore'))}  build {entry['build']['build_s']:.1f} s"
                    f"  peak {entry['build']['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            results[f"{preset}/{method}"] = entry
            io.write_json(results_path, {"results": results})
    if not args.no_docs:
        write_docs(args.docs, render_section(results))
        print(f"[bench] wrote {args.docs}")
    print(f"[bench] wrote {results_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == WORKER:
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit(main())
