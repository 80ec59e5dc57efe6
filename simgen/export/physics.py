"""Physics sanity of an export, measured in MuJoCo on the export's own MJCF (the Gazebo world has the same
colliders and poses):

- spawn: how deep any two models' colliders interpenetrate where they were scanned (``resolve_spawn``
  lifts or slides things apart, with a warning, before the export is written);
- rest: every dynamic model simulated for ``REST_SECONDS`` must stay within ``REST_MOVE_M`` and turn less
  than ``REST_TURN_DEG`` (it rests where it was scanned);
- push: a robot driven against the lightest dynamic model it can reach moves it, and a fixed model stops it.

The robot is not defined here (simgen.sim sits above simgen.export): callers pass a builder
``robot(x, y, yaw) -> (<body>, <actuator>)`` -- simgen.sim.drive.robot_mjcf, the robot of ``simgen drive`` --
whose body carries slide-x, slide-y and yaw-hinge joints and whose first three actuators are velocity
actuators on them (world-frame m/s, m/s, rad/s).

Conventions: world frame metres, z up (the export's frame); each model is one top-level ``<body>`` named
after the model; dynamic models have a ``<freejoint>``; collision geoms are the ones with non-zero
``contype`` or ``conaffinity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lxml import etree

from simgen.data import io

SPAWN_TOLERANCE_M = 0.005  # deepest allowed interpenetration of two models' colliders at spawn
REST_SECONDS = 3.0
REST_MOVE_M = 0.01
REST_TURN_DEG = 2.0
PUSH_SPEED = 0.4  # m/s commanded towards the target
PUSH_SECONDS = 4.0
PUSH_MIN_MOVE_M = 0.05  # a pushed dynamic model must move at least this far
MAX_RESOLVE_ROUNDS = 30
# A thing lifted or slid further than this to clear a collider is left where it was and reported: the
# overlap is a collider problem, not a placement one.
MAX_SHIFT_M = 0.25
# A fixed thing is moved only this far (m) clear of the floor or a wall (a scan a few mm into the floor);
# a deeper overlap is its collider bulging where the scan was open, and lifting or sliding the thing would
# misplace it against its visual: its hulls are trimmed instead.
MAX_FIXED_SHIFT_M = 0.01
# Trims per pair of models: a cut is re-measured, and MuJoCo's direction for a thin hull against a long box
# can need a second one.
MAX_TRIMS = 3

RobotBuilder = Callable[[float, float, float], tuple[etree._Element, etree._Element]]


@dataclass
class Overlap:
    a: str  # model names
    b: str
    depth_m: float  # > 0: interpenetration depth


@dataclass
class ModelFigures:
    """Per-model physics figures (``export.json`` rows' ``physics``)."""

    dynamic: bool
    spawn_penetration_mm: float = 0.0  # deepest overlap with another model where it was scanned
    shift_mm: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # applied by resolve_spawn
    rest_moved_cm: float | None = None
    rest_turned_deg: float | None = None
    pinned: bool = False  # failed the rest test at export time and was made fixed (pin_models)
    trimmed_mm: float = 0.0  # deepest cut into its colliders by resolve_spawn (fixed things only)

    def to_json(self) -> dict:
        return {
            "dynamic": self.dynamic,
            "pinned": self.pinned,
            "spawn_penetration_mm": round(self.spawn_penetration_mm, 2),
            "shift_mm": [round(v, 2) for v in self.shift_mm],
            "trimmed_mm": round(self.trimmed_mm, 2),
            "rest_moved_cm": None if self.rest_moved_cm is None else round(self.rest_moved_cm, 3),
            "rest_turned_deg": None if self.rest_turned_deg is None else round(self.rest_turned_deg, 3),
        }


def _load(xml: str | Path, base: Path | None = None):
    """(model, data) of an MJCF file, or of an XML string whose relative asset folders resolve from the
    folder ``base`` (nothing is written: the compiler's meshdir / texturedir are made absolute)."""
    import mujoco

    if isinstance(xml, Path):
        model = mujoco.MjModel.from_xml_path(str(xml))
    else:
        assert base is not None
        root = etree.fromstring(xml.encode())
        for comp in root.iter("compiler"):
            for key in ("meshdir", "texturedir", "assetdir"):
                if comp.get(key) is not None and not Path(comp.get(key)).is_absolute():
                    comp.set(key, str((base / comp.get(key)).resolve()))
        model = mujoco.MjModel.from_xml_string(etree.tostring(root, encoding="unicode"))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return model, data


def model_bodies(model) -> dict[str, int]:
    """{model name: body id} of the top-level bodies (children of the world body)."""
    return {model.body(b).name: b for b in range(1, model.nbody) if model.body_parentid[b] == 0}


def _collision_geoms(model, bodies: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(G,) collision geom ids and (G,) index of their top-level body in ``list(bodies)``."""
    root = np.arange(model.nbody)
    for _ in range(32):  # nested bodies (a robot's links) map to their top-level body
        root = np.where(model.body_parentid[root] == 0, root, model.body_parentid[root])
    index = {b: k for k, b in enumerate(bodies.values())}
    geoms, owner = [], []
    for g in range(model.ngeom):
        if model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0:
            continue  # visual only
        top = int(root[model.geom_bodyid[g]])
        if top in index:
            geoms.append(g)
            owner.append(index[top])
    return np.asarray(geoms, int), np.asarray(owner, int)


def overlaps(model, data, bodies: dict[str, int], skip: Callable[[str, str], bool] | None = None):
    """Interpenetrating pairs of models' collision geoms.

    Returns [(name a, name b, depth (m) > 0, (3,) translation that moves b out of a (world frame))],
    the deepest pair of geoms per pair of models. ``skip(a, b)`` leaves pairs out (e.g. stuff with stuff).
    """
    import mujoco

    names = list(bodies)
    geoms, owner = _collision_geoms(model, bodies)
    if len(geoms) == 0:
        return []
    centre = data.geom_xpos[geoms]
    radius = model.geom_rbound[geoms]
    d2 = ((centre[:, None] - centre[None]) ** 2).sum(-1)
    near = (d2 < (radius[:, None] + radius[None]) ** 2) & (owner[:, None] < owner[None])
    best: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    fromto = np.zeros(6)
    for i, j in zip(*np.nonzero(near), strict=True):
        a, b = int(owner[i]), int(owner[j])
        if skip is not None and skip(names[a], names[b]):
            continue
        dist = mujoco.mj_geomDistance(model, data, int(geoms[i]), int(geoms[j]), 0.0, fromto)
        if dist < 0 and (-dist > best.get((a, b), (0.0, None))[0]):
            # For a penetrating pair fromto runs from geom1's point to geom2's: from - to moves geom2 out.
            sep = fromto[:3] - fromto[3:]
            n = np.linalg.norm(sep)
            sep = sep / n * -dist if n > 1e-12 else np.array([0.0, 0.0, -dist])
            best[(a, b)] = (-float(dist), sep)
    return [(names[a], names[b], d, s) for (a, b), (d, s) in best.items()]


def _shift(model, data, body: int, delta: np.ndarray) -> None:
    """Move a top-level body by ``delta`` (3,): its free joint's position, or its fixed pose."""
    if model.body_jntnum[body] > 0 and model.jnt_type[model.body_jntadr[body]] == 0:  # mjJNT_FREE
        adr = model.jnt_qposadr[model.body_jntadr[body]]
        data.qpos[adr : adr + 3] += delta
    else:
        model.body_pos[body] += delta


def _geom_world_vertices(model, data, g: int) -> np.ndarray:
    """(K, 3) world-frame vertices of a mesh or box geom (the convex shapes an export's colliders are)."""
    import mujoco

    R, x = data.geom_xmat[g].reshape(3, 3), data.geom_xpos[g]
    if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
        m = model.geom_dataid[g]
        local = model.mesh_vert[model.mesh_vertadr[m] : model.mesh_vertadr[m] + model.mesh_vertnum[m]]
    else:  # box (or any other primitive, by its bounding box)
        h = model.geom_size[g] if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX else model.geom_aabb[g, 3:]
        local = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * h
    return np.asarray(local, np.float64) @ R.T + x


def _mesh_files(mjcf: Path) -> dict[str, Path]:
    """{MJCF mesh asset name: absolute STL path} of an export's MJCF file."""
    root = etree.parse(str(mjcf)).getroot()
    comp = root.find("compiler")
    base = mjcf.parent / (comp.get("meshdir", ".") if comp is not None else ".")
    return {m.get("name"): (base / m.get("file")).resolve() for m in root.iter("mesh") if m.get("file")}


def _trim_hull(
    path: Path, to_world: np.ndarray, normal: np.ndarray, offset: float
) -> tuple[float, float] | None:
    """Cut the convex hull in the STL ``path`` (model frame; ``to_world`` (4, 4) its body's pose) down to the
    half-space ``normal . x <= offset`` (world frame, unit normal) and rewrite it atomically.

    Returns (depth (m) cut off, fraction of the hull's volume kept), or None when nothing of the hull lies
    on the kept side (nothing is written then). A hull mostly inside the other collider keeps a sliver:
    it is a collider bulging through a wall, and the sliver (thickened to 2 mm) still touches its neighbours.
    """
    import trimesh

    from simgen.export.colliders import hull_volume, robust_convex_hull

    mesh = trimesh.load(str(path), file_type="stl", force="mesh", process=True)
    v = np.asarray(mesh.vertices, np.float64) @ to_world[:3, :3].T + to_world[:3, 3]
    side = v @ normal - offset
    depth = float(side.max())
    if depth <= 0:
        return 0.0, 1.0
    edges = np.asarray(mesh.edges_unique)
    a, b = side[edges[:, 0]], side[edges[:, 1]]
    cross = edges[(a > 0) != (b > 0)]
    t = side[cross[:, 0]] / (side[cross[:, 0]] - side[cross[:, 1]])
    pts = np.concatenate([v[side <= 0], v[cross[:, 0]] + t[:, None] * (v[cross[:, 1]] - v[cross[:, 0]])])
    before = abs(float(mesh.volume))
    if len(pts) < 3:
        return None
    local = (pts - to_world[:3, 3]) @ to_world[:3, :3]
    try:
        hv, hf = robust_convex_hull(local, min_thickness=0.002)
    except Exception:
        return None
    kept = hull_volume(hv, hf) / max(before, 1e-12)
    with io.atomic_path(path) as tmp:
        trimesh.Trimesh(hv, hf, process=False).export(str(tmp), file_type="stl")
    return depth, kept


def _trim_pair(
    model, data, bodies: dict[str, int], files: dict[str, Path], cut: str, keep: str, tolerance: float
) -> tuple[float, list[str]]:
    """Trim every collider hull of model ``cut`` that interpenetrates one of model ``keep``'s by more than
    ``tolerance`` with the supporting plane of the other geom (MuJoCo's separation direction) plus 0.5 mm.

    Returns (deepest cut (m), hull names left untouched because the cut would remove them)."""
    import mujoco

    geoms, owner = _collision_geoms(model, bodies)
    names = list(bodies)
    gc, gk = geoms[owner == names.index(cut)], geoms[owner == names.index(keep)]
    fromto = np.zeros(6)
    body = bodies[cut]
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = data.xmat[body].reshape(3, 3), data.xpos[body]
    deepest, skipped = 0.0, []
    for i in gc:
        for j in gk:
            dist = mujoco.mj_geomDistance(model, data, int(i), int(j), 0.0, fromto)
            if dist >= -tolerance:
                continue
            # fromto runs from the cut geom's point to the kept one's; from - to is the direction that
            # moves the kept geom out, so the cut geom loses its furthest ``-dist`` (+0.5 mm) along it:
            # exactly the reported penetration, not the kept geom's whole extent (a long wall box whose
            # corners lie far along a slightly oblique direction). Re-measured after the cut.
            u = fromto[:3] - fromto[3:]
            norm = np.linalg.norm(u)
            u = u / norm if norm > 1e-12 else np.array([0.0, 0.0, 1.0])
            offset = float((_geom_world_vertices(model, data, int(i)) @ u).max()) + dist - 5e-4
            mesh_name = model.mesh(int(model.geom_dataid[i])).name
            path = files.get(mesh_name)
            res = None if path is None else _trim_hull(path, pose, u, offset)
            if res is None:
                skipped.append(mesh_name)
                continue
            deepest = max(deepest, res[0])
    return deepest, skipped


def resolve_spawn(
    mjcf: Path,
    kinds: dict[str, str],
    tolerance: float = SPAWN_TOLERANCE_M,
    max_shift: float = MAX_SHIFT_M,
    trim: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, float], list[str], dict[str, float]]:
    """Lift or slide things so that no two models' colliders interpenetrate by more than ``tolerance``.

    Stuff never moves, and two fixed things never move for each other: with ``trim`` the hulls of the
    higher one (or of a fixed thing that cannot be moved clear of stuff within ``MAX_FIXED_SHIFT_M``) are cut back
    to the other collider's support plane, rewriting their STL files in place (the overlap is a collider
    bulging where the scan was open); what cannot be trimmed is reported by :func:`run_physics`. Of a
    thing and stuff, the thing moves; of two things, the dynamic one, else the
    one standing higher (a mug on a table, not the table). Each move is the minimum translation
    that separates the deepest pair (MuJoCo's signed distance), never downwards (the other thing is pushed
    up instead, or the move becomes a slide, or a lift when it was mostly vertical); a thing that would go further than
    ``max_shift`` stays where it was scanned and is reported.

    Args:
        mjcf: the export's MJCF file (read only; the hull STL files it names are rewritten by trims).
        kinds: {model name: "thing" | "floor" | "stuff"}.
    Returns:
        ({model: (3,) shift (m, world)} of the models moved, {model: deepest overlap (m) before any move},
        warnings naming the models, {model: deepest cut (m) into its hulls} of the models trimmed).
    """
    model, data = _load(mjcf)
    import mujoco

    bodies = model_bodies(model)
    dynamic = {n for n, b in bodies.items() if model.body_jntnum[b] > 0}
    height = {n: float(data.xpos[b][2]) for n, b in bodies.items()}

    def skip(a: str, b: str) -> bool:
        return kinds.get(a, "stuff") != "thing" and kinds.get(b, "stuff") != "thing"

    shifts: dict[str, np.ndarray] = {}
    before: dict[str, float] = {}
    trims: dict[str, float] = {}
    trimmed_pairs: dict[tuple[str, str], int] = {}
    files = _mesh_files(mjcf) if trim else {}
    frozen: set[str] = set()
    warnings: list[str] = []

    def try_trim(cut: str, other: str, depth: float) -> bool:
        """Trim ``cut``'s hulls against ``other`` (once per pair); True when a hull was cut and the model
        reloaded, with the shifts so far applied again."""
        nonlocal model, data, bodies
        if not trim or trimmed_pairs.get((cut, other), 0) >= MAX_TRIMS:
            return False
        trimmed_pairs[(cut, other)] = trimmed_pairs.get((cut, other), 0) + 1
        cut_m, skipped = _trim_pair(model, data, bodies, files, cut, other, tolerance)
        note = (
            f"{cut}: {', '.join(skipped)} overlap {other} by {1000 * depth:.0f} mm; trimming would remove "
            "them, left as they are"
        )
        if skipped and note not in warnings:
            warnings.append(note)
        if cut_m <= 0:
            return False
        trims[cut] = max(trims.get(cut, 0.0), cut_m)
        warnings.append(
            f"{cut}: collider trimmed by {1000 * cut_m:.0f} mm where it overlapped {other}'s by "
            f"{1000 * depth:.0f} mm (both fixed)"
        )
        # MuJoCo caches mesh assets by file name: drop them so that the cut hulls are read.
        mujoco.mj_clearCache(mujoco.mj_getCache())
        model, data = _load(mjcf)
        bodies = model_bodies(model)
        for n, t in shifts.items():
            _shift(model, data, bodies[n], t)
        return True

    for rnd in range(MAX_RESOLVE_ROUNDS):
        pairs = [p for p in overlaps(model, data, bodies, skip) if p[2] > tolerance]
        if rnd == 0:
            for a, b, d, _ in overlaps(model, data, bodies, skip):
                before[a] = max(before.get(a, 0.0), d)
                before[b] = max(before.get(b, 0.0), d)
        if not pairs:
            break
        moved = False
        for a, b, d, sep in sorted(pairs, key=lambda p: -p[2]):
            if kinds.get(a) != "thing" or (
                kinds.get(b) == "thing" and (a in dynamic) == (b in dynamic) and height[b] >= height[a]
            ):
                mover, delta = b, sep
            elif kinds.get(b) != "thing" or (a in dynamic and b not in dynamic):
                mover, delta = a, -sep
            elif b in dynamic and a not in dynamic:
                mover, delta = b, sep
            else:
                mover, delta = a, -sep
            other = b if mover == a else a
            if (
                delta[2] < -0.5 * np.linalg.norm(delta)
                and kinds.get(other) == "thing"
                and other not in frozen
            ):
                mover, delta = other, -delta  # push the other one up rather than this one into the floor
            elif delta[2] < 0:
                delta = np.array([delta[0], delta[1], 0.0])  # never down: slide only
                if np.linalg.norm(delta) < 0.5 * d:
                    delta = np.array([0.0, 0.0, d])  # mostly vertical overlap with what is below: lift
            other = b if mover == a else a
            both_fixed = mover not in dynamic and (kinds.get(other) != "thing" or other not in dynamic)
            if both_fixed and (mover in frozen or kinds.get(other) == "thing"):
                # Two fixed things never move for each other (moving one would only misplace it), and a
                # fixed thing that cannot be moved clear of the floor or a wall stays too: the overlap is a
                # collider bulging where the scan was open, so the bulging hulls are cut back to the
                # other collider's surface (up to MAX_TRIMS times per pair; a cut that would leave nothing of a hull is not made).
                if try_trim(mover, other, d):
                    moved = True
                    break
                frozen.add(mover)
                continue
            if mover in frozen or (mover not in dynamic and kinds.get(other) == "thing"):
                frozen.add(mover)
                continue
            delta = delta * (1.0 + 1e-3) + delta / max(np.linalg.norm(delta), 1e-12) * 5e-4  # 0.5 mm clear
            total = shifts.get(mover, np.zeros(3)) + delta
            if np.linalg.norm(total) > (max_shift if mover in dynamic else min(max_shift, MAX_FIXED_SHIFT_M)):
                frozen.add(mover)
                if mover not in dynamic and try_trim(mover, other, d):
                    moved = True
                    break
                warnings.append(
                    f"{mover}: its colliders overlap {other}'s by {1000 * d:.0f} mm and would need a move of "
                    f"{100 * np.linalg.norm(total):.0f} cm; left where it was scanned"
                )
                frozen.add(mover)
                continue
            _shift(model, data, bodies[mover], delta)
            shifts[mover] = total
            moved = True
            break  # re-measure after every move: one move can clear or cause others
        if not moved:  # what overlaps is fixed or frozen: nothing more to do
            break
        mujoco.mj_forward(model, data)
    for name, s in shifts.items():
        what = "lifted" if s[2] > 0.7 * np.linalg.norm(s) else "moved"
        warnings.append(
            f"{name}: {what} by {1000 * np.linalg.norm(s):.0f} mm ({', '.join(f'{1000 * v:.0f}' for v in s)} mm "
            f"x, y, z) so that its colliders do not interpenetrate its neighbours' (deepest overlap "
            f"{1000 * before.get(name, 0.0):.0f} mm where it was scanned)"
        )
    return shifts, before, warnings, trims


def apply_shifts(mjcf: Path, world_sdf: Path | None, shifts: dict[str, np.ndarray]) -> None:
    """Write the shifts into the MJCF bodies' ``pos`` and the SDF world's ``<include><pose>``s (in place,
    atomically; these files are an export's own staged outputs)."""
    if not shifts:
        return
    tree = etree.parse(str(mjcf))
    for body in tree.getroot().find("worldbody").findall("body"):
        s = shifts.get(body.get("name"))
        if s is not None:
            pos = np.array(body.get("pos", "0 0 0").split(), float) + s
            body.set("pos", " ".join(f"{v:.6g}" for v in pos))
    with io.atomic_path(mjcf) as tmp:
        tree.write(str(tmp), pretty_print=True, xml_declaration=True, encoding="utf-8")
    if world_sdf is None or not world_sdf.is_file():
        return
    tree = etree.parse(str(world_sdf))
    for inc in tree.iterfind(".//include"):
        s = shifts.get((inc.findtext("name") or "").strip())
        pose = inc.find("pose")
        if s is not None and pose is not None:
            vals = np.array(pose.text.split(), float)
            vals[:3] += s
            pose.text = " ".join(f"{v:.6g}" for v in vals)
    with io.atomic_path(world_sdf) as tmp:
        tree.write(str(tmp), pretty_print=True, xml_declaration=True, encoding="utf-8")


def pin_models(mjcf: Path, models_dir: Path | None, names: set[str]) -> None:
    """Make models fixed in an export's own staged files: drop their MJCF ``<freejoint>`` and
    ``<inertial>``, and set ``<static>true</static>`` (no inertial) in their ``model.sdf``."""
    tree = etree.parse(str(mjcf))
    for body in tree.getroot().find("worldbody").findall("body"):
        if body.get("name") in names:
            for tag in ("freejoint", "inertial"):
                for el in body.findall(tag):
                    body.remove(el)
    with io.atomic_path(mjcf) as tmp:
        tree.write(str(tmp), pretty_print=True, xml_declaration=True, encoding="utf-8")
    for name in names if models_dir is not None else ():
        path = models_dir / name / "model.sdf"
        if not path.is_file():
            continue
        sdf = etree.parse(str(path))
        for st in sdf.iterfind(".//model/static"):
            st.text = "true"
        for inertial in sdf.iterfind(".//link/inertial"):
            inertial.getparent().remove(inertial)
        with io.atomic_path(path) as tmp:
            sdf.write(str(tmp), pretty_print=True, xml_declaration=True, encoding="utf-8")


def rest_test(mjcf: Path, seconds: float = REST_SECONDS) -> dict[str, tuple[float, float]]:
    """Simulate the export for ``seconds``; {dynamic model: (moved m, turned deg)} of its body frame."""
    import mujoco

    model, data = _load(mjcf)
    bodies = {n: b for n, b in model_bodies(model).items() if model.body_jntnum[b] > 0}
    p0 = {n: data.xpos[b].copy() for n, b in bodies.items()}
    q0 = {n: data.xquat[b].copy() for n, b in bodies.items()}
    mujoco.mj_step(model, data, nstep=int(round(seconds / model.opt.timestep)))
    out = {}
    for n, b in bodies.items():
        moved = float(np.linalg.norm(data.xpos[b] - p0[n]))
        dot = abs(float(np.dot(data.xquat[b], q0[n])))
        out[n] = (moved, math.degrees(2 * math.acos(min(1.0, dot))))
    return out


@dataclass
class PushResult:
    target: str
    dynamic: bool
    passed: bool
    target_moved_m: float
    robot_travel_m: float
    gap_m: float  # free distance between robot and target colliders at the start
    note: str = ""

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "dynamic": self.dynamic,
            "passed": self.passed,
            "target_moved_cm": round(100 * self.target_moved_m, 2),
            "robot_travel_cm": round(100 * self.robot_travel_m, 2),
            "start_gap_cm": round(100 * self.gap_m, 2),
            "note": self.note,
        }


def _with_robot(mjcf: Path, robot: RobotBuilder, x: float, y: float, yaw: float) -> str:
    tree = etree.parse(str(mjcf), etree.XMLParser(remove_blank_text=True))
    root = tree.getroot()
    body, actuators = robot(x, y, yaw)
    root.find("worldbody").append(body)
    existing = root.find("actuator")
    if existing is None:
        root.append(actuators)
    else:
        existing.extend(list(actuators))
    return etree.tostring(tree, encoding="unicode")


def _footprint(model, data, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World AABB (lo, hi) of collision geoms from their local AABBs."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for g in geoms:
        c = data.geom_xpos[g] + data.geom_xmat[g].reshape(3, 3) @ model.geom_aabb[g, :3]
        h = np.abs(data.geom_xmat[g].reshape(3, 3)) @ model.geom_aabb[g, 3:]
        lo, hi = np.minimum(lo, c - h), np.maximum(hi, c + h)
    return lo, hi


def _clear_path(model, data, start, goal, z, half_width, exclude: int, target: int, owner_of) -> bool:
    """Rays at height ``z`` from the robot's centre line and both sides to the target: the first collider
    each meets within the distance (if any) must be the target's."""
    import mujoco

    d = goal[:2] - start[:2]
    dist = float(np.linalg.norm(d))
    u = d / dist
    side = np.array([-u[1], u[0]])
    groups = np.array([1, 1, 1, 1, 1, 1], np.uint8)
    geomid = np.zeros(1, np.int32)
    hits_target = False
    for off in (0.0, -half_width, half_width):
        p = np.array([*(start[:2] + off * side), z])
        r = mujoco.mj_ray(model, data, p, np.array([*u, 0.0]), groups, 1, exclude, geomid)
        if r < 0 or r > dist + 1.0:
            continue
        if owner_of(int(geomid[0])) != target:
            return False
        hits_target = hits_target or off == 0.0
    return hits_target


def push_test(
    mjcf: Path, robot: RobotBuilder, kinds: dict[str, str], want_dynamic: bool, max_mass: float = 10.0
) -> PushResult | None:
    """Drive the robot straight at a model and report what happened; None when no model qualifies.

    Targets: dynamic things of at most ``max_mass`` kg standing on the floor and tall enough to meet the
    robot's colliders (lightest first), or fixed things (smallest first). For each, 16 approach directions
    are tried until the robot fits at its start pose with a clear straight path to the target. Passed:
    a dynamic target moved at least ``PUSH_MIN_MOVE_M``; a fixed target stopped the robot (it ended in
    contact with the target, slower than 5 cm/s).
    """
    import mujoco

    base, base_data = _load(mjcf)
    bodies = model_bodies(base)
    geoms, owner = _collision_geoms(base, bodies)
    names = list(bodies)
    candidates = []
    for k, name in enumerate(names):
        if kinds.get(name) != "thing" or (base.body_jntnum[bodies[name]] > 0) != want_dynamic:
            continue
        lo, hi = _footprint(base, base_data, geoms[owner == k])
        mass = float(base.body_subtreemass[bodies[name]])
        if want_dynamic and (mass > max_mass or lo[2] > 0.05 or hi[2] - lo[2] < 0.12):
            continue
        candidates.append((mass if want_dynamic else float(np.prod(hi - lo)), name, lo, hi))
    # Probe the robot's own size once, far away from everything.
    probe, probe_data = _load(_with_robot(mjcf, robot, 1e3, 1e3, 0.0), mjcf.parent)
    rbodies = model_bodies(probe)
    rname = next(n for n in rbodies if n not in bodies)
    rg, _ = _collision_geoms(probe, {rname: rbodies[rname]})
    rlo, rhi = _footprint(probe, probe_data, rg)
    radius = float(np.linalg.norm((rhi - rlo)[:2]) / 2)
    half_width = float(min(rhi[1] - rlo[1], rhi[0] - rlo[0]) / 2 - 0.02)
    for _, name, lo, hi in sorted(candidates):
        centre = (lo + hi) / 2
        reach = float(np.linalg.norm((hi - lo)[:2]) / 2) + radius + 0.15
        z = float(np.clip((max(lo[2], rlo[2]) + min(hi[2], rhi[2])) / 2, rlo[2] + 0.01, rhi[2] - 0.01))
        if min(hi[2], rhi[2]) - max(lo[2], rlo[2]) < 0.02:
            continue  # robot and target do not overlap in height: it would pass over / under
        for k in range(16):
            ang = 2 * math.pi * k / 16
            start = centre[:2] + reach * np.array([math.cos(ang), math.sin(ang)])
            yaw = ang + math.pi
            model, data = _load(_with_robot(mjcf, robot, *start, yaw), mjcf.parent)
            rb = model_bodies(model)
            rid = rb[rname]
            jnt = model.body_jntadr[rid]
            hinge = [j for j in range(jnt, jnt + model.body_jntnum[rid]) if model.jnt_type[j] == 3]
            if hinge:
                data.qpos[model.jnt_qposadr[hinge[0]]] = yaw
            mujoco.mj_forward(model, data)
            all_geoms, all_owner = _collision_geoms(model, rb)
            rnames = list(rb)
            robot_geoms = set(all_geoms[all_owner == rnames.index(rname)].tolist())
            owner_map = dict(zip(all_geoms.tolist(), all_owner.tolist(), strict=True))
            if any(
                (int(c.geom1) in robot_geoms) != (int(c.geom2) in robot_geoms) and c.dist < -1e-3
                for c in data.contact[: data.ncon]
            ):
                continue  # the robot does not fit there
            target = rnames.index(name)
            if not _clear_path(
                model, data, np.array([*start, z]), centre, z, half_width, rid, target, owner_map.get
            ):
                continue
            fromto = np.zeros(6)
            gap = min(
                mujoco.mj_geomDistance(model, data, int(g), int(t), 10.0, fromto)
                for g in robot_geoms
                for t in all_geoms[all_owner == target]
            )
            tb = rb[name]
            t0, r0 = data.xpos[tb].copy(), data.xpos[rid].copy()
            u = (centre[:2] - start) / np.linalg.norm(centre[:2] - start)
            speed = 0.0
            for _ in range(int(PUSH_SECONDS / model.opt.timestep)):
                data.ctrl[:3] = [PUSH_SPEED * u[0], PUSH_SPEED * u[1], 0.0]
                mujoco.mj_step(model, data)
            speed = float(np.linalg.norm(data.cvel[rid][3:5]))
            moved = float(np.linalg.norm((data.xpos[tb] - t0)[:2]))
            travel = float((data.xpos[rid] - r0)[:2] @ u)
            if want_dynamic:
                ok = moved >= PUSH_MIN_MOVE_M
                note = "" if ok else f"moved {100 * moved:.1f} cm < {100 * PUSH_MIN_MOVE_M:.0f} cm"
            else:
                # Stopped by it: at rest and touching it at the end (not through it and beyond).
                target_geoms = set(all_geoms[all_owner == target].tolist())
                touching = any(
                    {int(c.geom1), int(c.geom2)} & robot_geoms and {int(c.geom1), int(c.geom2)} & target_geoms
                    for c in data.contact[: data.ncon]
                )
                ok = speed < 0.05 and touching
                note = (
                    ""
                    if ok
                    else f"robot ended {'' if touching else 'not '}touching it at {100 * speed:.0f} cm/s"
                )
            return PushResult(name, want_dynamic, ok, moved, travel, float(gap), note)
    return None


def run_physics(
    mjcf: Path,
    world_sdf: Path | None,
    kinds: dict[str, str],
    robot: RobotBuilder | None = None,
    resolve: bool = True,
) -> tuple[dict[str, ModelFigures], dict, list[str], list[str]]:
    """All checks on one export: resolve spawn overlaps (when ``resolve``; files are rewritten), then the
    rest test and, with a ``robot``, the push tests.

    Returns:
        ({model: figures}, {"spawn_max_penetration_mm", "rest_max_moved_cm", "rest_max_turned_deg",
        "push_dynamic", "push_fixed", "passed"}, warnings / failures naming models).
    """
    messages: list[str] = []
    warns: list[str] = []
    if resolve:
        shifts, before, warns, trims = resolve_spawn(mjcf, kinds)
        apply_shifts(mjcf, world_sdf, shifts)
    else:
        shifts, before, trims = {}, {}, {}
    model, data = _load(mjcf)
    bodies = model_bodies(model)

    def skip(a: str, b: str) -> bool:
        return kinds.get(a, "stuff") != "thing" and kinds.get(b, "stuff") != "thing"

    after: dict[str, float] = {}
    for a, b, d, _ in overlaps(model, data, bodies, skip):
        after[a], after[b] = max(after.get(a, 0.0), d), max(after.get(b, 0.0), d)
        if d > SPAWN_TOLERANCE_M:
            messages.append(
                f"spawn: {a} and {b} colliders interpenetrate by {1000 * d:.1f} mm "
                f"(> {1000 * SPAWN_TOLERANCE_M:.0f} mm)"
            )
    figures = {
        n: ModelFigures(
            dynamic=bool(model.body_jntnum[b] > 0),
            spawn_penetration_mm=1000 * (before.get(n, after.get(n, 0.0)) if resolve else after.get(n, 0.0)),
            shift_mm=(1000 * shifts.get(n, np.zeros(3))).tolist(),
            trimmed_mm=1000 * trims.get(n, 0.0),
        )
        for n, b in bodies.items()
    }
    rest = rest_test(mjcf)
    for n, (moved, turned) in rest.items():
        figures[n].rest_moved_cm, figures[n].rest_turned_deg = 100 * moved, turned
    unstable = {n for n, (m, t) in rest.items() if m >= REST_MOVE_M or t >= REST_TURN_DEG}
    if resolve and unstable:
        # A thing that does not rest where it was scanned (top-heavy hulls of uniform density, a scan
        # cut off at its support) is pinned rather than let fall over at the start of every simulation.
        pin_models(mjcf, None if world_sdf is None else world_sdf.parent.parent / "models", unstable)
        for n in sorted(unstable):
            m, t = rest[n]
            figures[n].pinned, figures[n].dynamic = True, False
            warns.append(
                f"{n}: moved {100 * m:.1f} cm and turned {t:.1f} deg in the {REST_SECONDS:.0f} s rest test; "
                "made fixed (pinned) so that it stays where it was scanned"
            )
        rest = rest_test(mjcf)
    for n, (moved, turned) in rest.items():
        if moved >= REST_MOVE_M or turned >= REST_TURN_DEG:
            messages.append(
                f"rest: {n} moved {100 * moved:.1f} cm and turned {turned:.1f} deg in {REST_SECONDS:.0f} s "
                f"(limits {100 * REST_MOVE_M:.0f} cm, {REST_TURN_DEG:.0f} deg)"
            )
    push: dict[str, dict | None] = {"dynamic": None, "fixed": None}
    if robot is not None:
        for key, want in (("dynamic", True), ("fixed", False)):
            res = push_test(mjcf, robot, kinds, want)
            push[key] = None if res is None else res.to_json()
            if res is not None and not res.passed:
                what = "did not move it" if want else "was not stopped by it"
                messages.append(f"push: the robot driven into {res.target} {what} ({res.note})")
    worst_after = max(after.values(), default=0.0)
    summary = {
        "spawn_max_penetration_mm": round(1000 * worst_after, 2),
        "spawn_tolerance_mm": 1000 * SPAWN_TOLERANCE_M,
        "rest_seconds": REST_SECONDS,
        "rest_max_moved_cm": round(100 * max((m for m, _ in rest.values()), default=0.0), 3),
        "rest_max_turned_deg": round(max((t for _, t in rest.values()), default=0.0), 3),
        "push_dynamic": push["dynamic"],
        "push_fixed": push["fixed"],
        "push_note": None if robot is not None else "no robot given: push tests not run",
    }
    failed = (
        worst_after > SPAWN_TOLERANCE_M
        or any(m >= REST_MOVE_M or t >= REST_TURN_DEG for m, t in rest.values())
        or any(p is not None and not p["passed"] for p in push.values())
    )
    summary["passed"] = not failed
    return figures, summary, warns, messages


def check_folder(out_dir: Path, robot: RobotBuilder | None = None) -> tuple[list[tuple[str, str]], dict]:
    """The physics checks of ``simgen check`` on an export folder, read only.

    Returns ([(file, failure)], figures: the totals of :func:`run_physics` plus {"models": {model:
    figures}}); an export without MJCF gives one failure saying so.
    """
    import json

    from simgen import folders

    out_dir = Path(out_dir)
    mjcfs = sorted(p for p in (out_dir / "mjcf").glob("*.xml") if not p.stem.endswith("_drive"))
    if not mjcfs:
        return [
            (str(out_dir / "mjcf"), "no MJCF world: the physics checks need it (--format mjcf or all)")
        ], {}
    mjcf = mjcfs[0]
    kinds: dict[str, str] = {}
    pan = out_dir / folders.PANOPTIC_FILE
    try:
        for seg in json.loads(pan.read_text())["segments"]:
            kinds[str(seg["model"])] = str(seg["kind"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [(str(pan), f"cannot read the models' kinds for the physics checks ({e})")], {}
    figures, totals, _, failures = run_physics(mjcf, None, kinds, robot=robot, resolve=False)
    totals["models"] = {n: f.to_json() for n, f in figures.items() if kinds.get(n) == "thing"}
    return [(str(mjcf), f) for f in failures], totals
