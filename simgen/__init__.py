"""simgen: scanned indoor scenes -> panoptic reconstructions -> simulator worlds and cameras.

The library API, one function per capability, arguments in one order (inputs, output, config)::

    import simgen

    scene = simgen.load_scene("scenes/room")                     # validated scene folder
    result = simgen.build("scenes/room", "builds/room")          # reconstruct + Gaussians + worlds
    report = simgen.check("builds/room")                         # libsdformat, colliders, MJCF, physics
    scores = simgen.evaluate("builds/room", "scenes/room")       # .pq_scene, .metrics (mIoU, Chamfer, ...)
    cam = simgen.load_render_scene("builds/room")                # RGB / depth / panoptic for any pose

Stage by stage: :func:`build` runs :mod:`simgen.recon` (fusion or neural), :func:`train_gaussians`
(:mod:`simgen.splat`) and :func:`export_worlds` (:mod:`simgen.export`); :func:`run_server` starts the
HTTP render server (:mod:`simgen.serve`). (``export`` and ``serve`` name the subpackages, so the
functions carry a verb of their own.) File names and folder layouts are :mod:`simgen.folders`; docs/architecture.md
draws the package map. Heavy modules (torch, trimesh) load only when a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use: `import simgen` stays cheap)
_API = {
    "load_scene": "simgen.data.scene",
    "Scene": "simgen.data.scene",
    "SceneError": "simgen.data.scene",
    "build": "simgen.pipeline",
    "BuildConfig": "simgen.pipeline",
    "BuildResult": "simgen.pipeline",
    "BuildError": "simgen.pipeline",
    "train_gaussians": "simgen.api",
    "export_worlds": "simgen.api",
    "check": "simgen.api",
    "evaluate": "simgen.api",
    "run_server": "simgen.api",
    "GaussiansResult": "simgen.api",
    "ExportResult": "simgen.api",
    "CheckResult": "simgen.api",
    "EvalResult": "simgen.api",
    "load_render_scene": "simgen.serve.scene",
    "RenderScene": "simgen.serve.scene",
    "PanopticMesh": "simgen.folders",
    "read_panoptic_mesh": "simgen.folders",
}

__all__ = [
    "BuildConfig",
    "BuildError",
    "BuildResult",
    "CheckResult",
    "EvalResult",
    "ExportResult",
    "GaussiansResult",
    "PanopticMesh",
    "RenderScene",
    "Scene",
    "SceneError",
    "__version__",
    "build",
    "check",
    "evaluate",
    "export_worlds",
    "load_render_scene",
    "load_scene",
    "read_panoptic_mesh",
    "run_server",
    "train_gaussians",
]
assert set(__all__) == {"__version__", *_API}

if TYPE_CHECKING:
    from simgen.api import (
        CheckResult,
        EvalResult,
        ExportResult,
        GaussiansResult,
        check,
        evaluate,
        export_worlds,
        run_server,
        train_gaussians,
    )
    from simgen.data.scene import Scene, SceneError, load_scene
    from simgen.folders import PanopticMesh, read_panoptic_mesh
    from simgen.pipeline import BuildConfig, BuildError, BuildResult, build
    from simgen.serve.scene import RenderScene, load_render_scene


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'simgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
