"""``segstream export``: training checkpoint -> checked ONNX model + JSON sidecar; or an
FP32 ONNX -> its FP16 twin (``--fp16``), which needs no torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  segstream export runs/camvid/best.pt --out models/camvid.onnx
  segstream export runs/camvid/best.pt --out models/camvid_labels.onnx --argmax
  segstream export runs/camvid/best.pt --out models/camvid_dyn.onnx --dynamic --size 360x480
  segstream export runs/camvid/best.pt --out models/camvid.fp16.onnx --fp16
  segstream export runs/camvid/best.pt --out m.onnx --check-images ../shared/camvid/val
  # no checkpoint (a shipped model): the FP16 twin of an FP32 ONNX, for TensorRT FP16
  segstream export engines/models/camvid_fastscnn.onnx --fp16 --out camvid_fastscnn.fp16.onnx

Writes OUT (.onnx) and its sidecar (same stem, .json). Input "input" (N,3,H,W) float32;
output "logits" (N,K,H/s,W/s) float32, or with --argmax "labels" (N,H,W) uint8 with the
upsample + argmax inside the graph. --fp16 keeps float32 I/O (for TensorRT strongly
typed engines). The file is compared with torch in ONNX Runtime before it is written;
a mismatch exits 1 and leaves an existing OUT untouched. From an .onnx input (only with
--fp16) the FP16 file is compared with the FP32 one in ONNX Runtime instead.
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a training checkpoint to ONNX (+ sidecar)",
        description="Export a training checkpoint (.pt) to a checked ONNX model for ONNX "
                    "Runtime and TensorRT, and write its JSON sidecar.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="training checkpoint written by `segstream train`, or "
                                      "an FP32 .onnx (with --fp16: its FP16 twin)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--dynamic", action="store_true",
                   help="symbolic height and width too (default: Nx3xHxW, N symbolic)")
    p.add_argument("--argmax", action="store_true",
                   help="upsample + argmax in the graph: output uint8 labels (N,H,W)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..20 (default 17)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="network input size, e.g. 360x480 (default: the checkpoint's)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights and activations, float32 I/O")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the ONNX Runtime vs torch comparison")
    p.add_argument("--check-images", default=None, metavar="DIR",
                   help="also compare on up to 4 real images from DIR")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"360x480"`` -> (360, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected HxW, e.g. 360x480") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"--size {text!r}: height and width must be > 0")
    return h, w


def _real_inputs(folder: str, spec: object, limit: int = 4) -> list:
    import cv2

    from engines.preprocess import Preprocessor

    if not Path(folder).is_dir():
        raise ValueError(f"--check-images {folder}: no such folder; give a folder of frames "
                         "the model is meant for, e.g. --check-images ../shared/camvid/val")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--check-images {folder}: no {'/'.join(IMAGE_SUFFIXES)} images")
    pre = Preprocessor(spec)
    out = []
    for p in paths[:limit]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"--check-images: cannot decode {p}")
        out.append(pre(img))  # (1, 3, H, W) float32
    return out


def _fp16_from_onnx(args: argparse.Namespace) -> int:
    """``export MODEL.onnx --fp16 --out OUT``: no torch, the FP32 file is the reference."""
    from engines.onnx_check import OnnxCheckError
    from engines.onnx_fp16 import Fp16ConversionError, convert_file
    from engines.spec import ModelSpec, ModelSpecError, sidecar_path

    prog = "segstream export: error:"
    unused = [flag for flag, on in (("--argmax", args.argmax), ("--dynamic", args.dynamic),
                                    ("--size", args.size), ("--opset", args.opset != 17))
              if on]
    if not args.fp16 or unused:
        print(prog, f"from an ONNX file ({args.checkpoint}) export only makes its FP16 twin: "
              f"add --fp16{' and drop ' + ', '.join(unused) if unused else ''}; the other "
              "options need the training checkpoint (.pt)", file=sys.stderr)
        return 2
    try:
        spec = ModelSpec.load(sidecar_path(args.checkpoint))
        real = _real_inputs(args.check_images, spec) if args.check_images else []
        out = convert_file(args.checkpoint, args.out, check=args.check, check_inputs=real,
                           on_check=lambda r: print(f"check fp16: {r.summary()}"))
    except (Fp16ConversionError, ModelSpecError, ValueError, OSError) as e:
        print(prog, e, file=sys.stderr)
        return 2
    except OnnxCheckError as e:
        print(prog, e, file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {spec.architecture}, float16 "
          f"weights and activations, float32 I/O) and {out.with_suffix('.json')}")
    return 0


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from stream.commands._common import output_problem

    if why := output_problem(args.out, "--out", inputs=[args.checkpoint],
                             suffixes=(".onnx",)):
        print(f"segstream export: error: {why}", file=sys.stderr)
        return 2
    if str(args.checkpoint).lower().endswith(".onnx"):
        return _fp16_from_onnx(args)

    from stream.commands._common import is_missing_torch, torch_missing_message

    try:
        from engines.export import CheckReport, ExportError, ExportInputError, export_onnx
        from engines.torch_backend import build_from_checkpoint, checkpoint_spec, load_checkpoint
    except ModuleNotFoundError as e:
        if not is_missing_torch(e):
            raise
        print(torch_missing_message("export"), file=sys.stderr)
        return 2
    from engines.backend import BackendError
    from engines.onnx_fp16 import Fp16ConversionError

    prog = "segstream export: error:"
    try:
        ckpt = load_checkpoint(args.checkpoint)
        spec = checkpoint_spec(ckpt, args.checkpoint)
        if args.size:
            spec = dataclasses.replace(spec, input_size=parse_size(args.size))
        model = build_from_checkpoint(ckpt, args.checkpoint)
        real = _real_inputs(args.check_images, spec) if args.check_images else []
    except (BackendError, ValueError, OSError) as e:
        print(prog, e, file=sys.stderr)
        return 2

    def report(kind: str, r: CheckReport) -> None:
        print(f"check {kind}: {r.summary()}")

    try:
        out = export_onnx(model, spec, args.out, dynamic=args.dynamic, argmax=args.argmax,
                          opset=args.opset, check=args.check, fp16=args.fp16,
                          check_inputs=real, on_check=report)
    except ExportInputError as e:  # bad arguments: exit 2 like every usage error
        print(prog, e, file=sys.stderr)
        return 2
    except (ExportError, Fp16ConversionError) as e:
        print(prog, e, file=sys.stderr)
        return 1
    h, w = spec.input_size
    shape = "Nx3xHxW (dynamic)" if args.dynamic else f"Nx3x{h}x{w}"
    kind = "labels uint8" if args.argmax else "logits float32"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {spec.architecture}, input "
          f"{shape}, output {kind}{', fp16' if args.fp16 else ''}) and "
          f"{out.with_suffix('.json')}")
    return 0
