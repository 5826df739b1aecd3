"""``segstream predict``: segment a folder of images into label PNGs."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  segstream predict ../shared/camvid/val --out out/labels
  segstream predict frames/ --out out/labels --overlay-dir out/overlay
  segstream predict frames/ --model runs/shipped/best.pt --out out/labels

Writes OUT/<stem>.png: 8-bit class ids at the input image's size (0..K-1, see the model
sidecar for names), and with --overlay-dir a colourised overlay <stem>.jpg per image.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="segment a folder of images into label PNGs",
        description="Run a model over every image in a folder and write label maps.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of .png/.jpg/.jpeg/.bmp images")
    p.add_argument("--model", default=None, help="model file; default: the shipped model")
    p.add_argument("--out", required=True, help="folder for the label PNGs")
    p.add_argument("--overlay-dir", default=None, help="folder for colourised overlays")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.backend import BackendError
    from engines.predict import PredictError, predict_folder
    from engines.spec import ModelSpecError
    from engines.zoo import NoModelError, resolve_model

    try:
        res = predict_folder(resolve_model(args.model), args.input, args.out,
                             overlay_dir=args.overlay_dir, backend=args.backend,
                             threads=args.threads)
    except (BackendError, ModelSpecError, NoModelError, PredictError) as e:
        print(f"segstream predict: error: {e}")
        return 2
    extra = f" and {len(res.overlays)} overlays to {args.overlay_dir}" if res.overlays else ""
    print(f"wrote {len(res.labels)} label maps to {args.out}{extra} "
          f"({res.ms_per_image:.1f} ms/image)")
    return 0
