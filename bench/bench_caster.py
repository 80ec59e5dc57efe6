"""In-process time of the render server's mesh backends: embree (``FastCaster``) vs the z-buffer
(``ZBufferCaster``), per frame, on a build's panoptic mesh.

Usage: python bench/bench_caster.py --scene BUILD_OR_EXPORT [--sizes 320x240 640x480] [--poses 7]
                                    [--rounds 3] [--json FILE]

Poses: the scene's default camera (what ``GET /scene`` serves) with its yaw swept over +-60 degrees about
the world z axis, as ``bench/bench_serve.py``'s ``poses()``; 90 degree horizontal field of view. Each
(size, output set) case renders every pose with both backends alternately, ``--rounds`` times, and reports
the median wall time and the median CPU time of the process (``time.process_time``: on a shared
machine the wall time also counts the time other processes hold the cores) in milliseconds, the ratio,
and how far the two agree (hit / miss, depth within 1 mm, equal panoptic ids, over all pixels).
One thread; the numba kernels are compiled (or loaded from the cache) before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine  # bench/ is on sys.path when run as a script

OUTPUT_SETS = {"depth+panoptic": ("depth", "panoptic"), "rgb+depth+panoptic": ("rgb", "depth", "panoptic")}


def yaw_poses(c2w_cv: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` camera-to-world ``(4, 4)`` (OpenCV axes): ``c2w_cv`` turned about the world z axis through its
    centre by -60..+60 degrees."""
    out = []
    for a in np.linspace(-np.pi / 3, np.pi / 3, n):
        Rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        T = c2w_cv.copy()
        T[:3, :3] = Rz @ c2w_cv[:3, :3]
        out.append(T)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", required=True, help="build or export folder (its panoptic_mesh.ply)")
    ap.add_argument("--sizes", nargs="+", default=["320x240", "640x480"], help="image sizes WxH")
    ap.add_argument("--poses", type=int, default=7, help="poses per round (>= 1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the poses (>= 1)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

    from simgen.data.camera import Intrinsics
    from simgen.render.caster import FastCaster
    from simgen.render.zbuffer import ZBufferCaster
    from simgen.serve.scene import load_render_scene

    scene = load_render_scene(args.scene, rgb="mesh", warm=False, backend="raycast")
    casters = {"embree": FastCaster(scene.mesh), "zbuffer": ZBufferCaster(scene.mesh)}
    c2w0 = scene.default_camera()["c2w_cv"]
    pose_list = yaw_poses(np.asarray(c2w0, np.float64), max(1, args.poses))
    print(machine(), file=sys.stderr)
    print(
        f"{args.scene}: {len(scene.mesh.faces)} faces, {len(scene.mesh.vertices)} vertices", file=sys.stderr
    )
    results = []
    for size in args.sizes:
        W, H = (int(s) for s in size.lower().split("x"))
        K = Intrinsics(W / 2, W / 2, W / 2, H / 2, W, H)  # 90 degree horizontal field of view
        for name, outputs in OUTPUT_SETS.items():
            for c in casters.values():  # compile / load the kernels, fill the per-camera caches
                c.render(K, pose_list[0], outputs)
            wall: dict[str, list[float]] = {k: [] for k in casters}
            cpu: dict[str, list[float]] = {k: [] for k in casters}
            agree = np.zeros(3)
            for _ in range(max(1, args.rounds)):
                for T in pose_list:
                    imgs = {}
                    for k, c in casters.items():
                        w0, c0 = time.perf_counter(), time.process_time()
                        imgs[k] = c.render(K, T, outputs)
                        cpu[k].append(1000 * (time.process_time() - c0))
                        wall[k].append(1000 * (time.perf_counter() - w0))
                    a, b = imgs["embree"], imgs["zbuffer"]
                    agree += [
                        ((a["depth"] > 0) == (b["depth"] > 0)).mean(),
                        (np.abs(a["depth"] - b["depth"]) < 1e-3).mean(),
                        (a["panoptic"] == b["panoptic"]).mean(),
                    ]
            agree /= len(wall["embree"])
            row = {
                "size": size,
                "outputs": name,
                "frames": len(wall["embree"]),
                **{f"{k}_wall_ms": round(float(np.median(v)), 2) for k, v in wall.items()},
                **{f"{k}_cpu_ms": round(float(np.median(v)), 2) for k, v in cpu.items()},
                "speedup_cpu": round(float(np.median(cpu["embree"]) / np.median(cpu["zbuffer"])), 2),
                "agree_hit": round(float(agree[0]), 5),
                "agree_depth_1mm": round(float(agree[1]), 5),
                "agree_panoptic": round(float(agree[2]), 5),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
