"""Smoke run of bench/run.py: tiny preset, fusion only, into a temporary folder and a temporary docs copy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_fusion_run_writes_only_between_markers(tmp_path, bench):
    docs = tmp_path / "benchmarks.md"
    before, after = "# Benchmarks\n\nHand-written intro.\n\n", "\n## Notes\n\nKept as is.\n"
    docs.write_text(f"{before}{bench.START}\nstale table\n{bench.END}\n{after}")
    out = tmp_path / "bench"
    argv = ["--presets", "tiny", "--methods", "fusion", "--out", str(out), "--docs", str(docs)]
    assert bench.main([*argv, "--samples", "20000", "--quiet"]) == 0

    text = docs.read_text()
    assert text.startswith(before + bench.START) and text.endswith(bench.END + "\n" + after)
    assert "stale table" not in text
    section = text[text.index(bench.START) : text.index(bench.END)]
    for head in (
        "| method | PQ | SQ | RQ | mIoU | mAcc | mCov | mW-Cov |",
        "| Acc (cm) | Comp (cm) | C-L1 (cm) |",
    ):
        assert head in section
    assert "s/iter" in section and "peak RSS (MB)" in section and "usable cores" in section

    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["tiny/fusion"]
    r = results["tiny/fusion"]
    assert r["build"]["ok"] and r["build"]["iterations"] == 14 and r["build"]["peak_rss_mb"] > 50
    m = r["metrics"]
    # The table shows exactly the evaluated numbers, and fusion on the noiseless synthetic depth is
    # a real reconstruction (not an empty or shifted mesh).
    row = next(
        line for line in section.splitlines() if line.startswith("| fusion (TSDF) | ") and "%" not in line
    )
    assert row.split(" | ")[1] == f"{100 * m['panoptic']['pq']:.2f}"
    assert m["geometry"]["recall"] > 0.8 and m["semantic_2d"]["miou"] > 0.6
    assert json.loads((out / "builds" / "tiny" / "fusion" / "eval" / "metrics.json").read_text()) == m

    # A second run of another "method" set keeps the first rows (results accumulate) and the markers
    # are appended to a file that lacks them, leaving its text alone.
    plain = tmp_path / "plain.md"
    plain.write_text("# Only prose\n")
    bench.write_docs(plain, bench.render_section(results))
    assert (
        plain.read_text().startswith("# Only prose\n\n" + bench.START)
        and "fusion (TSDF)" in plain.read_text()
    )
    half = tmp_path / "half.md"
    half.write_text(f"x\n{bench.START}\n")
    with pytest.raises(SystemExit, match="only one of the markers"):
        bench.write_docs(half, "y")
    assert half.read_text() == f"x\n{bench.START}\n"


def test_failed_build_is_reported_not_fatal(bench):
    results = {
        "tiny/neural": {
            "preset": "tiny",
            "method": "neural",
            "build": {"ok": False, "error": "NeuralTrainingError: loss term L_sdf became nan"},
            "run_id": "r",
            "machine": bench.machine_info(),
        }
    }
    section = bench.render_section(results)
    assert "failed: NeuralTrainingError" in section and "| PQ |" not in section
