"""``simgen drive OUT``: MuJoCo stands in for Gazebo -- a Jackal-sized robot drives through an exported
scene along waypoints while the render server renders its camera at 10 Hz of simulation time.

The export's MJCF (``OUT/mjcf/<scene>.xml``, the same collision hulls as the Gazebo world) gets the robot
added as a planar base: slide x, slide y and yaw hinge, each driven by a force-limited velocity actuator,
with the Jackal's box chassis and four wheel cylinders as colliders. (Driving through wheel friction
would add tuning, not fidelity, to a stand-in; the robot is still non-holonomic because the controller
only commands forward speed and yaw rate.) It floats 1 cm above the floor, as it is spawned in Gazebo, so
only obstacles touch it. When it pushes against one and stops making progress, the run ends and says
which collider blocked it. Without waypoints it drives a planned loop past every object
(:mod:`simgen.sim.route`, :func:`default_route`).

Outputs in ``-o DIR`` (default ``OUT/drive``): ``frames/NNNNNN_{rgb,depth,panoptic}.png`` (depth 16-bit
millimetres, panoptic in the COCO id encoding), ``trajectory.json`` (per frame: sim time, camera pose in
the gazebo convention, robot x, y, yaw, segments in view; the run's outcome), ``mjcf`` with the robot
(``OUT/mjcf/<scene>_drive.xml``), ``drive.gif`` (RGB | depth | panoptic side by side) and, with ``--bag``,
a ROS 2 bag of the images, camera info, odometry, TF and clock (:mod:`simgen.sim.bag`).

With ``--rig FILE`` the robot carries several cameras (:func:`load_rig`; each one the Gazebo bridge's
:class:`~simgen.sim.gazebo.BridgeConfig`, its ``camera_offset`` taken from ``base_link``), all rendered by
one ``/render/rig`` request per frame -- through ``--server``, or in this process by the function the
server's endpoint calls (:func:`simgen.serve.api.render_rig`). Each camera's images go to
``frames/<name>/NNNNNN_*.png`` and, with ``--bag``, to its own topics and ``<name>_optical_frame``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree

from simgen import folders
from simgen.config import ConfigError
from simgen.data import io
from simgen.sim.gazebo import (
    BridgeConfig,
    BridgeConfigError,
    camera_pose,
    config_from_sdf,
    rig_camera_name,
    rig_configs,
    rig_request,
)
from simgen.sim.world import (
    CAMERA_XYZ,
    CHASSIS,
    CHASSIS_Z,
    FOOTPRINT_RADIUS,
    ODOM_RATE_HZ,
    TRACK,
    WHEEL_BASE,
    WHEEL_RADIUS,
    WHEEL_WIDTH,
)

HOVER = 0.01  # m above the floor, as `simgen world` spawns it in Gazebo
ROBOT = "simgen_robot"


class DriveError(ValueError):
    """Bad input for a drive; the message names the file or option."""


@dataclass
class DriveConfig:
    waypoints: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "x y pairs (m, world frame) to drive through in order; none: a planned loop through the "
            "free floor that passes every object and returns to the start"
        },
    )
    spawn: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "start pose 'x y yaw'; default: the freest floor point (simgen world)"},
    )
    server: str | None = field(
        default=None, metadata={"help": "render server URL; default: render in this process"}
    )
    rate_hz: float = field(default=10.0, metadata={"help": "camera frames per second of simulation time"})
    width: int = field(default=320, metadata={"help": "image width (pixels)"})
    height: int = field(default=240, metadata={"help": "image height (pixels)"})
    hfov_rad: float = field(default=1.047, metadata={"help": "horizontal field of view (rad)"})
    speed: float = field(default=0.5, metadata={"help": "cruise speed (m/s)"})
    max_time: float | None = field(
        default=None,
        metadata={
            "help": "simulated seconds before giving up; default: 30 s + 3 x the route length at --speed "
            "+ 3 s per waypoint"
        },
    )
    clearance: float = field(
        default=0.1,
        metadata={"help": "free space kept around the robot's footprint on the planned default route (m)"},
    )
    reach: float = field(
        default=0.15, metadata={"help": "distance at which a waypoint counts as reached (m)"}
    )
    gif: bool = field(default=True, metadata={"help": "write drive.gif (RGB | depth | panoptic)"})
    bag: str | None = field(
        default=None,
        metadata={
            "help": "also write a ROS 2 bag of the drive (images, CameraInfo, TF, odometry, clock): FILE.mcap "
            "for one MCAP file, any other name for a rosbag2 folder (docs/ros2.md)"
        },
    )
    topic: str = field(
        default="/jackal",
        metadata={"help": "topic prefix in the bag, as simgen world --topic: <topic>/simgen/image, ..."},
    )
    rig: str | None = field(
        default=None,
        metadata={
            "help": "YAML or JSON file of several cameras on the robot (docs/ros2.md: 'Several cameras'): "
            "'cameras: [{name, camera_offset, width, height, hfov_rad, outputs, topic}]', offsets from "
            "base_link; all rendered by one /render/rig request per frame. Default: the one camera of "
            "simgen world"
        },
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"DriveConfig: {message}")

        if len(self.waypoints) % 2:
            raise bad(f"waypoints needs x y pairs, got {len(self.waypoints)} numbers")
        if not all(math.isfinite(v) for v in self.waypoints):
            raise bad(f"waypoints must be finite numbers, got {self.waypoints}")
        if self.spawn is not None and (len(self.spawn) != 3 or not all(math.isfinite(v) for v in self.spawn)):
            raise bad(f"spawn must be 3 finite numbers x y yaw, got {self.spawn}")
        if self.max_time is not None and not self.max_time > 0:
            raise bad(f"max_time must be > 0, got {self.max_time}")
        if not (self.rate_hz > 0 and self.speed > 0 and self.width >= 1 and self.height >= 1):
            raise bad(
                f"rate_hz and speed must be > 0, width and height >= 1; got {self.rate_hz}, {self.speed}, "
                f"{self.width}x{self.height}"
            )
        if not 0 < self.hfov_rad < math.pi:
            raise bad(f"hfov_rad must be in (0, pi), got {self.hfov_rad}")
        if self.clearance < 0 or self.reach <= 0:
            raise bad(f"clearance must be >= 0 and reach > 0 (m), got {self.clearance}, {self.reach}")


# -- camera rigs --------------------------------------------------------------------------------------------

#: keys of a camera entry of a ``--rig`` file: a name plus the bridge's per-camera elements
RIG_CAMERA_KEYS = ("name", "camera_offset", "width", "height", "hfov_rad", "outputs", "topic")
#: keys a ``--rig`` file may set once for all its cameras (over --width, --height, --hfov-rad)
RIG_SHARED_KEYS = ("width", "height", "hfov_rad", "outputs")


@dataclass(frozen=True)
class RigCamera:
    """One camera of a drive's rig: ``name`` (files ``frames/<name>/``, TF ``<name>_link`` and
    ``<name>_optical_frame``) and the Gazebo bridge's settings for it (``camera_offset``: the camera frame in
    ``base_link``, ``x y z roll pitch yaw`` in m and rad with gazebo axes; size, field of view, outputs and
    topic prefix)."""

    name: str
    cfg: BridgeConfig

    @property
    def link_frame(self) -> str:
        return f"{self.name}_link"

    @property
    def optical_frame(self) -> str:
        return f"{self.name}_optical_frame"


def _sdf_text(value: Any, where: str) -> str:
    """A YAML value as the text of an SDF element (what :func:`config_from_sdf` parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in value
    ):
        return " ".join(str(v) for v in value)
    raise DriveError(f"{where}: expected a number, a string or a list of them, got {value!r}")


def load_rig(path: str | Path, cfg: DriveConfig) -> list[RigCamera]:
    """The cameras of a ``--rig`` file (YAML; JSON is YAML too), parsed as the Gazebo plugin parses its
    ``<camera>`` blocks (:func:`simgen.sim.gazebo.rig_configs`).

    The file holds ``cameras``: a list of ``{name, camera_offset, width, height, hfov_rad, outputs, topic}``
    (only ``name`` required: letters, digits, ``_``, ``-``; ``camera_offset`` defaults to the robot's camera
    link), and optionally ``width``, ``height``, ``hfov_rad``, ``outputs`` for every camera. ``--width``,
    ``--height``, ``--hfov-rad`` are the defaults of both. A camera's ``topic`` defaults to
    ``<--topic>/simgen/<name>``.

    Raises:
        DriveError: naming the file and the camera's field.
    """
    import yaml

    from simgen.serve.api import RIG_NAME_CHARS  # the names /render/rig accepts

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DriveError(f"--rig {path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise DriveError(f"--rig {path}: not valid YAML or JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise DriveError(f"--rig {path}: expected a mapping with a non-empty list 'cameras'")
    for key in data:
        if key != "cameras" and key not in RIG_SHARED_KEYS:
            raise DriveError(
                f"--rig {path}: unknown key {key!r}; expected 'cameras' and some of {list(RIG_SHARED_KEYS)}"
            )
    shared = {"width": str(cfg.width), "height": str(cfg.height), "hfov_rad": repr(cfg.hfov_rad)}
    shared.update({k: _sdf_text(v, f"--rig {path}: {k}") for k, v in data.items() if k != "cameras"})
    try:
        config_from_sdf(shared)
    except BridgeConfigError as e:
        raise DriveError(f"--rig {path}: {e.key}: {str(e).split(': ', 1)[1]}") from None
    names: list[str] = []
    cams: list[dict[str, str]] = []
    base_topic = cfg.topic.rstrip("/")
    for i, entry in enumerate(data["cameras"]):
        where = f"--rig {path}: cameras[{i}]"
        if not isinstance(entry, dict):
            raise DriveError(f"{where}: expected a mapping of {list(RIG_CAMERA_KEYS)}")
        for key in entry:
            if key not in RIG_CAMERA_KEYS:
                raise DriveError(f"{where}.{key}: unknown key; expected some of {list(RIG_CAMERA_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= RIG_NAME_CHARS:
            raise DriveError(f"{where}.name: 1-64 letters, digits, '_' or '-' required, got {name!r}")
        if name in names:
            raise DriveError(f"{where}.name: {name!r} is already the name of cameras[{names.index(name)}]")
        names.append(name)
        cam = {k: _sdf_text(v, f"{where}.{k}") for k, v in entry.items() if k != "name"}
        cam.setdefault("camera_offset", " ".join(repr(float(v)) for v in (*CAMERA_XYZ, 0.0, 0.0, 0.0)))
        cam.setdefault("topic", f"{base_topic}/simgen/{name}")
        cam["frame_id"] = f"{name}_optical_frame"
        try:
            config_from_sdf({**shared, **cam})  # first per camera, so the error can name the camera
        except BridgeConfigError as e:
            raise DriveError(f"{where}.{e.key}: {str(e).split(': ', 1)[1]}") from None
        cams.append(cam)
    try:
        cfgs = rig_configs(shared, cams)
    except BridgeConfigError as e:
        raise DriveError(f"--rig {path}: {e}") from None
    request_names = [rig_camera_name(c, i) for i, c in enumerate(cfgs)]
    if len(set(request_names)) < len(request_names):
        raise DriveError(f"--rig {path}: camera topics must differ in more than '/' ({request_names})")
    return [RigCamera(n, c) for n, c in zip(names, cfgs, strict=True)]


def robot_mjcf(x: float, y: float, yaw: float) -> tuple[etree._Element, etree._Element]:
    """The robot ``<body>`` and its ``<actuator>`` children (MJCF), base frame on the floor under the chassis."""
    body = etree.Element("body", name=ROBOT, pos=f"{x:.6g} {y:.6g} {HOVER}")
    for name, kind, axis in (("x", "slide", "1 0 0"), ("y", "slide", "0 1 0"), ("yaw", "hinge", "0 0 1")):
        etree.SubElement(body, "joint", name=f"{ROBOT}_{name}", type=kind, axis=axis, damping="1")
    L, W, H = CHASSIS
    etree.SubElement(
        body,
        "geom",
        name=f"{ROBOT}_chassis",
        type="box",
        size=f"{L / 2} {W / 2} {H / 2}",
        pos=f"0 0 {CHASSIS_Z}",
        mass="16",
        rgba="0.15 0.15 0.15 1",
    )
    for side, sy in (("left", 1), ("right", -1)):
        for end, sx in (("front", 1), ("rear", -1)):
            etree.SubElement(
                body,
                "geom",
                name=f"{ROBOT}_{end}_{side}_wheel",
                type="cylinder",
                size=f"{WHEEL_RADIUS} {WHEEL_WIDTH / 2}",
                pos=f"{sx * WHEEL_BASE / 2} {sy * TRACK / 2} {WHEEL_RADIUS}",
                zaxis="0 1 0",
                mass="0.5",
                rgba="0.05 0.05 0.05 1",
            )
    etree.SubElement(body, "site", name=f"{ROBOT}_camera", pos=" ".join(str(v) for v in CAMERA_XYZ))
    # Each base joint is rotated to its target velocity with a capped force: against an obstacle the
    # cap is reached and the robot stops instead of tunnelling through.
    actuators = etree.Element("actuator")
    etree.SubElement(actuators, "velocity", joint=f"{ROBOT}_x", kv="400", forcerange="-150 150")
    etree.SubElement(actuators, "velocity", joint=f"{ROBOT}_y", kv="400", forcerange="-150 150")
    etree.SubElement(actuators, "velocity", joint=f"{ROBOT}_yaw", kv="40", forcerange="-30 30")
    return body, actuators


def export_mjcf(out_dir: Path) -> Path:
    """The export's MJCF file ``OUT/mjcf/<scene>.xml`` (DriveError naming what is missing)."""
    try:
        src = folders.read_export_record(out_dir).mjcf_file
    except folders.FolderError as e:
        raise DriveError(f"{e} (run simgen export first)") from None
    if not src.is_file():
        raise DriveError(f"{src}: missing (export with --format mjcf or all)")
    return src


def scene_with_robot(out_dir: Path, spawn: tuple[float, float, float]) -> Path:
    """Write ``OUT/mjcf/<scene>_drive.xml``: the export's MJCF plus the robot; returns its path."""
    src = export_mjcf(out_dir)
    tree = etree.parse(str(src), etree.XMLParser(remove_blank_text=True))
    root = tree.getroot()
    worldbody = root.find("worldbody")
    if worldbody is None:
        raise DriveError(f"{src}: no <worldbody>")
    body, actuators = robot_mjcf(*spawn)
    worldbody.append(body)
    existing = root.find("actuator")
    if existing is None:
        root.append(actuators)
    else:
        existing.extend(list(actuators))
    dst = src.with_name(f"{src.stem}_drive.xml")  # beside the original: mesh paths stay relative to it
    with io.atomic_path(dst) as tmp:
        tmp.write_bytes(etree.tostring(tree, pretty_print=True, xml_declaration=True, encoding="utf-8"))
    return dst


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _renderer(out_dir: Path, cfg: DriveConfig, scene=None):
    """``render(pose) -> {rgb, depth, panoptic, segments}`` through the server or in process."""
    body = {"width": cfg.width, "height": cfg.height, "hfov_rad": cfg.hfov_rad, "convention": "gazebo"}
    if cfg.server:
        from simgen.serve.client import RenderClient

        client = RenderClient(cfg.server, retries=3)
        return lambda pose: client.post_render({"pose": pose, **body})
    from simgen.serve import api
    from simgen.serve.config import ServeConfig
    from simgen.serve.scene import load_render_scene

    scene = scene or load_render_scene(out_dir)

    def render(pose: dict) -> dict:
        params = api.parse_render_body({"pose": pose, **body}, ServeConfig(max_width=8192, max_height=8192))
        return scene.render(params.camera.intrinsics(), params.c2w_cv[0], params.outputs)

    return render


def _rig_renderer(out_dir: Path, cams: list[RigCamera], cfg: DriveConfig, scene=None):
    """``render(base_pose) -> [result per camera]``: one ``/render/rig`` request for the robot's base pose
    (gazebo axes) through the server, or the same request parsed and rendered in process. Each result holds
    the outputs asked for, ``segments`` and ``c2w_cv`` ``(4, 4)`` (the camera's OpenCV-axes pose rendered)."""
    cfgs = [c.cfg for c in cams]
    if cfg.server:
        from simgen.serve.client import RenderClient

        client = RenderClient(cfg.server, retries=3)
        names = [rig_camera_name(c, i) for i, c in enumerate(cfgs)]

        def render_remote(base_pose: dict) -> list[dict]:
            out = client.post_rig(rig_request(cfgs, base_pose))
            return [out[n] for n in names]

        return render_remote
    from simgen.serve import api
    from simgen.serve.config import ServeConfig
    from simgen.serve.scene import load_render_scene

    scene = scene or load_render_scene(out_dir)
    pixels = sum(c.width * c.height for c in cfgs)
    limits = ServeConfig(
        max_width=8192, max_height=8192, max_batch=max(32, len(cfgs)), max_batch_pixels=max(pixels, 1)
    )

    def render_local(base_pose: dict) -> list[dict]:
        rig = api.parse_rig_body(rig_request(cfgs, base_pose), limits)
        results = api.render_rig(scene, rig)
        for r, p in zip(results, rig.cameras, strict=True):
            r["c2w_cv"] = p.c2w_cv[0]
        return results

    return render_local


def drive(out_dir: str | Path, cfg: DriveConfig, dest: str | Path | None = None) -> dict[str, Any]:
    """Run the drive; returns the trajectory summary written to ``dest/trajectory.json``.

    Raises:
        DriveError / SceneLoadError / simgen.serve.client.RenderError / simgen.sim.bag.BagError: naming
        what is wrong. A failed drive leaves no bag behind.
    """
    out_dir = Path(out_dir)
    dest = Path(dest) if dest else out_dir / "drive"
    export_mjcf(out_dir)  # fail on a folder that is no export before any slow work
    cams = load_rig(cfg.rig, cfg) if cfg.rig else None
    scene = None
    if cfg.spawn is not None:
        spawn = tuple(float(v) for v in cfg.spawn)
    else:
        from simgen.serve.scene import load_render_scene
        from simgen.sim.world import free_spawn_pose

        scene = load_render_scene(out_dir)
        spawn = free_spawn_pose(scene.mesh, raycaster=scene.raycaster)
    if cams is None:
        render = _renderer(out_dir, cfg, None if cfg.server else scene)
    else:
        render = _rig_renderer(out_dir, cams, cfg, None if cfg.server else scene)
    mjcf_path = scene_with_robot(out_dir, spawn)
    bag = _open_bag(cfg, spawn, cams) if cfg.bag else None
    try:
        return _run(out_dir, cfg, dest, spawn, scene, render, mjcf_path, bag, cams)
    except BaseException:
        if bag is not None:
            bag.abort()
        raise


def _ros_K(width: int, height: int, hfov_rad: float) -> np.ndarray:
    """``(3, 3)`` ROS-convention intrinsics the renderer uses for these settings (the server parses the
    same body)."""
    from simgen.data.camera import ros_camera_matrix
    from simgen.serve import api
    from simgen.serve.config import ServeConfig

    body = {"pose": {"x": 0, "y": 0, "z": 0, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, "width": width}
    body.update(height=height, hfov_rad=hfov_rad, convention="gazebo")
    params = api.parse_render_body(body, ServeConfig(max_width=8192, max_height=8192))
    return ros_camera_matrix(params.camera.intrinsics().matrix())


def _open_bag(cfg: DriveConfig, spawn: tuple[float, float, float], cams: list[RigCamera] | None = None):
    from simgen.sim.bag import BagCamera, DriveBag, default_camera
    from simgen.sim.ros2 import ros_names
    from simgen.sim.world import WorldConfig, jackal_model_sdf

    names = ros_names(jackal_model_sdf(WorldConfig(topic=cfg.topic)))
    if cams is None:
        K = _ros_K(cfg.width, cfg.height, cfg.hfov_rad)
        return DriveBag(cfg.bag, names, spawn, [default_camera(names, CAMERA_XYZ, K, cfg.width, cfg.height)])
    bag_cams = []
    for cam in cams:
        c = cam.cfg
        off = tuple(float(v) for v in c.camera_offset)
        bag_cams.append(
            BagCamera(
                c.topics(),
                cam.link_frame,
                cam.optical_frame,
                (off[0], off[1], off[2]),
                (off[3], off[4], off[5]),
                _ros_K(c.width, c.height, c.hfov_rad),
                c.width,
                c.height,
                tuple(c.outputs),
            )
        )
    return DriveBag(cfg.bag, names, spawn, bag_cams)


def _run(
    out_dir: Path,
    cfg: DriveConfig,
    dest: Path,
    spawn,
    scene,
    render,
    mjcf_path: Path,
    bag,
    cams: list[RigCamera] | None = None,
) -> dict:
    import mujoco
    from tqdm.auto import tqdm

    model = mujoco.MjModel.from_xml_path(str(mjcf_path))
    data = mujoco.MjData(model)
    jx, jy, jyaw = (model.joint(f"{ROBOT}_{n}").qposadr[0] for n in ("x", "y", "yaw"))
    vx, vy, vyaw = (model.joint(f"{ROBOT}_{n}").dofadr[0] for n in ("x", "y", "yaw"))
    data.qpos[jyaw] = spawn[2]
    mujoco.mj_forward(model, data)
    robot_body = model.body(ROBOT).id
    robot_geoms = {g for g in range(model.ngeom) if model.geom_bodyid[g] == robot_body}
    base = np.array([model.body(ROBOT).pos[0], model.body(ROBOT).pos[1]])  # slide joints are offsets from it
    goals = None
    if cfg.waypoints:
        waypoints = np.asarray(cfg.waypoints, dtype=np.float64).reshape(-1, 2)
    else:
        from simgen.serve.scene import load_render_scene

        scene = scene or load_render_scene(out_dir, rgb="mesh")
        waypoints, goals = default_route(scene.mesh, model, data, {robot_body}, spawn[:2], cfg.clearance)
    lengths = np.linalg.norm(np.diff(np.vstack([spawn[:2], waypoints]), axis=0), axis=1)
    max_time = cfg.max_time or 30.0 + 3.0 * float(lengths.sum()) / cfg.speed + 3.0 * len(waypoints)

    frames_dir = dest / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    period = 1.0 / cfg.rate_hz
    next_frame = next_odom = 0.0
    target, frames, gif_frames = 0, [], []
    stalled_since: float | None = None
    outcome = {"status": "timeout", "blocked_by": None}
    touched: set[str] = set()
    bar = tqdm(total=len(waypoints), desc="drive", unit="waypoint", disable=cfg.quiet)

    def pose_now() -> tuple[float, float, float]:
        x, y = base + [data.qpos[jx], data.qpos[jy]]
        return float(x), float(y), float(data.qpos[jyaw])

    def frame(x: float, y: float, yaw: float) -> dict:
        if cams is None:
            return _frame(render, frames_dir, len(frames), data.time, x, y, yaw, gif_frames, cfg, bag)
        return _rig_frame(render, cams, frames_dir, len(frames), data.time, x, y, yaw, gif_frames, cfg, bag)

    def odometry() -> None:
        x, y, yaw = pose_now()
        c, s = math.cos(yaw), math.sin(yaw)
        v = data.qvel[vx], data.qvel[vy]
        bag.odometry(
            data.time, x, y, HOVER, yaw, (c * v[0] + s * v[1], -s * v[0] + c * v[1]), data.qvel[vyaw]
        )

    while data.time < max_time:
        x, y, yaw = pose_now()
        if bag is not None and data.time + 1e-9 >= next_odom:  # odometry on the grid k / ODOM_RATE_HZ
            odometry()
            next_odom += 1.0 / ODOM_RATE_HZ
        if data.time + 1e-9 >= next_frame:  # frames on the simulation-time grid k / rate_hz
            frames.append(frame(x, y, yaw))
            next_frame += period
        while target < len(waypoints) and math.hypot(*(waypoints[target] - [x, y])) < cfg.reach:
            target += 1
            bar.update(1)
        if target == len(waypoints):
            outcome = {"status": "reached", "blocked_by": None}
            break
        dx, dy = waypoints[target] - [x, y]
        err = _wrap(math.atan2(dy, dx) - yaw)
        # Forward speed only while roughly facing the waypoint, slowing on the last 0.3 m; yaw rate
        # proportional to the heading error: a differential-drive robot's commands.
        v = cfg.speed * max(0.0, math.cos(err)) * min(1.0, math.hypot(dx, dy) / 0.3 + 0.2)
        w = float(np.clip(2.5 * err, -1.5, 1.5))
        data.ctrl[:] = [v * math.cos(yaw), v * math.sin(yaw), w]
        mujoco.mj_step(model, data)
        for i in range(data.ncon):
            g1, g2 = int(data.contact[i].geom1), int(data.contact[i].geom2)
            if (g1 in robot_geoms) != (g2 in robot_geoms):
                other = g2 if g1 in robot_geoms else g1
                touched.add(model.geom(other).name or f"geom {other}")
        speed = math.hypot(data.qvel[vx], data.qvel[vy])
        if v > 0.1 and speed < 0.2 * v:  # commanded forward but hardly moving: pushing against something?
            stalled_since = data.time if stalled_since is None else stalled_since
            if data.time - stalled_since > 0.5:
                hit = _blocking_geom(model, data, robot_geoms)
                if hit is not None:
                    outcome = {"status": "blocked", "blocked_by": hit}
                    if bag is not None:
                        odometry()
                    frames.append(frame(*pose_now()))
                    break
        else:
            stalled_since = None
    bar.close()
    x, y = base + [data.qpos[jx], data.qpos[jy]]
    summary = {
        "export": str(out_dir),
        "mjcf": str(mjcf_path),
        "spawn": list(spawn),
        "route": "given" if goals is None else "default",
        "waypoints": waypoints.tolist(),
        "goals": None if goals is None else goals.tolist(),
        "waypoints_reached": int(target),
        "final": {"x": float(x), "y": float(y), "yaw": float(data.qpos[jyaw]), "time": float(data.time)},
        "camera": {
            "width": cfg.width,
            "height": cfg.height,
            "hfov_rad": cfg.hfov_rad,
            "convention": "gazebo",
        }
        if cams is None
        else None,
        "cameras": None
        if cams is None
        else [
            {
                "name": c.name,
                "offset": list(c.cfg.camera_offset),
                "width": c.cfg.width,
                "height": c.cfg.height,
                "hfov_rad": c.cfg.hfov_rad,
                "outputs": list(c.cfg.outputs),
                "topic": c.cfg.topic,
                "frame_id": c.optical_frame,
                "convention": "gazebo",
            }
            for c in cams
        ],
        "max_time": max_time,
        "touched": sorted(touched),
        **outcome,
        "bag": None,
        "frames": frames,
    }
    if bag is not None:
        summary["bag"] = {"path": str(bag.close()), "messages": dict(sorted(bag.counts.items()))}
    io.write_json(dest / "trajectory.json", summary)
    if cfg.gif and gif_frames:
        from PIL import Image

        imgs = [Image.fromarray(f) for f in gif_frames]
        with io.atomic_path(dest / "drive.gif") as tmp:
            imgs[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=imgs[1:],
                duration=round(1000 / cfg.rate_hz),
                loop=0,
            )
    return summary


def default_route(
    mesh, model, data, exclude_bodies: set[int], start_xy, clearance: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """The planned loop of :mod:`simgen.sim.route` on the drive's MuJoCo colliders (robot excluded).

    Args:
        mesh: the export's panoptic mesh in the world frame (floor and objects).
        model, data: the drive's MuJoCo model and forwarded data.
        start_xy: ``(2,)`` spawn point (m).
        clearance: free space kept around the footprint (m).
    Returns:
        ``waypoints (N, 2)`` and the stops near objects ``goals (G, 2)`` (m, world frame).
    Raises:
        DriveError: no route (says to give --waypoints).
    """
    from simgen.sim.route import RouteError, collider_sections, object_centroids, plan_loop, route_grid

    # The slab the robot's body sweeps: wheels touch the floor (+ 1 cm hover), the camera box tops at 0.25 m.
    z_lo, z_hi = HOVER + 0.02, HOVER + CAMERA_XYZ[2] + 0.05
    sections = collider_sections(model, data, exclude_bodies, z_lo, z_hi)
    grid = route_grid(mesh, sections, radius=FOOTPRINT_RADIUS + clearance)
    try:
        return plan_loop(grid, np.asarray(start_xy, np.float64), list(object_centroids(mesh).values()))
    except RouteError as e:
        raise DriveError(str(e)) from None


def _blocking_geom(model, data, robot_geoms: set[int]) -> str | None:
    """Name of a non-robot geom in contact with the robot (the one pushed hardest), else None."""
    import mujoco

    best, best_f = None, 0.0
    force = np.zeros(6)
    for i in range(data.ncon):
        c = data.contact[i]
        g1, g2 = int(c.geom1), int(c.geom2)
        if (g1 in robot_geoms) == (g2 in robot_geoms):
            continue
        mujoco.mj_contactForce(model, data, i, force)
        if force[0] > best_f:
            other = g2 if g1 in robot_geoms else g1
            best, best_f = model.geom(other).name or f"geom {other}", float(force[0])
    return best


def _write_frame_images(stem: Path, out: dict) -> None:
    if "rgb" in out:
        io.write_image(f"{stem}_rgb.png", out["rgb"])
    if "depth" in out:
        from simgen.serve.api import depth_to_mm

        io.write_image(f"{stem}_depth.png", depth_to_mm(out["depth"]))
    if "panoptic" in out:
        io.write_panoptic(f"{stem}_panoptic.png", out["panoptic"])


def _gif_row(out: dict, height: int, width: int) -> np.ndarray:
    """RGB | depth | panoptic of one render side by side (black where an output was not asked for)."""
    from simgen.serve import api

    blank = np.zeros((height, width, 3), np.uint8)
    parts = [
        out.get("rgb", blank),
        api.colorize_depth(out["depth"], 8.0) if "depth" in out else blank,
        api.colorize_panoptic(out["panoptic"]) if "panoptic" in out else blank,
    ]
    return np.concatenate(parts, 1)


def _rig_frame(
    render,
    cams: list[RigCamera],
    frames_dir: Path,
    k: int,
    t: float,
    x: float,
    y: float,
    yaw: float,
    gif_frames: list,
    cfg: DriveConfig,
    bag=None,
) -> dict:
    """Render every rig camera for the base pose ``(x, y, yaw)`` with one request; write each camera's
    images to ``frames/<name>/`` (and the bag); returns the frame's ``trajectory.json`` entry."""
    from simgen.data.poses import pose_from_c2w_cv

    quat = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    base_pose = camera_pose((x, y, HOVER), quat)
    results = render(base_pose)
    cameras = {}
    rows = []
    for i, (cam, out) in enumerate(zip(cams, results, strict=True)):
        if bag is not None:
            bag.frame(t, out, i)
        (frames_dir / cam.name).mkdir(parents=True, exist_ok=True)
        _write_frame_images(frames_dir / cam.name / f"{k:06d}", out)
        cameras[cam.name] = {
            "pose": pose_from_c2w_cv(np.asarray(out["c2w_cv"], np.float64), "gazebo"),
            "segments": out.get("segments", []),
        }
        if cfg.gif:
            rows.append(_gif_row(out, cam.cfg.height, cam.cfg.width))
    if cfg.gif:
        # One row per camera, padded to the widest: the GIF shows the whole rig at each frame.
        w = max(r.shape[1] for r in rows)
        side = np.concatenate([np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in rows], 0)
        gif_frames.append(side[::2, ::2] if w > 600 else side)
    return {
        "index": k,
        "time": round(float(t), 4),
        "x": x,
        "y": y,
        "yaw": yaw,
        "base_pose": base_pose,
        "cameras": cameras,
    }


def _frame(
    render,
    frames_dir: Path,
    k: int,
    t: float,
    x: float,
    y: float,
    yaw: float,
    gif_frames: list,
    cfg: DriveConfig,
    bag=None,
) -> dict:
    from simgen.serve import api

    quat = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    pose = camera_pose((x, y, HOVER), quat, (*CAMERA_XYZ, 0.0, 0.0, 0.0))
    out = render(pose)
    if bag is not None:
        bag.frame(t, out)
    stem = frames_dir / f"{k:06d}"
    io.write_image(f"{stem}_rgb.png", out["rgb"])
    io.write_image(f"{stem}_depth.png", api.depth_to_mm(out["depth"]))
    io.write_panoptic(f"{stem}_panoptic.png", out["panoptic"])
    if cfg.gif:
        side = np.concatenate(
            [out["rgb"], api.colorize_depth(out["depth"], 8.0), api.colorize_panoptic(out["panoptic"])], 1
        )
        gif_frames.append(side[::2, ::2] if cfg.width > 200 else side)
    return {
        "index": k,
        "time": round(float(t), 4),
        "x": x,
        "y": y,
        "yaw": yaw,
        "pose": pose,
        "segments": out["segments"],
    }
