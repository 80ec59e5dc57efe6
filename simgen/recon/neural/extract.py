"""Mesh extraction from the trained fields: marching cubes on the SDF, culling, colour and panoptic labels."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.measure import marching_cubes

from simgen.data.scene import Scene
from simgen.folders import (
    INSTANCES_FILE,
    MESH_FILE,
    PanopticMesh,
    instance_records,
    new_build_record,
    write_instances,
    write_panoptic_mesh,
)
from simgen.recon.neural.config import NeuralConfig
from simgen.recon.neural.data import RayData
from simgen.recon.neural.model import PanopticModel


@torch.no_grad()
def sdf_volume(model: PanopticModel, voxel: float, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """SDF sampled on a regular grid over the model box: ``(nx, ny, nz)`` float32 and its origin ``(3,)``."""
    lo, hi = model.box.lo.cpu().numpy(), model.box.hi.cpu().numpy()
    dims = np.maximum(np.ceil((hi - lo) / voxel).astype(int) + 1, 2)
    if np.prod(dims) > 400_000_000:
        raise ValueError(f"mesh grid {dims.tolist()} too large for voxel {voxel} m; raise neural.mesh-voxel")
    axes = [torch.arange(n, dtype=torch.float32) * voxel + float(o) for n, o in zip(dims, lo, strict=True)]
    dev = model.box.lo.device
    vol = np.empty(dims, np.float32)
    gx, gy = torch.meshgrid(axes[0], axes[1], indexing="ij")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    for k, z in enumerate(axes[2]):  # slices (hundreds), each vectorised
        p = torch.cat([xy, torch.full((len(xy), 1), float(z))], dim=1).to(dev)
        vol[:, :, k] = (
            torch.cat([model.sdf(c).float() for c in p.split(chunk)]).cpu().numpy().reshape(dims[:2])
        )
    return vol, lo


def observe_vertices(verts: np.ndarray, data: RayData, downscale: int, scene: Scene, margin: float):
    """Project vertices ``(V, 3)`` into every training frame.

    Returns ``seen`` ``(V,)`` int count of frames where the vertex is inside the image and not behind
    the observed depth by more than ``margin``; ``colour`` ``(V, 3)`` uint8 mean pixel colour over those
    frames; ``frames_of`` list per frame of visible vertex indices.
    """
    V = len(verts)
    seen = np.zeros(V, np.int64)
    col = np.zeros((V, 3), np.float64)
    frames_of = []
    s = downscale
    depth_all = data.depth.cpu().numpy()
    rgb_all = data.rgb.cpu().numpy()
    for f, i in enumerate(data.frame_ids):  # frames, each vectorised over vertices
        K = scene.frames[i].intrinsics
        w2c = np.linalg.inv(data.c2w[f])
        pc = verts @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K.fx * pc[:, 0] / z + K.cx
            v = K.fy * pc[:, 1] / z + K.cy
        # pixel (col, row) of the subsampled grid: centres at s*j + s//2 + 0.5
        cj = np.floor((u - s // 2) / s + 0.5).astype(np.int64)
        rj = np.floor((v - s // 2) / s + 0.5).astype(np.int64)
        w_s = len(range(s // 2, K.width, s))
        h_s = len(range(s // 2, K.height, s))
        inside = (z > 1e-6) & (cj >= 0) & (cj < w_s) & (rj >= 0) & (rj < h_s)
        idx = np.flatnonzero(inside)
        flat = data.start[f] + rj[idx] * w_s + cj[idx]
        dist = np.linalg.norm(verts[idx] - data.c2w[f][:3, 3], axis=1)
        d_obs = depth_all[flat]
        vis = (d_obs > 0) & (dist <= d_obs + margin) & (dist >= d_obs - margin)
        idx, flat = idx[vis], flat[vis]
        seen[idx] += 1
        col[idx] += rgb_all[flat]
        frames_of.append(idx)
    colour = np.where(seen[:, None] > 0, col / np.maximum(seen, 1)[:, None], 180).astype(np.uint8)
    return seen, colour, frames_of


def merge_fragments(
    faces: np.ndarray, semantic: np.ndarray, label: np.ndarray, max_ratio: float, min_edges: int = 5
) -> tuple[np.ndarray, int]:
    """Relabel small thing pieces into the larger same-class instance they touch on the mesh.

    Where a token's attention spills over part of a neighbouring object (a lamp's base, a cabinet's
    door) the panoptic head gives that part its own instance; PQ then counts a false positive and the
    export a separate model. A piece joins instance ``j`` when it shares at least ``min_edges`` mesh
    edges with ``j``, has the same class, and at most ``max_ratio`` of ``j``'s vertex count; the
    smallest piece goes first and merges repeat until none qualifies. Separate objects of one class
    that merely touch are of similar size and stay apart.

    Args:
        faces: ``(F, 3)`` vertex indices.
        semantic: ``(V,)`` class per vertex.
        label: ``(V,)`` instance label per vertex, ``< 0`` for none (stuff, unlabelled).
        max_ratio: size ratio in ``[0, 1)``; 0 turns merging off.
    Returns:
        the new labels ``(V,)`` and the number of merges.
    """
    label = label.copy()
    if max_ratio <= 0 or len(faces) == 0:
        return label, 0
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    same = semantic[e[:, 0]] == semantic[e[:, 1]]
    merges = 0
    while True:
        a, b = label[e[:, 0]], label[e[:, 1]]
        touch = same & (a != b) & (a >= 0) & (b >= 0)
        if not touch.any():
            break
        pairs, count = np.unique(np.stack([a[touch], b[touch]], 1), axis=0, return_counts=True)
        ids, n = np.unique(label[label >= 0], return_counts=True)
        size = dict(zip(ids.tolist(), n.tolist(), strict=True))
        target: dict[int, tuple[int, int]] = {}  # piece -> (instance it joins, shared edges)
        for (i, j), c in zip(pairs.tolist(), count.tolist(), strict=True):
            if c >= min_edges and size[i] <= max_ratio * size[j] and c > target.get(i, (-1, 0))[1]:
                target[i] = (j, c)
        if not target:
            break
        piece = min(target, key=size.__getitem__)
        label[label == piece] = target[piece][0]
        merges += 1
    return label, merges


def extract_mesh(
    scene: Scene, model: PanopticModel, data: RayData, cfg: NeuralConfig
) -> tuple[PanopticMesh, dict[int, list[int]], dict[str, Any]]:
    """Marching cubes at ``cfg.mesh_voxel``, culling, colours and panoptic vertex labels.

    Returns the mesh (instance ids renumbered 1..K by token), instance id -> frames observed, counters.
    """
    vol, origin = sdf_volume(model, cfg.mesh_voxel)
    if not (vol.min() < 0 < vol.max()):
        raise ValueError("the trained SDF has no zero crossing inside the scene box: nothing to mesh "
                         f"(SDF range {vol.min():.3f}..{vol.max():.3f} m); train longer or check depth scale")  # fmt: skip
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(cfg.mesh_voxel,) * 3)
    verts = (verts + origin).astype(np.float32)
    faces = faces[:, ::-1].astype(np.int64)  # outward normals point to positive SDF (free space)
    counters = {"mc_vertices": len(verts), "mc_faces": len(faces)}
    seen, colour, frames_of = observe_vertices(verts, data, cfg.downscale, scene, margin=2 * cfg.trunc)
    if cfg.cull_unobserved:
        keep_v = seen > 0
        keep_f = keep_v[faces].all(1)
        faces = faces[keep_f]
        used = np.zeros(len(verts), bool)
        used[faces.reshape(-1)] = True
        remap = np.cumsum(used) - 1
        verts, colour, seen = verts[used], colour[used], seen[used]
        faces = remap[faces]
        frames_of = [remap[ix[used[ix]]] for ix in frames_of]
    dev = model.box.lo.device
    cls, tok = model.label_points(torch.as_tensor(verts, device=dev))
    cls, tok = cls.cpu().numpy(), tok.cpu().numpy()
    classes = np.asarray(model.classes, np.int32)
    semantic = classes[cls] if len(cls) else np.zeros(0, np.int32)
    tok, counters["fragments_merged"] = merge_fragments(faces, cls, tok, cfg.fragment_ratio)
    # instance ids 1..K in order of first appearance of each token slot among vertices
    used_tok = np.unique(tok[tok >= 0])
    lut = np.zeros(model.tokens.capacity + 1, np.int32)
    lut[used_tok + 1] = np.arange(1, len(used_tok) + 1)
    instance = lut[tok + 1]
    frames_obs: dict[int, list[int]] = {}
    for f, ix in enumerate(frames_of):
        for iid in np.unique(instance[ix]):
            if iid > 0:
                frames_obs.setdefault(int(iid), []).append(int(data.frame_ids[f]))
    mesh = PanopticMesh(verts, faces, colour, semantic, instance)
    counters.update({"vertices": len(verts), "faces": len(faces), "instances": int(len(used_tok))})
    return mesh, frames_obs, counters


def write_build(
    scene: Scene, model: PanopticModel, data: RayData, cfg: NeuralConfig, out: Path | None, progress: bool
) -> dict[str, Any]:
    """Extract the mesh and write panoptic_mesh.ply and instances.json to ``out`` (if given)."""
    t = time.perf_counter()
    mesh, frames_obs, counters = extract_mesh(scene, model, data, cfg)
    records = instance_records(mesh, scene.categories, frames_obs)
    if out is not None:
        write_panoptic_mesh(out / MESH_FILE, mesh)
        write_instances(out / INSTANCES_FILE, records, scene.categories)
    counters.update({"frames": len(data.frame_ids), "tokens": int(model.tokens.active.sum())})
    return {
        **new_build_record("neural", scene.root),
        "config": asdict(cfg),
        "timings_s": {"mesh": round(time.perf_counter() - t, 2)},
        "counters": counters,
        "mesh": mesh,
        "instances": records,
    }
