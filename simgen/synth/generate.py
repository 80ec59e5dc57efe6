"""``simgen synth``: synthetic indoor scenes with exact ground truth.

A seeded layout (rooms + furniture from trimesh primitives) is ray cast along a hand-held walk;
every frame gets RGB (procedural textures, Lambertian shading), z-depth, exact GT panoptic ids and
noisy pseudo-labels imitating a 2D segmenter (:mod:`simgen.synth.noise`). The scene is written
with :class:`simgen.data.writer.SceneWriter` (GT under ``gt/``), plus ``gt/synth.json`` holding
the true poses, the per-frame noise events and the layout.

Randomness: independent streams derived from the seed for the layout, the walk and each frame's
noise, so a seed gives byte-identical files, and changing a noise setting leaves the layout,
the walk and the GT untouched.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from simgen.config import to_dict
from simgen.data import io
from simgen.data.camera import Intrinsics, opengl_to_opencv
from simgen.data.writer import SceneWriter
from simgen.render.raycast import MeshRaycaster
from simgen.synth.layout import (
    CATEGORIES,
    STUFF_IDS,
    THING_IDS,
    SceneGeometry,
    TwinLayout,
    build_scene,
    make_rooms,
    make_stuff,
    populate,
)
from simgen.synth.noise import (
    NoiseConfig,
    drift_poses,
    miss_runs,
    motion_blur,
    noisy_depth,
    noisy_pose,
    noisy_rgb,
    pseudo_labels,
    sensor_depth,
    similar_lookup,
)
from simgen.synth.shading import albedo, lambert
from simgen.synth.trajectory import frame_poses, plan_walk

SYNTH_JSON = "synth.json"  # under gt/
PresetName = Literal["tiny", "room", "two-rooms"]


@dataclass(frozen=True)
class Preset:
    """Fixed shape of a preset (sizes in metres; ranges are sampled from the seed)."""

    frames: int
    width: int
    height: int
    room_widths: tuple[tuple[float, float], ...]  # one (min, max) per room
    room_depth: tuple[float, float]
    ceiling: tuple[float, float]
    objects: tuple[int, int]  # things per room, (min, max) inclusive
    inset: float  # walk distance from the walls
    twins: bool = False


PRESETS: dict[str, Preset] = {
    "tiny": Preset(16, 96, 72, ((4.0, 4.5),), (3.6, 4.0), (2.4, 2.5), (3, 5), 1.0),
    "room": Preset(150, 320, 240, ((5.5, 7.0),), (4.6, 5.4), (2.5, 2.8), (8, 15), 1.1),
    "two-rooms": Preset(
        300, 320, 240, ((5.0, 6.0), (5.0, 6.0)), (4.8, 5.5), (2.5, 2.7), (6, 9), 1.1, twins=True
    ),
}


@dataclass
class SynthConfig:
    """Settings of ``simgen synth`` (None = the preset's value)."""

    preset: PresetName = field(default="room", metadata={"help": "scene preset: tiny, room or two-rooms"})
    seed: int = field(default=0, metadata={"help": "random seed (same seed, same files)"})
    frames: int | None = field(default=None, metadata={"help": "number of frames (preset: 16 / 150 / 300)"})
    width: int | None = field(
        default=None, metadata={"help": "image width in pixels (preset: 96 / 320 / 320)"}
    )
    height: int | None = field(
        default=None, metadata={"help": "image height in pixels (preset: 72 / 240 / 240)"}
    )
    objects: int | None = field(
        default=None, metadata={"help": "things per room (preset: a seeded 3-5 / 8-15 / 6-9)"}
    )
    hfov_deg: float = field(default=65.0, metadata={"help": "horizontal field of view (degrees)"})
    test_every: int = field(default=10, metadata={"help": "every N-th frame is a test frame (0: none)"})
    twin_layout: TwinLayout = field(
        default="back-to-back",
        metadata={
            "help": "two-rooms twins: back-to-back across the shared wall (14 cm apart) or apart "
            "(each against its room's outer wall, ~11 m apart)"
        },
    )
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("frames", "width", "height"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.objects is not None and self.objects < 0:
            raise ValueError(f"objects must be >= 0, got {self.objects}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must lie in [10, 150], got {self.hfov_deg}")
        if self.test_every < 0:
            raise ValueError(f"test_every must be >= 0, got {self.test_every}")
        if self.twin_layout not in get_args(TwinLayout):
            raise ValueError(
                f"twin_layout must be one of {', '.join(get_args(TwinLayout))}, got {self.twin_layout!r}"
            )

    def intrinsics(self) -> Intrinsics:
        p = PRESETS[self.preset]
        w, h = self.width or p.width, self.height or p.height
        f = (w / 2) / np.tan(np.deg2rad(self.hfov_deg) / 2)
        return Intrinsics(float(f), float(f), w / 2, h / 2, int(w), int(h))


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def make_scene(cfg: SynthConfig) -> tuple[SceneGeometry, np.ndarray]:
    """The layout and the true camera-to-world poses ``(N, 4, 4)`` (OpenGL axes) of ``cfg``."""
    p = PRESETS[cfg.preset]
    r_rooms = _rng(cfg.seed, 1)
    widths = [float(r_rooms.uniform(*w)) for w in p.room_widths]
    depth = float(r_rooms.uniform(*p.room_depth))
    rooms, doors = make_rooms(widths, depth, float(r_rooms.uniform(*p.ceiling)), r_rooms)
    walk = plan_walk(rooms, doors, p.inset, _rng(cfg.seed, 2))
    r_obj = _rng(cfg.seed, 3)
    counts = [
        cfg.objects if cfg.objects is not None else int(r_obj.integers(p.objects[0], p.objects[1] + 1))
        for _ in rooms
    ]
    stuff = make_stuff(rooms, doors, r_obj)
    things, twins = populate(rooms, doors, walk.xy, counts, r_obj, twins=p.twins, twin_layout=cfg.twin_layout)
    geom = build_scene(stuff + things, rooms, doors, twins=tuple(len(stuff) + i for i in twins))
    poses = frame_poses(walk, cfg.frames or p.frames, _rng(cfg.seed, 4))
    return geom, poses


@dataclass
class FrameRender:
    """Exact render of one frame: rgb ``(H, W, 3) uint8``, depth ``(H, W) float32`` metres (0 = no hit),
    gt_panoptic ``(H, W) int32`` GT segment ids (0 = void), cos_incidence ``(H, W) float32`` cosine
    of the angle between the viewing ray and the surface normal (0 = no hit)."""

    rgb: np.ndarray
    depth: np.ndarray
    gt_panoptic: np.ndarray
    cos_incidence: np.ndarray | None = None


def render_frame(
    geom: SceneGeometry, caster: MeshRaycaster, K: Intrinsics, c2w_gl: np.ndarray
) -> FrameRender:
    """Ray cast one view of ``geom`` (``c2w_gl``: camera-to-world, OpenGL axes)."""
    c2w_cv = opengl_to_opencv(c2w_gl)
    hits = caster.cast(K, c2w_cv)
    valid = hits.valid
    face = hits.face[valid]
    gt = np.zeros((K.height, K.width), dtype=np.int32)
    gt[valid] = geom.face_segment[face]
    pts = hits.points[valid].astype(np.float64)
    w2l = geom.object_w2l[geom.face_object[face]]
    local = np.einsum("nij,nj->ni", w2l[:, :3, :3], pts) + w2l[:, :3, 3]
    base = albedo(local, geom.face_material[face], geom.materials)
    dirs = pts - c2w_cv[:3, 3]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    normals = geom.mesh.face_normals[face]
    light = lambert(pts, normals, dirs, geom.lights)
    rgb = np.zeros((K.height, K.width, 3), dtype=np.uint8)
    rgb[valid] = np.clip(np.round(base * light[:, None] * 255.0), 0, 255).astype(np.uint8)
    cos_inc = np.zeros((K.height, K.width), dtype=np.float32)
    cos_inc[valid] = np.abs(np.einsum("ij,ij->i", normals, dirs))
    return FrameRender(rgb=rgb, depth=hits.depth, gt_panoptic=gt, cos_incidence=cos_inc)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / "transforms.json").exists() or (out / "gt").exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a scene; pass overwrite=True (--overwrite) to replace it"
            )
        # Only the scene's own folders and files: anything else in `out` is left alone.
        for sub in ("rgb", "depth", "panoptic", "gt"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        (out / "transforms.json").unlink(missing_ok=True)
    elif out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")


def generate(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False, quiet: bool = True) -> Path:
    """Write the scene of ``cfg`` to ``out_dir``; returns the scene folder."""
    from tqdm import tqdm

    out = Path(out_dir)
    _prepare_out(out, overwrite)
    t0 = time.perf_counter()
    geom, poses = make_scene(cfg)
    K = cfg.intrinsics()
    caster = MeshRaycaster(geom.mesh)
    seg_names = {c.id: c.name for c in CATEGORIES}
    writer = SceneWriter(
        out,
        K,
        list(CATEGORIES),
        extra_meta={"synth": {"generator": "simgen synth", **to_dict(cfg), "twins": list(geom.twins)}},
    )
    stored, sources, events = [], [], []
    names: list[str] = []
    nz = cfg.noise
    # Realistic-profile noise draws from streams of its own, so the clean profile's files stay
    # byte-identical and turning one realistic family on or off leaves the others' draws alone.
    drifted, drift_err = drift_poses(poses, nz, _rng(cfg.seed, 5))
    things = sorted(k for k, c in geom.segments.items() if c in THING_IDS)
    missed = miss_runs(len(poses), len(things), nz.miss_run_rate if nz.enabled else 0.0,
                       nz.miss_run_frames, _rng(cfg.seed, 6))  # fmt: skip
    similar = similar_lookup(nz.similar_groups, seg_names)
    glossy_ids = [c.id for c in CATEGORIES if c.name in set(nz.glossy_categories)]
    seg_lut = np.zeros(max(geom.segments, default=0) + 1, dtype=np.int64)
    for k, c in geom.segments.items():
        seg_lut[k] = c
    for i in tqdm(
        range(len(poses)), desc=f"synth {cfg.preset}", unit="frame", disable=quiet or None, leave=False
    ):
        fr = render_frame(geom, caster, K, poses[i])
        noise_rng = _rng(cfg.seed, 100, i)
        real_rng = _rng(cfg.seed, 101, i)
        forced = {t for t, m in zip(things, missed[i], strict=True) if m}
        pl = pseudo_labels(
            fr.gt_panoptic, geom.segments, THING_IDS, STUFF_IDS, nz, noise_rng, forced, similar
        )
        depth = noisy_depth(fr.depth, nz, noise_rng)
        rgb = noisy_rgb(fr.rgb, nz, noise_rng)
        c2w = noisy_pose(drifted[i], nz, noise_rng)
        if nz.sensor_artifacts:
            lum = (fr.rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
            glossy = np.isin(seg_lut[fr.gt_panoptic], glossy_ids) & (fr.gt_panoptic > 0)
            depth, art = sensor_depth(depth, fr.depth, nz, real_rng, lum, fr.cos_incidence, glossy)
            pl.events["depth"] = art.as_dict()
        if nz.enabled and nz.blur_prob > 0 and real_rng.random() < nz.blur_prob:
            length = float(real_rng.uniform(*nz.blur_px)) * K.width / 320.0
            rgb = motion_blur(rgb, length, float(real_rng.uniform(0, np.pi)))
            pl.events["blur_px"] = round(length, 2)
        names.append(
            writer.add_frame(
                rgb, depth, pl.panoptic, pl.segments, c2w, gt_panoptic=fr.gt_panoptic, gt_c2w_gl=poses[i]
            )
        )
        stored.append(c2w)
        sources.append({str(k): v for k, v in pl.source.items()})
        events.append(pl.events)
    writer.write_gt_mesh(geom.mesh, geom.vertex_segment)
    is_test = [cfg.test_every > 0 and i % cfg.test_every == cfg.test_every // 2 for i in range(len(names))]
    info: dict[str, Any] = {
        "preset": cfg.preset,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "twins": list(geom.twins),
        "rooms": [dataclasses.asdict(r) for r in geom.rooms],
        "doors": [dataclasses.asdict(d) for d in geom.doors],
        "objects": [
            {
                "segment_id": o.segment_id,
                "category_id": o.category_id,
                "category": seg_names[o.category_id],
                "room": o.room,
                "transform": np.round(o.transform, 8).tolist(),
            }
            for o in geom.objects
        ],
        "true_c2w": [np.round(p, 8).tolist() for p in poses],  # OpenGL axes, before pose noise
        # Accumulated drift per frame (rotation vector rad, translation m; world axes), before jitter.
        "pose_drift": np.round(drift_err, 8).tolist(),
        "pseudo_label_sources": sources,  # per frame: pseudo-label id -> GT segment id (-1: spurious)
        "noise_events": events,
    }
    io.write_json(out / "gt" / SYNTH_JSON, info)
    writer.finish(
        gt_segments=geom.segments,
        train=[n for n, t in zip(names, is_test, strict=True) if not t],
        test=[n for n, t in zip(names, is_test, strict=True) if t],
    )
    if not quiet:
        print(f"wrote {len(names)} frames to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def preset_config(preset: str = "tiny", seed: int = 0, **overrides: Any) -> SynthConfig:
    """A :class:`SynthConfig` for ``preset``; ``overrides`` set its fields. ``noise`` may be a
    :class:`NoiseConfig`, a dict of NoiseConfig fields, a profile name ("clean", "realistic"), or
    False / None for no noise at all."""
    noise = overrides.pop("noise", NoiseConfig())
    if noise is False or noise is None:
        noise = NoiseConfig.off()
    elif isinstance(noise, str):
        noise = NoiseConfig(profile=noise)  # type: ignore[arg-type]
    elif isinstance(noise, dict):
        noise = NoiseConfig(**noise)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SynthConfig)}
    if unknown:
        raise TypeError(f"unknown SynthConfig field(s): {', '.join(sorted(unknown))}")
    return SynthConfig(preset=preset, seed=seed, noise=noise, **overrides)  # type: ignore[arg-type]


def synthesize(
    out_dir: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    overwrite: bool = True,
    quiet: bool = True,
    **overrides: Any,
) -> Path:
    """Generate a synthetic scene into ``out_dir`` and return its path (for tests of every stage).

    Example: ``synthesize(tmp_path / "s", "tiny", seed=1, noise=False)`` gives exact pseudo-labels
    (GT masks with random per-frame ids), depth, RGB and poses; ``noise={"miss_prob": 0.3}``
    changes one noise setting; other keywords set :class:`SynthConfig` fields (frames, width, ...).
    """
    return generate(preset_config(preset, seed, **overrides), out_dir, overwrite=overwrite, quiet=quiet)
