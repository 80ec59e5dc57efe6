"""Fusion labelling against constructed ground truth: low-score segments, orphan thing surfaces, slivers."""

from __future__ import annotations

import numpy as np
import pytest

from simgen.recon.fusion import FusionConfig
from simgen.recon.fusion import association as assoc
from simgen.recon.fusion.mesh import settle_instances

FLOOR, TABLE, BALL, SHELF = 0, 1, 2, 3  # semantic columns; floor is stuff
THING = np.array([False, True, True, True])


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """An ``n x n`` vertex grid triangulated into a plane: faces ``(2 (n-1)^2, 3)``, vertex ``(r, c)`` is
    ``r * n + c``."""
    r, c = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    v = (r * n + c).ravel()
    faces = np.concatenate([np.stack([v, v + 1, v + n], 1), np.stack([v + 1, v + n + 1, v + n], 1)])
    return faces.astype(np.int64), np.arange(n * n).reshape(n, n)


def _floor() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 30 x 30 floor: faces, the vertex grid, semantic columns (all floor) and instance ids (none)."""
    faces, at = _grid(30)
    return faces, at, np.full(900, FLOOR), np.zeros(900, np.int64)


def test_low_score_segments_are_void():
    pan = np.array([[5, 5, 9, 9, 0]], np.int32)
    segs = (assoc.Segment(5, 3, 0.9), assoc.Segment(9, 3, 0.2))
    seg = assoc.frame_segments(pan, segs, {1: 0, 2: 1, 3: 2}, THING[:3], min_score=0.3)
    assert seg.ids.tolist() == [5]
    assert seg.index.tolist() == [[0, 0, -1, -1, -1]]
    kept = assoc.frame_segments(pan, segs, {1: 0, 2: 1, 3: 2}, THING[:3])
    assert kept.ids.tolist() == [5, 9]


def test_min_segment_score_is_validated():
    with pytest.raises(ValueError, match="min_segment_score"):
        FusionConfig(min_segment_score=1.5)


def test_orphans_become_instances_or_are_absorbed_and_slivers_vanish():
    """A 30 x 30 floor holding: a table (instance 7) with a 3 x 3 patch voted "shelf" and a 2-vertex
    instance 9 on it; an 8 x 8 "ball" no instance claims, alone on the floor; a 2 x 2 "ball" speck."""
    faces, at, col, inst = _floor()
    table = at[2:14, 2:14].ravel()
    col[table], inst[table] = TABLE, 7
    patch = at[6:9, 6:9].ravel()
    col[patch], inst[patch] = SHELF, 0
    sliver = at[11, 4:6]
    inst[sliver] = 9
    ball = at[18:26, 18:26].ravel()
    col[ball] = BALL
    speck = at[3:5, 22:24].ravel()
    col[speck] = BALL
    known = np.ones(900, bool)
    orphan = THING[col] & (inst == 0)

    c, i, k = settle_instances(faces, col, inst, known, orphan, 10, 5, 20)

    assert k.all()
    assert (i[table] == 7).all() and (c[table] == TABLE).all()  # the patch and the sliver joined the table
    new = np.unique(i[ball])
    assert len(new) == 1 and new[0] > 9 and (c[ball] == BALL).all()  # the ball is an instance of its own
    assert (i[speck] == 0).all() and (c[speck] == FLOOR).all()  # too small: the floor took it
    rest = np.setdiff1d(np.arange(900), np.concatenate([table, ball, speck]))
    assert (c[rest] == FLOOR).all() and (i[rest] == 0).all()
    assert sorted(np.unique(i[i > 0]).tolist()) == [7, int(new[0])]


def test_an_orphan_no_neighbour_reaches_keeps_its_label():
    """Absorbing needs a labelled neighbour: a small orphan on an island of unknown vertices stays."""
    faces, at = _grid(10)
    col = np.zeros(100, np.int64)
    inst = np.zeros(100, np.int64)
    known = np.zeros(100, bool)
    island = at[4:6, 4:6].ravel()
    col[island], known[island] = BALL, True
    c, i, k = settle_instances(faces, col, inst, known, known & THING[col], 3, 5, 20)
    assert (c[island] == BALL).all() and k[island].all()
    assert (i[island] == 0).all()  # below the size of a new instance, and nothing to join


def test_a_piece_of_a_merged_neighbour_joins_it_and_detached_legs_stay():
    """Chairs 3 and 4 on a floor; a merged segment left a 3 x 3 piece of chair 4 with chair 3's id, and
    chair 3 has a separate 2 x 2 leg touching only the floor."""
    faces, at, col, inst = _floor()
    chair3, chair4 = at[2:10, 2:10].ravel(), at[2:10, 15:23].ravel()
    col[chair3], inst[chair3] = BALL, 3
    col[chair4], inst[chair4] = BALL, 4
    piece = at[4:7, 16:19].ravel()
    inst[piece] = 3
    leg = at[20:22, 4:6].ravel()
    col[leg], inst[leg] = BALL, 3
    known = np.ones(900, bool)

    c, i, _ = settle_instances(faces, col, inst, known, np.zeros(900, bool), 10, 2, 20)

    assert (i[chair4] == 4).all()
    assert (i[chair3] == 3).all() and (i[leg] == 3).all()
    assert (c[chair3] == BALL).all() and (c[leg] == BALL).all()


def test_a_piece_does_not_follow_a_sliver_lying_on_it():
    """Chair 4's detached 3 x 3 piece touches a 2-vertex instance 8: the piece stays, the sliver goes."""
    faces, at, col, inst = _floor()
    chair4 = at[2:10, 15:23].ravel()
    col[chair4], inst[chair4] = BALL, 4
    piece = at[14:17, 4:7].ravel()
    col[piece], inst[piece] = BALL, 4
    sliver = at[17, 5:7]
    col[sliver], inst[sliver] = BALL, 8
    known = np.ones(900, bool)

    _, i, _ = settle_instances(faces, col, inst, known, np.zeros(900, bool), 10, 5, 20)

    assert (i[piece] == 4).all() and (i[chair4] == 4).all()
    assert not (i == 8).any()


def test_an_object_association_dropped_does_not_return_as_an_orphan():
    """The same lone 8 x 8 "ball", but its voxels voted for an instance dropped for too few keyframes."""
    faces, at, col, _ = _floor()
    ball = at[18:26, 18:26].ravel()
    col[ball] = BALL
    known = np.ones(900, bool)
    may_found = np.ones(900, bool)
    may_found[ball] = False
    orphan = THING[col]
    c, i, _ = settle_instances(faces, col, np.zeros(900, np.int64), known, orphan, 10, 5, 20, may_found)
    assert not i.any() and (c == FLOOR).all()
    c, i, _ = settle_instances(faces, col, np.zeros(900, np.int64), known, orphan, 10, 5, 20)
    assert len(np.unique(i[ball])) == 1 and i[ball][0] > 0
