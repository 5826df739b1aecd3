"""``segstream probe SOURCE``: open one source and report what it delivers."""

from __future__ import annotations

import argparse
import time
from typing import Any

from stream.commands._common import positive, report_errors

DESCRIPTION = """Open one source the way `segstream run` does, and print the resolved GStreamer
pipeline, the negotiated caps, state changes, and the measured frame rate for a few
seconds. Use it to check a camera, URL or file before deploying a launch file.
Exit status: 0 when frames arrived, 1 when none did, 2 for a bad source string."""

EPILOG = """examples:
  segstream probe 'test://ball?width=640&height=480&fps=30'
  segstream probe 'rtsp://user:pass@10.0.0.5:554/stream1?transport=tcp' --seconds 10
  segstream probe 'v4l2:///dev/video0?width=1280&height=720&fps=30&format=mjpeg'
  segstream probe 'csi://0?width=1920&height=1080&fps=30'
  segstream probe '/data/drive.mp4?realtime=0'        # decode as fast as possible
  segstream probe --backend opencv /data/drive.mp4    # the fallback without GStreamer
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "probe", help="check a source: pipeline, caps, frame rate", description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE",
                   help="[ID=]URI, as for `segstream run --source` (see its --help)")
    p.add_argument("--seconds", type=positive(float, "a number of seconds"), default=5.0,
                   help="how long to measure (default 5; a file may end sooner)")
    p.add_argument("--backend", choices=("auto", "gstreamer", "opencv"), default="auto",
                   help="capture backend (default auto: GStreamer if importable)")
    p.add_argument("--stall-timeout", type=positive(float, "a number of seconds"), default=3.0,
                   help="seconds without a frame before the source is rebuilt (default 3)")
    p.set_defaults(func=run)


@report_errors
def run(args: argparse.Namespace) -> int:
    from stream.capture import open_capture
    from stream.capture_base import CaptureOptions
    from stream.sources import parse_source_args, redact

    (spec,) = parse_source_args([args.source])
    print(f"source    {spec.id} = {spec.display} ({spec.kind}, "
          f"{'live' if spec.live else 'file'})")
    print(f"pipeline  {redact(spec.pipeline)}", flush=True)

    def on_state(camera: str, state: str, detail: str) -> None:
        print(f"  [{camera}] {state}{': ' + detail if detail else ''}", flush=True)

    opts = CaptureOptions(stall_timeout=args.stall_timeout,
                          poll_interval=min(0.1, args.stall_timeout))
    t_open = time.monotonic_ns()
    first = last = None
    with open_capture(spec, backend=args.backend, options=opts, on_state=on_state) as cap:
        deadline = time.monotonic() + args.seconds
        next_line = time.monotonic() + 1.0
        while time.monotonic() < deadline and not cap.finished:
            frame = cap.latest(0.2)
            if frame is not None:
                first = first or frame
                last = frame
            if time.monotonic() >= next_line:
                st = cap.stats()
                print(f"  {st.captured:6d} frames  {st.fps:6.1f} fps  dropped {st.dropped}  "
                      f"{st.state}", flush=True)
                next_line += 1.0
        st = cap.stats()
    print(f"backend   {st.backend}")
    print(f"caps      {st.caps or '-'}")
    if first is None or last is None:
        print(f"no frames within {args.seconds:g} s (state {st.state}"
              f"{', last error: ' + st.last_error if st.last_error else ''})")
        return 1
    span = (last.t_capture_mono - first.t_capture_mono) / 1e9
    rate = f"{(last.seq - first.seq) / span:.2f} fps" if span > 0 else "-"
    print(f"frames    {st.captured} captured, {st.dropped} dropped by this probe, "
          f"{st.reconnects} reconnects, {st.errors} errors")
    print(f"size      {first.shape[1]}x{first.shape[0]} BGR")
    print(f"first     {(first.t_capture_mono - t_open) / 1e6:.0f} ms after opening")
    print(f"rate      {rate} (frames {first.seq}..{last.seq})")
    return 0
