"""``segstream bench``: FPS and per-stage latency per model, backend, precision, resolution
and pipeline settings (overlap, engine policy, batch, cameras), repeated and interleaved,
reported as median (min-max)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from engines.backend import BACKENDS, ENGINE_POLICIES, TTA_MODES
from stream.commands._common import output_problem, positive, report_errors
from stream.config import ENCODINGS, MAX_BATCH, OVERLAP_MODES, PipelineConfig, PublishConfig

MAX_CAMERAS = 16  # live test cameras in one bench pipeline

EPILOG = """examples:
  segstream bench                                   # shipped model, ONNX Runtime, 360x480
  segstream bench --resolution 360x480 --resolution 720x1280 --compare
  segstream bench --model engines/models/camvid_fastscnn.onnx \\
                  --model engines/models/camvid_fastscnn.int8.onnx     # FP32 vs INT8
  segstream bench --source-fps 30 --repeat 5        # latency at a 30 fps camera
  segstream bench --model camvid.engine --backend tensorrt          # on a Jetson / GPU
  segstream bench --json bench.json --plot bench.png --markdown bench.md
  segstream bench --from-json bench.json --markdown bench.md        # re-render, no runs

Pipeline settings (each repeatable: one row per combination, all in one interleaved run):
  segstream bench --compare --overlap on --overlap off \\
                  --resolution 360x480 --resolution 720x1280        # vs the hand loop
  segstream bench --cameras 1 --cameras 4                           # 4 cameras vs one
  segstream bench --cameras 4 --batch 1 --batch 4 --batch-wait-ms 5 # cross-camera batches
  segstream bench --source-fps 30 --engine-policy latency --engine-policy throughput \\
                  --engine-policy auto                              # a 30 fps camera

How it measures (details: docs/benchmarks.md):
  Every figure is measured --repeat times and shown as median (min-max). The runs are
  interleaved: round 1 runs engine, pipeline (and with --compare hand loop, pipeline on
  the clip) for every configuration, round 2 the same in reverse order, and so on, so
  drift on a noisy machine hits all of them alike. Ratios are taken within a round.
  Rows that differ only in pipeline settings share each round's engine and hand-loop run.
  Camera: a live GStreamer test source at --source-fps; by default 1.5x the fastest of
  a few short bare-engine runs made first (30..240 fps; load only ever slows a run, so
  the fastest is what the engine does when the load lifts), so the engine, not the
  camera, limits the pipeline; a run within 10% of that rate is marked * (camera-limited).
  Other processes' CPU use and VM steal are recorded per run; a busy machine is flagged.
  A real ZeroMQ subscriber is attached. Precision is read from each model file.
  With --cameras N the cameras share the calibrated rate (1 and N cameras are offered the
  same frames per second); --source-fps is each camera's rate. Settings that differ
  between rows are in the row's label (ov-off, ep-latency, b4/5ms, 4cam). Every pipeline
  run records each thread's CPU time, shown per group (capture, engine, post, publish,
  the bench's subscriber, other) in the "Where the CPU goes" tables.
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
    p.add_argument("--repeat", "-n", type=positive(int), default=3,
                   help="runs per figure, interleaved; median (min-max) shown (default 3)")
    p.add_argument("--duration", type=positive(float, "a number of seconds"), default=5.0,
                   help="seconds measured per pipeline run (default 5)")
    p.add_argument("--warmup", type=positive(float, "a number of seconds", zero=True),
                   default=2.0,
                   help="seconds of warm-up per engine and pipeline run (default 2)")
    p.add_argument("--threads", type=positive(int),
                   help="engine CPU threads, pipeline and hand loop (default: cores, max 4)")
    p.add_argument("--encoding", default=PublishConfig.encoding, choices=ENCODINGS)
    p.add_argument("--source-fps", type=positive(int),
                   help="each test camera's frame rate (default: 1.5x the fastest of a few "
                        "bare-engine calibration runs, 30..240, shared by the cameras)")
    p.add_argument("--compare", action="store_true",
                   help="also run the hand-written baseline loop and report the speed-up")
    p.add_argument("--compare-frames", type=positive(int), default=600,
                   help="clip length for --compare (default 600: startup stays under 5%%)")
    g = p.add_argument_group("pipeline settings (as for `segstream run`; each repeatable: "
                             "every combination is a row)")
    g.add_argument("--overlap", action="append", choices=OVERLAP_MODES,
                   help=f"post/publish on their own thread (default {PipelineConfig.overlap})")
    g.add_argument("--engine-policy", action="append", choices=ENGINE_POLICIES,
                   help=f"ONNX Runtime threads (default {PipelineConfig.engine_policy})")
    g.add_argument("--batch", action="append", metavar="N",
                   type=positive(int, "a whole number of frames", most=MAX_BATCH),
                   help=f"most cameras per engine call (default {PipelineConfig.batch})")
    g.add_argument("--batch-wait-ms", action="append", metavar="MS",
                   type=positive(float, "a number of milliseconds", zero=True, most=1000),
                   help="with --batch > 1: how long a call waits for other cameras "
                        f"(default {PipelineConfig.batch_wait_ms:g})")
    g.add_argument("--cameras", action="append", metavar="N",
                   type=positive(int, "a whole number of cameras", most=MAX_CAMERAS),
                   help="live test cameras in one pipeline (default 1)")
    g.add_argument("--tta", action="append", choices=TTA_MODES,
                   help="test-time augmentation (flip: two network runs a frame; default "
                        f"{PipelineConfig.tta})")
    p.add_argument("--json", type=Path, help="write the full report (every run) as JSON")
    p.add_argument("--plot", type=Path, help="write FPS/latency plot as PNG")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--from-json", type=Path, metavar="REPORT",
                   help="render a saved --json report (table, --markdown, --plot); runs nothing")
    p.set_defaults(func=run)


def _load_report(path: Path) -> dict:
    from stream.bench_report import upgrade

    if not path.is_file():
        raise FileNotFoundError(f"--from-json: report {path} not found")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--from-json: {path} is not JSON ({e}); give a file written by "
                         "`segstream bench --json`") from None
    return upgrade(report, f"--from-json: {path}")


def _measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from engines.backend import backend_for_path
    from engines.zoo import resolve_model
    from stream.bench import BenchOptions, expand, run_bench

    models = [resolve_model(m) for m in (args.model or [None])]
    for m in models:
        if not m.is_file():
            raise FileNotFoundError(f"model file {m} not found")
    cases = [case for model in models for case in expand(
        [model], args.backend or [backend_for_path(model)], args.resolution or [(360, 480)],
        overlaps=args.overlap or [PipelineConfig.overlap],
        policies=args.engine_policy or [PipelineConfig.engine_policy],
        batches=args.batch or [PipelineConfig.batch],
        waits=args.batch_wait_ms or [PipelineConfig.batch_wait_ms],
        cameras=args.cameras or [1], ttas=args.tta or [PipelineConfig.tta])]
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

    inputs = [*(args.model or []), args.from_json]
    for flag, path, suffixes in (("--json", args.json, (".json",)),
                                 ("--markdown", args.markdown, ()),
                                 ("--plot", args.plot, (".png", ".svg", ".pdf"))):
        if why := output_problem(path, flag, inputs=inputs, suffixes=suffixes):
            print(f"segstream bench: error: {why}", file=sys.stderr)
            return 2
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
