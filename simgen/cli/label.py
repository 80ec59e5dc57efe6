"""``simgen label SCENE``: 2D panoptic pseudo-labels from a transformers segmentation model."""

from __future__ import annotations

import argparse

from simgen.cli.common import add_command, add_config, add_torch_threads, config_from_args, error

EXAMPLES = """examples:
  simgen label scenes/phone --model facebook/mask2former-swin-tiny-coco-panoptic   # hub (needs network)
  simgen label scenes/phone --model ~/models/mask2former-swin-large-coco-panoptic --device cuda --batch-size 8
  simgen label scenes/room --model ./m2f --classes indoor_classes.json --overwrite   # remap / merge classes
  simgen label scenes/phone --model ./m2f --score-threshold 0.6 --min-area-px 64

See docs/label.md for the class-mapping file and how to get weights onto an offline machine.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from simgen.label.labeler import LabelConfig

    p = add_command(
        sub,
        "label",
        help="write 2D panoptic pseudo-labels for a scene with a segmentation model",
        description="Run a Hugging Face transformers universal-segmentation model (Mask2Former, MaskFormer, "
        "OneFormer; COCO panoptic or any compatible checkpoint) on every frame of SCENE, map its classes onto "
        "the scene's categories and write panoptic/*.png + segments_info into transforms.json. Refuses to "
        "replace existing labels without --overwrite. Needs 'pip install simgen[label]'.",
        examples=EXAMPLES,
        func=cmd_label,
    )
    p.add_argument("scene", metavar="SCENE", help="scene folder (transforms.json with RGB frames)")
    add_config(p, LabelConfig)
    add_torch_threads(p)


def cmd_label(args: argparse.Namespace) -> int:
    from simgen.label.classes import LabelError
    from simgen.label.labeler import LabelConfig, label_scene

    cfg = config_from_args(LabelConfig, args)
    import torch

    # One thread by default: on a shared CPU more threads spin against each other (4 frames of the
    # tiny test model: 8.5 s/frame with 2 threads, 1.4 s/frame with 1, on the loaded 2-core machine).
    torch.set_num_threads(args.torch_threads)
    try:
        label_scene(args.scene, cfg)
    except LabelError as e:
        return error(str(e))
    return 0
