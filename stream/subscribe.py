"""ZeroMQ subscriber: validated label maps, class tables and source events.

    with Subscriber("tcp://vehicle:5555", cameras=["front"]) as sub:
        for msg in sub:
            if isinstance(msg, LabelMessage):
                use(msg.labels)             # (H, W) uint8, treat as read-only
            else:                           # SourceEvent
                print(msg.camera, msg.state)

Malformed or wrong-version messages are logged, counted in ``rejected`` and skipped.
Per camera, gaps in ``seq`` that the source did not report as its own drops (the header's
``dropped`` counter) are counted as ``lost``: messages ZeroMQ dropped because this
subscriber fell behind its ``sndhwm`` queue, or that the network lost on reconnect.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from stream.security import CurveClientConfig, configure_client
from stream.wire import (
    DEFAULT_MAX_PIXELS,
    TOPIC_CLASS_TABLE,
    TOPIC_EVENT,
    TOPIC_LABELS,
    ClassTable,
    LabelsHeader,
    PayloadDecoder,
    SourceEvent,
    WireError,
    check_camera_id,
    parse_header,
)

log = logging.getLogger("segstream.subscribe")
_MAX_DRAIN = 1000  # latest_only: most messages read in one drain
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_DRAIN_GRACE_MS = 1  # latest_only: wait this long for more while draining a backlog


class SubscribeError(RuntimeError):
    """The subscriber could not start (bad endpoint or keys)."""


class SubscribeTimeoutError(TimeoutError):
    """No message arrived within the timeout."""


@dataclass(frozen=True)
class LabelMessage:
    """One received label map with its metadata (times in ns, see docs/wire-format.md).

    Attributes:
        labels: (H, W) uint8 class ids; may share the message buffer: treat as read-only.
        class_table: the table named by ``class_table_id``, once it has been received.
        t_receive_ns / t_receive_mono_ns: wall / monotonic clock at decode time here.
        payload_bytes: encoded size on the wire.
        lost: messages of this camera lost in transport just before this one.
    """

    camera: str
    seq: int
    t_capture_ns: int
    t_capture_mono_ns: int
    t_infer_ns: int
    t_publish_ns: int
    shape: tuple[int, int]
    encoding: str
    class_table_id: str
    dropped: int
    publisher: str
    labels: np.ndarray
    class_table: ClassTable | None
    t_receive_ns: int
    t_receive_mono_ns: int
    payload_bytes: int
    lost: int = 0

    def latency_ns(self, same_host: bool) -> int | None:
        """Capture -> receive. Monotonic clocks on the same host, else wall clocks
        (meaningful only with synchronised clocks); None when the result is negative."""
        if same_host:
            d = self.t_receive_mono_ns - self.t_capture_mono_ns
        else:
            d = self.t_receive_ns - self.t_capture_ns
        return d if d >= 0 else None


@dataclass
class _Track:
    publisher: str
    seq: int
    dropped: int


@dataclass
class SubscriberStats:
    """Counters since start: decoded maps, events, rejects, transport losses."""

    received: int = 0
    events: int = 0
    rejected: int = 0
    skipped: int = 0  # received but superseded (latest_only)
    lost: int = 0
    restarts: int = 0  # publisher restarted or seq went backwards
    handshake_failures: int = 0  # security handshakes the publisher refused / failed
    lost_by_camera: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


class Subscriber:
    """Connects a SUB socket to a publisher and yields decoded messages.

    Args:
        endpoint: ``tcp://host:5555`` or ``ipc:///path``.
        cameras: only these camera ids (exact match); None: every camera.
        latest_only: yield only the newest label map per camera that is waiting, skipping
            older ones (small receive queue, socket drained on every read). Events are
            never skipped.
        timeout: seconds ``receive()`` waits by default, and iteration waits before
            raising :class:`SubscribeTimeoutError`; None waits forever.
        curve: CURVE client keys, required when the publisher uses CURVE.
        rcvhwm: receive queue length in messages (default 2 if latest_only else 100).
        max_pixels: largest label map accepted.
        heartbeat_ms: TCP keepalive interval (rounded to whole seconds, at least 1): a
            publisher host that vanished is dropped after about 4x this and ZeroMQ
            reconnects (a publisher that exits closes the connection and is noticed at
            once). 0: keepalive off.
        context: share a ZeroMQ context (``inproc://`` needs the publisher's).
    """

    def __init__(self, endpoint: str, *, cameras: Iterable[str] | None = None,
                 latest_only: bool = False, timeout: float | None = None,
                 curve: CurveClientConfig | None = None, rcvhwm: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, heartbeat_ms: int = 2000,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.cameras = None if cameras is None else frozenset(check_camera_id(c)
                                                              for c in cameras)
        self.latest_only = latest_only
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.stats = SubscriberStats()
        self.class_tables: dict[str, ClassTable] = {}
        self._tracks: dict[str, _Track] = {}
        self._pending: deque[LabelMessage | SourceEvent] = deque()
        self._decoder = PayloadDecoder()
        self._handshake_error = ""
        self._own_ctx = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            s = self._sock
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, (2 if latest_only else 100) if rcvhwm is None else rcvhwm)
            if heartbeat_ms > 0:
                # Dead-publisher detection by TCP keepalive, not ZMTP heartbeats: a slow
                # reader fills its receive queue, libzmq stops reading the connection, its
                # own heartbeat timeout then fires on a live publisher, and the reconnect
                # that follows aborts libzmq (4.3.x, "Assertion failed: _input_stopped",
                # zeromq/libzmq#3937; tests/stream/test_pubsub.py reproduces it). The
                # kernel keeps answering keepalives however slowly the application reads.
                idle = max(1, round(heartbeat_ms / 1000))
                s.setsockopt(zmq.TCP_KEEPALIVE, 1)
                s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle)
                s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, idle)
                s.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
            if curve is not None:
                configure_client(s, curve)
            s.setsockopt(zmq.SUBSCRIBE, TOPIC_CLASS_TABLE.encode())
            for cam in sorted(self.cameras) if self.cameras else [""]:
                s.setsockopt(zmq.SUBSCRIBE, (TOPIC_LABELS + cam).encode())
                s.setsockopt(zmq.SUBSCRIBE, (TOPIC_EVENT + cam).encode())
            self._monitor = s.get_monitor_socket(_HANDSHAKE_FAILED)
            try:
                s.connect(endpoint)
            except zmq.ZMQError as e:
                raise SubscribeError(f"cannot connect to {endpoint!r}: {e.strerror}; expected "
                                     "e.g. tcp://host:5555 or ipc:///path") from None
        except BaseException:
            self._close_sockets()
            raise

    # ------------------------------------------------------------------ receiving

    def receive(self, timeout: float | None = None) -> LabelMessage | SourceEvent | None:
        """The next label map or event; None if nothing came within ``timeout`` s
        (None: the constructor's timeout; ``math.inf`` or a None default: wait forever)."""
        if timeout is None:
            timeout = self.timeout
        forever = timeout is None or math.isinf(timeout)
        deadline = None if forever else time.monotonic() + timeout
        while not self._pending:
            wait = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
            if self._sock.poll(int(min(wait, 0.5) * 1000), zmq.POLLIN):
                self._read()
            else:
                self._check_handshakes()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        return self._pending.popleft()

    def __iter__(self) -> Iterator[LabelMessage | SourceEvent]:
        while True:
            msg = self.receive()
            if msg is None:
                why = (f"; {self.stats.handshake_failures} security handshake(s) failed, last: "
                       f"{self._handshake_error}" if self.stats.handshake_failures else "")
                raise SubscribeTimeoutError(
                    f"no message from {self.endpoint} in {self.timeout} s: is the publisher "
                    f"running and reachable (and, with CURVE, are the keys right)?{why}")
            yield msg

    def _read(self) -> None:
        """Receive one message (or, latest_only, everything waiting) into ``_pending``."""
        batch: list[list[zmq.Frame]] = []
        while len(batch) < _MAX_DRAIN:
            try:
                batch.append(self._sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                # A backlog is being drained: ZeroMQ's I/O thread refills the queue from
                # the kernel buffers within microseconds, so wait briefly for more.
                if len(batch) > 1 and self._sock.poll(_DRAIN_GRACE_MS, zmq.POLLIN):
                    continue
                break
            if not self.latest_only:
                break
        newest: dict[str, tuple[LabelsHeader, memoryview, int]] = {}
        for frames in batch:
            parts = [f.buffer for f in frames]
            try:
                header = parse_header(parts, max_pixels=self.max_pixels)
            except WireError as e:
                self._reject(e)
                continue
            if isinstance(header, ClassTable):
                self.class_tables[header.id] = header
            elif isinstance(header, SourceEvent):
                if self.cameras is None or header.camera in self.cameras:
                    self.stats.events += 1
                    self._pending.append(header)
            elif self.cameras is None or header.camera in self.cameras:
                lost = self._track(header)
                if header.camera in newest:
                    self.stats.skipped += 1
                    lost += newest[header.camera][2]
                newest[header.camera] = (header, parts[2], lost)
        t_mono, t_wall = time.monotonic_ns(), time.time_ns()
        for header, payload, lost in newest.values():
            try:
                labels = self._decoder.decode(header, payload)
            except WireError as e:
                self._reject(e)
                continue
            self.stats.received += 1
            self._pending.append(LabelMessage(
                camera=header.camera, seq=header.seq, t_capture_ns=header.t_capture_ns,
                t_capture_mono_ns=header.t_capture_mono_ns, t_infer_ns=header.t_infer_ns,
                t_publish_ns=header.t_publish_ns, shape=header.shape, encoding=header.encoding,
                class_table_id=header.class_table, dropped=header.dropped,
                publisher=header.publisher, labels=labels,
                class_table=self.class_tables.get(header.class_table), t_receive_ns=t_wall,
                t_receive_mono_ns=t_mono, payload_bytes=payload.nbytes, lost=lost))

    def _track(self, h: LabelsHeader) -> int:
        """Update the camera's sequence state; returns messages lost before ``h``."""
        prev = self._tracks.get(h.camera)
        self._tracks[h.camera] = _Track(h.publisher, h.seq, h.dropped)
        if prev is None:
            return 0
        if prev.publisher != h.publisher or h.seq <= prev.seq:
            self.stats.restarts += 1
            log.info("%s: stream restarted (seq %d -> %d)", h.camera, prev.seq, h.seq)
            return 0
        lost = max(0, (h.seq - prev.seq - 1) - max(0, h.dropped - prev.dropped))
        if lost:
            self.stats.lost += lost
            by_cam = self.stats.lost_by_camera
            by_cam[h.camera] = by_cam.get(h.camera, 0) + lost
        return lost

    def _check_handshakes(self) -> None:
        """Count failed security handshakes and explain the first of each kind."""
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = ev["event"]
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                text = (f"the publisher refused this client's CURVE key (ZAP status "
                        f"{ev['value']}): add its public .key file to the publisher's "
                        "allowed_clients/ folder")
            else:
                text = ("the security handshake failed: use CURVE keys exactly when the "
                        "publisher does, with --curve-server-key set to its server.key")
            self.stats.handshake_failures += 1
            if text != self._handshake_error:
                log.warning("%s: %s", self.endpoint, text)
            self._handshake_error = text

    def _reject(self, err: WireError) -> None:
        self.stats.rejected += 1
        self.stats.last_error = str(err)
        n = self.stats.rejected
        if n <= 10 or n % 100 == 0:
            log.warning("rejected message #%d from %s: %s", n, self.endpoint, err)

    # ------------------------------------------------------------------ lifetime

    def _close_sockets(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            self._sock.disable_monitor()
            monitor.close(linger=0)
        self._sock.close(linger=0)
        if self._own_ctx:
            self._ctx.term()

    def close(self) -> None:
        if not self._sock.closed:
            self._close_sockets()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
