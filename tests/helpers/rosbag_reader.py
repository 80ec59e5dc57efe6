"""Reading ROS 2 bags back in tests with the ``rosbags`` reader (the bags simgen drive writes)."""

from __future__ import annotations

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

TS = get_typestore(Stores.ROS2_HUMBLE)


def read_bag(path) -> tuple[dict[str, list[tuple[int, object]]], list[int], dict[str, str], dict]:
    """``{topic: [(log ns, message)]}``, every log time in read order, ``{topic: type}``, ``{topic: qos}``."""
    msgs: dict[str, list] = {}
    order = []
    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        for conn, ns, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append((ns, TS.deserialize_cdr(raw, conn.msgtype)))
            order.append(ns)
    return msgs, order, types, qos


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def transform_matrix(tf) -> np.ndarray:
    """A ``geometry_msgs/TransformStamped`` as a ``(4, 4)`` parent-from-child matrix."""
    t, q = tf.transform.translation, tf.transform.rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = t.x, t.y, t.z
    return T
