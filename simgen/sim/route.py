"""The default route of ``simgen drive``: a loop through the free floor that passes every object.

With no ``--waypoints`` the robot should still see the scene, so the route is planned on the export:

1. **Occupancy** (:func:`route_grid`): the floor of the panoptic mesh on a 5 cm grid
   (:func:`simgen.sim.world.floor_grid`: floor samples mark floor, samples up to the robot's height mark
   obstacles) minus the cross-sections of the MuJoCo colliders with the slab the robot's body sweeps
   (:func:`collider_sections`; these are the hulls the robot actually collides with, and a CoACD hull is
   larger than the surface it wraps).
2. **Inflation**: a cell is traversable when the Euclidean distance transform puts it at least
   ``radius`` (footprint radius + clearance) from every blocked or off-floor cell; only the connected
   part that holds the start counts.
3. **Goals**: for each thing instance, the traversable cell nearest its centroid (goals within 0.6 m of
   each other or of the start merge); with fewer than three, the component's extreme cells in 8 directions.
4. **Tour**: geodesic distances between start and goals (:class:`skimage.graph.MCP_Geometric`, cost
   rising near obstacles so paths keep to the middle of free space), nearest-neighbour order improved by
   2-opt, closed back to the start.
5. **Waypoints**: each leg's grid path shortened to the corners its straight segments need, every
   segment checked cell by cell to stay inside the traversable set.

All coordinates are metres in the export's world frame (z up, floor at ``floor_z``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from simgen.folders import PanopticMesh
from simgen.sim.world import FOOTPRINT_RADIUS, floor_grid

MERGE_DISTANCE = 0.6  # m: goals closer than this are one stop


class RouteError(ValueError):
    """No route can be planned; the message says why and what to pass instead."""


@dataclass
class RouteGrid:
    """Traversable floor cells for a robot of footprint radius ``radius``.

    ``free (I, J) bool``: floor and not blocked; ``clearance (I, J)`` (m): distance of each cell centre to
    the nearest blocked or off-floor cell; cell ``(i, j)`` is centred at ``lo + (i + 0.5, j + 0.5) * cell``.
    """

    free: np.ndarray
    clearance: np.ndarray
    lo: np.ndarray
    cell: float
    radius: float

    @property
    def traversable(self) -> np.ndarray:
        return self.clearance >= self.radius

    def to_cell(self, xy) -> tuple[int, int]:
        i, j = np.floor((np.asarray(xy, np.float64) - self.lo) / self.cell).astype(int)
        return int(i), int(j)

    def to_xy(self, ij) -> np.ndarray:
        return (np.asarray(ij, np.float64) + 0.5) * self.cell + self.lo

    def inside(self, ij) -> bool:
        return 0 <= ij[0] < self.free.shape[0] and 0 <= ij[1] < self.free.shape[1]

    def segment_clear(self, a, b) -> bool:
        """True when every cell the straight segment ``a -> b`` (world xy, m) crosses is traversable."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        n = max(2, int(math.ceil(np.linalg.norm(b - a) / (self.cell / 4))) + 1)
        pts = a + np.linspace(0, 1, n)[:, None] * (b - a)
        ij = np.floor((pts - self.lo) / self.cell).astype(int)
        shape = np.array(self.free.shape)
        if (ij < 0).any() or (ij >= shape).any():
            return False
        return bool(self.traversable[ij[:, 0], ij[:, 1]].all())


# -- occupancy ----------------------------------------------------------------------------------------------


def geom_points(model, data, g: int) -> np.ndarray | None:
    """World points whose convex hull contains collision geom ``g`` (``(P, 3)``, m), or None for planes,
    height fields and SDF geoms (no finite hull). Meshes give their vertices (MuJoCo collides with their
    convex hull); primitives give the corners of their bounding box (conservative for round shapes)."""
    import mujoco

    t = int(model.geom_type[g])
    s = np.asarray(model.geom_size[g], np.float64)
    G = mujoco.mjtGeom
    if t == G.mjGEOM_MESH:
        m = int(model.geom_dataid[g])
        adr, n = int(model.mesh_vertadr[m]), int(model.mesh_vertnum[m])
        local = np.asarray(model.mesh_vert[adr : adr + n], np.float64)
    else:
        half = {
            G.mjGEOM_BOX: s,
            G.mjGEOM_ELLIPSOID: s,
            G.mjGEOM_SPHERE: np.array([s[0]] * 3),
            G.mjGEOM_CYLINDER: np.array([s[0], s[0], s[1]]),
            G.mjGEOM_CAPSULE: np.array([s[0], s[0], s[1] + s[0]]),
        }.get(t)
        if half is None:
            return None
        local = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64) * half
    R = np.asarray(data.geom_xmat[g], np.float64).reshape(3, 3)
    return local @ R.T + np.asarray(data.geom_xpos[g], np.float64)


def slab_section(points: np.ndarray, z_lo: float, z_hi: float) -> np.ndarray:
    """xy points whose convex hull is the xy projection of ``hull(points) ∩ {z_lo <= z <= z_hi}``.

    Args:
        points: ``(P, 3)`` (m).
    Returns:
        ``(K, 2)`` (m); empty when the hull misses the slab.
    """
    pts = np.asarray(points, np.float64)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # flat or tiny point sets: all of them are the hull's candidates
        pass
    z = pts[:, 2]
    out = [pts[(z >= z_lo) & (z <= z_hi), :2]]
    # The slab's boundary planes cut the hull's edges; any segment between two hull points lies in the
    # hull, so the cuts of all straddling pairs span the cross-section exactly.
    for z0 in (z_lo, z_hi):
        below, above = pts[z < z0], pts[z > z0]
        if len(below) and len(above):
            a, b = below[:, None, :], above[None, :, :]
            t = (z0 - a[..., 2]) / (b[..., 2] - a[..., 2])
            out.append((a[..., :2] + t[..., None] * (b[..., :2] - a[..., :2])).reshape(-1, 2))
    return np.concatenate(out)


def collider_sections(
    model, data, exclude_bodies: set[int], z_lo: float, z_hi: float
) -> list[tuple[str, np.ndarray]]:
    """``[(geom name, (K, 2) xy)]``: cross-sections of every collision geom (outside ``exclude_bodies``)
    with the slab ``z_lo <= z <= z_hi`` (m), as from :func:`slab_section`. ``data`` must be forwarded."""
    out = []
    for g in range(model.ngeom):
        if int(model.geom_bodyid[g]) in exclude_bodies:
            continue
        if model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0:
            continue  # visual only
        pts = geom_points(model, data, g)
        if pts is None:
            continue
        sec = slab_section(pts, z_lo, z_hi)
        if len(sec):
            out.append((model.geom(g).name or f"geom {g}", sec))
    return out


def _fill_polygon(mask: np.ndarray, xy: np.ndarray, lo: np.ndarray, cell: float) -> None:
    """Mark the cells of ``mask`` whose centres lie in the convex hull of ``xy`` (m), and the cells that
    hold any of the points (so slivers thinner than a cell still block)."""
    from skimage.draw import polygon

    uv = (xy - lo) / cell  # cell units; cell (i, j) spans [i, i + 1) x [j, j + 1)
    ij = np.floor(uv).astype(int)
    ok = (ij >= 0).all(1) & (ij[:, 0] < mask.shape[0]) & (ij[:, 1] < mask.shape[1])
    mask[ij[ok, 0], ij[ok, 1]] = True
    try:
        ring = uv[ConvexHull(uv).vertices]
    except (QhullError, ValueError):
        return
    rr, cc = polygon(ring[:, 0] - 0.5, ring[:, 1] - 0.5, mask.shape)  # skimage: pixel centres at integers
    mask[rr, cc] = True


def route_grid(
    mesh: PanopticMesh,
    sections: list[tuple[str, np.ndarray]] = (),
    radius: float = FOOTPRINT_RADIUS + 0.1,
    floor_z: float = 0.0,
    body_height: float = 0.3,
    cell: float = 0.05,
) -> RouteGrid:
    """The traversable grid: the mesh's free floor minus the collider ``sections``, inflated by ``radius``."""
    free, lo = floor_grid(mesh, floor_z, body_height, cell)
    blocked = np.zeros_like(free)
    for _, xy in sections:
        _fill_polygon(blocked, xy, lo, cell)
    free = free & ~blocked
    clearance = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1] * cell
    return RouteGrid(free, clearance, np.asarray(lo, np.float64), cell, radius)


# -- the loop -----------------------------------------------------------------------------------------------


def _nearest_cell(grid: RouteGrid, reach: np.ndarray, xy) -> tuple[int, int] | None:
    cells = np.argwhere(reach)
    if not len(cells):
        return None
    d = np.linalg.norm(grid.to_xy(cells) - np.asarray(xy, np.float64), axis=1)
    return tuple(int(v) for v in cells[int(np.argmin(d))])  # type: ignore[return-value]


def object_centroids(mesh: PanopticMesh) -> dict[int, np.ndarray]:
    """``{instance id: (2,) xy centroid (m)}`` of the mesh's thing instances (instance > 0)."""
    inst = np.asarray(mesh.instance)
    out = {}
    for k in np.unique(inst[inst > 0]):
        out[int(k)] = np.asarray(mesh.vertices, np.float64)[inst == k, :2].mean(0)
    return out


def _tour(dist: np.ndarray) -> list[int]:
    """Closed tour over nodes ``0..n-1`` starting at 0: nearest neighbour, then 2-opt on ``dist``."""
    n = len(dist)
    order, left = [0], set(range(1, n))
    while left:
        nxt = min(left, key=lambda k: dist[order[-1], k])
        order.append(nxt)
        left.remove(nxt)
    improved = True
    while improved:
        improved = False
        for i in range(1, n - 1):
            for j in range(i + 1, n):
                a, b = order[i - 1], order[i]
                c, d = order[j], order[(j + 1) % n]
                if dist[a, c] + dist[b, d] < dist[a, b] + dist[c, d] - 1e-9:
                    order[i : j + 1] = order[i : j + 1][::-1]
                    improved = True
    return order


def _shortcut(grid: RouteGrid, path: np.ndarray) -> list[np.ndarray]:
    """Corners of ``path`` (``(P, 2)`` xy) that straight traversable segments need, last point included."""
    out, i = [], 0
    while i < len(path) - 1:
        # The farthest point in sight, not the first one out of sight: along a staircase of cells the
        # view comes and goes, and a forward scan would leave a corner on every step.
        j = next((j for j in range(len(path) - 1, i + 1, -1) if grid.segment_clear(path[i], path[j])), i + 1)
        out.append(path[j])
        i = j
    return out


def plan_loop(
    grid: RouteGrid, start_xy, targets: list[np.ndarray], obstacle_weight: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """A closed loop from ``start_xy`` through a traversable cell near each target and back.

    Args:
        grid: occupancy (:func:`route_grid`).
        start_xy: ``(2,)`` robot start (m).
        targets: ``[(2,)]`` points to pass near (m), e.g. object centroids.
        obstacle_weight: path cost per metre is ``1 + obstacle_weight / clearance`` (keeps to the middle).
    Returns:
        ``waypoints (N, 2)`` (m; the last one is the start) and ``goals (G, 2)``: the stops near the targets
        (and extreme cells when fewer than three targets are reachable), in tour order.
    Raises:
        RouteError: no traversable cell near the start, or nothing to drive to.
    """
    from skimage.graph import MCP_Geometric

    trav = grid.traversable
    start = grid.to_cell(start_xy)
    if not grid.inside(start) or not trav[start]:
        near = _nearest_cell(grid, trav, start_xy)
        if near is None or np.linalg.norm(grid.to_xy(near) - start_xy) > 1.0:
            raise RouteError(
                f"no floor with {grid.radius:.2f} m of free space within 1 m of the start "
                f"({start_xy[0]:.2f}, {start_xy[1]:.2f}); give --waypoints"
            )
        start = near
    labels, _ = ndimage.label(trav, structure=np.ones((3, 3)))
    reach = labels == labels[start]
    start_xy = np.asarray(start_xy, np.float64)
    stops: list[tuple[int, int]] = []

    def add(c) -> None:
        xy = grid.to_xy(c)
        if np.linalg.norm(xy - start_xy) < MERGE_DISTANCE:
            return
        if any(np.linalg.norm(xy - grid.to_xy(s)) < MERGE_DISTANCE for s in stops):
            return
        stops.append(c)

    for t in targets:
        c = _nearest_cell(grid, reach, t)
        if c is not None:
            add(c)
    if len(stops) < 3:  # an empty or one-object room: go round its free floor instead
        cells = np.argwhere(reach)
        xy = grid.to_xy(cells)
        for a in np.arange(8) * np.pi / 4:  # the extreme cells in 8 directions
            add(tuple(int(v) for v in cells[int(np.argmax(xy @ [np.cos(a), np.sin(a)]))]))
    if not stops:
        raise RouteError(
            f"the free floor around the start is smaller than {MERGE_DISTANCE} m; give --waypoints"
        )
    costs = np.where(reach, 1.0 + obstacle_weight / np.maximum(grid.clearance, grid.cell), np.inf)
    nodes = [start, *stops]
    dist = np.zeros((len(nodes), len(nodes)))
    mcps = []
    for a, na in enumerate(nodes):
        mcp = MCP_Geometric(costs, fully_connected=True)
        cum, _ = mcp.find_costs([na])
        mcps.append(mcp)
        dist[a] = [cum[nb] for nb in nodes]
    dist = (dist + dist.T) / 2
    order = _tour(dist)
    waypoints: list[np.ndarray] = []
    prev_xy = start_xy
    if start != grid.to_cell(start_xy):
        waypoints.append(grid.to_xy(start))
        prev_xy = grid.to_xy(start)
    for a, b in zip(order, [*order[1:], order[0]], strict=True):
        path = np.asarray(mcps[a].traceback(nodes[b]))
        pts = grid.to_xy(path)
        pts[0] = prev_xy
        if b == 0:
            pts[-1] = start_xy if start == grid.to_cell(start_xy) else grid.to_xy(start)
        waypoints.extend(_shortcut(grid, pts))
        prev_xy = pts[-1]
    goals = np.array([grid.to_xy(nodes[k]) for k in order[1:]])
    return np.asarray(waypoints), goals
