"""``segstream eval``: score a model on a labelled split (mIoU, per-class IoU)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.backend import TTA_MODES
from stream.commands._common import output_problem, positive

EPILOG = """examples:
  # the shipped model on CamVid val, through ONNX Runtime (as the stream runs it)
  segstream eval --data ../shared/camvid --split val --out runs/reports/camvid_val.json
  # a training checkpoint through the torch backend
  segstream eval --model runs/shipped/best.pt --data ../shared/camvid
  # a TensorRT engine on a GPU machine
  segstream eval --model model.engine --data ../shared/camvid
  # store the figures in your model's sidecar (metrics.val_miou, per_class_iou, ...);
  # on a split the model was trained on they go under metrics.seen_split_fit instead
  segstream eval --model runs/mine/model.onnx --data ../shared/camvid \\
      --threads 2 --out runs/reports/mine_val.json --record

Writes the JSON report (mIoU, pixel accuracy, per-class IoU, confusion matrix) and
<report>_confusion.png beside it, and prints a per-class table.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model on a labelled dataset split",
        description="Evaluate a model (ONNX, TensorRT engine or .pt checkpoint) on a "
                    "dataset split through the stream's pre/post-processing and backends.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model file (.onnx, .engine, .pt); default: the shipped model")
    p.add_argument("--data", required=True, help="dataset root, e.g. ../shared/camvid")
    p.add_argument("--split", default="val",
                   help="split to score (default val); several joined by +, and "
                   "':only=SEQ[,SEQ]' / ':except=SEQ[,SEQ]' to keep or drop whole recordings, "
                   "e.g. 'train:only=0001TP'")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=("auto", "camvid", "cityscapes", "folder"))
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None,
                   help="default: from the model file suffix")
    p.add_argument("--threads", type=positive(int), default=None,
                   help="CPU threads for the backend")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images (the only ones read from disk)")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip also runs each image mirrored and "
                   "averages the two logit maps (twice the network time; the report says "
                   "so; not with --record) (default none)")
    p.add_argument("--out", default=None, help="report JSON path (PNG written beside it)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (for logs written to a file)")
    p.add_argument("--record", action="store_true",
                   help="write the measured mIoU / per-class IoU into the model's sidecar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.backend import BackendError
    from engines.data.readers import DatasetError
    from engines.evaluate import EvalError, evaluate, record_in_sidecar, write_report
    from engines.spec import ModelSpecError
    from engines.zoo import NoModelError, resolve_model

    if args.limit is not None and args.limit < 1:
        print(f"segstream eval: error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    if args.record and args.limit is not None:
        print("segstream eval: error: --record writes the model's figures into its sidecar: "
              "score the whole split (drop --limit), or write a report with --out",
              file=sys.stderr)
        return 2
    if args.record and args.tta != "none":
        print(f"segstream eval: error: --record files the model's own figures in its sidecar; "
              f"a --tta {args.tta} score is not one of them: drop --tta, or write a report "
              "with --out", file=sys.stderr)
        return 2
    if args.record and args.model and Path(args.model).suffix.lower() in (".pt", ".pth"):
        print("segstream eval: error: --record needs a model with a JSON sidecar "
              "(.onnx/.engine), not a checkpoint; export it first", file=sys.stderr)
        return 2
    try:
        model = resolve_model(args.model)
        if why := output_problem(args.out, "--out", inputs=[model], suffixes=(".json",)):
            print(f"segstream eval: error: {why}", file=sys.stderr)
            return 2
        report = evaluate(model, args.data, args.split, fmt=args.fmt, backend=args.backend,
                          threads=args.threads, limit=args.limit, progress=args.progress,
                          tta=args.tta)
    except (BackendError, DatasetError, EvalError, ModelSpecError, NoModelError) as e:
        print(f"segstream eval: error: {e}", file=sys.stderr)
        return 2
    print(f"{report.model} [{report.backend}] on {report.data}")
    print(report.metrics.table(report.class_names))
    print(f"{report.ms_per_image:.1f} ms/image (pre + infer + post)")
    seen, has_protocol = seen_split_of(model, report.data)
    if seen:
        print(f"note: {Path(model).name} was trained on {seen} (its sidecar's "
              "training_data): this is a fit to frames it has seen, not its accuracy on "
              "new ones"
              + ("; its held-out figures are in the sidecar's metrics.protocol"
                 if has_protocol else "")
              + (" (--record files these under metrics.seen_split_fit)" if args.record
                 else ""), file=sys.stderr)
    if args.out:
        js, png = write_report(report, args.out)
        print(f"wrote {js}" + (f" and {png}" if png is not None else
                               " (no confusion-matrix PNG: matplotlib is not installed)"))
    if args.record:
        print(f"recorded metrics in {record_in_sidecar(report, model)}")
    return 0


def seen_split_of(model: str | Path, data: str) -> tuple[str | None, bool]:
    """(The training split of ``model``, from its sidecar's training_data, that holds
    ``data``; whether the sidecar records a protocol with held-out figures)."""
    from engines.evaluate import seen_in_training
    from engines.spec import ModelSpec, ModelSpecError, sidecar_path

    try:
        spec = ModelSpec.load(sidecar_path(model))
    except (ModelSpecError, OSError):  # a .pt checkpoint has no sidecar
        return None, False
    return (seen_in_training(data, spec.training_data),
            isinstance(spec.metrics.get("protocol"), dict))
