"""Mesh clean-up of each part with pymeshlab: small pieces, small holes, quadric decimation."""

from __future__ import annotations

import numpy as np


def _to_arrays(m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.asarray(m.vertex_matrix(), dtype=np.float64)
    f = np.asarray(m.face_matrix(), dtype=np.int64).reshape(-1, 3)
    c = np.asarray(m.vertex_color_matrix(), dtype=np.float64)
    colors = (
        np.clip(np.round(c[:, :3] * 255), 0, 255).astype(np.uint8) if len(c) else np.zeros((0, 3), np.uint8)
    )
    return v, f, colors


def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray,
    face_budget: int,
    collider_faces: int,
    min_piece_fraction: float = 0.02,
    max_hole_edges: int = 30,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """Clean one part and make its visual and collider versions.

    Args:
        vertices: (N, 3) float64; faces: (F, 3) int; colors: (N, 3) uint8.
        face_budget: max faces of the visual mesh; collider_faces: faces of the mesh given to CoACD.
    Returns:
        ((vertices, faces, colors) visual, (vertices, faces) collider input, notes) -- notes say what
        could not be done (e.g. hole closing on a non-manifold piece).
    """
    import pymeshlab

    notes: list[str] = []
    rgba = np.concatenate([np.asarray(colors, np.float64) / 255.0, np.ones((len(colors), 1))], axis=1)
    ms = pymeshlab.MeshSet()
    original = pymeshlab.Mesh(
        vertex_matrix=np.asarray(vertices, np.float64),
        face_matrix=np.asarray(faces, np.int32),
        v_color_matrix=rgba,
    )
    ms.add_mesh(original)
    ms.meshing_remove_duplicate_faces()
    ms.meshing_remove_null_faces()
    ms.meshing_remove_unreferenced_vertices()
    n_faces = ms.current_mesh().face_number()
    min_size = int(min_piece_fraction * n_faces)
    if min_size > 1:
        ms.meshing_remove_connected_component_by_face_number(mincomponentsize=min_size, removeunref=True)
        if ms.current_mesh().face_number() == 0:  # all pieces small: keep them rather than nothing
            notes.append("every connected piece was below the small-piece limit; kept them all")
            ms.add_mesh(original)
    removed = n_faces - ms.current_mesh().face_number()
    if removed > 0:
        notes.append(f"removed {removed} faces in small disconnected pieces")
    if max_hole_edges > 2:
        try:
            ms.meshing_repair_non_manifold_edges()
            ms.meshing_close_holes(maxholesize=int(max_hole_edges), newfaceselected=False)
        except pymeshlab.PyMeshLabException as e:  # non-manifold leftovers: holes stay open
            notes.append(f"hole closing skipped ({str(e).strip()[:80]})")
    if ms.current_mesh().face_number() > face_budget:
        ms.meshing_decimation_quadric_edge_collapse(
            targetfacenum=int(face_budget), preservenormal=True, planarquadric=True, autoclean=True
        )
    visual = _to_arrays(ms.current_mesh())
    if ms.current_mesh().face_number() > collider_faces:
        ms.meshing_decimation_quadric_edge_collapse(
            targetfacenum=int(collider_faces), preservenormal=True, planarquadric=True, autoclean=True
        )
    # The collider input should be a closed solid: CoACD's own remeshing of open shells is slow and turns
    # them into thin hollow walls. Scanned objects are usually open only at a few boundary loops (where
    # they touch the floor or were not seen), which hole filling closes.
    try:
        ms.meshing_merge_close_vertices(threshold=pymeshlab.PercentageValue(0.05))
        ms.meshing_repair_non_manifold_edges()
        ms.meshing_close_holes(maxholesize=1_000_000, newfaceselected=False, selfintersection=False)
    except pymeshlab.PyMeshLabException as e:
        notes.append(f"collider hole filling skipped ({str(e).strip()[:80]})")
    cv, cf, _ = _to_arrays(ms.current_mesh())
    return visual, (cv, cf), notes
