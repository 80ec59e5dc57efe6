"""``simgen import {replica,scannet,record3d,nerfstudio} SRC OUT``."""

from __future__ import annotations

import argparse

from simgen.cli.common import config_from_args, error
from simgen.config import add_dataclass_args
from simgen.data.importers.common import DatasetImportError
from simgen.data.importers.nerfstudio import NerfstudioConfig
from simgen.data.importers.record3d import Record3DConfig
from simgen.data.importers.replica import ReplicaConfig
from simgen.data.importers.scannet import ScanNetConfig

EXAMPLES = """examples:
  simgen import replica Replica_Dataset/room_0/Sequence_1 scenes/room0 --labels-from-gt --every 5 --test-every 8
  simgen import replica room_0/Sequence_1 scenes/room0 --labels preds/room0 --classes info_semantic.json
  simgen import scannet scans/scene0000_00 scenes/s0000 --labels-from-gt \\
      --label-map scannetv2-labels.combined.tsv --every 10 --max-frames 300
  simgen import scannet scans/scene0000_00 scenes/s0000 --labels preds/scene0000_00 --label-set scannet20

See docs/importers.md for the layouts, conventions and every option.
"""

REPLICA_EXAMPLES = """examples:
  simgen import replica room_0/Sequence_1 scenes/room0 --labels-from-gt --classes info_semantic.json
  simgen import replica room_0/Sequence_1 scenes/room0 --labels preds/room0 --every 2 --quiet
"""

RECORD3D_EXAMPLES = """examples:
  simgen import record3d capture.r3d scenes/phone && simgen label scenes/phone --model ./mask2former
  simgen import record3d capture_unzipped/ scenes/phone --every 2 --min-confidence 2 --max-depth-m 4
"""

NERFSTUDIO_EXAMPLES = """examples:
  ns-process-data polycam --data capture.zip --output-dir ns/ --use-depth
  simgen import nerfstudio ns/ scenes/polycam --test-every 10 && simgen label scenes/polycam --model ./mask2former
"""

SCANNET_EXAMPLES = """examples:
  simgen import scannet scans/scene0000_00 scenes/s0000 --labels-from-gt --label-map scannetv2-labels.combined.tsv
  simgen import scannet scans/scene0000_00 scenes/s0000 --labels preds/scene0000_00 --every 10
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.cli.common import add_command

    p = add_command(
        sub,
        "import",
        help="convert a Replica (Semantic-NeRF) or ScanNet folder into a scene",
        description="Convert a public RGB-D dataset layout into a scene folder (docs/scene-format.md). "
        "Pseudo-labels come from COCO panoptic predictions (--labels DIR) or from the dataset's own labels "
        "with per-frame ids scrambled (--labels-from-gt); the dataset's labels, when present, are also "
        "written as scene-consistent ground truth under gt/.",
        examples=EXAMPLES,
    )
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    labelled = "Import {what} into a scene folder."
    unlabelled = "Import {what} as a scene without pseudo-labels; 'simgen label' adds them."
    for name, cls, what, examples, description in (
        ("replica", ReplicaConfig, "a Semantic-NeRF Replica sequence (traj_w_c.txt, rgb/, depth/, semantic_*/)",
         REPLICA_EXAMPLES, labelled),
        ("scannet", ScanNetConfig, "an exported ScanNet scene (color/, depth/, pose/, intrinsic/, label-filt/, "
         "instance-filt/)", SCANNET_EXAMPLES, labelled),
        ("record3d", Record3DConfig, "a Record3D iPhone/iPad LiDAR capture (.r3d, or the unzipped folder)",
         RECORD3D_EXAMPLES, unlabelled),
        ("nerfstudio", NerfstudioConfig, "an ns-process-data folder with depth (transforms.json with "
         "depth_file_path; Polycam / Record3D processed)", NERFSTUDIO_EXAMPLES, unlabelled),
    ):  # fmt: skip
        q = add_command(
            datasets,
            name,
            help=f"import {what}"
            + (", without labels (then run simgen label)" if description is unlabelled else ""),
            description=description.format(what=what),
            examples=examples,
        )
        q.add_argument(
            "src", metavar="SRC", help="source folder" if description is labelled else "source file or folder"
        )
        q.add_argument("out", metavar="OUT", help="scene folder to write")
        add_dataclass_args(q, cls)
        q.set_defaults(func=cmd_import, config_cls=cls)
    _register_rosbag(datasets)


# importer function of each dataset name, as "module:function" (imported only when that command runs)
IMPORTERS = {
    "replica": "simgen.data.importers.replica:import_replica",
    "scannet": "simgen.data.importers.scannet:import_scannet",
    "record3d": "simgen.data.importers.record3d:import_record3d",
    "nerfstudio": "simgen.data.importers.nerfstudio:import_nerfstudio",
    "rosbag": "simgen.data.importers.rosbag:import_rosbag",
}


def cmd_import(args: argparse.Namespace) -> int:
    """Every ``simgen import DATASET SRC OUT``: the dataset's config from the flags, then its importer."""
    import importlib

    module, name = IMPORTERS[args.dataset].split(":")
    run = getattr(importlib.import_module(module), name)
    cfg = config_from_args(args.config_cls, args)
    try:
        run(args.src, args.out, cfg)
    except DatasetImportError as e:
        return error(str(e))
    return 0


ROSBAG_EXAMPLES = """examples:
  simgen import rosbag jackal_2024-05-01 scenes/lab                 # the bag's only RGB-D stream, poses in its TF root
  simgen import rosbag run.mcap scenes/lab --world-frame odom --min-translation 0.1 --min-rotation 10
  simgen import rosbag run.db3 scenes/lab --color-topic /camera/color/image_raw/compressed \\
      --depth-topic /camera/aligned_depth_to_color/image_raw --sync-tolerance 0.01
  simgen label scenes/lab                                           # then add panoptic pseudo-labels
"""


def _register_rosbag(datasets: argparse._SubParsersAction) -> None:
    from simgen.cli.common import add_command
    from simgen.data.importers.rosbag import RosbagConfig

    what = "a ROS 2 bag (rosbag2: MCAP or sqlite3) of an RGB-D camera with TF"
    q = add_command(
        datasets,
        "rosbag",
        help=f"import {what}",
        description=f"Import {what} into an unlabelled scene folder: colour + depth (+ CameraInfo) topics, "
        "camera poses from /tf and /tf_static at each image stamp. Add pseudo-labels afterwards with "
        "`simgen label OUT`. See docs/importers.md (ROS 2 bags).",
        examples=ROSBAG_EXAMPLES,
    )
    q.add_argument("src", metavar="BAG", help="rosbag2 folder (with metadata.yaml) or one .mcap / .db3 file")
    q.add_argument("out", metavar="OUT", help="scene folder to write")
    add_dataclass_args(q, RosbagConfig)
    q.set_defaults(func=cmd_import, config_cls=RosbagConfig)
