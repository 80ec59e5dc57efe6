"""MJCF (MuJoCo) export of the same models: convex hulls and boxes as collision geoms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lxml import etree
from scipy.spatial.transform import Rotation

from simgen.export.sdf import ModelSpec, fmt


@dataclass
class MjcfBody:
    spec: ModelSpec
    pose: np.ndarray  # (4, 4) world pose of the model frame
    texture: str | None  # path relative to the models folder, or None
    rgba: np.ndarray  # (4,) float fallback colour of the visual


def _quat_wxyz(R: np.ndarray) -> str:
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return fmt([w, x, y, z])


def mjcf_world(scene: str, bodies: list[MjcfBody], models_rel: str = "../models") -> etree._ElementTree:
    """One MJCF file referencing the model folders' meshes (``models_rel`` relative to the MJCF file).

    Static models are bodies welded to the world; dynamic ones get a free joint and their inertial.
    Visual meshes are in geom group 1 with collisions off; collision geoms are in group 3.
    """
    root = etree.Element("mujoco", model=scene)
    etree.SubElement(
        root, "compiler", angle="radian", meshdir=models_rel, texturedir=models_rel, autolimits="true"
    )
    etree.SubElement(root, "option", timestep="0.002", gravity="0 0 -9.81")
    default = etree.SubElement(root, "default")
    etree.SubElement(default, "geom", friction="0.8 0.005 0.0001")
    vis = etree.SubElement(default, "default", {"class": "visual"})
    etree.SubElement(vis, "geom", contype="0", conaffinity="0", group="1", mass="0")
    col = etree.SubElement(default, "default", {"class": "collision"})
    etree.SubElement(col, "geom", group="3", rgba="0.5 0.6 0.9 0.4")
    asset = etree.SubElement(root, "asset")
    world = etree.SubElement(root, "worldbody")
    etree.SubElement(
        world, "light", name="sun", directional="true", pos="0 0 10", dir="0.3 -0.2 -1", diffuse="0.8 0.8 0.8"
    )
    for b in bodies:
        s = b.spec
        body = etree.SubElement(
            world, "body", name=s.name, pos=fmt(b.pose[:3, 3]), quat=_quat_wxyz(b.pose[:3, :3])
        )
        if not s.static:
            etree.SubElement(body, "freejoint", name=f"{s.name}__free")
            if s.inertial is not None:
                I = s.inertial.inertia
                etree.SubElement(
                    body,
                    "inertial",
                    pos=fmt(s.inertial.com),
                    mass=fmt([s.inertial.mass]),
                    fullinertia=fmt([I[0, 0], I[1, 1], I[2, 2], I[0, 1], I[0, 2], I[1, 2]]),
                )
        if s.visual_mesh:
            mesh_name = f"{s.name}__visual"
            etree.SubElement(asset, "mesh", name=mesh_name, file=f"{s.name}/{s.visual_mesh}", inertia="shell")
            attrs = {"class": "visual", "type": "mesh", "mesh": mesh_name}
            if b.texture:
                etree.SubElement(asset, "texture", name=f"{s.name}__tex", type="2d", file=b.texture)
                etree.SubElement(asset, "material", name=f"{s.name}__mat", texture=f"{s.name}__tex")
                attrs["material"] = f"{s.name}__mat"
            else:
                attrs["rgba"] = fmt(b.rgba)
            etree.SubElement(body, "geom", attrs)
        for k, uri in enumerate(s.hull_meshes):
            mesh_name = f"{s.name}__hull_{k}"
            etree.SubElement(asset, "mesh", name=mesh_name, file=f"{s.name}/{uri}")
            etree.SubElement(
                body, "geom", {"class": "collision", "type": "mesh", "mesh": mesh_name, "name": mesh_name}
            )
        for k, box in enumerate(s.boxes):
            etree.SubElement(
                body,
                "geom",
                {
                    "class": "collision",
                    "name": f"{s.name}__box_{k}",
                    "type": "box",
                    "size": fmt(np.asarray(box.size) / 2),
                    "pos": fmt(box.pose[:3, 3]),
                    "quat": _quat_wxyz(box.pose[:3, :3]),
                },
            )
    return etree.ElementTree(root)
