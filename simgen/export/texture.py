"""Bake per-vertex colours into a texture on an xatlas UV atlas (Gazebo does not reliably show vertex colours)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bake_vertex_colors(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap with xatlas and rasterise the vertex colours into a texture.

    Args:
        vertices: (N, 3) float; faces: (F, 3) int; colors: (N, 3) uint8; size: texture side (pixels).
    Returns:
        (vertices (M, 3) float64, faces (F, 3) int64, uv (M, 2) float64 in [0, 1] with v up (OBJ
        convention), texture (size, size, 3) uint8 with row 0 at the top). Vertices are split on UV seams.
    """
    import xatlas

    vertices = np.asarray(vertices, np.float32)
    faces = np.asarray(faces, np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmap, new_faces, uv = atlas[0]
    new_faces = new_faces.astype(np.int64)
    col = np.asarray(colors, np.float32)[vmap]
    tex = _rasterise(uv.astype(np.float64), new_faces, col, size)
    return vertices[vmap].astype(np.float64), new_faces, uv.astype(np.float64), tex


def _rasterise(uv: np.ndarray, faces: np.ndarray, col: np.ndarray, size: int) -> np.ndarray:
    """Fill texels covered by each UV triangle with barycentric colours, then pad outwards.

    Written here because no light library rasterises attribute triangles on the CPU; vectorised over all
    (triangle, texel-in-bounding-box) pairs, in chunks to bound memory.
    """
    H = W = int(size)
    acc = np.zeros((H * W, 3), np.float32)
    hit = np.zeros(H * W, bool)
    p = uv * [W, H]  # texel space, origin bottom-left
    tri = p[faces]  # (F, 3, 2)
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64).clip(0, [W - 1, H - 1])
    hi = np.ceil(tri.max(1) + 0.5).astype(np.int64).clip(0, [W - 1, H - 1])
    dims = hi - lo + 1
    counts = dims[:, 0] * dims[:, 1]
    chunk_starts = np.searchsorted(np.cumsum(counts), np.arange(0, counts.sum(), 4_000_000), side="right")
    bounds = list(chunk_starts) + [len(faces)]
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e <= s:
            continue
        fidx = np.repeat(np.arange(s, e), counts[s:e])
        k = np.arange(len(fidx)) - np.repeat(np.cumsum(counts[s:e]) - counts[s:e], counts[s:e])
        x = lo[fidx, 0] + k % dims[fidx, 0]
        y = lo[fidx, 1] + k // dims[fidx, 0]
        q = np.stack([x + 0.5, y + 0.5], axis=1)
        a, b, c = tri[fidx, 0], tri[fidx, 1], tri[fidx, 2]
        v0, v1, v2 = b - a, c - a, q - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-12, 1e-12, den)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1 - l1 - l2
        # Slightly generous test so texels on shared edges are filled by some triangle.
        inside = (l0 >= -0.05) & (l1 >= -0.05) & (l2 >= -0.05)
        bary = np.clip(np.stack([l0, l1, l2], 1)[inside], 0, None)
        bary /= bary.sum(1, keepdims=True)
        fi = fidx[inside]
        value = (col[faces[fi]] * bary[:, :, None]).sum(1)
        pix = (H - 1 - y[inside]) * W + x[inside]  # image row 0 = top = v of 1
        acc[pix] = value
        hit[pix] = True
    img = acc.reshape(H, W, 3)
    hit = hit.reshape(H, W)
    if hit.any() and not hit.all():
        # Pad: empty texels take the nearest filled texel, so bilinear filtering never reads black gutters.
        _, (iy, ix) = ndimage.distance_transform_edt(~hit, return_indices=True)
        img = img[iy, ix]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
