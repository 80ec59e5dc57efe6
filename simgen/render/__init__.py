"""Rendering shared by the stages: mesh ray casting (:mod:`simgen.render.raycast`)."""

from simgen.render.raycast import MeshRaycaster, RayHits

__all__ = ["MeshRaycaster", "RayHits"]
