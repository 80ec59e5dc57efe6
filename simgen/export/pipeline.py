"""``run_export``: build folder (panoptic_mesh.ply + instances.json) -> Gazebo / MuJoCo world folder.

Layout written (see docs/export.md)::

    OUT/models/<name>/{model.config, model.sdf, meshes/visual.{obj,mtl,png}, meshes/hull_<k>.stl,
                       thumbnails/<k>.png}
    OUT/worlds/<scene>.sdf      OUT/mjcf/<scene>.xml      OUT/fuel/<name>.zip (--fuel)
    OUT/panoptic.json  OUT/alignment.json  OUT/export.json  OUT/README.md

Everything is written to a staging folder first and swapped in only when the export completes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from tqdm.auto import tqdm

from simgen import folders as output
from simgen.config import to_dict
from simgen.data import io
from simgen.export import colliders, fidelity, fuel, physics, policy, sdf, stuff
from simgen.export.align import AlignmentError, apply, estimate_alignment
from simgen.export.appearance import AppearanceSource, prepare_appearance, texel_shader
from simgen.export.clean import clean_mesh
from simgen.export.config import ExportConfig
from simgen.export.mjcf import MjcfBody, mjcf_world
from simgen.export.split import Part, is_floor, is_wall, sanitize, split_parts
from simgen.export.texture import bake_texture

# Entries of OUT that an export owns (replaced as a whole by the next export).

# Density (kg/m^3) of the solid volume, by a word in the class name; "default" for the rest.
DENSITIES = {
    "table": 600.0,
    "desk": 600.0,
    "chair": 450.0,
    "stool": 450.0,
    "sofa": 250.0,
    "couch": 250.0,
    "bed": 300.0,
    "cabinet": 500.0,
    "shelf": 500.0,
    "bookshelf": 500.0,
    "box": 300.0,
    "ball": 150.0,
    "plant": 400.0,
    "lamp": 800.0,
    "monitor": 900.0,
    "tv": 900.0,
    "default": 500.0,
}


# Worker processes cost about 1-2 s to start (interpreter + imports); below this much estimated work
# (seconds on one core, see ``estimated_seconds``) the parts are processed in this process.
PARALLEL_MIN_SECONDS = 6.0
# Single-core seconds per (texel, view) pair of appearance.shade_texels (a room-preset chair: 646 k texels x
# 32 views in 1.9 s, most views skipped by the bounding-box test).
TEXEL_VIEW_SECONDS = 1e-7


def estimated_seconds(part: Part, cfg: ExportConfig, gaussian_texture: bool = False) -> float:
    """Rough single-core cost (s) of ``_process_part`` on this kind of CPU, to order and schedule jobs.

    Measured with bench/bench_export.py: cleaning + unwrapping + baking take about 6e-5 s per visual face
    (3 s for a 50 000-face wall), CoACD about 1 s per thing at the default settings; colouring texels from
    the Gaussians' views about TEXEL_VIEW_SECONDS per (texel, view) pair, about half the atlas covered.
    """
    faces = min(len(part.faces), cfg.face_budget) + 0.1 * max(len(part.faces) - cfg.face_budget, 0)
    shade = TEXEL_VIEW_SECONDS * 0.5 * cfg.texture_size**2 * cfg.texture_views if gaussian_texture else 0.0
    return 6e-5 * faces + shade + (1.0 * cfg.collider_faces / 1000 if part.kind == "thing" else 0.0)


class ExportError(RuntimeError):
    """The build cannot be exported (message names the file / setting)."""


@dataclass
class PartResult:
    """What the per-part worker produced (model frame: origin at the part's bottom centre)."""

    name: str
    visual: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # vertices, faces, uv, texture
    visual_faces_in: int
    colliders: colliders.ColliderResult
    volume_error: float | None
    error_reference: str  # fidelity.reference_volume's kind; "-" for stuff (boxes)
    solid_volume: float  # m^3 used for mass: mesh volume if watertight, else union of hulls
    mean_rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    texture_source: str = "vertex"  # "gaussians" when any texel was coloured from the rendered views
    texture_coverage: float | None = None  # fraction of covered texels the views coloured (Gaussians only)
    collider_p95: float | None = None  # m, collider outer surface -> visual surface (fidelity.py)
    fill: dict | None = None  # stuff only: completed surface figures (stuff.py)
    fill_mesh: stuff.Fill | None = None  # stuff only: the completed surfaces themselves (model frame)


def _process_part(
    part: Part,
    origin: np.ndarray,
    room_centre: np.ndarray,
    cfg: ExportConfig,
    appearance: AppearanceSource | None = None,
) -> PartResult:
    """Clean, texture and build colliders for one part (runs in a worker process). With ``appearance``
    the texture is coloured from the Gaussians' rendered views where they see the surface."""
    t0 = time.perf_counter()
    v = part.vertices - origin
    notes = list(part.warnings)
    mean_rgb = part.colors.reshape(-1, 3).mean(0) if len(part.colors) else np.full(3, 180.0)
    if len(part.faces) == 0:  # vertices only (empty instance): its convex hull stands in for the mesh
        hv, hf = colliders.robust_convex_hull(v)
        vis_v, vis_f = hv, hf
        vis_c = np.tile(mean_rgb.astype(np.uint8), (len(hv), 1))
        col_v, col_f = hv, hf
    else:
        (vis_v, vis_f, vis_c), (col_v, col_f), clean_notes = clean_mesh(
            v,
            part.faces,
            part.colors,
            cfg.face_budget,
            cfg.collider_faces,
            cfg.min_piece_fraction,
            cfg.max_hole_edges,
        )
        notes += [f"{part.name}: {n}" for n in clean_notes]
        if len(vis_f) == 0:  # cleaning removed everything: fall back to the raw part
            vis_v, vis_f, vis_c, col_v, col_f = v, part.faces, part.colors, v, part.faces
    boxes, fill_record, fill = None, None, None
    if part.kind != "thing":
        box_notes: list[str] = []
        boxes = colliders.stuff_boxes(
            vis_v,
            vis_f,
            part.kind,
            room_centre - origin,
            cfg.wall_thickness,
            seed=cfg.seed,
            vertical_only=is_wall(part.category_name),
            notes=box_notes,
        )
        notes += [f"{part.name}: {n}" for n in box_notes]
        fill = stuff.fill_surfaces(boxes, vis_v, vis_f, vis_c) if cfg.complete_stuff and len(vis_f) else None
        if fill is not None:  # closed surfaces behind the scan, shown where the scan has holes
            vis_f = np.concatenate([np.asarray(vis_f, np.int64), fill.faces + len(vis_v)])
            vis_v = np.concatenate([np.asarray(vis_v, np.float64), fill.vertices])
            vis_c = np.concatenate([np.asarray(vis_c, np.uint8), fill.colors])
            fill_record = {
                "area_m2": round(fill.area_m2, 3),
                "filled_m2": round(fill.filled_m2, 3),
                "filled_fraction": round(fill.filled_m2 / max(fill.area_m2, 1e-12), 4),
            }
    visual, tex_source, coverage = None, "vertex", None
    try:
        shader = texel_shader(appearance, origin) if appearance is not None else None
        visual, cov = bake_texture(vis_v, vis_f, vis_c, cfg.texture_size, shader=shader)
        if shader is not None:
            coverage = round(cov, 4)
            tex_source = "gaussians" if cov > 0 else "vertex"
            if cov == 0:
                notes.append(f"{part.name}: no rendered view sees it; texture from vertex colours")
    except Exception as e:  # keep the model; it gets a plain colour instead of a texture
        notes.append(f"{part.name}: texture baking failed ({e}); visual has a plain colour")
        visual = (np.asarray(vis_v, float), np.asarray(vis_f, np.int64), None, None)
    if part.kind == "thing" and len(part.faces) == 0:
        col = colliders.ColliderResult(hulls=[(col_v, col_f)], method="convex-hull")
        ref_kind, err, solid = "convex hull", 0.0, colliders.hull_volume(col_v, col_f)
    elif part.kind == "thing":
        col = fidelity.thing_colliders(
            part.name,
            vis_v,
            vis_f,
            col_v,
            col_f,
            cfg.collider_method,
            cfg.max_hulls,
            cfg.seed,
            {
                "threshold": cfg.coacd_threshold,
                "resolution": cfg.coacd_resolution,
                "preprocess_resolution": cfg.coacd_preprocess_resolution,
                "iterations": cfg.coacd_iterations,
            },
        )
        # A scan open under a round thing or tilted by noise at its underside would roll or tip it off
        # where it was scanned: its colliders get a flat face on the support plane where needed.
        col.hulls, base = colliders.flat_base(col.hulls)
        if col.choice is not None:
            col.choice["flat_base_mm"] = round(1000 * base, 1)
        if base > 0:
            notes.append(
                f"{part.name}: colliders' bottom {1000 * base:.1f} mm flattened onto the support plane "
                "(its scanned base could not hold its centre of mass)"
            )
        hull_vol = sum(colliders.hull_volume(hv, hf) for hv, hf in col.hulls)
        ref, ref_kind = col.choice["reference_m3"], col.choice["reference"]
        # The mass follows what the engine simulates: the colliders (overlaps once), unless the mesh is closed.
        solid = ref if ref_kind == "mesh" else colliders.union_volume(col.hulls, seed=cfg.seed)
        err = abs(hull_vol - ref) / ref if ref > 0 else None
    else:
        col = colliders.ColliderResult(method="boxes")
        col.boxes = boxes or []
        if not col.boxes:
            notes.append(f"{part.name}: no planar piece large enough for a collider; visual only")
        err, ref_kind, solid = None, "-", 0.0
    notes += col.warnings
    p95 = None
    if part.kind == "thing" and len(vis_f):
        p95 = fidelity.collider_distance_p95(col.hulls, vis_v, vis_f, seed=cfg.seed)
    return PartResult(
        part.name,
        visual,
        len(vis_f),
        col,
        err,
        ref_kind,
        solid,
        mean_rgb,
        notes,
        time.perf_counter() - t0,
        tex_source,
        coverage,
        p95,
        fill_record,
        fill,
    )


def _process_job(args) -> PartResult:
    return _process_part(*args)


def load_densities(path: str | None) -> dict[str, float]:
    table = dict(DENSITIES)
    if path:
        try:
            extra = json.loads(Path(path).read_text())
            table.update({str(k).lower(): float(v) for k, v in extra.items()})
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise ExportError(f"{path}: not a JSON object of class name/id -> density ({e})") from e
    return table


def density_for(table: dict[str, float], category_id: int, name: str) -> float:
    if str(category_id) in table:
        return table[str(category_id)]
    lname = name.lower()
    if lname in table:
        return table[lname]
    for word, d in table.items():
        if word != "default" and word in lname:
            return d
    return table["default"]


def mass_properties(hulls, solid_volume: float, density: float) -> sdf.Inertial:
    """Mass = solid volume x density; inertia from trimesh's mass properties of the hulls (parallel-axis
    sum), scaled to that mass (hull overlaps would otherwise count twice)."""
    masses, coms, inertias = [], [], []
    for v, f in hulls:
        m = trimesh.Trimesh(v, f, process=False)
        if m.volume < 0:
            m.invert()
        m.density = density
        masses.append(m.mass)
        coms.append(m.center_mass)
        inertias.append(m.moment_inertia)
    masses, coms = np.asarray(masses), np.asarray(coms)
    total = masses.sum()
    com = (masses[:, None] * coms).sum(0) / total
    inertia = np.zeros((3, 3))
    for mi, ci, Ii in zip(masses, coms, inertias, strict=True):
        d = ci - com
        inertia += Ii + mi * (d @ d * np.eye(3) - np.outer(d, d))
    mass = solid_volume * density if solid_volume > 0 else total
    return sdf.Inertial(float(mass), com, inertia * (mass / total))


def label_map(category_ids: list[int]) -> dict[int, int]:
    """Category id -> Gazebo label in 1..255 (0 is Gazebo's background): identity when every id fits."""
    ids = sorted(set(category_ids))
    if all(1 <= c <= 255 for c in ids):
        return {c: c for c in ids}
    if len(ids) > 255:
        raise ExportError(f"{len(ids)} categories in the export: Gazebo labels hold at most 255")
    return {c: k + 1 for k, c in enumerate(ids)}


def _palette(i: int) -> list[int]:
    rng = np.random.default_rng(1000 + i)
    return rng.integers(40, 256, 3).tolist()


def _write_obj(path: Path, v, f, uv, tex, mean_rgb) -> None:
    """OBJ + MTL (+ PNG texture) named after ``path``'s stem."""
    stem = path.stem
    mtl = [f"newmtl {stem}", "Ka 1 1 1", "Kd 1 1 1", "Ks 0 0 0", "d 1", "illum 1"]
    if tex is None:
        mtl[2] = "Kd " + " ".join(f"{c / 255:.4f}" for c in mean_rgb)
    else:
        io.write_image(path.with_suffix(".png"), tex)
        mtl.append(f"map_Kd {stem}.png")
    path.with_suffix(".mtl").write_text("\n".join(mtl) + "\n")
    # One %-format call per block (a C loop) instead of one f-string per line: 10x faster for big meshes.
    v = np.asarray(v, np.float64)
    f = np.asarray(f, np.int64) + 1
    text = [f"mtllib {stem}.mtl\nusemtl {stem}\n", ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel())]
    if uv is not None:
        text.append(("vt %.6f %.6f\n" * len(uv)) % tuple(np.asarray(uv, np.float64).ravel()))
        text.append(("f %d/%d %d/%d %d/%d\n" * len(f)) % tuple(np.repeat(f, 2, axis=1).ravel().tolist()))
    else:
        text.append(("f %d %d %d\n" * len(f)) % tuple(f.ravel().tolist()))
    path.write_text("".join(text))


# ----------------------------------------------------------------------------- temp folders and workers
#
# A run killed with SIGKILL runs no cleanup at all. So every temporary folder carries the pid of the process
# that owns it, and each export first removes the folders whose owner is dead; worker processes watch the
# exporting process and end themselves when it is gone.

TEMP_PREFIX = "simgen-export-"  # system temp dir: simgen-export-<pid>-<random>
MP_TEMP_PREFIX = "simgen-mp-"  # multiprocessing's per-process folder (the fork server's socket)
STAGE_PREFIXES = (".export-new-", ".export-old-")  # inside OUT: .export-new-<pid>-<random>


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def owned_tempdir(prefix: str, parent: Path | None = None) -> Path:
    """``mkdtemp`` named ``<prefix><pid>-<random>``: :func:`remove_stale_tempdirs` can tell whose it is."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def remove_stale_tempdirs(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove ``<prefix><pid>-*`` folders under ``parent`` (default: the system temp dir) whose owning process
    no longer exists (a run killed by SIGKILL, or a machine crash). Returns what was removed."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for d in parent.glob(f"{prefix}*-*"):
            pid = d.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def _own_multiprocessing_tempdir() -> None:
    """Make multiprocessing's per-process temp folder (normally ``pymp-<random>``, holding the fork server's
    socket) one named with this pid, so that a later export removes it when this process was SIGKILLed.
    Uses the same private slot and exit finalizer as ``multiprocessing.util.get_temp_dir``."""
    from multiprocessing import process, util

    config = process.current_process()._config
    # The fork server listens on a unix socket in this folder: keep the path within the 107-byte limit
    # (listener-<8 chars> inside), else leave multiprocessing's shorter default.
    if (
        len(os.path.join(tempfile.gettempdir(), f"{MP_TEMP_PREFIX}{os.getpid()}-12345678/listener-12345678"))
        > 100
    ):
        return
    if config.get("tempdir") is None:
        remove_stale_tempdirs(MP_TEMP_PREFIX)
        d = owned_tempdir(MP_TEMP_PREFIX)
        util.Finalize(None, shutil.rmtree, args=[str(d)], exitpriority=-100)
        config["tempdir"] = str(d)


_PR_SET_PDEATHSIG = 1


def _worker_init(owner_pid: int) -> None:
    """Initializer of each export worker process.

    * Ctrl-C reaches the terminal's whole process group: workers ignore SIGINT and the exporting process
      tears them down (no KeyboardInterrupt traceback from every worker, no worker finishing its part).
    * The workers' parent is multiprocessing's fork server, not the exporting process, and they hold the
      fork server's liveness pipe open: when the exporting process was killed with SIGKILL, workers, fork
      server and resource tracker all kept running. A thread now waits on a pidfd of the exporting process
      and kills this worker the moment it exits; the fork server and resource tracker then see their pipes
      close and exit too. PR_SET_PDEATHSIG covers the fork server dying first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_watch_owner, args=(owner_pid,), name="watch-owner", daemon=True).start()


def _watch_owner(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:  # no pidfd: poll (ctypes calls such as CoACD release the GIL, so this thread gets to run)
        while _pid_alive(pid):
            time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop every worker now (shutdown(wait=True) would first let each finish its CoACD run: 50 s)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(2)


def _swap_in(stage: Path, out_dir: Path) -> None:
    """Move the export entries of ``stage`` into ``out_dir``, replacing the previous export's entries."""
    old = owned_tempdir(STAGE_PREFIXES[1], out_dir)
    try:
        for name in output.EXPORT_ENTRIES:
            if (out_dir / name).exists():
                os.replace(out_dir / name, old / name)
        for name in output.EXPORT_ENTRIES:
            if (stage / name).exists():
                os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _categories(cats: list[dict], path: Path) -> dict[int, dict]:
    try:
        return {
            int(c["id"]): {"name": str(c["name"]), "isthing": bool(int(c.get("isthing", 0)))} for c in cats
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: malformed 'categories' entry ({e})") from e


def _floor_samples(pmesh: output.PanopticMesh, floor_mask: np.ndarray, seed: int) -> np.ndarray | None:
    """(P, 3) points sampled uniformly by area on faces whose corners are all floor vertices, or None."""
    faces = pmesh.faces[floor_mask[pmesh.faces].all(1)]
    if len(faces) == 0:
        return None
    mesh = trimesh.Trimesh(pmesh.vertices, faces, process=False)
    if not mesh.area > 0:
        return None
    points, _ = trimesh.sample.sample_surface(mesh, 20_000, seed=seed)
    return np.concatenate([np.asarray(points, np.float64), pmesh.vertices[floor_mask]])


def run_export(
    build_dir: str | Path,
    out_dir: str | Path | None = None,
    cfg: ExportConfig | None = None,
    robot: physics.RobotBuilder | None = None,
) -> dict:
    """Export a build folder to Gazebo (SDFormat) and / or MuJoCo (MJCF).

    Args:
        build_dir: folder with ``panoptic_mesh.ply`` and ``instances.json`` (simgen.folders layout).
        out_dir: output folder (default: ``build_dir``); only the entries in ``simgen.folders.EXPORT_ENTRIES`` are replaced.
        cfg: settings (default ``ExportConfig()``).
        robot: MJCF robot builder for the push tests (simgen.sim.drive.robot_mjcf); None skips them.
    Returns:
        The summary written to ``OUT/export.json``: per-model rows (name, class, faces, hulls, volume error,
        warnings), warnings, fallbacks, timings, paths.
    Raises:
        ExportError / AlignmentError with a message naming the file or setting.
    """
    cfg = cfg or ExportConfig()
    t_start = time.perf_counter()
    build_dir = Path(build_dir)
    out_dir = Path(out_dir) if out_dir is not None else build_dir
    mesh_path, inst_path = build_dir / output.MESH_FILE, build_dir / output.INSTANCES_FILE
    for p in (mesh_path, inst_path):
        if not p.is_file():
            raise ExportError(f"{p}: missing (not a simgen build folder)")
    try:
        pmesh = output.read_panoptic_mesh(mesh_path)
    except Exception as e:
        raise ExportError(f"{mesh_path}: cannot read ({e})") from e
    if len(pmesh.faces) == 0:
        raise ExportError(f"{mesh_path}: the mesh has no faces")
    try:
        records, cat_list = output.read_instances(inst_path)
    except Exception as e:
        raise ExportError(f"{inst_path}: cannot read ({e})") from e
    categories = _categories(cat_list, inst_path)
    densities = load_densities(cfg.densities)
    confidences, confidence_note = fuel.build_confidences(build_dir, pmesh, records)
    scene = sanitize(cfg.scene_name or build_dir.resolve().name)

    # 1. floor alignment
    floor_ids = [c for c, v in categories.items() if is_floor(v["name"]) and not v["isthing"]]
    floor_mask = np.isin(pmesh.semantic, floor_ids) & (pmesh.instance <= 0)
    up = np.asarray(cfg.up, float) if cfg.up else None
    if up is not None and up.size != 3:
        raise ExportError(f"--up needs 3 numbers, got {list(cfg.up)}")
    try:
        alignment = estimate_alignment(
            pmesh.vertices,
            floor_mask,
            up=up,
            seed=cfg.seed,
            floor_points=_floor_samples(pmesh, floor_mask, cfg.seed),
        )
    except AlignmentError as e:
        raise AlignmentError(f"{mesh_path}: {e}") from e
    vertices = apply(alignment.world_from_scene, pmesh.vertices)

    # 2. split
    parts, warnings = split_parts(pmesh, vertices, categories, records, keep_ceiling=cfg.keep_ceiling)
    if not parts:
        raise ExportError(f"{mesh_path}: no labelled part to export (every face is unknown or left out)")
    room_min, room_max = vertices.min(0), vertices.max(0)
    room_centre = (room_min + room_max) / 2
    origins = {}
    for p in parts:
        lo, hi = p.vertices.min(0), p.vertices.max(0)
        origins[p.name] = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])

    # 5 (first half). Gaussian appearance: render the views once here; workers memory-map them.
    from simgen.interrupts import on_forced_exit

    remove_stale_tempdirs(TEMP_PREFIX)
    work_dir = owned_tempdir(TEMP_PREFIX)
    with on_forced_exit(lambda: shutil.rmtree(work_dir, ignore_errors=True)):
        try:
            try:
                appearance, texture, tex_warnings = prepare_appearance(
                    build_dir, cfg, alignment.scene_from_world, work_dir
                )
            except FileNotFoundError as e:
                raise ExportError(str(e)) from e
            warnings.extend(tex_warnings)
            results = _process_parts(parts, origins, room_centre, cfg, appearance, warnings)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    # 6-8. write into a staging folder
    out_dir.mkdir(parents=True, exist_ok=True)
    for prefix in STAGE_PREFIXES:
        remove_stale_tempdirs(prefix, out_dir)
    stage = owned_tempdir(STAGE_PREFIXES[0], out_dir)
    with on_forced_exit(lambda: shutil.rmtree(stage, ignore_errors=True)):
        try:
            summary = _write_all(
                stage,
                scene,
                parts,
                results,
                origins,
                alignment,
                categories,
                densities,
                cfg,
                warnings,
                confidences,
            )
            summary["confidence_note"] = (
                "per thing: the fraction of the build's keyframes that show the thing (at least 10 % of its "
                "vertices in the image and at the depth the keyframe measured there) in which the segmentation "
                "associated it (instances.json frames_observed)"
                + (f"; not available here: {confidence_note}" if confidence_note else "")
            )
            # The render server draws the completed surfaces too (what the Gazebo visuals show).
            summary["stuff_fill"] = stuff.write_fill_file(
                stage / output.STUFF_FILL_FILE,
                [(results[p.name].fill_mesh, origins[p.name], p.category_id) for p in parts],
                output.build_id(build_dir),
            )
            summary["texture"] = texture
            if cfg.physics:
                _physics(stage, summary, parts, robot, cfg)
            if cfg.fuel:  # after the physics checks, which may pin a model (rewrite its model.sdf)
                summary["fuel"] = _fuel_packages(stage, parts, cfg, summary["warnings"])
            summary["seconds"] = round(time.perf_counter() - t_start, 2)
            summary.update(output.export_record_fields(out_dir, build_dir))
            io.write_json(stage / output.EXPORT_FILE, summary)
            _swap_in(stage, out_dir)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return summary


def _process_parts(
    parts: list[Part],
    origins: dict[str, np.ndarray],
    room_centre: np.ndarray,
    cfg: ExportConfig,
    appearance: AppearanceSource | None,
    warnings: list[str],
) -> dict[str, PartResult]:
    """3-5. clean, texture, colliders: one job per part, in worker processes when worth it."""
    jobs = [(p, origins[p.name], room_centre, cfg, appearance) for p in parts]
    results: dict[str, PartResult] = {}
    bar = tqdm(total=len(jobs), desc="export", unit="model", disable=cfg.quiet)
    # Biggest parts first so both workers stay busy until the end.
    order = sorted(jobs, key=lambda j: -estimated_seconds(j[0], cfg, appearance is not None))
    work = sum(estimated_seconds(p, cfg, appearance is not None) for p in parts)
    if cfg.workers <= 1 or len(jobs) == 1 or work < PARALLEL_MIN_SECONDS:
        for job in order:
            results[job[0].name] = _process_job(job)
            bar.update()
    else:
        # forkserver, not fork: the caller (simgen build) may hold OpenMP / torch thread pools, which a
        # forked child inherits in a broken state and can deadlock in (CoACD and pymeshlab use OpenMP).
        ctx = mp.get_context("forkserver")
        _own_multiprocessing_tempdir()
        pool = cf.ProcessPoolExecutor(
            max_workers=min(cfg.workers, len(jobs)),
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        try:
            futures = {pool.submit(_process_job, j): j for j in order}
            for fut in cf.as_completed(futures):
                part = futures[fut][0]
                try:
                    results[part.name] = fut.result()
                # A crashed worker (e.g. CoACD segfault): redo this part here, without CoACD.
                except Exception as e:
                    warnings.append(
                        f"{part.name}: worker failed ({type(e).__name__}); retried with its convex hull"
                    )
                    results[part.name] = _fallback_part(part, origins[part.name], room_centre, cfg)
                bar.update()
        except BaseException:
            # Ctrl-C, SIGTERM (simgen.cli raises it as an exception) or an error: no part result is wanted
            # any more, so the workers are killed rather than waited for.
            _kill_workers(pool)
            raise
        else:
            pool.shutdown(wait=True)
    bar.close()
    return results


def _fallback_part(part: Part, origin, room_centre, cfg: ExportConfig) -> PartResult:
    """Convex-hull-only stand-in for a part whose worker died."""
    v = part.vertices - origin
    hv, hf = colliders.robust_convex_hull(v)
    col = colliders.ColliderResult(hulls=[(hv, hf)], method="convex-hull")
    if part.kind != "thing":
        col = colliders.ColliderResult(
            boxes=colliders.stuff_boxes(v, part.faces, part.kind, room_centre - origin, cfg.wall_thickness),
            method="boxes",
        )
    mean = part.colors.mean(0) if len(part.colors) else np.full(3, 180.0)
    return PartResult(
        part.name,
        (v, part.faces, None, None),
        len(part.faces),
        col,
        None,
        "-",
        colliders.hull_volume(hv, hf),
        mean,
        [f"{part.name}: processed without cleaning, texture or decomposition (worker failure)"],
    )


def _write_all(
    stage, scene, parts, results, origins, alignment, categories, densities, cfg, warnings, confidences=None
) -> dict:
    labels = label_map([p.category_id for p in parts])
    models_dir = stage / "models"
    includes, bodies, rows, segments = [], [], [], []
    fallbacks = []
    confidences = confidences or {}
    thumb_seconds = 0.0
    for p in parts:
        r = results[p.name]
        mdir = models_dir / p.name / "meshes"
        mdir.mkdir(parents=True)
        vv, vf, uv, tex = r.visual
        _write_obj(mdir / "visual.obj", vv, vf, uv, tex, r.mean_rgb)
        hull_files = []
        for k, (hv, hf) in enumerate(r.colliders.hulls):
            trimesh.Trimesh(hv, hf, process=False).export(mdir / f"hull_{k}.stl")
            hull_files.append(f"meshes/hull_{k}.stl")
        inertial = None
        if cfg.dynamic_things and p.kind == "thing" and r.colliders.hulls:
            inertial = mass_properties(
                r.colliders.hulls, r.solid_volume, density_for(densities, p.category_id, p.category_name)
            )
        decision = policy.decide(
            p.kind,
            p.category_id,
            p.category_name,
            np.ptp(p.vertices, axis=0),
            None if inertial is None else inertial.mass,
            cfg.fixed_classes,
            cfg.dynamic_classes,
            cfg.max_dynamic_height,
            cfg.max_dynamic_width,
            cfg.max_dynamic_mass,
        )
        static = not (cfg.dynamic_things and decision.dynamic)
        if static:
            inertial = None
        spec = sdf.ModelSpec(
            p.name,
            static,
            labels[p.category_id],
            "meshes/visual.obj",
            hull_files,
            r.colliders.boxes,
            inertial,
            fuel.describe(
                p.category_name,
                p.kind,
                p.category_id,
                p.instance_id,
                confidences.get(p.instance_id),
                cfg.fuel_license,
            ),
        )
        if cfg.format in ("sdf", "all"):
            sdf.write_xml(sdf.model_sdf(spec, cfg.sdf_version), models_dir / p.name / output.MODEL_SDF_FILE)
            sdf.write_xml(
                sdf.model_config(
                    p.name,
                    spec.description,
                    cfg.sdf_version,
                    cfg.fuel_author,
                    cfg.fuel_email,
                    cfg.fuel_license,
                ),
                models_dir / p.name / output.MODEL_CONFIG_FILE,
            )
        if cfg.thumbnails and len(vf):
            t0 = time.perf_counter()
            fuel.write_thumbnails(
                models_dir / p.name,
                fuel.render_thumbnails(vv, vf, uv, tex, r.mean_rgb, cfg.thumbnail_size),
            )
            thumb_seconds += time.perf_counter() - t0
        pose = np.eye(4)
        pose[:3, 3] = origins[p.name]
        includes.append((p.name, pose))
        rgba = np.append(np.asarray(r.mean_rgb) / 255.0, 1.0)
        bodies.append(MjcfBody(spec, pose, f"{p.name}/meshes/visual.png" if tex is not None else None, rgba))
        if r.colliders.method == "convex-hull":
            fallbacks.append(p.name)
        warnings.extend(r.notes)
        rows.append(
            {
                "name": p.name,
                "kind": p.kind,
                "class": p.category_name,
                "category_id": p.category_id,
                "instance_id": p.instance_id,
                "faces": int(len(vf)),
                "faces_in": int(len(p.faces)),
                "hulls": len(r.colliders.hulls),
                "boxes": len(r.colliders.boxes),
                "collider": r.colliders.method,
                "collider_choice": r.colliders.choice,
                "volume_error": None if r.volume_error is None else round(float(r.volume_error), 4),
                "volume_error_vs": r.error_reference,
                "collider_p95_cm": None if r.collider_p95 is None else round(100 * r.collider_p95, 2),
                "stuff_fill": r.fill,
                "mass_kg": None if inertial is None else round(inertial.mass, 3),
                "dynamic": not static,
                "policy": decision.reason if cfg.dynamic_things else "all static",
                "seconds": round(r.seconds, 2),
                "texture_source": r.texture_source if tex is not None else "plain colour",
                "texture_coverage": r.texture_coverage,
                "confidence": confidences[p.instance_id].to_json()
                if p.kind == "thing" and p.instance_id in confidences
                else None,
                "warnings": list(r.notes),
            }
        )
        segments.append(
            {
                "model": p.name,
                "id": p.instance_id,
                "kind": p.kind,
                "category_id": p.category_id,
                "category_name": p.category_name,
                "label": labels[p.category_id],
                "color": _palette(p.instance_id if p.instance_id else 10_000 + p.category_id),
            }
        )
    verts = np.concatenate([p.vertices for p in parts])
    room_min, room_max = verts.min(0), verts.max(0)
    if cfg.format in ("sdf", "all"):
        (stage / "worlds").mkdir()
        sdf.write_xml(
            sdf.world_sdf(scene, includes, room_min, room_max, cfg.sdf_version),
            stage / "worlds" / f"{scene}.sdf",
        )
    if cfg.format in ("mjcf", "all"):
        (stage / "mjcf").mkdir()
        sdf.write_xml(mjcf_world(scene, bodies), stage / "mjcf" / f"{scene}.xml")
    io.write_json(
        stage / output.PANOPTIC_FILE,
        {
            "scene": scene,
            "label_of_category": {str(c): lab for c, lab in labels.items()},
            "categories": [
                {
                    "id": c,
                    "name": categories[c]["name"] if c in categories else "unknown",
                    "isthing": bool(categories.get(c, {}).get("isthing", True)),
                    "label": lab,
                }
                for c, lab in labels.items()
            ],
            "segments": segments,
            "note": "Gazebo's segmentation camera reports 'label' as the class; in panoptic mode each model is "
            "one instance. 'id' is simgen's instance id (0 for stuff).",
        },
    )
    io.write_json(stage / output.ALIGNMENT_FILE, alignment.to_json())
    (stage / "README.md").write_text(_readme(scene, cfg))
    return {
        "scene": scene,
        "format": cfg.format,
        "sdf_version": cfg.sdf_version,
        "alignment": {"method": alignment.method, "floor_inlier_rms_m": round(alignment.inlier_rms, 4)},
        "models": rows,
        "fallbacks": fallbacks,
        "warnings": warnings,
        "collider_p95_note": "95th percentile of the distance (cm) from the colliders' outer surface to the "
        "visual surface: how far a collider stands out of the object it stands for",
        "volume_error_note": "|sum of hull volumes - volume| / volume, against the mesh when it is watertight, "
        "else what a surface encloses by the generalised winding number (1 cm cells with |w| >= 1/2): the "
        "visual mesh's on a thing with leg space (chairs, tables), the hole-filled mesh's on a compact one; "
        "masses use the mesh when it is watertight, else the hulls' union volume.",
        "thumbnails": {
            "views": len(fuel.THUMBNAIL_VIEWS) if cfg.thumbnails else 0,
            "size": cfg.thumbnail_size,
            "seconds": round(thumb_seconds, 2),
        },
        "fuel": None,
        "config": {**to_dict(cfg), "up": list(cfg.up) if cfg.up else None},
    }


def _fuel_packages(stage: Path, parts: list[Part], cfg: ExportConfig, warnings: list[str]) -> dict:
    """``--fuel``: one upload-ready zip per model into ``stage/fuel`` (swapped in with the rest)."""
    t0 = time.perf_counter()
    zips = {}
    for p in parts:
        try:
            rec = fuel.write_model_zip(
                stage / output.MODELS_DIR / p.name, stage / output.FUEL_DIR / f"{p.name}.zip"
            )
        except fuel.FuelError as e:
            raise ExportError(str(e)) from e
        zips[p.name] = f"{output.FUEL_DIR}/{rec['zip']}"
    if cfg.fuel_license == "unspecified":
        warnings.append("fuel: no --fuel-license given; choose the licence in Fuel's upload form")
    return {
        "zips": zips,
        "author": cfg.fuel_author,
        "email": cfg.fuel_email,
        "license": cfg.fuel_license,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _physics(stage: Path, summary: dict, parts: list[Part], robot, cfg: ExportConfig) -> None:
    """MuJoCo checks on the staged export (physics.run_physics): lift / slide overlapping things in the
    MJCF and the SDF world, then record per-model figures in the rows and the totals in ``physics``."""
    mjcf = stage / "mjcf" / f"{summary['scene']}.xml"
    if not mjcf.is_file():
        summary["physics"] = {"note": "not run: the physics checks need the MJCF (--format mjcf or all)"}
        return
    world = stage / "worlds" / f"{summary['scene']}.sdf"
    figures, totals, moved, failures = physics.run_physics(
        mjcf, world, {p.name: p.kind for p in parts}, robot=robot, resolve=True
    )
    for row in summary["models"]:
        if row["name"] in figures:
            row["physics"] = figures[row["name"]].to_json()
            if figures[row["name"]].pinned:
                row["dynamic"], row["policy"], row["mass_kg"] = False, "unstable", None
    summary["physics"] = {**totals, "failures": failures}
    summary["warnings"].extend(moved + [f"physics: {f}" for f in failures])


def _readme(scene: str, cfg: ExportConfig) -> str:
    fuel_line = (
        " `fuel/<name>.zip`: each model packaged for Gazebo Fuel (unzip, then upload the folder)."
        if cfg.fuel
        else ""
    )
    return f"""# {scene}: simulation world exported by simgen

Gazebo (Harmonic or newer; SDFormat {cfg.sdf_version}):

    GZ_SIM_RESOURCE_PATH=$PWD/models gz sim worlds/{scene}.sdf

(Gazebo Fortress: `IGN_GAZEBO_RESOURCE_PATH=$PWD/models ign gazebo worlds/{scene}.sdf`.)

MuJoCo:

    python -m mujoco.viewer --mjcf=mjcf/{scene}.xml

Check the export (libsdformat validator, mesh files, convex colliders): `simgen check .`

- World frame: metres, z up, floor at z = 0. `alignment.json` maps the scanned scene's frame to it
  (`world_from_scene`) and back (`scene_from_world`).
- `panoptic.json`: each model's class, Gazebo label (0-255) and simgen instance id.
- `export.json`: per-model faces, collider hull counts, volume errors and warnings.
- `models/<name>/thumbnails/`: pictures of each model;{fuel_line}
"""


def format_summary(summary: dict) -> str:
    """The per-model table printed at the end of ``simgen export``."""
    head = f"{'model':<24} {'class':<14} {'faces':>7} {'hulls':>5} {'boxes':>5} {'vol.err':>8}  notes"
    lines = [head, "-" * len(head)]
    for r in summary["models"]:
        err = "-" if r["volume_error"] is None else f"{100 * r['volume_error']:.1f}%"
        note = "FALLBACK: convex hull" if r["collider"] == "convex-hull" else ""
        if r["warnings"]:
            note = (note + "; " if note else "") + f"{len(r['warnings'])} warning(s)"
        lines.append(
            f"{r['name'][:24]:<24} {r['class'][:14]:<14} {r['faces']:>7} {r['hulls']:>5} {r['boxes']:>5} {err:>8}  {note}"
        )
    lines.append(f"volume error: {summary['volume_error_note']}")
    if summary["fallbacks"]:
        lines.append(f"fallbacks (convex hull): {', '.join(summary['fallbacks'])}")
    for w in summary["warnings"]:
        lines.append(f"warning: {w}")
    lines.append(
        f"exported {len(summary['models'])} models in {summary.get('seconds', 0):.1f} s -> {summary.get('out_dir')}"
    )
    return "\n".join(lines)
