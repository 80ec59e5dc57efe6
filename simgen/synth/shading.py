"""Procedural textures and Lambertian shading of ray hits.

Textures are functions of the hit point in the hit object's own frame, so they are view-consistent
(the same surface point has the same albedo in every frame) and two copies of one object look the
same wherever they stand. Lighting is view-independent (fixed point lights, no specular term), so
a surface point also has one radiance in every frame, which is what appearance models assume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Texture kinds (Material.kind).
PLAIN, CHECKER, STRIPES, NOISE, GRAIN = range(5)


@dataclass(frozen=True)
class Material:
    """A surface's appearance.

    Attributes:
        color: base albedo, RGB in [0, 1].
        color2: second albedo the texture mixes in, RGB in [0, 1].
        kind: one of PLAIN, CHECKER, STRIPES, NOISE, GRAIN.
        scale: texture period in metres (checker cell, stripe period, noise feature size).
        axis: object-frame axis (0, 1, 2) the stripes / wood rings run across.
        seed: seed of the noise lattice.
        grit: amplitude of the fine noise every material gets (photometric detail), in [0, 1].
    """

    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kind: int = PLAIN
    scale: float = 0.2
    axis: int = 0
    seed: int = 0
    grit: float = 0.08


@dataclass
class MaterialTable:
    """Materials as arrays, indexed by material id: colors ``(M, 3)``, colors2 ``(M, 3)`` float64,
    kinds/axes/seeds ``(M,)`` int64, scales/grits ``(M,)`` float64."""

    colors: np.ndarray
    colors2: np.ndarray
    kinds: np.ndarray
    scales: np.ndarray
    axes: np.ndarray
    seeds: np.ndarray
    grits: np.ndarray

    @classmethod
    def from_materials(cls, materials: list[Material]) -> MaterialTable:
        return cls(
            colors=np.array([m.color for m in materials], dtype=np.float64).reshape(-1, 3),
            colors2=np.array([m.color2 for m in materials], dtype=np.float64).reshape(-1, 3),
            kinds=np.array([m.kind for m in materials], dtype=np.int64),
            scales=np.array([m.scale for m in materials], dtype=np.float64),
            axes=np.array([m.axis for m in materials], dtype=np.int64),
            seeds=np.array([m.seed for m in materials], dtype=np.int64),
            grits=np.array([m.grit for m in materials], dtype=np.float64),
        )


# Lattice hash tables of value_noise: a permutation and the random values at lattice points. A
# fixed table (period 1024 cells) keeps the noise identical on every machine and for every seed.
_MASK = 1023
_TABLE_RNG = np.random.default_rng(0x5EED)
_PERM = _TABLE_RNG.permutation(_MASK + 1).astype(np.int32)
_VALUES = _TABLE_RNG.random(_MASK + 1).astype(np.float32)


def value_noise(p: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1].

    Args:
        p: ``(N, 3)`` points in noise-lattice units (one lattice cell = one feature).
        seed: ``(N,)`` or scalar int lattice seed (shifts the lattice, so each seed is another pattern).

    Returns:
        ``(N,) float32``.
    """
    # Perlin-style permutation hashing of lattice corners with trilinear smoothstep interpolation,
    # written here because no kept numpy library offers plain vectorised 3D value noise.
    q = np.ascontiguousarray(np.asarray(p, dtype=np.float32).T)  # (3, N): contiguous rows are faster
    base = np.floor(q)
    f = q - base
    w = f * f * (3.0 - 2.0 * f)  # smoothstep weights: C1-continuous across cell faces
    i = base.astype(np.int32)
    s = np.asarray(seed, dtype=np.int64)
    ix = i[0] + ((s * 7919) & _MASK).astype(np.int32)
    iy = i[1] + ((s * 104729) & _MASK).astype(np.int32)
    iz = i[2] + ((s * 1299709) & _MASK).astype(np.int32)

    def over_z(h: np.ndarray) -> np.ndarray:
        a, b = _VALUES[(h + iz) & _MASK], _VALUES[(h + iz + 1) & _MASK]
        return a + w[2] * (b - a)

    def over_y(hx: np.ndarray) -> np.ndarray:
        a, b = over_z(_PERM[(hx + iy) & _MASK]), over_z(_PERM[(hx + iy + 1) & _MASK])
        return a + w[1] * (b - a)

    a, b = over_y(_PERM[ix & _MASK]), over_y(_PERM[(ix + 1) & _MASK])
    return a + w[0] * (b - a)


def fbm(p: np.ndarray, seed: np.ndarray | int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of :func:`value_noise` octaves, in [0, 1]. ``p (N, 3)`` -> ``(N,)``."""
    total = np.zeros(len(p), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p * (2.0**o), np.asarray(seed) + 101 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def albedo(points_local: np.ndarray, material: np.ndarray, table: MaterialTable) -> np.ndarray:
    """Albedo of surface points.

    Args:
        points_local: ``(N, 3)`` hit points in their object's frame (metres).
        material: ``(N,)`` material id per point.
        table: the scene's materials.

    Returns:
        ``(N, 3) float64`` RGB albedo in [0, 1].
    """
    p = np.asarray(points_local, dtype=np.float64)
    kind = table.kinds[material]
    scale = table.scales[material][:, None]
    seed = table.seeds[material]
    q = p / scale
    t = np.zeros(len(p))  # mix factor between color (0) and color2 (1)

    m = kind == CHECKER
    if m.any():
        t[m] = (np.floor(q[m]).astype(np.int64).sum(axis=1) % 2).astype(np.float64)
    m = kind == STRIPES
    if m.any():
        rows = np.flatnonzero(m)
        coord = q[rows, table.axes[material[rows]]]
        t[m] = (np.sin(2 * np.pi * coord) > 0.3).astype(np.float64)
    m = kind == NOISE
    if m.any():
        t[m] = np.clip(1.6 * (fbm(q[m], seed[m]) - 0.5) + 0.5, 0, 1)
    m = kind == GRAIN
    if m.any():
        # Wood: rings around the material axis, wobbled by noise.
        rows = np.flatnonzero(m)
        ax = table.axes[material[rows]]
        others = np.stack([q[rows, (ax + 1) % 3], q[rows, (ax + 2) % 3]], axis=1)
        r = np.linalg.norm(others, axis=1) + 1.5 * fbm(q[rows] * 0.5, seed[rows], octaves=2)
        t[m] = 0.5 + 0.5 * np.sin(2 * np.pi * r)

    rgb = table.colors[material] * (1 - t[:, None]) + table.colors2[material] * t[:, None]
    # Fine grit on every surface so even plain parts carry photometric detail.
    grit = value_noise(p / 0.015, seed + 7) - 0.5
    rgb = rgb * (1.0 + 2.0 * table.grits[material][:, None] * grit[:, None])
    return np.clip(rgb, 0.0, 1.0)


def lambert(
    points: np.ndarray,
    normals: np.ndarray,
    ray_dirs: np.ndarray,
    lights: np.ndarray,
    ambient: float = 0.35,
    diffuse: float = 0.75,
    falloff_m: float = 3.5,
) -> np.ndarray:
    """Lambertian irradiance factor at surface points lit by point lights (no shadows).

    Args:
        points: ``(N, 3)`` world hit points.
        normals: ``(N, 3)`` unit face normals (either orientation).
        ray_dirs: ``(N, 3)`` viewing ray directions; normals are flipped to face the viewer, so a
            surface is lit only by lights on the side it is seen from.
        lights: ``(L, 3)`` world light positions.
        falloff_m: distance at which a light's contribution has dropped to half.

    Returns:
        ``(N,) float64`` factor to multiply the albedo by.
    """
    n = np.where((np.einsum("ij,ij->i", normals, ray_dirs) > 0)[:, None], -normals, normals)
    total = np.full(len(points), ambient)
    for light in np.asarray(lights, dtype=np.float64).reshape(-1, 3):
        to_l = light - points
        dist = np.linalg.norm(to_l, axis=1)
        cos = np.einsum("ij,ij->i", n, to_l) / np.maximum(dist, 1e-9)
        total += diffuse * np.maximum(cos, 0.0) / (1.0 + (dist / falloff_m) ** 2)
    return total
