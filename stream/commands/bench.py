"""``segstream bench``: FPS and per-stage latency per model, backend, precision, resolution,
repeated and interleaved, reported as median (min-max)."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

from engines.backend import BACKENDS
from stream.commands._common import report_errors
from stream.config import ENCODINGS, PublishConfig

EPILOG = """examples:
  segstream bench                                   # shipped model, ONNX Runtime, 360x480
  segstream bench --resolution 360x480 --resolution 720x1280 --compare
  segstream bench --model engines/models/camvid_fastscnn.onnx \\
                  --model engines/models/camvid_fastscnn.int8.onnx     # FP32 vs INT8
  segstream bench --source-fps 30 --repeat 5        # latency at a 30 fps camera
  segstream bench --model camvid.engine --backend tensorrt          # on a Jetson / GPU
  segstream bench --json bench.json --plot bench.png --markdown bench.md
  segstream bench --from-json bench.json --markdown bench.md        # re-render, no runs

How it measures (details: docs/benchmarks.md):
  Every figure is measured --repeat times and shown as median (min-max). The runs are
  interleaved: round 1 runs engine, pipeline (and with --compare hand loop, pipeline on
  the clip) for every configuration, round 2 the same in reverse order, and so on, so
  drift on a noisy machine hits all of them alike. Ratios are taken within a round.
  Camera: a live GStreamer test source at --source-fps; by default 1.5x the fastest of
  a few short bare-engine runs made first (30..240 fps; load only ever slows a run, so
  the fastest is what the engine does when the load lifts), so the engine, not the
  camera, limits the pipeline; a run within 10% of that rate is marked * (camera-limited).
  Other processes' CPU use and VM steal are recorded per run; a busy machine is flagged.
  A real ZeroMQ subscriber is attached. Precision is read from each model file.
  --compare also runs, on the same clip, every frame, the loop a careful user writes by
  hand (OpenCV capture, ONNX Runtime, the same bilinear-logits upsample + argmax as the
  pipeline, zstd, ZeroMQ; see stream/handloop.py) and the pipeline.
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


def _positive(kind: type, what: str) -> type:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text!r}")
        return value

    return parse  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure FPS and per-stage latency",
                       description="Benchmark engines and the end-to-end pipeline.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", action="append",
                   help="model file (repeatable; default: the shipped model)")
    p.add_argument("--backend", action="append", choices=BACKENDS,
                   help="backend (repeatable; default: from each model's suffix)")
    p.add_argument("--resolution", "-r", action="append", type=_resolution, metavar="HxW",
                   help="camera resolution, height x width (repeatable; default 360x480)")
    p.add_argument("--repeat", "-n", type=_positive(int, "--repeat"), default=3,
                   help="runs per figure, interleaved; median (min-max) shown (default 3)")
    p.add_argument("--duration", type=_positive(float, "--duration"), default=5.0,
                   help="seconds measured per pipeline run (default 5)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of warm-up per engine and pipeline run (default 2)")
    p.add_argument("--threads", type=_positive(int, "--threads"),
                   help="engine CPU threads, pipeline and hand loop (default: cores, max 4)")
    p.add_argument("--encoding", default=PublishConfig.encoding, choices=ENCODINGS)
    p.add_argument("--source-fps", type=_positive(int, "--source-fps"),
                   help="test camera frame rate (default: 1.5x the fastest of a few "
                        "bare-engine calibration runs, 30..240)")
    p.add_argument("--compare", action="store_true",
                   help="also run the hand-written baseline loop and report the speed-up")
    p.add_argument("--compare-frames", type=_positive(int, "--compare-frames"), default=600,
                   help="clip length for --compare (default 600: startup stays under 5%%)")
    p.add_argument("--json", type=Path, help="write the full report (every run) as JSON")
    p.add_argument("--plot", type=Path, help="write FPS/latency plot as PNG")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--from-json", type=Path, metavar="REPORT",
                   help="render a saved --json report (table, --markdown, --plot); runs nothing")
    p.set_defaults(func=run)


def _load_report(path: Path) -> dict:
    from stream.bench_report import BENCH_FORMAT

    if not path.is_file():
        raise FileNotFoundError(f"--from-json: report {path} not found")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--from-json: {path} is not JSON ({e}); give a file written by "
                         "`segstream bench --json`") from None
    if not isinstance(report, dict) or report.get("segstream_bench") != BENCH_FORMAT:
        raise ValueError(f"--from-json: {path} is not a segstream bench report of format "
                         f"{BENCH_FORMAT} (written by `segstream bench --json` since --repeat)")
    return report


def _measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from engines.backend import backend_for_path
    from engines.zoo import resolve_model
    from stream.bench import BenchCase, BenchOptions, run_bench

    models = [resolve_model(m) for m in (args.model or [None])]
    for m in models:
        if not m.is_file():
            raise FileNotFoundError(f"model file {m} not found")
    cases = []
    for model, res in itertools.product(models, args.resolution or [(360, 480)]):
        for backend in args.backend or [backend_for_path(model)]:
            cases.append(BenchCase(model, backend, res))
    opts = BenchOptions(warmup_s=max(0.0, args.warmup), duration_s=args.duration,
                        repeat=args.repeat, threads=args.threads, encoding=args.encoding,
                        source_fps=args.source_fps or 0, compare_frames=args.compare_frames)
    with tempfile.TemporaryDirectory() as tmp, tqdm(desc="bench", unit="run") as bar:
        def progress(done: int, total: int, text: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(text)  # refreshes

        return run_bench(cases, opts, compare=args.compare, workdir=Path(tmp),
                         progress=progress)


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.bench_report import markdown, plot, table

    if args.from_json:
        try:
            report = _load_report(args.from_json)
        except ValueError as e:
            print(f"segstream: error: {e}", file=sys.stderr)
            return 2
    else:
        report = _measure(args)
    print(table(report))
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        print(f"wrote {plot(report, args.plot)}")
    failed = [r["label"] for r in report["results"]
              if any(run.get("pipeline", {}).get("error") for run in r["runs"])]
    return 1 if failed else 0
