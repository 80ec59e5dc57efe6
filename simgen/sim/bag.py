"""ROS 2 bags of ``simgen drive --bag``: what the robot saw and did, as a rosbag2 in MCAP (``rosbags``).

Topics, types and frames are those of the ROS 2 side of ``simgen world --ros2``'s bridge
(:func:`simgen.sim.ros2.ros_names`), so a stack that runs on the Gazebo world runs on the bag:

================================  =============================  ========================================
topic (``/jackal`` = ``--topic``)  type                           content
================================  =============================  ========================================
/jackal/simgen/image               sensor_msgs/msg/Image rgb8     RGB
/jackal/simgen/depth_image         sensor_msgs/msg/Image 32FC1    z-depth (m), +inf where nothing is hit
/jackal/simgen/panoptic_image      sensor_msgs/msg/Image rgb8     COCO id encoding R + 256 G + 256^2 B
/jackal/simgen/segments            std_msgs/msg/String            JSON ``{"segments": [...]}``
/jackal/simgen/camera_info         sensor_msgs/msg/CameraInfo     pinhole K, P; plumb_bob, zero distortion
/jackal/odometry                   nav_msgs/msg/Odometry          odom -> base_link pose, body twist
/tf                                tf2_msgs/msg/TFMessage         odom -> base_link
/tf_static                         tf2_msgs/msg/TFMessage         world -> odom, base_link -> camera_link
                                                                  -> camera_optical_frame (transient local)
/clock                             rosgraph_msgs/msg/Clock        every stamp in the bag
================================  =============================  ========================================

A drive with a camera rig (``simgen drive --rig FILE``) writes the five camera topics once per camera,
under the camera's own topic prefix (default ``<topic>/simgen/<name>``: ``/jackal/simgen/front/image``...),
each image in ``<name>_optical_frame``; ``/tf_static`` then holds ``base_link -> <name>_link`` (the camera's
offset from the robot's model frame) ``-> <name>_optical_frame`` for every camera instead of ``camera_link``.
All cameras of one tick carry the same stamp.

Every stamp (header and bag log time) is the simulation time of the drive, in nanoseconds from 0. The
``odom`` frame is the spawn pose (as Gazebo's DiffDrive odometry starts there), ``base_link`` the robot's
model frame (on the ground under the chassis centre; 1 cm up while MuJoCo floats it), images are in
``camera_optical_frame`` (z forward, x right, y down).

A path ending in ``.mcap`` gets one MCAP file (Foxglove opens it; ``ros2 bag play`` takes it on Iron and
later); any other path a rosbag2 folder (``metadata.yaml`` + ``<name>.mcap``). Either is written into a
temporary folder beside it and moved into place when complete: a failed drive leaves no partial bag.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from simgen.data.io import id_to_rgb
from simgen.sim.ros2 import (
    BASE_FRAME,
    CAMERA_FRAME,
    ODOM_FRAME,
    OPTICAL_FRAME,
    OPTICAL_RPY,
    WORLD_FRAME,
    RosNames,
)


class BagError(ValueError):
    """The bag cannot be written; the message names the path."""


def to_ns(t: float) -> int:
    """Simulation seconds -> integer nanoseconds (the bag's and the headers' clock)."""
    return int(round(t * 1e9))


@dataclass(frozen=True)
class BagCamera:
    """One camera of the bag: its topics, TF frames, pose on the robot and intrinsics.

    Args:
        topics: ``{output: topic}`` for ``rgb``, ``depth``, ``panoptic``, ``segments``, ``camera_info``
            (:meth:`simgen.sim.gazebo.BridgeConfig.topics`).
        link_frame, optical_frame: the camera link (x forward, z up) and its optical frame (z forward, x
            right, y down), the images' ``frame_id``.
        xyz, rpy: the camera link in ``base_link`` (m; roll pitch yaw in rad, fixed-axis XYZ as SDF poses).
        K: ``(3, 3)`` intrinsics in the ROS convention (pixels; first pixel centre at 0,
            :func:`simgen.data.camera.ros_camera_matrix`); ``width``, ``height`` the image size.
        outputs: what the camera renders (``rgb``, ``depth``, ``panoptic``); only their topics (and
            ``segments`` with ``panoptic``, ``camera_info`` always) are in the bag.
    """

    topics: dict[str, str]
    link_frame: str
    optical_frame: str
    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float]
    K: np.ndarray
    width: int
    height: int
    outputs: tuple[str, ...] = ("rgb", "depth", "panoptic")


def default_camera(
    names: RosNames, camera_xyz: tuple[float, float, float], K: np.ndarray, width: int, height: int
) -> BagCamera:
    """The robot's one camera of ``simgen world`` (``camera_link`` -> ``camera_optical_frame``)."""
    x, y, z = (float(v) for v in camera_xyz)
    return BagCamera(
        dict(names.camera), CAMERA_FRAME, OPTICAL_FRAME, (x, y, z), (0.0, 0.0, 0.0), K, width, height
    )


class DriveBag:
    """Writes one drive as a ROS 2 bag; call :meth:`odometry` and :meth:`frame` in time order, then
    :meth:`close` (or :meth:`abort` on failure).

    Args:
        path: ``*.mcap`` (one file) or a folder name (rosbag2 folder); replaced when complete.
        names: ROS topics of the robot (:func:`simgen.sim.ros2.ros_names`): odometry, TF, clock.
        spawn: ``(x, y, yaw)`` robot start in the world (m, rad): the ``odom`` frame.
        cameras: the cameras whose frames :meth:`frame` writes, by index (:func:`default_camera` for the
            robot's one camera); topics and frame names must differ between cameras.
    """

    def __init__(
        self,
        path: str | Path,
        names: RosNames,
        spawn: tuple[float, float, float],
        cameras: Sequence[BagCamera],
    ):
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if self.path.exists() and self.path.is_dir() == (self.path.suffix == ".mcap"):
            kind = "a folder" if self.path.is_dir() else "a file"
            raise BagError(f"--bag {self.path}: exists and is {kind}; give another path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._bag_dir = self._tmp / (self.path.stem if self.path.suffix == ".mcap" else self.path.name)
        self.ts = get_typestore(Stores.ROS2_HUMBLE)
        self.names = names
        self.spawn = tuple(float(v) for v in spawn)
        self.cameras = list(cameras)
        if not self.cameras:
            raise BagError(f"--bag {self.path}: no camera to record")
        frames = [f for c in self.cameras for f in (c.link_frame, c.optical_frame)]
        topics = [t for c in self.cameras for t in c.topics.values()]
        if len(set(frames)) < len(frames) or len(set(topics)) < len(topics):
            raise BagError(f"--bag {self.path}: cameras share a topic or a frame name")
        self.counts: dict[str, int] = {}
        self._last_ns = -1
        self._clock_ns = -1
        self._writer = Writer(self._bag_dir, version=8, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        latched = Qos(
            QosHistory.KEEP_LAST,
            1,
            QosReliability.RELIABLE,
            QosDurability.TRANSIENT_LOCAL,
            QosTime(0, 0),
            QosTime(0, 0),
            QosLiveliness.AUTOMATIC,
            QosTime(0, 0),
            False,
        )
        types = {
            "rgb": "sensor_msgs/msg/Image",
            "depth": "sensor_msgs/msg/Image",
            "panoptic": "sensor_msgs/msg/Image",
            "segments": "std_msgs/msg/String",
            "camera_info": "sensor_msgs/msg/CameraInfo",
        }
        connections: dict[Any, tuple[str, str]] = {
            (i, key): (cam.topics[key], msgtype)
            for i, cam in enumerate(self.cameras)
            for key, msgtype in types.items()
            if key in cam.outputs or key == "camera_info" or (key == "segments" and "panoptic" in cam.outputs)
        }
        connections["odometry"] = (names.odometry, "nav_msgs/msg/Odometry")
        connections["tf"] = (names.tf, "tf2_msgs/msg/TFMessage")
        connections["clock"] = (names.clock, "rosgraph_msgs/msg/Clock")
        self._conn = {
            key: self._writer.add_connection(topic, msgtype, typestore=self.ts)
            for key, (topic, msgtype) in connections.items()
        }
        self._conn["tf_static"] = self._writer.add_connection(
            names.tf_static, "tf2_msgs/msg/TFMessage", typestore=self.ts, offered_qos_profiles=[latched]
        )
        self._static_written = False

    # -- message builders -------------------------------------------------------------------------------

    def _M(self, name: str):
        return self.ts.types[name]

    def _header(self, ns: int, frame_id: str):
        Time, Header = self._M("builtin_interfaces/msg/Time"), self._M("std_msgs/msg/Header")
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame_id)

    def _transform(self, ns: int, parent: str, child: str, xyz, quat_xyzw):
        M = self._M
        return M("geometry_msgs/msg/TransformStamped")(
            header=self._header(ns, parent),
            child_frame_id=child,
            transform=M("geometry_msgs/msg/Transform")(
                translation=M("geometry_msgs/msg/Vector3")(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                rotation=M("geometry_msgs/msg/Quaternion")(
                    x=float(quat_xyzw[0]), y=float(quat_xyzw[1]), z=float(quat_xyzw[2]), w=float(quat_xyzw[3])
                ),
            ),
        )

    def _image(self, ns: int, array: np.ndarray, encoding: str, frame_id: str):
        a = np.ascontiguousarray(array)
        if encoding == "32FC1":
            a = a.astype("<f4", copy=False)
        H, W = a.shape[:2]
        return self._M("sensor_msgs/msg/Image")(
            header=self._header(ns, frame_id),
            height=H,
            width=W,
            encoding=encoding,
            is_bigendian=0,
            step=int(a.strides[0]),
            data=np.frombuffer(a.tobytes(), np.uint8),
        )

    def _camera_info(self, ns: int, cam: BagCamera):
        K = np.asarray(cam.K, np.float64)
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = self._M("sensor_msgs/msg/RegionOfInterest")(
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        return self._M("sensor_msgs/msg/CameraInfo")(
            header=self._header(ns, cam.optical_frame),
            height=int(cam.height),
            width=int(cam.width),
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=K.reshape(-1).copy(),
            r=np.eye(3).reshape(-1),
            p=P.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def _write(self, key: Any, ns: int, msg: Any) -> None:
        if ns < self._last_ns:
            raise BagError(f"{self.path}: message at {ns} ns after one at {self._last_ns} ns (time order)")
        if ns != self._clock_ns:  # /clock ticks at every stamp the bag holds, before its messages
            Time = self._M("builtin_interfaces/msg/Time")
            clock = self._M("rosgraph_msgs/msg/Clock")(
                clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
            )
            self._raw("clock", ns, clock)
            self._clock_ns = ns
        if not self._static_written:
            self._write_static(ns)
        self._raw(key, ns, msg)
        self._last_ns = ns

    def _raw(self, key: Any, ns: int, msg: Any) -> None:
        conn = self._conn[key]
        self._writer.write(conn, ns, self.ts.serialize_cdr(msg, conn.msgtype))
        self.counts[conn.topic] = self.counts.get(conn.topic, 0) + 1

    def _write_static(self, ns: int) -> None:
        x0, y0, yaw0 = self.spawn
        chain = [(WORLD_FRAME, ODOM_FRAME, (x0, y0, 0.0), (0.0, 0.0, yaw0))]
        for cam in self.cameras:
            chain.append((BASE_FRAME, cam.link_frame, cam.xyz, cam.rpy))
            chain.append((cam.link_frame, cam.optical_frame, (0.0, 0.0, 0.0), OPTICAL_RPY))
        tfs = []
        for parent, child, xyz, rpy in chain:
            tfs.append(self._transform(ns, parent, child, xyz, Rotation.from_euler("xyz", rpy).as_quat()))
        self._raw("tf_static", ns, self._M("tf2_msgs/msg/TFMessage")(transforms=tfs))
        self._static_written = True

    # -- public -----------------------------------------------------------------------------------------

    def odometry(
        self, t: float, x: float, y: float, z: float, yaw: float, v_body: tuple[float, float], yaw_rate: float
    ) -> None:
        """Robot base at world pose ``(x, y, z, yaw)`` (m, rad) moving at ``v_body`` (forward, left; m/s) and
        ``yaw_rate`` (rad/s) at sim time ``t`` (s): ``/odometry`` and the ``odom -> base_link`` TF."""
        ns = to_ns(t)
        x0, y0, yaw0 = self.spawn
        c, s = math.cos(yaw0), math.sin(yaw0)
        dx, dy = x - x0, y - y0
        xyz = (c * dx + s * dy, -s * dx + c * dy, z)  # world offset in the odom frame
        q = Rotation.from_euler("z", yaw - yaw0).as_quat()
        M = self._M
        odom = M("nav_msgs/msg/Odometry")(
            header=self._header(ns, ODOM_FRAME),
            child_frame_id=BASE_FRAME,
            pose=M("geometry_msgs/msg/PoseWithCovariance")(
                pose=M("geometry_msgs/msg/Pose")(
                    position=M("geometry_msgs/msg/Point")(x=xyz[0], y=xyz[1], z=xyz[2]),
                    orientation=M("geometry_msgs/msg/Quaternion")(x=q[0], y=q[1], z=q[2], w=q[3]),
                ),
                covariance=np.zeros(36),  # exact: the simulator's own state
            ),
            twist=M("geometry_msgs/msg/TwistWithCovariance")(
                twist=M("geometry_msgs/msg/Twist")(
                    linear=M("geometry_msgs/msg/Vector3")(x=float(v_body[0]), y=float(v_body[1]), z=0.0),
                    angular=M("geometry_msgs/msg/Vector3")(x=0.0, y=0.0, z=float(yaw_rate)),
                ),
                covariance=np.zeros(36),
            ),
        )
        self._write("odometry", ns, odom)
        tf = M("tf2_msgs/msg/TFMessage")(transforms=[self._transform(ns, ODOM_FRAME, BASE_FRAME, xyz, q)])
        self._write("tf", ns, tf)

    def frame(self, t: float, result: dict, camera: int = 0) -> None:
        """One render of camera number ``camera`` (``rgb (H, W, 3) uint8``, ``depth (H, W)`` m with 0 = no
        hit, ``panoptic (H, W)`` segment ids, ``segments``) at sim time ``t`` (s)."""
        ns = to_ns(t)
        cam = self.cameras[camera]
        frame_id = cam.optical_frame
        if "rgb" in result:
            self._write((camera, "rgb"), ns, self._image(ns, result["rgb"], "rgb8", frame_id))
        if "depth" in result:
            d = np.asarray(result["depth"], np.float32)
            d = np.where(d > 0, d, np.float32(np.inf))
            self._write((camera, "depth"), ns, self._image(ns, d, "32FC1", frame_id))
        if "panoptic" in result:
            pan = id_to_rgb(result["panoptic"])
            self._write((camera, "panoptic"), ns, self._image(ns, pan, "rgb8", frame_id))
            segs = json.dumps({"segments": result.get("segments", [])})
            self._write((camera, "segments"), ns, self._M("std_msgs/msg/String")(data=segs))
        self._write((camera, "camera_info"), ns, self._camera_info(ns, cam))

    def close(self) -> Path:
        """Finish the bag and move it to ``path``; returns ``path``."""
        self._writer.close()
        src = self._bag_dir / f"{self._bag_dir.name}.mcap" if self.path.suffix == ".mcap" else self._bag_dir
        if self.path.suffix == ".mcap":
            os.replace(src, self.path)
        else:
            old = None
            if self.path.exists():  # a folder cannot be replaced in one step: move the old one aside first
                old = self._tmp / "old"
                os.replace(self.path, old)
            os.replace(src, self.path)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        try:
            self._writer.close()
        except Exception:  # the writer may be half-open after the failure that brought us here
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)
