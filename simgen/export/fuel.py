"""Gazebo Fuel model packages: thumbnails, the model.config metadata, a detection confidence, upload zips.

A Fuel model is a Gazebo model folder (``model.config``, ``model.sdf``, ``meshes/``, ``materials/``,
``thumbnails/``); Fuel reads ``<name>``, ``<version>``, ``<sdf version>``, ``<author>`` (name, e-mail) and
``<description>`` from ``model.config`` and shows the PNGs of ``thumbnails/`` on the model's page.

* :func:`render_thumbnails`: views of a model's textured visual mesh (model frame, metres, z up) ray cast
  with :class:`simgen.render.raycast.MeshRaycaster`, framing its bounding box, transparent background.
* :func:`detection_confidence`: per instance, the fraction of the keyframes that show it in which the
  build's segmentation associated it (from ``instances.json``'s ``frames_observed``, and the scene's
  cameras and depth images).
* :func:`describe`: the ``model.config`` description with the class, instance id, confidence and licence
  (:func:`simgen.export.sdf.model_config` writes the file, :func:`read_model_config` reads it back).
* :func:`write_model_zip`: ``<name>.zip`` holding the folder ``<name>/`` with the model's files only and
  ``model://<name>/`` mesh URIs made relative to the model, so the unzipped folder loads on its own.
"""

from __future__ import annotations

import io as _io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from lxml import etree

from simgen import folders
from simgen.data import io
from simgen.data.camera import Intrinsics
from simgen.render.raycast import MeshRaycaster

# (azimuth, elevation) in degrees of each thumbnail's viewing direction (from the model towards the
# camera; azimuth from +x towards +y, elevation above the horizontal): four around at 30 degrees, the
# first looking at the model's front-left, and one from straight above.
THUMBNAIL_VIEWS: tuple[tuple[float, float], ...] = (
    (-135.0, 30.0),
    (-45.0, 30.0),
    (45.0, 30.0),
    (135.0, 30.0),
    (0.0, 90.0),
)
THUMBNAIL_FOV_DEG = 35.0
# Rays per pixel side. 2 antialiases the edges but costs 4x the casting time, the bulk of the thumbnails'
# cost (docs/benchmarks.md, s22fuel), so the export casts one ray per pixel.
SUPERSAMPLE = 1
FILL = 0.9  # fraction of the image side the model's projected bounding box spans
# A keyframe "shows" an instance when at least this fraction of its (subsampled) vertices is visible: in
# the image and within the depth tolerance of the keyframe's depth (see detection_confidence). An object
# seen from one side shows under half its surface, so the bar is low; 10 % is a clear view of a part.
VISIBLE_FRACTION = 0.1
DEPTH_TOL_M = 0.05  # metres: sensor noise plus the reconstruction's voxel size
DEPTH_TOL_REL = 0.03  # of the depth: sensor noise grows with distance
MAX_CONFIDENCE_VERTICES = 500
# Fixed zip timestamps: the same model gives the same bytes (1980-01-01 is the earliest zip allows).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class FuelError(RuntimeError):
    """A model folder cannot be packaged (message names the file)."""


# ----------------------------------------------------------------------------- thumbnails


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world, OpenCV axes (x right, y down, z forward), at ``eye`` looking at ``target``."""
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def thumbnail_cameras(
    lo: np.ndarray, hi: np.ndarray, size: int, views=THUMBNAIL_VIEWS, fov_deg: float = THUMBNAIL_FOV_DEG
) -> list[tuple[Intrinsics, np.ndarray]]:
    """Square pinhole cameras (``size`` pixels) framing the box [lo, hi] (model frame, metres, z up).

    Each camera looks at the box centre from its (azimuth, elevation) direction, at the distance where the
    box's bounding sphere fits a ``fov_deg`` field of view; the focal length and principal point are then
    set so the projection of the box's 8 corners spans ``FILL`` of the image, centred.
    Returns [(intrinsics, (4, 4) c2w_cv)].
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    centre = (lo + hi) / 2
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    half = np.radians(fov_deg) / 2
    dist = radius / np.sin(half)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cams = []
    for az, el in views:
        a, e = np.radians(az), np.radians(el)
        direction = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        # From straight above, z cannot be the image's up: +y is, so the top view keeps the world's x right.
        up = np.array([0.0, 1.0, 0.0]) if abs(direction[2]) > 0.999 else np.array([0.0, 0.0, 1.0])
        c2w = look_at(centre + dist * direction, centre, up)
        cam = (corners - c2w[:3, 3]) @ c2w[:3, :3]  # (8, 3) camera frame; z > 0 (outside the sphere)
        xy = cam[:, :2] / cam[:, 2:]
        mid, extent = (xy.min(0) + xy.max(0)) / 2, max(float(np.ptp(xy, axis=0).max()), 1e-9)
        f = FILL * size / extent
        K = Intrinsics(f, f, size / 2 - f * mid[0], size / 2 - f * mid[1], size, size)
        cams.append((K, c2w))
    return cams


def _surface_colours(
    mesh: trimesh.Trimesh,
    face: np.ndarray,
    points: np.ndarray,
    uv: np.ndarray | None,
    texture: np.ndarray | None,
    rgb: np.ndarray,
) -> np.ndarray:
    """(N, 3) float colours (0-255) at hit points on faces ``face`` (N,): the texture at the interpolated UV
    (v up, nearest texel), or the plain colour ``rgb`` when the visual has no texture."""
    if uv is None or texture is None:
        return np.tile(np.asarray(rgb, float)[:3], (len(face), 1))
    tri = mesh.faces[face]
    bary = trimesh.triangles.points_to_barycentric(mesh.vertices[tri], points)
    bary = np.clip(np.nan_to_num(bary, nan=1 / 3), 0, 1)
    bary /= np.maximum(bary.sum(1, keepdims=True), 1e-12)
    st = np.einsum("nk,nkj->nj", bary, np.asarray(uv, float)[tri])
    h, w = texture.shape[:2]
    col = np.clip((st[:, 0] * w).astype(np.int64), 0, w - 1)
    row = np.clip(((1.0 - st[:, 1]) * h).astype(np.int64), 0, h - 1)
    return np.asarray(texture, float)[row, col, :3]


def render_view(
    caster: MeshRaycaster,
    K: Intrinsics,
    c2w_cv: np.ndarray,
    uv: np.ndarray | None,
    texture: np.ndarray | None,
    rgb: np.ndarray,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """One ``(H, W, 4) uint8`` RGBA view of the caster's mesh; alpha 0 (white) where it misses.

    Colours are the texture (or ``rgb``) times a headlight term 0.6 + 0.4 |cos| of the angle between the
    ray and the face normal, so shapes read without washing out the colours; ``supersample``^2 rays per
    pixel antialias the edges (alpha = covered fraction).
    """
    Ks = K.scaled(supersample)
    hits = caster.cast(Ks, c2w_cv)
    valid = hits.valid.ravel()
    face = hits.face.ravel()[valid]
    points = hits.points.reshape(-1, 3)[valid].astype(np.float64)
    colour = _surface_colours(caster.mesh, face, points, uv, texture, rgb)
    rays = points - c2w_cv[:3, 3]
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12)
    cos = np.abs((np.asarray(caster.mesh.face_normals)[face] * rays).sum(1))
    colour *= (0.6 + 0.4 * cos)[:, None]
    big = np.zeros((Ks.height * Ks.width, 4))
    big[valid, :3] = colour
    big[valid, 3] = 1.0
    s = supersample
    big = big.reshape(K.height, s, K.width, s, 4).mean((1, 3))
    alpha = big[..., 3:]
    rgb_out = np.where(alpha > 0, big[..., :3] / np.maximum(alpha, 1e-12), 255.0)
    out = np.concatenate([rgb_out, alpha * 255.0], axis=2)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_thumbnails(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None,
    texture: np.ndarray | None,
    rgb: np.ndarray,
    size: int = 256,
    views=THUMBNAIL_VIEWS,
) -> list[np.ndarray]:
    """Thumbnails of a model's visual mesh.

    Args:
        vertices: (V, 3) model frame, metres, z up; faces: (F, 3) int.
        uv: (V, 2) texture coordinates in [0, 1], v up (OBJ), or None; texture: (T, T, 3) uint8 or None.
        rgb: (3,) colour 0-255 used when there is no texture.
        size: side of each square image (pixels); views: (azimuth, elevation) degrees per image.
    Returns:
        One ``(size, size, 4) uint8`` RGBA image per view (transparent background), deterministic.
    """
    mesh = trimesh.Trimesh(np.asarray(vertices, float), np.asarray(faces, np.int64), process=False)
    caster = MeshRaycaster(mesh)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    return [
        render_view(caster, K, c2w, uv, texture, rgb) for K, c2w in thumbnail_cameras(lo, hi, size, views)
    ]


def write_thumbnails(model_dir: Path, images: list[np.ndarray]) -> list[str]:
    """Write ``thumbnails/1.png``, ``2.png``... into ``model_dir`` (atomic); returns the relative paths."""
    names = []
    for k, image in enumerate(images, start=1):
        rel = f"{folders.MODEL_THUMBNAILS_DIR}/{k}.png"
        io.write_image(Path(model_dir) / rel, image)
        names.append(rel)
    return names


# ----------------------------------------------------------------------------- confidence


@dataclass
class Confidence:
    """How consistently the build's segmentation found one instance.

    ``value`` = observed / (observed | shown) over the build's keyframes, in (0, 1], or None with
    ``reason`` when the build or its scene does not record what it needs.
    """

    value: float | None
    observed: int = 0  # keyframes the instance was associated in (instances.json frames_observed)
    shown: int = 0  # keyframes that show it or detected it (visibility test against their depth)
    reason: str = ""  # why value is None, naming local files (for export.json)
    # why value is None in words without paths, for the model.config that travels with the model
    public_reason: str = "not computed"

    def to_json(self) -> dict:
        out: dict = {"value": None if self.value is None else round(self.value, 4)}
        if self.value is None:
            out["reason"] = self.reason
        else:
            out.update(keyframes_observed=self.observed, keyframes_shown=self.shown)
        return out


def detection_confidence(
    instance_vertices: dict[int, np.ndarray],
    frames_observed: dict[int, list[int]],
    cameras: dict[int, tuple[Intrinsics, np.ndarray]],
    depth: Callable[[int], np.ndarray],
) -> dict[int, Confidence]:
    """Per instance: the fraction of the keyframes that show it in which it was detected.

    The keyframes are the frames in ``cameras`` (the union of every instance's ``frames_observed`` is the
    best record a build keeps of them). A keyframe shows an instance when at least ``VISIBLE_FRACTION`` of
    its vertices (a fixed subsample of at most ``MAX_CONFIDENCE_VERTICES``) are visible in it: in front of
    the camera, inside the image, and within ``max(DEPTH_TOL_M, DEPTH_TOL_REL * z)`` of the keyframe's
    measured depth at their pixel (so a thing hidden behind another, or the far side of itself, does not
    count). A frame the instance was detected in always counts as showing it, so the value is in (0, 1].

    Args:
        instance_vertices: instance id -> (N, 3) vertices, scene frame (the cameras' world), metres.
        frames_observed: instance id -> scene frame indices it was associated in.
        cameras: keyframe index -> (intrinsics, (4, 4) camera-to-world with OpenCV axes).
        depth: keyframe index -> its (H, W) float32 z-depth image in metres (0 = invalid); called once per
            keyframe.
    """
    keys = sorted(cameras)
    out: dict[int, Confidence] = {}
    observed = {i: set(frames_observed.get(i, ())) & set(keys) for i in instance_vertices}
    for inst in instance_vertices:
        if not keys:
            why = "the build records no keyframes"
            out[inst] = Confidence(None, reason=why, public_reason=why)
        elif not observed[inst]:
            why = "the build records no keyframe it was detected in"
            out[inst] = Confidence(None, reason=f"instances.json: {why}", public_reason=why)
    todo = [i for i in instance_vertices if i not in out]
    samples = {}
    for inst in todo:
        v = np.asarray(instance_vertices[inst], np.float64)
        samples[inst] = v[:: max(1, int(np.ceil(len(v) / MAX_CONFIDENCE_VERTICES)))]
    shown: dict[int, set[int]] = {i: set() for i in todo}
    for k in keys if todo else []:
        K, c2w = cameras[k]
        d = np.asarray(depth(k), np.float32)
        if d.shape != (K.height, K.width):
            raise ValueError(f"keyframe {k}: depth image is {d.shape}, the camera {K.height}x{K.width}")
        w2c = np.linalg.inv(np.asarray(c2w, np.float64))
        for inst in todo:
            p = samples[inst] @ w2c[:3, :3].T + w2c[:3, 3]
            z = p[:, 2]
            front = z > 1e-3
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.floor(K.fx * p[:, 0] / z + K.cx)
                r = np.floor(K.fy * p[:, 1] / z + K.cy)
            ok = front & (u >= 0) & (u < K.width) & (r >= 0) & (r < K.height)
            measured = np.zeros(len(z), np.float32)
            measured[ok] = d[r[ok].astype(np.int64), u[ok].astype(np.int64)]
            visible = (
                ok & (measured > 0) & (np.abs(measured - z) <= np.maximum(DEPTH_TOL_M, DEPTH_TOL_REL * z))
            )
            if visible.mean() >= VISIBLE_FRACTION:
                shown[inst].add(k)
    for inst in todo:
        seen = shown[inst] | observed[inst]
        out[inst] = Confidence(len(observed[inst]) / len(seen), len(observed[inst]), len(seen))
    return out


def build_confidences(
    build_dir: Path, pmesh: folders.PanopticMesh, records: list[folders.InstanceRecord]
) -> tuple[dict[int, Confidence], str]:
    """:func:`detection_confidence` of every instance of a build, with the cameras of its scene folder.

    Returns (instance id -> Confidence, "" or the reason none could be computed: no ``frames_observed``
    in ``instances.json``, or the scene folder of ``build.json`` missing).
    """
    ids = [r.id for r in records]
    observed = {r.id: list(r.frames_observed) for r in records}
    keyframes = sorted({f for r in records for f in r.frames_observed})

    def none(reason: str, public: str = "the scan's cameras were not available at export") -> tuple:
        return {i: Confidence(None, reason=reason, public_reason=public) for i in ids}, reason

    if not keyframes:
        return none(
            f"{build_dir / folders.INSTANCES_FILE} records no frames_observed",
            "the build did not record the keyframes it detected this instance in",
        )
    scene_dir, problem = folders.scene_of_build(build_dir)
    if scene_dir is None:
        return none(problem)
    from simgen.data.scene import SceneError, load_scene

    try:
        scene = load_scene(scene_dir, validate=False, check_images=False)
    except (SceneError, OSError, ValueError) as e:
        return none(f"scene folder {scene_dir} cannot be loaded ({e})")
    bad = [f for f in keyframes if not 0 <= f < len(scene.frames)]
    if bad:
        return none(
            f"{build_dir / folders.INSTANCES_FILE}: frames_observed {bad[:5]} not frames of {scene_dir}"
        )
    cameras = {f: (scene.frames[f].intrinsics, scene.frames[f].c2w_cv) for f in keyframes}
    missing = [f for f in keyframes if not scene.frames[f].depth_path.is_file()]
    if missing:
        return none(f"{scene.frames[missing[0]].depth_path}: missing (the depth of keyframe {missing[0]})")
    order = np.argsort(pmesh.instance, kind="stable")
    sorted_ids = pmesh.instance[order]
    verts = {}
    for i in ids:
        a, b = np.searchsorted(sorted_ids, i), np.searchsorted(sorted_ids, i, side="right")
        verts[i] = pmesh.vertices[order[a:b]]
    try:
        return detection_confidence(verts, observed, cameras, scene.depth), ""
    except (OSError, ValueError) as e:  # an unreadable or mis-sized depth image: the export goes on
        return none(f"scene folder {scene_dir}: {e}")


# ----------------------------------------------------------------------------- model.config


def describe(
    class_name: str,
    kind: str,
    category_id: int,
    instance_id: int,
    confidence: Confidence | None,
    license: str,
) -> str:
    """The ``<description>`` of a model: class, instance id, confidence (what it means) and licence."""
    if kind == "thing":
        head = f"{class_name} (class id {category_id}), instance {instance_id} of a scanned scene"
    else:
        head = (
            f"{class_name} (class id {category_id}, stuff: floor, wall or other surface) of a scanned scene"
        )
    head += ", reconstructed from RGB-D frames and exported by simgen."
    if kind != "thing":
        conf = " Confidence: not applicable (stuff is not tracked as an instance)."
    elif confidence is None or confidence.value is None:
        # The full reason (export.json) names local files; a description that travels with the model must not.
        why = confidence.public_reason if confidence is not None else "not computed"
        conf = f" Confidence: unknown ({why})."
    else:
        conf = (
            f" Confidence {confidence.value:.2f}: the segmentation detected this instance in "
            f"{confidence.observed} of the {confidence.shown} keyframes that show it."
        )
    return f"{head}{conf} License: {license}."


def read_model_config(path: Path) -> dict:
    """The fields of a ``model.config`` (name, version, sdf, sdf_version, author, email, license,
    description). Raises FuelError naming the file when it is not one."""
    try:
        root = etree.parse(str(path)).getroot()
    except (etree.XMLSyntaxError, OSError) as e:
        raise FuelError(f"{path}: not readable XML ({e})") from e
    if root.tag != "model" or root.find("sdf") is None or not (root.findtext("name") or "").strip():
        raise FuelError(f"{path}: not a model.config (needs <model> with <name> and <sdf>)")
    return {
        "name": root.findtext("name", "").strip(),
        "version": root.findtext("version", "").strip(),
        "sdf": root.findtext("sdf", "").strip(),
        "sdf_version": root.find("sdf").get("version", ""),
        "author": root.findtext("author/name", "").strip(),
        "email": root.findtext("author/email", "").strip(),
        "license": root.findtext("license", "").strip(),
        "description": root.findtext("description", "").strip(),
    }


# ----------------------------------------------------------------------------- zip


def standalone_sdf(sdf_text: bytes, name: str) -> bytes:
    """``model.sdf`` with ``model://<name>/...`` URIs rewritten relative to the model folder (SDFormat
    resolves a relative URI against the file that holds it), so no resource path is needed."""
    try:
        tree = etree.parse(_io.BytesIO(sdf_text))
    except etree.XMLSyntaxError as e:
        raise FuelError(f"model {name}: {folders.MODEL_SDF_FILE} is not XML ({e})") from e
    prefix = f"model://{name}/"
    for uri in tree.iterfind(".//uri"):
        text = (uri.text or "").strip()
        if text.startswith(prefix):
            uri.text = text[len(prefix) :]
        elif text.startswith("model://") or text.startswith("file://") or text.startswith("/"):
            raise FuelError(f"model {name}: {folders.MODEL_SDF_FILE} refers outside the model ({text})")
    return etree.tostring(tree, pretty_print=True, xml_declaration=True, encoding="utf-8")


def model_files(model_dir: Path) -> list[str]:
    """The files of a model folder a Fuel package holds, relative, sorted: model.config, model.sdf and
    everything under meshes/, materials/ and thumbnails/."""
    model_dir = Path(model_dir)
    for required in (folders.MODEL_CONFIG_FILE, folders.MODEL_SDF_FILE):
        if not (model_dir / required).is_file():
            raise FuelError(f"{model_dir / required}: missing (a Fuel model needs it)")
    files = [folders.MODEL_CONFIG_FILE, folders.MODEL_SDF_FILE]
    for sub in (folders.MODEL_MESHES_DIR, folders.MODEL_MATERIALS_DIR, folders.MODEL_THUMBNAILS_DIR):
        if (model_dir / sub).is_dir():
            files += sorted(
                p.relative_to(model_dir).as_posix() for p in (model_dir / sub).rglob("*") if p.is_file()
            )
    return files


def write_model_zip(model_dir: Path, zip_path: Path) -> dict:
    """Write ``zip_path`` holding ``<name>/<file>`` for each of :func:`model_files` (``<name>`` = the
    folder's name), ``model.sdf`` made standalone; deterministic bytes, written atomically.

    Returns {"zip": file name, "files": count, "bytes": size}.
    """
    model_dir = Path(model_dir)
    name = model_dir.name
    files = model_files(model_dir)
    with io.atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for rel in files:
            data = (model_dir / rel).read_bytes()
            if rel == folders.MODEL_SDF_FILE:
                data = standalone_sdf(data, name)
            # PNGs are compressed already; deflating them again costs time for nothing.
            method = zipfile.ZIP_STORED if rel.endswith(".png") else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return {"zip": Path(zip_path).name, "files": len(files), "bytes": Path(zip_path).stat().st_size}
