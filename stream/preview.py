"""Live browser preview of a running pipeline (``segstream run --preview [HOST:]PORT``).

A tap on the label sink, a one-deep slot per camera and a small HTTP/WebSocket server
(Tornado, in its own thread with its own event loop)::

    Pipeline ──send()──▶ PreviewTap ──send()──▶ Publisher (first, unchanged)
                             │ a reference to (frame, labels), only for watched cameras
                             ▼
                     NewestSlot per camera (one deep, newest wins)
                             │ taken at most ``fps`` times a second, by the server thread
                             ▼
          encoder thread: scale down, JPEG the frame, deflate the labels ──▶ browsers

The pipeline's cost is one set lookup per label map (plus a reference stored while a
browser watches that camera): scaling and encoding run on the server's encoder thread,
only while a browser is connected and at the preview rate, and a slow or vanished
browser only misses frames (each viewer has at most one message in flight).

Pages (``stream/preview_templates/``, ``stream/preview_static/``): ``/`` lists every
camera (state, fps, dropped, a thumbnail); ``/camera/<id>`` shows the frame with its mask
blended in the browser (opacity slider), the class legend with each class's share of the
picture, fps, per-stage latency, dropped and published counts and the source state. JSON at
``/api/status``; ``/camera/<id>/snapshot.jpg?opacity=0.5`` is the blended picture.

One WebSocket message per preview frame (``/camera/<id>/ws``, binary)::

    uint32 big-endian N | N bytes JSON header | JPEG | zlib(labels)

    header: {"seq", "width", "height", "jpeg": JPEG byte count, "t_capture_ms"}
    JPEG:   the frame, width x height, scaled down to at most ``max_width`` wide
    labels: (height, width) uint8 class ids, row-major, nearest-neighbour scaled,
            zlib-compressed (the browser's ``DecompressionStream("deflate")``)

and every second a text message ``{"type": "status", "camera": {...}, "preview": {...}}``:
the camera's figures (:func:`camera_status`) and the preview's own (viewers, fps, frames
encoded, encode ms, frames skipped for slow viewers, CPU of its threads).
No authentication: it listens on loopback unless a host is given, and says so then.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from engines.spec import ModelSpec
from stream.config import ConfigError, PreviewConfig, listen_failure
from stream.frame_pub import encode_jpeg
from stream.frames import Frame
from stream.pipeline import LabelSink
from stream.stats import STAGES, EngineMode
from stream.web_guard import is_loopback

INSTALL_HINT = "pip install 'segstream[preview]' (it needs tornado)"


@dataclass(frozen=True)
class Shot:
    """One published label map with its frame: (H, W, 3) uint8 BGR and (H, W) uint8.

    Both arrays are shared with the pipeline, never written: a capture hands out a new
    frame array each time and the engines return a new label map for every frame."""

    frame: Frame
    labels: np.ndarray


class NewestSlot:
    """One-deep, newest-wins hand-off between threads: ``put`` replaces what is there,
    ``get`` returns it with a version number that grows with every ``put``.

    Several readers may ``get`` the same item (the stream and a snapshot); a reader
    compares versions to know whether it has seen it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: Shot | None = None
        self._version = 0

    def put(self, item: Shot) -> None:
        with self._lock:
            self._item = item
            self._version += 1

    def get(self) -> tuple[int, Shot | None]:
        with self._lock:
            return self._version, self._item

    def clear(self) -> None:
        """Drop the held item (its arrays are freed); the version is kept."""
        with self._lock:
            self._item = None


class PreviewTap:
    """A :class:`~stream.pipeline.LabelSink` that forwards everything to ``sink`` and
    leaves a reference to each watched camera's newest (frame, labels) in its slot.

    ``send`` may be called from any thread, several at once: the slot takes a lock for a
    reference swap; the set of watched cameras is an immutable frozenset replaced whole by
    :meth:`watch` (from the server thread).
    """

    def __init__(self, sink: LabelSink, cameras: Sequence[str]) -> None:
        self.sink = sink
        self.slots = {cam: NewestSlot() for cam in cameras}
        self.watched: frozenset[str] = frozenset()

    def send(self, frame: Frame, labels: np.ndarray, t_infer_ns: int, dropped: int) -> None:
        self.sink.send(frame, labels, t_infer_ns, dropped)
        if frame.camera_id in self.watched:
            self.slots[frame.camera_id].put(Shot(frame, labels))

    def watch(self, cameras: Sequence[str] | frozenset[str]) -> None:
        """Keep the newest shot of ``cameras`` from now on; let go of the others'."""
        self.watched = frozenset(c for c in cameras if c in self.slots)
        for cam, slot in self.slots.items():
            if cam not in self.watched:
                slot.clear()

    def close(self) -> None:
        self.sink.close()


# ---------------------------------------------------------------------------- pictures

def palette_bgr(spec: ModelSpec) -> np.ndarray:
    """(256, 3) uint8 BGR colour per class id (ids the model lacks: black)."""
    lut = np.zeros((256, 3), np.uint8)
    for c in spec.classes:
        lut[c.id] = c.color[::-1]
    return lut


def scaled(shot: Shot, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame (h, w, 3) and labels (h, w) scaled so that w <= ``max_width`` (area filter
    for the picture, nearest neighbour for the class ids; aspect ratio kept)."""
    image, labels = shot.frame.image, shot.labels  # (H, W, 3), (H, W)
    h, w = labels.shape
    if w <= max_width:
        return image, labels
    size = (max_width, max(1, round(h * max_width / w)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = encode_jpeg(image, image.shape[:2], quality)  # the frame topic's encoder
    if buf is None:
        raise ValueError(f"JPEG encoding failed for a {image.shape} image")
    return buf.tobytes()


def encode_view(shot: Shot, max_width: int, quality: int) -> bytes:
    """One WebSocket message (layout in the module docstring) for ``shot``."""
    image, labels = scaled(shot, max_width)
    jpeg = _jpeg(image, quality)
    head = json.dumps({"seq": shot.frame.seq, "width": labels.shape[1],
                       "height": labels.shape[0], "jpeg": len(jpeg),
                       "t_capture_ms": shot.frame.t_capture_wall // 1_000_000}).encode()
    packed = zlib.compress(np.ascontiguousarray(labels).tobytes(), 1)
    return b"".join((struct.pack(">I", len(head)), head, jpeg, packed))


def decode_view(message: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A message from :func:`encode_view` -> (header, (h, w, 3) BGR image, (h, w) labels);
    for clients written in Python, and the tests."""
    (n,) = struct.unpack_from(">I", message)
    head = json.loads(message[4:4 + n])
    jpeg_end = 4 + n + head["jpeg"]
    image = cv2.imdecode(np.frombuffer(message[4 + n:jpeg_end], np.uint8), cv2.IMREAD_COLOR)
    labels = np.frombuffer(zlib.decompress(message[jpeg_end:]), np.uint8)
    return head, image, labels.reshape(head["height"], head["width"])


def blend(shot: Shot, palette: np.ndarray, opacity: float, max_width: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR: the frame with its class colours laid over at ``opacity``."""
    image, labels = scaled(shot, max_width)
    colours = palette[labels]  # (h, w, 3)
    return cv2.addWeighted(colours, opacity, image, 1.0 - opacity, 0.0)


def snapshot_jpeg(shot: Shot, palette: np.ndarray, opacity: float, max_width: int,
                  quality: int) -> bytes:
    return _jpeg(blend(shot, palette, opacity, max_width), quality)


# ---------------------------------------------------------------------------- figures

class _Capture(Protocol):
    camera_id: str

    @property
    def state_detail(self) -> str: ...

    def stats(self) -> Any: ...


def _ms(x: float) -> float | None:
    return round(x, 2) if math.isfinite(x) else None


def camera_status(capture: _Capture, cam_stats: Any,
                  engine: EngineMode | None = None) -> dict[str, Any]:
    """What a page shows for one camera: ``{"camera", "state", "detail", "fps",
    "published", "captured", "dropped", "handoff_dropped", "reconnects", "engine",
    "stages": {stage: {"p50", "p99"} in ms}}``, stages in pipeline order
    (:data:`stream.stats.STAGES` first, then any other the pipeline records);
    ``cam_stats`` is the pipeline's :class:`~stream.pipeline.CameraStats`. ``dropped``:
    frames the camera replaced before the engine took them; ``handoff_dropped``: results
    the post worker's slot replaced; ``engine``: the engine's mode
    (:class:`~stream.stats.EngineMode` as a dict, the same for every camera), or None."""
    st = capture.stats()
    sums = cam_stats.times.summaries()
    order = [s for s in STAGES if s in sums] + sorted(set(sums) - set(STAGES))
    stages = {s: {"p50": _ms(sums[s].p50_ms), "p99": _ms(sums[s].p99_ms)}
              for s in order if sums[s].count}
    return {"camera": capture.camera_id, "state": st.state, "detail": capture.state_detail,
            "fps": round(cam_stats.times.fps(), 2), "published": cam_stats.published,
            "captured": st.captured, "dropped": st.dropped,
            "handoff_dropped": cam_stats.dropped, "reconnects": st.reconnects,
            "engine": None if engine is None else
            {**dataclasses.asdict(engine), "describe": engine.describe()},
            "stages": stages}


# ---------------------------------------------------------------------------- listening

def parse_listen(text: str, default_host: str = PreviewConfig.host) -> tuple[str, int]:
    """``--preview [HOST:]PORT`` -> (host, port); IPv6 hosts in brackets (``[::1]:8080``).

    Raises:
        ConfigError: not ``[HOST:]PORT``, or ``:PORT`` with an empty host (ambiguous:
            some tools read it as every interface).
    """
    how = (f"--preview {text!r}: expected [HOST:]PORT, e.g. 8080 (this machine only) or "
           "0.0.0.0:8080 (every interface)")
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = default_host
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(how + "; write an IPv6 address in brackets: [::1]:8080")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(how)
    return host, int(port)


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for the preview, bound now (so that a port in use is reported
    before any camera opens).

    Raises:
        ConfigError: tornado missing, the port in use, or an address this host lacks.
    """
    try:
        from tornado.netutil import bind_sockets
    except ImportError as e:
        raise ConfigError(f"preview: the browser preview needs tornado: {INSTALL_HINT}") from e
    try:
        return bind_sockets(port, address=host, backlog=32)
    except OSError as e:
        raise listen_failure(e, host, port, "preview.port", "preview.host", "--preview") from e


def check(cfg: PreviewConfig) -> list[str]:
    """Problems with ``cfg`` only the machine can tell (tornado, the port), for
    :mod:`stream.validate`; binds and releases the port at once."""
    if cfg.port is None:
        return []
    try:
        for s in bind(cfg.host, cfg.port):
            s.close()
    except ConfigError as e:
        return list(e.errors)
    return []


# ---------------------------------------------------------------------------- lifecycle

class Preview:
    """The preview of one run: bound at construction, serving after :meth:`start`.

    Use from the runner::

        preview = Preview(cfg.preview, segmenter.spec, camera_ids)  # ConfigError: exit 2
        sink = preview.tap(publisher)                              # the pipeline's sink
        ...
        preview.start(pipeline, captures)                          # serving
        ...
        preview.close()
    """

    def __init__(self, cfg: PreviewConfig, spec: ModelSpec, cameras: Sequence[str],
                 out: TextIO | None = None) -> None:
        if cfg.port is None:
            raise ValueError("the preview is off (no port)")
        self.cfg = cfg
        self.spec = spec
        self.cameras = tuple(cameras)
        self.palette = palette_bgr(spec)
        self.out = out or sys.stderr
        self.sockets = bind(cfg.host, cfg.port)
        self.port = self.sockets[0].getsockname()[1]
        shown = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        if cfg.host in ("0.0.0.0", "::"):
            shown = "127.0.0.1" if cfg.host == "0.0.0.0" else "[::1]"
        self.url = f"http://{shown}:{self.port}/"
        self._tap: PreviewTap | None = None
        self._server: Any = None

    def tap(self, sink: LabelSink) -> PreviewTap:
        """Wrap the pipeline's sink (once)."""
        if self._tap is not None:
            raise RuntimeError("the preview already taps a sink")
        self._tap = PreviewTap(sink, self.cameras)
        return self._tap

    def start(self, pipeline: Any, captures: Sequence[_Capture]) -> None:
        """Serve pages in a thread of its own, with the figures of ``pipeline`` (its
        ``stats``: :class:`~stream.pipeline.CameraStats` per camera) and ``captures``."""
        from stream.preview_web import PreviewServer

        if self._tap is None:
            raise RuntimeError("call tap() before start()")

        def status() -> dict[str, dict[str, Any]]:
            mode = pipeline.engine_mode()
            return {c.camera_id: camera_status(c, pipeline.stats[c.camera_id], mode)
                    for c in captures}

        self._server = PreviewServer(self, self._tap, status)
        self._server.start()
        print(f"segstream: preview on {self.url} ({len(self.cameras)} camera"
              f"{'s' if len(self.cameras) != 1 else ''}, {self.cfg.fps:g} fps, up to "
              f"{self.cfg.max_width} px wide)", file=self.out, flush=True)
        if not is_loopback(self.cfg.host):
            print(f"segstream: warning: the preview listens on {self.cfg.host}:{self.port}, "
                  "reachable from other machines, and has no authentication: anyone who "
                  "can reach this port sees the cameras", file=self.out, flush=True)

    def close(self) -> None:
        """Stop serving and release the port; idempotent, bounded (a few seconds)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for s in self.sockets:
            s.close()
        if self._tap is not None:
            self._tap.watch(())
