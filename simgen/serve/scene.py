"""The scene a render server holds: a panoptic mesh in the served world frame, ray cast per request.

:func:`load_render_scene` is the one place that decides *what* is rendered: the build's single
``panoptic_mesh.ply`` (moved into the export's floor-aligned Gazebo world frame when the folder holds
``alignment.json``), which is the geometry the exported per-object meshes are cut from, plus, for an
export with completed floor and walls, the export's ``stuff_fill.ply`` (simgen.export.stuff: closed
planar surfaces just behind the scanned floor / walls, labelled as their stuff part) appended after the
mesh's faces. The scan hides the fill where it exists, so only the scan's holes show it, as in the Gazebo
visuals. Switching to the exported per-model meshes later changes only this function.

RGB source (``rgb``: :data:`RGB_MODES`): ``"gaussians"`` renders the build's trained ``gaussians.ply``
(next to the panoptic mesh) with :func:`simgen.render.gaussians.render_gaussians`; ``"mesh"`` interpolates
the mesh's vertex colours; ``"auto"`` takes the Gaussians when the file exists. The Gaussians stay in the
build (scan) frame: a served camera-to-world is mapped back through ``world_from_scene^-1`` instead of
moving every Gaussian, which keeps their view-dependent colour exact. Depth and panoptic always come from
the mesh, the geometry Gazebo collides with.

Images (all ``(H, W)`` row-major, pixel centres, OpenCV camera axes, see :mod:`simgen.render.raycast`):

* depth: ``float32`` z-depth in metres, 0 where the ray hits nothing;
* panoptic: ``int32`` segment id per pixel, 0 = void (no hit, or no label). Things: the instance id
  (> 0). Pixels with a category but no instance (stuff, or an unassigned thing):
  ``STUFF_ID_OFFSET + category_id``. The segments in view come with the image as
  ``{id, category_id, category_name, isthing, instance}``;
* rgb: ``(H, W, 3) uint8``: mesh source, vertex colours interpolated (barycentric) at the hit point, black
  on a miss; Gaussian source, the splats composited over black, or over the fill's colour where the pixel's
  ray hits the fill (the Gaussians were trained on the scan and do not cover its holes).

Labels and colours follow :mod:`simgen.render.mesh` (the hit triangle's corner nearest to the hit point;
barycentric colour). Requests take the mesh backend (:attr:`RenderScene.mesh_backend`): :class:`FastCaster`,
an embree path that computes both from embree's own barycentrics in float32, the CPU z-buffer
(:class:`simgen.render.zbuffer.ZBufferCaster`) that finds the same first hits and shades them with the same
kernel, or the OpenGL rasterizer; :meth:`RenderScene.render_reference` renders through the project's
generic ray caster and :mod:`simgen.render.mesh`, and tests hold them to the same images.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen import folders
from simgen.data.camera import Intrinsics, look_at, opengl_to_opencv
from simgen.folders import (
    GAUSSIANS_FILE,
    INSTANCES_FILE,
    MESH_FILE,
    PanopticMesh,
    instance_records,
    read_panoptic_mesh,
)
from simgen.render.caster import FACE, OUTPUTS, STUFF_ID_OFFSET, FastCaster, segment_ids
from simgen.serve.config import RGB_MODES


class SceneLoadError(ValueError):
    """The folder cannot be served; the message names the file."""


@dataclass(frozen=True)
class CategoryInfo:
    id: int
    name: str
    isthing: bool


@dataclass
class RenderScene:
    """A read-only scene, shared by every request of one server process.

    Attributes:
        mesh: the panoptic mesh in the served world frame (metres).
        categories: {category id: CategoryInfo}.
        world_from_scene: ``(4, 4)`` transform applied to the build's mesh (identity without alignment).
        world_frame: ``"gazebo"`` (export's floor-aligned world, z up, floor z = 0) or ``"scene"``.
        source: the folder served.
        gaussians: the build's :class:`simgen.render.gaussians.GaussianScene` (build frame, CPU), rendered
            for ``rgb`` when set; None renders RGB from the mesh's vertex colours.
        gaussians_path: the ``gaussians.ply`` it was read from.
        fill_from: index of the first face of the export's completed stuff surfaces in ``mesh.faces`` (they
            are appended after the build's faces); None when none are drawn. ``fill_vertex_from``: the
            same for ``mesh.vertices``.
        filled: ``(F_fill,)`` bool per fill face: True where the scan never saw the cell (from the file).
        fill_path: the ``stuff_fill.ply`` they were read from.
    """

    mesh: PanopticMesh
    categories: dict[int, CategoryInfo]
    world_from_scene: np.ndarray
    world_frame: str
    source: Path
    gaussians: Any = None
    gaussians_path: Path | None = None
    _raycaster: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _default_camera: dict | None = field(default=None, repr=False)
    _fast: Any = field(default=None, repr=False)
    backend: str = "raycast"  # mesh outputs: simgen.render.raster.BACKENDS (raycast, zbuffer, raster, auto)
    gaussians_device: str = "auto"  # where the Gaussians render: cpu | cuda | auto (cuda with gsplat)
    _raster: Any = field(default=None, repr=False)
    _zbuffer: Any = field(default=None, repr=False)
    _backend_used: str | None = field(default=None, repr=False)
    fill_from: int | None = None
    fill_vertex_from: int | None = None
    filled: np.ndarray | None = None
    fill_path: Path | None = None

    def __post_init__(self) -> None:
        m = self.mesh
        # The table of every segment the scene can show, built once so a request only looks up.
        self.segments = self._segment_table()
        self.instances = [r.__dict__ for r in instance_records(m, self.categories)]
        for r in self.instances:
            r.pop("frames_observed", None)
        self.scene_from_world = np.linalg.inv(self.world_from_scene)

    @property
    def rgb_source(self) -> str:
        """``"gaussians"`` or ``"mesh"``: what ``rgb`` images are rendered from."""
        return "mesh" if self.gaussians is None else "gaussians"

    # -- loading --------------------------------------------------------------------------------------

    def warm(self) -> RenderScene:
        """Build the ray-casting BVH and the mesh backend now (call in the process that serves; neither
        embree nor a GL context is fork-safe), and render once so the compiled kernels are loaded (or, the
        first time on a machine, compiled) before the first request."""
        self.raycaster  # noqa: B018 -- property access builds it
        self.caster  # noqa: B018
        self._place_gaussians()
        cam = self.default_camera()  # renders through the backend: loads its numba kernels before requests
        if self.gaussians is not None:  # and the rasterizer's: a tiny render
            self.render_gaussian_rgb(Intrinsics(8.0, 8.0, 4.0, 3.0, 8, 6), cam["c2w_cv"])
        return self

    @property
    def raycaster(self):
        def make():
            from simgen.render.raycast import MeshRaycaster

            return MeshRaycaster(self.mesh.to_trimesh())

        return self._once("_raycaster", make)

    def _segment_table(self) -> dict[int, dict]:
        table: dict[int, dict] = {}
        m = self.mesh
        things = m.instance > 0
        if things.any():
            ids, inverse = np.unique(m.instance[things], return_inverse=True)
            sem = m.semantic[things]
            for k, iid in enumerate(ids.tolist()):
                s = sem[inverse == k]
                s = s[s >= 0]
                cid = int(np.bincount(s).argmax()) if s.size else -1
                table[iid] = self._segment(iid, cid, iid)
        for cid in np.unique(m.semantic[~things & (m.semantic >= 0)]).tolist():
            sid = STUFF_ID_OFFSET + cid
            table[sid] = self._segment(sid, cid, 0)
        return table

    def _segment(self, sid: int, cid: int, instance: int) -> dict:
        cat = self.categories.get(cid)
        return {
            "id": int(sid),
            "category_id": int(cid),
            "category_name": cat.name if cat else "unknown",
            "isthing": bool(cat.isthing) if cat else instance > 0,
            "instance": int(instance),
        }

    # -- rendering ------------------------------------------------------------------------------------

    def _once(self, attr: str, make: Callable[[], Any]) -> Any:
        """``self.<attr>``, made by ``make()`` on first use: request threads share one, built once."""
        if getattr(self, attr) is None:
            with self._lock:
                if getattr(self, attr) is None:
                    setattr(self, attr, make())
        return getattr(self, attr)

    @property
    def fast(self) -> FastCaster | None:
        """The embree hot path (None without embreex: :meth:`render` then uses the generic ray caster)."""

        def make() -> FastCaster | bool:
            try:
                return FastCaster(self.mesh)
            except ImportError:
                return False  # tried: not None, so it is not tried again

        return self._once("_fast", make) or None

    def _place_gaussians(self) -> None:
        """Move the Gaussians to the GPU when asked (``cuda``) or when ``auto`` finds CUDA and gsplat: the
        rasterizer then runs gsplat's kernels. Called in the serving process (CUDA does not survive fork)."""
        if self.gaussians is None or self.gaussians_device == "cpu" or self.gaussians.means.is_cuda:
            return
        import torch

        from simgen.render.rasterize import gsplat_available

        if self.gaussians_device == "cuda" and not torch.cuda.is_available():
            raise SceneLoadError("gaussians_device='cuda' but torch sees no CUDA device")
        if self.gaussians_device == "cuda" or (torch.cuda.is_available() and gsplat_available()):
            self.gaussians = self.gaussians.to("cuda")

    @property
    def mesh_backend(self) -> str:
        """``"raycast"`` (embree), ``"zbuffer"`` (compiled CPU z-buffer) or ``"raster"`` (OpenGL): what
        renders depth, panoptic and mesh RGB here. ``backend="auto"`` is resolved on first use, in the
        process that renders (a GL context does not survive ``fork``): raster where a hardware GL device
        answers, else zbuffer where numba imports, else raycast."""

        def make() -> str:
            from simgen.render.raster import resolve_backend

            return resolve_backend(self.backend)

        return self._once("_backend_used", make)

    @property
    def raster(self):
        """The OpenGL rasterizer (:class:`simgen.render.raster.GLRasterizer`), built on first use."""

        def make():
            from simgen.render.raster import GLRasterizer

            return GLRasterizer(self.mesh)

        return self._once("_raster", make)

    @property
    def zbuffer(self):
        """The compiled CPU z-buffer (:class:`simgen.render.zbuffer.ZBufferCaster`), built on first use."""

        def make():
            from simgen.render.zbuffer import ZBufferCaster

            return ZBufferCaster(self.mesh)

        return self._once("_zbuffer", make)

    @property
    def caster(self):
        """What renders the mesh outputs under :attr:`mesh_backend` (``render(K, c2w_cv, outputs)``), or
        None for raycast without embreex (:meth:`render` then uses the generic ray caster)."""
        backend = self.mesh_backend
        if backend == "raster":
            return self.raster
        if backend == "zbuffer":
            return self.zbuffer
        return self.fast

    def render(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, Any]:
        """Render the requested outputs for one camera.

        Args:
            K: intrinsics (image size ``K.height x K.width``).
            c2w_cv: ``(4, 4)`` camera-to-world, OpenCV axes, served world frame.
            outputs: any of ``"rgb"``, ``"depth"``, ``"panoptic"``.

        Returns:
            ``{"rgb": (H, W, 3) uint8, "depth": (H, W) float32 metres, "panoptic": (H, W) int32,
            "segments": [segment dicts in view, by id]}`` -- only the keys requested (segments with
            panoptic).
        """
        fast = self.caster
        if fast is None:
            return self.render_reference(K, c2w_cv, outputs)
        mesh_outputs = self._mesh_outputs(outputs)
        out = fast.render(K, c2w_cv, mesh_outputs) if mesh_outputs else {}
        if "panoptic" in out:
            ids = out.pop("segment_ids", None)  # the compiled caster lists them; else sort the image
            ids = np.unique(out["panoptic"]) if ids is None else ids
            out["segments"] = [self.segments[i] for i in ids.tolist() if i in self.segments]
        if "rgb" in outputs and self.gaussians is not None:
            backdrop = self._fill_backdrop(out.pop("rgb", None), out.pop(FACE, None))
            out["rgb"] = self.render_gaussian_rgb(K, c2w_cv, backdrop)
        return out

    def _mesh_outputs(self, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if self.gaussians is None:
            return tuple(outputs)
        mesh = tuple(o for o in outputs if o != "rgb")
        if "rgb" in outputs and self.fill_from is not None:
            mesh += ("rgb", FACE)  # the fill's colour, the Gaussians' backdrop where the ray hits the fill
        return mesh

    def _fill_backdrop(self, mesh_rgb: np.ndarray | None, face: np.ndarray | None) -> np.ndarray | None:
        """``(H, W, 3) uint8``: the mesh colour where the ray's first hit is a fill face, black elsewhere
        (None when the scene has no fill)."""
        if mesh_rgb is None or face is None or self.fill_from is None:
            return None
        return np.where((face >= self.fill_from)[..., None], mesh_rgb, 0).astype(np.uint8)

    def render_gaussian_rgb(
        self, K: Intrinsics, c2w_cv: np.ndarray, backdrop: np.ndarray | None = None
    ) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB of the Gaussians for a camera-to-world ``c2w_cv`` ``(4, 4)`` (OpenCV axes)
        in the served world frame, composited over ``backdrop`` ``(H, W, 3) uint8`` (default black): a
        pixel is ``gaussians + (1 - alpha) * backdrop``, so the backdrop shows where no splat covers it."""
        from simgen.render.gaussians import render_gaussians

        # The Gaussians live in the build frame: move the camera there (exactly the inverse of what
        # load_render_scene applied to the mesh), not the Gaussians here.
        c2w_scene = self.scene_from_world @ np.asarray(c2w_cv, dtype=np.float64)
        Kmat = np.array([[K.fx, 0.0, K.cx], [0.0, K.fy, K.cy], [0.0, 0.0, 1.0]])
        if backdrop is None or not backdrop.any():  # nothing behind: the splats over black, as rendered
            alone = render_gaussians(self.gaussians, Kmat, c2w_scene, K.width, K.height, outputs=("rgb",))
            return alone["rgb"]
        g = render_gaussians(self.gaussians, Kmat, c2w_scene, K.width, K.height, outputs=("rgb", "alpha"))
        # The rasterizer composites over black, i.e. its rgb is alpha-premultiplied: adding the backdrop
        # times the remaining transmittance is compositing over the backdrop instead.
        mixed = g["rgb"].astype(np.float32) + (1.0 - g["alpha"][..., None]) * backdrop.astype(np.float32)
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    def render_reference(
        self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS
    ) -> dict[str, Any]:
        """:meth:`render` through the project's generic ray caster and :mod:`simgen.render.mesh` (what
        ``simgen eval`` renders); the reference the embree hot path is tested against."""
        from simgen.render.mesh import colors_at_hits, labels_at_hits

        hits = self.raycaster.cast(K, c2w_cv)
        out: dict[str, Any] = {}
        if "rgb" in outputs and self.gaussians is not None:
            backdrop = None
            if self.fill_from is not None:
                backdrop = self._fill_backdrop(colors_at_hits(self.mesh, hits), np.asarray(hits.face))
            out["rgb"] = self.render_gaussian_rgb(K, c2w_cv, backdrop)
        if "depth" in outputs:
            out["depth"] = hits.depth
        if "panoptic" in outputs:
            semantic, instance = labels_at_hits(self.mesh, hits)
            pan = segment_ids(semantic, instance)
            out["panoptic"] = pan
            out["segments"] = [self.segments[i] for i in np.unique(pan).tolist() if i in self.segments]
        if "rgb" in outputs and "rgb" not in out:
            out["rgb"] = colors_at_hits(self.mesh, hits)
        return out

    # -- description ----------------------------------------------------------------------------------

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        v = self.mesh.vertices
        return v.min(0).astype(np.float64), v.max(0).astype(np.float64)

    def default_camera(self) -> dict:
        """A camera that sees the scene: ``{"c2w_cv": (4, 4), "width", "height", "hfov_deg"}``.

        Candidates (z is up): eye height in the middle looking along 8 headings, and the 4 upper corners
        of the bounds looking at the centre; the one seeing the most instances and the most surface
        farther than 0.3 m wins (near hits mean the camera sits inside an object).
        """
        if self._default_camera is not None:
            return self._default_camera
        lo, hi = self.bounds()
        centre = (lo + hi) / 2
        size = np.maximum(hi - lo, 1e-3)
        eye_z = lo[2] + min(1.5, 0.6 * size[2])
        candidates = []
        for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            eye = np.array([centre[0], centre[1], eye_z])
            target = eye + np.array([np.cos(a), np.sin(a), -0.25])
            candidates.append(look_at(eye, target))
        for sx in (-1, 1):
            for sy in (-1, 1):
                eye = centre + 0.45 * size * np.array([sx, sy, 0.0])
                eye[2] = lo[2] + 0.9 * size[2]
                candidates.append(look_at(eye, centre))
        K = Intrinsics(32.0, 32.0, 32.0, 24.0, 64, 48)  # 90 deg horizontal field of view
        best, best_score = None, -np.inf
        for c2w_gl in candidates:
            c2w = opengl_to_opencv(c2w_gl)
            out = self.render(K, c2w, ("depth", "panoptic"))
            d = out["depth"]
            things = sum(1 for s in out["segments"] if s["instance"] > 0)
            # Seen surface, minus surface too close (inside an object), plus every instance in view.
            score = float((d > 0.3).mean() - 2.0 * ((d > 0) & (d <= 0.3)).mean()) + 0.25 * things
            if score > best_score:
                best, best_score = c2w, score
        self._default_camera = {"c2w_cv": best, "width": 640, "height": 480, "hfov_deg": 90.0}
        return self._default_camera


def _read_categories(folder: Path, mesh: PanopticMesh) -> dict[int, CategoryInfo]:
    path = folder / INSTANCES_FILE
    cats: dict[int, CategoryInfo] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            for c in data.get("categories", []):
                cats[int(c["id"])] = CategoryInfo(int(c["id"]), str(c["name"]), bool(c["isthing"]))
        except (ValueError, KeyError, TypeError) as e:
            raise SceneLoadError(f"{path}: cannot read categories ({e})") from e
    # Categories the mesh uses but the file does not name still get an entry.
    for cid in np.unique(mesh.semantic[mesh.semantic >= 0]).tolist():
        if cid not in cats:
            isthing = bool((mesh.instance[mesh.semantic == cid] > 0).any())
            cats[cid] = CategoryInfo(cid, f"class_{cid}", isthing)
    return cats


def _read_alignment(folder: Path) -> np.ndarray | None:
    try:
        T = folders.read_alignment(folder)
    except folders.FolderError as e:
        raise SceneLoadError(str(e)) from e
    from simgen.data.camera import is_rigid

    if T is not None and not is_rigid(T):
        raise SceneLoadError(
            f"{folder / folders.ALIGNMENT_FILE}: 'world_from_scene' is not a rigid 4x4 transform"
        )
    return T


def _mesh_folder(folder: Path) -> Path:
    try:
        return folders.mesh_folder(folder)
    except folders.FolderError as e:
        raise SceneLoadError(str(e)) from e


def _check_same_build(gauss_path: Path, mesh_dir: Path) -> str | None:
    """Why ``gauss_path`` must not be paired with the mesh in ``mesh_dir`` (None when it belongs to it).

    Importing torch here is avoided: the build id is read from the PLY header."""
    theirs, ours = folders.ply_build_id(gauss_path), folders.build_id(mesh_dir)
    if theirs is None:
        return f"{gauss_path} names no build (not written by this build's simgen gaussians stage)"
    if ours is None:
        return (
            f"{mesh_dir / folders.BUILD_FILE} has no build id, so {gauss_path} cannot be matched to its mesh"
        )
    if theirs != ours:
        return f"{gauss_path} was trained on build {theirs}, but {mesh_dir / MESH_FILE} is build {ours}"
    return None


def gaussians_file(out_dir: str | Path, rgb: str = "auto") -> Path | None:
    """The ``gaussians.ply`` to render RGB from under RGB mode ``rgb`` (:data:`RGB_MODES`), or None for
    mesh colours. Looks next to the panoptic mesh (the build folder) and only checks files, so a caller can
    decide on torch settings before anything is loaded.

    A ``gaussians.ply`` whose header names another build than ``build.json`` (or none) is never paired
    with the mesh: mode ``auto`` warns and uses mesh colours.

    Raises:
        SceneLoadError: ``rgb="gaussians"`` and the file is missing or from another build (naming its
            path), an unknown mode, or no panoptic mesh.
    """
    if rgb not in RGB_MODES:
        raise SceneLoadError(f"rgb mode {rgb!r} is not one of {', '.join(RGB_MODES)}")
    folder = Path(out_dir)
    if not folder.is_dir():
        raise SceneLoadError(f"{folder}: not a folder")
    mesh_dir = _mesh_folder(folder)
    path = mesh_dir / GAUSSIANS_FILE
    if rgb == "mesh":
        return None
    if path.is_file():
        foreign = _check_same_build(path, mesh_dir)
        if foreign is None:
            return path
        if rgb == "gaussians":
            raise SceneLoadError(f"refusing to pair a mesh with another build's Gaussians: {foreign}")
        import warnings

        warnings.warn(f"serving mesh colours: {foreign}", stacklevel=2)
        return None
    if rgb == "gaussians":
        raise SceneLoadError(
            f"{path}: missing, and --rgb gaussians needs it (train Gaussians in the build, or serve with "
            "--rgb mesh / auto for vertex colours)"
        )
    return None


def load_render_scene(
    out_dir: str | Path, warm: bool = True, rgb: str = "auto", backend: str = "raycast"
) -> RenderScene:
    """Load a build or export folder for serving.

    Reads ``panoptic_mesh.ply`` (+ ``instances.json`` for category names) from ``out_dir`` -- or, for an
    export written outside its build folder, from the ``build_dir`` recorded in ``export.json`` -- and,
    when ``out_dir/alignment.json`` exists (an export), moves the mesh into the export's floor-aligned
    world frame (``world_from_scene``: z up, floor at z = 0), the frame Gazebo poses are in.

    Args:
        out_dir: build folder or export folder.
        warm: build the ray-casting BVH now. Pass False in a parent process that forks workers (embree's
            thread pool does not survive ``fork``); each worker then calls :meth:`RenderScene.warm`.
        rgb: RGB source, one of :data:`RGB_MODES`: ``"auto"`` renders ``gaussians.ply`` (next to the
            panoptic mesh) when it exists, else mesh colours; ``"gaussians"`` requires the file;
            ``"mesh"`` never reads it.
        backend: what renders the mesh outputs: ``"raycast"`` (embree), ``"zbuffer"`` (compiled CPU
            z-buffer, numba), ``"raster"`` (OpenGL through moderngl; headless EGL), ``"auto"`` (raster where
            a hardware GL device answers, else zbuffer where numba imports, else raycast).

    Raises:
        SceneLoadError: naming the missing or unreadable file.
    """
    folder = Path(out_dir)
    gauss_path = gaussians_file(folder, rgb)
    mesh_dir = _mesh_folder(folder)
    mesh_path = mesh_dir / MESH_FILE
    try:
        mesh = read_panoptic_mesh(mesh_path)
    except Exception as e:  # plyfile raises many types on corrupt input; report them all the same way
        raise SceneLoadError(f"{mesh_path}: cannot read ({e})") from e
    if len(mesh.faces) == 0:
        raise SceneLoadError(f"{mesh_path}: the mesh has no faces")
    if len(mesh.instance) and int(mesh.instance.max()) >= STUFF_ID_OFFSET:
        raise SceneLoadError(f"{mesh_path}: instance ids must be < {STUFF_ID_OFFSET} (segment id encoding)")
    T = _read_alignment(folder)
    frame = "scene"
    if T is None:
        T = np.eye(4)
    else:
        v = mesh.vertices.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        mesh = PanopticMesh(v, mesh.faces, mesh.colors, mesh.semantic, mesh.instance)
        frame = "gazebo"
    fill = _read_fill(folder, mesh_dir, frame)
    fill_from = fill_vertex_from = filled = None
    if fill is not None:
        fmesh, filled = fill
        fill_from, fill_vertex_from = len(mesh.faces), len(mesh.vertices)
        mesh = PanopticMesh(
            np.concatenate([mesh.vertices, fmesh.vertices]),
            np.concatenate([mesh.faces, fmesh.faces + len(mesh.vertices)]),
            np.concatenate([mesh.colors, fmesh.colors]),
            np.concatenate([mesh.semantic, fmesh.semantic]),
            np.concatenate([mesh.instance, fmesh.instance]),
        )
    gaussians = None
    if gauss_path is not None:
        from simgen.render.gaussians import load_ply

        try:
            gaussians = load_ply(gauss_path)
        except Exception as e:  # plyfile / ValueError on a corrupt or foreign file
            raise SceneLoadError(f"{gauss_path}: cannot read Gaussians ({e})") from e
        if len(gaussians) == 0:
            raise SceneLoadError(f"{gauss_path}: holds no Gaussians")
    from simgen.render.raster import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    scene = RenderScene(
        mesh, _read_categories(mesh_dir, mesh), T, frame, folder.resolve(), gaussians, gauss_path
    )
    scene.backend = backend
    if fill is not None:
        scene.fill_from, scene.fill_vertex_from = fill_from, fill_vertex_from
        scene.filled, scene.fill_path = filled, folder / folders.STUFF_FILL_FILE
    return scene.warm() if warm else scene


def _read_fill(folder: Path, mesh_dir: Path, frame: str) -> tuple[PanopticMesh, np.ndarray] | None:
    """The export's completed stuff surfaces (``stuff_fill.ply``, world frame) and their ``filled`` mask,
    or None when ``folder`` has none or they belong to another build (a warning says so)."""
    path = folder / folders.STUFF_FILL_FILE
    if not path.is_file():
        return None
    if frame != "gazebo":  # the fill is in the export's world frame; without the alignment it would float
        raise SceneLoadError(
            f"{path}: present without {folder / folders.ALIGNMENT_FILE} (export folder is incomplete)"
        )
    try:
        fill = folders.read_stuff_fill(path)
    except folders.FolderError as e:
        raise SceneLoadError(str(e)) from e
    theirs, ours = folders.ply_build_id(path), folders.build_id(mesh_dir)
    if theirs is not None and ours is not None and theirs != ours:
        import warnings

        warnings.warn(
            f"serving without the completed floor / walls: {path} was exported from build {theirs}, but "
            f"{mesh_dir / MESH_FILE} is build {ours}",
            stacklevel=3,
        )
        return None
    return fill


def served_void(
    out_dir: str | Path,
    n: int = 40,
    seed: int = 0,
    width: int = 80,
    height: int = 60,
    hfov_deg: float = 60.0,
    backend: str = "raycast",
) -> dict | None:
    """Void figures of what the render server shows a robot camera in the scanned rooms.

    ``n`` level cameras (:func:`simgen.export.stuff.level_poses`: 0.3 m above random *scanned* floor
    vertices, i.e. the build's floor, not the fill; random yaw; ``width`` x ``height`` pixels, ``hfov_deg``
    horizontal field of view) rendered by :meth:`RenderScene.render` exactly as a request would be; void is
    the fraction of pixels that see nothing: depth 0 and panoptic 0.

    Returns:
        ``{"poses", "camera", "void_mean_percent", "poses_over_5_percent", "fill"}`` (``fill``: whether the
        export's completed surfaces were drawn), or None when the served mesh has no floor.

    Raises:
        SceneLoadError: the folder cannot be served (naming the file).
    """
    from simgen.export.split import is_floor
    from simgen.export.stuff import level_poses

    scene = load_render_scene(out_dir, rgb="mesh", backend=backend)
    m = scene.mesh
    nv = scene.fill_vertex_from if scene.fill_vertex_from is not None else len(m.vertices)
    floor_ids = [c.id for c in scene.categories.values() if is_floor(c.name) and not c.isthing]
    floor = np.isin(m.semantic[:nv], floor_ids) & (m.instance[:nv] <= 0)
    if not floor.any():
        return None
    f = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    K = Intrinsics(f, f, width / 2, height / 2, width, height)
    void = []
    for pos, yaw in level_poses(m.vertices[:nv][floor].astype(np.float64), n, seed=seed):
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        left = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = -left, [0.0, 0.0, -1.0], fwd, pos  # OpenCV axes
        img = scene.render(K, c2w, ("depth", "panoptic"))
        # A pixel of a camera placed exactly on a scanned surface (a floor vertex under a wall) hits it at
        # distance 0, depth 0 too; its label tells it from a pixel that sees nothing.
        void.append(float(((img["depth"] <= 0) & (img["panoptic"] == 0)).mean()))
    v = np.asarray(void)
    return {
        "poses": int(n),
        "camera": f"level, 0.3 m above random scanned floor vertices, {hfov_deg:g} deg hfov, {width} x {height} "
        f"pixels, through the render server ({scene.mesh_backend})",
        "void_mean_percent": round(100 * float(v.mean()), 2),
        "poses_over_5_percent": round(100 * float((v > 0.05).mean()), 1),
        "fill": scene.fill_from is not None,
    }
