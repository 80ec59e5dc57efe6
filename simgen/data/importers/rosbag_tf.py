"""A TF tree read from a bag's ``/tf`` and ``/tf_static`` (``tf2_msgs/msg/TFMessage``), without ROS.

Semantics follow tf2's buffer: every child frame has one parent; a transform published on
``/tf_static`` holds at all times; a dynamic edge (``/tf``) is interpolated at the requested stamp
between its two nearest samples, translation linearly and rotation by slerp, and a stamp outside
its sample range is refused (tf2's ExtrapolationException) rather than extrapolated. A lookup
composes the edges from the source frame up to the common ancestor and down to the target frame,
each at the same stamp.

Conventions: stamps are int64 nanoseconds (ROS time, ``sec * 1e9 + nanosec``); a transform
``T_parent_child`` ``(4, 4)`` maps points in the child frame to the parent frame (metres), as
``geometry_msgs/TransformStamped`` with ``header.frame_id`` = parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simgen.data.importers.common import DatasetImportError


def format_stamp(ns: int) -> str:
    """``1700000000.033333333``: a ROS stamp in seconds with all nine nanosecond digits."""
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    s, n = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{s}.{n:09d}"


def strip_frame(frame_id: str) -> str:
    """tf2 ignores a leading slash (``/map`` is ``map``)."""
    return frame_id.lstrip("/")


@dataclass
class Edge:
    """One parent -> child edge of the tree.

    ``stamps`` ``(N,)`` int64 ns sorted ascending (empty for a static edge); ``translations``
    ``(N, 3)`` metres and ``quaternions`` ``(N, 4)`` unit (x, y, z, w), child expressed in parent.
    """

    parent: str
    child: str
    topic: str
    static: bool
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    translations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    quaternions: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def describe(self) -> str:
        kind = "static" if self.static else f"{len(self.stamps)} samples"
        return f"{self.parent} -> {self.child} ({self.topic}, {kind})"

    def time_range(self) -> tuple[int, int] | None:
        """``(first, last)`` stamp in ns of a dynamic edge; None for a static one."""
        if self.static:
            return None
        return int(self.stamps[0]), int(self.stamps[-1])

    def at(self, stamps: np.ndarray) -> np.ndarray:
        """``T_parent_child`` ``(M, 4, 4)`` at ``stamps`` ``(M,)`` int64 ns (each inside the range)."""
        from scipy.spatial.transform import Rotation  # lazy: keeps `simgen --help` fast

        m = len(stamps)
        T = np.tile(np.eye(4), (m, 1, 1))
        if self.static or len(self.stamps) == 1:
            T[:, :3, :3] = Rotation.from_quat(self.quaternions[0]).as_matrix()
            T[:, :3, 3] = self.translations[0]
            return T
        s = self.stamps
        i = np.clip(np.searchsorted(s, stamps, side="right") - 1, 0, len(s) - 2)
        # Weights from int64 differences: float64 ns since the epoch would lose ~100 ns of precision.
        w = (stamps - s[i]).astype(np.float64) / (s[i + 1] - s[i]).astype(np.float64)
        t0, t1 = self.translations[i], self.translations[i + 1]
        T[:, :3, 3] = t0 + w[:, None] * (t1 - t0)
        r0, r1 = Rotation.from_quat(self.quaternions[i]), Rotation.from_quat(self.quaternions[i + 1])
        rel = (r0.inv() * r1).as_rotvec()  # the shortest arc, as scipy's Slerp
        T[:, :3, :3] = (r0 * Rotation.from_rotvec(w[:, None] * rel)).as_matrix()
        return T


class TFTree:
    """Transforms collected from TFMessages; call :meth:`add`, then :meth:`finalize`, then look up."""

    def __init__(self) -> None:
        self._raw: dict[tuple[str, str, bool], list[tuple[int, tuple[float, ...], tuple[float, ...]]]] = {}
        self._topics: dict[tuple[str, str, bool], str] = {}
        self.edges: dict[str, Edge] = {}  # child -> the edge from its parent
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ building

    def add_message(self, msg, topic: str, static: bool) -> None:
        """Add every ``geometry_msgs/TransformStamped`` of one ``tf2_msgs/TFMessage``."""
        for ts in msg.transforms:
            parent, child = strip_frame(ts.header.frame_id), strip_frame(ts.child_frame_id)
            stamp = int(ts.header.stamp.sec) * 1_000_000_000 + int(ts.header.stamp.nanosec)
            tr, q = ts.transform.translation, ts.transform.rotation
            where = f"{topic}: transform {parent or '<empty>'} -> {child or '<empty>'} at stamp {format_stamp(stamp)}"
            if not parent or not child:
                raise DatasetImportError(f"{where}: empty frame_id or child_frame_id")
            if parent == child:
                raise DatasetImportError(f"{where}: a frame cannot be its own parent")
            qv = (float(q.x), float(q.y), float(q.z), float(q.w))
            tv = (float(tr.x), float(tr.y), float(tr.z))
            norm = float(np.linalg.norm(qv))
            if not (np.all(np.isfinite(qv)) and np.all(np.isfinite(tv))) or norm < 1e-6:
                raise DatasetImportError(f"{where}: non-finite values or a zero quaternion {qv}")
            if abs(norm - 1.0) > 1e-3:
                raise DatasetImportError(f"{where}: quaternion {qv} is not unit length (|q| = {norm:.6f})")
            key = (parent, child, static)
            self._raw.setdefault(key, []).append((stamp, tv, qv))
            self._topics.setdefault(key, topic)

    def finalize(self) -> None:
        """Build the edges; refuses a frame with two parents."""
        parents: dict[str, set[str]] = {}
        for parent, child, _ in self._raw:
            parents.setdefault(child, set()).add(parent)
        bad = {c: sorted(p) for c, p in parents.items() if len(p) > 1}
        if bad:
            raise DatasetImportError(
                "TF is not a tree: frame(s) with more than one parent",
                [f"{c}: parents {', '.join(p)}" for c, p in sorted(bad.items())],
            )
        for (parent, child, static), samples in self._raw.items():
            if static and (parent, child, False) in self._raw:
                # tf2 lets the dynamic samples win for lookups at their stamps; keep one meaning.
                self.warnings.append(
                    f"TF edge {parent} -> {child} is on both /tf_static and /tf: the /tf samples are used"
                )
                continue
            if static:
                _, t, q = samples[-1]  # a latched static transform: the latest publication holds
                self.edges[child] = Edge(
                    parent, child, self._topics[(parent, child, static)], True,
                    translations=np.array([t]), quaternions=_unit(np.array([q])),
                )  # fmt: skip
                continue
            samples = sorted(samples, key=lambda s: s[0])
            stamps = np.array([s[0] for s in samples], dtype=np.int64)
            keep = np.append(stamps[1:] != stamps[:-1], True)  # repeated stamp: the last one wins
            self.edges[child] = Edge(
                parent,
                child,
                self._topics[(parent, child, static)],
                False,
                stamps=stamps[keep],
                translations=np.array([s[1] for s in samples])[keep],
                quaternions=_unit(np.array([s[2] for s in samples]))[keep],
            )

    # ------------------------------------------------------------------ queries

    @property
    def frames(self) -> set[str]:
        return set(self.edges) | {e.parent for e in self.edges.values()}

    def chain(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        out = [frame]
        while out[-1] in self.edges:
            out.append(self.edges[out[-1]].parent)
            if len(out) > len(self.edges) + 1:  # cannot happen in a tree; guards a cycle
                raise DatasetImportError(f"TF has a cycle through {' -> '.join(out[-5:])}")
        return out

    def root(self, frame: str) -> str:
        return self.chain(frame)[-1]

    def path(self, target: str, source: str, what: str = "") -> tuple[list[Edge], list[Edge]]:
        """Edges from ``source`` up to the common ancestor, and from ``target`` up to it.

        Raises DatasetImportError naming both frames (and ``what`` uses them) when either frame is
        not in TF or the two lie in separate trees.
        """
        known = self.frames
        for f in (target, source):
            if f not in known:
                raise DatasetImportError(
                    f"no TF path from {target!r} to {source!r}{what}: frame {f!r} is not in /tf or /tf_static "
                    f"(frames there: {', '.join(sorted(known)) or 'none'})"
                )
        up_s, up_t = self.chain(source), self.chain(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise DatasetImportError(
                f"no TF path from {target!r} to {source!r}{what}: they are in separate TF trees "
                f"(roots {up_t[-1]!r} and {up_s[-1]!r}); the world frame must be an ancestor of the camera frames"
            )
        edges_s = [self.edges[f] for f in up_s[: up_s.index(common)]]
        edges_t = [self.edges[f] for f in up_t[: up_t.index(common)]]
        return edges_s, edges_t

    def time_range(self, target: str, source: str) -> tuple[int, int, Edge | None]:
        """The stamps a lookup can serve: ``(first, last, limiting edge)``; static paths give
        ``(-2**63, 2**63 - 1, None)``."""
        edges_s, edges_t = self.path(target, source)
        lo, hi, limiting = -(2**63), 2**63 - 1, None
        for e in edges_s + edges_t:
            r = e.time_range()
            if r is None:
                continue
            if r[0] > lo:
                lo, limiting = r[0], e
            if r[1] < hi:
                hi, limiting = r[1], e
        return lo, hi, limiting

    def lookup(
        self, target: str, source: str, stamps: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``T_target_source`` at each stamp.

        Args:
            target, source: frame ids (leading ``/`` ignored).
            stamps: ``(M,)`` int64 ns.

        Returns:
            ``(M, 4, 4)`` float64 transforms mapping points in ``source`` to ``target`` (identity
            where not available) and ``(M,)`` bool: the stamp lies inside every dynamic edge's
            sample range on the path.
        """
        target, source = strip_frame(target), strip_frame(source)
        stamps = np.asarray(stamps, dtype=np.int64)
        edges_s, edges_t = self.path(target, source)
        ok = np.ones(len(stamps), dtype=bool)
        for e in edges_s + edges_t:
            r = e.time_range()
            if r is not None:
                ok &= (stamps >= r[0]) & (stamps <= r[1])
        q = stamps[ok]
        T_common_source = np.tile(np.eye(4), (len(q), 1, 1))
        for e in edges_s:  # source -> ... -> common: left-multiply each parent_T_child
            T_common_source = e.at(q) @ T_common_source
        T_common_target = np.tile(np.eye(4), (len(q), 1, 1))
        for e in edges_t:
            T_common_target = e.at(q) @ T_common_target
        out = np.tile(np.eye(4), (len(stamps), 1, 1))
        out[ok] = np.linalg.inv(T_common_target) @ T_common_source
        return out, ok


def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=1, keepdims=True)
