"""Completed stuff surfaces: a scanned room with holes in its floor and walls renders without void."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers.export_scenes import CATEGORIES, ROOM, holed, holed_room, make_mesh, plane, write_build

from simgen.export import stuff
from simgen.export.colliders import stuff_boxes
from simgen.export.config import ExportConfig
from simgen.export.pipeline import run_export

FAST = dict(max_hulls=6, texture_size=128, face_budget=20000, quiet=True, physics=False, workers=0)


def test_fill_covers_exactly_the_unseen_part_of_the_floor():
    floor = holed(plane([0, 0, 0], [ROOM, 0, 0], [0, ROOM, 0], n=40), [1, 1, -1], [2, 2, 1])
    v = np.asarray(floor.vertices)
    colors = np.tile([150, 120, 90], (len(v), 1)).astype(np.uint8)
    boxes = stuff_boxes(v, floor.faces, "floor", np.array([2.0, 2.0, 1.0]))
    fill = stuff.fill_surfaces(boxes, v, floor.faces, colors, pitch=0.05)
    assert fill.area_m2 == pytest.approx(ROOM * ROOM, rel=0.02)
    # The hole (1 m^2 of faces whose centre is in [1, 2]^2, cut on a 10 cm grid) within a cell or so.
    assert 0.75 < fill.filled_m2 < 1.25
    assert np.allclose(fill.vertices[:, 2], -stuff.BEHIND, atol=1e-6)  # just behind the scanned floor
    assert (np.abs(fill.colors.astype(int) - [150, 120, 90]) <= 1).all()  # the scan's colour, filled too
    normals = trimesh.Trimesh(fill.vertices, fill.faces, process=False).face_normals
    assert (normals[:, 2] > 0.99).all()  # facing up into the room


def test_export_completes_floor_and_walls_and_removes_the_void(tmp_path):
    from helpers.export_scenes import Category

    cats = {k: CATEGORIES[k] for k in (1, 2, 11)} | {11: Category(11, "cabinet", True)}
    build = write_build(tmp_path / "room", make_mesh(holed_room()), cats)
    figures = {}
    for complete in (False, True):
        out = tmp_path / f"out_{complete}"
        run_export(build, out, ExportConfig(**FAST, complete_stuff=complete))
        figures[complete] = stuff.check_void(out, n=40, seed=1)
        summary = json.loads((out / "export.json").read_text())
    rows = {r["name"]: r for r in summary["models"]}
    assert rows["floor"]["stuff_fill"]["filled_m2"] == pytest.approx(1.0, abs=0.25)
    # The corner patch (1 x 1.2 m) lies inside its wall's box and is filled; the wall tops above 2 m were
    # never scanned anywhere along those walls, so their boxes (and fills) end at 2 m like the colliders.
    assert rows["wall"]["stuff_fill"]["filled_m2"] == pytest.approx(1.2, abs=0.4)
    assert rows["cabinet_1"]["stuff_fill"] is None
    assert figures[False]["void_mean_percent"] > 3.0  # the holes are visible without the fill
    assert figures[True]["void_mean_percent"] < 1.0


def test_void_fraction_of_a_closed_box_is_zero_and_of_nothing_is_one():
    box = trimesh.creation.box([4.0, 4.0, 3.0], trimesh.transformations.translation_matrix([2, 2, 1.5]))
    box.invert()  # seen from inside
    poses = stuff.level_poses(np.array([[1.0, 1.0, 0.0], [3.0, 2.5, 0.0]]), 4, seed=0)
    assert stuff.void_fraction(box, poses, 16, 12).max() == 0.0
    far = trimesh.creation.box([1, 1, 1], trimesh.transformations.translation_matrix([0, 0, -50]))
    assert stuff.void_fraction(far, poses, 16, 12).min() == 1.0


def test_check_reports_void(tmp_path):
    from simgen.export.check import check_export

    build = write_build(tmp_path / "room", make_mesh(holed_room()[:5]), {k: CATEGORIES[k] for k in (1, 2)})
    run_export(build, tmp_path / "out", ExportConfig(**FAST))
    _, stats = check_export(tmp_path / "out", validator=False, physics=True)
    assert stats["void"]["poses"] == 40 and stats["void"]["void_mean_percent"] < 1.0
    assert Path(tmp_path / "out" / "export.json").is_file()


def test_level_cameras_stand_on_the_floor_not_on_floor_labelled_tops():
    """Floor-labelled points 2.7 m up (a wall top the segmenter called floor) never host a camera: one there
    would look over the walls into nothing and count as void."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 4, (500, 2)), rng.normal(0, 0.005, 500)]
    tops = np.c_[rng.uniform(0, 4, (60, 2)), np.full(60, 2.7)]
    poses = stuff.level_poses(np.concatenate([floor, tops]), 200, height=0.3, seed=1)
    heights = np.array([p[2] for p, _ in poses])
    assert np.all(np.abs(heights - 0.3) < 0.05)
    assert len(stuff.level_poses(np.concatenate([floor, tops]), 200, seed=1)) == 200
