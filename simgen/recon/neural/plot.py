"""Training curves of a neural build: ``OUT/training.png`` from ``OUT/train_log.jsonl``.

Losses are easier to judge as curves than as JSONL lines: whether a term still falls, where a schedule
switch (section V-D) made one jump, and how the token count moved with the dynamic adjustment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simgen.data import io
from simgen.recon.neural.config import NeuralConfig

PLOT_FILE = "training.png"
NOT_TERMS = ("step", "total", "tokens", "xi", "time_s")


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``train_log.jsonl`` (one dict per line, as written by ``run_neural``).

    Raises:
        ValueError: a line is not JSON or has no ``step`` (message names the file and line).
    """
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if not isinstance(rec, dict) or "step" not in rec:
            raise ValueError(f"{path}:{n}: a log record needs a 'step'")
        rows.append(rec)
    return rows


def running_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each index (fewer at the start), same length as ``y``."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def training_figure(rows: list[dict], cfg: NeuralConfig | None = None):
    """A matplotlib ``Figure``: every loss term against the step (log scale; a term appears from the
    step its group switches on) and the weighted total, then the active token count. With ``cfg`` the
    schedule's switch points (``seg_start``, ``pan_start``, ``dice_stop``, adjustment window) are
    marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    ax_loss, ax_tok = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    terms = sorted({k for r in rows for k in r if k not in NOT_TERMS})
    for i, name in enumerate(["total", *terms]):
        pts = [(r["step"], r[name]) for r in rows if name in r and r[name] > 0]
        if not pts:
            continue
        x, y = (np.asarray(v, float) for v in zip(*pts, strict=True))
        colour = "k" if name == "total" else f"C{i % 10}"
        # single batches are noisy: the logged values faintly, a running mean over ~1/40 of them on top
        ax_loss.plot(x, y, color=colour, lw=0.5, alpha=0.25, label=f"_{name} logged")
        ax_loss.plot(x, running_mean(y, max(1, len(y) // 40)), color=colour, lw=2 if name == "total" else 1.2,
                     label="total (weighted)" if name == "total" else f"L_{name}")  # fmt: skip
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7, ncol=2)
    tok = [(r["step"], r["tokens"]) for r in rows if "tokens" in r]
    if tok:
        x, y = zip(*tok, strict=True)
        ax_tok.step(x, y, where="post", color="tab:purple")
    ax_tok.set_xlabel("step")
    ax_tok.set_ylabel("active instance tokens")
    if cfg is not None:
        c = cfg.resolved()
        marks = [(c.seg_start, "sem/ins on"), (c.dice_stop, "Dice off")]
        if c.panoptic_head:  # the ablation without the head has no L_pan
            marks.insert(1, (c.pan_start, "L_pan on"))
        for frac, label in marks:
            ax_loss.axvline(frac * c.steps, color="0.6", ls="--", lw=0.8)
            ax_loss.text(frac * c.steps, 1.0, f" {label}", transform=ax_loss.get_xaxis_transform(),
                         fontsize=7, va="top", color="0.4")  # fmt: skip
        if c.dynamic_tokens:
            ax_tok.axvspan(c.adjust_start * c.steps, c.adjust_stop * c.steps, color="0.93", label="adjusting")
            ax_tok.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_training_plot(log_path: str | Path, out_path: str | Path, cfg: NeuralConfig | None = None) -> Path:
    """Render :func:`training_figure` of the log at ``log_path`` to ``out_path`` (PNG, atomic)."""
    fig = training_figure(read_log(log_path), cfg)
    out_path = Path(out_path)
    with io.atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi)
    return out_path
