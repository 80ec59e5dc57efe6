"""Exports for the simulator tests: the box scene and a synthetic preset's exact GT mesh, exported by the
real pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simgen.export.pipeline import run_export
from simgen.folders import PanopticMesh


def box_export(root: Path) -> Path:
    """The box scene (tests/helpers/serve_scenes.py) built and exported, export folder apart from the build."""
    from helpers.serve_scenes import make_build

    build = make_build(root / "build")
    run_export(build, root / "export")
    return root / "export"


def synthetic_export(root: Path, preset: str) -> Path:
    """A synthetic scene's exact GT mesh as a build (things keep their GT segment id as instance), exported
    by the real pipeline (small textures: appearance is not under test here)."""
    from simgen.data import io
    from simgen.export.config import ExportConfig
    from simgen.folders import instance_records, write_instances, write_panoptic_mesh
    from simgen.synth import THING_IDS, make_scene, preset_config
    from simgen.synth.layout import CATEGORIES

    geom, _ = make_scene(preset_config(preset, 0))
    m = geom.mesh
    corner = np.zeros(len(m.vertices), np.int64)
    corner[m.faces.reshape(-1)] = np.repeat(np.arange(len(m.faces)), 3)
    seg = geom.face_segment[corner]
    sem = np.array([geom.segments[int(s)] for s in seg])
    colors = np.asarray(m.visual.vertex_colors)[:, :3]
    mesh = PanopticMesh(m.vertices, m.faces, colors, sem, np.where(np.isin(sem, THING_IDS), seg, 0))
    build = root / "build"
    build.mkdir(parents=True)
    categories = {c.id: c for c in CATEGORIES}
    write_panoptic_mesh(build / "panoptic_mesh.ply", mesh)
    write_instances(build / "instances.json", instance_records(mesh, categories), categories)
    io.write_json(build / "build.json", {"id": f"test-{preset}", "method": "test"})
    run_export(build, root / "export", ExportConfig(texture_size=64, quiet=True))
    return root / "export"
