"""Colliders: CoACD convex decomposition for things, box pieces for floor, walls and other stuff.

Every collider is convex and watertight: CoACD hulls are re-hulled with qhull, and any hull that qhull
cannot build (flat, too few points) is thickened first. "Convex" is this module's own definition in
metres (``convexity_excess`` <= ``CONVEX_TOL_M``), not a mesh library's flag, whose tolerance has
changed between releases (issue #18: trimesh 5 rejected hulls that trimesh 4 accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, QhullError

# A closed piece with at least this fraction of its convex hull's volume is used as its own hull.
CONVEX_RATIO = 0.95

# How deep (m) a collider's surface may lie below the boundary of its own convex hull and still count
# as convex. Colliders are written as STL, which stores float32 coordinates: rounding moves a coordinate
# x by at most half a unit in the last place, 2^-24 * 2^ceil(log2 |x|), i.e. <= 9.5e-7 m for |x| < 16 m
# (a large room in world coordinates; model-frame hulls are far smaller), so a vertex moves by at most
# sqrt(3) * 9.5e-7 = 1.65e-6 m, and the depth of any surface point below the hull of the rounded
# vertices by at most twice that, 3.3e-6 m, for a mesh that was exactly convex before rounding.
# 1e-5 m is three times that bound, and a hundred times below 1 mm: below depth-sensor noise and the
# contact margins of physics engines, so no collider that passes can behave differently from its hull.
CONVEX_TOL_M = 1e-5

# Depths below this (m) are not refined with a linear program: the reported excess is exact to 1 nm.
_DEPTH_RESOLUTION_M = 1e-9


@dataclass
class Box:
    size: np.ndarray  # (3,) float64 full extents (m)
    pose: np.ndarray  # (4, 4) float64, box frame -> part frame


@dataclass
class ColliderResult:
    hulls: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # [(V, 3) float64, (F, 3) int64]
    boxes: list[Box] = field(default_factory=list)
    method: str = ""  # "coacd", "convex-hull" (fallback), "slabs", "boxes"
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    # Things only: the candidates that were built and why this one was kept (fidelity.thing_colliders).
    choice: dict | None = None


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
    # hundreds of sliver facets. Only its vertices are kept: a merged facet's vertices are not coplanar,
    # so qhull's triangulation of it folds (by up to 0.1 mm, issue #18). The hull of the kept
    # vertices is then built again without merging (exact_convex_hull).
    try:
        simple = ConvexHull(pts, qhull_options="QbB Pp Qt C-1e-4")
        pts = pts[np.unique(simple.simplices)]
    except QhullError:
        pass  # exact_convex_hull joggles what qhull cannot build as it is
    return exact_convex_hull(pts)


def exact_convex_hull(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The convex hull of (N, 3) points, exactly as it will be stored: (V, 3) float64, (F, 3) int64.

    The points are rounded to float32 first, the precision of the STL files the hulls are written to, so
    writing them loses nothing and the file holds the convex hull of its own vertices (qhull, no facet
    merging beyond float64 round-off). Faces are wound outward, consistently, every edge in two faces.
    """
    pts = np.unique(np.asarray(points, np.float64).astype(np.float32).astype(np.float64), axis=0)
    try:
        hull = ConvexHull(pts)
        faces = _outward_faces(hull)
    except (QhullError, ValueError):
        # Nearly flat or nearly coincident points: joggling gives a simplicial hull of the same points
        # (moved by about 1e-11 of their extent inside qhull only; the output uses the points as given).
        hull = ConvexHull(pts, qhull_options="QJ")
        faces = _outward_faces(hull)
    used = np.unique(faces)
    remap = np.full(len(pts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return pts[used], remap[faces]


def _outward_faces(hull: ConvexHull) -> np.ndarray:
    """qhull's triangles (F, 3) wound so their normals point out of the hull.

    A triangle's winding follows its facet's outward plane normal (qhull's equations); a triangle of (near)
    zero area, which qhull's triangulation of merged coplanar facets can give, has no reliable normal and
    takes the winding that makes each shared edge run opposite ways in its two triangles.
    """
    f = np.asarray(hull.simplices, np.int64).copy()
    v = hull.points
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    dot = np.einsum("ij,ij->i", cross, hull.equations[:, :3])
    longest = max(float(np.ptp(v, axis=0).max()), 1e-12)
    settled = np.abs(dot) > 1e-12 * longest**2
    f[settled & (dot < 0)] = f[settled & (dot < 0)][:, ::-1]
    for _ in range(len(f)):  # propagate to unsettled triangles through their settled neighbours
        todo = np.flatnonzero(~settled)
        if len(todo) == 0:
            break
        progress = False
        for t in todo:
            for nb in hull.neighbors[t]:
                if not settled[nb]:
                    continue
                a, b, c = f[nb]
                directed = {(a, b), (b, c), (c, a)}
                x, y, z = f[t]
                if {(x, y), (y, z), (z, x)} & directed:  # same direction on the shared edge: flip
                    f[t] = f[t][::-1]
                settled[t] = progress = True
                break
        if not progress:
            raise ValueError("cannot orient the hull's degenerate triangles")
    return f


def is_closed(faces: np.ndarray) -> bool:
    """True when every edge of the triangles (F, 3) lies in exactly two of them, run opposite ways.

    That is: closed (watertight), manifold at every edge and consistently wound. Vertices must already
    be shared (an STL's triangle soup merged on exactly equal coordinates).
    """
    f = np.asarray(faces, np.int64)
    if len(f) < 4:
        return False
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(f.max()) + 1
    key = e[:, 0] * n + e[:, 1]
    return bool(np.unique(key).size == key.size and np.isin(e[:, 1] * n + e[:, 0], key).all())


def convexity_excess(vertices: np.ndarray, faces: np.ndarray) -> float:
    """How far (m) a closed, outward-wound triangle mesh is from convex; 0 for an exactly convex one.

    The larger of: the depth of the deepest point of the mesh's surface below the boundary of the convex
    hull of its vertices (a dent, or a fold of the triangulation), and the volume the mesh lacks against
    that hull divided by the hull's area (a surface that does not wrap the hull once, e.g. inside out).
    Both move by at most about the distance the vertices move, so float32 rounding (see
    ``CONVEX_TOL_M``) cannot make a convex mesh fail. A face's depth is the maximum over the triangle of
    its distance to the nearest hull plane, a concave function: bounded above by the nearest plane that
    all three corners are close to, and solved exactly (a small linear program) only where that bound
    could change the result. Returns inf for a flat mesh or one without faces.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) == 0:
        return float("inf")
    try:
        hull = ConvexHull(v[np.unique(f)])
    except (QhullError, ValueError):
        return float("inf")  # flat or degenerate: no volume at all
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    volume = float(np.einsum("ij,ij->", a, np.cross(b, c))) / 6.0
    excess = max(0.0, (hull.volume - volume) / hull.area)
    planes = np.unique(hull.equations, axis=0)  # n . x + d <= 0 inside, |n| = 1
    upper = np.empty(len(f))
    lower = np.empty(len(f))
    chunk = max(1, 2_000_000 // (3 * len(planes)))  # bounds the (planes, faces, 3) array to ~50 MB
    for s in range(0, len(f), chunk):
        corners = v[f[s : s + chunk]]  # (C, 3, 3)
        depth = -(np.einsum("pk,cjk->pcj", planes[:, :3], corners) + planes[:, 3, None, None])  # (P, C, 3)
        upper[s : s + chunk] = depth.max(2).min(0)  # every corner within this of one plane
        lower[s : s + chunk] = depth.min(0).max(1)  # the deepest corner
    excess = max(excess, float(lower.max()))
    for i in np.argsort(-upper):
        if upper[i] <= max(excess, _DEPTH_RESOLUTION_M):
            break
        excess = max(excess, _face_depth(v[f[i]], planes))
    return excess


def _face_depth(tri: np.ndarray, planes: np.ndarray) -> float:
    """max over the triangle (3, 3) of min over planes (P, 4) of the depth -(n . x + d): a linear program
    in the barycentric weights w and the depth t: maximise t subject to t <= sum_j w_j depth_i(corner_j)."""
    g = -(tri @ planes[:, :3].T + planes[:, 3]).T  # (P, 3) depth of each corner below each plane
    res = linprog(
        c=[0.0, 0.0, 0.0, -1.0],
        A_ub=np.hstack([-g, np.ones((len(g), 1))]),
        b_ub=np.zeros(len(g)),
        A_eq=[[1.0, 1.0, 1.0, 0.0]],
        b_eq=[1.0],
        bounds=[(0, None)] * 3 + [(None, None)],
        method="highs",
    )
    return float(-res.fun) if res.success else float(g.max(1).min())  # failed: the upper bound


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
    vertical_only: bool = False,
    notes: list[str] | None = None,
) -> list[Box]:
    """Box colliders for a stuff part (part frame, z up).

    Written here because a scanned wall or floor is a one-sided open shell: CoACD turns it into flat
    hulls, which physics engines let bodies tunnel through. Instead the faces are grouped by normal
    direction (greedy clustering) and connectivity, and each planar piece becomes a box whose inner face is
    the piece's median plane, ``thickness`` thick on the side away from ``room_centre`` (3,).
    Floor: one box under all the floor faces, top at the floor's median height. ``vertical_only`` (walls):
    a piece whose normal is within 45° of vertical gets no box and a line in ``notes``: a wall is upright,
    so a horizontal "wall" piece is a mislabelled surface (a table top, a sill), and a box there would
    stand inside the thing that really is there.
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
            if vertical_only and abs(a[2]) > np.cos(np.deg2rad(45)):
                if notes is not None:
                    area, z = sub.area_faces[comp].sum(), float(np.median(pts[:, 2]))
                    notes.append(
                        f"a horizontal piece ({area:.2f} m² at z = {z:.2f} m) labelled as wall gets no collider"
                    )
                continue
            inward = 1.0 if (room_centre - pts.mean(0)) @ a >= 0 else -1.0
            boxes.append(_box_from_plane(pts, a, inward, thickness))
    return boxes


# A thing stands on the plane through its colliders' lowest point (z up, model frame). Where the collider
# points within BASE_NOISE_M of that plane already surround the centre of mass with MIN_BASE_MARGIN_M to
# spare, the base is left as scanned; otherwise (a scanned ball touches its support in one point, a box
# whose scanned underside is tilted by noise touches it along one edge) the bottom BASE_DEPTHS_M[k] of the
# colliders is squashed onto the plane, the smallest depth that gives that margin, so that the thing rests
# where it was scanned instead of rolling or tipping by the scan's noise.
BASE_NOISE_M = 0.001
MIN_BASE_MARGIN_M = 0.01
BASE_DEPTHS_M = (0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05)
# ...and never more than this fraction of the thing's height: the band a scan misses under a round thing
# (a ball's underside, hidden from a camera above it), not a cut through a thing's body.
MAX_BASE_FRACTION = 0.2


def hulls_centre_of_mass(hulls: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(3,) centre of mass of convex hulls of uniform density (overlaps counted twice, as in the masses the
    export writes)."""
    masses, centres = [], []
    for v, f in hulls:
        m = trimesh.Trimesh(v, f, process=False)
        masses.append(abs(float(m.volume)))
        centres.append(np.asarray(m.center_mass, np.float64))
    w = np.asarray(masses)
    return (w[:, None] * np.asarray(centres)).sum(0) / max(float(w.sum()), 1e-18)


def _below(v: np.ndarray, f: np.ndarray, z0: float) -> np.ndarray:
    """(K, 3) points of a convex hull at or below the height ``z0``: its vertices there and the crossings
    of its edges with the plane z = z0."""
    edges = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1), axis=0)
    a, b = v[edges[:, 0]], v[edges[:, 1]]
    cross = (a[:, 2] - z0) * (b[:, 2] - z0) < 0
    t = (z0 - a[cross, 2]) / (b[cross, 2] - a[cross, 2])
    return np.concatenate([v[v[:, 2] <= z0], a[cross] + t[:, None] * (b[cross] - a[cross])])


def base_margin(hulls: list[tuple[np.ndarray, np.ndarray]], com: np.ndarray, depth: float) -> float:
    """Distance (m) from the centre of mass ``com`` (3,) to the edge of the support polygon formed by the
    hulls' points within ``depth`` of their lowest point (xy plane); negative when it lies outside."""
    zmin = min(float(v[:, 2].min()) for v, _ in hulls)
    pts = np.concatenate([_below(v, f, zmin + depth) for v, f in hulls])[:, :2]
    try:
        poly = ConvexHull(pts)
    except (QhullError, ValueError):  # a point or a line: no area to stand on
        return -float(np.linalg.norm(pts - com[:2], axis=1).min()) if len(pts) else -np.inf
    return float(-(poly.equations[:, :2] @ com[:2] + poly.equations[:, 2]).max())


def flat_base(
    hulls: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """A thing's convex hulls (model frame, z up, metres) with a flat base on their support plane.

    Returns (hulls, depth m): the hulls unchanged and 0.0 when the base is stable as scanned or no depth
    up to ``MAX_BASE_FRACTION`` of the height makes it stable (the physics checks then pin the thing);
    else every hull reaching below ``lowest + depth`` gets the points it has there (vertices and edge
    crossings at that height) projected onto the plane z = lowest as well, so it keeps all of its volume
    and gains a flat face on the plane: no hull moves up or loses any part, nothing reaches below the
    lowest point, and the contact polygon holds the centre of mass with ``MIN_BASE_MARGIN_M`` to spare.
    """
    if not hulls:
        return hulls, 0.0
    com = hulls_centre_of_mass(hulls)
    if base_margin(hulls, com, BASE_NOISE_M) >= MIN_BASE_MARGIN_M:
        return hulls, 0.0
    zmin = min(float(v[:, 2].min()) for v, _ in hulls)
    height = max(float(v[:, 2].max()) for v, _ in hulls) - zmin
    for depth in BASE_DEPTHS_M:
        if depth > MAX_BASE_FRACTION * height:
            break
        if base_margin(hulls, com, depth) < MIN_BASE_MARGIN_M:
            continue
        out = []
        for v, f in hulls:
            low = _below(v, f, zmin + depth)
            if len(low) == 0:
                out.append((v, f))
                continue
            flat = np.column_stack([low[:, :2], np.full(len(low), zmin)])
            out.append(exact_convex_hull(np.concatenate([v, flat])))
        return out, depth
    return hulls, 0.0
