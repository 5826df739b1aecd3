"""ZeroMQ subscriber: validated label maps, class tables and source events.

    with Subscriber("tcp://vehicle:5555", cameras=["front"]) as sub:
        for msg in sub:
            if isinstance(msg, LabelMessage):
                use(msg.labels)             # (H, W) uint8, treat as read-only
            else:                           # SourceEvent
                print(msg.camera, msg.state)

With ``frames=True`` it also yields camera frames (:class:`FrameMessage`, topic ``img/``,
wire 1.2) when the publisher sends them; :class:`FramePairer` matches them with their label
maps (:mod:`stream.sub_frames`). A frame whose JPEG is corrupt is counted in
``frames_bad``, logged once and skipped.

Malformed or wrong-version messages are logged, counted in ``rejected`` and skipped.
The publisher repeats every camera's current state (wire 1.1) so that late joiners learn
it; a repeat of the state already seen is not yielded again.
Per camera, gaps in ``seq`` that the source did not report as its own drops (the header's
``dropped`` counter) are counted as ``lost``: maps the publisher dropped for this
subscriber, or that the network lost on reconnect. Maps this subscriber's own queue
dropped because the application read slower than they came are counted apart, in
``overflow``.

A reader thread (:mod:`stream.sub_pump`) keeps the socket drained whatever the
application's pace, so libzmq never stops reading the connection (which, with a slow
reader and a connection that then ends, aborts libzmq 4.3.x); the backlog is bounded by
``rcvhwm``.
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

from stream.security import CurveClientConfig, configure_client
from stream.sub_frames import FrameMessage, FramePairer, decode_frame
from stream.sub_pump import DEFAULT_MAX_BACKLOG_BYTES, SocketPump
from stream.wire import (
    DEFAULT_MAX_PIXELS,
    MAX_HEADER_BYTES,
    TOPIC_CLASS_TABLE,
    TOPIC_EVENT,
    TOPIC_FRAME,
    TOPIC_LABELS,
    ClassTable,
    LabelsHeader,
    PayloadDecoder,
    SourceEvent,
    WireError,
    check_camera_id,
    parse_header,
)
from stream.wire_frames import FrameHeader

__all__ = ["FrameMessage", "FramePairer", "LabelMessage", "SourceEvent", "SubscribeError",
           "SubscribeTimeoutError", "Subscriber", "SubscriberStats", "max_frame_bytes"]
log = logging.getLogger("segstream.subscribe")
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
# latest_only: maps waiting per camera (a frame lags its map by a few: pairs survive), and
# cameras whose maps wait at once; the backlog's byte bound applies on top.
LATEST_PER_CAMERA = 8
LATEST_CAMERAS = 64
_SOCKET_HWM = 64  # libzmq's own queue: the reader thread keeps it near empty


def max_frame_bytes(max_pixels: int) -> int:
    """Largest frame a valid message can have for maps of at most ``max_pixels``: an RLE
    payload (4 + 5 bytes a run, one run a pixel at worst), a zstd frame of incompressible
    data (``n + n/256`` plus headers), or a 1 MiB header; plus slack. libzmq refuses (and
    drops the connection of) any larger frame before allocating it."""
    return max(4 + 5 * max_pixels, max_pixels + (max_pixels >> 8) + 1024,
               MAX_HEADER_BYTES) + (64 << 10)


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
    overflow: int = 0  # dropped from this subscriber's queue: the application fell behind
    overflow_other: int = 0  # class tables / events dropped from that queue (it was full)
    oversize: int = 0  # messages refused on arrival: header frame over the limit
    restarts: int = 0  # publisher restarted or seq went backwards
    duplicates: int = 0  # a map not newer than one received from its publisher: dropped
    handshake_failures: int = 0  # security handshakes the publisher refused / failed
    frames: int = 0  # camera frames decoded and handed out (frames=True)
    frames_bad: int = 0  # frames whose JPEG was corrupt (skipped; the first one logged)
    frames_overflow: int = 0  # frames dropped unread: queue full, or superseded (latest_only)
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
        rcvhwm: most label maps waiting to be read (default 100; under latest_only
            ``LATEST_PER_CAMERA`` per camera for up to ``LATEST_CAMERAS`` cameras, and a
            camera's map beyond its share drops that camera's oldest, never another
            camera's); beyond it the oldest is dropped and counted in ``overflow``.
        max_pixels: largest label map accepted. Also bounds memory: ZeroMQ refuses any
            frame larger than a valid message of that size can have
            (:func:`max_frame_bytes`: ~5x ``max_pixels`` for worst-case RLE) before
            allocating it.
        max_backlog_bytes: most bytes of messages waiting to be read (default 256 MiB);
            beyond it the oldest label maps are dropped (``overflow``), then the oldest
            class tables / events (``overflow_other``). With ``rcvhwm`` and
            ``max_pixels`` this bounds the subscriber's memory whatever a publisher sends.
        heartbeat_ms: TCP keepalive interval (rounded to whole seconds, at least 1): a
            publisher host that vanished is dropped after about 4x this and ZeroMQ
            reconnects (a publisher that exits closes the connection and is noticed at
            once). 0: keepalive off.
        context: share a ZeroMQ context (``inproc://`` needs the publisher's).
        frames: also subscribe to camera frames (``img/``) and yield :class:`FrameMessage`
            s; the publisher sends them only when run with ``--publish-frames`` and only
            while someone subscribes. At most ``rcvhwm`` frames wait, apart from the maps;
            under ``latest_only`` the newest frame per camera is kept, and so is the label
            map of the same ``seq`` (pairs survive).
    """

    def __init__(self, endpoint: str, *, cameras: Iterable[str] | None = None,
                 latest_only: bool = False, timeout: float | None = None,
                 curve: CurveClientConfig | None = None, rcvhwm: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, heartbeat_ms: int = 2000,
                 context: zmq.Context | None = None,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 frames: bool = False) -> None:
        self.endpoint = endpoint
        self.cameras = None if cameras is None else frozenset(check_camera_id(c)
                                                              for c in cameras)
        self.latest_only = latest_only
        self.frames = frames
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.stats = SubscriberStats()
        self.class_tables: dict[str, ClassTable] = {}
        self._states: dict[str, SourceEvent] = {}  # camera -> its last state seen
        self._tracks: dict[str, _Track] = {}
        self._overflowed: dict[bytes, int] = {}  # topic -> maps dropped here, not yet seen
        self._pending: deque[LabelMessage | SourceEvent | FrameMessage] = deque()
        self._decoder = PayloadDecoder()
        self._frames_superseded = 0  # frames skipped under latest_only
        self._handshake_error = ""
        self._own_ctx = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            s = self._sock
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, _SOCKET_HWM)
            s.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(max_pixels))
            if heartbeat_ms > 0:
                # Dead-publisher detection by TCP keepalive, not ZMTP heartbeat timeouts:
                # the kernel answers keepalives however busy this process is, while a
                # heartbeat timeout fires on a live publisher whenever reading stalls, and
                # that reconnect can abort libzmq 4.3.x (see stream.sub_pump).
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
                if frames:
                    s.setsockopt(zmq.SUBSCRIBE, (TOPIC_FRAME + cam).encode())
            self._monitor = s.get_monitor_socket(_HANDSHAKE_FAILED)
            try:
                s.connect(endpoint)
            except zmq.ZMQError as e:
                raise SubscribeError(f"cannot connect to {endpoint!r}: {e.strerror}; expected "
                                     "e.g. tcp://host:5555 or ipc:///path") from None
            self._pump = SocketPump(
                s, self._monitor, label_topic=TOPIC_LABELS.encode(),
                max_labels=(LATEST_CAMERAS * LATEST_PER_CAMERA if latest_only else 100)
                if rcvhwm is None else rcvhwm,
                per_topic=LATEST_PER_CAMERA if latest_only and rcvhwm is None else None,
                max_bytes=max_backlog_bytes, max_header_bytes=MAX_HEADER_BYTES,
                table_topic=TOPIC_CLASS_TABLE.encode(),
                on_monitor_event=self._on_monitor_event)
        except BaseException:
            self._close_sockets()
            raise

    # ------------------------------------------------------------------ receiving

    def receive(self, timeout: float | None = None
                ) -> LabelMessage | SourceEvent | FrameMessage | None:
        """The next label map, event or frame; None if nothing came within ``timeout`` s
        (None: the constructor's timeout; ``math.inf`` or a None default: wait forever)."""
        if timeout is None:
            timeout = self.timeout
        forever = timeout is None or math.isinf(timeout)
        deadline = None if forever else time.monotonic() + timeout
        while not self._pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            batch, overflowed = self._pump.take(wait, everything=self.latest_only)
            self.stats.overflow = self._pump.overflow
            self.stats.overflow_other = self._pump.overflow_other
            self.stats.oversize = self._pump.oversize
            self.stats.frames_overflow = self._pump.overflow_frames + self._frames_superseded
            if batch:
                self._process(batch, overflowed)
            elif self._pump.error is not None:
                raise SubscribeError(f"{self.endpoint}: the reader thread stopped: "
                                     f"{self._pump.error}")
            elif not self._pump.running:
                raise SubscribeError(f"{self.endpoint}: the subscriber is closed")
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self._pending.popleft()

    def __iter__(self) -> Iterator[LabelMessage | SourceEvent | FrameMessage]:
        while True:
            msg = self.receive()
            if msg is None:
                raise self.timeout_error()
            yield msg

    def timeout_error(self) -> SubscribeTimeoutError:
        """The error of ``timeout`` seconds without a message: what to check, and the last
        security handshake failure if any."""
        why = (f"; {self.stats.handshake_failures} security handshake(s) failed, last: "
               f"{self._handshake_error}" if self.stats.handshake_failures else "")
        if (self.cameras is not None and self.class_tables and not self.stats.received
                and not self._states):
            # The publisher sends its class tables to every new subscriber: it is up and
            # reachable, yet nothing of these cameras ever came (a map or a state event):
            # it publishes no camera of that name. (One that came and stopped is a gap.)
            names = ", ".join(repr(c) for c in sorted(self.cameras))
            return SubscribeTimeoutError(
                f"no message for camera {names} from {self.endpoint} in {self.timeout} s, "
                "although the publisher is up (its class table arrived): check the camera "
                "id; subscribing without a camera filter shows the cameras it publishes")
        return SubscribeTimeoutError(
            f"no message from {self.endpoint} in {self.timeout} s: is the publisher "
            f"running and reachable (and, with CURVE, are the keys right)?{why}")

    def _process(self, batch: list[list[zmq.Frame]], overflowed: dict[bytes, int]) -> None:
        """Decode received messages into ``_pending``: events as they come, then label
        maps, then frames. latest_only: the newest map and frame per camera of the batch,
        and the map paired with that frame; other maps are tracked and counted as skipped.
        ``overflowed``: per topic, maps this subscriber's queue dropped before these (not
        counted as lost; kept until a map of that camera comes, since a batch may hold
        only class tables or events)."""
        for topic, n in overflowed.items():
            self._overflowed[topic] = self._overflowed.get(topic, 0) + n
        maps: list[tuple[LabelsHeader, memoryview, int]] = []  # + own drops before it
        frames: dict[str, list[tuple[FrameHeader, memoryview]]] = {}  # by camera
        for zframes in batch:
            parts = [f.buffer for f in zframes]
            try:
                header = parse_header(parts, max_pixels=self.max_pixels)
            except WireError as e:
                self._reject(e)
                continue
            if isinstance(header, ClassTable):
                self.class_tables[header.id] = header
            elif isinstance(header, SourceEvent):
                if self._states.get(header.camera) == header:
                    continue  # the publisher repeating a camera's current state
                self._states[header.camera] = header
                if self.cameras is None or header.camera in self.cameras:
                    self.stats.events += 1
                    self._pending.append(header)
            elif self.cameras is not None and header.camera not in self.cameras:
                continue
            elif isinstance(header, FrameHeader):
                if self.frames:
                    frames.setdefault(header.camera, []).append((header, parts[2]))
            else:
                known = self._overflowed.pop((TOPIC_LABELS + header.camera).encode(), 0)
                maps.append((header, parts[2], known))
        maps = self._without_duplicates(maps)
        keep = self._kept(maps, frames)
        t_mono, t_wall = time.monotonic_ns(), time.time_ns()
        carried: dict[str, int] = {}  # camera -> lost before maps superseded unread
        for i, (header, payload, known) in enumerate(maps):
            cam = header.camera
            if i not in keep:  # superseded unread (latest_only): track only
                self.stats.skipped += 1
                carried[cam] = carried.get(cam, 0) + self._track(header, known)
                continue
            try:
                labels = self._decoder.decode(header, payload)
            except WireError as e:
                # Not tracked: a corrupt message must not move the camera's sequence
                # state (its gap then shows as one lost map, which it is).
                self._reject(e)
                continue
            lost = carried.pop(cam, 0) + self._track(header, known)
            self.stats.received += 1
            self._pending.append(LabelMessage(
                camera=cam, seq=header.seq, t_capture_ns=header.t_capture_ns,
                t_capture_mono_ns=header.t_capture_mono_ns, t_infer_ns=header.t_infer_ns,
                t_publish_ns=header.t_publish_ns, shape=header.shape, encoding=header.encoding,
                class_table_id=header.class_table, dropped=header.dropped,
                publisher=header.publisher, labels=labels,
                class_table=self.class_tables.get(header.class_table), t_receive_ns=t_wall,
                t_receive_mono_ns=t_mono, payload_bytes=payload.nbytes, lost=lost))
        for items in frames.values():
            for header, payload in items:
                self._frame(header, payload, t_wall, t_mono)

    def _without_duplicates(self, maps: list[tuple[LabelsHeader, memoryview, int]]
                            ) -> list[tuple[LabelsHeader, memoryview, int]]:
        """Drop (and count) a map that is not newer than the camera's last one from the
        same publisher: a copy from a second endpoint of that publisher, back to back or
        behind (one connection runs ahead of the other). A publisher's seq never goes back
        (a restart is a new publisher id), so only a 1.0 publisher, which sends no id, can
        restart behind its last seq: for it only an equal seq is a duplicate."""
        last: dict[str, tuple[str, int]] = {}  # cameras seen in this batch
        out = []
        for item in maps:
            h = item[0]
            prev = last.get(h.camera)
            if prev is None and (track := self._tracks.get(h.camera)) is not None:
                prev = (track.publisher, track.seq)
            if prev is not None and prev[0] == h.publisher and (
                    h.seq == prev[1] or (h.publisher and h.seq < prev[1])):
                self.stats.duplicates += 1
                continue
            last[h.camera] = (h.publisher, h.seq)
            out.append(item)
        return out

    def _kept(self, maps: list[tuple[LabelsHeader, memoryview, int]],
              frames: dict[str, list[tuple[FrameHeader, memoryview]]]) -> set[int]:
        """Indices into ``maps`` to hand out; under latest_only, cuts ``frames`` to the
        newest per camera (the rest counted in ``frames_overflow``)."""
        if not self.latest_only:
            return set(range(len(maps)))
        paired = set()
        for cam, items in frames.items():
            self._frames_superseded += len(items) - 1
            frames[cam] = items[-1:]
            paired.add((cam, items[-1][0].publisher, items[-1][0].seq))
        self.stats.frames_overflow = self._pump.overflow_frames + self._frames_superseded
        newest = {h.camera: i for i, (h, _, _) in enumerate(maps)}
        return set(newest.values()) | {i for i, (h, _, _) in enumerate(maps)
                                       if (h.camera, h.publisher, h.seq) in paired}

    def _frame(self, header: FrameHeader, payload: memoryview, t_wall: int,
               t_mono: int) -> None:
        """Decode one frame into ``_pending``; a corrupt one is counted, logged once."""
        try:
            msg = decode_frame(header, payload, t_wall, t_mono)
        except WireError as e:
            self.stats.frames_bad += 1
            self.stats.last_error = str(e)
            if self.stats.frames_bad == 1:
                log.warning("skipping a bad camera frame from %s (further ones are only "
                            "counted, in stats.frames_bad): %s", self.endpoint, e)
            return
        self.stats.frames += 1
        self._pending.append(msg)

    def _track(self, h: LabelsHeader, known: int = 0) -> int:
        """Update the camera's sequence state; returns messages lost before ``h``.

        ``known``: maps of this camera this subscriber dropped itself since the last one.
        """
        prev = self._tracks.get(h.camera)
        self._tracks[h.camera] = _Track(h.publisher, h.seq, h.dropped)
        if prev is None:
            return 0
        if prev.publisher != h.publisher or h.seq <= prev.seq:
            self.stats.restarts += 1
            log.info("%s: stream restarted (seq %d -> %d)", h.camera, prev.seq, h.seq)
            return 0
        lost = max(0, (h.seq - prev.seq - 1) - max(0, h.dropped - prev.dropped) - known)
        if lost:
            self.stats.lost += lost
            by_cam = self.stats.lost_by_camera
            by_cam[h.camera] = by_cam.get(h.camera, 0) + lost
        return lost

    def _on_monitor_event(self, ev: dict) -> None:
        """(Reader thread) count a failed security handshake; explain each new kind."""
        if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            text = (f"the publisher refused this client's CURVE key (ZAP status "
                    f"{ev['value']}): add its public .key file to the publisher's "
                    "allowed_clients/ folder")
        elif ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # the connection ended
            text = ("the publisher closed the connection during the handshake: one side may "
                    "use CURVE keys and the other not (--curve-server-key must be given "
                    "exactly when the publisher has curve_keys), or it is at its subscriber "
                    "limit (its log says 'refused ...: max_connections' or "
                    "'max_per_address'), or restarting; retrying")
        else:  # a ZMTP protocol error, e.g. CURVE on one side only
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
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.close()  # the sockets are the reader thread's until it has stopped
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
