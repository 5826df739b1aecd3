"""``segstream run``: cameras in, label maps out over ZeroMQ."""

from __future__ import annotations

import argparse
import dataclasses

from engines.backend import ENGINE_POLICIES, TTA_MODES
from stream.commands._common import report_errors, setup_logging
from stream.config import (
    ENCODINGS,
    FRAME_RATE_ON,
    OVERLAP_MODES,
    ConfigError,
    PipelineConfig,
    PreviewConfig,
    PublishConfig,
    parse_source_arg,
)
from stream.config import with_default_ids as _ids
from stream.sources import VALID_FORMS

EPILOG = VALID_FORMS + r"""

examples:
  segstream run --source 'test://smpte?width=480&height=360&fps=30'
  segstream run --source front=rtsp://10.0.0.5/live --source rear=v4l2:///dev/video1 \
                --publish tcp://*:5555 --encoding zstd
  segstream run --source 'drive.mp4?loop=1' --model my.onnx --threads 2 --publish ipc:///tmp/seg
  segstream run --source csi://0 --model camvid.engine          # TensorRT on a Jetson
  segstream run -s cam0=rtsp://10.0.0.5/a -s cam1=rtsp://10.0.0.6/b -s cam2=v4l2:///dev/video0 \
                --batch 3 --batch-wait-ms 5     # up to 3 cameras per engine call
  segstream run --source front=rtsp://10.0.0.5/live --publish-frames 5 --frame-scale 0.5
                # camera frames on the wire too: `segstream view` draws overlays remotely
  segstream run --source 'test://ball?width=480&height=360' --preview 8080
                # then open http://127.0.0.1:8080/ in a browser

exit status:
  0  stopped by Ctrl-C / SIGTERM / --duration / --max-frames, or every source reached its end
  1  the engine failed (nothing invalid was published), or the GPU was not usable at
     start (no CUDA context yet, device memory), or an address to listen on is not on
     this machine yet (DHCP at boot): worth a restart
  2  bad model, source, endpoint or option, or a source failed before delivering any frame
     (a text file named .mp4, an empty or truncated file, a camera kind this machine
     lacks, e.g. csi:// without nvarguscamerasrc). A V4L2 device that does not exist is
     not an error: it is retried like an unplugged camera (USB cameras enumerate late at
     boot), with a warning
  3  every source ended and one that had delivered frames failed (retries used up,
     a file broken mid-way): worth a restart (systemd Restart=on-failure)
  130  a second Ctrl-C / SIGTERM while stopping: exit at once, without flushing
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
    p.add_argument("--publish-frames", type=float, nargs="?", const=FRAME_RATE_ON,
                   default=PublishConfig.publish_frames, metavar="RATE",
                   help=f"also publish the camera frames (JPEG, topic img/) so that remote "
                        f"clients can draw overlays: at most RATE per second per camera "
                        f"(default {FRAME_RATE_ON:g}), encoded only while a client subscribes "
                        f"to them (off without this flag)")
    p.add_argument("--frame-scale", type=float, default=PublishConfig.frame_scale,
                   metavar="S", help=f"size of published frames relative to the camera's, "
                                     f"(0, 1] (default {PublishConfig.frame_scale:g})")
    p.add_argument("--frame-quality", type=int, default=PublishConfig.frame_quality,
                   metavar="Q", help=f"JPEG quality of published frames, 1..100 (default "
                                     f"{PublishConfig.frame_quality})")
    p.add_argument("--stall-timeout", type=float, default=3.0,
                   help="seconds without a frame before a source is rebuilt (default 3)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR",
                   help="address of the metrics server (default 127.0.0.1, this host only; "
                        "0.0.0.0 exposes it on every interface)")
    p.add_argument("--preview", metavar="[HOST:]PORT",
                   help="live view in a browser at http://HOST:PORT/: each camera's frame with "
                        "its mask, legend, fps and latency (default host 127.0.0.1, this "
                        "machine only; no authentication; PORT 0: any free port)")
    p.add_argument("--preview-fps", type=float, default=PreviewConfig.fps, metavar="N",
                   help=f"preview frames per second per camera (default {PreviewConfig.fps:g})")
    p.add_argument("--preview-width", type=int, default=PreviewConfig.max_width, metavar="PX",
                   help=f"preview pictures are scaled down to at most this width (default "
                        f"{PreviewConfig.max_width})")
    p.add_argument("--preview-quality", type=int, default=PreviewConfig.quality, metavar="Q",
                   help=f"JPEG quality of the preview pictures, 1..100 (default "
                        f"{PreviewConfig.quality})")
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
    p.add_argument("--batch", type=int, default=PipelineConfig.batch, metavar="N",
                   help="up to N cameras' newest frames in one engine call (default "
                        f"{PipelineConfig.batch}: one frame per call); a fixed-batch ONNX is "
                        "made to take batches at load")
    p.add_argument("--batch-wait-ms", type=float, default=PipelineConfig.batch_wait_ms,
                   metavar="MS", help="how long a call's first frame may wait for other "
                                      "cameras' frames (default "
                                      f"{PipelineConfig.batch_wait_ms:g}: take what is there)")
    p.add_argument("--overlap", choices=OVERLAP_MODES, default=PipelineConfig.overlap,
                   help="post-process and publish on their own thread while the engine runs "
                        f"the next frame (default {PipelineConfig.overlap})")
    p.add_argument("--engine-policy", choices=ENGINE_POLICIES,
                   default=PipelineConfig.engine_policy,
                   help="ONNX Runtime threads: latency (spin during runs), throughput (sleep), "
                        f"auto (by measured engine load; default {PipelineConfig.engine_policy})")
    p.add_argument("--tta", choices=TTA_MODES, default=PipelineConfig.tta,
                   help="test-time augmentation: flip also runs each frame mirrored and "
                        "averages the two logit maps (twice the network time a frame; "
                        f"default {PipelineConfig.tta})")


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.runner import run_pipeline

    setup_logging(args.verbose)
    try:
        preview = PreviewConfig(fps=args.preview_fps, max_width=args.preview_width,
                                quality=args.preview_quality)
    except ConfigError as e:  # name the flags' key path, as a launch file's errors do
        raise ConfigError(errors=[f"preview.{err}" for err in e.errors]) from None
    if args.preview is not None:
        from stream.preview import parse_listen

        host, port = parse_listen(args.preview)
        preview = dataclasses.replace(preview, host=host, port=port)
    sources = _ids([parse_source_arg(s) for s in args.source])
    sources = tuple(type(s)(uri=s.uri, id=s.id, stall_timeout=args.stall_timeout)
                    for s in sources)
    cfg = PipelineConfig(  # ConfigError (every problem) -> report_errors: exit 2
        sources=sources, model=args.model, backend=args.backend, threads=args.threads,
        letterbox=args.letterbox, batch=args.batch, batch_wait_ms=args.batch_wait_ms,
        overlap=args.overlap, engine_policy=args.engine_policy, tta=args.tta,
        publish=PublishConfig(endpoints=tuple(args.publish or ("tcp://*:5555",)),
                              encoding=args.encoding, sndhwm=args.sndhwm,
                              curve_keys=args.curve_keys, publish_frames=args.publish_frames,
                              frame_scale=args.frame_scale, frame_quality=args.frame_quality),
        stats_interval=args.stats_interval, metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
        preview=preview,
        max_frames=args.max_frames, duration=args.duration)
    code, _ = run_pipeline(cfg)
    return code
