"""Writing a scene in the scene format (used by ``simgen synth`` and the importers).

Frames are written as they come (one image at a time, nothing held in memory); ``transforms.json``
and ``gt/gt.json`` are written last, atomically, so a folder without ``transforms.json`` is an
interrupted write and never mistaken for a scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgen.data import io
from simgen.data.camera import Intrinsics
from simgen.data.scene import GT_DIR, GT_JSON, TRANSFORMS, Category, Segment


@dataclass
class SceneWriter:
    """Accumulates frames of a scene under ``root``.

    Layout written: ``rgb/NNNNN.png``, ``depth/NNNNN.png``, ``panoptic/NNNNN.png``,
    ``transforms.json``; with ground truth also ``gt/panoptic/NNNNN.png``, ``gt/gt.json`` and
    whatever mesh files :meth:`write_gt_mesh` gets.
    """

    root: Path
    intrinsics: Intrinsics
    categories: list[Category]
    depth_unit_scale: float = 0.001
    rgb_ext: str = ".png"
    extra_meta: dict[str, Any] = field(default_factory=dict)
    _frames: list[dict] = field(default_factory=list, init=False)
    _gt_frames: list[dict] = field(default_factory=list, init=False)
    _gt: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add_frame(
        self,
        rgb: np.ndarray,
        depth_m: np.ndarray,
        panoptic: np.ndarray | None,
        segments: list[Segment],
        c2w_gl: np.ndarray,
        gt_panoptic: np.ndarray | None = None,
        name: str | None = None,
        gt_c2w_gl: np.ndarray | None = None,
    ) -> str:
        """Write one frame; ``c2w_gl`` is camera-to-world with OpenGL camera axes. Returns its file_path.

        ``gt_c2w_gl`` (4, 4), OpenGL axes: the frame's true pose when ``c2w_gl`` carries pose noise; it
        lands in ``gt/gt.json`` (``frames[i].transform_matrix``, with ``gt_panoptic`` only), where
        ``simgen eval`` aligns the build to it.

        ``panoptic`` None writes an unlabelled frame (no ``panoptic_file_path`` / ``segments_info``),
        as the importers of sources without labels do (``simgen label`` adds them later).
        """
        i = len(self._frames)
        stem = name or f"{i:05d}"
        rel = {
            "file_path": f"rgb/{stem}{self.rgb_ext}",
            "depth_file_path": f"depth/{stem}.png",
            "panoptic_file_path": f"panoptic/{stem}.png",
        }
        io.write_image(self.root / rel["file_path"], rgb)
        io.write_depth(self.root / rel["depth_file_path"], depth_m, self.depth_unit_scale)
        entry: dict[str, Any] = {**rel}
        if panoptic is None:
            del entry["panoptic_file_path"]
        else:
            io.write_panoptic(self.root / rel["panoptic_file_path"], panoptic)
            entry["segments_info"] = [
                {"id": int(s.id), "category_id": int(s.category_id), "score": round(float(s.score), 4)}
                for s in segments
            ]
        entry["transform_matrix"] = np.asarray(c2w_gl, dtype=float).round(8).tolist()
        self._frames.append(entry)
        if gt_panoptic is not None:
            gt_rel = f"panoptic/{stem}.png"
            io.write_panoptic(self.root / GT_DIR / gt_rel, gt_panoptic)
            gt_entry: dict[str, Any] = {"panoptic_file_path": gt_rel}
            if gt_c2w_gl is not None:
                gt_entry["transform_matrix"] = np.asarray(gt_c2w_gl, dtype=float).round(8).tolist()
            self._gt_frames.append(gt_entry)
        return rel["file_path"]

    def write_gt_mesh(self, mesh, vertex_labels: np.ndarray, mesh_name: str = "mesh.ply") -> None:
        """GT mesh (a trimesh, vertex order kept) and its int32 per-vertex segment ids."""
        gt = self.root / GT_DIR
        with io.atomic_path(gt / mesh_name) as tmp:
            mesh.export(tmp, file_type="ply")
        labels_name = Path(mesh_name).stem + "_panoptic.npy"
        with io.atomic_path(gt / labels_name, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(vertex_labels, dtype=np.int32))
        self._gt.update(mesh_path=mesh_name, mesh_labels_path=labels_name)

    def finish(
        self,
        gt_segments: dict[int, int] | None = None,
        train: list[str] | None = None,
        test: list[str] | None = None,
    ) -> Path:
        """Write transforms.json (and gt/gt.json when GT frames or segments were given)."""
        K = self.intrinsics
        meta: dict[str, Any] = {
            "fl_x": K.fx,
            "fl_y": K.fy,
            "cx": K.cx,
            "cy": K.cy,
            "w": K.width,
            "h": K.height,
            "depth_unit_scale_factor": self.depth_unit_scale,
            "categories": [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in self.categories],
            **self.extra_meta,
        }
        if train is not None:
            meta["train_filenames"] = train
        if test is not None:
            meta["test_filenames"] = test
        meta["frames"] = self._frames
        if gt_segments is not None or self._gt_frames:
            gt = {
                "segments": [
                    {"id": int(k), "category_id": int(v)} for k, v in sorted((gt_segments or {}).items())
                ],
                "frames": self._gt_frames,
                **self._gt,
            }
            io.write_json(self.root / GT_DIR / GT_JSON, gt)
        io.write_json(self.root / TRANSFORMS, meta)
        return self.root
