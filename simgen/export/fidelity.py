"""How well a thing's colliders follow its visual surface, and a legs-aware decomposition for furniture.

Figures (per thing, ``export.json`` and ``simgen check``):

- ``volume_error``: |sum of hull volumes - reference volume| / reference volume (:func:`reference_volume`:
  the mesh's volume when it is watertight, else what the visual surface (a thing with leg space) or the
  hole-filled mesh (a compact thing) encloses by the generalised winding number);
- ``collider_p95_cm``: 95th percentile of the one-sided distance from the colliders' outer surface to the
  visual surface (cm). An overfull hull (one bridging a chair's legs) has surface far from any visual
  surface; a tight one stays within the scan's noise.

Decomposition (:func:`slab_hulls`): furniture is made of vertical members (legs, sides) under and above
horizontal plates (seat, table top, shelves). The solid is voxelised, cut into horizontal slabs wherever
the layer's footprint changes (component count or overlap with the layer below), and every connected piece
of a slab becomes one convex hull of the visual surface points inside it. A chair comes out as 4 leg hulls,
a seat hull and a backrest hull instead of hulls that span the gaps between the legs. Written here
because CoACD's concavity search does not know about gravity-aligned legs: at the default budget it keeps
bridging them (bench/bench_export.py measures both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import ConvexHull, cKDTree

if TYPE_CHECKING:
    from simgen.export.colliders import ColliderResult

# Voxels per longest side of a thing for the slab split (clamped to MIN_PITCH..MAX_PITCH metres).
VOXELS_PER_SIDE = 48
MIN_PITCH, MAX_PITCH = 0.01, 0.04
# A layer starts a new slab when under this fraction of it overlaps the slab's previous layer footprint.
SLAB_OVERLAP = 0.6


def surface_points(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n + V, 3) points on a mesh: ``n`` area-uniform samples plus its vertices."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if len(faces) == 0 or not mesh.area > 0:
        return np.asarray(vertices, np.float64)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.concatenate([np.asarray(pts, np.float64), np.asarray(vertices, np.float64)])


def _hull_planes(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals (F, 3) and offsets (F,) of a convex hull's faces."""
    m = trimesh.Trimesh(v, f, process=False)
    n = np.asarray(m.face_normals)
    if float(m.volume) < 0:
        n = -n
    return n, np.einsum("ij,ij->i", n, v[f[:, 0]])


def collider_surface_points(
    hulls: list[tuple[np.ndarray, np.ndarray]], n: int = 20_000, seed: int = 0
) -> np.ndarray:
    """(M, 3) area-uniform samples of the union's outer surface: hull surface points inside no other hull."""
    if not hulls:
        return np.zeros((0, 3))
    areas = np.array([trimesh.Trimesh(v, f, process=False).area for v, f in hulls])
    counts = np.maximum(np.round(n * areas / max(areas.sum(), 1e-12)).astype(int), 1)
    planes = [_hull_planes(v, f) for v, f in hulls]
    out = []
    for k, ((v, f), c) in enumerate(zip(hulls, counts, strict=True)):
        pts, _ = trimesh.sample.sample_surface(trimesh.Trimesh(v, f, process=False), int(c), seed=seed + k)
        keep = np.ones(len(pts), bool)
        for j, (nrm, off) in enumerate(planes):
            if j != k:  # strictly inside another hull (1 mm margin): not on the union's surface
                keep &= ~((pts @ nrm.T) < off - 1e-3).all(1)
        out.append(np.asarray(pts)[keep])
    return np.concatenate(out)


def collider_distance_p95(
    hulls: list[tuple[np.ndarray, np.ndarray]],
    visual_v: np.ndarray,
    visual_f: np.ndarray,
    samples: int = 20_000,
    seed: int = 0,
) -> float | None:
    """95th percentile (m) of the distance from the colliders' outer surface to the visual surface.

    The visual surface is represented by 5x ``samples`` points plus its vertices; the distance to the
    nearest one over-estimates the true point-to-surface distance by at most about half the sample
    spacing (under 2 mm for a 1 m^2 object). Points in the same frame as the hulls (the model frame).
    """
    col = collider_surface_points(hulls, samples, seed)
    if len(col) == 0 or len(visual_f) == 0:
        return None
    vis = surface_points(visual_v, visual_f, 5 * samples, seed)
    d, _ = cKDTree(vis).query(col, workers=1)
    return float(np.percentile(d, 95))


def _solid_grid(
    points: np.ndarray, pitch: float, vertices: np.ndarray | None, faces: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel solid of one thing: (X, Y, Z) bool grid, (N, 3) grid index of each point, and the (3,) position
    (m, same frame as the points) of voxel (0, 0, 0)'s centre; voxel (i, j, k) is centred at that + pitch * ijk.

    The surface is voxelised from the mesh (``vertices``, ``faces``; trimesh subdivides it until every edge
    is shorter than a voxel, so the shell has no gaps), closed by one voxel and filled. Without a mesh the
    points themselves are voxelised.
    """
    if vertices is not None and faces is not None and len(faces):
        vox = trimesh.voxel.creation.voxelize_subdivide(
            trimesh.Trimesh(vertices, faces, process=False), pitch, max_iter=12
        )
        grid = np.pad(np.asarray(vox.matrix, bool), 2)
        idx = np.clip(np.asarray(vox.points_to_indices(points)) + 2, 0, np.array(grid.shape) - 1)
        grid[tuple(idx.T)] = True
        corner = np.asarray(vox.indices_to_points(np.zeros((1, 3), int)), np.float64).reshape(3) - 2 * pitch
    else:
        lo = points.min(0) - 2 * pitch
        idx = np.floor((points - lo) / pitch).astype(int)
        grid = np.zeros(idx.max(0) + 3, bool)
        grid[tuple(idx.T)] = True
        corner = lo + pitch / 2
    shell = ndimage.binary_closing(grid, iterations=1) | grid
    # Scans are open where a thing stands on the floor (and often on top): cap the lowest and highest
    # occupied layers with their filled outline so the 3D fill sees a closed shell.
    layers = np.flatnonzero(shell.any((0, 1)))
    for z in layers[[0, -1]] if len(layers) else []:
        shell[:, :, z] |= ndimage.binary_fill_holes(ndimage.binary_closing(shell[:, :, z], iterations=1))
    return ndimage.binary_fill_holes(shell), idx, corner


def slab_pieces(
    points: np.ndarray, pitch: float, vertices: np.ndarray | None = None, faces: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split surface points (N, 3) of one thing (z up) into slab pieces; returns index arrays into points.

    The surface is voxelised from the mesh (``vertices``, ``faces``; trimesh subdivides it until every edge
    is shorter than a voxel, so the shell has no gaps), closed by one voxel and filled, so a piece is a
    solid member, not its skin. Without a mesh the points themselves are voxelised.
    """
    solid, idx, _ = _solid_grid(points, pitch, vertices, faces)
    nz = solid.shape[2]
    eight = np.ones((3, 3), bool)
    slab_of_layer = np.zeros(nz, int)
    slab, prev, prev_count = 0, None, -1
    for z in range(nz):
        layer = solid[:, :, z]
        if not layer.any():
            slab_of_layer[z] = slab
            continue
        lab, count = ndimage.label(layer, eight)
        count = int((np.bincount(lab.ravel())[1:] >= 2).sum())  # single-voxel specks are noise
        if prev is not None:
            overlap = (layer & prev).sum() / max(min(layer.sum(), prev.sum()), 1)
            grown = layer.sum() > 1.6 * prev.sum() or prev.sum() > 1.6 * layer.sum()
            if count != prev_count or overlap < SLAB_OVERLAP or grown:
                slab += 1
        slab_of_layer[z] = slab
        prev, prev_count = layer, count
    labels = np.zeros(solid.shape, int)
    n_total = 0
    for s in range(slab + 1):
        zs = np.flatnonzero(slab_of_layer == s)
        if len(zs) == 0:
            continue
        sub = np.zeros_like(solid)
        sub[:, :, zs] = solid[:, :, zs]
        lab, n = ndimage.label(sub, np.ones((3, 3, 3), bool))
        labels[lab > 0] = lab[lab > 0] + n_total
        n_total += n
    point_label = labels[tuple(idx.T)]
    pieces = [
        np.flatnonzero(point_label == k) for k in range(1, n_total + 1) if (point_label == k).sum() >= 4
    ]
    volume = np.bincount(labels.ravel(), minlength=n_total + 1) * pitch**3
    out: list[np.ndarray] = []
    for piece in pieces:
        out += _refine(points, piece, float(volume[point_label[piece[0]]]), pitch)
    return out


# Free space between the separate members of one horizontal layer (a table's or chair's leg space) counts
# only this far (m) from every member: narrower gaps (between a plant's leaves, a chair's slats) are left
# to the decomposition, wider ones are space a robot or another object could use.
GAP_CLEARANCE_M = 0.05


def leg_space(
    vertices: np.ndarray, faces: np.ndarray, samples: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Centres (M, 3) of the voxels of free space between a thing's separate members, and one voxel's volume (m^3).

    Per horizontal layer of the voxel solid (:func:`_solid_grid`) with two or more members (connected
    pieces of at least 2 voxels), the empty voxels inside the layer's 2D convex hull and at least
    ``GAP_CLEARANCE_M`` from every member. A single solid (a box, a ball, a lamp) has none, whatever holes
    its scan has, so only space the scan shows between members counts. Model frame, z up.
    """
    pts = surface_points(vertices, faces, samples, seed)
    pitch = float(np.clip(np.ptp(pts, axis=0).max() / VOXELS_PER_SIDE, MIN_PITCH, MAX_PITCH))
    solid, _, corner = _solid_grid(pts, pitch, vertices, faces)
    eight = np.ones((3, 3), bool)
    out = []
    for z in range(solid.shape[2]):
        layer = solid[:, :, z]
        lab, _ = ndimage.label(layer, eight)
        if int((np.bincount(lab.ravel())[1:] >= 2).sum()) < 2:
            continue
        cells = np.argwhere(layer).astype(np.float64)
        try:
            hull = ConvexHull(cells)
        except Exception:  # collinear members: no area between them
            continue
        ij = np.argwhere(~layer).astype(np.float64)
        inside = (ij @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(1)
        clear = ndimage.distance_transform_edt(~layer)[tuple(ij.astype(int).T)] * pitch >= GAP_CLEARANCE_M
        keep = ij[inside & clear]
        out.append(np.column_stack([keep, np.full(len(keep), z)]))
    cells = np.concatenate(out) if out else np.zeros((0, 3))
    return corner + pitch * cells, pitch**3


def bridged_volume(hulls: list[tuple[np.ndarray, np.ndarray]], gap: np.ndarray, cell: float) -> float:
    """Volume (m^3) of the free-space voxels ``gap`` (M, 3) (centres, from :func:`leg_space`) inside any hull."""
    if len(gap) == 0 or not hulls:
        return 0.0
    inside = np.zeros(len(gap), bool)
    for v, f in hulls:
        n, off = _hull_planes(np.asarray(v, np.float64), np.asarray(f, np.int64))
        inside |= (gap @ n.T <= off + 1e-9).all(1)
    return float(inside.sum() * cell)


# The split is kept only when its hulls' total volume is under this fraction of the whole thing's hull.
WORTH_SPLIT = 0.7
# A piece whose hull exceeds its voxel volume by this factor is split further (a curved or slanted member).
OVERFULL = 1.15
MAX_DEPTH = 4


def _refine(
    points: np.ndarray, piece: np.ndarray, solid: float, pitch: float, depth: int = 0
) -> list[np.ndarray]:
    """Bisect a slab piece (indices into points (N, 3)) across its longest principal axis while its convex
    hull is more than OVERFULL x its solid voxel volume ``solid`` (m^3)."""
    p = points[piece]
    _, hull = _hull_vertices(p)
    centred = p - p.mean(0)
    axes = np.linalg.svd(centred, full_matrices=False)[2]
    proj = centred @ axes[0]
    if depth >= MAX_DEPTH or hull <= OVERFULL * solid or np.ptp(proj) < 4 * pitch:
        return [piece]
    cut = np.median(proj)
    halves = [piece[proj <= cut], piece[proj > cut]]
    if min(len(h) for h in halves) < 4:
        return [piece]
    out = []
    for h in halves:
        out += _refine(points, h, solid * len(h) / len(piece), pitch, depth + 1)
    return out


def _hull_vertices(p: np.ndarray) -> tuple[np.ndarray, float]:
    """(K, 3) convex hull vertices of points and the hull's volume (m^3); degenerate sets keep their points."""
    # scipy's qhull directly: trimesh's convex_hull also repairs normals, 30x slower in this hot loop.
    try:
        h = ConvexHull(p)
        return p[h.vertices], float(h.volume)
    except Exception:  # flat or too few points
        return p, 0.0


def slab_hulls(
    vertices: np.ndarray,
    faces: np.ndarray,
    max_hulls: int,
    seed: int = 0,
    samples: int = 20_000,
) -> list[np.ndarray]:
    """Point sets (one per convex hull) of the legs-aware split of one thing (model frame, z up).

    Pieces beyond ``max_hulls`` are merged greedily, cheapest added volume first. Returns [] when the
    split finds a single piece (the caller's convex decomposition then decides).
    """
    pts = surface_points(vertices, faces, samples, seed)
    ext = np.ptp(pts, axis=0)
    pitch = float(np.clip(ext.max() / VOXELS_PER_SIDE, MIN_PITCH, MAX_PITCH))
    groups = [pts[i] for i in slab_pieces(pts, pitch, vertices, faces)]
    groups = [g for g in groups if len(g) >= 4]
    if len(groups) <= 1:
        return []
    # Greedy merging on hull vertices only (the hull of a union is the hull of the hulls' vertices): the
    # pair whose merged hull adds the least volume goes first; costs are cached and only the merged
    # group's pairs are recomputed.
    verts, vols = zip(*(_hull_vertices(g) for g in groups), strict=True)
    verts, vols = list(verts), list(vols)
    cost: dict[tuple[int, int], float] = {}

    def pair_cost(i: int, j: int) -> float:
        gap = np.maximum(0, np.maximum(verts[i].min(0) - verts[j].max(0), verts[j].min(0) - verts[i].max(0)))
        _, v = _hull_vertices(np.concatenate([verts[i], verts[j]]))
        return v - vols[i] - vols[j] + float(np.linalg.norm(gap)) ** 3  # far pieces: merged last

    alive = set(range(len(groups)))
    for i in alive:
        for j in alive:
            if i < j:
                cost[(i, j)] = pair_cost(i, j)
    while len(alive) > max(max_hulls, 1):
        i, j = min(cost, key=cost.get)
        groups[i] = np.concatenate([groups[i], groups[j]])
        verts[i], vols[i] = _hull_vertices(np.concatenate([verts[i], verts[j]]))
        alive.discard(j)
        cost = {k: c for k, c in cost.items() if j not in k and i not in k}
        for k in alive:
            if k != i:
                cost[(min(i, k), max(i, k))] = pair_cost(min(i, k), max(i, k))
    groups = [groups[k] for k in sorted(alive)]
    # Worth it only when the pieces' hulls leave out a real part of the whole's hull (a chair's leg space);
    # a nearly convex thing (a box, a ball) goes to the convex decomposition instead.
    _, whole = _hull_vertices(pts)
    if sum(_hull_vertices(g)[1] for g in groups) > WORTH_SPLIT * whole:
        return []
    return groups if len(groups) > 1 else []


def _convex_as_stl(v: np.ndarray, f: np.ndarray) -> bool:
    """Whether a hull is still convex and watertight to trimesh once written as (float32) STL."""
    data = trimesh.Trimesh(v, f, process=False).export(file_type="stl")
    m = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="stl", force="mesh", process=True)
    return bool(m.is_watertight and m.is_convex)


def _support_directions(n: int = 64) -> np.ndarray:
    """(n + 26, 3) unit directions: a Fibonacci sphere plus the 26 axis / edge / corner directions."""
    i = np.arange(n) + 0.5
    phi, th = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    fib = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)
    ax = np.array(
        [[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
    )
    return np.concatenate([fib, ax / np.linalg.norm(ax, axis=1, keepdims=True)])


def piece_hull(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull (V, 3), (F, 3) of one slab piece's points that stays convex once written as STL.

    Tried in order until one passes that test: qhull's default options on the points (colliders'
    robust_convex_hull pre-merges facets with C-1e-4, which leaves folds over trimesh's is_convex tolerance
    on the many coplanar points of a leg's flat sides); robust_convex_hull; the hull of the points' support
    points in 90 directions (a slightly smaller polytope with few, well separated vertices). Flat or
    degenerate sets go through robust_convex_hull, which thickens them.
    """
    from simgen.export.colliders import robust_convex_hull

    pts = np.asarray(points, np.float64)
    tries = []
    try:
        h = trimesh.convex.convex_hull(pts)
        if h.is_watertight and h.volume > 1e-9 and min(np.ptp(h.vertices, axis=0)) > 2e-3:
            tries.append((np.asarray(h.vertices, np.float64), np.asarray(h.faces, np.int64)))
    except Exception:
        pass
    tries.append(robust_convex_hull(pts))
    for v, f in tries:
        if _convex_as_stl(v, f):
            return v, f
    support = pts[np.unique((pts @ _support_directions().T).argmax(0))]
    v, f = robust_convex_hull(support)
    if _convex_as_stl(v, f):
        return v, f
    return tries[0]


# A candidate collider that fills more than this fraction of its volume with leg space (``leg_space``)
# bridges members a robot or another object could pass between, and is dropped for one that does not...
MAX_BRIDGED_FRACTION = 0.1
# ...on a thing whose leg space is at least this fraction of its bounding box (tables, chairs, shelves).
# Below it the "leg space" is the inside of a scan whose voxel fill failed (an open ball or box), which a
# collider should fill.
MIN_LEG_SPACE_FRACTION = 0.1
# The slab split is tried before the convex decomposition; it is kept without running CoACD when its hulls
# hold at least this fraction of a closed thing's volume (below it they are the thing's skin: the voxel
# fill failed on an open scan).
SLAB_MIN_FILL = 0.5


# Cell edge (m) of the winding-number reference: a chair's 4 cm legs span four cells. A large thing's grid is
# coarsened to at most WINDING_MAX_CELLS query points.
WINDING_PITCH = 0.01
WINDING_MAX_CELLS = 2_000_000


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Exact generalised winding number (P,) of a triangle soup (V, 3) / (F, 3) at points (P, 3), one frame.

    The sum over triangles of their signed solid angle seen from each point (Van Oosterom and Strackee's
    formula) over 4 pi: 1 inside a closed outward-wound surface, 0 outside, in between near holes. Pure
    numpy, O(P F): the reference :func:`winding_volume`'s fast (libigl) numbers are tested against.
    """
    tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]
    q = np.asarray(points, np.float64)
    out = np.zeros(len(q))
    step = max(1, 2_000_000 // max(len(tri), 1))
    for s in range(0, len(q), step):
        a, b, c = (tri[None, :, k, :] - q[s : s + step, None, :] for k in range(3))
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = (
            la * lb * lc
            + np.einsum("pfi,pfi->pf", a, b) * lc
            + np.einsum("pfi,pfi->pf", b, c) * la
            + np.einsum("pfi,pfi->pf", c, a) * lb
        )
        out[s : s + step] = (2.0 * np.arctan2(det, den)).sum(1) / (4.0 * np.pi)
    return out


def winding_volume(vertices: np.ndarray, faces: np.ndarray, pitch: float = WINDING_PITCH) -> float:
    """Volume (m^3) a surface (V, 3) / (F, 3) encloses, in metres: the cells of a ``pitch`` grid over its
    bounding box whose generalised winding number is at least 1/2 in magnitude.

    The winding number (:func:`winding_numbers`) degrades gracefully where a scan is open (an unseen
    underside, a hole): points inside still see most of the surface around them, so they stay over 1/2,
    while a hole-filling cap or a hull would close the opening with volume the object does not have (the
    space between a chair's legs). Orientation does not matter and overlapping pieces count once. The
    numbers come from libigl's fast winding number (Barill et al. 2018, a tree of dipole expansions: under a
    second per chair at 1 cm), which agrees with the exact formula to a few thousandths away from the surface.
    """
    import igl

    v = np.ascontiguousarray(vertices, np.float64)
    f = np.ascontiguousarray(faces, np.int64)
    if len(f) == 0 or len(v) == 0:
        return 0.0
    lo, hi = v.min(0), v.max(0)
    ext = np.maximum(hi - lo, 1e-9)
    pitch = max(float(pitch), float(np.prod(ext) / WINDING_MAX_CELLS) ** (1.0 / 3.0))
    axes = [lo[k] + pitch * (np.arange(max(int(np.ceil(ext[k] / pitch)), 1)) + 0.5) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    w = np.asarray(igl.fast_winding_number(v, f, grid))
    return float((np.abs(w) >= 0.5).sum()) * pitch**3


def reference_volume(
    vis_v: np.ndarray, vis_f: np.ndarray, col_v: np.ndarray, col_f: np.ndarray, members: bool
) -> tuple[float, str]:
    """The volume (m^3) a thing's colliders are measured against, and what gave it (model frame, metres).

    The visual mesh (V, 3) / (F, 3) when it is watertight ("mesh", its signed volume). Else what a surface
    encloses by the winding number (:func:`winding_volume`): on a thing with separate ``members`` (leg
    space, :func:`leg_space`: a chair, a table) the visual surface's ("winding number (visual mesh)"),
    since hole filling spans the openings between the members with volume the thing does not have; on a
    compact thing (a box, a ball, a plant) the hole-filled collider input col_v / col_f's ("winding number
    (hole-filled mesh)"), since its scan is open where the camera never looked (its back, its underside)
    and filling those holes restores it. Where that is empty (a flat scrap of surface), the visual mesh's
    convex hull ("convex hull").
    """
    mesh = trimesh.Trimesh(vis_v, vis_f, process=False)
    if mesh.is_watertight and mesh.volume > 1e-9:
        return float(mesh.volume), "mesh"
    if members:
        enclosed, kind = winding_volume(vis_v, vis_f), "winding number (visual mesh)"
    else:
        enclosed, kind = winding_volume(col_v, col_f), "winding number (hole-filled mesh)"
    if enclosed > 0:
        return enclosed, kind
    try:
        return float(trimesh.convex.convex_hull(vis_v).volume), "convex hull"
    except Exception:
        from simgen.export.colliders import hull_volume, robust_convex_hull

        return hull_volume(*robust_convex_hull(vis_v)), "convex hull"


def thing_colliders(
    name: str,
    vis_v: np.ndarray,
    vis_f: np.ndarray,
    col_v: np.ndarray,
    col_f: np.ndarray,
    method: str,
    max_hulls: int,
    seed: int,
    coacd: dict,
) -> ColliderResult:
    """Colliders of one thing (model frame, z up): the legs-aware slab split, CoACD, or its fallback.

    With ``method`` "auto" the slab split (:func:`slab_hulls`) is built first; CoACD
    (colliders.decompose_thing, keyword arguments ``coacd``: threshold, resolution, preprocess_resolution,
    iterations) runs only when the split found no separate members or its hulls hold under
    ``SLAB_MIN_FILL`` of the closed collider mesh's volume. Of the candidates built, one that bridges leg
    space (more than ``MAX_BRIDGED_FRACTION`` of its volume in :func:`leg_space`, on a thing with at least
    ``MIN_LEG_SPACE_FRACTION`` of its bounding box in leg space; CoACD following a hole-filling cap under a
    table top) is dropped when another one does not. Of the rest, on a thing with leg space the one whose
    outer surface stays closest to the visual surface (:func:`collider_distance_p95`; the closed mesh
    there counts hole-filling caps between the members), elsewhere the one
    nearest the reference volume (:func:`reference_volume`) is kept. ``method`` "coacd" builds CoACD only.

    Args: visual mesh vis_v (V, 3) / vis_f (F, 3) and the decimated, hole-filled collider input col_v /
    col_f, both in metres. Returns a colliders.ColliderResult whose ``choice`` records every candidate's
    volume (m^3), volume error, bridged fraction, p95 distance (cm; only on a thing with leg space) and
    seconds, the reason for the pick, and the ``reference`` volume (``reference_m3``) the errors are
    against (export.json ``collider_choice``).
    """
    import time

    from simgen.export import colliders

    t0 = time.perf_counter()
    gap, cell = leg_space(vis_v, vis_f, seed=seed)
    if len(gap) * cell < MIN_LEG_SPACE_FRACTION * float(np.prod(np.ptp(vis_v, axis=0))):
        gap = np.zeros((0, 3))
    ref, ref_kind = reference_volume(vis_v, vis_f, col_v, col_f, members=len(gap) > 0)
    built: list[colliders.ColliderResult] = []
    if method == "auto":
        t = time.perf_counter()
        slab = [piece_hull(g) for g in slab_hulls(vis_v, vis_f, max_hulls, seed=seed)]
        if slab:
            built.append(
                colliders.ColliderResult(hulls=slab, method="slabs", seconds=time.perf_counter() - t)
            )
    closed = trimesh.Trimesh(col_v, col_f, process=False)
    skin = bool(
        built
        and closed.is_watertight
        and closed.volume > 1e-9
        and sum(colliders.hull_volume(*h) for h in built[0].hulls) < SLAB_MIN_FILL * float(closed.volume)
    )
    if not built or skin:
        built.append(
            colliders.decompose_thing(
                name,
                col_v,
                col_f,
                coacd["threshold"],
                max_hulls,
                coacd["resolution"],
                seed,
                coacd["preprocess_resolution"],
                coacd["iterations"],
            )
        )
    rows = []
    for c in built:
        volume = sum(colliders.hull_volume(*h) for h in c.hulls)
        # The distance figure only where it decides (a thing with leg space): elsewhere a decomposition
        # of an open scan's hole-filled mesh stands far out of the visual surface by design (the unseen
        # back and bottom of a box), so it cannot rank the candidates there.
        p95 = collider_distance_p95(c.hulls, vis_v, vis_f, seed=seed) if len(gap) else None
        rows.append(
            {
                "method": c.method,
                "hulls": len(c.hulls),
                "volume_m3": round(volume, 6),
                "volume_error": None if not ref else round(abs(volume - ref) / ref, 4),
                "bridged_fraction": round(bridged_volume(c.hulls, gap, cell) / volume, 4)
                if volume > 0
                else 0.0,
                "p95_cm": None if p95 is None else round(100 * p95, 2),
                "seconds": round(c.seconds, 2),
            }
        )
    keep = [k for k, r in enumerate(rows) if r["bridged_fraction"] <= MAX_BRIDGED_FRACTION] or [
        min(range(len(rows)), key=lambda k: rows[k]["bridged_fraction"])
    ]
    if len(gap) and len(keep) > 1:
        # Separate members with space between them: the closed mesh's volume counts whatever hole filling
        # spanned between the members (a cap under a seat), so it cannot tell the slab split's members
        # from an open scan's skin, and nearness to it favours the decomposition that follows the cap.
        # The candidate whose surface stays closest to the visual surface is kept, the smaller on a tie.
        # A candidate without the figure (no surface left to sample) ranks last.
        best = min(
            keep, key=lambda k: (rows[k]["p95_cm"] is None, rows[k]["p95_cm"] or 0.0, rows[k]["volume_m3"])
        )
    else:
        best = min(keep, key=lambda k: (rows[k]["volume_error"] is None, rows[k]["volume_error"] or 0.0))
    if len(rows) == 1:
        reason = "the only candidate" if method == "coacd" else "slab split kept: separate members found"
        if rows[0]["method"] != "slabs" and method == "auto":
            reason = "the slab split found no separate members"
    elif len(keep) < len(rows):
        dropped = [rows[k]["method"] for k in range(len(rows)) if k not in keep]
        reason = (
            f"{', '.join(dropped)} bridged leg space (> {100 * MAX_BRIDGED_FRACTION:.0f} % of its volume)"
        )
    elif len(gap):
        others = ", ".join(f"{rows[k]['method']} {rows[k]['p95_cm']} cm" for k in keep if k != best)
        p95 = rows[best]["p95_cm"]
        reason = f"closest to the visual surface on a thing with leg space (p95 {p95} cm; {others})"
    else:
        reason = "nearest the reference volume (slab hulls held under half the closed mesh's volume)"
    res = built[best]
    if res.method == "slabs" and len(built) > 1:
        res.warnings.append(f"{name}: {rows[1]['method']} collider dropped ({reason}); using the slab split")
    res.choice = {
        "chosen": res.method,
        "reason": reason,
        "candidates": rows,
        "reference": ref_kind,
        "reference_m3": round(ref, 6),
    }
    res.seconds = time.perf_counter() - t0
    return res
