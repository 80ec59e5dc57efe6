"""simgen.folders: the panoptic mesh file round trip (fast path and the fallback for other PLY files)."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from simgen.folders import PanopticMesh, read_panoptic_mesh, write_panoptic_mesh


def _mesh(n_faces: int) -> PanopticMesh:
    rng = np.random.default_rng(0)
    n_vertices = max(3, n_faces)
    return PanopticMesh(
        rng.normal(size=(n_vertices, 3)).astype(np.float32),
        rng.integers(0, n_vertices, size=(n_faces, 3)),
        rng.integers(0, 256, size=(n_vertices, 3)),
        rng.integers(-1, 9, size=n_vertices),
        rng.integers(0, 40, size=n_vertices),
    )


@pytest.mark.parametrize("n_faces", [0, 1, 5000])
def test_panoptic_mesh_round_trip_is_exact(tmp_path, n_faces):
    mesh = _mesh(n_faces)
    write_panoptic_mesh(tmp_path / "m.ply", mesh)
    back = read_panoptic_mesh(tmp_path / "m.ply")
    assert back.faces.shape == (n_faces, 3)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    np.testing.assert_array_equal(back.semantic, mesh.semantic)
    np.testing.assert_array_equal(back.instance, mesh.instance)
    # no array is a view of the file's memory map (it would keep the file mapped)
    for array in (back.vertices, back.faces, back.colors, back.semantic, back.instance):
        while array is not None:
            assert not isinstance(array, np.memmap)
            array = array.base if isinstance(array, np.ndarray) else None


def test_a_ply_with_a_list_length_byte_other_than_three_reads_the_slow_way(tmp_path):
    """A triangle mesh written by another tool (list lengths as uint8 per face, ascii here) reads the same."""
    mesh = _mesh(50)
    vertex = np.empty(
        len(mesh.vertices), [("x", "f4"), ("y", "f4"), ("z", "f4"), ("semantic", "i4"), ("instance", "i4")]
    )
    vertex["x"], vertex["y"], vertex["z"] = mesh.vertices.T
    vertex["semantic"], vertex["instance"] = mesh.semantic, mesh.instance
    faces = np.empty(len(mesh.faces), [("vertex_indices", "O")])
    faces["vertex_indices"] = list(mesh.faces.astype(np.int32))
    ply = PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(faces, "face")], text=True)
    ply.write(str(tmp_path / "a.ply"))
    back = read_panoptic_mesh(tmp_path / "a.ply")
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.semantic, mesh.semantic)
    assert (back.colors == 200).all()  # no colour properties: the documented grey


def test_a_quad_in_a_binary_ply_falls_back_to_the_generic_reader(tmp_path):
    """One quad among triangles: the memory-mapped fast path refuses it, the generic reader reports it."""
    mesh = _mesh(10)
    write_panoptic_mesh(tmp_path / "m.ply", mesh)
    ply = PlyData.read(str(tmp_path / "m.ply"))
    faces = np.empty(3, [("vertex_indices", "O")])
    faces["vertex_indices"] = [
        np.array([0, 1, 2], np.int32),
        np.array([0, 1, 2, 3], np.int32),
        np.array([1, 2, 3], np.int32),
    ]
    PlyData([ply["vertex"], PlyElement.describe(faces, "face")], text=False).write(str(tmp_path / "q.ply"))
    with pytest.raises(ValueError):  # ragged faces cannot stack into (F, 3)
        read_panoptic_mesh(tmp_path / "q.ply")
