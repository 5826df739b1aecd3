"""``segstream calibrate``: FP32 ONNX -> Q/DQ INT8 ONNX with a measured accuracy report."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

AUTO_METHODS = ("minmax", "percentile")

EPILOG = r"""examples:
  # CamVid model: calibrate on train frames, report FP32 vs INT8 on val, keep mIoU drop <= 0.5
  segstream calibrate engines/models/camvid_fastscnn.onnx --data ../shared/camvid/train \
      --samples 100 --method auto --eval-data ../shared/camvid --split val \
      --out runs/int8/camvid_fastscnn.int8.onnx

  # calibrate on a drive video; no labels: report FP32/INT8 label agreement on another one
  segstream calibrate model.onnx --data drive.mp4 --samples 200 --method entropy \
      --agreement-data drive2.mp4

  # fastest INT8 for ONNX Runtime on this CPU (not for TensorRT)
  segstream calibrate model.onnx --data ../shared/camvid/train --profile ort-cpu \
      --eval-data ../shared/camvid

  # after quantization-aware fine-tuning (segstream train --qat, then segstream export):
  # quantize the fine-tune, score it against the original FP32 model
  segstream calibrate runs/qat/model.onnx --reference engines/models/camvid_fastscnn.onnx \
      --data ../shared/camvid/train --method auto --eval-data ../shared/camvid

  # calibrated on a CPU with VNNI for CPUs without it too: keep the stem in float, as
  # the fallback does on AVX2-only CPUs (whose fast int8 kernels saturate there)
  segstream calibrate engines/models/camvid_litefpn.onnx --data ../shared/camvid/train \
      --profile ort-cpu --eval-data ../shared/camvid --keep-float '/model/encoder/stem/*' \
      --out runs/int8/camvid_litefpn.int8.onnx

  # frames with their own label maps, per-tensor weights, custom output
  segstream calibrate model.onnx --data frames/ --labels frames_annot/ --no-per-channel \
      --out build/model.int8.onnx

outputs: OUT (default MODEL.int8.onnx; a shipped model's needs --out), its sidecar OUT.json
(metrics = INT8 figures), and the report OUT.report.json / OUT.report.md (also printed).
Calibration frames go through the stream's own pre-processing with the model's sidecar.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="quantize a model to INT8 (Q/DQ ONNX) and report the accuracy it keeps",
        description=(
            "Post-training INT8 quantization with ONNX Runtime to an explicit Q/DQ ONNX model:\n"
            "int8 weights (symmetric, zero point 0, per-channel scales) and int8 symmetric\n"
            "activations that TensorRT (explicit quantization) and ONNX Runtime both run.\n"
            "Reports FP32 vs INT8 mIoU and per-class IoU, label agreement and CPU speed; when\n"
            "the mIoU drop exceeds --max-drop, the layers that cost most stay in float."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="FP32 ONNX model with its JSON sidecar")
    p.add_argument("--data", type=Path, required=True,
                   help="calibration frames: folder of png/jpg, or a video file")
    p.add_argument("--samples", type=int, default=100,
                   help="calibration frames, evenly spaced over --data (default 100)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile", "auto"),
                   default="minmax",
                   help="activation range calibration (default minmax); auto: calibrate with "
                        "minmax and percentile, keep the one with the better INT8 score")
    p.add_argument("--percentile", type=float, default=99.999,
                   help="for --method percentile: %% of |activation| values kept (99.999)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default on)")
    p.add_argument("--profile", choices=("tensorrt", "ort-cpu"), default="tensorrt",
                   help="tensorrt (default): symmetric int8 activations, zero point 0, for "
                        "TensorRT explicit quantization (ONNX Runtime runs it too, on x86 often "
                        "slower than FP32); ort-cpu: uint8 asymmetric activations, ONNX "
                        "Runtime CPU's fastest INT8 layout, not for TensorRT")
    p.add_argument("--weight-qdq-pair", action="store_true",
                   help="store weights as float with a Q/DQ pair (TensorRT 8.x; larger file)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--labels", type=Path, help="label maps for the --data frames (same names)")
    ev.add_argument("--eval-data", type=Path,
                    help="labelled dataset in CamVid layout (SPLIT/ and SPLITannot/)")
    ev.add_argument("--split", default="val", help="split of --eval-data (default val)")
    ev.add_argument("--eval-samples", type=int, help="labelled frames used (default all)")
    ev.add_argument("--agreement-data", type=Path,
                    help="unlabelled frames (folder or video) for FP32/INT8 label agreement "
                         "(default: the --data frames)")
    ev.add_argument("--agreement-samples", type=int, default=50,
                    help="frames used for agreement, evenly spaced (50)")
    ev.add_argument("--reference", type=Path, metavar="FP32.onnx",
                    help="FP32 model to score the INT8 one against (default: MODEL); give the "
                         "original when MODEL is a `segstream train --qat` fine-tune of it")
    ev.add_argument("--threads", type=int, help="ONNX Runtime threads (default: cores, max 4)")
    ev.add_argument("--speed-runs", type=int, default=30, help="timed runs per model (30)")
    fb = p.add_argument_group("sensitivity fallback")
    fb.add_argument("--max-drop", type=float, default=0.5,
                    help="allowed mIoU drop in points before layers go back to float (0.5)")
    fb.add_argument("--min-agreement", type=float,
                    help="without labels: keep FP32/INT8 label agreement above this %%")
    fb.add_argument("--no-fallback", action="store_true",
                    help="never keep layers in float (but those of --keep-float)")
    fb.add_argument("--keep-float", action="append", default=[], metavar="NODE",
                    help="keep this node in float from the start (repeatable): a node name, "
                         "as the report's 'Nodes kept in float' lists them, or a glob; a "
                         "convolution brings its activation. For a model deployed on x86 "
                         "CPUs without VNNI but calibrated on one with it, keep the layers "
                         "their fallback kept (docs/quantization.md)")
    fb.add_argument("--sensitivity-budget", type=int, default=12,
                    help="layers measured one by one, worst SQNR first (12)")
    fb.add_argument("--sensitivity-samples", type=int, default=24,
                    help="frames each layer is scored on (24)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="INT8 model path (default MODEL.int8.onnx)")
    out.add_argument("--report", type=Path,
                     help="report path stem; .json and .md are added (default OUT.report)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def shipped_output_problem(model: Path, out: Path | None) -> str | None:
    """Without --out, calibrating a shipped model (``engines/models``) would write over the
    shipped INT8 model, its sidecar (with the training protocol) and its report."""
    from engines.zoo import MODELS_DIR

    if out is not None:
        return None
    default = model.with_name(f"{model.stem}.int8.onnx")
    if default.exists() and default.resolve().parent == MODELS_DIR:
        return (f"without --out this writes {default}, the shipped INT8 model (and its "
                f"sidecar and report); give --out, e.g. --out runs/{default.name}")
    return None


def run(args: argparse.Namespace) -> int:
    from calibrate.data import CalibrationDataError
    from calibrate.pipeline import CalibrateJob, report_md_path, resolve_eval, run_calibration
    from calibrate.quantize import QuantConfig, QuantizeError
    from engines.spec import ModelSpecError
    from stream.commands._common import output_problem

    for name in ("samples", "sensitivity_budget", "sensitivity_samples", "speed_runs",
                 "agreement_samples"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    report_json = (Path(f"{args.report}.json") if args.report else None)
    inputs = [args.model, args.reference]
    for why in (output_problem(args.out, "--out", inputs=inputs, suffixes=(".onnx",)),
                output_problem(report_json, "--report", inputs=inputs)):
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    if why := shipped_output_problem(args.model, args.out):
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.max_drop is not None and not math.isfinite(args.max_drop):
        print(f"error: --max-drop must be a number of mIoU points, got {args.max_drop}",
              file=sys.stderr)
        return 2
    if args.min_agreement is not None and (args.labels or args.eval_data):
        print("error: --min-agreement is the fallback target without labels; with --labels or "
              "--eval-data the target is --max-drop (mIoU points)", file=sys.stderr)
        return 2
    try:
        eval_images, eval_labels = resolve_eval(args.labels, args.eval_data, args.split,
                                                args.data)
        job = CalibrateJob(
            model=args.model, data=args.data, samples=args.samples,
            methods=AUTO_METHODS if args.method == "auto" else (),
            quant=QuantConfig(method=AUTO_METHODS[0] if args.method == "auto" else args.method,
                              per_channel=args.per_channel,
                              percentile=args.percentile, profile=args.profile,
                              weight_qdq_pair=args.weight_qdq_pair),
            eval_images=eval_images, eval_labels=eval_labels, eval_samples=args.eval_samples,
            agreement_data=args.agreement_data, agreement_samples=args.agreement_samples,
            max_drop=None if args.no_fallback else args.max_drop,
            min_agreement=None if args.no_fallback else args.min_agreement,
            keep_float=tuple(args.keep_float),
            sensitivity_budget=args.sensitivity_budget,
            sensitivity_samples=args.sensitivity_samples,
            out=args.out, report=args.report, threads=args.threads,
            speed_runs=args.speed_runs, progress=not args.no_progress,
            reference=args.reference,
        )
        report = run_calibration(job)
    except (CalibrationDataError, QuantizeError, ModelSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    print(f"wrote {job.out_path}, its sidecar, and {report_md_path(job.report_stem)} (+ .json)")
    return 0
