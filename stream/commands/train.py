"""``segstream train``: train a segmentation network (see engines/train.py)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  # the shipped CamVid model (val mIoU 67.3 %; about 80 min on 2 CPU cores)
  segstream train --model fastscnn --data ../shared/camvid --out runs/shipped \\
      --epochs 110 --batch-size 8 --crop 360x480 --lr 4e-3 --class-weight sqrt-mfb \\
      --arch-options '{"aux": true}' --val-every 10 --threads 2
  # continue an interrupted run (optionally with a different --epochs)
  segstream train --model fastscnn --data ../shared/camvid --out runs/shipped --resume
  # multi-GPU with DDP
  torchrun --nproc_per_node 4 -m engines.train --model fastscnn --data DATA --out runs/x
  # quantization-aware fine-tuning of a trained model, before INT8 calibration
  segstream train --model fastscnn --data ../shared/camvid --out runs/qat --qat \
      --init-from runs/shipped/last.pt --arch-options '{"aux": true}' --epochs 8 \
      --lr 2e-4 --warmup-epochs 0 --class-weight sqrt-mfb --threads 2
  # your own data: images/ + masks/ + classes.txt
  segstream train --model fastscnn --data my_dataset --val-split '' --out runs/mine

Checkpoints: <out>/last.pt every epoch, <out>/best.pt by validation mIoU; one JSON line
per epoch in <out>/log.jsonl. Export with `segstream export <out>/last.pt`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from engines.train import add_arguments

    p = subparsers.add_parser(
        "train", help="train a segmentation model",
        description="Train a registered architecture on CamVid, Cityscapes or an "
                    "images/ + masks/ folder, with checkpoints, resume and DDP.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.data.readers import DatasetError
    from engines.train import config_from_args, train

    try:
        best = train(config_from_args(args))
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"segstream train: error: {e}")
        return 2
    print(f"best checkpoint: {best}")
    return 0
