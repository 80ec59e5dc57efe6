"""Gazebo Sim (Harmonic) Python system: simgen RGB, depth and panoptic images for a robot camera link.

Load it on a robot model with Gazebo's Python system loader::

    <plugin filename="gz-sim-python-system-loader-system" name="gz::sim::systems::PythonSystemLoader">
      <module_name>simgen_camera_system</module_name>
      <server>http://127.0.0.1:8000</server>
      <camera_link>camera_link</camera_link>
      <rate_hz>10</rate_hz>
      <width>320</width> <height>240</height> <hfov_rad>1.047</hfov_rad>
      <topic>/jackal/simgen</topic>
    </plugin>

Every simulation step it reads the camera link's world pose and hands it to
:class:`simgen.sim.gazebo.CameraBridge`, which (at ``rate_hz`` of sim time) asks the render server for
the images and gives back message fields that this file copies into gz-msgs and publishes with
gz-transport. Nothing else happens here: settings, pose maths, rate limiting, request and message
building are in ``simgen.sim.gazebo`` and tested there. See sensor_plugin/README.md for what was and
was not verified.
"""

from __future__ import annotations

import logging

try:  # Harmonic ships versioned module names; later releases also install unversioned ones
    from gz.msgs10.camera_info_pb2 import CameraInfo
    from gz.msgs10.image_pb2 import Image
    from gz.msgs10.stringmsg_pb2 import StringMsg
    from gz.sim8 import Link, Model
    from gz.transport13 import Node
except ImportError:  # pragma: no cover - depends on the Gazebo release
    from gz.msgs.camera_info_pb2 import CameraInfo
    from gz.msgs.image_pb2 import Image
    from gz.msgs.stringmsg_pb2 import StringMsg
    from gz.sim import Link, Model
    from gz.transport import Node

from simgen.serve.client import RenderClient
from simgen.sim.gazebo import SDF_KEYS, BridgeConfigError, CameraBridge, rig_configs

log = logging.getLogger("simgen.gazebo")
MESSAGE_TYPES = {"image": Image, "camera_info": CameraInfo, "string": StringMsg}


def _fill_header(msg, header: dict) -> None:
    msg.header.stamp.sec, msg.header.stamp.nsec = header["stamp"]
    entry = msg.header.data.add()
    entry.key = "frame_id"
    entry.value.append(header["frame_id"])


def to_message(kind: str, fields: dict):
    """Field dict of :func:`simgen.sim.gazebo.build_messages` -> the gz-msgs protobuf message."""
    msg = MESSAGE_TYPES[kind]()
    _fill_header(msg, fields["header"])
    if kind == "image":
        msg.width, msg.height, msg.step = fields["width"], fields["height"], fields["step"]
        msg.pixel_format_type = fields["pixel_format_type"]
        msg.data = fields["data"]
    elif kind == "camera_info":
        msg.width, msg.height = fields["width"], fields["height"]
        msg.distortion.k.extend(fields["distortion"]["k"])
        msg.intrinsics.k.extend(fields["intrinsics"]["k"])
        msg.projection.p.extend(fields["projection"]["p"])
        msg.rectification_matrix.extend(fields["rectification_matrix"])
    else:
        msg.data = fields["data"]
    return msg


class SimgenCameraSystem:
    """The object Gazebo's PythonSystemLoader drives (``configure``, ``pre_update``, ``reset``, ``shutdown``)."""

    def __init__(self):
        self.bridge: CameraBridge | None = None
        self.link = None

    def configure(self, entity, sdf, ecm, event_mgr):
        values = {k: sdf.get_string(k) for k in SDF_KEYS if sdf.has_element(k)}
        # A rig: one <camera> block per camera (its own offset, size, topic...), one request per tick.
        cameras = []
        cam = sdf.find_element("camera") if sdf.has_element("camera") else None
        while cam is not None:
            cameras.append({k: cam.get_string(k) for k in SDF_KEYS if cam.has_element(k)})
            cam = cam.get_next_element("camera")
        try:
            cfgs = rig_configs(values, cameras)
        except BridgeConfigError as e:
            log.error("simgen camera plugin disabled: %s", e)
            return
        cfg = cfgs[0]
        model = Model(entity)
        link = Link(model.link_by_name(ecm, cfg.camera_link))
        if not link.valid(ecm):
            log.error(
                "simgen camera plugin disabled: model %s has no link %r", model.name(ecm), cfg.camera_link
            )
            return
        self.link = link
        self.node = Node()
        self.publishers = {
            topic: self.node.advertise(topic, MESSAGE_TYPES[kind])
            for c in cfgs
            for topic, kind in c.topic_kinds().items()
        }
        client = RenderClient(cfg.server, timeout=cfg.timeout_s, retries=0)
        render = client.post_rig if len(cfgs) > 1 else client.post_render
        self.bridge = CameraBridge(cfgs, render, self._publish, f"{model.name(ecm)}::{cfg.camera_link}")

    def _publish(self, topic: str, kind: str, fields: dict) -> None:
        self.publishers[topic].publish(to_message(kind, fields))

    # PreUpdate rather than PostUpdate: every Harmonic release's loader forwards it (the pose read is the
    # state the last physics step left, which is what a camera exposed at this step sees).
    def pre_update(self, info, ecm):
        if self.bridge is None or info.paused:
            return
        pose = self.link.world_pose(ecm)
        if pose is None:
            return
        p, q = pose.pos(), pose.rot()
        self.bridge.step(info.sim_time.total_seconds(), (p.x(), p.y(), p.z()), (q.x(), q.y(), q.z(), q.w()))

    def reset(self, info, ecm):
        if self.bridge is not None:
            self.bridge.reset()

    def shutdown(self):
        if self.bridge is not None:
            self.bridge.close()


def get_system():
    return SimgenCameraSystem()
