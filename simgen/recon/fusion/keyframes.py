"""Keyframe selection by camera motion and grouping of keyframes into fragments (PanoRecon, sec. 3)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def pose_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Translation (metres) and rotation angle (degrees) between two ``(4, 4)`` camera-to-world poses."""
    t = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    r = a[:3, :3].T @ b[:3, :3]
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    return t, float(np.degrees(np.arccos(cos)))


class KeyframeSelector:
    """Online keyframe test: a frame is a keyframe if it moved far enough from the last accepted one.

    The caller :meth:`accept` s a candidate only once it was actually used (a frame without valid depth is
    skipped and does not become the reference), so the next frame is tested against the last *used* pose.
    """

    def __init__(self, translation: float, rotation_deg: float):
        self.translation = translation
        self.rotation_deg = rotation_deg
        self.last: np.ndarray | None = None

    def is_candidate(self, c2w: np.ndarray) -> bool:
        if self.last is None:
            return True
        t, r = pose_distance(self.last, c2w)
        return t >= self.translation or r >= self.rotation_deg

    def accept(self, c2w: np.ndarray) -> None:
        self.last = np.asarray(c2w, dtype=np.float64).copy()

    def next_candidate(self, poses: list[np.ndarray], start: int) -> int | None:
        """Position of the first pose at or after ``start`` that is a candidate now, None if there is none.

        This is the next keyframe if the current reference stays, which lets the reader fetch its images
        ahead of time.
        """
        for k in range(start, len(poses)):  # loops over frames (4x4 poses), not pixels
            if self.is_candidate(poses[k]):
                return k
        return None


def select_keyframes(poses: Iterable[np.ndarray], translation: float, rotation_deg: float) -> list[int]:
    """Indices of the keyframes of a pose sequence (every pose assumed usable)."""
    sel = KeyframeSelector(translation, rotation_deg)
    out = []
    for i, c2w in enumerate(poses):
        if sel.is_candidate(c2w):
            sel.accept(c2w)
            out.append(i)
    return out


def fragments(keyframes: Iterable[int], size: int) -> Iterator[list[int]]:
    """Split a keyframe stream into consecutive, non-overlapping fragments of ``size`` keyframes."""
    chunk: list[int] = []
    for k in keyframes:
        chunk.append(k)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
