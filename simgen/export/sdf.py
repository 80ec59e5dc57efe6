"""SDFormat (Gazebo) model and world files, built with lxml."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen.export.colliders import Box

LABEL_PLUGIN = ("gz-sim-label-system", "gz::sim::systems::Label")
WORLD_PLUGINS = [
    ("gz-sim-physics-system", "gz::sim::systems::Physics", {}),
    ("gz-sim-user-commands-system", "gz::sim::systems::UserCommands", {}),
    ("gz-sim-scene-broadcaster-system", "gz::sim::systems::SceneBroadcaster", {}),
    ("gz-sim-sensors-system", "gz::sim::systems::Sensors", {"render_engine": "ogre2"}),
]


@dataclass
class Inertial:
    mass: float  # kg
    com: np.ndarray  # (3,) centre of mass, model frame (m)
    inertia: np.ndarray  # (3, 3) about the centre of mass, model-frame axes (kg m^2)


@dataclass
class ModelSpec:
    """What a model file needs; paths are relative to the model folder (``meshes/...``)."""

    name: str
    static: bool
    label: int  # 0..255, Gazebo Label system
    visual_mesh: str | None
    hull_meshes: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    inertial: Inertial | None = None
    description: str = ""


def fmt(values) -> str:
    """Space-separated numbers, short but exact enough (micrometres, microradians)."""
    return " ".join(
        f"{float(v):.6g}" if abs(float(v)) >= 1e-4 else f"{float(v):.3g}" for v in np.ravel(values)
    )


def pose_text(T: np.ndarray) -> str:
    """SDF ``<pose>`` text "x y z roll pitch yaw" (fixed-axis XYZ) of a (4, 4) transform."""
    rpy = Rotation.from_matrix(T[:3, :3]).as_euler("xyz")
    return fmt(np.concatenate([T[:3, 3], rpy]))


def _sub(parent, tag: str, text=None, **attrib):
    el = etree.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        el.text = str(text)
    return el


def _mesh_geometry(parent, uri: str) -> None:
    geom = _sub(parent, "geometry")
    mesh = _sub(geom, "mesh")
    _sub(mesh, "uri", uri)


def model_sdf(spec: ModelSpec, version: str = "1.9") -> etree._ElementTree:
    """``model.sdf`` of one exported object: one link, a visual, one collision per hull / box, a label."""
    root = etree.Element("sdf", version=version)
    model = _sub(root, "model", name=spec.name)
    _sub(model, "static", "true" if spec.static else "false")
    link = _sub(model, "link", name="link")
    if spec.inertial is not None:
        inertial = _sub(link, "inertial")
        _sub(inertial, "pose", fmt([*spec.inertial.com, 0, 0, 0]))
        _sub(inertial, "mass", fmt([spec.inertial.mass]))
        inertia = _sub(inertial, "inertia")
        I = spec.inertial.inertia
        for tag, (i, j) in zip(
            ("ixx", "ixy", "ixz", "iyy", "iyz", "izz"),
            ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)),
            strict=True,
        ):
            _sub(inertia, tag, fmt([I[i, j]]))
    if spec.visual_mesh:
        visual = _sub(link, "visual", name="visual")
        _mesh_geometry(visual, f"model://{spec.name}/{spec.visual_mesh}")
    for k, uri in enumerate(spec.hull_meshes):
        col = _sub(link, "collision", name=f"hull_{k}")
        _mesh_geometry(col, f"model://{spec.name}/{uri}")
    for k, box in enumerate(spec.boxes):
        col = _sub(link, "collision", name=f"box_{k}")
        _sub(col, "pose", pose_text(box.pose))
        geom = _sub(col, "geometry")
        _sub(_sub(geom, "box"), "size", fmt(box.size))
    plugin = _sub(model, "plugin", filename=LABEL_PLUGIN[0], name=LABEL_PLUGIN[1])
    _sub(plugin, "label", int(spec.label))
    return etree.ElementTree(root)


def model_config(
    name: str,
    description: str,
    version: str = "1.9",
    author: str = "unspecified",
    email: str = "",
    license: str | None = None,
) -> etree._ElementTree:
    """``model.config``: the manifest Gazebo's ``<include>`` and Gazebo Fuel read (name, version, sdf,
    author name / e-mail, description).

    ``<license>`` (when given) is extra: Gazebo and Fuel ignore elements they do not know, and it keeps the
    licence with the files (Fuel's own licence field is set in its upload form).
    """
    root = etree.Element("model")
    _sub(root, "name", name)
    _sub(root, "version", "1.0")
    _sub(root, "sdf", "model.sdf", version=version)
    author_el = _sub(root, "author")
    _sub(author_el, "name", author)
    if email:
        _sub(author_el, "email", email)
    if license is not None:
        _sub(root, "license", license)
    _sub(root, "description", description)
    return etree.ElementTree(root)


def world_sdf(
    scene: str,
    includes: list[tuple[str, np.ndarray]],
    room_min: np.ndarray,
    room_max: np.ndarray,
    version: str = "1.9",
) -> etree._ElementTree:
    """The world: physics, systems, scene, lights and one ``<include>`` per model.

    Args:
        includes: [(model name, (4, 4) world pose of the model frame)].
        room_min, room_max: (3,) bounds of the exported geometry (world frame), to place the lights.
    """
    root = etree.Element("sdf", version=version)
    world = _sub(root, "world", name=scene)
    physics = _sub(world, "physics", name="1ms", type="ignored")
    _sub(physics, "max_step_size", "0.001")
    _sub(physics, "real_time_factor", "1.0")
    for filename, name, children in WORLD_PLUGINS:
        plugin = _sub(world, "plugin", filename=filename, name=name)
        for k, v in children.items():
            _sub(plugin, k, v)
    _sub(world, "gravity", "0 0 -9.8")
    scene_el = _sub(world, "scene")
    _sub(scene_el, "ambient", "0.6 0.6 0.6 1")
    _sub(scene_el, "background", "0.7 0.7 0.7 1")
    _sub(scene_el, "shadows", "true")
    _sub(scene_el, "grid", "false")
    sun = _sub(world, "light", type="directional", name="sun")
    _sub(sun, "cast_shadows", "true")
    _sub(sun, "pose", fmt([0, 0, max(float(room_max[2]), 1.0) + 5, 0, 0, 0]))
    _sub(sun, "diffuse", "0.8 0.8 0.8 1")
    _sub(sun, "specular", "0.2 0.2 0.2 1")
    _sub(sun, "direction", "-0.4 0.2 -0.9")
    # Indoor fill light under the (left out) ceiling so rooms are not lit only through the walls' backs.
    centre = (np.asarray(room_min) + np.asarray(room_max)) / 2
    fill = _sub(world, "light", type="point", name="room_light")
    _sub(fill, "cast_shadows", "false")
    _sub(fill, "pose", fmt([centre[0], centre[1], max(float(room_max[2]) - 0.3, 1.5), 0, 0, 0]))
    _sub(fill, "diffuse", "0.6 0.6 0.6 1")
    _sub(fill, "specular", "0.1 0.1 0.1 1")
    att = _sub(fill, "attenuation")
    _sub(att, "range", fmt([max(float(np.linalg.norm(room_max - room_min)), 5.0) * 2]))
    _sub(att, "constant", "0.5")
    _sub(att, "linear", "0.02")
    _sub(att, "quadratic", "0.001")
    for name, pose in includes:
        inc = _sub(world, "include")
        _sub(inc, "uri", f"model://{name}")
        _sub(inc, "name", name)
        _sub(inc, "pose", pose_text(pose))
    return etree.ElementTree(root)


def write_xml(tree: etree._ElementTree, path) -> None:
    tree.write(str(path), pretty_print=True, xml_declaration=True, encoding="utf-8")
