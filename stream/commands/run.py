"""``segstream run``: cameras in, label maps out over ZeroMQ."""

from __future__ import annotations

import argparse

from stream.commands._common import report_errors, setup_logging
from stream.config import ENCODINGS, PipelineConfig, PublishConfig, parse_source_arg
from stream.config import with_default_ids as _ids
from stream.sources import VALID_FORMS

EPILOG = VALID_FORMS + r"""

examples:
  segstream run --source 'test://smpte?width=480&height=360&fps=30'
  segstream run --source front=rtsp://10.0.0.5/live --source rear=v4l2:///dev/video1 \
                --publish tcp://*:5555 --encoding zstd
  segstream run --source 'drive.mp4?loop=1' --model my.onnx --threads 2 --publish ipc:///tmp/seg
  segstream run --source csi://0 --model camvid.engine          # TensorRT on a Jetson

exit status:
  0  stopped by Ctrl-C / SIGTERM / --duration / --max-frames, or every source reached its end
  1  the engine failed (nothing invalid was published)
  2  bad model, source, endpoint or option, or a source failed before delivering any frame
     (a text file named .mp4, an empty or truncated file, a camera this machine lacks)
  3  every source ended and one that had delivered frames failed (retries used up,
     a file broken mid-way): worth a restart (systemd Restart=on-failure)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the streaming pipeline",
                       description="Segment camera streams and publish label maps over ZeroMQ.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", "-s", action="append", required=True, metavar="[ID=]URI",
                   help="camera to read (repeatable)")
    add_engine_args(p)
    p.add_argument("--publish", "-p", action="append", metavar="ENDPOINT",
                   help="ZeroMQ endpoint to bind (repeatable; default tcp://*:5555)")
    p.add_argument("--encoding", choices=ENCODINGS, default="zstd",
                   help="label-map encoding on the wire (default zstd)")
    p.add_argument("--sndhwm", type=int, default=4,
                   help="messages queued per subscriber before it drops (default 4)")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="enable CURVE: folder from `segstream keygen` "
                        "(server key + allowed_clients/)")
    p.add_argument("--stall-timeout", type=float, default=3.0,
                   help="seconds without a frame before a source is rebuilt (default 3)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR",
                   help="address of the metrics server (default 127.0.0.1, this host only; "
                        "0.0.0.0 exposes it on every interface)")
    p.add_argument("--stats-interval", type=float, default=1.0,
                   help="seconds between status lines (0: none)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N label maps")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N seconds")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=run)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model .onnx / .engine / .pt (default: shipped CamVid)")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"),
                   help="engine backend (default: from the model suffix)")
    p.add_argument("--threads", type=int, help="engine CPU threads (default: cores, max 4)")
    p.add_argument("--letterbox", action="store_true",
                   help="keep the aspect ratio (pad) instead of stretching to the model input")


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.runner import run_pipeline

    setup_logging(args.verbose)
    sources = _ids([parse_source_arg(s) for s in args.source])
    sources = tuple(type(s)(uri=s.uri, id=s.id, stall_timeout=args.stall_timeout)
                    for s in sources)
    cfg = PipelineConfig(  # ConfigError (every problem) -> report_errors: exit 2
        sources=sources, model=args.model, backend=args.backend, threads=args.threads,
        letterbox=args.letterbox,
        publish=PublishConfig(endpoints=tuple(args.publish or ("tcp://*:5555",)),
                              encoding=args.encoding, sndhwm=args.sndhwm,
                              curve_keys=args.curve_keys),
        stats_interval=args.stats_interval, metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
        max_frames=args.max_frames, duration=args.duration)
    code, _ = run_pipeline(cfg)
    return code
