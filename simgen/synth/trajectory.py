"""Camera trajectories of a person scanning rooms with a hand-held camera.

The walker goes once around each room on an ellipse inset from the walls, looking towards the room
centre with slow, smooth yaw / pitch sway, at eye height (1.4-1.6 m) with a small gait bob and a
little per-frame hand jitter. With several rooms it walks room A, turns towards the door, walks
straight through it and goes around room B. Frames are spaced evenly along the path (constant speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simgen.data.camera import look_at
from simgen.synth.layout import Door, Room


@dataclass
class Walk:
    """A densely sampled walk (about 1 cm apart).

    Attributes:
        xy: ``(M, 2)`` positions on the floor (metres).
        s: ``(M,)`` arc length from the start (metres).
        yaw: ``(M,)`` base heading (radians, 0 = +x, counter-clockwise), before sway.
        sway: ``(M,)`` in [0, 1]: how much free look-around sway applies (0 while heading for and
            passing through a door, where the walker looks where it goes).
    """

    xy: np.ndarray
    s: np.ndarray
    yaw: np.ndarray
    sway: np.ndarray

    @property
    def length(self) -> float:
        return float(self.s[-1])


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _ellipse(room: Room, inset: float) -> tuple[np.ndarray, float, float]:
    c = room.center
    a, b = room.size / 2 - inset
    if a <= 0.2 or b <= 0.2:
        raise ValueError(
            f"room {room.size.round(2).tolist()} m is too small for a walk {inset} m from the walls"
        )
    return c, float(a), float(b)


def _arc(c: np.ndarray, a: float, b: float, th0: float, th1: float, step: float = 0.01) -> np.ndarray:
    """Points on the ellipse from angle th0 to th1 (counter-clockwise), about ``step`` metres apart."""
    n = max(8, int(np.ceil((th1 - th0) * max(a, b) / step)))
    th = np.linspace(th0, th1, n, endpoint=False)
    return c + np.stack([a * np.cos(th), b * np.sin(th)], axis=1)


def _line(p0: np.ndarray, p1: np.ndarray, step: float = 0.01) -> np.ndarray:
    n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / step)))
    return p0 + np.linspace(0, 1, n, endpoint=False)[:, None] * (p1 - p0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def plan_walk(
    rooms: list[Room], doors: list[Door], inset: float, rng: np.random.Generator, turn_m: float = 1.5
) -> Walk:
    """The walk through ``rooms`` (joined by ``doors`` between consecutive rooms), ``inset`` metres
    from the walls; ``turn_m``: metres of walking over which the walker turns towards a door."""
    if len(doors) != len(rooms) - 1:
        raise ValueError(f"{len(rooms)} rooms need {len(rooms) - 1} doors, got {len(doors)}")
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (xy, yaw, sway) per piece
    for i, room in enumerate(rooms):
        c, a, b = _ellipse(room, inset)
        if i == 0 and not doors:
            th0 = float(rng.uniform(-np.pi, np.pi))
        elif i == 0:
            # Start and end where the loop meets the door's y, on the door (east) side.
            th0 = float(np.arcsin(np.clip((doors[0].y - c[1]) / b, -1, 1)))
        else:
            # Enter on the west side at the door's y.
            th0 = float(np.pi - np.arcsin(np.clip((doors[i - 1].y - c[1]) / b, -1, 1)))
        xy = _arc(c, a, b, th0, th0 + 2 * np.pi)
        inward = np.arctan2(c[1] - xy[:, 1], c[0] - xy[:, 0])
        sway = np.ones(len(xy))
        yaw = inward.copy()
        seg = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))]
        if i > 0:
            # Coming in through the door heading +x: settle into looking inward over turn_m.
            w = _smoothstep(seg / turn_m)
            yaw = _wrap(0.0 + w * _wrap(inward - 0.0))
            sway = w
        if i + 1 < len(rooms):
            # Leaving: turn from looking inward to the door's direction (+x) over the last turn_m.
            w = _smoothstep((seg - (seg[-1] - turn_m)) / turn_m)
            yaw = _wrap(yaw + w * _wrap(0.0 - yaw))
            sway = np.minimum(sway, 1 - w)
        pieces.append((xy, yaw, sway))
        if i + 1 < len(rooms):
            nxt = rooms[i + 1]
            c2, a2, b2 = _ellipse(nxt, inset)
            p0 = np.array([xy[0, 0], doors[i].y])
            th_in = np.pi - np.arcsin(np.clip((doors[i].y - c2[1]) / b2, -1, 1))
            p1 = c2 + [a2 * np.cos(th_in), b2 * np.sin(th_in)]
            line = _line(p0, p1)
            pieces.append((line, np.zeros(len(line)), np.zeros(len(line))))
    xy = np.concatenate([p[0] for p in pieces])
    yaw = np.concatenate([p[1] for p in pieces])
    sway = np.concatenate([p[2] for p in pieces])
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))]
    return Walk(xy=xy, s=s, yaw=yaw, sway=sway)


@dataclass
class LookParams:
    """How the walker looks around (angles in degrees, lengths in metres)."""

    eye_height: tuple[float, float] = (1.45, 1.55)
    pitch: float = -15.0
    yaw_sway: tuple[float, float] = (18.0, 7.0)  # amplitudes of two sines
    yaw_period: tuple[float, float] = (4.5, 1.9)  # their periods in metres walked
    pitch_sway: float = 6.0
    pitch_period: float = 3.1
    bob: float = 0.015  # gait bob amplitude
    stride: float = 0.7  # gait period in metres walked
    jitter_pos: float = 0.004  # per-frame hand jitter (std, metres)
    jitter_rot: float = 0.4  # per-frame hand jitter (std, degrees)


def frame_poses(
    walk: Walk, n_frames: int, rng: np.random.Generator, look: LookParams | None = None
) -> np.ndarray:
    """``n_frames`` camera-to-world poses ``(N, 4, 4)`` (OpenGL camera axes) evenly along ``walk``."""
    look = look or LookParams()
    s = np.linspace(0.0, walk.length, n_frames, endpoint=False)
    idx = np.clip(np.searchsorted(walk.s, s), 0, len(walk.s) - 1)
    xy, sway = walk.xy[idx], walk.sway[idx]
    ph = rng.uniform(0, 2 * np.pi, 4)
    dyaw = sum(
        a * np.sin(2 * np.pi * s / p + phase)
        for a, p, phase in zip(look.yaw_sway, look.yaw_period, ph[:2], strict=True)
    )
    yaw = walk.yaw[idx] + np.deg2rad(dyaw) * sway
    pitch = np.deg2rad(
        look.pitch + look.pitch_sway * np.sin(2 * np.pi * s / look.pitch_period + ph[2]) * sway
    )
    height = rng.uniform(*look.eye_height) + look.bob * np.sin(2 * np.pi * s / look.stride + ph[3])
    height = np.clip(height, 1.4, 1.6)
    jr = np.deg2rad(rng.normal(0, look.jitter_rot, (n_frames, 3)))
    jp = rng.normal(0, look.jitter_pos, (n_frames, 3))
    yaw, pitch, roll = yaw + jr[:, 0], pitch + jr[:, 1], jr[:, 2]
    eye = np.concatenate([xy, height[:, None]], axis=1) + jp
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)
    poses = np.empty((n_frames, 4, 4))
    for i in range(n_frames):  # per frame (tens to hundreds), not per pixel
        c2w = look_at(eye[i], eye[i] + fwd[i])
        c, sn = np.cos(roll[i]), np.sin(roll[i])
        c2w[:3, :2] = c2w[:3, :2] @ np.array([[c, sn], [-sn, c]])  # roll about the viewing axis
        poses[i] = c2w
    return poses
