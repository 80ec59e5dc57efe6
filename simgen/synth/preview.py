"""A side-by-side picture of one frame: RGB | depth | pseudo-label panoptic | GT panoptic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgen.data import io
from simgen.data.scene import load_scene


def colorize_ids(ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` int segment ids -> ``(H, W, 3) uint8`` colours (0 = black), stable per id."""
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    uniq, inv = np.unique(ids, return_inverse=True)
    # Colours from a hash of the id, kept bright enough to tell apart from void (black).
    lut = np.stack([np.random.default_rng(int(u)).integers(40, 256, 3) for u in uniq]).astype(np.uint8)
    lut[uniq == 0] = 0
    out[...] = lut[inv.reshape(ids.shape)]
    return out


def write_preview(scene_dir: str | Path, out_png: str | Path, frame: int | None = None) -> Path:
    """Write a figure of frame ``frame`` (default: the middle frame) of the scene in ``scene_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scene = load_scene(scene_dir, validate=False)
    i = len(scene) // 2 if frame is None else frame
    if not 0 <= i < len(scene):
        raise IndexError(f"frame {i} out of range: {scene_dir} has {len(scene)} frames")
    rgb, depth, pan = scene.rgb(i), scene.depth(i), scene.panoptic(i)
    panels = [(rgb, "RGB", None), (np.ma.masked_where(depth <= 0, depth), "depth (m)", "turbo")]
    panels.append((colorize_ids(pan), f"pseudo-labels ({len(scene.frames[i].segments)} segments)", None))
    if scene.gt is not None:
        gt = scene.gt.panoptic(i)
        panels.append((colorize_ids(gt), f"GT panoptic ({len(np.unique(gt[gt > 0]))} segments)", None))
    h, w = depth.shape
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * h / w + 0.5), dpi=120)
    for ax, (img, title, cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(img, cmap=cmap, interpolation="nearest")
        if cmap is not None:
            fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{Path(scene_dir).name}: frame {i} ({scene.frames[i].name})", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png
