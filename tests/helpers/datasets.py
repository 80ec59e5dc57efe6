"""Tiny fixtures in the real Replica (Semantic-NeRF) and ScanNet (SensReader export) layouts, with the
values an importer must produce from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

W, H = 32, 24
# Replica-style class table: 1 wall and 2 floor are stuff, 5 chair and 7 table are things.
CLASSES = [
    {"id": 1, "name": "wall"},
    {"id": 2, "name": "floor"},
    {"id": 5, "name": "chair"},
    {"id": 7, "name": "table", "isthing": 1},
]
STUFF = {1, 2}


def _poses(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    T[:, :3, 3] = rng.uniform(-2, 2, (n, 3))
    return T


def _labels(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class and instance images (H, W) of frame k: wall (two instance ids, one stuff segment), floor,
    two chairs, a table, a void strip; the layout shifts with k so frames differ."""
    cls = np.ones((H, W), np.int64)
    inst = np.ones((H, W), np.int64)
    inst[: H // 3] = 11  # the wall carries two instance ids in Replica; stuff merges them
    cls[2 * H // 3 :] = 2
    inst[2 * H // 3 :] = 2
    x = (3 * k) % 10
    cls[6:14, x : x + 6], inst[6:14, x : x + 6] = 5, 3
    cls[6:14, x + 8 : x + 14], inst[6:14, x + 8 : x + 14] = 5, 4
    if k % 3 != 2:  # the table is not in every frame
        cls[10:18, 24:30], inst[10:18, 24:30] = 7, 9
    cls[:, 31] = 0  # void column
    inst[:, 31] = 0
    return cls, inst


def _expected_gt(cls: np.ndarray, inst: np.ndarray, stuff=STUFF, void_instance=None) -> np.ndarray:
    out = np.zeros(cls.shape, np.int64)
    for (y, x), c in np.ndenumerate(cls):  # slow reference on purpose (32x24 pixels)
        if c == 0 or (void_instance is not None and c not in stuff and inst[y, x] == void_instance):
            continue
        out[y, x] = c * 1000 if c in stuff else c * 1000 + inst[y, x]
    return out


def make_replica(root: Path, n: int = 11, seed: int = 0) -> dict:
    """A Semantic-NeRF Replica sequence: traj_w_c.txt, rgb/, depth/, semantic_class/, semantic_instance/."""
    rng = np.random.default_rng(seed)
    poses = _poses(n, seed)
    for d in ("rgb", "depth", "semantic_class", "semantic_instance"):
        (root / d).mkdir(parents=True)
    np.savetxt(root / "traj_w_c.txt", poses.reshape(n, 16), fmt="%.10f")
    rgbs, depths, labels = [], [], []
    for k in range(n):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = rng.integers(300, 9000, (H, W)).astype(np.uint16)
        depth[0, :5] = 0  # invalid
        cls, inst = _labels(k)
        Image.fromarray(rgb).save(root / "rgb" / f"rgb_{k}.png")
        Image.fromarray(depth).save(root / "depth" / f"depth_{k}.png")
        Image.fromarray(cls.astype(np.uint8)).save(root / "semantic_class" / f"semantic_class_{k}.png")
        Image.fromarray(inst.astype(np.uint16)).save(
            root / "semantic_instance" / f"semantic_instance_{k}.png"
        )
        rgbs.append(rgb)
        depths.append(depth)
        labels.append((cls, inst))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return {"poses": poses, "rgb": rgbs, "depth": depths, "labels": labels}


# ScanNet fixture: depth camera 32x24; colour camera twice as large with its principal point 2 pixels
# right of the centre, so in pixel-corner coordinates x_colour = 2 * x_depth + 2 and y_colour = 2 * y_depth:
# output pixel x sees colour/label column 2x + 2, i.e. depth-resolution column x + 1.
K_DEPTH = np.array([[20.0, 0, 15.5, 0], [0, 20.0, 11.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_COLOR = np.array([[40.0, 0, 33.5, 0], [0, 40.0, 23.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
SHIFT = np.minimum(np.arange(W) + 1, W - 1)  # output column -> depth-resolution label column
RAW_TO_NYU = {1: 1, 3: 2, 2: 5, 7: 7, 1163: 40}  # raw ScanNet label id -> NYU40 id
NYU_TO_RAW = {v: k for k, v in RAW_TO_NYU.items()}


def make_scannet(root: Path, numbers=(0, 1, 2, 3, 10), bad_pose=2, seed=1, raw_ids=True) -> dict:
    """A SensReader export: color/N.jpg, depth/N.png, pose/N.txt, intrinsic/, label-filt/, instance-filt/."""
    rng = np.random.default_rng(seed)
    for d in ("color", "depth", "pose", "intrinsic", "label-filt", "instance-filt"):
        (root / d).mkdir(parents=True)
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K_DEPTH)
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K_COLOR)
    poses = _poses(len(numbers), seed)
    out = {"poses": {}, "depth": {}, "labels": {}, "color": {}}
    yy, xx = np.mgrid[0 : 2 * H, 0 : 2 * W] + 0.5
    for j, n in enumerate(numbers):
        pose = np.full((4, 4), -np.inf) if n == bad_pose else poses[j]
        np.savetxt(root / "pose" / f"{n}.txt", pose)
        # a linear ramp: bilinear, antialiased resampling reproduces it exactly away from the border
        color = np.stack([2 * xx + j, 3 * yy, xx + yy], axis=-1).round().astype(np.uint8)
        Image.fromarray(color).save(root / "color" / f"{n}.jpg", quality=100)
        depth = rng.integers(400, 5000, (H, W)).astype(np.uint16)
        Image.fromarray(depth).save(root / "depth" / f"{n}.png")
        cls, inst = _labels(j)
        inst = np.where(cls == 1, 0, inst)  # ScanNet: 0 = no instance; stuff may lack one
        inst[6:8, :] = np.where(cls[6:8] == 5, 0, inst[6:8])  # unannotated chair pixels -> void
        raw = np.vectorize(lambda c: NYU_TO_RAW.get(c, 0))(cls) if raw_ids else cls
        raw[0, 1:3] = 1163 if raw_ids else 40
        cls = cls.copy()
        cls[0, 1:3] = 40
        inst[0, 1:3] = 5  # an otherprop object (inside the wall row, whose pixels have no instance)
        # label images are colour-camera images at colour resolution
        big = lambda a: np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)  # noqa: E731
        Image.fromarray(big(raw).astype(np.uint16)).save(root / "label-filt" / f"{n}.png")
        Image.fromarray(big(inst).astype(np.uint8)).save(root / "instance-filt" / f"{n}.png")
        # what the importer must produce on the depth camera
        out["poses"][n], out["depth"][n], out["color"][n] = pose, depth, color
        out["labels"][n] = (cls[:, SHIFT], inst[:, SHIFT])
    tsv = root / "scannetv2-labels.combined.tsv"
    rows = ["id\traw_category\tcategory\tcount\tnyu40id\tnyu40class"]
    rows += [f"{r}\tx{r}\tx{r}\t1\t{v}\tn{v}" for r, v in RAW_TO_NYU.items()]
    tsv.write_text("\n".join(rows) + "\n")
    out["tsv"] = tsv
    return out
