"""The scene a render server holds: a panoptic mesh in the served world frame, ray cast per request.

:func:`load_render_scene` is the one place that decides *what* is rendered. Today it is the build's
single ``panoptic_mesh.ply`` (moved into the export's floor-aligned Gazebo world frame when the folder
holds ``alignment.json``), which is the geometry the exported per-object meshes are cut from. Switching
to the exported per-model meshes later changes only this function.

RGB source (``rgb``: :data:`RGB_MODES`): ``"gaussians"`` renders the build's trained ``gaussians.ply``
(next to the panoptic mesh) with :func:`simgen.splat.train.render_gaussians`; ``"mesh"`` interpolates
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
  on a miss; Gaussian source, the splats composited over black.

Labels and colours follow :mod:`simgen.eval.render` (the hit triangle's corner nearest to the hit point;
barycentric colour). Requests take :class:`FastCaster`, an embree path that computes both from embree's
own barycentrics in float32; :meth:`RenderScene.render_reference` renders through the project's generic
ray caster and :mod:`simgen.eval.render`, and tests hold the two to the same images.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.build.output import INSTANCES_FILE, MESH_FILE, PanopticMesh, instance_records, read_panoptic_mesh
from simgen.data.camera import Intrinsics, look_at, opengl_to_opencv

STUFF_ID_OFFSET = 1_000_000  # segment id of a category-only region = STUFF_ID_OFFSET + category_id
ALIGNMENT_FILE = "alignment.json"  # written by simgen export (simgen/export/pipeline.py)
EXPORT_FILE = "export.json"  # simgen export's summary; names the build folder it came from
OUTPUTS = ("rgb", "depth", "panoptic")
RGB_MODES = ("auto", "gaussians", "mesh")
# = simgen.splat.gaussians.GAUSSIANS_FILE, repeated so a mesh-only server never imports torch.
GAUSSIANS_FILE = "gaussians.ply"


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
        gaussians: the build's :class:`simgen.splat.gaussians.GaussianScene` (build frame, CPU), rendered
            for ``rgb`` when set; None renders RGB from the mesh's vertex colours.
        gaussians_path: the ``gaussians.ply`` it was read from.
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
        """Build the ray-casting BVH now (call in the process that serves; it is not fork-safe)."""
        self.raycaster  # noqa: B018 -- property access builds it
        self.fast  # noqa: B018
        self.default_camera()
        return self

    @property
    def raycaster(self):
        if self._raycaster is None:
            with self._lock:
                if self._raycaster is None:
                    from simgen.render.raycast import MeshRaycaster

                    self._raycaster = MeshRaycaster(self.mesh.to_trimesh())
        return self._raycaster

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

    @property
    def fast(self) -> FastCaster | None:
        """The embree hot path (None without embreex: :meth:`render` then uses the generic ray caster)."""
        if self._fast is None:
            with self._lock:
                if self._fast is None:
                    try:
                        self._fast = FastCaster(self.mesh)
                    except ImportError:
                        self._fast = False
        return self._fast or None

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
        fast = self.fast
        if fast is None:
            return self.render_reference(K, c2w_cv, outputs)
        mesh_outputs = self._mesh_outputs(outputs)
        out = fast.render(K, c2w_cv, mesh_outputs) if mesh_outputs else {}
        if "panoptic" in out:
            out["segments"] = [
                self.segments[i] for i in np.unique(out["panoptic"]).tolist() if i in self.segments
            ]
        if "rgb" in outputs and "rgb" not in mesh_outputs:
            out["rgb"] = self.render_gaussian_rgb(K, c2w_cv)
        return out

    def _mesh_outputs(self, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if self.gaussians is None:
            return tuple(outputs)
        return tuple(o for o in outputs if o != "rgb")

    def render_gaussian_rgb(self, K: Intrinsics, c2w_cv: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB of the Gaussians for a camera-to-world ``c2w_cv`` ``(4, 4)`` (OpenCV axes)
        in the served world frame; black where no splat covers a pixel."""
        from simgen.splat.train import render_gaussians

        # The Gaussians live in the build frame: move the camera there (exactly the inverse of what
        # load_render_scene applied to the mesh), not the Gaussians here.
        c2w_scene = self.scene_from_world @ np.asarray(c2w_cv, dtype=np.float64)
        Kmat = np.array([[K.fx, 0.0, K.cx], [0.0, K.fy, K.cy], [0.0, 0.0, 1.0]])
        return render_gaussians(self.gaussians, Kmat, c2w_scene, K.width, K.height, outputs=("rgb",))["rgb"]

    def render_reference(
        self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS
    ) -> dict[str, Any]:
        """:meth:`render` through the project's generic ray caster and :mod:`simgen.eval.render` (what
        ``simgen eval`` renders); the reference the embree hot path is tested against."""
        from simgen.eval.render import colors_at_hits, labels_at_hits

        hits = self.raycaster.cast(K, c2w_cv)
        out: dict[str, Any] = {}
        if "rgb" in outputs and self.gaussians is not None:
            out["rgb"] = self.render_gaussian_rgb(K, c2w_cv)
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


class FastCaster:
    """The server's render hot path: embree first hits with barycentric coordinates, float32 throughout.

    :class:`simgen.render.raycast.MeshRaycaster` re-solves every hit in float64 and
    :mod:`simgen.eval.render` recomputes barycentrics from the hit point, which together cost ~4x the
    embree traversal itself at 320x240. Here embree's own ``u, v`` give the colour weights, and per-face
    tables (corner positions, colours, segment ids) make every output one gather. Labels follow the
    same rule as :func:`simgen.eval.render.labels_at_hits` (the hit triangle's corner nearest to the
    hit point); tests check the two paths agree.

    Args:
        mesh: panoptic mesh in the served world frame.

    Raises:
        ImportError: embreex is not installed.
    """

    def __init__(self, mesh: PanopticMesh):
        from embreex import rtcore_scene
        from embreex.mesh_construction import TriangleMesh

        faces = np.asarray(mesh.faces, dtype=np.int64)
        v32 = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
        self._scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self._scene, vertices=v32, indices=faces.astype(np.int32))
        # Squared distance from a point with barycentrics (w0, w1, w2) to each corner, as quadratic forms of
        # the other two weights: |P - A|^2 = w1^2 |AB|^2 + w2^2 |AC|^2 + 2 w1 w2 AB.AC (and cyclically), so
        # the nearest corner needs 9 numbers per face instead of the hit point and 9 coordinates.
        a, b, c = (np.asarray(mesh.vertices, dtype=np.float64)[faces[:, k]] for k in range(3))

        def dot(x, y):
            return (x * y).sum(1)

        ab, ac, bc = b - a, c - a, c - b
        self.gram = np.stack(
            [
                dot(ab, ab),
                dot(ac, ac),
                dot(ab, ac),
                dot(ab, ab),
                dot(bc, bc),
                -dot(ab, bc),
                dot(ac, ac),
                dot(bc, bc),
                dot(ac, bc),
            ],
            1,
        ).astype(np.float32)  # (F, 9)
        self.colors = np.asarray(mesh.colors, dtype=np.float32)[faces]  # (F, 3, 3) corner colours
        self.segment = segment_ids(mesh.semantic, mesh.instance)[faces]  # (F, 3) corner segment ids
        self._dirs: tuple[Intrinsics, np.ndarray, np.ndarray] | None = None

    def _camera_dirs(self, K: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions ``(H*W, 3) float32`` in the OpenCV camera frame and their z (cos to the axis)."""
        cached = self._dirs  # one read: request threads may swap the cache for another camera meanwhile
        if cached is None or cached[0] != K:
            u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
            d = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u)], -1).reshape(-1, 3)
            d /= np.sqrt((d * d).sum(1, keepdims=True))
            d = d.astype(np.float32)
            cached = (K, d, d[:, 2].copy())
            self._dirs = cached  # one camera at a time keeps memory flat
        return cached[1], cached[2]

    def render(self, K: Intrinsics, c2w_cv: np.ndarray, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, Any]:
        """Like :meth:`RenderScene.render` without ``segments``: ``rgb``, ``depth``, ``panoptic`` arrays."""
        c2w = np.asarray(c2w_cv, dtype=np.float64)
        d_cam, z_cam = self._camera_dirs(K)
        # Rotate as three scaled columns: a (N, 3) @ (3, 3) matmul goes through multi-threaded BLAS, which
        # on a busy 2-core machine took 70+ ms here instead of under 1 ms.
        R = c2w[:3, :3].astype(np.float32)
        dirs = d_cam[:, :1] * R[:, 0] + d_cam[:, 1:2] * R[:, 1] + d_cam[:, 2:] * R[:, 2]
        origins = np.broadcast_to(c2w[:3, 3].astype(np.float32), dirs.shape)
        r = self._scene.run(np.ascontiguousarray(origins), dirs, output=1)
        prim = r["primID"]
        hit = np.flatnonzero(prim >= 0)
        f = prim[hit]
        t = r["tfar"][hit]
        shape = (K.height, K.width)
        out: dict[str, Any] = {}
        if "depth" in outputs:
            depth = np.zeros(K.height * K.width, np.float32)
            depth[hit] = t * z_cam[hit]
            out["depth"] = depth.reshape(shape)
        if "panoptic" in outputs or "rgb" in outputs:
            w1, w2 = r["u"][hit], r["v"][hit]  # embree: P = (1 - u - v) A + u B + v C
            w0 = 1 - w1 - w2
        if "panoptic" in outputs:
            g = self.gram[f]
            d2 = np.stack(
                [
                    w1 * w1 * g[:, 0] + w2 * w2 * g[:, 1] + 2 * w1 * w2 * g[:, 2],  # to A
                    w0 * w0 * g[:, 3] + w2 * w2 * g[:, 4] + 2 * w0 * w2 * g[:, 5],  # to B: BA, BC
                    w0 * w0 * g[:, 6] + w1 * w1 * g[:, 7] + 2 * w0 * w1 * g[:, 8],  # to C: CA, CB
                ],
                1,
            )
            pan = np.zeros(K.height * K.width, np.int32)
            pan[hit] = self.segment[f, d2.argmin(1)]
            out["panoptic"] = pan.reshape(shape)
        if "rgb" in outputs:
            col = self.colors[f]
            mixed = w0[:, None] * col[:, 0] + w1[:, None] * col[:, 1] + w2[:, None] * col[:, 2]
            rgb = np.zeros((K.height * K.width, 3), np.uint8)
            rgb[hit] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
            out["rgb"] = rgb.reshape(*shape, 3)
        return out


def segment_ids(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Per-element segment id ``int32``: instance id if > 0, else STUFF_ID_OFFSET + category, else 0."""
    semantic = np.asarray(semantic, dtype=np.int64)
    instance = np.asarray(instance, dtype=np.int64)
    out = np.where(instance > 0, instance, np.where(semantic >= 0, STUFF_ID_OFFSET + semantic, 0))
    return out.astype(np.int32)


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


def _read_alignment(path: Path) -> np.ndarray:
    try:
        data = json.loads(path.read_text())
        T = np.asarray(data["world_from_scene"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise SceneLoadError(f"{path}: no readable 'world_from_scene' 4x4 matrix ({e})") from e
    from simgen.data.camera import is_rigid

    if not is_rigid(T):
        raise SceneLoadError(f"{path}: 'world_from_scene' is not a rigid 4x4 transform")
    return T


def _mesh_folder(folder: Path) -> Path:
    """The folder holding ``panoptic_mesh.ply``: ``folder`` itself (a build, or an export written into
    its build folder, the default), else the ``build_dir`` an export records in ``export.json``."""
    if (folder / MESH_FILE).is_file():
        return folder
    export_json = folder / EXPORT_FILE
    if export_json.is_file():
        try:
            build_dir = Path(json.loads(export_json.read_text())["build_dir"])
        except (ValueError, KeyError, TypeError) as e:
            raise SceneLoadError(f"{export_json}: no readable 'build_dir' ({e})") from e
        # export.json stores the path as given on the command line: try it, then relative to the export.
        for cand in (build_dir, folder / build_dir, folder.parent / build_dir):
            if (cand / MESH_FILE).is_file():
                return cand
        raise SceneLoadError(
            f"{folder / MESH_FILE}: missing, and the build folder {build_dir} named in {export_json} has no "
            f"{MESH_FILE}; serve the build folder, or export into it (simgen export BUILD)"
        )
    raise SceneLoadError(f"{folder / MESH_FILE}: missing (serve a build folder or an export of one)")


def gaussians_file(out_dir: str | Path, rgb: str = "auto") -> Path | None:
    """The ``gaussians.ply`` to render RGB from under RGB mode ``rgb`` (:data:`RGB_MODES`), or None for
    mesh colours. Looks next to the panoptic mesh (the build folder) and only checks files, so a caller can
    decide on torch settings before anything is loaded.

    Raises:
        SceneLoadError: ``rgb="gaussians"`` and the file is missing (naming its path), an unknown mode, or
            no panoptic mesh.
    """
    if rgb not in RGB_MODES:
        raise SceneLoadError(f"rgb mode {rgb!r} is not one of {', '.join(RGB_MODES)}")
    folder = Path(out_dir)
    if not folder.is_dir():
        raise SceneLoadError(f"{folder}: not a folder")
    path = _mesh_folder(folder) / GAUSSIANS_FILE
    if rgb == "mesh":
        return None
    if path.is_file():
        return path
    if rgb == "gaussians":
        raise SceneLoadError(
            f"{path}: missing, and --rgb gaussians needs it (train Gaussians in the build, or serve with "
            "--rgb mesh / auto for vertex colours)"
        )
    return None


def load_render_scene(out_dir: str | Path, warm: bool = True, rgb: str = "auto") -> RenderScene:
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
    align_path = folder / ALIGNMENT_FILE
    T = np.eye(4)
    frame = "scene"
    if align_path.exists():
        T = _read_alignment(align_path)
        v = mesh.vertices.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        mesh = PanopticMesh(v, mesh.faces, mesh.colors, mesh.semantic, mesh.instance)
        frame = "gazebo"
    gaussians = None
    if gauss_path is not None:
        from simgen.splat.gaussians import load_ply

        try:
            gaussians = load_ply(gauss_path)
        except Exception as e:  # plyfile / ValueError on a corrupt or foreign file
            raise SceneLoadError(f"{gauss_path}: cannot read Gaussians ({e})") from e
        if len(gaussians) == 0:
            raise SceneLoadError(f"{gauss_path}: holds no Gaussians")
    scene = RenderScene(
        mesh, _read_categories(mesh_dir, mesh), T, frame, folder.resolve(), gaussians, gauss_path
    )
    return scene.warm() if warm else scene
