"""``simgen world OUT --robot jackal``: an exported scene plus a Jackal-sized robot with the simgen camera.

Writes, next to the export's own files::

    OUT/models/simgen_<name>/{model.config, model.sdf}   the robot (this module's :func:`jackal_model_sdf`)
    OUT/worlds/<scene>_<name>.sdf                         the export's world + the robot at a free spawn pose

(``<name>`` is ``jackal`` by default; each robot gets its own model folder because the camera settings
and topics are written into it.)

The robot is written by us to Clearpath Jackal's outer size (0.51 x 0.43 x 0.25 m, 4 wheels of radius
0.098 m, track 0.37 m): a box chassis, four wheel links on revolute joints driven by Gazebo's DiffDrive
system (``<topic>/cmd_vel`` as ``gz.msgs.Twist``), a ``camera_link`` carrying a native Gazebo camera sensor
(for comparison) and the simgen camera plugin (``sensor_plugin/simgen_camera_system.py``) that publishes
the render server's RGB, depth and panoptic images.

The spawn pose is the floor point farthest from every obstacle (:func:`free_spawn_pose`), facing the
longest free line of sight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from lxml import etree
from scipy import ndimage

from simgen import folders
from simgen.config import ConfigError
from simgen.data import io
from simgen.folders import PanopticMesh

# Jackal's outer size and wheel layout (Clearpath Jackal UGV datasheet: 508 x 430 x 250 mm, 17 kg).
CHASSIS = (0.51, 0.31, 0.14)  # box, m
CHASSIS_Z = 0.16  # chassis centre above the ground (bottom at 0.09 m)
WHEEL_RADIUS = 0.098
WHEEL_WIDTH = 0.06
WHEEL_BASE = 0.262  # front-rear axle distance
TRACK = 0.37  # left-right wheel centre distance: TRACK + WHEEL_WIDTH = 0.43 m overall width
CAMERA_BOX = 0.03
CAMERA_XYZ = (0.21, 0.0, 0.235)  # camera_link origin, model frame; box top at 0.25 m
FOOTPRINT_RADIUS = math.hypot(CHASSIS[0] / 2, (TRACK + WHEEL_WIDTH) / 2)  # ~0.333 m
ODOM_RATE_HZ = 20.0  # DiffDrive odometry / TF rate (and simgen drive's bag odometry)
# REP 105 / 103 frame ids the robot publishes under (simgen.sim.ros2 builds its TF tree on them).
ODOM_FRAME_ID, BASE_FRAME_ID, OPTICAL_FRAME_ID = "odom", "base_link", "camera_optical_frame"


class WorldError(ValueError):
    """The export cannot take a robot; the message names the file or the problem."""


@dataclass
class WorldConfig:
    robot: Literal["jackal"] = field(default="jackal", metadata={"help": "robot model to add"})
    name: str = field(default="jackal", metadata={"help": "robot's model name in the world"})
    server: str = field(
        default="http://127.0.0.1:8000", metadata={"help": "render server the camera plugin calls"}
    )
    rate_hz: float = field(default=10.0, metadata={"help": "camera frames per second of simulation time"})
    width: int = field(default=320, metadata={"help": "camera image width (pixels)"})
    height: int = field(default=240, metadata={"help": "camera image height (pixels)"})
    hfov_rad: float = field(default=1.047, metadata={"help": "camera horizontal field of view (rad)"})
    camera_pitch: float = field(default=0.0, metadata={"help": "camera pitch (rad, positive looks down)"})
    topic: str = field(
        default="/jackal", metadata={"help": "topic prefix: <topic>/cmd_vel, <topic>/simgen/..."}
    )
    spawn: tuple[float, ...] | None = field(
        default=None, metadata={"help": "spawn pose 'x y yaw' (m, m, rad); default: the freest floor point"}
    )
    clearance: float = field(default=0.1, metadata={"help": "free space kept around the robot at spawn (m)"})
    ros2: bool = field(
        default=False,
        metadata={
            "help": "also write a ros_gz_bridge YAML and a ROS 2 launch file beside the world (docs/ros2.md)"
        },
    )

    def __post_init__(self) -> None:
        if not (self.rate_hz > 0 and self.width >= 1 and self.height >= 1 and 0 < self.hfov_rad < math.pi):
            raise ConfigError(
                "WorldConfig: rate_hz must be > 0, width and height >= 1, hfov_rad in (0, pi); got "
                f"{self.rate_hz}, {self.width}x{self.height}, {self.hfov_rad}"
            )
        if self.clearance < 0:
            raise ConfigError(f"WorldConfig: clearance must be >= 0 m, got {self.clearance}")
        if self.spawn is not None and (len(self.spawn) != 3 or not all(math.isfinite(v) for v in self.spawn)):
            raise ConfigError(f"WorldConfig: spawn must be 3 finite numbers x y yaw, got {self.spawn}")


# -- the robot -------------------------------------------------------------------------------------------------


def _sub(parent, tag: str, text=None, **attrib):
    el = etree.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        el.text = str(text)
    return el


def _num(*values: float) -> str:
    return " ".join(f"{v:.12g}" for v in values)


def _inertial(link, mass: float, ixx: float, iyy: float, izz: float, z: float = 0.0) -> None:
    inertial = _sub(link, "inertial")
    _sub(inertial, "pose", _num(0, 0, z, 0, 0, 0))
    _sub(inertial, "mass", _num(mass))
    inertia = _sub(inertial, "inertia")
    for tag, v in (("ixx", ixx), ("ixy", 0), ("ixz", 0), ("iyy", iyy), ("iyz", 0), ("izz", izz)):
        _sub(inertia, tag, _num(v))


def _box_link(link, size, z: float, color: str) -> None:
    for kind in ("collision", "visual"):
        el = _sub(link, kind, name=kind)
        _sub(el, "pose", _num(0, 0, z, 0, 0, 0))
        _sub(_sub(_sub(el, "geometry"), "box"), "size", _num(*size))
        if kind == "visual":
            mat = _sub(el, "material")
            _sub(mat, "ambient", color)
            _sub(mat, "diffuse", color)


def jackal_model_sdf(cfg: WorldConfig | None = None, version: str = "1.9") -> etree._ElementTree:
    """``model.sdf`` of the Jackal-sized robot (model frame: ground level under the chassis centre, x forward)."""
    cfg = cfg or WorldConfig()
    root = etree.Element("sdf", version=version)
    model = _sub(root, "model", name=model_name(cfg))
    base = _sub(model, "link", name="base_link")
    _sub(base, "pose", _num(0, 0, WHEEL_RADIUS, 0, 0, 0))
    L, W, H = CHASSIS
    m = 16.0
    _inertial(
        base,
        m,
        m * (W**2 + H**2) / 12,
        m * (L**2 + H**2) / 12,
        m * (L**2 + W**2) / 12,
        CHASSIS_Z - WHEEL_RADIUS,
    )
    _box_link(base, CHASSIS, CHASSIS_Z - WHEEL_RADIUS, "0.15 0.15 0.15 1")
    mw = 0.5
    i_axis, i_side = mw * WHEEL_RADIUS**2 / 2, mw * (3 * WHEEL_RADIUS**2 + WHEEL_WIDTH**2) / 12
    for side, sy in (("left", 1), ("right", -1)):
        for end, sx in (("front", 1), ("rear", -1)):
            name = f"{end}_{side}_wheel"
            wheel = _sub(model, "link", name=name)
            # Roll -90 deg turns the cylinder's z axis to the model's +y: positive spin drives forward.
            _sub(wheel, "pose", _num(sx * WHEEL_BASE / 2, sy * TRACK / 2, WHEEL_RADIUS, -math.pi / 2, 0, 0))
            _inertial(wheel, mw, i_side, i_side, i_axis)
            for kind in ("collision", "visual"):
                el = _sub(wheel, kind, name=kind)
                cyl = _sub(_sub(el, "geometry"), "cylinder")
                _sub(cyl, "radius", _num(WHEEL_RADIUS))
                _sub(cyl, "length", _num(WHEEL_WIDTH))
                if kind == "collision":
                    ode = _sub(_sub(_sub(el, "surface"), "friction"), "ode")
                    _sub(ode, "mu", "1.0")
                    _sub(ode, "mu2", "1.0")
                else:
                    mat = _sub(el, "material")
                    _sub(mat, "ambient", "0.05 0.05 0.05 1")
                    _sub(mat, "diffuse", "0.05 0.05 0.05 1")
            joint = _sub(model, "joint", name=f"{name}_joint", type="revolute")
            _sub(joint, "parent", "base_link")
            _sub(joint, "child", name)
            axis = _sub(joint, "axis")
            _sub(axis, "xyz", "0 0 1")
            limit = _sub(axis, "limit")
            _sub(limit, "lower", "-1e16")
            _sub(limit, "upper", "1e16")
    cam = _sub(model, "link", name="camera_link")
    _sub(cam, "pose", _num(*CAMERA_XYZ, 0, cfg.camera_pitch, 0))
    _inertial(cam, 0.05, 1e-5, 1e-5, 1e-5)
    _box_link(cam, (CAMERA_BOX,) * 3, 0.0, "0.8 0.1 0.1 1")
    sensor = _sub(cam, "sensor", name="gazebo_camera", type="camera")
    _sub(sensor, "always_on", "true")
    _sub(sensor, "update_rate", _num(cfg.rate_hz))
    _sub(sensor, "topic", f"{cfg.topic}/gazebo_camera/image")
    camera = _sub(sensor, "camera")
    _sub(camera, "horizontal_fov", _num(cfg.hfov_rad))
    image = _sub(camera, "image")
    _sub(image, "width", cfg.width)
    _sub(image, "height", cfg.height)
    _sub(image, "format", "R8G8B8")
    clip = _sub(camera, "clip")
    _sub(clip, "near", "0.05")
    _sub(clip, "far", "50")
    joint = _sub(model, "joint", name="camera_joint", type="fixed")
    _sub(joint, "parent", "base_link")
    _sub(joint, "child", "camera_link")
    dd = _sub(model, "plugin", filename="gz-sim-diff-drive-system", name="gz::sim::systems::DiffDrive")
    for side in ("left", "right"):
        for end in ("front", "rear"):
            _sub(dd, f"{side}_joint", f"{end}_{side}_wheel_joint")
    _sub(dd, "wheel_separation", _num(TRACK))
    _sub(dd, "wheel_radius", _num(WHEEL_RADIUS))
    _sub(dd, "max_linear_velocity", "2.0")  # Jackal's top speed, m/s
    _sub(dd, "topic", f"{cfg.topic}/cmd_vel")
    _sub(dd, "odom_topic", f"{cfg.topic}/odometry")
    _sub(dd, "odom_publish_frequency", _num(ODOM_RATE_HZ))
    _sub(dd, "frame_id", ODOM_FRAME_ID)
    _sub(dd, "child_frame_id", BASE_FRAME_ID)  # the model frame: ground level under the chassis centre
    _sub(dd, "tf_topic", f"{cfg.topic}/tf")
    py = _sub(
        model,
        "plugin",
        filename="gz-sim-python-system-loader-system",
        name="gz::sim::systems::PythonSystemLoader",
    )
    _sub(py, "module_name", "simgen_camera_system")
    _sub(py, "server", cfg.server)
    _sub(py, "camera_link", "camera_link")
    _sub(py, "rate_hz", _num(cfg.rate_hz))
    _sub(py, "width", cfg.width)
    _sub(py, "height", cfg.height)
    _sub(py, "hfov_rad", _num(cfg.hfov_rad))
    _sub(py, "topic", f"{cfg.topic}/simgen")
    _sub(py, "frame_id", OPTICAL_FRAME_ID)  # the images' axes: z forward, x right, y down (REP 103)
    return etree.ElementTree(root)


def model_name(cfg: WorldConfig) -> str:
    """Folder and model name of the robot: ``simgen_<name>``."""
    return f"simgen_{cfg.name}"


def model_config(cfg: WorldConfig | None = None, version: str = "1.9") -> etree._ElementTree:
    root = etree.Element("model")
    _sub(root, "name", model_name(cfg or WorldConfig()))
    _sub(root, "version", "1.0")
    _sub(root, "sdf", "model.sdf", version=version)
    _sub(root, "description", "Jackal-sized differential-drive robot with the simgen render-server camera")
    return etree.ElementTree(root)


def xml_bytes(tree: etree._ElementTree) -> bytes:
    return etree.tostring(tree, pretty_print=True, xml_declaration=True, encoding="utf-8")


def _write(path: Path, data: bytes) -> None:
    """Atomic write, world-readable: Gazebo often runs as another user than the one exporting."""
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600


def write_robot_model(models_dir: str | Path, cfg: WorldConfig | None = None) -> Path:
    """Write ``models_dir/simgen_<name>/{model.sdf, model.config}`` atomically; returns the model folder."""
    cfg = cfg or WorldConfig()
    folder = Path(models_dir) / model_name(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for name, tree in (("model.sdf", jackal_model_sdf(cfg)), ("model.config", model_config(cfg))):
        _write(folder / name, xml_bytes(tree))
    return folder


# -- where to put it -------------------------------------------------------------------------------------------


def floor_grid(
    mesh: PanopticMesh, floor_z: float = 0.0, body_height: float = 0.3, cell: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Free floor of ``mesh`` on a ``cell`` grid in the xy plane of the world frame.

    Surface samples of the mesh are binned on the grid: samples within 5 cm of ``floor_z`` mark floor,
    samples between 4 cm above the floor and ``body_height`` + 10 cm mark obstacles (a table top higher
    than the robot is no obstacle, its legs are).

    Returns:
        ``free (I, J) bool`` (floor and no obstacle; cell ``(i, j)`` covers
        ``lo + [i, j] * cell`` to ``lo + [i + 1, j + 1] * cell``) and ``lo (2,)`` (m, world x y).
    """
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    count = int(np.clip(tm.area / (cell / 3) ** 2, 20_000, 2_000_000))
    pts, _ = trimesh.sample.sample_surface(tm, count, seed=0)
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    shape = np.ceil((hi - lo) / cell).astype(int) + 1
    ij = np.floor((pts[:, :2] - lo) / cell).astype(int)
    z = pts[:, 2] - floor_z
    floor = np.zeros(shape, bool)
    occupied = np.zeros(shape, bool)
    on_floor = np.abs(z) < 0.05
    floor[ij[on_floor, 0], ij[on_floor, 1]] = True
    block = (z > 0.04) & (z < body_height + 0.1)
    occupied[ij[block, 0], ij[block, 1]] = True
    floor = ndimage.binary_closing(floor, iterations=2)  # sampling gaps, not holes in the floor
    return floor & ~occupied, lo


def free_spawn_pose(
    mesh: PanopticMesh,
    floor_z: float = 0.0,
    radius: float = FOOTPRINT_RADIUS + 0.1,
    body_height: float = 0.3,
    cell: float = 0.05,
    raycaster=None,
) -> tuple[float, float, float]:
    """The floor point farthest from every obstacle, and a heading with a long free view.

    Surface samples of the mesh are binned on a ``cell`` grid: samples within 5 cm of ``floor_z`` mark
    floor, samples between 4 cm above the floor and ``body_height`` + 10 cm mark obstacles (a table top
    higher than the robot is no obstacle, its legs are). The spawn point maximises the distance to the
    nearest non-floor or obstacle cell (Euclidean distance transform), so the robot is inside the room.

    Args:
        mesh: scene in the world frame (z up, metres).
        radius: clearance needed around the spawn point (m): footprint radius + margin.
        raycaster: :class:`simgen.render.raycast.MeshRaycaster` of ``mesh`` to choose the heading
            (longest of 16 horizontal lines of sight at camera height); None: heading 0.

    Returns:
        ``(x, y, yaw)``.

    Raises:
        WorldError: no floor point has ``radius`` of free space.
    """
    free, lo = floor_grid(mesh, floor_z, body_height, cell)
    clearance = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1] * cell
    best = np.unravel_index(int(np.argmax(clearance)), clearance.shape)
    if clearance[best] < radius:
        raise WorldError(
            f"no floor point with {radius:.2f} m of free space (best {clearance[best]:.2f} m); "
            "give --spawn X Y YAW"
        )
    x, y = (np.asarray(best) + 0.5) * cell + lo
    yaw = 0.0
    if raycaster is not None:
        headings = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        dirs = np.stack([np.cos(headings), np.sin(headings), np.zeros_like(headings)], 1)
        origins = np.tile([x, y, floor_z + CAMERA_XYZ[2]], (len(headings), 1))
        _, dist = raycaster.intersect(origins, dirs, normalized=True)
        dist = np.where(np.isfinite(dist), dist, 0.0)  # a view into the void is no view
        yaw = float(headings[int(np.argmax(dist))])
    return float(x), float(y), yaw


def _export_world(out_dir: Path) -> tuple[str, Path]:
    try:
        rec = folders.read_export_record(out_dir)
    except folders.FolderError as e:
        raise WorldError(f"{e} (run simgen export first)") from None
    scene, world = rec.scene, rec.world_file
    if not world.is_file():
        raise WorldError(f"{world}: missing (export with --format sdf or all)")
    return scene, world


@dataclass(frozen=True)
class WorldResult:
    """What :func:`compose_world` wrote."""

    world: Path
    """``worlds/<scene>_<robot name>.sdf``: the export's world with the robot included"""
    model: Path
    """the robot's model folder ``models/simgen_<name>``"""
    spawn: tuple[float, float, float]
    """the robot's spawn pose ``(x, y, yaw)`` in the world frame (m, m, rad)"""
    scene: str
    """the export's scene (world) name"""
    bridge: Path | None = None
    """with ``ros2``: the ros_gz_bridge YAML (:func:`simgen.sim.ros2.write_ros2_files`)"""
    launch: Path | None = None
    """with ``ros2``: the ROS 2 Python launch file"""


def compose_world(out_dir: str | Path, cfg: WorldConfig | None = None) -> WorldResult:
    """Add the robot to an export's world (with ``cfg.ros2`` also the ROS 2 bridge and launch files).

    Raises:
        WorldError / SceneLoadError: naming the missing or unreadable file.
    """
    from simgen.serve.scene import load_render_scene

    cfg = cfg or WorldConfig()
    out_dir = Path(out_dir)
    scene_name, world_path = _export_world(out_dir)
    if cfg.spawn is not None:
        spawn = tuple(float(v) for v in cfg.spawn)
    else:
        scene = load_render_scene(out_dir, rgb="mesh")  # geometry only
        spawn = free_spawn_pose(
            scene.mesh, raycaster=scene.raycaster, radius=FOOTPRINT_RADIUS + cfg.clearance
        )
    try:
        tree = etree.parse(str(world_path), etree.XMLParser(remove_blank_text=True))
    except etree.XMLSyntaxError as e:
        raise WorldError(f"{world_path}: not valid XML ({e})") from None
    world = tree.getroot().find("world")
    if world is None:
        raise WorldError(f"{world_path}: no <world> element")
    for inc in world.findall("include"):
        if inc.findtext("name") == cfg.name:
            raise WorldError(f"{world_path}: already has a model named {cfg.name!r}; pick another --name")
    inc = _sub(world, "include")
    _sub(inc, "uri", f"model://{model_name(cfg)}")
    _sub(inc, "name", cfg.name)
    # A centimetre of air under the wheels: the physics engine settles the robot onto the floor.
    _sub(inc, "pose", _num(spawn[0], spawn[1], 0.01, 0, 0, spawn[2]))
    model_dir = write_robot_model(out_dir / "models", cfg)
    out_world = world_path.with_name(f"{scene_name}_{cfg.name}.sdf")
    _write(out_world, xml_bytes(tree))
    ros2_files: dict[str, Path] = {}
    if cfg.ros2:
        from simgen.sim.ros2 import write_ros2_files

        ros2_files = write_ros2_files(
            out_world, jackal_model_sdf(cfg), cfg.server, CAMERA_XYZ, cfg.camera_pitch, spawn
        )
    x, y, yaw = spawn
    return WorldResult(out_world, model_dir, (x, y, yaw), scene_name, **ros2_files)
