"""The fusion build: keyframes in order, fragment by fragment, into a panoptic TSDF; then mesh and write.

Per keyframe: render the global instances into the frame (voxel lookup of the back-projected depth),
associate the frame's thing segments (:mod:`association`), then integrate depth, colour, the segments'
classes (score-weighted) and the associated global ids into the volume (:mod:`tsdf`). After each fragment
the instance table is cleaned (instances that lost every voxel) and duplicates are merged. At the end,
instances observed in fewer than ``min_frames`` keyframes are dropped and the mesh is extracted.
The next keyframe follows from the poses alone, so its images are decoded in a background thread
(:mod:`reader`) while the current one is fused.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from simgen import folders as output
from simgen.config import to_dict
from simgen.data import io
from simgen.data.scene import Scene
from simgen.recon.fusion.align import align_to_model
from simgen.recon.fusion.association import (
    InstanceTable,
    associate,
    frame_segments,
    instance_voxel_boxes,
    merge_instances,
    merged_segments,
)
from simgen.recon.fusion.config import FusionConfig
from simgen.recon.fusion.depthfilter import noise_weight
from simgen.recon.fusion.keyframes import KeyframeSelector
from simgen.recon.fusion.mesh import panoptic_mesh
from simgen.recon.fusion.reader import FrameData, FrameReader
from simgen.recon.fusion.tsdf import VoxelBlockVolume, directions


class SkippedFrameWarning(UserWarning):
    """A frame was left out of the build (no valid depth)."""


class FusionState:
    """Everything the online build carries from keyframe to keyframe."""

    def __init__(self, scene: Scene, cfg: FusionConfig):
        self.cfg = cfg
        self.class_ids = np.array(sorted(scene.categories), dtype=np.int64)  # semantic column -> category id
        self.column_of = {int(c): i for i, c in enumerate(self.class_ids)}
        self.thing_columns = np.array([scene.categories[int(c)].isthing for c in self.class_ids], dtype=bool)
        self.vol = VoxelBlockVolume(cfg.voxel_size, cfg.trunc, len(self.class_ids), cfg.max_weight)
        self.table = InstanceTable(len(self.class_ids))
        self.timings: dict[str, float] = defaultdict(float)

    def min_weight(self) -> float:
        """TSDF weight of one observation at the far end of the range: a voxel with less was never seen.
        1 without noise weighting (every observation weighs 1)."""
        cfg = self.cfg
        if not cfg.noise_weighting:
            return 1.0
        far = noise_weight(np.array([cfg.max_depth], np.float32), cfg.sensor_sigma_m, cfg.sensor_sigma_quad)
        return 0.999 * float(far[0])

    def _tick(self, key: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[key] += t1 - t0
        return t1

    def add_keyframe(self, scene: Scene, i: int, frame: FrameData, c2w_cv: np.ndarray | None = None) -> None:
        """Associate and integrate scene frame ``i`` (its depth already range-filtered) at its stored
        pose, or at ``c2w_cv`` (OpenCV axes) when given (a pose refined by frame-to-model alignment)."""
        cfg, f = self.cfg, scene.frames[i]
        t = time.perf_counter()
        depth, rgb, pan = frame.depth, frame.rgb, frame.panoptic
        c2w, K = (f.c2w_cv if c2w_cv is None else c2w_cv), f.intrinsics
        seg = frame_segments(pan, f.segments, self.column_of, self.thing_columns, cfg.min_segment_score)

        s = cfg.lookup_stride
        d_s = depth[::s, ::s]
        valid = d_s > 0
        R, tr = c2w[:3, :3].astype(np.float32), c2w[:3, 3].astype(np.float32)
        pts = (directions(K)[::s, ::s][valid] * d_s[valid][:, None]) @ R.T + tr
        rendered = self.vol.lookup_instance(pts)
        seg_of_point = seg.index[::s, ::s][valid]
        assigned = associate(self.table, seg, seg_of_point, pts, rendered, i, cfg)
        merged = (
            merged_segments(self.table, seg, seg_of_point, rendered, assigned, i, cfg)
            if cfg.split_merged
            else {}
        )
        t = self._tick("associate", t)

        # Per-pixel label maps through lookup tables indexed by segment index (-1 -> the appended last entry).
        lut_col = np.append(seg.column, -1)
        lut_w = np.append(seg.score, 0.0).astype(np.float32)
        lut_inst = np.append(assigned, -1).astype(np.int32)
        label_instance = lut_inst[seg.index]
        for m, others in merged.items():
            # Every pixel of the merged mask votes for the instance its voxel already holds if that is
            # one of the covered instances (full resolution: look each pixel's point up in the volume).
            pix = np.flatnonzero((seg.index == m).reshape(-1) & (depth.reshape(-1) > 0))
            p_world = (directions(K).reshape(-1, 3)[pix] * depth.reshape(-1)[pix, None]) @ R.T + tr
            there = self.vol.lookup_instance(p_world)
            hit = np.isin(there, others)
            label_instance.reshape(-1)[pix[hit]] = there[hit]
        pixel_weight = (
            noise_weight(depth, cfg.sensor_sigma_m, cfg.sensor_sigma_quad) if cfg.noise_weighting else None
        )
        self.vol.integrate(
            depth,
            K,
            c2w,
            rgb=rgb,
            label_class=lut_col[seg.index],
            label_weight=lut_w[seg.index],
            label_instance=label_instance,
            label_band=cfg.label_band_voxels * cfg.voxel_size,
            depth_weight=pixel_weight,
        )
        self._tick("integrate", t)

    def end_fragment(self, first_frame: int) -> None:
        """Forget instances that lost every voxel; merge duplicates (relabelling their voxels)."""
        t = time.perf_counter()
        vol, table = self.vol, self.table
        n = vol.n_voxels
        rows = np.flatnonzero((vol.instance[:n] > 0) & (vol.instance_conf[:n] > 0))
        ids, _, bmin, bmax = instance_voxel_boxes(vol.instance[rows], vol.voxel_centres(rows))
        alive = set(ids.tolist())
        for iid in [k for k, inst in table.instances.items() if k not in alive]:
            if max(table.instances[iid].frames, default=-1) < first_frame:
                del table.instances[iid]
                table.counters["vanished"] += 1
        known = np.isin(ids, list(table.instances))
        remap = merge_instances(table, ids[known], bmin[known], bmax[known], self.cfg)
        if remap:
            lut = np.arange(table.next_id, dtype=np.int32)
            for old, new in remap.items():
                lut[old] = new
            vol.instance[:n] = lut[vol.instance[:n]]
        self._tick("maintain", t)

    def _vertices(self, area: float) -> int:
        # Marching cubes leaves about 1.5 vertices per voxel_size² of surface (0.6 voxel² per vertex on a
        # two-rooms build, walls and furniture).
        return int(np.ceil(1.5 * area / self.cfg.voxel_size**2))

    def finish(self) -> tuple[output.PanopticMesh, dict[int, set[int]]]:
        """Drop weakly supported instances and extract the labelled mesh."""
        t = time.perf_counter()
        table = self.table
        lut = np.arange(table.next_id, dtype=np.int32)
        for iid in [k for k, inst in table.instances.items() if len(inst.frames) < self.cfg.min_frames]:
            lut[iid] = 0
            del table.instances[iid]
            table.counters["dropped"] += 1
        for iid in range(1, table.next_id):  # ids forgotten earlier (vanished / merged) vote for nothing
            if iid not in table.instances:
                lut[iid] = 0
        instance_class = {k: inst.column for k, inst in table.instances.items()}
        mesh = panoptic_mesh(
            self.vol,
            self.class_ids,
            self.thing_columns,
            instance_class,
            lut,
            min_weight=self.min_weight(),
            min_instance_vertices=self._vertices(self.cfg.min_instance_area),
            orphan_instance_vertices=self._vertices(self.cfg.orphan_instance_area),
            min_votes=float(self.cfg.min_frames),
        )
        self._tick("mesh", t)
        return mesh, {k: inst.frames for k, inst in table.instances.items()}


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20  # kB on Linux, bytes on macOS


def run_fusion(
    scene: Scene, out_dir: str | Path | None, cfg: FusionConfig, progress: bool = True
) -> dict[str, Any]:
    """Build a panoptic mesh of ``scene`` by online TSDF fusion and write the build folder.

    Args:
        scene: a loaded (validated) scene.
        out_dir: build folder (see docs/build-output.md); None builds without writing (tests, benchmarks).
        cfg: fusion settings.
        progress: show a progress bar.

    Returns:
        The build record written to ``build.json`` plus ``"mesh"`` (the :class:`PanopticMesh`) and
        ``"instances"`` (the instance records).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    state = FusionState(scene, cfg)
    selector = KeyframeSelector(cfg.keyframe_translation, cfg.keyframe_rotation_deg)
    frames = scene.split_indices(cfg.split)
    if not frames:
        raise ValueError(f"{scene.root}: no {cfg.split!r} frames to fuse")
    counters = {"frames": len(frames), "keyframes": 0, "skipped_no_depth": 0, "fragments": 0}
    skipped: list[int] = []
    fragment: list[int] = []

    poses = [scene.frames[i].c2w_cv for i in frames]
    correction = np.eye(4)  # refined @ inv(stored) of the last aligned keyframe (align_to_model)
    fused_poses: dict[int, np.ndarray] = {}  # keyframe -> the c2w_cv it was fused at (align_to_model)
    with (
        tqdm(total=len(frames), desc="fusion", unit="frame", disable=not progress, dynamic_ncols=True) as bar,
        FrameReader(scene, cfg, background=cfg.prefetch) as reader,
    ):
        pos = selector.next_candidate(poses, 0)
        while pos is not None:
            i = frames[pos]
            t = time.perf_counter()
            frame = reader.get(i)
            state._tick("read", t)
            usable = np.count_nonzero(frame.depth) >= cfg.min_valid_depth_fraction * frame.depth.size
            if not usable:
                counters["skipped_no_depth"] += 1
                skipped.append(i)
                msg = f"frame {i} ({scene.frames[i].name}): no valid depth in [{cfg.min_depth}, {cfg.max_depth}] m"
                warnings.warn(f"{msg}; skipped", SkippedFrameWarning, stacklevel=2)
            else:
                selector.accept(poses[pos])
            # The next keyframe depends only on the poses and the reference: read it while this one fuses.
            nxt = selector.next_candidate(poses, pos + 1)
            reader.prefetch(None if nxt is None else frames[nxt])
            if usable:
                pose = None
                if cfg.align_to_model and counters["keyframes"] > 0:
                    # Drift changes slowly: start from the last correction, refine against the model.
                    t = time.perf_counter()
                    res = align_to_model(
                        state.vol,
                        frame.depth,
                        scene.frames[i].intrinsics,
                        correction @ poses[pos],
                        noise_model=(cfg.sensor_sigma_m, cfg.sensor_sigma_quad)
                        if cfg.noise_weighting
                        else None,
                        min_weight=state.min_weight(),
                        degeneracy_ratio=cfg.align_degeneracy,
                    )
                    pose = res.c2w
                    correction = pose @ np.linalg.inv(poses[pos])
                    counters["aligned"] = counters.get("aligned", 0) + int(res.accepted)
                    state._tick("align", t)
                state.add_keyframe(scene, i, frame, pose)
                if cfg.align_to_model:
                    fused_poses[i] = poses[pos] if pose is None else pose
                counters["keyframes"] += 1
                fragment.append(i)
                if len(fragment) == cfg.fragment_size:
                    state.end_fragment(fragment[0])
                    counters["fragments"] += 1
                    fragment = []
            bar.update((len(frames) if nxt is None else nxt) - pos)
            bar.set_postfix(
                keyframes=counters["keyframes"], instances=len(state.table.instances), refresh=False
            )
            pos = nxt
    if fragment:
        state.end_fragment(fragment[0])
        counters["fragments"] += 1
    if counters["keyframes"] == 0:
        raise ValueError(f"{scene.root}: no frame with valid depth; nothing to fuse")
    t_loop = time.perf_counter() - t_start
    # CPU time beside wall time: on a shared machine the wall time also counts waiting for other processes.
    cpu_loop = time.process_time() - cpu_start

    mesh, frames_observed = state.finish()
    records = output.instance_records(mesh, scene.categories, frames_observed)
    counters.update({f"instances_{k}": v for k, v in state.table.counters.items()})
    counters.update(
        instances=len(records),
        blocks=state.vol.n_blocks,
        voxels=state.vol.n_voxels,
        vertices=len(mesh.vertices),
        faces=len(mesh.faces),
    )
    timings = {k: round(v, 4) for k, v in state.timings.items()}
    timings["fusion_loop"] = round(t_loop, 4)
    timings["frames_per_second"] = round(counters["frames"] / t_loop, 2)
    timings["keyframes_per_second"] = round(counters["keyframes"] / t_loop, 2)
    timings["fusion_loop_cpu"] = round(cpu_loop, 4)
    timings["cpu_frames_per_second"] = round(counters["frames"] / max(cpu_loop, 1e-9), 2)
    record: dict[str, Any] = {
        **output.new_build_record("fusion", scene.root),
        "config": to_dict(cfg),
        "counters": counters,
        "skipped_frames": skipped,
        "timings_s": timings,
        "volume_mb": round(state.vol.nbytes() / 2**20, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "files": {"mesh": output.MESH_FILE, "instances": output.INSTANCES_FILE},
    }
    if fused_poses:
        # The build's own trajectory: `simgen eval` aligns the true poses onto it, not onto the stored
        # ones the alignment corrected.
        record["poses"] = output.fused_poses_record(fused_poses)
    if out_dir is not None:
        t = time.perf_counter()
        write_build(Path(out_dir), mesh, records, scene, record)
        record["timings_s"]["write"] = round(time.perf_counter() - t, 4)
    return {**record, "mesh": mesh, "instances": records}


def write_build(out_dir: Path, mesh: output.PanopticMesh, records, scene: Scene, record: dict) -> None:
    """Write the build folder. ``build.json`` is removed first and written last, so a folder holding it is
    complete; each file is written atomically (temporary name, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / output.BUILD_FILE).unlink(missing_ok=True)
    output.write_panoptic_mesh(out_dir / output.MESH_FILE, mesh)
    output.write_instances(out_dir / output.INSTANCES_FILE, records, scene.categories)
    io.write_json(out_dir / output.BUILD_FILE, record)
