"""``segstream subscribe ENDPOINT``: print a summary line per received label map."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

from stream.commands._common import positive, report_errors
from stream.stats import StageTimes
from stream.wire import ClassTable, SourceEvent, terminal_safe

DESCRIPTION = """Connect to a segstream publisher and print one line per label map: camera,
sequence number, size, encoding, payload size, the three most frequent classes, and the
capture->receive latency. Every --stats-interval seconds a line per camera on stderr gives
the message rate, latency p50/p99 and the count of maps lost in transport (sequence gaps
the source did not report as its own drops).

Latency uses the monotonic clock when the publisher is on this host (ipc://, loopback
tcp://), else wall clocks, which are only meaningful when both hosts are synchronised
(NTP/PTP); negative results are shown as '-'.

Exit status: 0 after --count maps or Ctrl-C, 1 when nothing arrived within --timeout,
2 for a bad endpoint or key file."""

EPILOG = """examples:
  segstream subscribe tcp://localhost:5555
  segstream subscribe tcp://vehicle:5555 --camera front --latest-only
  segstream subscribe ipc:///tmp/seg --count 100 --json > maps.jsonl
  segstream subscribe tcp://vehicle:5555 --curve-server-key keys/server.key \\
                      --curve-client-key keys/client-laptop.key_secret
"""


def endpoint(text: str) -> str:
    """An argparse ``type`` for a publisher address another process can reach:
    ``tcp://HOST:PORT`` (port 1..65535) or ``ipc:///PATH``."""
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    if text.startswith("tcp://"):
        host, sep, port = text[len("tcp://"):].rpartition(":")
        if host and sep and port.isdigit() and 1 <= int(port) <= 65535:
            return text
        raise argparse.ArgumentTypeError(f"{text!r} needs a host and a port 1..65535, e.g. "
                                         "tcp://vehicle.local:5555")
    raise argparse.ArgumentTypeError(f"{text!r}: give tcp://HOST:PORT or ipc:///PATH (the "
                                     "publisher's address)")


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """ENDPOINT, camera filter, CURVE keys, timeout and count (shared with ``view``)."""
    p.add_argument("endpoint", metavar="ENDPOINT", type=endpoint,
                   help="publisher address: tcp://HOST:PORT or ipc:///PATH")
    p.add_argument("--camera", "-c", action="append", metavar="ID",
                   help="only this camera (repeatable; default: all)")
    p.add_argument("--count", "-n", type=int, default=0, metavar="N",
                   help="stop after N label maps (default: run until Ctrl-C)")
    p.add_argument("--timeout", type=positive(float, "a number of seconds"), metavar="S",
                   help="give up (exit 1) when no message arrives for S seconds")
    p.add_argument("--curve-server-key", type=Path, metavar="FILE",
                   help="the publisher's public key (server.key) to use CURVE encryption")
    p.add_argument("--curve-client-key", type=Path, metavar="FILE",
                   help="this client's key pair (client-NAME.key_secret)")
    p.add_argument("--max-pixels", type=positive(int, "a number of pixels"), default=8192 * 8192,
                   metavar="N",
                   help="largest label map accepted; bigger frames are refused before they "
                        "are read (default 8192*8192)")
    p.add_argument("--max-backlog-mb", type=positive(float, "a number of MiB"), default=256,
                   metavar="MB",
                   help="most MiB of messages kept waiting when this client falls behind "
                        "(default 256; the oldest maps are dropped beyond it)")


def open_subscriber(args: argparse.Namespace, *, latest_only: bool = False,
                    frames: bool = False) -> Any:
    """A Subscriber from the shared arguments (raises SubscribeError/SecurityError);
    ``frames``: camera frames too (``img/``)."""
    from stream.security import CurveClientConfig, SecurityError
    from stream.subscribe import Subscriber

    if (args.curve_server_key is None) != (args.curve_client_key is None):
        raise SecurityError("CURVE needs both --curve-server-key (the publisher's server.key) "
                            "and --curve-client-key (your client-NAME.key_secret)")
    curve = None
    if args.curve_server_key is not None:
        curve = CurveClientConfig(args.curve_server_key, args.curve_client_key)
    return Subscriber(args.endpoint, cameras=args.camera, latest_only=latest_only,
                      timeout=args.timeout, curve=curve, max_pixels=args.max_pixels,
                      max_backlog_bytes=max(1, int(args.max_backlog_mb * (1 << 20))),
                      frames=frames)


def connection_errors() -> tuple[type[BaseException], ...]:
    from stream.security import SecurityError
    from stream.subscribe import SubscribeError
    from stream.wire import WireError

    return SubscribeError, SecurityError, WireError


def is_same_host(endpoint: str) -> bool:
    """True when the publisher runs on this host, so monotonic clocks compare."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(endpoint).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def top_classes(labels: np.ndarray, table: ClassTable | None, k: int = 3) -> list[dict]:
    """The ``k`` most frequent class ids with their names and pixel fractions."""
    counts = np.bincount(labels.reshape(-1), minlength=256)  # (256,)
    order = np.argsort(-counts, kind="stable")[:k]  # ties: lower id first
    names = [terminal_safe(n, 40) for n in table.names] if table else []
    return [{"id": int(i), "name": names[i] if i < len(names) else f"class{i}",
             "fraction": round(float(counts[i]) / labels.size, 4)}
            for i in order if counts[i] > 0]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "subscribe", help="print received label maps and stream statistics",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--latest-only", action="store_true",
                   help="skip maps that queued up while we were busy (newest per camera)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per message instead of text")
    p.add_argument("--stats-interval", type=positive(float, "a number of seconds", zero=True),
                   default=2.0, metavar="S",
                   help="seconds between statistics lines on stderr (0: off; default 2)")
    p.set_defaults(func=run)


class _Report:
    """Per-camera rate and latency windows, printed as stats lines."""

    def __init__(self, same_host: bool, err: TextIO) -> None:
        self.same_host = same_host
        self.err = err
        self.cams: dict[str, StageTimes] = {}

    def add(self, camera: str, latency_ns: int | None, t_mono: int) -> None:
        times = self.cams.setdefault(camera, StageTimes(window=500))
        if latency_ns is not None:
            times.add("latency", latency_ns)
        times.tick(t_mono)

    def lines(self, sub: Any) -> list[str]:
        clock = "mono" if self.same_host else "wall"
        out = []
        for cam, times in sorted(self.cams.items()):
            lat = times.summary("latency")
            lat_text = (f"latency p50 {lat.p50_ms:.1f} p99 {lat.p99_ms:.1f} ms ({clock})"
                        if lat.count else "latency -")
            out.append(f"[{cam}] {times.fps():.1f} msg/s | {lat_text} | received "
                       f"{times.frames} | lost {sub.stats.lost_by_camera.get(cam, 0)}")
        out.append(f"[all] rejected {sub.stats.rejected} | skipped {sub.stats.skipped} | "
                   f"overflow {sub.stats.overflow} | publisher restarts {sub.stats.restarts}"
                   + (f" | oversize {sub.stats.oversize}" if sub.stats.oversize else "")
                   + (f" | duplicates {sub.stats.duplicates} (one endpoint per publisher "
                      "is enough)" if sub.stats.duplicates else "")
                   + (f" | overflow other {sub.stats.overflow_other}"
                      if sub.stats.overflow_other else ""))
        return out

    def emit(self, sub: Any) -> None:
        for line in self.lines(sub):
            print(line, file=self.err, flush=True)


def _size(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1024:.1f} KiB"


def _text_line(msg: Any, latency_ns: int | None) -> str:
    h, w = msg.shape
    top = " ".join(f"{c['name']} {100 * c['fraction']:.0f}%"
                   for c in top_classes(msg.labels, msg.class_table))
    lat = f"{latency_ns / 1e6:.1f} ms" if latency_ns is not None else "- ms"
    lost = f" | lost {msg.lost}" if msg.lost else ""
    return (f"{msg.camera:>10} seq {msg.seq:>7} {h}x{w} {msg.encoding:<4} "
            f"{_size(msg.payload_bytes):>9} | {top} | {lat}{lost}")


def _json_line(msg: Any, latency_ns: int | None) -> str:
    return json.dumps({
        "type": "labels", "camera": msg.camera, "seq": msg.seq, "shape": list(msg.shape),
        "encoding": msg.encoding, "payload_bytes": msg.payload_bytes,
        "class_table": msg.class_table_id, "dropped": msg.dropped, "lost": msg.lost,
        "t_capture_ns": msg.t_capture_ns, "t_publish_ns": msg.t_publish_ns,
        "t_receive_ns": msg.t_receive_ns,
        "latency_ms": None if latency_ns is None else round(latency_ns / 1e6, 3),
        "top_classes": top_classes(msg.labels, msg.class_table)})


def _event_line(ev: SourceEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps({"type": "source_state", "camera": ev.camera, "state": ev.state,
                           "detail": ev.detail, "t_ns": ev.t_ns})
    state, detail = terminal_safe(ev.state, 40), terminal_safe(ev.detail)
    return f"{ev.camera:>10} event {state}{': ' + detail if detail else ''}"


@report_errors
def run(args: argparse.Namespace) -> int:
    if args.count < 0:
        print("segstream: error: --count must be >= 0", file=sys.stderr)
        return 2
    try:
        sub = open_subscriber(args, latest_only=args.latest_only)
    except connection_errors() as e:
        print(f"segstream: error: {e}", file=sys.stderr)
        return 2
    from stream.subscribe import LabelMessage, SubscribeTimeoutError

    out, err = sys.stdout, sys.stderr
    report = _Report(is_same_host(args.endpoint), err)
    received = 0
    next_stats = time.monotonic() + args.stats_interval
    print(f"segstream: subscribed to {args.endpoint}"
          f"{' cameras ' + ','.join(args.camera) if args.camera else ''}", file=err, flush=True)
    code = 0
    try:
        for msg in sub:
            if isinstance(msg, LabelMessage):
                latency = msg.latency_ns(report.same_host)
                report.add(msg.camera, latency, msg.t_receive_mono_ns)
                line = _json_line(msg, latency) if args.json else _text_line(msg, latency)
                received += 1
            else:
                line = _event_line(msg, args.json)
            print(line, file=out, flush=True)
            if args.stats_interval > 0 and time.monotonic() >= next_stats:
                report.emit(sub)
                next_stats = time.monotonic() + args.stats_interval
            if args.count and received >= args.count:
                break
    except SubscribeTimeoutError as e:
        print(f"segstream: {e}", file=err)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        report.emit(sub)
        sub.close()
    return code
