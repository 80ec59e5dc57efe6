"""Training rays of a scene, held in memory as plain tensors, and batch sampling.

Every ``downscale``-th pixel (in x and y) of each training frame becomes a ray; labels are taken at
those pixels (nearest, so masks are never blended). Class indices are contiguous: ``classes[c]`` is
the category id of class index ``c``; stuff first, then things (that order is the panoptic head's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from simgen.data.camera import camera_directions
from simgen.data.scene import Scene


@dataclass
class RayData:
    """Per ray (``P`` = frames x pixels, frame-major): tensors on the training device.

    dirs: ``(P, 3)`` float32 unit world directions; depth: ``(P,)`` float32 observed ray length (metres,
    0 = none); sem: ``(P,)`` int64 contiguous class (-1 void); mask: ``(P,)`` int64 index of the pixel's
    thing mask within its frame (-1 none); rgb: ``(P, 3)`` uint8. Per frame (``F``): origins ``(F, 3)``,
    ``start`` ``(F+1,)`` ray offsets, ``mask_class`` list of ``(L_f,)`` int64 contiguous thing index per mask,
    ``frame_ids`` the scene frame indices, ``c2w`` ``(F, 4, 4)`` OpenCV camera-to-world (numpy),
    ``pix`` ``(F,)`` list of (rows, cols) pixel coordinates used.
    """

    dirs: torch.Tensor
    depth: torch.Tensor
    sem: torch.Tensor
    mask: torch.Tensor
    rgb: torch.Tensor
    origins: torch.Tensor
    start: np.ndarray
    mask_class: list[torch.Tensor]
    frame_ids: list[int]
    c2w: np.ndarray
    classes: list[int]
    n_stuff: int
    lo: np.ndarray  # (3,) scene box
    hi: np.ndarray
    far: float

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)


def load_rays(
    scene: Scene, frames: list[int], downscale: int, device, trunc: float, progress: bool
) -> RayData:
    """Read depth, panoptic labels and colour of ``frames`` into a :class:`RayData`."""
    classes = scene.stuff_ids + scene.thing_ids
    n_stuff = len(scene.stuff_ids)
    cls_index = {cid: k for k, cid in enumerate(classes)}
    thing_index = {cid: k for k, cid in enumerate(scene.thing_ids)}
    dirs_l, depth_l, sem_l, mask_l, rgb_l, orig_l, mcls_l, c2w_l, starts = [], [], [], [], [], [], [], [], [0]
    pts_l = []
    s = downscale
    for i in tqdm(frames, desc="load frames", unit="frame", disable=not progress, leave=False):
        fr = scene.frames[i]
        K = fr.intrinsics
        c2w = fr.c2w_cv
        d_cam = camera_directions(K)[s // 2 :: s, s // 2 :: s].reshape(-1, 3)
        norm = np.linalg.norm(d_cam, axis=1)
        d_w = (d_cam / norm[:, None]) @ c2w[:3, :3].T
        depth = scene.depth(i)[s // 2 :: s, s // 2 :: s].reshape(-1)
        if not np.all(np.isfinite(depth)):
            raise ValueError(f"{fr.depth_path}: depth has non-finite values (frame {i})")
        ray_len = depth * norm  # z-depth -> distance along the unit ray
        pan = scene.panoptic(i)[s // 2 :: s, s // 2 :: s].reshape(-1)
        sem = np.full(pan.shape, -1, np.int64)
        mask = np.full(pan.shape, -1, np.int64)
        mcls = []
        for seg in fr.segments:  # loops over segments (tens), not pixels
            sel = pan == seg.id
            sem[sel] = cls_index[seg.category_id]
            if seg.category_id in thing_index and sel.any():
                mask[sel] = len(mcls)
                mcls.append(thing_index[seg.category_id])
        rgb = scene.rgb(i)[s // 2 :: s, s // 2 :: s].reshape(-1, 3)
        dirs_l.append(d_w.astype(np.float32))
        depth_l.append(ray_len.astype(np.float32))
        sem_l.append(sem)
        mask_l.append(mask)
        rgb_l.append(rgb)
        orig_l.append(c2w[:3, 3])
        c2w_l.append(c2w)
        mcls_l.append(torch.tensor(mcls, dtype=torch.int64, device=device))
        starts.append(starts[-1] + len(depth))
        ok = ray_len > 0
        pts_l.append((c2w[:3, 3] + d_w[ok] * ray_len[ok, None])[:: max(1, ok.sum() // 2000)])
    pts = np.concatenate(pts_l + [np.array(orig_l)])
    if len(pts) <= len(orig_l):
        raise ValueError(f"{scene.root}: no valid depth in the training frames")
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.05 * (hi - lo) + trunc
    lo, hi = lo - pad, hi + pad
    depth_all = np.concatenate(depth_l)
    far = float(np.linalg.norm(hi - lo))

    def t(a, dt=None):
        return torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a, dtype=dt).to(device)

    return RayData(
        dirs=t(dirs_l, torch.float32),
        depth=torch.as_tensor(depth_all).to(device),
        sem=t(sem_l, torch.int64),
        mask=t(mask_l, torch.int64),
        rgb=t(rgb_l, torch.uint8),
        origins=torch.as_tensor(np.array(orig_l), dtype=torch.float32).to(device),
        start=np.array(starts),
        mask_class=mcls_l,
        frame_ids=list(frames),
        c2w=np.array(c2w_l),
        classes=classes,
        n_stuff=n_stuff,
        lo=lo.astype(np.float32),
        hi=hi.astype(np.float32),
        far=far,
    )


@dataclass
class Batch:
    """Rays of one step: ``origins``/``dirs`` ``(R, 3)``, ``depth``/``sem``/``mask`` ``(R,)``, ``frame`` ``(R,)``
    the position in ``frames`` (list of RayData frame positions) of each ray."""

    origins: torch.Tensor
    dirs: torch.Tensor
    depth: torch.Tensor
    sem: torch.Tensor
    mask: torch.Tensor
    frame: torch.Tensor
    frames: list[int]


def sample_batch(data: RayData, n_frames: int, rays_per_frame: int, rng: np.random.Generator) -> Batch:
    """``n_frames`` distinct random frames, ``rays_per_frame`` random pixels each."""
    frames = rng.choice(data.n_frames, size=min(n_frames, data.n_frames), replace=False)
    counts = data.start[frames + 1] - data.start[frames]
    idx = np.concatenate(
        [data.start[f] + rng.integers(0, c, rays_per_frame) for f, c in zip(frames, counts, strict=True)]
    )
    dev = data.dirs.device
    idx_t = torch.as_tensor(idx, device=dev)
    pos = torch.arange(len(frames), device=dev).repeat_interleave(rays_per_frame)
    frames_t = torch.as_tensor(frames, device=dev)
    return Batch(
        origins=data.origins[frames_t[pos]],
        dirs=data.dirs[idx_t],
        depth=data.depth[idx_t],
        sem=data.sem[idx_t],
        mask=data.mask[idx_t],
        frame=pos,
        frames=[int(f) for f in frames],
    )


def thing_pixels_3d(data: RayData, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Back-project ``n`` random thing-mask pixels with depth: points ``(n, 3)`` and the pixels' ray indices."""
    ok = torch.nonzero((data.mask >= 0) & (data.depth > 0)).flatten().cpu().numpy()
    if len(ok) == 0:
        return np.zeros((0, 3), np.float32), ok
    pick = rng.choice(ok, size=min(n, len(ok)), replace=False)
    return ray_points(data, pick), pick


def ray_points(data: RayData, idx: np.ndarray) -> np.ndarray:
    """Observed 3D points ``(len(idx), 3)`` float32 of rays ``idx`` (rays must have depth)."""
    frame = np.searchsorted(data.start, idx, side="right") - 1
    o = data.origins.cpu().numpy()[frame]
    d = data.dirs[torch.as_tensor(idx, device=data.dirs.device)].cpu().numpy()
    D = data.depth[torch.as_tensor(idx, device=data.dirs.device)].cpu().numpy()
    return (o + d * D[:, None]).astype(np.float32)
