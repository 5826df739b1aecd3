"""ZeroMQ XPUB publisher of label maps, class tables and source-state events.

Wire format: ``stream/wire.py`` and ``docs/wire-format.md``.

Back-pressure policy: the publisher never waits for a subscriber. ZeroMQ keeps one
outgoing queue per subscriber of at most ``sndhwm`` messages (plus what the kernel's
socket buffer holds); once a slow or dead subscriber's queue is full, new messages for
*that* subscriber are dropped inside ZeroMQ while the others keep receiving. Those drops
are invisible here: a subscriber sees them as gaps in ``seq`` (``Subscriber.lost``).
What the publisher can see is counted in :class:`PublisherStats`.

Late joiners: the socket is an XPUB with ``XPUB_VERBOSE``, so every new subscription
that covers ``cls/`` reaches us and the current class table is sent at once; it is also
re-sent every ``class_table_interval`` seconds. The same subscriptions (and libzmq's
unsubscription when a topic's last subscriber leaves) say whether anybody wants a
camera's frames (``img/``, :mod:`stream.frame_pub`): they are encoded only then. A small
housekeeping thread does this and watches connections; all socket use is serialised by
one lock, so the publisher's methods are safe to call from several threads (pipeline
loop, capture threads, the frame encoder).
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from engines.spec import ClassInfo, ModelSpec
from stream.config import NotReadyError, PublishConfig
from stream.frame_pub import FrameOptions, FrameTap
from stream.frames import Frame
from stream.ipc_guard import ipc_path, live_ipc_owner
from stream.peer_guard import PeerGuard, PeerLimits
from stream.security import CurveConfig, start_server
from stream.wire import (
    DEFAULT_MAX_PIXELS,
    INT64_MAX,
    TOPIC_CLASS_TABLE,
    TOPIC_EVENT,
    TOPIC_FRAME,
    ClassTable,
    LabelsHeader,
    ModelInfo,
    PayloadEncoder,
    SourceEvent,
    check_camera_id,
    pack_class_table,
    pack_event,
    pack_labels,
)
from stream.wire_frames import FrameHeader, pack_frame

log = logging.getLogger("segstream.publish")

# Largest message a peer may send us: a subscription is 1 byte + a topic of at most
# "seg/" + a 64-character camera id, but libzmq applies the limit to handshake commands
# too, and a CURVE INITIATE with its metadata is ~350 bytes. libzmq drops a connection
# that sends more, before allocating it (a 256 MiB "subscription" otherwise costs ~20x
# that in its trie).
MAX_INBOUND_MESSAGE_BYTES = 1024
_INBOUND_QUEUE_MESSAGES = 16  # RCVHWM: see _configure
_MAX_SUBSCRIPTIONS_PER_SERVICE = 1024  # bounds the time one service call holds the lock
_GUARD_INTERVAL_S = 0.02
_IPC_MODE = 0o660  # ipc:// socket files: the publishing user and its group may connect
_RESEND_GAP_S = 0.02
_FRAME_PREFIX = TOPIC_FRAME.encode()
_MAX_FRAME_PREFIXES = 1024  # distinct img/ subscriptions remembered (one per camera is usual)
DEFAULT_PEER_LIMITS = PeerLimits()

_MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _uint(name: str, value: object) -> int:
    """A header integer as a plain int in 0..2^63-1 (NumPy integers accepted)."""
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= v <= INT64_MAX:
        raise ValueError(f"{name} must be in 0..2^63-1, got {v}")
    return v


class PublishError(RuntimeError):
    """The publisher could not start (bad endpoint, address in use) or is closed."""


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start (a snapshot).

    Attributes:
        sent: label maps handed to ZeroMQ.
        bytes_sent: payload bytes of those maps.
        dropped: label maps ZeroMQ refused at once (``EAGAIN``); per-subscriber queue
            drops are not visible here (subscribers see them as ``seq`` gaps).
        errors: other send failures.
        class_tables: class-table messages sent (on subscription and periodic).
        events: source-state events sent.
        state_repeats: current camera states re-sent to late joiners (wire 1.1).
        subscriptions: subscription requests received.
        connections: transport connections open now (accepted minus disconnected).
        auth_failures: connections refused by the CURVE handshake / authenticator.
        peers_cut: connections shut down for exceeding their inbound budget or the
            connection cap (:mod:`stream.peer_guard`).
        frames_sent / frame_bytes: camera frames (``img/``) sent, and their JPEG bytes.
        frames_skipped: frames replaced by a newer one before the encoder got to them.
        frame_errors: frames not encoded, or refused by ZeroMQ.
    """

    sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    errors: int = 0
    class_tables: int = 0
    events: int = 0
    state_repeats: int = 0
    subscriptions: int = 0
    connections: int = 0
    auth_failures: int = 0
    peers_cut: int = 0
    frames_sent: int = 0
    frame_bytes: int = 0
    frames_skipped: int = 0
    frame_errors: int = 0


class Publisher:
    """Binds an XPUB socket on one or more endpoints and publishes label maps.

    Args:
        endpoints: ``tcp://*:5555``, ``tcp://127.0.0.1:5555``, ``ipc:///run/seg.sock``...
            (``tcp://127.0.0.1:*`` picks a free port; see ``bound_endpoints``).
        class_table: the model's classes (a :class:`ClassTable`, or ClassInfo entries
            together with ``model_info``).
        model_info: name, architecture, input size; needed when ``class_table`` is a list.
        encoding: ``raw`` (zero-copy), ``rle`` or ``zstd`` (level ``zstd_level``).
        sndhwm: per-subscriber queue length in messages; beyond it that subscriber drops.
        linger_ms: how long ``close()`` may spend flushing queued messages.
        curve: enable CURVE encryption + client allow-list (see ``stream/security.py``).
        class_table_interval: seconds between periodic class-table re-sends (0: never).
        heartbeat_ms: ZMTP heartbeat interval; a peer silent for 3x this is dropped.
        peer_limits: per-connection inbound byte budget, connection caps (in all, per
            remote address) and handshake deadline (:mod:`stream.peer_guard`); None
            disables them (not recommended on a network).
        context: share a ZeroMQ context (needed for ``inproc://`` subscribers in the same
            process); by default the publisher owns one. One CURVE publisher per context.
        frames: publish camera frames (JPEG, ``img/<camera>``) that :meth:`send` is handed,
            sampled and scaled as asked, while some subscriber asks for them; None: never.
    """

    def __init__(self, endpoints: str | Sequence[str], *,
                 class_table: ClassTable | Sequence[ClassInfo],
                 model_info: ModelInfo | None = None, encoding: str = "zstd",
                 zstd_level: int = 1, sndhwm: int = 4, linger_ms: int = 200,
                 curve: CurveConfig | None = None, class_table_interval: float = 2.0,
                 heartbeat_ms: int = 2000, max_pixels: int = DEFAULT_MAX_PIXELS,
                 poll_s: float = 0.02, context: zmq.Context | None = None,
                 peer_limits: PeerLimits | None = DEFAULT_PEER_LIMITS,
                 frames: FrameOptions | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = (endpoints,)
        if not endpoints:
            raise PublishError("no endpoint given; e.g. tcp://*:5555 or ipc:///tmp/seg.sock")
        if not isinstance(class_table, ClassTable):
            if model_info is None:
                raise ValueError("model_info is required when class_table is a class list")
            class_table = ClassTable.build(class_table, model_info)
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1, got {sndhwm}")
        self.class_table = class_table
        self.encoding = encoding
        self.endpoints = tuple(endpoints)
        self.max_pixels = max_pixels
        self.publisher_id = secrets.token_hex(4)
        self._encoder = PayloadEncoder(encoding, zstd_level=zstd_level)
        self._ct_parts = pack_class_table(class_table)
        self._ct_topic = (TOPIC_CLASS_TABLE + class_table.id).encode()
        self._ct_interval = class_table_interval
        self._next_ct = time.monotonic() + class_table_interval
        self._poll_s = poll_s
        self._linger_ms = linger_ms
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._counts = dict.fromkeys(PublisherStats.__dataclass_fields__, 0)
        self._cameras: set[str] = set()
        self._states: dict[str, list] = {}  # camera -> its last source_state message
        self._want_table = False  # a new subscription needs the class table
        self._want_states: set[str] = set()  # cameras whose state new subscriptions need
        self._next_resend = 0.0
        self._guard: PeerGuard | None = None  # made once the TCP ports are known
        self._frame_subs: frozenset[bytes] = frozenset()  # img/ prefixes subscribed now
        self._next_guard = 0.0

        self._own_ctx = context is None
        self._ctx = zmq.Context() if context is None else context
        self._auth = None
        self._sock = self._ctx.socket(zmq.XPUB)
        try:
            self._configure(sndhwm, heartbeat_ms, curve)
            if peer_limits is not None:  # silent connections must not hold slots for 30 s
                self._sock.setsockopt(zmq.HANDSHAKE_IVL, round(peer_limits.handshake_s * 1000))
            self._monitor = self._sock.get_monitor_socket(_MONITOR_EVENTS)
            bound = []
            for ep in self.endpoints:
                if (busy := live_ipc_owner(ep)) is not None:
                    raise PublishError(busy)
                try:
                    self._sock.bind(ep)
                except zmq.ZMQError as e:
                    if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):  # before DHCP, or
                        # an interface (tcp://eth0:5555) that is not up yet
                        raise NotReadyError(f"cannot bind {ep}: {e.strerror} (not on this "
                                            "machine yet? a service retries)") from None
                    raise PublishError(f"cannot bind {ep}: {e.strerror}; check the address, "
                                       "or another process already publishes there") from None
                bound.append(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))
                if (path := ipc_path(bound[-1])) is not None:  # ipc://* too: its real path
                    # connecting needs write access: this user and its group, not others
                    # (libzmq leaves the mode to the umask, 0755 or 0775 as a rule)
                    os.chmod(path, _IPC_MODE)
            self.bound_endpoints = tuple(bound)
            if peer_limits is not None:  # the guard only ever touches our TCP connections
                self._guard = PeerGuard(peer_limits, {int(ep.rsplit(":", 1)[1]) for ep in bound
                                                      if ep.startswith("tcp://")})
        except BaseException:
            self._teardown()
            raise
        self._thread = threading.Thread(target=self._housekeeping, name="segstream-xpub",
                                        daemon=True)
        self._thread.start()
        self._frames = (None if frames is None  # the frame encoder's thread
                        else FrameTap(frames, self._send_frame, self.wants_frames))
        log.info("publishing on %s (encoding %s, class table %s%s)", ", ".join(bound),
                 encoding, class_table.id, "" if frames is None else
                 f"; frames at {frames.rate:g}/s, x{frames.scale:g}, JPEG q{frames.quality}")

    @classmethod
    def for_spec(cls, endpoints: str | Sequence[str], spec: ModelSpec,
                 **kwargs: object) -> Publisher:
        """A publisher for a model's sidecar (class table and model info from ``spec``)."""
        return cls(endpoints, class_table=ClassTable.from_spec(spec), **kwargs)

    @classmethod
    def from_config(cls, cfg: PublishConfig, spec: ModelSpec) -> Publisher:
        """A publisher as a launch file's ``publish:`` section describes it."""
        curve = CurveConfig.from_keys_dir(cfg.curve_keys) if cfg.curve_keys else None
        return cls.for_spec(cfg.endpoints, spec, encoding=cfg.encoding, sndhwm=cfg.sndhwm,
                            linger_ms=cfg.linger_ms, curve=curve,
                            frames=FrameOptions.from_config(cfg))

    def _configure(self, sndhwm: int, heartbeat_ms: int, curve: CurveConfig | None) -> None:
        s = self._sock
        s.setsockopt(zmq.SNDHWM, sndhwm)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_MESSAGE_BYTES)
        # Per-peer queue of subscriptions not yet read, kept short: whenever this thread
        # looks at the socket, libzmq's XPUB moves everything queued on each peer's pipe into
        # one unbounded socket-wide queue that only our recv() empties, and the peer's
        # connection reads on as soon as its pipe has room. With 1000, four local flooders
        # grew the process by 82-92 MiB in 3 s and starved an honest subscriber; with 16 by
        # ~1.5 MiB (tests/stream/test_hostile_peers.py). An honest subscriber sends a handful
        # of subscriptions; a longer list is flow-controlled, never dropped.
        s.setsockopt(zmq.RCVHWM, _INBOUND_QUEUE_MESSAGES)
        s.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription reaches us (late joiners)
        s.setsockopt(zmq.LINGER, self._linger_ms)
        s.setsockopt(zmq.SNDTIMEO, 0)
        if heartbeat_ms > 0:
            s.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
        s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
        if curve is not None:
            self._auth = start_server(self._ctx, s, curve)

    # ------------------------------------------------------------------ publishing

    def publish_labels(self, camera: str, seq: int, labels: np.ndarray, *, t_capture_ns: int,
                       t_capture_mono_ns: int, t_infer_ns: int | None = None,
                       dropped: int = 0) -> bool:
        """Encode and queue one label map; never blocks on subscribers.

        Args:
            camera: camera id (1-64 printable characters, no spaces or '/').
            seq: the frame's per-camera sequence number.
            labels: (H, W) uint8 class ids. With ``raw`` encoding the array is sent
                zero-copy: do not modify it afterwards.
            t_capture_ns / t_capture_mono_ns: capture time, wall clock / monotonic.
            t_infer_ns: wall clock when inference finished (default: now).
            dropped: frames dropped at the source so far.

        Returns:
            True if ZeroMQ accepted the message, False if it was dropped.
        """
        if camera not in self._cameras:
            check_camera_id(camera)
            self._cameras.add(camera)
        if not isinstance(labels, np.ndarray) or labels.dtype != np.uint8 or labels.ndim != 2:
            raise ValueError(f"labels must be an (H, W) uint8 array, got "
                             f"{getattr(labels, 'dtype', type(labels))} "
                             f"{getattr(labels, 'shape', '')}")
        h, w = labels.shape
        if h < 1 or w < 1 or h * w > self.max_pixels:
            raise ValueError(f"label map {h}x{w} must be non-empty and at most "
                             f"{self.max_pixels} pixels")
        seq, dropped = _uint("seq", seq), _uint("dropped", dropped)
        t_capture_ns = _uint("t_capture_ns", t_capture_ns)
        t_capture_mono_ns = _uint("t_capture_mono_ns", t_capture_mono_ns)
        t_infer_ns = None if t_infer_ns is None else _uint("t_infer_ns", t_infer_ns)
        with self._lock:
            self._check_open()
            # Let libzmq attach newly connected subscribers now (reading ZMQ_EVENTS runs
            # its pending commands), so that they get the class table before this map.
            self._sock.getsockopt(zmq.EVENTS)
            self._service()
            payload = self._encoder.encode(labels)
            now = time.time_ns()
            header = LabelsHeader(
                camera=camera, seq=seq, t_capture_ns=t_capture_ns,
                t_capture_mono_ns=t_capture_mono_ns,
                t_infer_ns=now if t_infer_ns is None else t_infer_ns, t_publish_ns=now,
                shape=(h, w), encoding=self.encoding, class_table=self.class_table.id,
                dropped=dropped, publisher=self.publisher_id)
            ok = self._send(pack_labels(header, payload), "label map")
            if ok:
                self._counts["sent"] += 1
                self._counts["bytes_sent"] += memoryview(payload).nbytes
            self._service()  # a subscriber attached during the send: table right after
        return ok

    def send(self, frame: Frame, labels: np.ndarray, t_infer_ns: int, dropped: int) -> None:
        """``LabelSink`` for :class:`stream.pipeline.Pipeline`: the map, then (with
        ``frames``) the frame itself handed to the frame encoder's thread if it is due."""
        self.publish_labels(frame.camera_id, frame.seq, labels, t_capture_ns=frame.t_capture_wall,
                            t_capture_mono_ns=frame.t_capture_mono, t_infer_ns=t_infer_ns,
                            dropped=dropped)
        if self._frames is not None:
            self._frames.offer(frame)

    def wants_frames(self, camera: str) -> bool:
        """True while a subscription covers ``img/<camera>`` (an explicit ``img/...`` one:
        the empty prefix of a catch-all client does not ask for frames)."""
        topic = (TOPIC_FRAME + camera).encode()
        return any(topic.startswith(p) for p in self._frame_subs)

    def _send_frame(self, frame: Frame, shape: tuple[int, int], jpeg: np.ndarray,
                    crc: int) -> bool:
        """(Frame encoder thread) send one JPEG-encoded frame; False if not sent."""
        with self._lock:
            if self._closed:
                return False
            header = FrameHeader(
                camera=frame.camera_id, seq=frame.seq, t_capture_ns=frame.t_capture_wall,
                t_capture_mono_ns=frame.t_capture_mono, t_publish_ns=time.time_ns(),
                shape=shape, source_shape=frame.shape, crc32=crc,
                publisher=self.publisher_id)
            return self._send(pack_frame(header, jpeg), "frame")

    def publish_event(self, camera: str, state: str, detail: str = "",
                      t_ns: int | None = None) -> bool:
        """Send a source-state event (``running``, ``stalled``, ``reconnecting``, ``eos``...).

        Safe to call from capture threads, also during shutdown: after ``close()`` the
        event is not sent and False is returned.
        """
        if not state:
            raise ValueError("state must not be empty")
        event = SourceEvent(check_camera_id(camera), str(state), str(detail),
                            time.time_ns() if t_ns is None else _uint("t_ns", t_ns))
        with self._lock:
            if self._closed:
                log.debug("publisher closed; event %s %s not sent", camera, state)
                return False
            parts = pack_event(event)
            self._states[event.camera] = parts  # repeated to late joiners
            ok = self._send(parts, "event")
            self._counts["events"] += ok
        return ok

    def stats(self) -> PublisherStats:
        with self._lock:
            counts = dict(self._counts)
            counts["peers_cut"] = self._guard.cut if self._guard is not None else 0
            if (tap := self._frames) is not None:
                counts.update(frames_sent=tap.encoded, frame_bytes=tap.bytes,
                              frames_skipped=tap.skipped, frame_errors=tap.errors + tap.unsent)
            return PublisherStats(**counts)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise PublishError("publisher is closed")

    def _send(self, parts: list, what: str) -> bool:
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self._counts["dropped"] += 1
        except zmq.ZMQError as e:
            self._counts["errors"] += 1
            if self._counts["errors"] <= 3 or self._counts["errors"] % 1000 == 0:
                log.warning("sending %s failed (%d so far): %s", what, self._counts["errors"], e)
        return False

    def _service(self) -> None:
        """Handle monitor events, subscriptions and periodic class tables (lock held)."""
        self._service_monitor()
        now = time.monotonic()
        if self._guard is not None and now >= self._next_guard:
            self._next_guard = now + _GUARD_INTERVAL_S
            self._guard.check()
        for _ in range(_MAX_SUBSCRIPTIONS_PER_SERVICE):
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                self._counts["subscriptions"] += 1
                prefix = msg[1:]
                if self._ct_topic.startswith(prefix):
                    self._want_table = True
                if len(self._want_states) < len(self._states):
                    self._want_states.update(c for c in self._states
                                             if (TOPIC_EVENT + c).encode().startswith(prefix))
                if (prefix.startswith(_FRAME_PREFIX) and prefix not in self._frame_subs
                        and len(self._frame_subs) < _MAX_FRAME_PREFIXES):
                    self._frame_subs = self._frame_subs | {prefix}
            elif msg[:1] == b"\x00" and msg[1:] in self._frame_subs:  # its last subscriber left
                self._frame_subs = self._frame_subs - {msg[1:]}
        periodic = self._ct_interval > 0 and now >= self._next_ct
        # What new subscriptions asked for goes out at most every _RESEND_GAP_S: a peer
        # repeating a 3-byte subscription cannot make us broadcast tables in a loop.
        if not periodic and (now < self._next_resend
                             or not (self._want_table or self._want_states)):
            return
        if not periodic:  # the periodic send has its own interval: it does not delay the
            self._next_resend = now + _RESEND_GAP_S  # next subscriber's table
        if periodic or self._want_table:
            self._counts["class_tables"] += self._send(self._ct_parts, "class table")
        if periodic:
            self._next_ct = now + self._ct_interval
            self._want_states.update(self._states)  # every camera's state with the table
        for camera in sorted(self._want_states):
            self._counts["state_repeats"] += self._send(self._states[camera], "event")
        self._want_table, self._want_states = False, set()

    def _service_monitor(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = ev["event"]
            if kind == zmq.EVENT_ACCEPTED:
                self._counts["connections"] += 1
                if self._guard is not None:
                    self._guard.accepted(ev["value"])
            elif kind == zmq.EVENT_DISCONNECTED:
                self._counts["connections"] = max(0, self._counts["connections"] - 1)
                if self._guard is not None:
                    self._guard.disconnected(ev["value"])
            else:  # refused clients retry every ~100 ms: log the first few only
                self._counts["auth_failures"] += 1
                n = self._counts["auth_failures"]
                if n <= 3 or n % 1000 == 0:
                    log.warning("refused a subscriber (%d so far): %s", n, zmq.Event(kind).name)

    def _housekeeping(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                if self._closed:
                    return
                try:
                    self._service()
                except zmq.ZMQError as e:  # socket torn down under us: stop quietly
                    log.debug("housekeeping stopped: %s", e)
                    return

    def _teardown(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            self._sock.disable_monitor()
            monitor.close(linger=0)
        self._sock.close(linger=self._linger_ms)
        if self._auth is not None:
            self._auth.stop()
        if self._own_ctx:
            self._ctx.term()

    def close(self) -> None:
        """Flush for at most ``linger_ms`` and release the sockets. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._frames is not None:
            self._frames.close()
        self._stop.set()
        self._thread.join(timeout=5)
        self._teardown()
        log.info("publisher closed: %s", self.stats())

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
