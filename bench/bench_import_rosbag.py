"""Import speed of ``simgen import rosbag`` on a 1-minute 30 Hz RGB-D bag (frames/s).

Usage: python bench/bench_import_rosbag.py [--runs 3] [--seconds 60] [--width 640 --height 480]
       [--storage mcap] [--views 24] [--out DIR]

The bag is what a robot with a RealSense-like camera records: colour as JPEG ``CompressedImage``
(``image_raw/compressed``), depth as raw 16UC1 ``Image``, CameraInfo for both, ``/tf`` with
``odom -> base_link`` at 50 Hz and ``map -> odom`` at 10 Hz, ``/tf_static`` for the camera mount.
The robot drives a circle (radius 1.5 m, 0.4 m/s, about 15 degrees/s). Two bags are written:

* ``registered``: depth on ``aligned_depth_to_color`` (same frame and calibration as colour);
* ``unregistered``: depth from its own optical frame 3 cm away, with its own intrinsics, 3 ms
  after the colour image: every written frame is reprojected into the colour camera.

Images are ``--views`` renders of the ``room`` synthetic scene, cycled over the 1800 frames (the
content of an image does not change what importing it costs; the poses in TF are the circle).

Each import is timed three ways in this process (medians of ``--runs`` runs; the every-frame import
``--every-runs`` runs, default 1: it writes 1800 frames):

* ``default``: the default selection (5 cm / 5 degrees, blur rejection on);
* ``every frame``: ``--min-translation 0 --min-rotation 0 --blur-ratio 0`` (writes all 1800;
  by default only for the registered bag, see ``--every-frame``);
* the baseline ``read floor``: rosbags reading and deserialising every message of the bag and
  decoding every colour JPEG and depth image, measured in the same run: what any importer must
  spend to look at each frame once. Ratios to it survive a busy machine; absolute times do not.

frames/s counts the bag's colour images (1800 for a minute at 30 Hz) per second of wall time.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py
sys.path.insert(0, str(ROOT / "tests"))  # tests/helpers/rosbag_writer.py

from helpers.rosbag_writer import R_LINK_OPTICAL, T0_NS, BagWriter, rigid  # noqa: E402
from machine import machine  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402


def render_views(n: int, width: int, height: int) -> tuple[list[np.ndarray], list[np.ndarray], object]:
    """``n`` colour ``(H, W, 3)`` uint8 and depth ``(H, W)`` float32 renders of the room preset."""
    from simgen.render.raycast import MeshRaycaster
    from simgen.synth import make_scene, preset_config, render_frame

    cfg = preset_config("room", 0, noise=False, frames=n, width=width, height=height)
    geom, poses = make_scene(cfg)
    caster = MeshRaycaster(geom.mesh)
    K = cfg.intrinsics()
    out = [render_frame(geom, caster, K, p) for p in poses]
    return [f.rgb for f in out], [f.depth for f in out], K


def write_bag(path: Path, storage: str, seconds: float, views, K, registered: bool) -> int:
    """Write the bag; returns its number of colour images."""
    from PIL import Image

    from simgen.data.camera import Intrinsics

    rgbs, depths = views
    jpegs = []
    for rgb in rgbs:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    mms = [np.round(d * 1000).astype(np.uint16) for d in depths]
    K_depth = K if registered else Intrinsics(K.fx * 0.9, K.fy * 0.9, K.cx + 3, K.cy - 2, K.width, K.height)
    d_frame = "camera_color_optical_frame" if registered else "camera_depth_optical_frame"
    d_topic = "/camera/aligned_depth_to_color" if registered else "/camera/depth"
    d_image = d_topic + ("/image_raw" if registered else "/image_rect_raw")
    n_frames = int(round(seconds * 30))
    end = T0_NS + int(seconds * 1e9) + 200_000_000  # TF outlasts the last image (stamp ~seconds + 0.05 s)

    def odom_base(ns: int) -> np.ndarray:
        a = 0.4 / 1.5 * (ns - T0_NS) * 1e-9  # angle on the circle
        return rigid(
            Rotation.from_euler("z", a + np.pi / 2).as_matrix(), (1.5 * np.cos(a), 1.5 * np.sin(a), 0)
        )

    with BagWriter(path, storage) as bag:
        bag.tf(T0_NS, [("base_link", "camera_link", rigid(None, (0.12, 0, 0.3))),
                       ("camera_link", "camera_color_optical_frame", rigid(R_LINK_OPTICAL, (0, 0.015, 0))),
                       ("camera_link", "camera_depth_optical_frame", rigid(R_LINK_OPTICAL, (0, -0.015, 0)))],
               static=True)  # fmt: skip
        events = [(ns, "odom") for ns in range(T0_NS, end, 20_000_000)]
        events += [(ns, "map") for ns in range(T0_NS, end, 100_000_000)]
        events += [(T0_NS + 50_000_000 + k * 33_333_333, "frame") for k in range(n_frames)]
        k = 0
        for ns, what in sorted(events):
            if what == "odom":
                bag.tf(ns, [("odom", "base_link", odom_base(ns))])
            elif what == "map":
                bag.tf(ns, [("map", "odom", rigid())])
            else:
                v, k = k % len(jpegs), k + 1
                bag.compressed("/camera/color/image_raw/compressed", ns, "camera_color_optical_frame", jpegs[v],
                               "rgb8; jpeg compressed bgr8")  # fmt: skip
                bag.camera_info("/camera/color/camera_info", ns, "camera_color_optical_frame", K)
                ns_d = ns if registered else ns + 3_000_000
                bag.image(d_image, ns_d, d_frame, mms[v], "16UC1")
                bag.camera_info(d_topic + "/camera_info", ns_d, d_frame, K_depth)
    return n_frames


def read_floor(path: Path) -> float:
    """Seconds to read + deserialise every message and decode every image (the baseline)."""
    from simgen.data.importers.rosbag import COMPRESSED, decode_color, decode_depth, open_bag

    t0 = time.perf_counter()
    reader = open_bag(path)
    try:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype == COMPRESSED:
                decode_color(msg, conn.msgtype, conn.topic)
            elif conn.msgtype == "sensor_msgs/msg/Image":
                decode_depth(msg, conn.msgtype, conn.topic, 1000.0)
    finally:
        reader.close()
    return time.perf_counter() - t0


def time_import(path: Path, out: Path, every: bool) -> tuple[float, int]:
    from simgen.data.importers.rosbag import RosbagConfig, import_rosbag

    cfg = RosbagConfig(overwrite=True, quiet=True)
    if every:
        cfg = RosbagConfig(min_translation=0, min_rotation=0, blur_ratio=0, overwrite=True, quiet=True)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    report = import_rosbag(path, out, cfg)
    return time.perf_counter() - t0, report.frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of the read floor and the default import")
    ap.add_argument("--every-runs", type=int, default=1, help="runs of the every-frame import")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    ap.add_argument("--cases", nargs="+", default=["registered", "unregistered"])
    ap.add_argument(
        "--every-frame",
        nargs="*",
        default=["registered"],
        help="cases also timed writing every frame (unregistered: 1800 reprojections, slow on a busy CPU)",
    )
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()

    print(machine())
    scratch = args.out or Path(tempfile.mkdtemp(prefix="bench_rosbag_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        rgbs, depths, K = render_views(args.views, args.width, args.height)
        print(f"rendered {args.views} views {args.width}x{args.height} in {time.perf_counter() - t0:.1f} s")
        for case in args.cases:
            bag = scratch / f"bag_{case}"
            if bag.exists():
                shutil.rmtree(bag)
            t0 = time.perf_counter()
            n = write_bag(bag, args.storage, args.seconds, (rgbs, depths), K, case == "registered")
            size = sum(p.stat().st_size for p in bag.rglob("*") if p.is_file()) / 2**20
            print(
                f"{case}: wrote {n} frames ({size:.0f} MiB, {args.storage}) in {time.perf_counter() - t0:.1f} s"
            )
            floor, default, every = [], [], []
            for r in range(args.runs):
                floor.append(read_floor(bag))
                default.append(time_import(bag, scratch / "scene", every=False))
                if case in args.every_frame and r < args.every_runs:
                    every.append(time_import(bag, scratch / "scene", every=True))
                done = f"floor {floor[-1]:.1f} s, default {default[-1][0]:.1f} s"
                done += f", every frame {every[-1][0]:.1f} s" if len(every) > r else ""
                print(
                    f"  run {r + 1}: {done} (load {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
                    flush=True,
                )
            f = statistics.median(floor)
            for name, runs in (("default", default), ("every frame", every)):
                if not runs:
                    continue
                t = statistics.median(r[0] for r in runs)
                print(
                    f"  {name:>11}: median {t:6.1f} s [{', '.join(f'{r[0]:.1f}' for r in runs)}], "
                    f"{runs[0][1]} frames written, {n / t:5.1f} bag frames/s, {t / f:4.2f} x read floor"
                )
            print(
                f"  read floor : median {f:6.1f} s [{', '.join(f'{x:.1f}' for x in floor)}], {n / f:5.1f} frames/s"
            )
            shutil.rmtree(bag)
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
