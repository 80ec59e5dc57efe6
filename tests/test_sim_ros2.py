"""``simgen world --ros2``: the ros_gz_bridge YAML and the ROS 2 launch file, checked structurally.

Neither ROS 2 nor Gazebo Sim installs here, so: the YAML against a schema written from ros_gz_bridge's
documented config keys and type pairs, and against the topics the real camera plugin file publishes
(run against fake gz modules, as in test_serve_gazebo.py) and the DiffDrive block of the robot model; the
launch file imported with stub ``launch`` / ``launch_ros`` modules that record its actions.
"""

from __future__ import annotations

import datetime
import importlib.util
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.gazebo import FakeSdf
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen.sim import ros2
from simgen.sim.world import CAMERA_XYZ, WorldConfig, compose_world

# ros_gz_bridge README, "Example 5: Configuring the Bridge via YAML": the keys of one entry.
BRIDGE_KEYS = {
    "topic_name",
    "ros_topic_name",
    "gz_topic_name",
    "ros_type_name",
    "gz_type_name",
    "subscriber_queue",
    "publisher_queue",
    "lazy",
    "direction",
}
DIRECTIONS = {"BIDIRECTIONAL", "GZ_TO_ROS", "ROS_TO_GZ"}
# ros_gz_bridge README's table of supported pairs (the rows simgen needs, and then some).
SUPPORTED_PAIRS = {
    ("geometry_msgs/msg/Twist", "gz.msgs.Twist"),
    ("nav_msgs/msg/Odometry", "gz.msgs.Odometry"),
    ("rosgraph_msgs/msg/Clock", "gz.msgs.Clock"),
    ("sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo"),
    ("sensor_msgs/msg/Image", "gz.msgs.Image"),
    ("std_msgs/msg/String", "gz.msgs.StringMsg"),
    ("tf2_msgs/msg/TFMessage", "gz.msgs.Pose_V"),
    ("sensor_msgs/msg/LaserScan", "gz.msgs.LaserScan"),
    ("sensor_msgs/msg/Imu", "gz.msgs.IMU"),
}


@pytest.fixture(scope="module")
def export(box_export_copy):
    """The box scene exported by the real pipeline (this module's own copy: tests here write into it)."""
    return box_export_copy


def check_bridge_schema(entries: list) -> None:
    assert isinstance(entries, list) and entries
    for e in entries:
        assert isinstance(e, dict) and set(e) <= BRIDGE_KEYS, e
        assert "topic_name" in e or {"ros_topic_name", "gz_topic_name"} <= set(e), e
        assert {"ros_type_name", "gz_type_name"} <= set(e), e
        for k in ("topic_name", "ros_topic_name", "gz_topic_name"):
            if k in e:
                assert isinstance(e[k], str) and e[k].startswith("/"), e
        assert (e["ros_type_name"], e["gz_type_name"]) in SUPPORTED_PAIRS, e
        assert e.get("direction", "BIDIRECTIONAL") in DIRECTIONS, e
        assert isinstance(e.get("lazy", False), bool), e
        for k in ("subscriber_queue", "publisher_queue"):
            assert isinstance(e.get(k, 10), int) and e.get(k, 10) > 0, e


@pytest.fixture(scope="module")
def ros2_world(export):
    cfg = WorldConfig(name="rover", topic="/rover", spawn=(0.5, -1.0, 0.3), ros2=True, camera_pitch=0.2)
    return compose_world(export, cfg), cfg


def test_bridge_yaml_follows_the_schema_and_wires_everything(ros2_world):
    result, cfg = ros2_world
    assert result.bridge.parent == result.world.parent
    entries = yaml.safe_load(result.bridge.read_text())
    check_bridge_schema(entries)
    by_ros = {e["ros_topic_name"]: e for e in entries}
    assert len(by_ros) == len(entries)  # one entry per ROS topic
    assert by_ros["/rover/cmd_vel"]["direction"] == "ROS_TO_GZ"
    assert by_ros["/rover/cmd_vel"]["ros_type_name"] == "geometry_msgs/msg/Twist"
    assert by_ros["/rover/odometry"]["ros_type_name"] == "nav_msgs/msg/Odometry"
    assert by_ros["/tf"]["gz_type_name"] == "gz.msgs.Pose_V" and by_ros["/tf"]["gz_topic_name"] == "/rover/tf"
    assert by_ros["/clock"] == {
        "ros_topic_name": "/clock",
        "gz_topic_name": "/clock",
        "ros_type_name": "rosgraph_msgs/msg/Clock",
        "gz_type_name": "gz.msgs.Clock",
        "direction": "GZ_TO_ROS",
        "lazy": False,
    }
    # The DiffDrive block of the written model publishes and listens where the bridge looks, with REP 105
    # frame ids.
    model = etree.parse(str(result.model / "model.sdf")).getroot().find("model")
    dd = model.find("plugin[@name='gz::sim::systems::DiffDrive']")
    assert dd.findtext("topic") == by_ros["/rover/cmd_vel"]["gz_topic_name"]
    assert dd.findtext("odom_topic") == by_ros["/rover/odometry"]["gz_topic_name"]
    assert dd.findtext("tf_topic") == by_ros["/tf"]["gz_topic_name"]
    assert (dd.findtext("frame_id"), dd.findtext("child_frame_id")) == ("odom", "base_link")
    for e in entries:
        if e["ros_type_name"] in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"):
            assert e["direction"] == "GZ_TO_ROS"


def test_bridge_covers_what_the_camera_plugin_publishes(ros2_world, plugin_module):
    """The real plugin file, configured from the written model's <plugin> block, publishes exactly the
    camera topics of the bridge, with the bridge's Gazebo types and the optical frame id."""
    result, cfg = ros2_world
    module, world, _ = plugin_module
    model = etree.parse(str(result.model / "model.sdf")).getroot().find("model")
    block = model.find("plugin[@name='gz::sim::systems::PythonSystemLoader']")
    values = {e.tag: e.text for e in block} | {"width": "16", "height": "12", "asynchronous": "false"}
    system = module.get_system()
    system.configure(7, FakeSdf(values), object(), None)
    assert system.bridge is not None
    for k in range(300):
        info = types.SimpleNamespace(paused=False, sim_time=datetime.timedelta(milliseconds=k))
        system.pre_update(info, object())
    system.shutdown()
    published = {(topic, "gz.msgs." + t.__name__) for topic, t, _ in world["published"]}
    entries = yaml.safe_load(result.bridge.read_text())
    camera = {
        (e["gz_topic_name"], e["gz_type_name"])
        for e in entries
        if e["gz_topic_name"].startswith(f"{cfg.topic}/simgen/")
    }
    assert published == camera and len(camera) == 5
    for e in entries:
        if (e["gz_topic_name"], e["gz_type_name"]) in camera:
            assert e["ros_topic_name"] == e["gz_topic_name"]
    frame_ids = {
        msg.header.data._items[0].value._items[0]
        for _, _, msg in world["published"]
        if hasattr(msg, "header")
    }
    assert frame_ids == {ros2.OPTICAL_FRAME}


def test_static_transforms_chain_to_the_optical_frame():
    tfs = ros2.static_transforms(CAMERA_XYZ, 0.2, (1.0, 2.0, 0.5))
    chain = [(p, c) for p, c, _, _ in tfs]
    assert chain == [("world", "odom"), ("base_link", "camera_link"), ("camera_link", "camera_optical_frame")]
    _, _, xyz, rpy = tfs[2]
    R = Rotation.from_euler("xyz", rpy).as_matrix()  # ROS rpy: fixed-axis x, y, z
    # Optical z looks along the link's x, optical x points to the link's right (-y), optical y down (-z).
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, -1], atol=1e-12)
    assert tfs[0][2] == (1.0, 2.0, 0.0) and tfs[0][3] == (0.0, 0.0, 0.5)
    assert tfs[1][2] == CAMERA_XYZ and tfs[1][3] == (0.0, 0.2, 0.0)


# -- the launch file with stub launch / launch_ros -----------------------------------------------------------


class Recorded:
    """Any launch class: remembers its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stub_launch_modules(monkeypatch) -> None:
    classes = {
        "launch": ["LaunchDescription"],
        "launch.actions": [
            "AppendEnvironmentVariable",
            "DeclareLaunchArgument",
            "ExecuteProcess",
            "IncludeLaunchDescription",
            "SetEnvironmentVariable",
        ],
        "launch.conditions": ["IfCondition"],
        "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
        "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
        "launch_ros": [],
        "launch_ros.actions": ["Node"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }
    for mod, names in classes.items():
        m = types.ModuleType(mod)
        for n in names:
            setattr(m, n, type(n, (Recorded,), {}))
        monkeypatch.setitem(sys.modules, mod, m)


def load_launch(path: Path):
    spec = importlib.util.spec_from_file_location(f"simgen_launch_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _actions(desc) -> dict[str, list]:
    assert type(desc).__name__ == "LaunchDescription"
    out: dict[str, list] = {}
    for a in desc.args[0]:
        out.setdefault(type(a).__name__, []).append(a)
    return out


def test_launch_file_starts_gazebo_bridge_server_and_tfs(ros2_world, export, tmp_path, monkeypatch):
    result, cfg = ros2_world
    stub_launch_modules(monkeypatch)
    # Moved as a whole, the export still launches: every path is relative to the launch file.
    moved = tmp_path / "moved"
    shutil.copytree(export, moved)
    launch = moved / result.launch.relative_to(export)
    acts = _actions(load_launch(launch))
    args = {a.args[0]: a.kwargs["default_value"] for a in acts["DeclareLaunchArgument"]}
    world = moved / result.world.relative_to(export)
    assert args["gz_args"] == f"-r {world}" and world.is_file()
    env = {a.args[0]: a.args[1] for a in acts["AppendEnvironmentVariable"]}
    models = Path(env["GZ_SIM_RESOURCE_PATH"])
    assert models == moved / "models"
    # Every model:// URI of the world resolves under the resource path.
    uris = [e.text for e in etree.parse(str(world)).iter("uri") if e.text.startswith("model://")]
    assert uris and all((models / u[len("model://") :] / "model.config").is_file() for u in uris)
    plugin_dir = env["GZ_SIM_SYSTEM_PLUGIN_PATH"]
    assert type(plugin_dir).__name__ == "LaunchConfiguration" and plugin_dir.args == ("plugin_dir",)
    assert (Path(args["plugin_dir"]) / "simgen_camera_system.py").is_file()
    (serve,) = acts["ExecuteProcess"]
    cmd = serve.kwargs["cmd"]
    assert cmd[:2] == ["simgen", "serve"] and Path(cmd[-1]) == moved
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8000"
    assert serve.kwargs["condition"].args[0].args == ("serve",)
    (gz,) = acts["IncludeLaunchDescription"]
    src = gz.args[0].args[0].args[0]  # PythonLaunchDescriptionSource(PathJoinSubstitution([...]))
    assert src[0].args == ("ros_gz_sim",) and src[1:] == ["launch", "gz_sim.launch.py"]
    launch_args = dict(gz.kwargs["launch_arguments"])
    assert launch_args["gz_args"].args == ("gz_args",)
    nodes = acts["Node"]
    (bridge,) = [n for n in nodes if n.kwargs["package"] == "ros_gz_bridge"]
    assert bridge.kwargs["executable"] == "parameter_bridge"
    params = bridge.kwargs["parameters"][0]
    bridge_file = Path(params["config_file"])
    assert bridge_file == moved / result.bridge.relative_to(export) and params["use_sim_time"] is True
    check_bridge_schema(yaml.safe_load(bridge_file.read_text()))
    tfs = []
    for n in nodes:
        if n.kwargs["package"] != "tf2_ros":
            continue
        assert n.kwargs["executable"] == "static_transform_publisher"
        a = n.kwargs["arguments"]
        vals = tuple(float(a[a.index(f) + 1]) for f in ("--x", "--y", "--z", "--roll", "--pitch", "--yaw"))
        tfs.append((a[a.index("--frame-id") + 1], a[a.index("--child-frame-id") + 1], vals))
    spawn = result.spawn
    expected = ros2.static_transforms(CAMERA_XYZ, cfg.camera_pitch, spawn)
    assert [(p, c) for p, c, _ in tfs] == [(p, c) for p, c, _, _ in expected]
    for (_, _, vals), (_, _, xyz, rpy) in zip(tfs, expected, strict=True):
        np.testing.assert_allclose(vals, [*xyz, *rpy], atol=1e-12)


def test_launch_serve_command_follows_the_server_url():
    assert ros2.serve_command("http://10.0.0.5:8080") == [
        "simgen",
        "serve",
        "--host",
        "10.0.0.5",
        "--port",
        "8080",
    ]
    with pytest.raises(ros2.Ros2Error, match="http://host:port"):
        ros2.serve_command("10.0.0.5:8080")


def test_simgen_world_ros2_cli(export, capsys):
    from simgen.cli import main

    assert main(["world", str(export), "--name", "cli", "--spawn", "0.5", "-1", "0", "--ros2"]) == 0
    out = capsys.readouterr().out
    worlds = export / "worlds"
    scene = next(p for p in worlds.glob("*_cli.sdf")).stem[: -len("_cli")]
    for name in (f"{scene}_cli_bridge.yaml", f"{scene}_cli.launch.py"):
        assert (worlds / name).is_file() and str(worlds / name) in out
        assert oct((worlds / name).stat().st_mode & 0o777) == "0o644"
    assert (
        f"ros2 launch clearpath_gz simulation.launch.py world:={scene} x:=0.500 y:=-1.000 yaw:=0.000" in out
    )
    assert "GZ_SIM_RESOURCE_PATH=" + str(worlds) in out
    assert (worlds / f"{scene}.sdf").is_file()  # the world clearpath_simulator loads by name
    root = etree.parse(str(worlds / f"{scene}.sdf")).getroot()
    assert root.find("world").get("name") == scene  # its spawn service addresses the world by this name
    # Without --ros2 no ROS files are written.
    assert main(["world", str(export), "--name", "plain", "--spawn", "0.5", "-1", "0"]) == 0
    assert not list(worlds.glob("*_plain_bridge.yaml")) and not list(worlds.glob("*_plain.launch.py"))
