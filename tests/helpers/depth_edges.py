"""Pixels away from depth edges, where two renderers of the same surface must agree (their coverage rules
differ only at silhouettes and creases)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import minimum_filter


def away_from_edges(*depths: np.ndarray, rel: float = 0.01) -> np.ndarray:
    """Pixels not next to a depth edge in any image: every pixel of the 3x3 neighbourhood is hit and the
    depth's second differences (0 on a plane up to perspective curvature; large at a step or crease) stay
    below ``rel`` of the depth."""
    ok = np.ones(depths[0].shape, bool)
    for d in depths:
        d = d.astype(np.float64)
        bend = np.zeros_like(d)
        bend[:, 1:-1] = np.abs(d[:, 2:] + d[:, :-2] - 2 * d[:, 1:-1])
        bend[1:-1, :] = np.maximum(bend[1:-1, :], np.abs(d[2:, :] + d[:-2, :] - 2 * d[1:-1, :]))
        smooth = (bend < rel * d) & (d > 0)
        ok &= minimum_filter(smooth, 3)
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    return ok
