"""``segstream train``: train a segmentation network (see engines/train.py)."""

from __future__ import annotations

import argparse
import sys

EPILOG = r"""examples:
  # the shipped Fast-SCNN recipe (val mIoU 67.3 % trained on train; 1.5-3 h on 2 CPU cores)
  segstream train --model fastscnn --data ../shared/camvid --out runs/shipped \
      --epochs 110 --batch-size 8 --crop 360x480 --lr 4e-3 --class-weight sqrt-mfb \
      --arch-options '{"aux": true}' --val-every 10 --threads 2
  # the accurate model: ImageNet-pretrained EfficientNet-Lite0 + light FPN (stride-4 logits),
  # the shipped litefpn recipe (val mIoU 73.0 % trained on train; 2 CPU cores: 1-2 h with
  # native bf16, 2-3 h without)
  segstream train --model litefpn --data ../shared/camvid --out runs/litefpn --pretrained \
      --encoder-lr-mult 0.2 --lr 2e-3 --warmup-epochs 2 --epochs 108 --batch-size 8 \
      --crop 288x288 --scale 0.5 1.75 --class-weight sqrt-mfb --ohem 0.7 \
      --input-size 360x480 --arch-options '{"aux": true, "frozen_stages": 2}' \
      --val-every 12 --threads 2
  # the same on train+val (the CamVid protocol for a model reported on test), for the
  # same optimiser steps: 468 frames make 58 steps an epoch against train's 45
  segstream train ... --train-split train+val --val-split '' --epochs 84
  # choose a recipe on a drive the model never saw (val is a drive train also holds)
  segstream train ... --train-split 'train+val:except=0001TP' --val-split 'train:only=0001TP'
  # paste half the classes of another frame into half the samples (ClassMix: +0.8 / +1.1
  # mIoU on a held-out drive in two seeds, -1.9 on val: not in the shipped recipe), and one
  # log line per epoch instead of progress bars (for a log file)
  segstream train ... --mix classmix --no-progress
  # distil the accurate model into the fast one: Fast-SCNN also learns litefpn's per-pixel
  # class distribution (the teacher runs through ONNX Runtime on every batch)
  segstream train --model fastscnn ... --distill engines/models/camvid_litefpn.onnx
  # stronger colour augmentation (contrast / saturation +-50 %, hue, blur)
  segstream train ... --photometric strong
  # a quick trial on 16 images
  segstream train --model litefpn --data ../shared/camvid --out runs/try --limit 16 \
      --epochs 2 --pretrained
  # continue an interrupted run (optionally with a different --epochs)
  segstream train --model fastscnn --data ../shared/camvid --out runs/shipped --resume
  # multi-GPU with DDP
  torchrun --nproc_per_node 4 -m engines.train --model fastscnn --data DATA --out runs/x
  # quantization-aware fine-tuning of a trained model, before INT8 calibration
  segstream train --model fastscnn --data ../shared/camvid --out runs/qat --qat \
      --init-from runs/shipped/last.pt --arch-options '{"aux": true}' --epochs 6 \
      --lr 2e-4 --warmup-epochs 0 --class-weight sqrt-mfb --threads 2
  # your own data: images/ + masks/ + classes.txt
  segstream train --model fastscnn --data my_dataset --val-split '' --out runs/mine

Checkpoints: <out>/last.pt every epoch, <out>/best.pt by validation mIoU; one JSON line
per epoch in <out>/log.jsonl (with img/s and the autocast used) and a loss / val mIoU plot in
<out>/curves.png. On CPUs with native bf16 (AVX-512 BF16, AMX) training autocasts to
bfloat16 (--bf16; the run prints `precision:`).
Export with `segstream export <out>/last.pt --out model.onnx`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segstream train``; without torch, a parser that says how to install it."""
    import importlib.util

    try:
        have_torch = importlib.util.find_spec("torch") is not None
    except ImportError:  # a finder that refuses torch outright
        have_torch = False
    if not have_torch:
        _register_without_torch(subparsers)
        return
    # The options come from a torch-free module: building the parser never imports torch
    # (2.5 s of start-up for every command otherwise); `run` does.
    from engines.train_config import add_arguments

    p = subparsers.add_parser(
        "train", help="train a segmentation model",
        description="Train a registered architecture on CamVid, Cityscapes or an "
                    "images/ + masks/ folder, with checkpoints, resume and DDP.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def _register_without_torch(subparsers: argparse._SubParsersAction) -> None:
    """torch is not installed (a runtime-only install, e.g. on Jetson): keep ``train`` in
    ``segstream --help``, accept any arguments and exit 2 naming the install command."""
    from stream.commands._common import TORCH_INSTALL, torch_missing_message

    p = subparsers.add_parser(
        "train", help="train a segmentation model (needs torch: not installed)",
        description=f"Training needs torch, which is not installed here; {TORCH_INSTALL}.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=lambda _args: _fail(torch_missing_message("train")),
                   accepts_unknown_args=True)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from engines.arch.efficientnet_lite import PretrainedWeightsError
    from engines.data.readers import DatasetError
    from engines.train import config_from_args, train

    try:
        best = train(config_from_args(args), bars=args.progress_bars)
    except (DatasetError, FileNotFoundError, FileExistsError, ValueError,
            PretrainedWeightsError) as e:
        print(f"segstream train: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # diverged: the inputs were fine, the recipe was not
        print(f"segstream train: error: {e}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    return 0
