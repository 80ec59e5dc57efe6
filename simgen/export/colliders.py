"""Colliders: CoACD convex decomposition for things, box pieces for floor, walls and other stuff.

Every collider is convex and watertight: CoACD hulls are re-hulled with qhull (trimesh), and any hull
that qhull cannot build (flat, too few points) is thickened first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

# A closed piece with at least this fraction of its convex hull's volume is used as its own hull.
CONVEX_RATIO = 0.95


@dataclass
class Box:
    size: np.ndarray  # (3,) float64 full extents (m)
    pose: np.ndarray  # (4, 4) float64, box frame -> part frame


@dataclass
class ColliderResult:
    hulls: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # [(V, 3) float64, (F, 3) int64]
    boxes: list[Box] = field(default_factory=list)
    method: str = ""  # "coacd", "convex-hull" (fallback), "boxes"
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def robust_convex_hull(points: np.ndarray, min_thickness: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull of (N, 3) points as (V, 3), (F, 3); flat or tiny point sets are thickened first.

    A flat hull has no volume and physics engines let bodies pass through it, so points closer than
    ``min_thickness`` to a plane (or a line) are offset by ``min_thickness / 2`` both ways.
    """
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 3), axis=0)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        raise ValueError("no finite points to build a convex hull from")
    centre = pts.mean(0)
    _, s, vt = (
        np.linalg.svd(pts - centre, full_matrices=False) if len(pts) > 1 else (None, np.zeros(1), np.eye(3))
    )
    s = np.concatenate([s, np.zeros(3 - len(s))])
    spread = s / np.sqrt(max(len(pts), 1))
    # Thicken every principal direction that is (nearly) degenerate.
    for axis in range(3):
        if spread[axis] < min_thickness / 4 or len(pts) < 4:
            d = vt[axis] if axis < len(vt) else np.eye(3)[axis]
            pts = np.concatenate([pts + d * min_thickness / 2, pts - d * min_thickness / 2])
    # C-1e-4 merges facets that are coplanar to 1e-4 of the extent: scanned flat sides otherwise give
    # many slivers whose tiny folds read as non-convex once written as float32 STL.
    hull = trimesh.convex.convex_hull(pts, qhull_options="QbB Pp Qt C-1e-4", repair=True)
    if not (hull.is_watertight and hull.volume > 0):
        hull = trimesh.convex.convex_hull(pts, qhull_options="QbB Pp QJ", repair=True)
    return np.asarray(hull.vertices, np.float64), np.asarray(hull.faces, np.int64)


def hull_volume(v: np.ndarray, f: np.ndarray) -> float:
    return float(abs(trimesh.Trimesh(v, f, process=False).volume))


def union_volume(hulls: list[tuple[np.ndarray, np.ndarray]], samples: int = 40_000, seed: int = 0) -> float:
    """Monte-Carlo volume (m^3) of the union of convex hulls (overlaps counted once)."""
    if not hulls:
        return 0.0
    lo = np.min([v.min(0) for v, _ in hulls], axis=0)
    hi = np.max([v.max(0) for v, _ in hulls], axis=0)
    p = np.random.default_rng(seed).uniform(lo, hi, size=(samples, 3))
    inside = np.zeros(samples, bool)
    for v, f in hulls:
        m = trimesh.Trimesh(v, f, process=False)
        n = m.face_normals
        if float(m.volume) < 0:  # inward-facing normals
            n = -n
        off = np.einsum("ij,ij->i", n, v[f[:, 0]])
        inside |= (p @ n.T <= off + 1e-9).all(1)
    return float(inside.mean() * np.prod(hi - lo))


def _run_coacd(
    vertices, faces, threshold, max_hulls, resolution, seed, preprocess_resolution=30, iterations=60
) -> list[tuple[np.ndarray, np.ndarray]]:
    """CoACD on one closed or open mesh; returns [(V, 3) float64, (F, 3) int64] raw hulls."""
    import coacd

    coacd.set_log_level("error")
    closed = trimesh.Trimesh(vertices, faces, process=False).is_watertight
    parts = coacd.run_coacd(
        coacd.Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int32)),
        threshold=float(threshold),
        max_convex_hull=int(max_hulls),
        resolution=int(resolution),
        # CoACD's manifold remeshing is slow and inflates thin parts by about a voxel: only for open meshes.
        preprocess_mode="off" if closed else "on",
        preprocess_resolution=int(preprocess_resolution),
        # CoACD's default of 150 tree-search iterations per cut costs 2-3x the time of 60 for hulls
        # within a few percent of the same volume on scanned furniture (bench/bench_export.py).
        mcts_iterations=int(iterations),
        seed=int(seed),
    )
    return [(np.asarray(v, np.float64), np.asarray(f, np.int64)) for v, f in parts]


def decompose_thing(
    name: str,
    vertices: np.ndarray,
    faces: np.ndarray,
    threshold: float,
    max_hulls: int,
    resolution: int,
    seed: int,
    preprocess_resolution: int = 30,
    iterations: int = 60,
) -> ColliderResult:
    """Convex decomposition of one thing; never raises: failures fall back to the convex hull.

    The mesh is split into connected pieces first and each piece is decomposed on its own: CoACD does not
    terminate on some inputs made of interpenetrating closed pieces (seen on two overlapping boxes), and
    a piece that is already (nearly) convex -- volume at least ``CONVEX_RATIO`` of its hull's -- is its
    own hull without running CoACD at all. At most ``max_hulls`` hulls in total: the biggest pieces are
    decomposed with what is left of the budget, the smallest share one hull when pieces outnumber it.

    Args: vertices (N, 3) float64 and faces (F, 3) int of the (decimated) part, part frame; the other
    arguments are CoACD's (see ExportConfig).
    """
    import time

    t0 = time.perf_counter()
    res = ColliderResult(method="coacd")
    try:
        if len(faces) < 4:
            raise ValueError(f"degenerate mesh ({len(faces)} faces)")
        centred = np.asarray(vertices, np.float64) - np.mean(vertices, axis=0)
        extent = np.ptp(centred @ np.linalg.svd(centred, full_matrices=False)[2].T, axis=0)  # along PCA axes
        if extent.min() < 1e-3:
            raise ValueError(f"degenerate mesh (flat: extents {np.round(extent, 4).tolist()} m)")
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        pieces = [m for m in mesh.split(only_watertight=False) if len(m.faces) >= 4]
        pieces.sort(key=lambda m: -float(np.prod(m.extents)))
        max_hulls = max(int(max_hulls), 1)
        if len(pieces) > max_hulls:  # the smallest pieces share one hull
            rest = np.concatenate([m.vertices for m in pieces[max_hulls - 1 :]])
            res.hulls.append(robust_convex_hull(rest))
            pieces = pieces[: max_hulls - 1]
        for k, piece in enumerate(pieces):
            budget = max_hulls - len(res.hulls) - (len(pieces) - k - 1)  # leave one hull for each later piece
            hull = piece.convex_hull
            if budget <= 1 or (piece.is_watertight and abs(piece.volume) >= CONVEX_RATIO * hull.volume):
                res.hulls.append(robust_convex_hull(piece.vertices))
                continue
            raw = _run_coacd(
                piece.vertices,
                piece.faces,
                threshold,
                budget,
                resolution,
                seed,
                preprocess_resolution,
                iterations,
            )
            for v, _ in raw:
                if len(v) >= 4 and np.isfinite(v).all():
                    res.hulls.append(robust_convex_hull(v))
        if not res.hulls:
            raise ValueError("CoACD returned no usable hull")
    except Exception as e:  # CoACD or the mesh failed: one object must not abort the export
        res.hulls = [robust_convex_hull(vertices)]
        res.method = "convex-hull"
        res.warnings.append(f"{name}: convex decomposition failed ({e}); using its convex hull")
    res.seconds = time.perf_counter() - t0
    return res


def _dominant_axes(
    normals: np.ndarray, areas: np.ndarray, cos_tol: float, max_axes: int, seed: int
) -> list[np.ndarray]:
    """Greedy sign-agnostic clustering of face normals (F, 3) weighted by areas (F,); returns unit axes."""
    rng = np.random.default_rng(seed)
    remaining = np.ones(len(normals), bool)
    total = areas.sum()
    axes = []
    while len(axes) < max_axes and areas[remaining].sum() > 0.03 * total:
        idx = np.flatnonzero(remaining)
        p = areas[idx] / areas[idx].sum()
        cand = normals[rng.choice(idx, size=min(200, len(idx)), p=p)]
        sub = idx if len(idx) <= 20_000 else rng.choice(idx, 20_000, replace=False, p=p)
        score = ((np.abs(normals[sub] @ cand.T) > cos_tol) * areas[sub, None]).sum(0)
        a = cand[score.argmax()]
        members = idx[np.abs(normals[idx] @ a) > cos_tol]
        # Refine the axis: dominant eigenvector of the members' area-weighted normal scatter.
        w = normals[members] * np.sqrt(areas[members, None])
        a = np.linalg.eigh(w.T @ w)[1][:, -1]
        axes.append(a / np.linalg.norm(a))
        remaining[np.abs(normals @ a) > cos_tol] = False
    return axes


def _box_from_plane(pts: np.ndarray, a: np.ndarray, inward: float, thickness: float) -> Box:
    """A box whose inner face lies on the median plane of ``pts`` (M, 3) with normal ``a`` and extends
    ``thickness`` away from the room (``inward`` = +1 if +a points into the room, else -1)."""
    ref = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(ref, a)
    u /= np.linalg.norm(u)
    w = np.cross(a, u)
    pu, pw, pa = pts @ u, pts @ w, pts @ a
    surface = float(np.median(pa))
    R = np.stack([u, w, a], axis=1)
    pose = np.eye(4)
    pose[:3, :3] = R
    pose[:3, 3] = (
        u * (pu.min() + pu.max()) / 2 + w * (pw.min() + pw.max()) / 2 + a * (surface - inward * thickness / 2)
    )
    return Box(np.array([np.ptp(pu), np.ptp(pw), thickness]), pose)


def stuff_boxes(
    vertices: np.ndarray,
    faces: np.ndarray,
    kind: str,
    room_centre: np.ndarray,
    thickness: float = 0.1,
    min_area: float = 0.05,
    seed: int = 0,
) -> list[Box]:
    """Box colliders for a stuff part (part frame, z up).

    Written here because a scanned wall or floor is a one-sided open shell: CoACD turns it into flat
    hulls, which physics engines let bodies tunnel through. Instead the faces are grouped by normal
    direction (greedy clustering) and connectivity, and each planar piece becomes a box whose inner face is
    the piece's median plane, ``thickness`` thick on the side away from ``room_centre`` (3,).
    Floor: one box under all the floor faces, top at the floor's median height.
    """
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if kind == "floor":
        z = np.array([0.0, 0.0, 1.0])
        return [_box_from_plane(np.asarray(vertices, np.float64), z, 1.0, thickness)] if len(vertices) else []
    normals, areas = mesh.face_normals, mesh.area_faces
    ok = np.isfinite(normals).all(1) & (areas > 0)
    boxes = []
    for a in _dominant_axes(normals[ok], areas[ok], np.cos(np.deg2rad(20)), 12, seed):
        sel = np.flatnonzero(ok)[np.abs(normals[ok] @ a) > np.cos(np.deg2rad(20))]
        if len(sel) == 0:
            continue
        sub = mesh.submesh([sel], append=True, repair=False)
        for comp in trimesh.graph.connected_components(sub.face_adjacency, nodes=np.arange(len(sub.faces))):
            if sub.area_faces[comp].sum() < min_area:
                continue
            pts = sub.vertices[np.unique(sub.faces[comp])]
            inward = 1.0 if (room_centre - pts.mean(0)) @ a >= 0 else -1.0
            boxes.append(_box_from_plane(pts, a, inward, thickness))
    return boxes
