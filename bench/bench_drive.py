"""Cost of ``simgen drive``'s default route planning and of ``--bag`` (ROS 2 MCAP bag), on a synthetic room.

Usage: python bench/bench_drive.py [--preset room] [--runs 3] [--size 320x240] [--json FILE]

Builds a synthetic scene's exact GT mesh into a build folder and exports it (small textures) in a
temporary folder, then, alternating so both see the same machine load:

* ``plan``: :func:`simgen.sim.drive.default_route` alone (occupancy, tour, waypoints) -- seconds;
* ``drive``: the default-route drive without a bag (baseline) and with ``--bag run.mcap``, same route,
  same frames -- wall seconds, the ratio with / without, the bag's size and its megabytes per frame.

Medians of ``--runs`` runs. The machine line (CPU, usable cores, load average) is printed because on a
shared machine other processes take CPU too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="room", choices=("tiny", "room", "two-rooms"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="320x240", help="camera image size WxH")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import mujoco
    from helpers.sim import synthetic_export

    from simgen.serve.scene import load_render_scene
    from simgen.sim.drive import ROBOT, DriveConfig, default_route, drive, scene_with_robot
    from simgen.sim.world import free_spawn_pose

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        export = synthetic_export(tmp / "scene", args.preset)
        print(f"export of the {args.preset} GT build: {time.perf_counter() - t0:.1f} s")
        scene = load_render_scene(export, rgb="mesh")
        spawn = free_spawn_pose(scene.mesh, raycaster=scene.raycaster)
        model = mujoco.MjModel.from_xml_path(str(scene_with_robot(export, spawn)))
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        plan, plain, bagged, sizes = [], [], [], []
        for k in range(args.runs):
            t0 = time.perf_counter()
            waypoints, goals = default_route(scene.mesh, model, data, {model.body(ROBOT).id}, spawn[:2])
            plan.append(time.perf_counter() - t0)
            cfg = DriveConfig(width=width, height=height, quiet=True, gif=False)
            t0 = time.perf_counter()
            a = drive(export, cfg, tmp / f"plain{k}")
            plain.append(time.perf_counter() - t0)
            bag = tmp / f"run{k}.mcap"
            t0 = time.perf_counter()
            b = drive(
                export,
                DriveConfig(width=width, height=height, quiet=True, gif=False, bag=str(bag)),
                tmp / f"b{k}",
            )
            bagged.append(time.perf_counter() - t0)
            assert len(a["frames"]) == len(b["frames"]) and a["status"] == b["status"] == "reached"
            sizes.append(bag.stat().st_size)
        frames = len(b["frames"])
        res = {
            "preset": args.preset,
            "size": args.size,
            "runs": args.runs,
            "waypoints": len(waypoints),
            "stops": len(goals),
            "frames": frames,
            "sim_seconds": b["final"]["time"],
            "plan_s": float(np.median(plan)),
            "drive_s": float(np.median(plain)),
            "drive_bag_s": float(np.median(bagged)),
            "bag_ratio": float(np.median(np.array(bagged) / np.array(plain))),
            "bag_mb": float(np.median(sizes)) / 1e6,
            "bag_mb_per_frame": float(np.median(sizes)) / 1e6 / frames,
        }
    print(
        f"{res['preset']} {res['size']}: route {res['waypoints']} waypoints / {res['stops']} stops, "
        f"{res['frames']} frames over {res['sim_seconds']:.1f} s simulated\n"
        f"plan (median) {res['plan_s']:.2f} s | drive {res['drive_s']:.1f} s | drive --bag "
        f"{res['drive_bag_s']:.1f} s (x{res['bag_ratio']:.2f}) | bag {res['bag_mb']:.0f} MB "
        f"({res['bag_mb_per_frame']:.2f} MB/frame)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
