"""``segstream predict``: segment a folder of images, a video file or a live source."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from engines.backend import TTA_MODES
from stream.commands._common import positive

DESCRIPTION = """Run a model over a folder of images, a video file or any source URI that
`segstream run` takes, and write label maps.

A folder: OUT/<stem>.png per image (8-bit class ids at the image's size, 0..K-1, see the
model sidecar for names), and with --overlay-dir a colourised overlay <stem>.jpg each.

A video or a source URI: OUT/labels/<frame>.png (8-bit class ids per frame),
OUT/annotated.mp4 (--visualize overlay|mask|side-by-side, with a class legend; none: no
video) and OUT/class_share.csv (one row per frame: frame, time_s, then the share of the
frame's pixels per class). Files are read as fast as the model goes, no frame skipped;
live sources run until --frames N or Ctrl-C (what was written is kept). Outputs are
written under temporary names and renamed at the end: a failed run leaves none.

Exit status: 0 done (also a live source stopped with Ctrl-C), 2 bad input (a missing
or undecodable file, a source that never delivered a frame, a bad model or option), 3 a
live source lost after it delivered frames (what it delivered is written)."""

EPILOG = r"""examples:
  segstream predict ../shared/camvid/val --out out/labels
  segstream predict frames/ --out out/labels --overlay-dir out/overlay
  segstream predict frames/ --model runs/shipped/best.pt --out out/labels
  segstream predict drive.mp4 --out out/drive
  segstream predict drive.mp4 --out out/drive --visualize side-by-side --alpha 0.6
  segstream predict drive.mp4 --out out/drive --model camvid_litefpn.onnx --tta flip
  segstream predict 'test://ball?width=480&height=360&frames=300' --out out/test
  segstream predict 'rtsp://cam.local/stream?transport=tcp' --out out/cam \
      --frames 900 --visualize mask
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="segment an image folder, a video or a source into label maps",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of .png/.jpg/.jpeg/.bmp images, a video file, or a "
                                 "source URI (test://, rtsp://, v4l2://, gst://, file://)")
    p.add_argument("--model", default=None, help="model file; default: the shipped model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay-dir", default=None,
                   help="image folders only: folder for colourised overlays")
    p.add_argument("--visualize", choices=("overlay", "mask", "side-by-side", "none"),
                   default=None, help="video only: what annotated.mp4 shows (default overlay)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the label colours in overlays, 0..1 (default 0.5)")
    p.add_argument("--frames", type=int, default=0, metavar="N",
                   help="video only: stop after N frames (default: until the source ends)")
    p.add_argument("--fps", type=float, default=0.0,
                   help="video only: frame rate of annotated.mp4 (default: the source's)")
    p.add_argument("--capture", choices=("auto", "gstreamer", "opencv"), default="auto",
                   help="video only: how frames are read (default auto: OpenCV for files it "
                        "can open, GStreamer for the rest)")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None)
    p.add_argument("--threads", type=positive(int), default=None,
                   help="CPU threads for the backend")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip also runs each frame mirrored "
                   "left-right and averages the two logit maps: steadier masks for twice "
                   "the network time (default none)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"segstream predict: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from engines.backend import BackendError
    from engines.predict import PredictError
    from engines.spec import ModelSpecError
    from engines.zoo import NoModelError, resolve_model

    if not 0.0 <= args.alpha <= 1.0:
        return _fail(f"--alpha must be in 0..1, got {args.alpha}")
    if args.frames < 0 or not (math.isfinite(args.fps) and 0 <= args.fps <= 1000):
        return _fail(f"--frames must be >= 0 and --fps 0..1000 (0: the source's rate), got "
                     f"{args.frames} and {args.fps}")
    is_folder = Path(args.input).is_dir()
    if is_folder and (args.visualize or args.frames or args.fps or args.capture != "auto"):
        return _fail(f"{args.input} is an image folder: --visualize, --frames, --fps and "
                     f"--capture are for videos; use --overlay-dir for overlays")
    out = Path(args.out).resolve()
    source = Path(args.input).resolve() if Path(args.input).is_file() else None
    if source is not None and (out / "labels" in source.parents or (
            source.parent == out and source.name in ("annotated.mp4", "class_share.csv"))):
        return _fail(f"--out {args.out} would overwrite the input {args.input} (predict writes "
                     f"annotated.mp4, class_share.csv and labels/ there): write elsewhere")
    if not is_folder and args.overlay_dir:
        return _fail(f"--overlay-dir is for image folders; for the video {args.input} use "
                     f"--visualize overlay (writes OUT/annotated.mp4)")
    try:
        model = resolve_model(args.model)
        if is_folder:
            return _predict_folder(args, model)
        return _predict_video(args, model)
    except (BackendError, ModelSpecError, NoModelError, PredictError) as e:
        return _fail(str(e))


def _predict_folder(args: argparse.Namespace, model: Path) -> int:
    from engines.predict import predict_folder

    res = predict_folder(model, args.input, args.out, overlay_dir=args.overlay_dir,
                         backend=args.backend, threads=args.threads, alpha=args.alpha,
                         tta=args.tta)
    extra = f" and {len(res.overlays)} overlays to {args.overlay_dir}" if res.overlays else ""
    print(f"wrote {len(res.labels)} label maps to {args.out}{extra} "
          f"({res.ms_per_image:.1f} ms/image)")
    return 0


def _predict_video(args: argparse.Namespace, model: Path) -> int:
    from stream.gst import GstUnavailableError
    from stream.predict_video import predict_video
    from stream.sources import SourceError

    try:
        res = predict_video(model, args.input, args.out, visualize=args.visualize or "overlay",
                            alpha=args.alpha, backend=args.backend, threads=args.threads,
                            tta=args.tta,
                            max_frames=args.frames, fps=args.fps,
                            capture_backend=args.capture)
    except (SourceError, GstUnavailableError) as e:
        return _fail(str(e))
    video = f", {res.video}" if res.video else ""
    stop = " (interrupted)" if res.interrupted else ""
    drops = f", {res.dropped} dropped by the source" if res.dropped else ""
    print(f"wrote {res.frames} frames{stop} in {res.seconds:.1f} s ({res.fps:.1f} fps{drops}): "
          f"{res.labels_dir}/{video}, {res.csv}")
    if res.lost_source:
        print(f"segstream predict: the source was lost after {res.frames} frames "
              f"({res.lost_source}); the outputs hold the frames up to then", file=sys.stderr)
        return 3
    return 0
