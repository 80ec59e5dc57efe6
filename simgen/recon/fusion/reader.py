"""Frame reading for the fusion loop, with the next keyframe's images decoded in a background thread.

PNG decoding (depth, RGB, panoptic) is about a sixth of the loop's time at 320x240. Pillow and zlib release
the GIL while decoding, so reading the next keyframe in one worker thread overlaps it with the numpy work
of the current one whenever a second core is free. Which frame comes next is predicted from the poses
alone (the keyframe test needs nothing else); a wrong guess (the current frame turned out to have no
valid depth) only costs a synchronous read.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from simgen.data.scene import Scene
from simgen.recon.fusion.config import FusionConfig
from simgen.recon.fusion.depthfilter import remove_flying_pixels, surface_tolerance


@dataclass
class FrameData:
    """One frame's images: ``depth`` ``(H, W) float32`` metres with out-of-range values set to 0,
    ``rgb`` ``(H, W, 3) uint8``, ``panoptic`` ``(H, W) int32`` per-frame pseudo-label ids (0 = void)."""

    depth: np.ndarray
    rgb: np.ndarray
    panoptic: np.ndarray


def read_frame(scene: Scene, i: int, cfg: FusionConfig) -> FrameData:
    """Frame ``i`` with its depth range-filtered and, when ``cfg.flying_pixel_slope > 0``, flying pixels
    removed (:func:`depthfilter.remove_flying_pixels`; before the range cut, so that a neighbour beyond
    the range still supports a pixel on its surface)."""
    depth = scene.depth(i)
    if cfg.flying_pixel_slope > 0:
        K = scene.frames[i].intrinsics
        tol = surface_tolerance(
            depth, K.fx, cfg.flying_pixel_slope, cfg.sensor_sigma_m, cfg.sensor_sigma_quad
        )
        depth = remove_flying_pixels(depth, tol, cfg.flying_pixel_support)
    depth[(depth < cfg.min_depth) | (depth > cfg.max_depth)] = 0
    return FrameData(depth, scene.rgb(i), scene.panoptic(i))


class FrameReader:
    """``get(i)`` returns frame ``i``; ``prefetch(i)`` starts reading it in the background.

    At most one frame is read ahead (bounded memory). Use as a context manager so that the worker is
    stopped when the build ends or is interrupted.
    """

    def __init__(self, scene: Scene, cfg: FusionConfig, background: bool = True):
        self.scene, self.cfg = scene, cfg
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fusion-read") if background else None
        self._ahead: tuple[int, Future[FrameData]] | None = None

    def _read(self, i: int) -> FrameData:
        return read_frame(self.scene, i, self.cfg)

    def prefetch(self, i: int | None) -> None:
        """Start reading frame ``i`` (None: nothing); a pending read of another frame is dropped."""
        if self._pool is None or i is None or (self._ahead is not None and self._ahead[0] == i):
            return
        if self._ahead is not None:
            self._ahead[1].cancel()
        self._ahead = (i, self._pool.submit(self._read, i))

    def get(self, i: int) -> FrameData:
        """Frame ``i``: the prefetched read if it was predicted, else read now (errors surface here)."""
        if self._ahead is not None and self._ahead[0] == i:
            fut, self._ahead = self._ahead[1], None
            return fut.result()
        return self._read(i)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
