"""Settings of ``simgen export`` (one dataclass; every field is a ``--flag``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from simgen.export.policy import FIXED_CLASSES


@dataclass
class ExportConfig:
    format: Literal["sdf", "mjcf", "all"] = field(
        default="all", metadata={"help": "what to write: Gazebo SDFormat, MuJoCo MJCF, or both"}
    )
    sdf_version: str = field(
        default="1.9",
        metadata={"help": "SDFormat version attribute (1.9 is read by libsdformat 12 and newer)"},
    )
    scene_name: str | None = field(
        default=None, metadata={"help": "world name (default: the build folder's name)"}
    )
    face_budget: int = field(
        default=50_000, metadata={"help": "max faces per visual mesh (quadric decimation)"}
    )
    collider_faces: int = field(
        default=1_000,
        metadata={
            "help": "faces a thing is decimated to before convex decomposition (CoACD time grows with it)"
        },
    )
    min_piece_fraction: float = field(
        default=0.02,
        metadata={"help": "drop disconnected pieces with fewer faces than this fraction of the part's faces"},
    )
    max_hole_edges: int = field(
        default=30, metadata={"help": "close holes bounded by at most this many edges"}
    )
    collider_method: Literal["auto", "coacd"] = field(
        default="auto",
        metadata={
            "help": "things' colliders: auto = the legs-aware slab split (one hull per leg, seat, top, back; "
            "simgen.export.fidelity) wherever it finds separate members, CoACD for the rest; coacd = CoACD "
            "for every thing; a candidate that fills the space between legs is dropped (figures: "
            "docs/benchmarks.md)"
        },
    )
    coacd_threshold: float = field(
        default=0.1, metadata={"help": "CoACD concavity threshold (smaller: more, tighter hulls, slower)"}
    )
    max_hulls: int = field(
        default=16,
        metadata={"help": "max convex hulls per object (slab split and CoACD's max_convex_hull)"},
    )
    coacd_resolution: int = field(
        default=500, metadata={"help": "CoACD surface samples for the concavity metric (speed vs. accuracy)"}
    )
    coacd_iterations: int = field(
        default=60, metadata={"help": "CoACD Monte-Carlo tree search iterations per cut (speed vs. accuracy)"}
    )
    coacd_preprocess_resolution: int = field(
        default=30,
        metadata={"help": "CoACD remeshing resolution, used only for parts still open after hole filling"},
    )
    wall_thickness: float = field(
        default=0.1, metadata={"help": "thickness (m) of the box colliders of floor, walls and other stuff"}
    )
    dynamic_things: bool = field(
        default=True,
        metadata={
            "help": "movable things get a free body with mass (solid volume x class density) and inertia; the "
            "class policy (--fixed-classes, --dynamic-classes, --max-dynamic-*) keeps furniture fixed. "
            "--no-dynamic-things makes every model static"
        },
    )
    fixed_classes: tuple[str, ...] = field(
        default=FIXED_CLASSES,
        metadata={"help": "class names (or words of them, or category ids) whose things are fixed"},
    )
    dynamic_classes: tuple[str, ...] = field(
        default=(),
        metadata={"help": "class names / ids whose things are dynamic whatever their class or size"},
    )
    max_dynamic_height: float = field(
        default=1.2, metadata={"help": "things taller than this (m) are fixed (large furniture)"}
    )
    max_dynamic_width: float = field(
        default=1.6, metadata={"help": "things whose footprint diagonal exceeds this (m) are fixed"}
    )
    max_dynamic_mass: float = field(
        default=40.0, metadata={"help": "things whose estimated mass exceeds this (kg) are fixed"}
    )
    complete_stuff: bool = field(
        default=True,
        metadata={
            "help": "add closed planar surfaces on the room side of the floor and wall box colliders, just "
            "behind the scan, coloured from the scan where seen and from the nearest seen colour elsewhere, "
            "so cameras see no void where a collider stands (figures per model: stuff_fill)"
        },
    )
    physics: bool = field(
        default=True,
        metadata={
            "help": "in MuJoCo: lift or slide things whose colliders interpenetrate by more than 5 mm where "
            "scanned, then measure the 3 s rest test and the robot push tests (figures in export.json)"
        },
    )
    densities: str | None = field(
        default=None,
        metadata={
            "help": 'JSON file {"class name or id": density kg/m^3} overriding the built-in density table'
        },
    )
    keep_ceiling: bool = field(
        default=False, metadata={"help": "keep the ceiling class (left out by default)"}
    )
    up: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "up vector in the scene frame (3 numbers); required when the build has no floor class"
        },
    )
    workers: int = field(
        default=2,
        metadata={
            "help": "processes for cleaning, texturing and convex decomposition; used only when the parts are big "
            "enough to pay for starting them (0 or 1: always in this process)"
        },
    )
    texture_size: int = field(default=1024, metadata={"help": "side of each baked texture (pixels)"})
    texture_source: Literal["auto", "gaussians", "vertex"] = field(
        default="vertex",
        metadata={
            "help": "texture colours: the mesh's vertex colours, rendered views of the build's gaussians.ply, or "
            "auto (Gaussians when gaussians.ply and the build's scene folder exist). Vertex is the default: on "
            "the room preset the default Gaussians gave no better textures (7.9 vs 7.3 /255) at twice the time"
        },
    )
    texture_views: int = field(
        default=32,
        metadata={"help": "training cameras (evenly spread) the Gaussians are rendered from for texturing"},
    )
    thumbnails: bool = field(
        default=True,
        metadata={
            "help": "render each model's thumbnails/1..5.png (4 views around, 1 from above; simgen's ray caster "
            "on the textured visual mesh, transparent background)"
        },
    )
    thumbnail_size: int = field(default=256, metadata={"help": "side of each thumbnail (pixels)"})
    fuel: bool = field(
        default=False,
        metadata={
            "help": "also write OUT/fuel/<model>.zip per model, ready to upload to Gazebo Fuel (the model "
            "folder with mesh URIs relative to it, so it loads on its own once unzipped)"
        },
    )
    fuel_author: str = field(
        default="unspecified",
        metadata={"help": "author name written into every model.config (<author><name>)"},
    )
    fuel_email: str = field(
        default="", metadata={"help": "author e-mail written into every model.config (empty: left out)"}
    )
    fuel_license: str = field(
        default="unspecified",
        metadata={
            "help": "licence named in every model.config (an SPDX id such as CC-BY-4.0 is clearest); Fuel "
            "itself takes the licence from its upload form"
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed (RANSAC, CoACD)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar and no summary table"})

    def __post_init__(self) -> None:
        if self.texture_source not in ("auto", "gaussians", "vertex"):
            raise ValueError(
                f"ExportConfig: texture_source must be auto, gaussians or vertex, got {self.texture_source!r}"
            )
        if self.collider_method not in ("auto", "coacd"):
            raise ValueError(
                f"ExportConfig: collider_method must be auto or coacd, got {self.collider_method!r}"
            )
        if self.texture_views < 1:
            raise ValueError(f"ExportConfig: texture_views must be >= 1, got {self.texture_views}")
        if self.fuel and self.format == "mjcf":
            raise ValueError(
                "ExportConfig: fuel packages Gazebo models: it needs format sdf or all, not mjcf"
            )
        if not 16 <= self.thumbnail_size <= 2048:
            raise ValueError(f"ExportConfig: thumbnail_size must be in 16..2048, got {self.thumbnail_size}")
        for name in ("fuel_author", "fuel_license"):
            value = getattr(self, name)
            if not value.strip() or any(ord(c) < 32 for c in value):
                raise ValueError(
                    f"ExportConfig: {name} must be non-empty text without control characters, got {value!r}"
                )
        email = self.fuel_email
        if email and (
            email.count("@") != 1
            or any(c.isspace() or ord(c) < 32 for c in email)
            or not all(email.split("@"))
        ):
            raise ValueError(f"ExportConfig: fuel_email must look like name@host, got {email!r}")
