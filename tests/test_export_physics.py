"""Export physics: the fixed / dynamic class policy, spawn overlaps lifted away, the 3 s rest test and the
robot push tests, in MuJoCo, reported in export.json and by ``simgen check``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers.export_scenes import CATEGORIES, make_mesh, room_parts, write_build
from lxml import etree

from simgen.cli import main
from simgen.data.scene import Category
from simgen.export import colliders, physics
from simgen.export.colliders import robust_convex_hull
from simgen.export.config import ExportConfig
from simgen.export.pipeline import run_export
from simgen.export.policy import FIXED_CLASSES, decide
from simgen.sim.drive import robot_mjcf

pytest.importorskip("mujoco")

FAST = dict(max_hulls=6, texture_size=128, face_budget=5000, quiet=True)
SUNK = 0.03  # the book is scanned 3 cm inside the table top (an overfull collider does the same)
TABLE_TOP = 0.7


def _box(size, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(size, trimesh.transformations.translation_matrix(centre)).subdivide()


BALL_CENTRE = (2.25, 2.05, TABLE_TOP + 0.1)  # on the table top, beside the book


def _scanned_ball(centre, radius: float) -> trimesh.Trimesh:
    """A ball as a scan leaves it: its bottom 2 cm never seen (open there), and one stray sliver reaching
    down to its support 6 cm off its axis (what the scan caught of the contact)."""
    s = trimesh.creation.icosphere(3, radius=radius)
    keep = s.triangles_center[:, 2] > 0.02 - radius
    v, f = s.vertices, s.faces[keep]
    # The sliver hangs from the lowest edge of the opening (an edge of one face only), so it is part of
    # the scanned surface, not a separate piece the cleaning drops.
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    border = uniq[count == 1]
    rim = border[np.argmin(v[border, 2].mean(1))]
    spur = np.array([[v[rim, 0].mean() - 0.06 * np.sign(v[rim, 0].mean() or 1.0), v[rim, 1].mean(), -radius]])
    m = trimesh.Trimesh(np.vstack([v, spur]), np.vstack([f, [[rim[0], rim[1], len(v)]]]), process=False)
    m.apply_translation(centre)
    return m


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """The test room plus a light box on the floor, a book sunk into the table top and a scanned ball
    (open underneath) on the table."""
    root = tmp_path_factory.mktemp("phys")
    cats = {
        **CATEGORIES,
        13: Category(13, "box", True),
        14: Category(14, "book", True),
        15: Category(15, "sign", True),
        16: Category(16, "ball", True),
    }
    # A sign: a 0.6 m post with a 0.5 m board sticking out to one side at the top: its centre of mass is
    # outside its 4 cm footprint, so it cannot rest where it was scanned.
    sign = trimesh.util.concatenate(
        [_box([0.04, 0.04, 0.6], [3.0, 3.0, 0.3]), _box([0.5, 0.04, 0.2], [3.27, 3.0, 0.7])]
    )
    parts = room_parts() + [
        (_box([0.3, 0.3, 0.3], [2.0, 0.9, 0.15]), 13, 4, (200, 160, 90)),
        (_box([0.2, 0.15, 0.05], [2.0, 2.0, TABLE_TOP + 0.025 - SUNK]), 14, 5, (180, 30, 30)),
        (sign, 15, 6, (240, 240, 240)),
        (_scanned_ball(BALL_CENTRE, 0.1), 16, 7, (230, 120, 20)),
    ]
    build = write_build(root / "room", make_mesh(parts), cats)
    run_export(build, root / "out", ExportConfig(**FAST, densities=None), robot=robot_mjcf)
    return root / "out"


def test_policy_by_class_size_mass_and_override():
    args = (FIXED_CLASSES, (), 1.2, 1.6, 40.0)
    small = np.array([0.3, 0.3, 0.3])
    assert decide("floor", 1, "floor", small, 1.0, *args).reason == "stuff"
    assert decide("thing", 9, "dining_table", small, 1.0, *args).reason == "class"  # a word of the name
    assert decide("thing", 9, "Bookshelves", small, 1.0, *args).reason == "class"  # plural
    assert decide("thing", 9, "mug", small, 0.3, *args).dynamic
    assert decide("thing", 9, "statue", np.array([0.5, 0.5, 1.8]), 30.0, *args).reason == "size"
    assert decide("thing", 9, "crate", small, 80.0, *args).reason == "mass"
    over = (FIXED_CLASSES, ("table", "42"), 1.2, 1.6, 40.0)
    assert decide("thing", 9, "table", small, 1.0, *over).reason == "override"
    assert decide("thing", 42, "anything", np.array([3.0, 3.0, 3.0]), 999.0, *over).dynamic


def test_export_records_policy_and_lifts_the_sunk_book(export_dir):
    summary = json.loads((export_dir / "export.json").read_text())
    rows = {r["name"]: r for r in summary["models"]}
    assert not rows["table_1"]["dynamic"] and rows["table_1"]["policy"] == "class"
    assert not rows["floor"]["dynamic"] and rows["floor"]["policy"] == "stuff"
    assert rows["box_4"]["dynamic"] and rows["box_4"]["mass_kg"] > 0
    book = rows["book_5"]["physics"]
    assert book["dynamic"]
    # Where scanned the book overlapped the table by SUNK; it was lifted by about that much, straight up.
    assert book["spawn_penetration_mm"] == pytest.approx(1000 * SUNK, abs=3)
    assert book["shift_mm"][2] == pytest.approx(1000 * SUNK, abs=3)
    assert np.hypot(*book["shift_mm"][:2]) < 2
    assert any("book_5: lifted" in w for w in summary["warnings"])
    # Both world files carry the lift.
    mj = etree.parse(str(export_dir / "mjcf" / "room.xml")).find(".//body[@name='book_5']")
    world = etree.parse(str(export_dir / "worlds" / "room.sdf"))
    inc = [i for i in world.iterfind(".//include") if i.findtext("name") == "book_5"][0]
    z_mj, z_sdf = float(mj.get("pos").split()[2]), float(inc.findtext("pose").split()[2])
    assert z_mj == pytest.approx(z_sdf, abs=1e-5)
    assert z_mj == pytest.approx(TABLE_TOP, abs=0.004)  # the book's bottom now on the table top
    phys = summary["physics"]
    assert phys["passed"], phys["failures"]
    assert phys["spawn_max_penetration_mm"] <= 5.0
    for name in ("box_4", "book_5", "bin_3"):
        assert rows[name]["physics"]["rest_moved_cm"] < 1.0
        assert rows[name]["physics"]["rest_turned_deg"] < 2.0
    assert phys["push_dynamic"]["target"] == "box_4"  # the only light thing the robot's chassis meets
    assert phys["push_dynamic"]["target_moved_cm"] >= 5.0
    assert phys["push_fixed"]["passed"]
    fixed = phys["push_fixed"]
    assert fixed["robot_travel_cm"] <= fixed["start_gap_cm"] + 3.0


def test_export_records_the_collider_choice_of_every_thing(export_dir):
    rows = json.loads((export_dir / "export.json").read_text())["models"]
    for r in rows:
        if r["kind"] != "thing":
            assert r["collider_choice"] is None
            continue
        choice = r["collider_choice"]
        assert choice["chosen"] == r["collider"] and choice["reason"]
        kept = [c for c in choice["candidates"] if c["method"] == r["collider"]]
        assert len(kept) == 1 and kept[0]["hulls"] == r["hulls"]
        if choice["flat_base_mm"] == 0:  # the candidates' figures are before the flat base
            assert kept[0]["volume_error"] == pytest.approx(r["volume_error"], abs=2e-4)
    # The table's legs are separate members: the slab split, without a decomposition run.
    table = {r["name"]: r for r in rows}["table_1"]["collider_choice"]
    assert table["chosen"] == "slabs" and len(table["candidates"]) == 1


def test_a_scanned_ball_on_the_table_gets_a_flat_base_and_stays_dynamic(export_dir):
    rows = {r["name"]: r for r in json.loads((export_dir / "export.json").read_text())["models"]}
    ball = rows["ball_7"]
    assert ball["dynamic"] and ball["policy"] == "movable" and not ball["physics"]["pinned"]
    assert ball["collider_choice"]["flat_base_mm"] > 0
    assert ball["physics"]["rest_moved_cm"] < 100 * physics.REST_MOVE_M
    assert ball["physics"]["rest_turned_deg"] < physics.REST_TURN_DEG
    # Where it was scanned: on the table top (the flat face is on the plane of its lowest scanned point).
    body = etree.parse(str(export_dir / "mjcf" / "room.xml")).find(".//body[@name='ball_7']")
    assert float(body.get("pos").split()[2]) == pytest.approx(TABLE_TOP, abs=0.006)


def test_a_thing_that_falls_over_is_pinned(export_dir):
    summary = json.loads((export_dir / "export.json").read_text())
    sign = {r["name"]: r for r in summary["models"]}["sign_6"]
    assert sign["physics"]["pinned"] and not sign["dynamic"] and sign["policy"] == "unstable"
    assert sign["physics"]["rest_turned_deg"] > 2.0  # what it did before it was pinned
    assert any("sign_6: moved" in w and "pinned" in w for w in summary["warnings"])
    sdf = etree.parse(str(export_dir / "models" / "sign_6" / "model.sdf"))
    assert sdf.findtext(".//static") == "true" and sdf.find(".//inertial") is None
    body = etree.parse(str(export_dir / "mjcf" / "room.xml")).find(".//body[@name='sign_6']")
    assert body.find("freejoint") is None
    assert summary["physics"]["passed"]


def test_check_reports_physics_and_catches_an_overlap(export_dir, tmp_path, capsys):
    main(["check", str(export_dir), "--no-validator", "--json"])
    report = json.loads(capsys.readouterr().out)
    # Only the physics problems are this test's (the convexity check of STL hulls is branch h18's).
    mjcf = str(export_dir / "mjcf" / "room.xml")
    assert [p for p in report["problems"] if p["file"] == mjcf] == []
    assert report["summary"]["physics"]["passed"]
    assert report["summary"]["physics"]["models"]["book_5"]["rest_moved_cm"] < 1.0
    # Sink the box 4 cm into the floor in a copy: check must name both models, and the rest test fails
    # too (the floor pushes it back up).
    from shutil import copytree

    bad = copytree(export_dir, tmp_path / "bad")
    path = bad / "mjcf" / "room.xml"
    tree = etree.parse(str(path))
    body = tree.find(".//body[@name='box_4']")
    pos = np.array(body.get("pos").split(), float) - [0, 0, 0.04]
    body.set("pos", " ".join(map(str, pos)))
    tree.write(str(path))
    assert main(["check", str(bad), "--no-validator"]) == 1
    err = capsys.readouterr().err
    spawn = [ln for ln in err.splitlines() if "spawn:" in ln]
    assert len(spawn) == 1 and "box_4" in spawn[0] and "floor" in spawn[0] and "interpenetrate" in spawn[0]
    assert "rest: box_4 moved" in err


def test_push_test_fails_when_the_target_is_too_heavy_to_move(export_dir):
    kinds = {"box_4": "thing", "floor": "stuff", "wall": "stuff"}
    res = physics.push_test(export_dir / "mjcf" / "room.xml", robot_mjcf, kinds, True, max_mass=10.0)
    assert res is not None and res.passed
    # Make the box 1000x heavier in a copy: the robot's capped force can no longer shift it.
    tree = etree.parse(str(export_dir / "mjcf" / "room.xml"))
    inertial = tree.find(".//body[@name='box_4']/inertial")
    inertial.set("mass", str(float(inertial.get("mass")) * 1000))
    heavy = export_dir / "mjcf" / "heavy_probe.xml"
    tree.write(str(heavy))
    try:
        res = physics.push_test(heavy, robot_mjcf, kinds, True, max_mass=1e9)
    finally:
        heavy.unlink()
    assert res is not None and not res.passed and res.target_moved_m < 0.05


def _fixed_world(tmp_path: Path, boxes: dict[str, tuple[list[float], list[float]]], wall_x: float) -> Path:
    """An MJCF like the export's: one fixed body per thing with one STL hull (model frame = world here, the
    body at the origin), and a wall: a 0.1 m box collider whose room-side face is the plane x = wall_x."""
    models = tmp_path / "models"
    assets, bodies = [], []
    for name, (size, centre) in boxes.items():
        (models / name / "meshes").mkdir(parents=True)
        trimesh.creation.box(size, trimesh.transformations.translation_matrix(centre)).export(
            models / name / "meshes" / "hull_0.stl"
        )
        assets.append(f'<mesh name="{name}__hull_0" file="{name}/meshes/hull_0.stl"/>')
        bodies.append(f'<body name="{name}" pos="0 0 0"><geom type="mesh" mesh="{name}__hull_0"/></body>')
    wall = f'<body name="wall" pos="{wall_x + 0.05} 2 1"><geom type="box" size="0.05 2 1"/></body>'
    xml = (
        f'<mujoco><compiler meshdir="../models"/><asset>{"".join(assets)}</asset>'
        f"<worldbody>{''.join(bodies)}{wall}</worldbody></mujoco>"
    )
    (tmp_path / "mjcf").mkdir()
    (tmp_path / "mjcf" / "room.xml").write_text(xml)
    return tmp_path / "mjcf" / "room.xml"


def test_two_fixed_things_overlapping_are_trimmed_not_moved(tmp_path):
    # A cabinet (x 0.75..1.25) and a shelf standing 30 mm into it (x 1.22..1.62), both fixed; a table whose
    # hull bulges 300 mm into the wall at x = 4 (beyond what a thing is moved: MAX_SHIFT_M).
    mjcf = _fixed_world(
        tmp_path,
        {
            "cabinet_1": ([0.5, 0.4, 0.9], [1.0, 1.0, 0.45]),
            "shelf_2": ([0.4, 0.3, 1.5], [1.42, 1.0, 0.75]),
            "table_3": ([1.0, 0.6, 0.7], [3.8, 2.0, 0.35]),
        },
        wall_x=4.0,
    )
    kinds = {"cabinet_1": "thing", "shelf_2": "thing", "table_3": "thing", "wall": "stuff"}
    shifts, before, warnings, trims = physics.resolve_spawn(mjcf, kinds)
    assert shifts == {}  # nothing moved: fixed things keep their scanned poses
    assert before["shelf_2"] == pytest.approx(0.03, abs=1e-3)
    assert before["table_3"] == pytest.approx(0.30, abs=1e-3)
    # The shelf (the higher one) lost its 30 mm inside the cabinet, the table its 300 mm inside the wall.
    assert trims == {"shelf_2": pytest.approx(0.03, abs=1e-3), "table_3": pytest.approx(0.30, abs=1e-3)}
    shelf = trimesh.load(tmp_path / "models" / "shelf_2" / "meshes" / "hull_0.stl")
    assert shelf.bounds[0][0] == pytest.approx(1.25 + 5e-4, abs=1e-4)  # now starts at the cabinet's face
    assert shelf.bounds[1][0] == pytest.approx(1.62, abs=1e-6)  # its far side untouched
    assert shelf.volume == pytest.approx((0.4 - 0.0305) * 0.3 * 1.5, rel=1e-3)
    table = trimesh.load(tmp_path / "models" / "table_3" / "meshes" / "hull_0.stl")
    assert table.bounds[1][0] == pytest.approx(4.0 - 5e-4, abs=1e-4)
    cabinet = trimesh.load(tmp_path / "models" / "cabinet_1" / "meshes" / "hull_0.stl")
    assert cabinet.volume == pytest.approx(0.5 * 0.4 * 0.9, rel=1e-6)  # the lower one is kept whole
    assert sum("collider trimmed" in w for w in warnings) == 2
    # Measured again from the files: no overlap is left above the 5 mm tolerance.
    figures, totals, _, failures = physics.run_physics(mjcf, None, kinds, resolve=False)
    assert totals["spawn_max_penetration_mm"] <= 1000 * physics.SPAWN_TOLERANCE_M and failures == []


def _resting_world(tmp_path: Path, hulls: list[tuple[np.ndarray, np.ndarray]], name: str) -> Path:
    """An MJCF like the export's: a 10 cm floor box whose top is z = 0 and one dynamic thing whose collider
    hulls (model frame = world here) are inline meshes, its inertia from its geoms (uniform density)."""
    assets, geoms = [], []
    for k, (v, f) in enumerate(hulls):
        vs = " ".join(f"{x:.6f}" for x in np.asarray(v).ravel())
        fs = " ".join(str(int(i)) for i in np.asarray(f).ravel())
        assets.append(f'<mesh name="{name}__hull_{k}" vertex="{vs}" face="{fs}"/>')
        geoms.append(f'<geom type="mesh" mesh="{name}__hull_{k}" density="300"/>')
    xml = (
        f'<mujoco><option timestep="0.002"/><default><geom friction="0.8 0.005 0.0001"/></default>'
        f"<asset>{''.join(assets)}</asset><worldbody>"
        f'<body name="floor" pos="0 0 -0.05"><geom type="box" size="2 2 0.05"/></body>'
        f'<body name="{name}" pos="0 0 0"><freejoint/>{"".join(geoms)}</body></worldbody></mujoco>'
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return path


def _open_ball(radius: float, cut: float, spur: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A scanned ball: a sphere of ``radius`` resting on z = 0 whose bottom ``cut`` (m) the camera never
    saw, plus one stray vertex down at z = 0 at ``spur`` (x, y) off its axis (what the scan reached)."""
    s = trimesh.creation.icosphere(3, radius=radius)
    v = s.vertices[s.vertices[:, 2] > cut - radius] + [0, 0, radius]
    return robust_convex_hull(np.vstack([v, [spur[0], spur[1], 0.0]]))


def test_a_scanned_ball_gets_a_flat_base_and_rests_where_it_was_scanned(tmp_path):
    ball = _open_ball(0.15, 0.03, (-0.095, -0.02))
    com = colliders.hulls_centre_of_mass([ball])
    assert colliders.base_margin([ball], com, 0.001) < 0  # it stands on the spur alone
    moved, turned = physics.rest_test(_resting_world(tmp_path / "a", [ball], "ball_1"))["ball_1"]
    assert moved > physics.REST_MOVE_M or turned > physics.REST_TURN_DEG  # as scanned it rolls away
    (flat,), depth = colliders.flat_base([ball])
    assert 0 < depth <= colliders.MAX_BASE_FRACTION * 0.3
    fv, ff = flat
    assert fv[:, 2].min() == pytest.approx(0.0, abs=1e-9)  # nothing below the support plane
    assert colliders.convexity_excess(fv, ff) <= colliders.CONVEX_TOL_M and colliders.is_closed(ff)
    # It keeps all of the scanned hull (every old vertex inside the new one) and stands on a disc that
    # holds its centre of mass with the margin.
    m = trimesh.Trimesh(fv, ff)
    assert (m.nearest.signed_distance(ball[0]) > -1e-6).all()
    assert colliders.base_margin([flat], com, 0.001) >= colliders.MIN_BASE_MARGIN_M
    moved, turned = physics.rest_test(_resting_world(tmp_path / "b", [flat], "ball_1"))["ball_1"]
    assert moved < physics.REST_MOVE_M and turned < physics.REST_TURN_DEG


def test_flat_base_squashes_a_tilted_underside_and_leaves_sound_or_hopeless_bases_alone():
    # A 40 x 30 x 25 cm box whose scanned underside is tilted by 8 mm across its length: it stands on one
    # edge, its centre of mass 20 cm from it. Flattened at the smallest depth that holds it: at 5 mm the
    # underside from x = -0.2 to 0.05 m is on the plane, 5 cm beyond the centre of mass.
    box = np.array([[x, y, z] for x in (-0.2, 0.2) for y in (-0.15, 0.15) for z in (0.0, 0.25)])
    box[(box[:, 2] == 0) & (box[:, 0] > 0), 2] = 0.008
    hull = robust_convex_hull(box)
    (flat,), depth = colliders.flat_base([hull])
    assert depth == 0.005
    low = flat[0][flat[0][:, 2] < 1e-9]
    assert low[:, 0].min() == pytest.approx(-0.2) and low[:, 0].max() == pytest.approx(0.05)
    assert low[:, 1].min() == pytest.approx(-0.15) and low[:, 1].max() == pytest.approx(0.15)
    # A box standing flat is left as it is.
    sound = robust_convex_hull(
        np.array([[x, y, z] for x in (-0.2, 0.2) for y in (-0.15, 0.15) for z in (0, 0.25)])
    )
    assert colliders.flat_base([sound])[1] == 0.0
    # A sign whose centre of mass is beyond its post's footprint at any depth is left to be pinned.
    post = robust_convex_hull(_box([0.04, 0.04, 0.6], [0, 0, 0.3]).vertices)
    board = robust_convex_hull(_box([0.5, 0.04, 0.2], [0.27, 0, 0.7]).vertices)
    hulls, depth = colliders.flat_base([post, board])
    assert depth == 0.0 and hulls[0] is post
