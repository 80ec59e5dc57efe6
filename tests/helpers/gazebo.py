"""Fakes of Gazebo's Python API (gz.sim8, gz.transport13, gz.msgs10) for testing the simgen camera
system plugin without Gazebo, which does not install here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "sensor_plugin" / "simgen_camera_system.py"


class FakeMsg:
    """Enough of a protobuf message: nested fields spring into existence, repeated fields are lists."""

    def __init__(self):
        object.__setattr__(self, "_items", [])

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = FakeMsg()
        object.__setattr__(self, name, child)
        return child

    def add(self):
        m = FakeMsg()
        self._items.append(m)
        return m

    def append(self, v):
        self._items.append(v)

    def extend(self, vs):
        self._items.extend(vs)


class FakePose:
    def __init__(self, p, q):
        self._p, self._q = p, q

    def pos(self):
        return types.SimpleNamespace(x=lambda: self._p[0], y=lambda: self._p[1], z=lambda: self._p[2])

    def rot(self):
        q = self._q
        return types.SimpleNamespace(x=lambda: q[0], y=lambda: q[1], z=lambda: q[2], w=lambda: q[3])


class FakeSdf:
    def __init__(self, values):
        self.values = values

    def has_element(self, key):
        return key in self.values

    def get_string(self, key):
        return self.values[key]


def load_plugin(monkeypatch, app_render):
    """Import sensor_plugin/simgen_camera_system.py against fake gz.sim8 / gz.transport13 / gz.msgs10."""
    world = {"link_pose": FakePose((-1.0, 0.0, 0.5), (0.0, 0.0, 0.0, 1.0)), "published": []}

    class Model:
        def __init__(self, entity):
            self.entity = entity

        def link_by_name(self, ecm, name):
            return 42 if name == "camera_link" else 0

        def name(self, ecm):
            return "jackal"

    class Link:
        def __init__(self, entity):
            self.entity = entity

        def valid(self, ecm):
            return self.entity == 42

        def world_pose(self, ecm):
            return world["link_pose"]

    class Node:
        def advertise(self, topic, msg_type):
            return types.SimpleNamespace(
                publish=lambda msg: world["published"].append((topic, msg_type, msg))
            )

    msg_types = {}
    mods = {"gz": types.ModuleType("gz")}
    for name in ("gz.sim8", "gz.transport13", "gz.msgs10"):
        mods[name] = types.ModuleType(name)
    mods["gz.sim8"].Model, mods["gz.sim8"].Link = Model, Link
    mods["gz.transport13"].Node = Node
    for mod, cls in (
        ("camera_info_pb2", "CameraInfo"),
        ("image_pb2", "Image"),
        ("stringmsg_pb2", "StringMsg"),
    ):
        m = types.ModuleType(f"gz.msgs10.{mod}")
        msg_types[cls] = type(cls, (FakeMsg,), {})
        setattr(m, cls, msg_types[cls])
        mods[f"gz.msgs10.{mod}"] = m
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    spec = importlib.util.spec_from_file_location("simgen_camera_system", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class FakeClient:  # the HTTP client, replaced by the in-process app
        def __init__(self, url, timeout, retries):
            self.url = url

        def post_render(self, body):
            return app_render(body)

    monkeypatch.setattr(module, "RenderClient", FakeClient)
    return module, world, msg_types
