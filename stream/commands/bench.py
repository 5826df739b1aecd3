"""``segstream bench``: FPS and per-stage latency per model, backend, precision, resolution."""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from stream.commands._common import report_errors

EPILOG = """examples:
  segstream bench                                   # shipped model, ONNX Runtime, 360x480
  segstream bench --resolution 360x480 --resolution 720x1280 --compare
  segstream bench --model engines/models/camvid_fastscnn.onnx \\
                  --model engines/models/camvid_fastscnn.int8.onnx     # FP32 vs INT8
  segstream bench --model camvid.engine --backend tensorrt          # on a Jetson / GPU
  segstream bench --json bench.json --plot bench.png --markdown bench.md

Precision is read from each model file (Q/DQ nodes -> int8, fp16 weights -> fp16, or the
TensorRT engine's sidecar). The camera is a live GStreamer test source at --source-fps
(default 1.5x the bare engine rate, so the engine is the limit) with a real ZeroMQ
subscriber attached. --compare also times the loop a user writes by
hand (OpenCV + NumPy + ONNX Runtime + pickle) on the same clip.
"""


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"resolution must be HxW, e.g. 360x480, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {text!r}")
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure FPS and per-stage latency",
                       description="Benchmark engines and the end-to-end pipeline.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", action="append",
                   help="model file (repeatable; default: the shipped model)")
    p.add_argument("--backend", action="append", choices=("onnxruntime", "torch", "tensorrt"),
                   help="backend (repeatable; default: from each model's suffix)")
    p.add_argument("--resolution", "-r", action="append", type=_resolution, metavar="HxW",
                   help="camera resolution (repeatable; default 360x480)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    p.add_argument("--threads", type=int, help="engine CPU threads (default: cores, max 4)")
    p.add_argument("--encoding", default="zstd", choices=("raw", "zstd", "rle"))
    p.add_argument("--source-fps", type=int, default=0,
                   help="test camera frame rate (default: 1.5x the bare engine rate)")
    p.add_argument("--compare", action="store_true",
                   help="also run the hand-written baseline loop and report the speed-up")
    p.add_argument("--compare-frames", type=int, default=600,
                   help="clip length for --compare (default 600: startup stays under 5%%)")
    p.add_argument("--json", type=Path, help="write the full report as JSON")
    p.add_argument("--plot", type=Path, help="write FPS/latency plot as PNG")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.set_defaults(func=run)


@report_errors
def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines.backend import backend_for_path
    from engines.zoo import resolve_model
    from stream.bench import BenchCase, BenchOptions, run_bench
    from stream.bench_report import markdown, plot, table

    models = [resolve_model(m) for m in (args.model or [None])]
    for m in models:
        if not m.is_file():
            raise FileNotFoundError(f"model file {m} not found")
    cases = []
    for model, res in itertools.product(models, args.resolution or [(360, 480)]):
        for backend in args.backend or [backend_for_path(model)]:
            cases.append(BenchCase(model, backend, res))
    opts = BenchOptions(warmup_s=args.warmup, duration_s=args.duration, threads=args.threads,
                        encoding=args.encoding, source_fps=args.source_fps,
                        compare_frames=args.compare_frames)
    with tempfile.TemporaryDirectory() as tmp, \
            tqdm(total=len(cases), desc="bench", unit="config") as bar:
        report = run_bench(cases, opts, compare=args.compare, workdir=Path(tmp), progress=bar)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        print(f"wrote {plot(report, args.plot)}")
    failed = [r["label"] for r in report["results"] if r["pipeline"]["error"]]
    return 1 if failed else 0
