"""Marching cubes on the fused volume and per-vertex panoptic labels."""

from __future__ import annotations

import itertools

import numpy as np
from skimage.measure import marching_cubes

from simgen.folders import PanopticMesh
from simgen.recon.fusion.tsdf import VoxelBlockVolume

# Share of an orphan region's vertices that must carry enough class votes for it to found an instance: the
# parts of an object are seen from different keyframes, so only part of it collects every vote (a small,
# glossy ball of realistic two-rooms seed 1: 42 % of its vertices at 3 votes or more, median 1.4).
FOUND_SHARE = 0.25
_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)  # (8, 3)


def _cube_mask(observed: np.ndarray) -> np.ndarray:
    """``(X, Y, Z) bool`` mask for skimage's marching cubes: True where all 8 corners are observed.

    skimage gates the cube spanning ``[i-1, i] x [j-1, j] x [k-1, k]`` by ``mask[i, j, k]`` alone (checked
    empirically with skimage 0.26); requiring every corner avoids the false surface between observed
    negative voxels and never-observed cells.
    """
    X, Y, Z = observed.shape
    core = observed[:-1, :-1, :-1].copy()
    for dx, dy, dz in _CORNERS:
        core &= observed[dx : X - 1 + dx, dy : Y - 1 + dy, dz : Z - 1 + dz]
    m = np.zeros_like(observed)
    m[1:, 1:, 1:] = core
    return m


def extract_mesh(
    vol: VoxelBlockVolume, min_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero level set of the TSDF.

    Returns:
        vertices ``(V, 3) float32`` world metres; faces ``(F, 3) int32`` (counter-clockwise seen from free
        space: normals point out of the surface, towards where the camera was); ``rows`` ``(V,) int64`` the
        storage row of each vertex's nearest voxel; ``corners`` ``(V, 8) int64`` the rows of the 8 corners
        of a cube holding the vertex (-1 where not allocated).
    """
    empty = (
        np.zeros((0, 3), np.float32),
        np.zeros((0, 3), np.int32),
        np.zeros(0, np.int64),
        np.zeros((0, 8)),
    )
    origin, index = vol.dense_index()
    if index.size == 0:
        return empty
    ok = index >= 0
    observed = np.zeros(index.shape, bool)
    observed[ok] = vol.weight[index[ok]] >= min_weight
    tsdf = np.ones(index.shape, np.float32)
    tsdf[ok] = vol.tsdf[index[ok]]
    mask = _cube_mask(observed)
    if not mask.any() or not ((tsdf < 0) & observed).any() or not ((tsdf > 0) & observed).any():
        return empty
    try:
        verts, faces, _, _ = marching_cubes(tsdf, level=0.0, mask=mask, gradient_direction="descent")
    except (RuntimeError, ValueError):  # no crossing inside the masked cubes
        return empty
    hi = np.array(index.shape) - 1
    nearest = np.clip(np.rint(verts).astype(np.int64), 0, hi)
    rows = index[nearest[:, 0], nearest[:, 1], nearest[:, 2]].astype(np.int64)
    cube = np.clip(np.floor(verts).astype(np.int64), 0, hi - 1)
    c = cube[:, None, :] + _CORNERS[None]
    corners = index[c[..., 0], c[..., 1], c[..., 2]].astype(np.int64)
    world = ((verts + origin) * vol.voxel_size).astype(np.float32)
    return world, faces.astype(np.int32), rows, corners


def _edges(faces: np.ndarray) -> np.ndarray:
    """``(6F, 2) int64`` directed mesh edges (src, dst), both directions of every triangle side."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    return np.concatenate([e, e[:, ::-1]])


def propagate_labels(faces: np.ndarray, key: np.ndarray, known: np.ndarray, iterations: int) -> np.ndarray:
    """Fill unknown vertex labels from labelled mesh neighbours (majority vote, ring by ring).

    Pseudo-label masks are shrunk at their borders, so thin parts (legs, poles) are often never labelled;
    their labels come from the surface they are connected to.

    Args:
        faces: ``(F, 3) int`` triangles; key: ``(V,) int64`` label per vertex; known: ``(V,) bool``.
        iterations: rings to grow (each ring is about one voxel).

    Returns:
        ``(V,) bool``, the new ``known`` (``key`` is updated in place).
    """
    known = known.copy()
    edges = _edges(faces)
    for _ in range(iterations):
        e = edges[known[edges[:, 0]] & ~known[edges[:, 1]]]
        if e.size == 0:
            break
        dst, k = e[:, 1], key[e[:, 0]]
        pairs, counts = np.unique(np.stack([dst, k], axis=1), axis=0, return_counts=True)
        order = np.lexsort((-counts, pairs[:, 0]))  # per destination, the most frequent label first
        pairs = pairs[order]
        first = np.ones(len(pairs), bool)
        first[1:] = pairs[1:, 0] != pairs[:-1, 0]
        key[pairs[first, 0]] = pairs[first, 1]
        known[pairs[first, 0]] = True
    return known


def _regions(edges: np.ndarray, mask: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``(V,) int64`` connected region of each masked vertex over edges joining equal keys (-1 unmasked)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(mask)
    e = edges[mask[edges[:, 0]] & mask[edges[:, 1]] & (key[edges[:, 0]] == key[edges[:, 1]])]
    graph = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return np.where(mask, comp, -1).astype(np.int64)


def _most_touched(edges: np.ndarray, region: np.ndarray, inst: np.ndarray) -> dict[int, int]:
    """For each region (``(V,)``, -1 none), the instance (``(V,)``, 0 none) of another region sharing the
    most mesh edges with it."""
    e = edges[
        (region[edges[:, 0]] >= 0) & (inst[edges[:, 1]] > 0) & (region[edges[:, 1]] != region[edges[:, 0]])
    ]
    if not len(e):
        return {}
    pairs, counts = np.unique(np.stack([region[e[:, 0]], inst[e[:, 1]]], 1), axis=0, return_counts=True)
    order = np.lexsort((-counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.ones(len(pairs), bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    return {int(r): int(i) for r, i in pairs[first]}


def settle_instances(
    faces: np.ndarray,
    col: np.ndarray,
    inst: np.ndarray,
    known: np.ndarray,
    orphan: np.ndarray,
    propagate_iterations: int,
    min_instance_vertices: int = 0,
    orphan_instance_vertices: int = 1,
    may_found: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give every thing surface one instance, each instance one piece, unknown vertices their neighbours'.

    Rules, in order (regions are connected over mesh edges):

    1. Thing-class vertices without an instance (``orphan``: a confused class vote on another object, or
       an object whose segments were too small or too few to found an instance): a region of them that
       touches instances joins the one it touches most (a patch of that object); one touching none is
       an object of its own and becomes a new instance from ``orphan_instance_vertices`` vertices when
       ``FOUND_SHARE`` of its vertices may found one (``may_found``: voted for in enough keyframes; a
       detection in one or two keyframes is no object).
    2. Every region of an instance but its largest that touches another instance's largest region joins
       the one it touches most (slivers, step 3, excepted): a segmenter that merged two objects left part
       of the second one with the first's id. Pieces touching no other instance's body (legs, a lamp's
       base on the floor) stay.
    3. An instance with fewer than ``min_instance_vertices`` vertices (it lost its voxels to a neighbour)
       and small orphan regions take their neighbours' labels (:func:`propagate_labels`), as unknown
       vertices do; those no labelled neighbour reaches keep what they had.

    Args:
        faces: ``(F, 3) int`` triangles; col ``(V,) int`` semantic column per vertex; inst ``(V,) int``
            instance id (0 none); known ``(V,) bool`` whether col is set; orphan ``(V,) bool`` known
            thing-class vertices without an instance; may_found ``(V,) bool`` vertices that may found an
            instance (None: all).

    Returns:
        ``col``, ``inst`` (new instances numbered after the largest id) and ``known``, all ``(V,)``.
    """
    col = np.asarray(col, np.int64).copy()
    inst = np.asarray(inst, np.int64).copy()
    edges = _edges(faces)
    doubtful = np.zeros(len(inst), bool)
    # The class of each instance id (every vertex of an instance carries it), with room for new ids.
    inst_col = np.full(int(inst.max()) + 2 + int(orphan.sum()), -1, np.int64)
    inst_col[inst[inst > 0]] = col[inst > 0]

    if orphan.any():
        region = _regions(edges, orphan, col)
        joins = _most_touched(edges, region, inst)
        ids, pos, size = np.unique(region[orphan], return_inverse=True, return_counts=True)
        # Per region: the instance it joins (0 none), then whether it founds one of its own.
        target = np.array([joins.get(r, 0) for r in ids.tolist()], np.int64)
        voted = np.ones(len(ids)) if may_found is None else np.bincount(pos, may_found[orphan]) / size
        founds = (target == 0) & (size >= max(orphan_instance_vertices, 1)) & (voted >= FOUND_SHARE)
        new_id = np.where(founds, int(inst.max()) + np.cumsum(founds), 0)
        first = np.unique(pos, return_index=True)[1]
        inst_col[new_id[founds]] = col[orphan][first][founds]
        joined = np.maximum(target, new_id)[pos]
        idx = np.flatnonzero(orphan)
        inst[idx] = joined
        col[idx] = np.where(joined > 0, inst_col[joined], col[idx])
        doubtful[idx[joined == 0]] = True

    owned = inst > 0
    if owned.any():
        region = _regions(edges, owned, inst)
        ids, first, size = np.unique(region[owned], return_index=True, return_counts=True)
        owner = inst[owned][first]
        # The largest piece of each instance: sort pieces by (instance, size) and take each instance's last.
        order = np.lexsort((size, owner))
        last = np.ones(len(order), bool)
        last[:-1] = owner[order][1:] != owner[order][:-1]
        in_body = np.isin(region, ids[order][last])
        # Only an instance's largest piece can receive: a detached piece of one object (a lamp's shade
        # above an unscanned stem) must not follow a stray of another lying on it.
        joins = _most_touched(edges, np.where(in_body, -1, region), np.where(in_body, inst, 0))
        present, counts = np.unique(inst[owned], return_counts=True)
        sliver = set(present[counts < min_instance_vertices].tolist())
        moves = {r: t for r, t in joins.items() if t not in sliver}  # slivers go in step 3
        if moves:
            piece = np.array(sorted(moves), np.int64)
            dest = np.array([moves[r] for r in piece.tolist()], np.int64)
            at = np.flatnonzero(np.isin(region, piece))
            inst[at] = dest[np.searchsorted(piece, region[at])]
            col[at] = inst_col[inst[at]]

    if min_instance_vertices > 1:
        present, counts = np.unique(inst[inst > 0], return_counts=True)
        doubtful |= np.isin(inst, present[counts < min_instance_vertices])
    if propagate_iterations > 0 and not (known & ~doubtful).all():
        n_inst = int(inst.max()) + 1
        key = col * n_inst + inst
        before = key.copy()
        trusted = propagate_labels(faces, key, known & ~doubtful, propagate_iterations)
        stays = doubtful & ~trusted
        key[stays] = before[stays]
        known = trusted | doubtful
        col, inst = np.divmod(key, n_inst)
    return col, inst, known


def label_vertices(
    vol: VoxelBlockVolume,
    rows: np.ndarray,
    corners: np.ndarray,
    faces: np.ndarray,
    class_ids: np.ndarray,
    thing_columns: np.ndarray,
    instance_class: dict[int, int],
    instance_lut: np.ndarray | None = None,
    propagate_iterations: int = 10,
    min_instance_vertices: int = 0,
    orphan_instance_vertices: int = 1,
    min_votes: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour, semantic category id and instance id per vertex.

    Labels come from the vertex's nearest voxel; a vertex whose nearest voxel holds no label takes the
    summed class weights and the most confident instance vote of its cube's corners; vertices still
    unlabelled take their mesh neighbours' labels (:func:`propagate_labels`).

    Args:
        rows, corners: from :func:`extract_mesh`.
        faces: ``(F, 3)`` triangles (for the propagation).
        class_ids: ``(C,) int`` category id of each semantic column.
        thing_columns: ``(C,) bool`` whether each column is a thing class.
        instance_class: final instance id -> semantic column; instance vertices take their instance's
            class so that semantic and instance labels agree.
        instance_lut: ``(max_id + 1,) int32`` map from voted ids to final ids (drops -> 0).
        propagate_iterations: rings of label propagation (0 disables it).
        min_instance_vertices: an instance with fewer vertices gives them to its neighbours' labels.
        orphan_instance_vertices: a connected thing-class region without an instance, touching none,
            becomes an instance of its own from this many vertices if ``FOUND_SHARE`` of them hold at least
            ``min_votes`` (score-weighted) votes for their class (:func:`settle_instances`).

    Returns:
        colours ``(V, 3) uint8``, semantic ``(V,) int32`` (-1 unknown), instance ``(V,) int32`` (0 none).
    """
    colors = np.clip(np.rint(vol.color[:, rows].T), 0, 255).astype(np.uint8)
    sem_w = vol.semantic[rows].astype(np.float32)
    inst = np.where(vol.instance_conf[rows] > 0, vol.instance[rows], 0)
    conf = vol.instance_conf[rows].copy()
    empty = sem_w.max(axis=1) <= 0
    if empty.any():
        cr = corners[empty]
        valid = cr >= 0
        crc = np.where(valid, cr, 0)
        sem_w[empty] = (vol.semantic[crc].astype(np.float32) * valid[..., None]).sum(axis=1)
        cconf = np.where(valid, vol.instance_conf[crc], 0.0)
        best = np.argmax(cconf, axis=1)
        pick = np.take_along_axis(crc, best[:, None], axis=1)[:, 0]
        has = np.take_along_axis(cconf, best[:, None], axis=1)[:, 0] > 0
        inst[empty] = np.where(has, vol.instance[pick], 0)
        conf[empty] = np.where(has, cconf.max(axis=1), 0.0)
    col = sem_w.argmax(axis=1)
    known = sem_w.max(axis=1) > 0
    # Score-weighted class votes of the vertex's own class: an object must have been voted for in as many
    # keyframes as association asks of an instance (min_frames) to be founded from the mesh.
    votes = sem_w[np.arange(len(col)), col]
    if instance_lut is not None:
        inst = instance_lut[np.clip(inst, 0, len(instance_lut) - 1)]
    # A stuff majority wins over a stale instance vote; an instance otherwise decides the class.
    inst = np.where(known & ~thing_columns[col], 0, inst)
    ids = np.array(sorted(instance_class), dtype=np.int64)
    if ids.size:
        cols = np.array([instance_class[i] for i in ids], dtype=np.int64)
        pos = np.clip(np.searchsorted(ids, inst), 0, len(ids) - 1)
        is_inst = (inst > 0) & (ids[pos] == inst)
        col = np.where(is_inst, cols[pos], col)
        known |= is_inst
        inst = np.where(is_inst, inst, 0)
    else:
        is_inst = np.zeros(len(inst), bool)
        inst = np.zeros_like(inst)
    col, inst, known = settle_instances(
        faces,
        col,
        inst,
        known,
        known & thing_columns[col] & ~is_inst,
        propagate_iterations,
        min_instance_vertices,
        orphan_instance_vertices,
        may_found=votes >= min_votes,
    )
    semantic = np.where(known, class_ids[col], -1).astype(np.int32)
    return colors, semantic, np.where(known, inst, 0).astype(np.int32)


def panoptic_mesh(
    vol: VoxelBlockVolume,
    class_ids: np.ndarray,
    thing_columns: np.ndarray,
    instance_class: dict[int, int],
    instance_lut: np.ndarray | None = None,
    min_weight: float = 1.0,
    propagate_iterations: int = 10,
    min_instance_vertices: int = 0,
    orphan_instance_vertices: int = 1,
    min_votes: float = 0.0,
) -> PanopticMesh:
    """Mesh the volume and label it (see :func:`extract_mesh`, :func:`label_vertices`)."""
    verts, faces, rows, corners = extract_mesh(vol, min_weight)
    if len(verts) == 0:
        z = np.zeros(0, np.int32)
        return PanopticMesh(verts, faces, np.zeros((0, 3), np.uint8), z, z)
    colors, semantic, inst = label_vertices(
        vol,
        rows,
        corners,
        faces,
        class_ids,
        thing_columns,
        instance_class,
        instance_lut,
        propagate_iterations,
        min_instance_vertices,
        orphan_instance_vertices,
        min_votes,
    )
    return PanopticMesh(verts, faces, colors, semantic, inst)
