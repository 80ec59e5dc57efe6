"""``simgen drive`` with one camera vs a 2-camera ``--rig``: frames per second, on a synthetic preset.

Usage: python bench/bench_drive_rig.py [--preset tiny] [--runs 3] [--sim-time 10] [--json FILE]

Exports the preset's exact GT mesh (tests/helpers/sim.py, small textures) into a temporary folder, then,
alternating so both see the same machine load, drives the default route in process (mesh renders,
320 x 240, 10 Hz, no GIF, no bag):

* ``one``: the default camera (``/render`` body, one render per frame);
* ``rig``: ``--rig`` with two 320 x 240 cameras, the front one and one looking left (one ``/render/rig``
  request per frame through :func:`simgen.serve.api.render_rig`).

Each mode runs twice per round: ``--sim-time`` seconds and 0.05 s (one frame); the difference is the cost
of the extra frames without start-up (scene load, MuJoCo model, route planning). Reported per mode, medians
of ``--runs`` rounds: frames/s of the drive loop (wall and CPU: ``time.process_time`` of this process) and
the whole drive's wall time. The machine line (CPU, cores, load average) is printed, because on a shared
machine other processes take CPU too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RIG = """cameras:
  - name: front
  - name: left
    camera_offset: [0.0, 0.2, 0.235, 0, 0, 1.5707963]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "room", "two-rooms"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sim-time", type=float, default=10.0, help="simulated seconds of the long drives")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from helpers.sim import synthetic_export

    from simgen.sim.drive import DriveConfig, drive

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench_drive_rig_") as tmp:
        root = Path(tmp)
        export = synthetic_export(root, args.preset)
        rig = root / "rig.yaml"
        rig.write_text(RIG)
        rows: dict[str, list[dict]] = {"one": [], "rig": []}
        for _ in range(args.runs):
            for mode in ("one", "rig"):
                timing = {}
                for label, sim_time in (("short", 0.05), ("long", args.sim_time)):
                    cfg = DriveConfig(
                        max_time=sim_time, gif=False, quiet=True, rig=str(rig) if mode == "rig" else None
                    )
                    w, c = time.perf_counter(), time.process_time()
                    summary = drive(export, cfg, root / f"d_{mode}")
                    timing[label] = (time.perf_counter() - w, time.process_time() - c, len(summary["frames"]))
                (ws, cs, ns), (wl, cl, nl) = timing["short"], timing["long"]
                rows[mode].append(
                    {
                        "frames": nl,
                        "drive_wall_s": wl,
                        "loop_fps_wall": (nl - ns) / (wl - ws),
                        "loop_fps_cpu": (nl - ns) / (cl - cs),
                    }
                )
                print(mode, {k: round(v, 2) for k, v in rows[mode][-1].items()}, flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in rows.items()}
    print(machine())
    for m, r in med.items():
        print(
            f"{m}: {r['frames']:.0f} frames, drive {r['drive_wall_s']:.1f} s wall; loop {r['loop_fps_wall']:.1f} "
            f"frames/s wall, {r['loop_fps_cpu']:.1f} frames per CPU second"
        )
    print(
        f"rig / one, loop frames/s: wall {med['rig']['loop_fps_wall'] / med['one']['loop_fps_wall']:.2f}, "
        f"CPU {med['rig']['loop_fps_cpu'] / med['one']['loop_fps_cpu']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
