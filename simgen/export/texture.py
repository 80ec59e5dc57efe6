"""Bake a texture on an xatlas UV atlas (Gazebo does not reliably show vertex colours): per-vertex colours, or
per-texel colours from a shader such as :mod:`simgen.export.appearance` (the Gaussians' rendered views)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def morton_chunks(vertices: np.ndarray, faces: np.ndarray, chunk_faces: int) -> list[np.ndarray]:
    """Split faces into spatially compact chunks of at most ``chunk_faces`` faces.

    Faces are sorted by the Morton (Z-order) code of their centroid on a 1024^3 grid over the mesh's
    bounding cube, then cut into runs. Returns a list of (k,) int64 face-index arrays covering every face once.
    """
    centroids = np.asarray(vertices, np.float64)[faces].mean(1)
    lo = centroids.min(0)
    scale = 1023.0 / max(float(np.ptp(centroids, axis=0).max()), 1e-12)
    q = np.clip((centroids - lo) * scale, 0, 1023).astype(np.uint64)

    def spread(x: np.ndarray) -> np.ndarray:  # put 10 bits at every third position
        x = (x | (x << np.uint64(16))) & np.uint64(0x030000FF)
        x = (x | (x << np.uint64(8))) & np.uint64(0x0300F00F)
        x = (x | (x << np.uint64(4))) & np.uint64(0x030C30C3)
        return (x | (x << np.uint64(2))) & np.uint64(0x09249249)

    code = spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)) | (spread(q[:, 2]) << np.uint64(2))
    order = np.argsort(code, kind="stable")
    return np.array_split(order, max(1, int(np.ceil(len(faces) / max(int(chunk_faces), 1)))))


TexelShader = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def unwrap(
    vertices: np.ndarray, faces: np.ndarray, size: int = 1024, chunk_faces: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap with xatlas into one atlas of ``size`` x ``size`` texels.

    xatlas's chart building grows faster than linearly with the face count (about 0.6 s for 5 000 faces
    but 35 s for 50 000 here), so the mesh is unwrapped as spatially compact chunks of ``chunk_faces``
    faces that xatlas charts independently and packs into one atlas (about 2 s for 50 000 faces). Chunk
    borders become UV seams, which the texture padding hides.

    Args:
        vertices: (N, 3) float; faces: (F, 3) int; size: texture side (pixels); chunk_faces: faces per
        independently charted chunk.
    Returns:
        (vmap (M,) int64 input vertex of each output vertex, faces (F, 3) int64 into the output vertices,
        uv (M, 2) float64 in [0, 1] with v up (OBJ convention)). Vertices are split on UV seams; faces keep
        their input order.
    """
    import xatlas

    vertices = np.asarray(vertices, np.float32)
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        raise ValueError("no faces to unwrap")
    chunks = morton_chunks(vertices, faces, chunk_faces)
    atlas = xatlas.Atlas()
    used_per_chunk = []
    for idx in chunks:
        used, local = np.unique(faces[idx].reshape(-1), return_inverse=True)
        used_per_chunk.append(used)
        atlas.add_mesh(vertices[used], local.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)  # texels per unit chosen so every chart fits one atlas of this size
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise ValueError(f"xatlas made {atlas.atlas_count} atlases instead of one")
    vmaps, uvs, out_faces = [], [], np.empty((len(faces), 3), np.int64)
    offset = 0
    for k, (idx, used) in enumerate(zip(chunks, used_per_chunk, strict=True)):
        vmap, chunk_faces_out, uv = atlas[k]
        out_faces[idx] = chunk_faces_out.astype(np.int64) + offset
        vmaps.append(used[vmap])
        uvs.append(uv)
        offset += len(vmap)
    return np.concatenate(vmaps).astype(np.int64), out_faces, np.concatenate(uvs).astype(np.float64)


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray,
    size: int = 1024,
    chunk_faces: int = 500,
    shader: TexelShader | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]:
    """UV-unwrap (:func:`unwrap`) and bake a texture: each covered texel gets ``shader``'s colour where the
    shader has one, else the barycentric blend of the vertex colours; empty texels are then padded.

    Args:
        vertices: (N, 3) float; faces: (F, 3) int; colors: (N, 3) uint8; size: texture side (pixels);
        chunk_faces: see :func:`unwrap`.
        shader: optional ``shader(points, normals) -> (rgb, seen)`` called once with every covered texel's
            surface point (T, 3) float64 and unit face normal (T, 3) float64 (input vertex frame, normal by
            the faces' winding); returns rgb (T, 3) float32 in 0..255 and seen (T,) bool (False: keep the
            vertex colour there).
    Returns:
        ((vertices (M, 3) float64, faces (F, 3) int64, uv (M, 2) float64 in [0, 1] with v up, texture
        (size, size, 3) uint8 with row 0 at the top), fraction of covered texels the shader coloured (0.0
        without a shader)).
    """
    vertices = np.asarray(vertices, np.float64)
    vmap, out_faces, uv = unwrap(vertices, faces, size, chunk_faces)
    H = W = int(size)
    face_of, bary = texel_faces(uv, out_faces, size)
    texels = np.flatnonzero(face_of >= 0)
    fi, b = face_of[texels], bary[texels]
    col = np.asarray(colors, np.float32)[vmap][out_faces[fi]]  # (T, 3 corners, 3)
    values = (col * b[:, :, None]).sum(1)
    coverage = 0.0
    if shader is not None and len(texels):
        v = vertices[vmap]
        tri = v[out_faces[fi]]  # (T, 3, 3)
        points = (tri * b[:, :, None].astype(np.float64)).sum(1)
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        rgb, seen = shader(points, normals)
        values[seen] = np.asarray(rgb, np.float32)[seen]
        coverage = float(np.mean(seen))
    img = np.zeros((H * W, 3), np.float32)
    img[texels] = values
    tex = _pad(img.reshape(H, W, 3), (face_of >= 0).reshape(H, W))
    return (vertices[vmap], out_faces, uv, tex), coverage


def bake_vertex_colors(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int = 1024, chunk_faces: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap with xatlas (:func:`unwrap`) and rasterise the vertex colours into a texture.

    Args:
        vertices: (N, 3) float; faces: (F, 3) int; colors: (N, 3) uint8; size: texture side (pixels);
        chunk_faces: faces per independently charted chunk.
    Returns:
        (vertices (M, 3) float64, faces (F, 3) int64, uv (M, 2) float64 in [0, 1] with v up (OBJ
        convention), texture (size, size, 3) uint8 with row 0 at the top). Vertices are split on UV seams;
        faces keep their input order.
    """
    visual, _ = bake_texture(vertices, faces, colors, size, chunk_faces)
    return visual


def texel_faces(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which UV triangle covers each texel, and where in it.

    Written here because no light library rasterises attribute triangles on the CPU; vectorised over all
    (triangle, texel-in-bounding-box) pairs, in chunks to bound memory.

    Args:
        uv: (M, 2) float in [0, 1], v up; faces: (F, 3) int into ``uv``; size: texture side.
    Returns:
        (face (size * size,) int64, -1 where no triangle covers the texel; bary (size * size, 3) float32
        barycentric weights of the texel centre in that face, clipped to >= 0 and summing to 1). Texels are
        in image order: row 0 is the top (v = 1).
    """
    H = W = int(size)
    face_of = np.full(H * W, -1, np.int64)
    bary_of = np.zeros((H * W, 3), np.float32)
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
        pix = (H - 1 - y[inside]) * W + x[inside]  # image row 0 = top = v of 1
        face_of[pix] = fidx[inside]  # where triangles overlap, the last one wins (as the colour did)
        bary_of[pix] = bary
    return face_of, bary_of


def _pad(img: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """(H, W, 3) float texture -> uint8, empty texels (``hit`` False) taking the nearest filled texel, so
    bilinear filtering never reads black gutters."""
    if hit.any() and not hit.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~hit, return_indices=True)
        img = img[iy, ix]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
