"""``simgen check``: validate an export folder (libsdformat validator, mesh URIs, convex colliders, names)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from lxml import etree

from simgen import folders

from .colliders import CONVEX_TOL_M, convexity_excess, is_closed

# Lines the validator prints that are not about the file (missing optional library, URDF parser probe).
_NOISE = (
    "libignition-tools-backward",
    "libgz-tools-backward",
    "Could not find the 'robot' element",
    "urdf_parser",
    "sdf::setFindCallback",
)


@dataclass
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def find_validator() -> list[str] | None:
    """The SDFormat validator command (``gz sdf -k`` or ``ign sdf -k``), or None when neither exists."""
    for tool in ("gz", "ign"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        probe = subprocess.run([exe, "sdf", "--help"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 or "--check" in probe.stdout + probe.stderr:
            return [exe, "sdf", "-k"]
    return None


def _resource_env(models_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("SDF_PATH", "GZ_SIM_RESOURCE_PATH", "IGN_GAZEBO_RESOURCE_PATH"):
        env[var] = os.pathsep.join(p for p in (str(models_dir), env.get(var, "")) if p)
    return env


def run_validator(cmd: list[str], path: Path, models_dir: Path) -> list[Problem]:
    """Run the validator on one file; every error line it prints becomes a problem."""
    try:
        res = subprocess.run(
            [*cmd, str(path)], capture_output=True, text=True, env=_resource_env(models_dir), timeout=120
        )
    except subprocess.TimeoutExpired:
        return [Problem(str(path), f"{Path(cmd[0]).name} {cmd[1]} -k timed out")]
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + "\n" + res.stderr)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
    if res.returncode == 0 and "Valid." in text:
        return []
    # libsdformat 12 exits 0 even when it cannot read the file: any output without "Valid." is a failure.
    errors = (
        [ln for ln in lines if "Error" in ln or "error" in ln] or lines or [f"exit status {res.returncode}"]
    )
    tool = f"{Path(cmd[0]).name} {cmd[1]}"
    return [Problem(str(path), f"{tool} -k: {ln}") for ln in errors]


def resolve_uri(uri: str, sdf_file: Path, search: list[Path]) -> Path | None:
    """Local path of a mesh / include URI (``model://``, ``file://``, absolute or relative), or None."""
    uri = uri.strip()
    if uri.startswith("model://"):
        rest = uri[len("model://") :]
        for root in search:
            if (root / rest).exists():
                return root / rest
        return None
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:  # http(s), package:// ...: not resolvable offline
        return None
    p = Path(uri)
    return p if p.is_absolute() else sdf_file.parent / p


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return path.stat().st_size > 0
    except OSError:
        return False


def _check_collider(path: Path) -> str | None:
    """A problem with one collision mesh, or None: it must be closed, wound outward and convex to within
    ``CONVEX_TOL_M`` metres (our own definition, so a mesh library's release cannot change the verdict)."""
    try:
        m = trimesh.load(path, force="mesh", process=False)
    except Exception as e:
        return f"cannot load ({e})"
    if len(m.faces) == 0:
        return "has no faces"
    # An STL is a triangle soup: corners are shared when their stored coordinates are equal, bit for bit
    # (no merging tolerance that could join distinct vertices or depend on a library default).
    vertices, inverse = np.unique(np.asarray(m.vertices, np.float64), axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[np.asarray(m.faces, np.int64)]
    if not is_closed(faces):
        return "collider mesh is not watertight (closed, every edge in two consistently wound faces)"
    excess = convexity_excess(vertices, faces)
    if excess > CONVEX_TOL_M:
        return (
            f"collider mesh is not convex: its surface lies up to {excess:.2g} m inside its convex hull "
            f"(tolerance {CONVEX_TOL_M:g} m)"
        )
    return None


def _check_obj_materials(path: Path) -> list[str]:
    """Problems with an OBJ's ``mtllib`` and ``map_Kd`` references (Gazebo silently shows it untextured)."""
    out = []
    if path.suffix.lower() != ".obj":
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("mtllib "):
            mtl = path.parent / line.split(None, 1)[1].strip()
            if not _readable(mtl):
                out.append(f"material library {mtl.name} missing")
                continue
            for ml in mtl.read_text(errors="replace").splitlines():
                if ml.strip().startswith("map_Kd "):
                    tex = mtl.parent / ml.split(None, 1)[1].strip()
                    if not _readable(tex):
                        out.append(f"texture {tex.name} named in {mtl.name} missing")
        elif line.startswith(("v ", "f ")):
            break  # materials are declared before geometry
    return out


def check_sdf_file(path: Path, search: list[Path]) -> tuple[list[Problem], list[str], list[str]]:
    """Mesh / include URIs and colliders of one SDF file. Returns (problems, model names, include names)."""
    problems: list[Problem] = []
    try:
        tree = etree.parse(str(path))
    except (etree.XMLSyntaxError, OSError) as e:
        return [Problem(str(path), f"not readable XML ({e})")], [], []
    models = [m.get("name", "") for m in tree.iterfind(".//model")]
    include_names = []
    for inc in tree.iterfind(".//include"):
        uri = inc.findtext("uri", "").strip()
        name = inc.findtext("name") or uri.rstrip("/").split("/")[-1]
        include_names.append(name.strip())
        folder = resolve_uri(uri, path, search)
        if folder is None or not folder.is_dir():
            problems.append(Problem(str(path), f"include {uri!r} does not resolve to a model folder"))
        elif not (folder / "model.config").is_file():
            problems.append(Problem(str(path), f"include {uri!r}: {folder / 'model.config'} missing"))
    for mesh in tree.iterfind(".//mesh"):
        uri = mesh.findtext("uri", "").strip()
        target = resolve_uri(uri, path, search)
        where = "collision" if mesh.xpath("ancestor::collision") else "visual"
        if target is None or not _readable(target):
            problems.append(Problem(str(path), f"{where} mesh {uri!r} does not resolve to a readable file"))
            continue
        if where == "collision":
            msg = _check_collider(target)
            if msg:
                problems.append(Problem(str(target), msg))
        else:
            problems += [Problem(str(target), m) for m in _check_obj_materials(target)]
    return problems, models, include_names


def check_export(
    out_dir: str | Path,
    validator: bool = True,
    workers: int = 2,
    physics: bool = True,
    robot=None,
) -> tuple[list[Problem], dict]:
    """Check every model and world of an export folder.

    Returns (problems, stats); a problem names its file. With ``validator`` False the libsdformat
    validator is skipped (the other checks still run); when it is wanted but missing, that is a problem.
    With ``physics`` the MuJoCo checks of simgen.export.physics run (spawn overlaps, rest test, and the
    push tests when a ``robot`` builder is given: simgen.sim.drive.robot_mjcf).
    """
    out_dir = Path(out_dir)
    problems: list[Problem] = []
    models_dir = out_dir / "models"
    if not out_dir.is_dir():
        return [Problem(str(out_dir), "not a folder")], {}
    model_files = sorted(models_dir.glob("*/model.sdf")) if models_dir.is_dir() else []
    world_files = sorted((out_dir / "worlds").glob("*.sdf"))
    if not model_files and not world_files:
        return [Problem(str(out_dir), "no models/*/model.sdf and no worlds/*.sdf (not a simgen export)")], {}
    search = [models_dir] + [
        Path(p) for p in os.environ.get("GZ_SIM_RESOURCE_PATH", "").split(os.pathsep) if p
    ]
    for d in sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []:
        if not (d / "model.sdf").is_file():
            problems.append(Problem(str(d), "model folder without model.sdf"))
        if not (d / "model.config").is_file():
            problems.append(Problem(str(d), "model.config missing (Gazebo's <include> needs it)"))
    names: dict[str, list[str]] = {}
    for f in model_files:
        p, models, _ = check_sdf_file(f, search)
        problems += p
        for m in models:
            names.setdefault(m, []).append(str(f))
    for name, files in names.items():
        if len(files) > 1:
            problems.append(Problem(files[1], f"model name {name!r} also used in {files[0]}"))
    for f in world_files:
        p, _, includes = check_sdf_file(f, search)
        problems += p
        seen = set()
        for n in includes:
            if n in seen:
                problems.append(Problem(str(f), f"two models named {n!r} in the world"))
            seen.add(n)
    validated = 0
    if validator:
        cmd = find_validator()
        if cmd is None:
            problems.append(
                Problem(
                    str(out_dir),
                    "no SDFormat validator: install `gz` or `ign` with libsdformat "
                    "(Debian: ignition-tools libsdformat-dev), or pass --no-validator",
                )
            )
        else:
            files = model_files + world_files
            with cf.ThreadPoolExecutor(max(1, workers)) as pool:
                for p in pool.map(lambda f: run_validator(cmd, f, models_dir), files):
                    problems += p
            validated = len(files)
    for f in sorted((out_dir / "mjcf").glob("*.xml")):
        try:
            import mujoco
        except ImportError:
            break
        try:
            mujoco.MjModel.from_xml_path(str(f))
        except Exception as e:
            problems.append(Problem(str(f), f"MuJoCo cannot load it: {str(e).strip()}"))
    physics_stats = None
    if physics and not any("MuJoCo cannot load" in p.message for p in problems):
        from simgen.export.physics import check_folder

        failures, physics_stats = check_folder(out_dir, robot=robot)
        problems += [Problem(f, m) for f, m in failures]
    stats = {
        "models": len(model_files),
        "worlds": len(world_files),
        "validated_with_libsdformat": validated,
        "problems": len(problems),
    }
    fidelity = collider_figures(out_dir)
    if fidelity is not None:
        stats["collider_fidelity"] = fidelity
    if physics_stats is not None:
        stats["physics"] = physics_stats
    if physics:  # a figure, not a pass / fail: partial scans legitimately look out of their rooms
        from simgen.export.stuff import check_void

        void = check_void(out_dir)
        if void is not None:
            stats["void"] = void
    return problems, stats


def collider_figures(out_dir: str | Path) -> dict | None:
    """The colliders' fidelity figures ``export.json`` records per thing (measured at export:
    ``volume_error`` against ``volume_error_vs``, ``collider_p95_cm``), with each class's medians and the
    worst class by median volume error; None for a folder without a readable ``export.json``."""
    try:
        record = folders.read_json(Path(out_dir) / folders.EXPORT_FILE)
        rows = [m for m in record["models"] if m.get("kind") == "thing"]
    except (folders.FolderError, KeyError, TypeError, AttributeError):
        return None
    per_class: dict[str, list[dict]] = {}
    for m in rows:
        per_class.setdefault(str(m.get("class")), []).append(m)

    def median(key: str, ms: list[dict]) -> float | None:
        v = [m[key] for m in ms if m.get(key) is not None]
        return round(float(np.median(v)), 4) if v else None

    classes = {
        c: {
            "things": len(ms),
            "median_volume_error": median("volume_error", ms),
            "median_p95_cm": median("collider_p95_cm", ms),
        }
        for c, ms in sorted(per_class.items())
    }
    ranked = [c for c in classes if classes[c]["median_volume_error"] is not None]
    worst = max(ranked, key=lambda c: classes[c]["median_volume_error"]) if ranked else None
    return {
        "worst_class": worst,
        "classes": classes,
        "things": {
            m["name"]: {
                "class": m.get("class"),
                "volume_error": m.get("volume_error"),
                "volume_error_vs": m.get("volume_error_vs"),
                "collider_p95_cm": m.get("collider_p95_cm"),
            }
            for m in rows
        },
    }


def format_collider_figures(figures: dict) -> str:
    """One line of :func:`collider_figures` for the terminal: per class the median volume error, the median
    p95 distance and the number of things, and the worst class."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    def cm(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} cm"

    parts = [
        f"{c} {pct(v['median_volume_error'])} / {cm(v['median_p95_cm'])} ({v['things']})"
        for c, v in figures["classes"].items()
    ]
    return (
        f"worst class {figures['worst_class']}; per class, median volume error / median p95 (things): "
        + ", ".join(parts)
    )
