"""Completed stuff surfaces: floor and walls as closed planar surfaces matching their box colliders.

A scan has holes wherever the camera never looked (floor behind furniture, wall tops, corners); the box
colliders there are complete, so a robot camera would see black, depth-less pixels where it bumps into a
wall. For each box collider of a stuff part, the box's room-side face becomes a grid of cells (``pitch``)
just behind the scanned surface (``BEHIND``): where the scan exists it is in front and hides the grid, so
only the holes show it. Cells the scan saw take the colour of the scan there; the others are filled with
the colour of the nearest seen cell (a plausible fill, not a reconstruction) and are marked as filled.

The export also writes every part's fill, in the world frame and labelled with its part's category, to
``stuff_fill.ply`` (:func:`write_fill_file`, simgen.folders.STUFF_FILL_FILE), which the render server
appends to the mesh it draws.

Measure (:func:`void_fraction`): level cameras 0.3 m above the scanned floor look in random directions;
void is the fraction of rays that meet no visual surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage

from simgen import folders
from simgen.export.colliders import Box

BEHIND = 0.005  # m the fill surface sits behind the scanned surface (scan in front where it exists)
NEAR = 0.15  # m from the plane within which scan vertices count as seeing a cell
FLOOR_BAND = 0.1  # m around the median floor height where a level camera may stand


@dataclass
class Fill:
    vertices: np.ndarray  # (V, 3) float64, part frame
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) uint8
    filled: np.ndarray  # (F,) bool: the face is in a cell the scan never saw
    area_m2: float  # total area of the surfaces
    filled_m2: float  # area of the filled (unseen) cells


def _face_frame(box: Box, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(origin, u, w, offset): the box face facing the scanned points and its in-plane axes.

    The box's third axis is the plane normal; of its two faces along it, the one nearer the median of
    the scanned points is the room side.
    """
    R, t = box.pose[:3, :3], box.pose[:3, 3]
    u, w, a = R[:, 0], R[:, 1], R[:, 2]
    half = box.size[2] / 2
    if len(points):
        med = float(np.median((points - t) @ a))
        sign = 1.0 if abs(med - half) <= abs(med + half) else -1.0
    else:
        sign = 1.0
    return t + sign * a * half, u, w, sign


def fill_surfaces(
    boxes: list[Box], vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, pitch: float = 0.05
) -> Fill | None:
    """Grid surfaces on the room side of each box collider, coloured from the scan (part frame).

    Args:
        boxes: the stuff part's box colliders (simgen.export.colliders.stuff_boxes).
        vertices: (N, 3) scanned vertices of the part, faces (F, 3) its triangles, colors: (N, 3) uint8
            its vertex colours. A cell counts as seen when scanned surface (area samples, about 16 per
            cell) lies in it within NEAR of the plane.
        pitch: cell size (m).
    """
    vertices = np.asarray(vertices, np.float64)
    vcolors = np.asarray(colors, np.float64).reshape(-1, 3)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if len(faces) and mesh.area > 0:
        # 16 random samples leave a fully scanned cell without any with probability e^-16; at 4 per cell
        # about 2 % of the scanned cells came out "unseen" and were counted as filled.
        n = int(min(max(16 * mesh.area / pitch**2, 1000), 2_000_000))
        samples, fidx = trimesh.sample.sample_surface(mesh, n, seed=0)
        colors = vcolors[np.asarray(faces)[fidx, 0]]
        # Only vertices of faces are scanned surface: a vertex left behind by removed faces saw nothing.
        used = np.unique(np.asarray(faces))
        vertices = np.concatenate([np.asarray(samples, np.float64), vertices[used]])
        colors = np.concatenate([colors, vcolors[used]])
    else:
        colors = vcolors
    mean = colors.mean(0) if len(colors) else np.full(3, 180.0)
    vs, fs, cs, fl = [], [], [], []
    area = filled = 0.0
    off = 0
    for box in boxes:
        origin, u, w, sign = _face_frame(box, vertices)
        a = box.pose[:3, 2] * sign  # points out of the box, into the room
        su, sw = float(box.size[0]), float(box.size[1])
        nu, nw = max(int(np.ceil(su / pitch)), 1), max(int(np.ceil(sw / pitch)), 1)
        rel = vertices - origin
        depth = rel @ a
        near = np.abs(depth) < NEAR
        iu = np.floor((rel[near] @ u + su / 2) / su * nu).astype(int)
        iw = np.floor((rel[near] @ w + sw / 2) / sw * nw).astype(int)
        ok = (iu >= 0) & (iu < nu) & (iw >= 0) & (iw < nw)
        seen = np.zeros((nu, nw), bool)
        seen[iu[ok], iw[ok]] = True
        col = np.tile(mean, (nu, nw, 1))
        if ok.any():
            # Cell colour: the mean of the scan's colours in it; unseen cells: the nearest seen cell's.
            acc = np.zeros((nu, nw, 3))
            cnt = np.zeros((nu, nw))
            np.add.at(acc, (iu[ok], iw[ok]), colors[near][ok])
            np.add.at(cnt, (iu[ok], iw[ok]), 1)
            col = acc / np.maximum(cnt, 1)[..., None]
            _, (ii, jj) = ndimage.distance_transform_edt(~seen, return_indices=True)
            col = col[ii, jj]
        # Surface just behind the scan: the scan's own median plane (or the box face) minus BEHIND.
        plane = float(np.median(depth[near])) if near.any() else 0.0
        base = origin + a * (plane - BEHIND)
        gu, gw = np.meshgrid(
            np.linspace(-su / 2, su / 2, nu + 1), np.linspace(-sw / 2, sw / 2, nw + 1), indexing="ij"
        )
        v = base + gu[..., None] * u + gw[..., None] * w
        idx = np.arange((nu + 1) * (nw + 1)).reshape(nu + 1, nw + 1)
        q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
        f = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
        # Faces wound so their normal points into the room (a), for one-sided renderers.
        n = np.cross(u, w)
        if n @ a < 0:
            f = f[:, [0, 2, 1]]
        cell_filled = np.tile(~seen.reshape(-1), 2)
        # Vertex colours from the 4 cells around each grid vertex (edge-padded).
        pad = np.pad(col, ((1, 1), (1, 1), (0, 0)), mode="edge")
        vcol = (pad[:-1, :-1] + pad[1:, :-1] + pad[:-1, 1:] + pad[1:, 1:]) / 4
        vs.append(v.reshape(-1, 3))
        fs.append(f + off)
        cs.append(np.clip(vcol.reshape(-1, 3), 0, 255).astype(np.uint8))
        fl.append(cell_filled)
        off += len(vs[-1])
        area += su * sw
        filled += float((~seen).sum()) * (su / nu) * (sw / nw)
    if not vs:
        return None
    return Fill(np.concatenate(vs), np.concatenate(fs), np.concatenate(cs), np.concatenate(fl), area, filled)


def write_fill_file(
    path, fills: list[tuple[Fill | None, np.ndarray, int]], build: str | None = None
) -> dict | None:
    """Write the fills of an export's stuff parts as one world-frame ``stuff_fill.ply``.

    Args:
        path: the file (simgen.folders.STUFF_FILL_FILE in the export's staging folder).
        fills: per part ``(fill in the part's model frame or None, model origin (3,) in the world frame,
            category id)``. Stuff models are placed by a translation only (pipeline ``_write_all``), so
            world = model + origin.
        build: the build id (kept in the file so the server never pairs it with another build's mesh).

    Returns:
        ``{"file", "faces", "filled_faces"}`` for export.json, or None (and no file) when no part has one.
    """
    vs, fs, cs, ss, fl = [], [], [], [], []
    off = 0
    for fill, origin, category in fills:
        if fill is None or not len(fill.faces):
            continue
        vs.append(np.asarray(fill.vertices, np.float64) + np.asarray(origin, np.float64))
        fs.append(np.asarray(fill.faces, np.int64) + off)
        cs.append(fill.colors)
        ss.append(np.full(len(fill.vertices), int(category)))
        fl.append(np.asarray(fill.filled, bool))
        off += len(fill.vertices)
    if not vs:
        return None
    v = np.concatenate(vs)
    mesh = folders.PanopticMesh(
        v, np.concatenate(fs), np.concatenate(cs), np.concatenate(ss), np.zeros(len(v))
    )
    filled = np.concatenate(fl)
    folders.write_stuff_fill(path, mesh, filled, build)
    return {"file": folders.STUFF_FILL_FILE, "faces": int(len(filled)), "filled_faces": int(filled.sum())}


def level_poses(
    floor_points: np.ndarray, n: int, height: float = 0.3, seed: int = 0
) -> list[tuple[np.ndarray, float]]:
    """``n`` camera (position (3,), yaw rad) pairs at ``height`` m above random scanned floor points.

    Only points within ``FLOOR_BAND`` of the median floor height host a camera: a point labelled floor
    far above it (a wall top, a table top the segmenter called floor) is not where a robot drives, and a
    camera there looks over the walls into nothing.
    """
    rng = np.random.default_rng(seed)
    floor_points = np.asarray(floor_points, np.float64)
    if len(floor_points):
        floor_points = floor_points[np.abs(floor_points[:, 2] - np.median(floor_points[:, 2])) <= FLOOR_BAND]
    pick = rng.integers(0, len(floor_points), n)
    return [
        (np.array([*floor_points[k, :2], floor_points[k, 2] + height]), float(rng.uniform(-np.pi, np.pi)))
        for k in pick
    ]


def void_fraction(
    mesh: trimesh.Trimesh,
    poses: list[tuple[np.ndarray, float]],
    width: int = 80,
    height: int = 60,
    hfov: float = float(np.deg2rad(60)),
) -> np.ndarray:
    """(P,) fraction of each level camera's rays (pinhole, ``width`` x ``height``) that hit nothing.

    ``mesh`` is every visual in the world frame (z up); ray casting through trimesh (embree when present).
    """
    f = (width / 2) / np.tan(hfov / 2)
    x, y = np.meshgrid(np.arange(width) + 0.5 - width / 2, np.arange(height) + 0.5 - height / 2)
    out = []
    for pos, yaw in poses:
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        left = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        d = fwd * f + (-x.reshape(-1, 1)) * left + (-y.reshape(-1, 1)) * np.array([0, 0, 1.0])
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.tile(pos, (len(d), 1))
        hit = mesh.ray.intersects_any(o, d)
        out.append(1.0 - hit.mean())
    return np.asarray(out)


def check_void(out_dir, n: int = 40, seed: int = 0) -> dict | None:
    """Void figures of an export folder: ``n`` level cameras 0.3 m above random floor-model vertices.

    Every model's ``meshes/visual.obj`` is placed at its MJCF body pose. Returns {"poses", "void_mean_percent",
    "poses_over_5_percent"} or None when the export has no MJCF or no floor model.
    """
    import json
    from pathlib import Path

    from lxml import etree
    from scipy.spatial.transform import Rotation

    from simgen import folders

    out_dir = Path(out_dir)
    mjcfs = sorted(p for p in (out_dir / "mjcf").glob("*.xml") if not p.stem.endswith("_drive"))
    pan = out_dir / folders.PANOPTIC_FILE
    if not mjcfs or not pan.is_file():
        return None
    kinds = {str(s["model"]): str(s["kind"]) for s in json.loads(pan.read_text()).get("segments", [])}
    meshes, floor = [], []
    for body in etree.parse(str(mjcfs[0])).getroot().find("worldbody").findall("body"):
        name = body.get("name")
        path = out_dir / folders.MODELS_DIR / str(name) / folders.MODEL_VISUAL_FILE
        if name not in kinds or not path.is_file():
            continue
        m = trimesh.load(path, force="mesh", process=False)
        T = np.eye(4)
        T[:3, 3] = np.array(body.get("pos", "0 0 0").split(), float)
        w, x, y, z = np.array(body.get("quat", "1 0 0 0").split(), float)
        T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
        m.apply_transform(T)
        meshes.append(trimesh.Trimesh(m.vertices, m.faces, process=False))
        if kinds[name] == "floor":
            floor.append(np.asarray(m.vertices))
    if not floor or not meshes:
        return None
    world = trimesh.util.concatenate(meshes)
    void = void_fraction(world, level_poses(np.concatenate(floor), n, seed=seed))
    return {
        "poses": int(n),
        "camera": "level, 0.3 m above random floor-model vertices, 60 deg hfov, 80 x 60 rays",
        "void_mean_percent": round(100 * float(void.mean()), 2),
        "poses_over_5_percent": round(100 * float((void > 0.05).mean()), 1),
    }
