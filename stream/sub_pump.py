"""The subscriber's reader thread: keeps a SUB socket drained into a bounded inbox.

Why a thread: when an application reads slower than the stream, a plain SUB socket's
receive queue fills and libzmq stops reading the connection. If the connection then ends
while input is stopped (the publisher's heartbeat times the silent reader out, the
publisher restarts, a client-side heartbeat fires), libzmq 4.3.x aborts the whole
process (``Assertion failed: _input_stopped`` or ``!_io_error`` in
``stream_engine_base.cpp``, cf. zeromq/libzmq#3937). Draining the socket continuously on
a thread of its own means libzmq's input never stops; the backlog a slow reader builds
lives here instead, bounded: beyond ``max_labels`` waiting label maps the oldest one is
dropped (counted in ``overflow``), and likewise beyond ``max_frames`` camera frames
(``img/``, counted in ``overflow_frames``). The backlog is bounded in bytes too, whatever
a (hostile) publisher sends: beyond ``max_bytes`` the oldest frames go first, then the
oldest label maps, then the oldest other messages; a class table replaces a waiting one
of the same topic, and at most ``max_other`` class tables / events wait (the oldest beyond
it is dropped, counted in ``overflow_other``). Messages whose header frame exceeds
``max_header_bytes`` or that alone exceed ``max_bytes`` are dropped on arrival
(``oversize``). Messages are moved one at a time, so beyond these bounds the process holds
at most one message being read plus libzmq's own short queue (``RCVHWM``, kept near empty
by this thread).

Only this thread touches the SUB and monitor sockets until :meth:`SocketPump.close`
returns; the caller closes them afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("segstream.subscribe")
_POLL_MS = 50  # how often the thread looks at its stop flag
_MAX_BATCH = 256  # messages moved per wake-up before the inbox lock is taken
DEFAULT_MAX_BACKLOG_BYTES = 256 << 20
DEFAULT_MAX_OTHER = 1000
OTHER, LABEL, FRAME = 0, 1, 2  # kinds of inbox entries, the last one dropped first


class SocketPump:
    """Reads ``sock`` (and its ``monitor``) on a daemon thread into an ordered inbox.

    Args:
        sock: a connected SUB socket; label maps are the messages whose first frame
            starts with ``label_topic``.
        monitor: the socket's monitor PAIR socket, or None.
        max_labels: most label maps kept waiting (>= 1).
        label_topic: topic prefix of droppable messages (``seg/``).
        frame_topic: topic prefix of camera frames (``img/``), droppable before maps.
        max_frames: most camera frames kept waiting (default: ``max_labels``).
        max_bytes: most bytes (all frames) kept waiting.
        max_other: most non-label messages (class tables, events) kept waiting.
        max_header_bytes: frame 1 larger than this is dropped on arrival.
        table_topic: topic prefix of class tables (a newer one replaces a waiting one).
        per_topic: most label maps (and camera frames) of one topic kept waiting; beyond
            it the oldest of that topic is dropped, so that one camera's burst never
            pushes out another camera's map (None: only the overall bounds).
        on_monitor_event: called on this thread with each decoded monitor event.
    """

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket | None, *, max_labels: int,
                 label_topic: bytes, max_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 max_other: int = DEFAULT_MAX_OTHER, max_header_bytes: int = 1 << 20,
                 table_topic: bytes = b"cls/", frame_topic: bytes = b"img/",
                 max_frames: int | None = None, per_topic: int | None = None,
                 on_monitor_event: Callable[[dict], None] | None = None) -> None:
        if max_labels < 1 or max_bytes < 1 or max_other < 1:
            raise ValueError(f"max_labels, max_bytes and max_other must be >= 1, got "
                             f"{max_labels}, {max_bytes}, {max_other}")
        self.max_bytes, self.max_other = max_bytes, max_other
        self._max_header = max_header_bytes
        self._table_topic = table_topic
        self._bytes = 0  # bytes of all messages in the inbox
        self.overflow_other = 0  # class tables / events dropped (backlog full)
        self.overflow_frames = 0  # camera frames dropped (backlog full)
        self.oversize = 0  # messages dropped on arrival (header frame too large)
        self._sock, self._monitor = sock, monitor
        self.max_labels = max_labels
        self.max_frames = max_labels if max_frames is None else max(1, max_frames)
        self._label_topic, self._frame_topic = label_topic, frame_topic
        if per_topic is not None and per_topic < 1:
            raise ValueError(f"per_topic must be >= 1, got {per_topic}")
        self._per_topic = per_topic
        self._topic_count: dict[bytes, int] = {}  # per_topic: maps/frames waiting by topic
        self._on_monitor_event = on_monitor_event
        # (kind, bytes of all ZeroMQ frames, ZeroMQ frames), oldest first
        self._inbox: deque[tuple[int, int, list[zmq.Frame]]] = deque()
        self._count = [0, 0, 0]  # entries in the inbox by kind (OTHER, LABEL, FRAME)
        self._dropped: dict[bytes, int] = {}  # topic -> maps dropped since the last take
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.overflow = 0  # label maps dropped because the reader fell behind
        self.error: BaseException | None = None  # what ended the thread, if not close()
        self._thread = threading.Thread(target=self._run, name="segstream-subscriber",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reader thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(_POLL_MS))
                if self._monitor is not None and self._monitor in ready:
                    self._drain_monitor()
                if self._sock in ready:
                    self._drain_socket()
        except zmq.ZMQError as e:
            if not self._stop.is_set():
                self.error = e
                log.error("subscriber reader thread stopped: %s", e)
        finally:
            with self._cond:
                self._cond.notify_all()

    def _drain_socket(self) -> None:
        # One message at a time into the bounded inbox: at most one message beyond the
        # bounds is ever held here.
        for _ in range(_MAX_BATCH):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            with self._cond:
                self._push(frames)
        with self._cond:
            self._cond.notify_all()

    def _push(self, frames: list[zmq.Frame]) -> None:
        size = sum(len(f.buffer) for f in frames)
        # A header over its limit, or one message larger than the whole backlog: dropped
        # on arrival (malformed ones are rejected by the decoder, counted there).
        if (len(frames) > 1 and len(frames[1].buffer) > self._max_header) \
                or size > self.max_bytes:
            self.oversize += 1
            return
        first = frames[0].buffer
        kind = (LABEL if bytes(first[:len(self._label_topic)]) == self._label_topic
                else FRAME if bytes(first[:len(self._frame_topic)]) == self._frame_topic
                else OTHER)
        if kind == OTHER:
            topic = bytes(first)
            if topic.startswith(self._table_topic):
                self._drop_same_topic(kind, topic)
        elif self._per_topic is not None:
            topic = bytes(first)
            if self._topic_count.get(topic, 0) >= self._per_topic:  # scan only when full
                self._drop_same_topic(kind, topic)
            self._topic_count[topic] = self._topic_count.get(topic, 0) + 1
        limit = (self.max_other, self.max_labels, self.max_frames)[kind]
        if self._count[kind] >= limit:
            self._drop_oldest(kind)
        while self._inbox and self._bytes + size > self.max_bytes:
            self._drop_oldest(next(k for k in (FRAME, LABEL, OTHER) if self._count[k]))
        self._count[kind] += 1
        self._bytes += size
        self._inbox.append((kind, size, frames))

    def _remove(self, i: int, *, overflow: bool = True) -> None:
        """Take entry ``i`` out of the inbox, counted as an overflow unless replaced."""
        kind, size, frames = self._inbox[i]
        del self._inbox[i]
        self._bytes -= size
        self._count[kind] -= 1
        self._untrack(kind, frames)
        if kind == LABEL:
            self.overflow += 1
            topic = bytes(frames[0].buffer)
            self._dropped[topic] = self._dropped.get(topic, 0) + 1
        elif kind == FRAME:
            self.overflow_frames += 1
        elif overflow:
            self.overflow_other += 1

    def _untrack(self, kind: int, frames: list[zmq.Frame]) -> None:
        """A map / frame left the inbox: one fewer waiting of its topic (per_topic)."""
        if self._per_topic is None or kind == OTHER:
            return
        topic = bytes(frames[0].buffer)
        left = self._topic_count.get(topic, 0) - 1
        if left > 0:
            self._topic_count[topic] = left
        else:
            self._topic_count.pop(topic, None)  # the dict never outgrows what waits

    def _drop_oldest(self, kind: int) -> None:
        """Drop the oldest waiting entry of ``kind`` (LABEL, FRAME or OTHER)."""
        for i, (k, _, _) in enumerate(self._inbox):
            if k == kind:
                self._remove(i)
                return

    def _drop_same_topic(self, kind: int, topic: bytes) -> None:
        """Drop the oldest waiting entry of ``kind`` and ``topic``: a newer class table
        replaces a waiting one (not an overflow); under ``per_topic`` a camera's map or
        frame beyond its share drops that camera's oldest (an overflow, like any drop)."""
        for i, (k, _, frames) in enumerate(self._inbox):
            if k == kind and bytes(frames[0].buffer) == topic:
                self._remove(i, overflow=kind != OTHER)
                return

    def _drain_monitor(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if self._on_monitor_event is not None:
                self._on_monitor_event(ev)

    # ------------------------------------------------------------------ caller side

    def take(self, timeout: float | None,
             everything: bool) -> tuple[list[list[zmq.Frame]], dict[bytes, int]]:
        """The oldest waiting message (``everything``: all of them), in arrival order, and
        per topic the label maps dropped since the last call (all older than any message
        of that topic still waiting, so they precede the ones returned).

        Waits up to ``timeout`` s (None: forever) for one; returns no message if none
        came or the reader thread has ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._inbox:
                left = None if deadline is None else deadline - time.monotonic()
                if not self._thread.is_alive() or (left is not None and left <= 0):
                    return [], {}
                self._cond.wait(_POLL_MS / 1000 if left is None else min(left, 1.0))
            items = list(self._inbox) if everything else [self._inbox.popleft()]
            if everything:
                self._inbox.clear()
            for kind, size, frames in items:
                self._count[kind] -= 1
                self._bytes -= size
                self._untrack(kind, frames)
            dropped, self._dropped = self._dropped, {}
        return [frames for _, _, frames in items], dropped

    def waiting(self, kind: int) -> int:
        """Messages of ``kind`` (OTHER, LABEL or FRAME) in the inbox now."""
        with self._cond:
            return self._count[kind]

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and wait for it; the sockets are the caller's to close."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)
