"""ROS 2 wiring of a simgen Gazebo world: ``simgen world OUT --robot jackal --ros2``.

Writes, beside ``OUT/worlds/<scene>_<name>.sdf`` (so a new export replaces them with the world)::

    OUT/worlds/<scene>_<name>_bridge.yaml   ros_gz_bridge parameter_bridge config (config_file)
    OUT/worlds/<scene>_<name>.launch.py     ROS 2 launch: Gazebo + bridge + simgen serve + static TFs

Every name comes from the robot model itself: the camera topics from the simgen camera plugin block
(:func:`simgen.sim.gazebo.config_from_sdf`, the same parser the plugin runs), the command, odometry and
TF topics from the DiffDrive block. ``simgen drive --bag`` writes its bags with the same topics, types
and frames (:func:`ros_names`), so a stack that runs on the Gazebo world runs on a bag and back.

Frames (REP 103 / 105): ``world`` (the export's Gazebo world frame) -> ``odom`` (static: the spawn pose,
where DiffDrive's odometry starts) -> ``base_link`` (the robot's model frame, on the ground under the
chassis centre; dynamic, from DiffDrive) -> ``camera_link`` (static: the camera link's pose in the model,
x forward, z up) -> ``camera_optical_frame`` (static: z forward, x right, y down), the images' frame.

Neither ROS 2 nor Gazebo Sim installs on the machines this was written on: the YAML and the launch file
are checked structurally (``tests/test_sim_ros2.py``), not run. See docs/ros2.md.
"""

from __future__ import annotations

import math
import os
import pprint
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml
from lxml import etree

from simgen import folders
from simgen.sim.gazebo import BridgeConfig, config_from_sdf
from simgen.sim.world import BASE_FRAME_ID, ODOM_FRAME_ID, OPTICAL_FRAME_ID

Direction = Literal["GZ_TO_ROS", "ROS_TO_GZ", "BIDIRECTIONAL"]

WORLD_FRAME = "world"
ODOM_FRAME = ODOM_FRAME_ID
BASE_FRAME = BASE_FRAME_ID
CAMERA_FRAME = "camera_link"  # the robot model's camera link, as named in jackal_model_sdf
OPTICAL_FRAME = OPTICAL_FRAME_ID
#: camera_link (x forward, y left, z up) -> optical frame (z forward, x right, y down), roll pitch yaw (rad)
OPTICAL_RPY = (-math.pi / 2, 0.0, -math.pi / 2)

BRIDGE_SUFFIX = "_bridge.yaml"
LAUNCH_SUFFIX = ".launch.py"

#: simgen camera message kind (simgen.sim.gazebo.MESSAGE_KINDS) -> (ROS 2 type, Gazebo type)
CAMERA_TYPES = {
    "image": ("sensor_msgs/msg/Image", "gz.msgs.Image"),
    "camera_info": ("sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo"),
    "string": ("std_msgs/msg/String", "gz.msgs.StringMsg"),
}


class Ros2Error(ValueError):
    """The robot model lacks what the ROS 2 files need; the message names the element."""


@dataclass(frozen=True)
class BridgeEntry:
    """One entry of a ros_gz_bridge ``config_file`` (keys as the bridge documents them)."""

    ros_topic_name: str
    gz_topic_name: str
    ros_type_name: str
    gz_type_name: str
    direction: Direction
    lazy: bool = False


@dataclass(frozen=True)
class RosNames:
    """ROS 2 topics of a simgen robot (after the bridge) and its frames.

    ``camera``: ``{output: topic}`` for rgb, depth, panoptic, segments, camera_info.
    """

    camera: dict[str, str]
    cmd_vel: str
    odometry: str
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    clock: str = "/clock"


# -- what the robot model publishes ---------------------------------------------------------------------------


def _plugin(model: etree._Element, name: str, path: str) -> etree._Element:
    el = model.find(f"plugin[@name='{name}']")
    if el is None:
        raise Ros2Error(f"{path}: the model has no <plugin name={name!r}>")
    return el


def camera_config(model_sdf: etree._ElementTree, path: str = "model.sdf") -> BridgeConfig:
    """The simgen camera plugin's settings, parsed from the model as the plugin parses them."""
    model = model_sdf.getroot().find("model")
    py = _plugin(model, "gz::sim::systems::PythonSystemLoader", path)
    return config_from_sdf({e.tag: e.text or "" for e in py})


def diff_drive_topics(model_sdf: etree._ElementTree, path: str = "model.sdf") -> dict[str, str]:
    """``{"cmd_vel", "odometry", "tf", "frame_id", "child_frame_id"}`` of the model's DiffDrive block."""
    model = model_sdf.getroot().find("model")
    dd = _plugin(model, "gz::sim::systems::DiffDrive", path)
    out = {}
    for key, tag in (
        ("cmd_vel", "topic"),
        ("odometry", "odom_topic"),
        ("tf", "tf_topic"),
        ("frame_id", "frame_id"),
        ("child_frame_id", "child_frame_id"),
    ):
        text = (dd.findtext(tag) or "").strip()
        if not text:
            raise Ros2Error(f"{path}: DiffDrive <{tag}> is missing; the bridge needs it")
        out[key] = text
    return out


def bridge_entries(model_sdf: etree._ElementTree, path: str = "model.sdf") -> list[BridgeEntry]:
    """The bridge entries for the robot: camera topics, cmd_vel, odometry, TF and the clock."""
    cam = camera_config(model_sdf, path)
    dd = diff_drive_topics(model_sdf, path)
    entries = [
        BridgeEntry(topic, topic, *CAMERA_TYPES[kind], "GZ_TO_ROS", lazy=True)
        for topic, kind in cam.topic_kinds().items()
    ]
    entries += [
        BridgeEntry(dd["cmd_vel"], dd["cmd_vel"], "geometry_msgs/msg/Twist", "gz.msgs.Twist", "ROS_TO_GZ"),
        BridgeEntry(dd["odometry"], dd["odometry"], "nav_msgs/msg/Odometry", "gz.msgs.Odometry", "GZ_TO_ROS"),
        BridgeEntry("/tf", dd["tf"], "tf2_msgs/msg/TFMessage", "gz.msgs.Pose_V", "GZ_TO_ROS"),
        BridgeEntry("/clock", "/clock", "rosgraph_msgs/msg/Clock", "gz.msgs.Clock", "GZ_TO_ROS"),
    ]
    return entries


def ros_names(model_sdf: etree._ElementTree, path: str = "model.sdf") -> RosNames:
    """The ROS 2 side of :func:`bridge_entries` (what a bag of the same robot uses)."""
    cam = camera_config(model_sdf, path)
    dd = diff_drive_topics(model_sdf, path)
    return RosNames(camera=cam.topics(), cmd_vel=dd["cmd_vel"], odometry=dd["odometry"])


def bridge_yaml(entries: list[BridgeEntry]) -> str:
    """The ``config_file`` text: a YAML list of entries."""
    header = (
        "# ros_gz_bridge parameter_bridge config written by `simgen world --ros2`.\n"
        "# ros2 run ros_gz_bridge parameter_bridge --ros-args -p config_file:=<this file>\n"
    )
    return header + yaml.safe_dump([asdict(e) for e in entries], sort_keys=False)


# -- frames ---------------------------------------------------------------------------------------------------


def static_transforms(
    camera_xyz: tuple[float, float, float], camera_pitch: float, spawn: tuple[float, float, float]
) -> list[tuple[str, str, tuple[float, ...], tuple[float, ...]]]:
    """``[(parent, child, (x, y, z) m, (roll, pitch, yaw) rad)]`` of the fixed part of the TF tree.

    Args:
        camera_xyz: camera link origin in the robot's model frame (m).
        camera_pitch: camera link pitch (rad, positive looks down).
        spawn: ``(x, y, yaw)`` of the robot in the world at start, where its odometry frame lies.
    """
    return [
        (WORLD_FRAME, ODOM_FRAME, (spawn[0], spawn[1], 0.0), (0.0, 0.0, spawn[2])),
        (BASE_FRAME, CAMERA_FRAME, tuple(camera_xyz), (0.0, camera_pitch, 0.0)),
        (CAMERA_FRAME, OPTICAL_FRAME, (0.0, 0.0, 0.0), OPTICAL_RPY),
    ]


# -- the launch file ------------------------------------------------------------------------------------------

LAUNCH_TEMPLATE = '''"""ROS 2 launch file for {world_name}, written by `simgen world --ros2` (see simgen's docs/ros2.md).

Starts Gazebo Sim with the world (ros_gz_sim's gz_sim.launch.py; model:// URIs resolve through
GZ_SIM_RESOURCE_PATH += the export's models/), the simgen camera plugin's path, `simgen serve` on the
export (the render server the plugin calls), ros_gz_bridge with {bridge_name}, and static TFs
world -> odom (spawn pose) -> ... base_link -> camera_link -> camera_optical_frame.

    ros2 launch {launch_path}
    ros2 launch {launch_path} gz_args:="-r -s {world_path}" serve:=false   # headless, server already up

Paths are relative to this file, so the export folder may move as a whole.
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import (
    AppendEnvironmentVariable,
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

HERE = Path(__file__).resolve().parent
EXPORT = HERE.parent
WORLD = HERE / {world_name!r}
BRIDGE = HERE / {bridge_name!r}
MODELS = EXPORT / {models_dir!r}
PLUGIN_DIR = {plugin_dir!r}  # simgen's sensor_plugin/ (override: plugin_dir:=...)
SERVE = {serve_cmd!r}  # the render server the camera plugin calls ({server})
# (parent, child, (x, y, z) m, (roll, pitch, yaw) rad)
STATIC_TFS = {static_tfs}


def generate_launch_description():
    actions = [
        DeclareLaunchArgument(
            "gz_args", default_value=f"-r {{WORLD}}", description="arguments of gz sim (-r: run, -s: headless)"
        ),
        DeclareLaunchArgument("serve", default_value="true", description="start simgen serve on the export"),
        DeclareLaunchArgument("plugin_dir", default_value=PLUGIN_DIR, description="simgen's sensor_plugin/"),
        AppendEnvironmentVariable("GZ_SIM_RESOURCE_PATH", str(MODELS)),
        AppendEnvironmentVariable("GZ_SIM_SYSTEM_PLUGIN_PATH", LaunchConfiguration("plugin_dir")),
        ExecuteProcess(
            cmd=[*SERVE, str(EXPORT)],
            name="simgen_serve",
            output="screen",
            condition=IfCondition(LaunchConfiguration("serve")),
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])
            ),
            launch_arguments={{"gz_args": LaunchConfiguration("gz_args"), "on_exit_shutdown": "true"}}.items(),
        ),
        Node(
            package="ros_gz_bridge",
            executable="parameter_bridge",
            name="simgen_bridge",
            parameters=[{{"config_file": str(BRIDGE), "use_sim_time": True}}],
            output="screen",
        ),
    ]
    for parent, child, xyz, rpy in STATIC_TFS:
        args = []
        for flag, value in zip(("--x", "--y", "--z", "--roll", "--pitch", "--yaw"), (*xyz, *rpy)):
            args += [flag, repr(float(value))]
        actions.append(
            Node(
                package="tf2_ros",
                executable="static_transform_publisher",
                name=f"simgen_tf_{{child}}",
                arguments=[*args, "--frame-id", parent, "--child-frame-id", child],
                parameters=[{{"use_sim_time": True}}],
            )
        )
    return LaunchDescription(actions)
'''


def serve_command(server: str) -> list[str]:
    """``simgen serve`` argv (without the folder) that listens where ``server`` (http://host:port) points."""
    from urllib.parse import urlsplit

    url = urlsplit(server)
    if url.scheme != "http" or not url.hostname:
        raise Ros2Error(f"server must look like http://host:port, got {server!r}")
    return ["simgen", "serve", "--host", url.hostname, "--port", str(url.port or 80)]


def plugin_dir() -> str:
    """simgen's ``sensor_plugin/`` in this checkout ('' when simgen is installed without it)."""
    d = Path(__file__).resolve().parents[2] / "sensor_plugin"
    return str(d) if d.is_dir() else ""


def launch_source(
    world_path: Path,
    bridge_path: Path,
    server: str,
    transforms: list[tuple[str, str, tuple[float, ...], tuple[float, ...]]],
) -> str:
    """Text of the launch file for ``world_path`` (in ``OUT/worlds``) and its bridge config."""
    return LAUNCH_TEMPLATE.format(
        world_name=world_path.name,
        world_path=world_path,
        bridge_name=bridge_path.name,
        launch_path=world_path.with_name(world_path.stem + LAUNCH_SUFFIX),
        models_dir=folders.MODELS_DIR,
        plugin_dir=plugin_dir(),
        serve_cmd=serve_command(server),
        server=server,
        static_tfs=pprint.pformat(
            [(p, c, tuple(map(float, xyz)), tuple(map(float, rpy))) for p, c, xyz, rpy in transforms],
            width=100,
        ),
    )


def clearpath_command(scene: str, spawn: tuple[float, float, float], out_dir: Path) -> str:
    """Shell lines that start clearpath_simulator (its own Jackal) in the export's plain world."""
    out_dir = Path(out_dir).resolve()  # the lines may be run from anywhere
    worlds, models = out_dir / folders.WORLDS_DIR, out_dir / folders.MODELS_DIR
    x, y, yaw = spawn
    return (
        f"export GZ_SIM_RESOURCE_PATH={worlds}:{models}${{GZ_SIM_RESOURCE_PATH:+:$GZ_SIM_RESOURCE_PATH}}\n"
        f"ros2 launch clearpath_gz simulation.launch.py world:={scene} x:={x:.3f} y:={y:.3f} yaw:={yaw:.3f}"
    )


def _write_text(path: Path, text: str) -> None:
    from simgen.data import io

    with io.atomic_path(path) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, 0o644)  # Gazebo and ROS often run as another user than the one exporting


def write_ros2_files(
    world_path: Path,
    model_sdf: etree._ElementTree,
    server: str,
    camera_xyz: tuple[float, float, float],
    camera_pitch: float,
    spawn: tuple[float, float, float],
) -> dict[str, Path]:
    """Write the bridge YAML and the launch file beside ``world_path``; returns ``{"bridge", "launch"}``."""
    bridge = world_path.with_name(world_path.stem + BRIDGE_SUFFIX)
    launch = world_path.with_name(world_path.stem + LAUNCH_SUFFIX)
    _write_text(bridge, bridge_yaml(bridge_entries(model_sdf, str(world_path))))
    tfs = static_transforms(camera_xyz, camera_pitch, spawn)
    _write_text(launch, launch_source(world_path, bridge, server, tfs))
    return {"bridge": bridge, "launch": launch}
