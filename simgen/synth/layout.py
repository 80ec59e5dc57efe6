"""Procedural indoor layouts: rooms (stuff) and furniture (things) built from trimesh primitives.

World frame: metres, z up, floor top at z = 0. Rooms are axis-aligned rectangles placed along +x;
consecutive rooms share a wall with a door. Every object is built in its own frame (origin at the
centre of its footprint on the floor, +y its front) and placed by a rigid transform.

Category ids are fixed (see :data:`CATEGORIES`); ground-truth segment ids are scene-consistent:
one segment per stuff category (all walls are one "wall" segment), one per thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import trimesh

from simgen.data.scene import Category
from simgen.synth.shading import CHECKER, GRAIN, NOISE, PLAIN, STRIPES, Material, MaterialTable

# Fixed category ids of synthetic scenes (also in docs/synth.md).
FLOOR, WALL, CEILING = 1, 2, 3
TABLE, CHAIR, SHELF, CABINET, SOFA, BOX, LAMP, BALL, PLANT = 4, 5, 6, 7, 8, 9, 10, 11, 12
CATEGORIES: tuple[Category, ...] = (
    Category(FLOOR, "floor", False),
    Category(WALL, "wall", False),
    Category(CEILING, "ceiling", False),
    Category(TABLE, "table", True),
    Category(CHAIR, "chair", True),
    Category(SHELF, "shelf", True),
    Category(CABINET, "cabinet", True),
    Category(SOFA, "sofa", True),
    Category(BOX, "box", True),
    Category(LAMP, "lamp", True),
    Category(BALL, "ball", True),
    Category(PLANT, "plant", True),
)
STUFF_IDS = tuple(c.id for c in CATEGORIES if not c.isthing)
THING_IDS = tuple(c.id for c in CATEGORIES if c.isthing)

WALL_THICKNESS = 0.12
DOOR_WIDTH = 0.9
DOOR_HEIGHT = 2.1
WALL_GAP = 0.01  # objects stand this far from a wall so no two surfaces coincide
TwinLayout = Literal["back-to-back", "apart"]  # where the two-rooms twins stand (populate)


@dataclass(frozen=True)
class Room:
    """Interior rectangle ``[x0, x1] x [y0, y1]``, ceiling height ``height`` (metres)."""

    x0: float
    y0: float
    x1: float
    y1: float
    height: float

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2])

    @property
    def size(self) -> np.ndarray:
        return np.array([self.x1 - self.x0, self.y1 - self.y0])


@dataclass(frozen=True)
class Door:
    """Opening in the wall ``x in [x0, x1]`` between two rooms, centred at ``y``."""

    x0: float
    x1: float
    y: float
    width: float = DOOR_WIDTH
    height: float = DOOR_HEIGHT


@dataclass
class Part:
    """One primitive of an object, in the object's frame."""

    mesh: trimesh.Trimesh
    material: Material


@dataclass
class SceneObject:
    """A stuff region or a thing: its parts, pose and GT segment."""

    category_id: int
    parts: list[Part]
    transform: np.ndarray  # (4, 4) object -> world
    footprint: tuple[float, float] = (0.0, 0.0)  # (w, d) extents along the object's x and y
    room: int = 0
    segment_id: int = 0  # filled by build_scene
    name: str = ""


@dataclass
class SceneGeometry:
    """The assembled scene.

    Attributes:
        mesh: world mesh (``process=False``): parts concatenated without merging vertices, so no
            vertex is shared between segments.
        vertex_segment: ``(V,) int32`` GT segment id per vertex.
        face_segment: ``(F,) int32`` GT segment id per face.
        face_object: ``(F,) int64`` index into ``objects`` per face.
        face_material: ``(F,) int64`` material id per face.
        object_w2l: ``(O, 4, 4)`` world -> object frame of each object (for texture coordinates).
        materials: the material table.
        segments: GT segment id -> category id.
        lights: ``(L, 3)`` light positions (one under each room's ceiling).
        objects, rooms, doors: what was built.
        twins: GT segment ids of the two identical objects (two-rooms), else ``()``.
    """

    mesh: trimesh.Trimesh
    vertex_segment: np.ndarray
    face_segment: np.ndarray
    face_object: np.ndarray
    face_material: np.ndarray
    object_w2l: np.ndarray
    materials: MaterialTable
    segments: dict[int, int]
    lights: np.ndarray
    objects: list[SceneObject]
    rooms: list[Room]
    doors: list[Door]
    twins: tuple[int, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- helpers


def _T(x: float = 0.0, y: float = 0.0, z: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    """(4, 4) rotation about z by ``yaw`` (radians) then translation."""
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = [x, y, z]
    return T


def _box(extents, center, material: Material) -> Part:
    return Part(trimesh.creation.box(extents=extents, transform=_T(*center)), material)


def _cyl(radius: float, height: float, center, material: Material, sections: int = 20) -> Part:
    return Part(trimesh.creation.cylinder(radius, height, sections=sections, transform=_T(*center)), material)


def _sphere(radius: float, center, material: Material, subdivisions: int = 2) -> Part:
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    m.apply_translation(center)
    return Part(m, material)


def _color(rng: np.random.Generator, base, spread: float = 0.08) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base, dtype=np.float64) + rng.normal(0, spread, 3), 0.02, 0.98)
    return (float(c[0]), float(c[1]), float(c[2]))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31))


WOODS = [(0.55, 0.36, 0.2), (0.7, 0.52, 0.32), (0.4, 0.26, 0.16), (0.8, 0.66, 0.46)]
BRIGHT = [(0.85, 0.2, 0.15), (0.15, 0.45, 0.8), (0.95, 0.75, 0.15), (0.2, 0.65, 0.3), (0.6, 0.25, 0.65)]
FABRIC = [(0.35, 0.4, 0.55), (0.55, 0.3, 0.3), (0.45, 0.5, 0.35), (0.6, 0.55, 0.5)]
PAINT = [(0.92, 0.92, 0.9), (0.3, 0.32, 0.35), (0.75, 0.8, 0.85), (0.85, 0.8, 0.7)]


def _pick(rng: np.random.Generator, palette) -> tuple[float, float, float]:
    return palette[int(rng.integers(len(palette)))]


def _wood(rng: np.random.Generator) -> Material:
    c = _color(rng, _pick(rng, WOODS), 0.04)
    c2 = tuple(float(v) * 0.72 for v in c)
    return Material(c, c2, GRAIN, scale=float(rng.uniform(0.02, 0.04)), axis=0, seed=_seed(rng))


def _paint(rng: np.random.Generator, palette=PAINT) -> Material:
    return Material(_color(rng, _pick(rng, palette), 0.04), kind=PLAIN, seed=_seed(rng), grit=0.05)


def _fabric(rng: np.random.Generator) -> Material:
    c = _color(rng, _pick(rng, FABRIC), 0.05)
    return Material(c, tuple(float(v) * 0.8 for v in c), NOISE, scale=0.05, seed=_seed(rng), grit=0.12)


def _bright(rng: np.random.Generator, kind: int | None = None) -> Material:
    c = _color(rng, _pick(rng, BRIGHT), 0.05)
    c2 = _color(rng, _pick(rng, BRIGHT + [(0.95, 0.95, 0.95)]), 0.05)
    kind = int(rng.choice([PLAIN, CHECKER, STRIPES])) if kind is None else kind
    return Material(
        c, c2, kind, scale=float(rng.uniform(0.06, 0.15)), axis=int(rng.integers(3)), seed=_seed(rng)
    )


# ----------------------------------------------------------------------------- things


def make_table(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.9, 1.5), rng.uniform(0.6, 0.85), rng.uniform(0.7, 0.78)
    top, legs = _wood(rng), (_wood(rng) if rng.random() < 0.5 else _paint(rng))
    t, lw = 0.04, 0.05
    parts = [_box((w, d, t), (0, 0, h - t / 2), top)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((lw, lw, h - t), (sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), (h - t) / 2), legs))
    return parts, (w, d)


def make_chair(
    rng: np.random.Generator, material: Material | None = None
) -> tuple[list[Part], tuple[float, float]]:
    s, h = rng.uniform(0.42, 0.5), rng.uniform(0.43, 0.47)
    mat = material or (_wood(rng) if rng.random() < 0.5 else _bright(rng, PLAIN))
    t, lw = 0.04, 0.04
    parts = [_box((s, s, t), (0, 0, h - t / 2), mat)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((lw, lw, h - t), (sx * (s / 2 - 0.03), sy * (s / 2 - 0.03), (h - t) / 2), mat))
    back_h = rng.uniform(0.35, 0.45)
    # Backrest at the back (-y), resting on the seat.
    parts.append(_box((s, 0.03, back_h), (0, -s / 2 + 0.015, h + back_h / 2), mat))
    return parts, (s, s)


def make_shelf(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.4), rng.uniform(1.4, 1.9)
    mat, t = _wood(rng), 0.025
    parts = [
        _box((t, d, h), (-w / 2 + t / 2, 0, h / 2), mat),
        _box((t, d, h), (w / 2 - t / 2, 0, h / 2), mat),
        _box((w - 2 * t, 0.01, h), (0, -d / 2 + 0.005, h / 2), mat),
    ]
    n = int(rng.integers(4, 6))
    levels = np.linspace(0.05, h - t / 2, n)
    for z in levels:
        parts.append(_box((w - 2 * t, d - 0.01, t), (0, 0.005, z), mat))
    # Books on the lower boards: colourful detail, part of the shelf segment.
    for z0, z1 in zip(levels[:-1] + t / 2, levels[1:] - t / 2, strict=True):
        x = -w / 2 + t + 0.01
        while x < w / 2 - t - 0.08 and rng.random() < 0.93:
            bw = rng.uniform(0.02, 0.06)
            bh = min(rng.uniform(0.15, 0.28), (z1 - z0) - 0.01)
            if x + bw > w / 2 - t - 0.005:
                break
            bd = rng.uniform(0.6, 0.9) * (d - 0.02)
            book = Material(_color(rng, _pick(rng, BRIGHT + FABRIC), 0.1), seed=_seed(rng), grit=0.05)
            parts.append(_box((bw, bd, bh), (x + bw / 2, 0.0, z0 + bh / 2), book))
            x += bw + rng.uniform(0.0, 0.03)
    return parts, (w, d)


def make_cabinet(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.5), rng.uniform(0.8, 1.1)
    body = _paint(rng) if rng.random() < 0.6 else _wood(rng)
    metal = Material((0.75, 0.75, 0.78), seed=_seed(rng), grit=0.02)
    parts = [
        _box((w, d, h), (0, 0, h / 2), body),
        _box((w - 0.04, 0.01, 0.01), (0, d / 2 + 0.005, h * 0.62), metal),
    ]
    for sx in (-1, 1):
        parts.append(_box((0.02, 0.03, 0.12), (sx * 0.06, d / 2 + 0.015, h * 0.8), metal))
    return parts, (w, d)


def make_sofa(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d = rng.uniform(1.5, 2.0), rng.uniform(0.75, 0.85)
    cloth = _fabric(rng)
    cushion = Material(cloth.color2, cloth.color, NOISE, scale=0.04, seed=_seed(rng), grit=0.12)
    arm, base_h, seat_h = 0.18, 0.22, 0.42
    parts = [
        _box((w, d, base_h), (0, 0, base_h / 2), cloth),
        _box((w, 0.2, 0.8 - base_h), (0, -d / 2 + 0.1, base_h + (0.8 - base_h) / 2), cloth),
        _box((arm, d, 0.6 - base_h), (-w / 2 + arm / 2, 0, base_h + (0.6 - base_h) / 2), cloth),
        _box((arm, d, 0.6 - base_h), (w / 2 - arm / 2, 0, base_h + (0.6 - base_h) / 2), cloth),
    ]
    n = 2 if w < 1.75 else 3
    cw = (w - 2 * arm) / n
    for i in range(n):
        cx = -w / 2 + arm + cw * (i + 0.5)
        parts.append(
            _box((cw - 0.02, d - 0.22, seat_h - base_h), (cx, 0.1, base_h + (seat_h - base_h) / 2), cushion)
        )
    return parts, (w, d)


def make_box(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.2, 0.5, 3)
    if rng.random() < 0.5:  # cardboard with a tape stripe
        card = Material(_color(rng, (0.72, 0.56, 0.36), 0.04), seed=_seed(rng), grit=0.1)
        tape = Material(_color(rng, (0.85, 0.8, 0.65), 0.03), seed=_seed(rng), grit=0.03)
        parts = [
            _box((w, d, h), (0, 0, h / 2), card),
            _box((0.06, d + 0.004, h + 0.002), (0, 0, (h + 0.002) / 2), tape),
        ]
    else:
        parts = [_box((w, d, h), (0, 0, h / 2), _bright(rng))]
    return parts, (w, d)


def make_lamp(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    h = rng.uniform(1.3, 1.6)
    metal = _paint(rng, [(0.15, 0.15, 0.15), (0.8, 0.8, 0.8), (0.7, 0.6, 0.3)])
    shade = Material(
        _color(rng, (0.95, 0.9, 0.75), 0.03), (0.85, 0.8, 0.65), STRIPES, scale=0.04, axis=2, seed=_seed(rng)
    )
    r = rng.uniform(0.15, 0.22)
    parts = [
        _cyl(0.16, 0.03, (0, 0, 0.015), metal),
        _cyl(0.015, h - 0.2, (0, 0, 0.03 + (h - 0.2) / 2), metal),
        _cyl(r, 0.26, (0, 0, h - 0.13), shade),
    ]
    return parts, (max(0.32, 2 * r), max(0.32, 2 * r))


def make_ball(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    r = rng.uniform(0.1, 0.22)
    mat = _bright(rng, int(rng.choice([CHECKER, STRIPES])))
    mat = Material(mat.color, mat.color2, mat.kind, scale=r / 1.5, axis=mat.axis, seed=mat.seed)
    return [_sphere(r, (0, 0, r), mat, subdivisions=3)], (2 * r, 2 * r)


def make_plant(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    pr, ph = rng.uniform(0.12, 0.18), rng.uniform(0.25, 0.35)
    pot = Material(_color(rng, (0.7, 0.35, 0.2), 0.05), seed=_seed(rng), grit=0.1)
    leaf = Material(_color(rng, (0.2, 0.5, 0.2), 0.05), (0.1, 0.3, 0.1), NOISE, scale=0.06, seed=_seed(rng))
    parts = [_cyl(pr, ph, (0, 0, ph / 2), pot)]
    n = int(rng.integers(2, 4))
    for _ in range(n):
        fr = rng.uniform(0.14, 0.22)
        off = rng.uniform(-0.5, 0.5, 2) * pr
        parts.append(_sphere(fr, (off[0], off[1], ph + fr * rng.uniform(0.6, 1.2)), leaf))
    return parts, (2 * pr + 0.1, 2 * pr + 0.1)


BUILDERS: dict[int, Callable[[np.random.Generator], tuple[list[Part], tuple[float, float]]]] = {
    TABLE: make_table,
    CHAIR: make_chair,
    SHELF: make_shelf,
    CABINET: make_cabinet,
    SOFA: make_sofa,
    BOX: make_box,
    LAMP: make_lamp,
    BALL: make_ball,
    PLANT: make_plant,
}
# Objects that stand with their back against a wall; the rest stand free in the room.
AGAINST_WALL = (SHELF, CABINET, SOFA)
# Relative frequency of each category among sampled things.
THING_WEIGHTS = {
    TABLE: 1.0,
    CHAIR: 2.0,
    SHELF: 1.0,
    CABINET: 1.0,
    SOFA: 0.6,
    BOX: 1.5,
    LAMP: 0.8,
    BALL: 1.2,
    PLANT: 1.0,
}


# ----------------------------------------------------------------------------- rooms (stuff)


def make_rooms(
    widths: list[float], depth: float, height: float, rng: np.random.Generator
) -> tuple[list[Room], list[Door]]:
    """Rooms of interior size ``widths[i] x depth`` side by side along +x (all spanning
    ``y in [0, depth]``), joined by a door in each shared wall, off-centre towards y = 0."""
    rooms, doors = [], []
    x = 0.0
    for i, w in enumerate(widths):
        rooms.append(Room(x, 0.0, x + w, depth, height))
        if i + 1 < len(widths):
            doors.append(Door(x + w, x + w + WALL_THICKNESS, float(rng.uniform(1.1, 1.4))))
        x += w + WALL_THICKNESS
    return rooms, doors


def make_stuff(rooms: list[Room], doors: list[Door], rng: np.random.Generator) -> list[SceneObject]:
    """Floor, walls (with door openings) and ceiling; one SceneObject per stuff category."""
    t = WALL_THICKNESS
    X0, X1 = rooms[0].x0 - t, rooms[-1].x1 + t
    Y0, Y1 = rooms[0].y0 - t, rooms[0].y1 + t
    H = rooms[0].height
    cx, cy = (X0 + X1) / 2, (Y0 + Y1) / 2
    floor_mat = (
        Material(
            _color(rng, (0.8, 0.78, 0.72), 0.04),
            _color(rng, (0.45, 0.42, 0.4), 0.04),
            CHECKER,
            scale=0.5,
            seed=_seed(rng),
        )
        if rng.random() < 0.5
        else Material(*(_wood(rng).color, _wood(rng).color2), GRAIN, scale=0.05, axis=1, seed=_seed(rng))
    )
    floor = [_box((X1 - X0, Y1 - Y0, 0.1), (cx, cy, -0.05), floor_mat)]
    ceiling = [
        _box(
            (X1 - X0, Y1 - Y0, 0.1),
            (cx, cy, H + 0.05),
            Material((0.93, 0.93, 0.9), seed=_seed(rng), grit=0.03),
        )
    ]

    walls = []
    for i, r in enumerate(rooms):
        wall_mat = Material(
            _color(rng, _pick(rng, PAINT), 0.04),
            _color(rng, _pick(rng, PAINT), 0.04),
            STRIPES if i % 2 == 0 else NOISE,
            scale=float(rng.uniform(0.15, 0.3)),
            axis=0 if i % 2 == 0 else 2,
            seed=_seed(rng),
            grit=0.05,
        )
        x0, x1 = r.x0 - (t if i == 0 else 0.0), r.x1 + (t if i == len(rooms) - 1 else 0.0)
        # South and north walls span the room and, for the end rooms, the corners.
        walls.append(_box((x1 - x0, t, H), ((x0 + x1) / 2, r.y0 - t / 2, H / 2), wall_mat))
        walls.append(_box((x1 - x0, t, H), ((x0 + x1) / 2, r.y1 + t / 2, H / 2), wall_mat))
        if i == 0:
            walls.append(_box((t, r.y1 - r.y0, H), (r.x0 - t / 2, (r.y0 + r.y1) / 2, H / 2), wall_mat))
        if i == len(rooms) - 1:
            walls.append(_box((t, r.y1 - r.y0, H), (r.x1 + t / 2, (r.y0 + r.y1) / 2, H / 2), wall_mat))
    for door in doors:
        # The shared wall in three pieces around the opening; it takes the first room's material.
        mat = walls[0].material
        xm = (door.x0 + door.x1) / 2
        y0, y1 = rooms[0].y0, rooms[0].y1
        lo, hi = door.y - door.width / 2, door.y + door.width / 2
        walls.append(_box((t, lo - y0, H), (xm, (y0 + lo) / 2, H / 2), mat))
        walls.append(_box((t, y1 - hi, H), (xm, (hi + y1) / 2, H / 2), mat))
        walls.append(_box((t, door.width, H - door.height), (xm, door.y, (door.height + H) / 2), mat))
        # The corridor sides of the shared wall's ends: the south/north walls of the two rooms
        # leave a gap of the wall's thickness there; fill it.
        walls.append(_box((t, t, H), (xm, y0 - t / 2, H / 2), mat))
        walls.append(_box((t, t, H), (xm, y1 + t / 2, H / 2), mat))
    I4 = np.eye(4)
    return [
        SceneObject(FLOOR, floor, I4, name="floor"),
        SceneObject(WALL, walls, I4, name="wall"),
        SceneObject(CEILING, ceiling, I4, name="ceiling"),
    ]


# ----------------------------------------------------------------------------- placement


def _obb_corners(cx: float, cy: float, yaw: float, w: float, d: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[-w, -d], [w, -d], [w, d], [-w, d]]) / 2
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _obb_overlap(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    """Separating-axis test of two convex quads ``(4, 2)``, each grown by ``margin``."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for e in edges:
            n = np.array([-e[1], e[0]]) / np.linalg.norm(e)
            pa, pb = a @ n, b @ n
            if pa.max() + margin < pb.min() or pb.max() + margin < pa.min():
                return False
    return True


def _dist_points_obb(points: np.ndarray, cx: float, cy: float, yaw: float, w: float, d: float) -> float:
    """Smallest distance from ``points (N, 2)`` to a rectangle (0 inside)."""
    c, s = np.cos(yaw), np.sin(yaw)
    rel = points - [cx, cy]
    local = np.stack([rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c], axis=1)
    out = np.maximum(np.abs(local) - [w / 2, d / 2], 0.0)
    return float(np.linalg.norm(out, axis=1).min()) if len(points) else np.inf


@dataclass
class _Placed:
    corners: np.ndarray
    obj: SceneObject


class Placer:
    """Rejection sampling of object footprints in rooms, away from each other and the walk path."""

    def __init__(self, rooms: list[Room], path_xy: np.ndarray, clearance: float, rng: np.random.Generator):
        self.rooms, self.path_xy, self.clearance, self.rng = rooms, path_xy, clearance, rng
        self.placed: list[_Placed] = []

    def _ok(self, corners: np.ndarray, room: Room, cx, cy, yaw, w, d, ignore: SceneObject | None) -> bool:
        if (
            corners[:, 0].min() < room.x0 + WALL_GAP - 1e-9
            or corners[:, 0].max() > room.x1 - WALL_GAP + 1e-9
            or corners[:, 1].min() < room.y0 + WALL_GAP - 1e-9
            or corners[:, 1].max() > room.y1 - WALL_GAP + 1e-9
        ):
            return False
        if _dist_points_obb(self.path_xy, cx, cy, yaw, w, d) < self.clearance:
            return False
        return not any(_obb_overlap(corners, p.corners, 0.05) for p in self.placed if p.obj is not ignore)

    def try_place(
        self,
        obj: SceneObject,
        room_index: int,
        against_wall: bool,
        tries: int = 60,
        at: tuple | None = None,
        ignore: SceneObject | None = None,
    ) -> bool:
        """Place ``obj`` (sets its transform); ``at = (x, y, yaw)`` tries only that pose; ``ignore``
        is an object it may overlap. False if no spot fits."""
        room = self.rooms[room_index]
        w, d = obj.footprint
        for _ in range(tries if at is None else 1):
            if at is not None:
                cx, cy, yaw = at
            elif against_wall:
                side = int(self.rng.integers(4))  # 0 south, 1 east, 2 north, 3 west; front faces inward
                yaw = [0.0, np.pi / 2, np.pi, -np.pi / 2][side]
                off = d / 2 + WALL_GAP
                if side in (0, 2):
                    cx = self.rng.uniform(room.x0 + w / 2 + WALL_GAP, room.x1 - w / 2 - WALL_GAP)
                    cy = room.y0 + off if side == 0 else room.y1 - off
                else:
                    cy = self.rng.uniform(room.y0 + w / 2 + WALL_GAP, room.y1 - w / 2 - WALL_GAP)
                    cx = room.x1 - off if side == 1 else room.x0 + off
            else:
                yaw = self.rng.uniform(-np.pi, np.pi)
                cx = self.rng.uniform(room.x0, room.x1)
                cy = self.rng.uniform(room.y0, room.y1)
            corners = _obb_corners(cx, cy, yaw, w, d)
            if self._ok(corners, room, cx, cy, yaw, w, d, ignore):
                obj.transform = _T(cx, cy, 0.0, yaw)
                obj.room = room_index
                self.placed.append(_Placed(corners, obj))
                return True
        return False


def place_on(
    top: SceneObject, obj: SceneObject, occupied: list[np.ndarray], rng: np.random.Generator
) -> bool:
    """Put ``obj`` on the top board of the table ``top``.

    ``occupied`` holds the table-frame rectangles ``[x0, y0, x1, y1]`` already used on that table;
    the new one is appended. False if no free spot was found.
    """
    tw, td = top.footprint
    w, d = obj.footprint
    # The footprint may turn by up to 0.4 rad on the table: keep its bounding square inside.
    r = float(np.hypot(w, d)) / 2
    if 2 * r > min(tw, td) - 0.08:
        return False
    h = max(float(p.mesh.bounds[1, 2]) for p in top.parts)
    for _ in range(20):
        x = rng.uniform(-tw / 2 + r + 0.04, tw / 2 - r - 0.04)
        y = rng.uniform(-td / 2 + r + 0.04, td / 2 - r - 0.04)
        mine = np.array([x - r, y - r, x + r, y + r])
        if any(not (mine[2] < o[0] or o[2] < mine[0] or mine[3] < o[1] or o[3] < mine[1]) for o in occupied):
            continue
        obj.transform = top.transform @ _T(x, y, h, float(rng.uniform(-0.4, 0.4)))
        obj.room = top.room
        occupied.append(mine)
        return True
    return False


def _sample_category(rng: np.random.Generator) -> int:
    cats = list(THING_WEIGHTS)
    p = np.array([THING_WEIGHTS[c] for c in cats])
    return int(cats[int(rng.choice(len(cats), p=p / p.sum()))])


def populate(
    rooms: list[Room],
    doors: list[Door],
    path_xy: np.ndarray,
    counts: list[int],
    rng: np.random.Generator,
    clearance: float = 0.45,
    twins: bool = False,
    twin_layout: TwinLayout = "back-to-back",
) -> tuple[list[SceneObject], tuple[int, ...]]:
    """Sample ``counts[i]`` things in room ``i``, at least ``clearance`` metres from ``path_xy (M, 2)``.

    With ``twins`` (needs two rooms and a door) two copies of one chair (same parts, same
    materials) stand in different rooms, never in one view. ``back-to-back``: against the shared
    wall, one on each side, at its end far from the door: no ray through the door reaches either
    from the other room unless it runs almost parallel to the wall, which the walk (at least ~1 m
    from every wall outside the doorway) never asks for. ``apart``: against the two outer walls, in
    opposite directions from every camera (both rooms lie between them), so no view narrower than
    180 degrees holds both.

    Returns the things and the indices of the twins among them (``()`` without twins).
    """
    placer = Placer(rooms, path_xy, clearance, rng)
    things: list[SceneObject] = []
    twin_idx: tuple[int, ...] = ()
    if twins:
        if len(rooms) < 2 or not doors:
            raise ValueError("twins need two rooms joined by a door")
        parts, fp = make_chair(rng)
        a, b = rooms[0], rooms[1]
        cy = a.y1 - fp[0] / 2 - float(rng.uniform(0.25, 0.5))
        off = fp[1] / 2 + WALL_GAP
        if twin_layout == "back-to-back":
            poses = [(a.x1 - off, cy, np.pi / 2, 0), (b.x0 + off, cy, -np.pi / 2, 1)]
        else:  # yaw as try_place's west / east walls: front faces into the room
            poses = [(a.x0 + off, cy, -np.pi / 2, 0), (b.x1 - off, cy, np.pi / 2, 1)]
        for x, y, yaw, room in poses:
            twin = SceneObject(CHAIR, parts, np.eye(4), fp, name="chair (twin)")
            if not placer.try_place(twin, room, against_wall=True, at=(x, y, yaw)):
                raise RuntimeError("could not place the twin objects clear of the walk")
            things.append(twin)
        twin_idx = (0, 1)

    for r, count in enumerate(counts):
        tables: list[tuple[SceneObject, list[np.ndarray]]] = []
        placed = 0
        for _ in range(3 * count):
            if placed >= count:
                break
            cat = _sample_category(rng)
            parts, fp = BUILDERS[cat](rng)
            obj = SceneObject(cat, parts, np.eye(4), fp, name=next(c.name for c in CATEGORIES if c.id == cat))
            ok = False
            if cat in (BOX, BALL, PLANT) and tables and rng.random() < 0.4:
                top, occupied = tables[int(rng.integers(len(tables)))]
                ok = place_on(top, obj, occupied, rng)
            elif cat == CHAIR and tables and rng.random() < 0.7:
                # Tuck the chair at one side of a table, facing it.
                top, _ = tables[int(rng.integers(len(tables)))]
                tw, td = top.footprint
                side = int(rng.integers(4))
                u_local = [(0, -1), (1, 0), (0, 1), (-1, 0)][side]
                reach = (td if side in (0, 2) else tw) / 2 + fp[1] / 2 + 0.02
                slide = float(rng.uniform(-0.2, 0.2)) * (tw if side in (0, 2) else td)
                R = top.transform[:2, :2]
                u = R @ np.array(u_local, dtype=float)
                t_dir = R @ np.array([-u_local[1], u_local[0]], dtype=float)
                pos = top.transform[:2, 3] + u * reach + t_dir * slide
                yaw = float(np.arctan2(u[0], -u[1]))  # front (+y) turned towards the table (-u)
                # Right at the table edge: closer than the usual 5 cm margin to the table, so ignore it.
                ok = placer.try_place(obj, r, against_wall=False, at=(pos[0], pos[1], yaw), ignore=top)
            if not ok:
                ok = placer.try_place(obj, r, against_wall=cat in AGAINST_WALL)
            if ok:
                things.append(obj)
                placed += 1
                if cat == TABLE:
                    tables.append((obj, []))
    return things, twin_idx


def build_scene(
    objects: list[SceneObject], rooms: list[Room], doors: list[Door], twins: tuple[int, ...] = ()
) -> SceneGeometry:
    """Concatenate every object's parts into one world mesh with per-vertex/face labels.

    Segment ids: stuff objects first (1, 2, 3 for floor, wall, ceiling), then things in order.
    ``twins`` are indices into ``objects``; the result holds their segment ids.
    """
    verts, faces, vseg, fseg, fobj, fmat = [], [], [], [], [], []
    materials: list[Material] = []
    mat_index: dict[Material, int] = {}
    segments: dict[int, int] = {}
    offset = 0
    w2l = []
    for k, obj in enumerate(objects):
        obj.segment_id = k + 1
        segments[obj.segment_id] = obj.category_id
        w2l.append(np.linalg.inv(obj.transform))
        for part in obj.parts:
            v = trimesh.transform_points(part.mesh.vertices, obj.transform)
            f = np.asarray(part.mesh.faces, dtype=np.int64) + offset
            if part.material not in mat_index:
                mat_index[part.material] = len(materials)
                materials.append(part.material)
            verts.append(v)
            faces.append(f)
            vseg.append(np.full(len(v), obj.segment_id, dtype=np.int32))
            fseg.append(np.full(len(f), obj.segment_id, dtype=np.int32))
            fobj.append(np.full(len(f), k, dtype=np.int64))
            fmat.append(np.full(len(f), mat_index[part.material], dtype=np.int64))
            offset += len(v)
    V, F = np.concatenate(verts), np.concatenate(faces)
    table = MaterialTable.from_materials(materials)
    fm = np.concatenate(fmat)
    # Vertex colours (each vertex belongs to exactly one part) so the PLY shows the base colours.
    vcol = np.zeros((len(V), 4), dtype=np.uint8)
    vcol[:, 3] = 255
    vcol[F.ravel(), :3] = np.round(np.repeat(table.colors[fm], 3, axis=0) * 255).astype(np.uint8)
    mesh = trimesh.Trimesh(V, F, vertex_colors=vcol, process=False)
    lights = np.array([[*r.center, r.height - 0.3] for r in rooms])
    return SceneGeometry(
        mesh=mesh,
        vertex_segment=np.concatenate(vseg),
        face_segment=np.concatenate(fseg),
        face_object=np.concatenate(fobj),
        face_material=fm,
        object_w2l=np.stack(w2l),
        materials=table,
        segments=segments,
        lights=lights,
        objects=objects,
        rooms=rooms,
        doors=doors,
        twins=tuple(objects[i].segment_id for i in twins),
    )
