"""``simgen serve`` (the render server) and ``simgen render`` (one image, in-process)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from simgen.render.caster import OUTPUTS
from simgen.serve.config import RGB_MODES

SERVE_EXAMPLES = """examples:
  simgen serve out/export                        # http://127.0.0.1:8000/ (viewer page), one process
  simgen serve out/build --port 8080 --workers 2  # two processes sharing the port
  curl -o d.png 'http://127.0.0.1:8000/render/depth.png?x=0&y=0&z=1.2&qx=0&qy=0&qz=0&qw=1'
  python -c "from simgen.serve.client import RenderClient; print(RenderClient('http://127.0.0.1:8000').scene())"

Poses are in the served world frame (the export's Gazebo world when OUT holds alignment.json), as
x y z qx qy qz qw (scalar-last quaternion) with the gazebo camera-link convention by default.
See docs/serve.md.
"""

RENDER_EXAMPLES = """examples:
  simgen render out/export --pose 0 0 1.2 0 0 0 1 -o rgb.png
  simgen render out/export --pose 0 0 1.2 0 0 0 1 --output depth -o depth.png      # 16-bit mm
  simgen render out/export --pose 0 0 1.2 0 0 0 1 --output panoptic -o pan.png     # + pan.segments.json
  simgen render out/build --pose 1 2 1.5 0 0 0.7071068 0.7071068 --size 640 480 --fov 90 -o view.png
  simgen render out/build --pose ... --output rgb depth panoptic -o views.npz       # server's npz
"""

WORLD_EXAMPLES = """examples:
  simgen world out/export --robot jackal                      # out/export/worlds/<scene>_jackal.sdf
  simgen world out/export --robot jackal --ros2               # + _bridge.yaml and .launch.py (docs/ros2.md)
  simgen world out/export --spawn 1.0 -0.5 1.57 --server http://10.0.0.5:8000 --rate-hz 15

then (Gazebo Harmonic; see docs/serve.md):
  simgen serve out/export &
  GZ_SIM_RESOURCE_PATH=out/export/models GZ_SIM_SYSTEM_PLUGIN_PATH=$PWD/sensor_plugin \\
    gz sim out/export/worlds/<scene>_jackal.sdf
"""

DRIVE_EXAMPLES = """examples:
  simgen drive out/export                                            # planned loop past every object
  simgen drive out/export --waypoints 1 0  1 1.5  -0.5 1.5          # in-process renders, out/export/drive/
  simgen serve out/export & simgen drive out/export --server http://127.0.0.1:8000 --waypoints 2 0
  simgen drive out/export --spawn 0 0 0 --waypoints 3 0 -o /tmp/crash   # into an obstacle: stops, says which
  simgen drive out/export --bag run.mcap                             # + a ROS 2 bag (MCAP) of the drive
  simgen drive out/export --rig rig.yaml --bag run.mcap              # several cameras, one /render/rig a frame
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.cli.common import add_command
    from simgen.config import add_dataclass_args
    from simgen.data.poses import CONVENTIONS
    from simgen.serve.config import ServeConfig

    p = add_command(
        sub,
        "serve",
        help="serve RGB / depth / panoptic renders of a build or export over HTTP",
        description="Serve a build or export folder: POST /render, POST /render/batch, GET /render/*.png, "
        "GET /scene, GET /healthz, GET /openapi.json and a viewer page at /. Depth and panoptic are "
        "rendered from the panoptic mesh (--backend); RGB comes from the build's Gaussians (gaussians.ply) when present, "
        "else from the mesh's vertex colours (--rgb).",
        examples=SERVE_EXAMPLES,
    )
    p.add_argument("out_dir", metavar="OUT", help="build folder or export folder (holding panoptic_mesh.ply)")
    add_dataclass_args(p, ServeConfig)
    p.set_defaults(func=cmd_serve)

    p = add_command(
        sub,
        "render",
        help="render one image of a build or export (no server)",
        description="Render one camera in-process, as the server would, and write it atomically. PNG output: "
        "rgb as RGB, depth as 16-bit millimetres, panoptic in the COCO id encoding with the segments in "
        "<name>.segments.json; .npz output: every requested output in the server's npz layout.",
        examples=RENDER_EXAMPLES,
    )
    p.add_argument("out_dir", metavar="OUT", help="build folder or export folder (holding panoptic_mesh.ply)")
    pose = p.add_mutually_exclusive_group(required=True)
    pose.add_argument(
        "--pose",
        type=float,
        nargs=7,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="position (m) and scalar-last unit quaternion of the camera in the served world frame",
    )
    pose.add_argument("--matrix", type=float, nargs=16, metavar="M", help="row-major 4x4 camera-to-world")
    p.add_argument("--convention", choices=CONVENTIONS, default="gazebo", help="camera axes of the pose")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=(320, 240), help="image size")
    p.add_argument("--fov", type=float, default=None, help="horizontal field of view in degrees (default 60)")
    for k in ("fx", "fy", "cx", "cy"):
        p.add_argument(
            f"--{k}", type=float, default=None, help=f"intrinsics {k} in pixels (instead of --fov)"
        )
    p.add_argument(
        "--output",
        nargs="+",
        choices=OUTPUTS,
        default=["rgb"],
        help="what to render (several only with an .npz file)",
    )
    p.add_argument(
        "--rgb",
        choices=RGB_MODES,
        default="auto",
        help="RGB source, as for simgen serve (auto: gaussians.ply when present, else mesh colours)",
    )
    p.add_argument("-o", "--out", required=True, help="output file: .png (one output) or .npz")
    p.set_defaults(func=cmd_render)

    from simgen.sim.world import WorldConfig

    p = add_command(
        sub,
        "world",
        help="add a Jackal-sized robot with the simgen camera to an exported Gazebo world",
        description="Write OUT/models/simgen_<name> (four-wheel diff-drive robot, 0.51 x 0.43 x 0.25 m, camera "
        "link with the simgen camera plugin) and OUT/worlds/<scene>_<name>.sdf: the export's world plus the "
        "robot at the floor point farthest from every obstacle (or --spawn).",
        examples=WORLD_EXAMPLES,
    )
    p.add_argument("out_dir", metavar="OUT", help="export folder (simgen export's output)")
    add_dataclass_args(p, WorldConfig)
    p.set_defaults(func=cmd_world)

    from simgen.sim.drive import DriveConfig

    p = add_command(
        sub,
        "drive",
        help="drive a Jackal-sized robot through an export in MuJoCo, rendering its camera",
        description="MuJoCo stands in for Gazebo: the export's MJCF plus a Jackal-sized robot driven along "
        "--waypoints; at --rate-hz of simulation time the camera pose is rendered (by --server, or in this "
        "process) and RGB, depth and panoptic frames, trajectory.json and drive.gif are written. Driving into "
        "an obstacle stops the run and names the collider.",
        examples=DRIVE_EXAMPLES,
    )
    p.add_argument("out_dir", metavar="OUT", help="export folder (simgen export's output)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: OUT/drive)")
    add_dataclass_args(p, DriveConfig)
    p.set_defaults(func=cmd_drive)


def cmd_serve(args: argparse.Namespace) -> int:
    from simgen.config import dataclass_from_args
    from simgen.serve.config import ServeConfig
    from simgen.serve.scene import SceneLoadError
    from simgen.serve.server import serve

    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(levelname)s %(message)s")
    cfg = dataclass_from_args(ServeConfig, args)
    for name in (
        "max_concurrent",
        "max_width",
        "max_height",
        "max_batch",
        "max_batch_pixels",
        "max_body_bytes",
    ):
        if getattr(cfg, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if cfg.queue_depth < 0 or cfg.workers < 0 or not 0 <= cfg.port < 65536:
        print("error: --queue-depth and --workers must be >= 0, --port in [0, 65535]", file=sys.stderr)
        return 2
    try:
        return serve(args.out_dir, cfg)
    except (SceneLoadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_render(args: argparse.Namespace) -> int:
    import numpy as np

    from simgen.data import io
    from simgen.serve import api
    from simgen.serve.config import ServeConfig
    from simgen.serve.scene import SceneLoadError, load_render_scene

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npz"):
        print(f"error: -o {out}: use a .png or .npz file", file=sys.stderr)
        return 2
    if suffix == ".png" and len(args.output) != 1:
        print("error: a .png holds one output; pass one --output or write an .npz", file=sys.stderr)
        return 2
    if args.matrix is not None:
        pose = {"matrix": np.asarray(args.matrix).reshape(4, 4).tolist()}
    else:
        pose = dict(zip(("x", "y", "z", "qx", "qy", "qz", "qw"), args.pose, strict=True))
    body = {"pose": pose, "convention": args.convention, "width": args.size[0], "height": args.size[1]}
    body.update({k: getattr(args, k) for k in ("fx", "fy", "cx", "cy") if getattr(args, k) is not None})
    if args.fov is not None:
        body["hfov_deg"] = args.fov
    body["outputs"] = args.output
    # No server limits in-process beyond what fits in memory.
    cfg = ServeConfig(max_width=16384, max_height=16384)
    try:
        params = api.parse_render_body(body, cfg)
    except api.ApiError as e:
        flag = {"pose.matrix": "--matrix", "width": "--size", "height": "--size", "hfov_deg": "--fov"}.get(
            e.field or "", "--pose" if (e.field or "").startswith("pose") else f"--{e.field}"
        )
        print(f"error: {flag}: {e.message}", file=sys.stderr)
        return 2
    try:
        # the mesh backend `simgen serve` takes by default, so both give the same images
        scene = load_render_scene(
            args.out_dir, rgb=args.rgb if "rgb" in params.outputs else "mesh", backend=cfg.backend
        )
    except SceneLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = scene.render(params.camera.intrinsics(), params.c2w_cv[0], params.outputs)
    if suffix == ".npz":
        with io.atomic_path(out) as tmp:
            tmp.write_bytes(api.encode_npz([result], params, scene.world_frame, batch=False))
    elif args.output[0] == "rgb":
        io.write_image(out, result["rgb"])
    elif args.output[0] == "depth":
        io.write_image(out, api.depth_to_mm(result["depth"]))
    else:
        io.write_panoptic(out, result["panoptic"])
        io.write_json(out.with_suffix(".segments.json"), {"segments": result["segments"]})
    print(f"wrote {out} ({args.size[0]}x{args.size[1]}, {', '.join(params.outputs)})")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from simgen.cli.common import config_from_args
    from simgen.serve.scene import SceneLoadError
    from simgen.sim.world import WorldConfig, WorldError, compose_world

    cfg = config_from_args(WorldConfig, args)
    if not Path(args.out_dir).is_dir():
        print(f"error: {args.out_dir}: not a folder", file=sys.stderr)
        return 1
    try:
        result = compose_world(args.out_dir, cfg)
    except (WorldError, SceneLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    x, y, yaw = result.spawn
    print(
        f"wrote {result.world} (robot {cfg.name!r} at x={x:.2f} y={y:.2f} yaw={yaw:.2f}) and {result.model}"
    )
    print(
        f"run: simgen serve {args.out_dir} &  GZ_SIM_RESOURCE_PATH={Path(args.out_dir) / 'models'} "
        f"GZ_SIM_SYSTEM_PLUGIN_PATH=<simgen checkout>/sensor_plugin gz sim {result.world}"
    )
    if cfg.ros2:
        from simgen.sim.ros2 import clearpath_command

        print(f"wrote {result.bridge} (ros_gz_bridge) and {result.launch}")
        print(f"ROS 2 + Gazebo: ros2 launch {result.launch}")
        print("clearpath_simulator (its own Jackal, the export's world without this robot):")
        print(clearpath_command(result.scene, result.spawn, Path(args.out_dir)))
    return 0


def cmd_drive(args: argparse.Namespace) -> int:
    from simgen.cli.common import config_from_args
    from simgen.serve.client import RenderError
    from simgen.serve.scene import SceneLoadError
    from simgen.sim.bag import BagError
    from simgen.sim.drive import DriveConfig, DriveError, drive
    from simgen.sim.world import WorldError

    cfg = config_from_args(DriveConfig, args)
    if not Path(args.out_dir).is_dir():
        print(f"error: {args.out_dir}: not a folder", file=sys.stderr)
        return 1
    if cfg.bag:
        import signal

        # A terminated drive raises SystemExit like Ctrl-C raises KeyboardInterrupt, so the half-written
        # bag is removed on the way out instead of lingering as a hidden temporary folder.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        summary = drive(args.out_dir, cfg, args.out)
    except (DriveError, WorldError, SceneLoadError, RenderError, BagError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    f = summary["final"]
    what = f"blocked by {summary['blocked_by']}" if summary["status"] == "blocked" else summary["status"]
    if summary["route"] == "default":
        what += f" (default route: a loop past {len(summary['goals'])} stops)"
    print(
        f"{what}: {summary['waypoints_reached']}/{len(summary['waypoints'])} waypoints, "
        f"{len(summary['frames'])} frames, {f['time']:.1f} s simulated, robot at x={f['x']:.2f} y={f['y']:.2f} "
        f"-> {Path(args.out) if args.out else Path(args.out_dir) / 'drive'}"
    )
    if summary["bag"]:
        n = sum(summary["bag"]["messages"].values())
        print(f"bag: {summary['bag']['path']} ({n} messages; topics and frames: docs/ros2.md)")
    return 0
