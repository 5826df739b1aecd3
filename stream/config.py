"""Pipeline configuration: frozen dataclasses, each checking its own values.

Launch files (YAML) are read into them by :mod:`stream.launch_file`: every key is checked
against these dataclasses; unknown keys, wrong types and bad values raise
:class:`ConfigError` naming the file, the key path (``sources[1].stall_timeout``) and the
reason.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from engines.backend import ENGINE_POLICIES, TTA_MODES

LAUNCH_VERSION = 1
ENCODINGS = ("raw", "zstd", "rle")
OVERLAP_MODES = ("auto", "on", "off")  # stream.policy.resolve_overlap
MAX_BATCH = 64
MAX_SNDHWM = 10_000  # messages queued per subscriber (a raw 360x480 map is 173 kB)
MAX_LINGER_MS = 60_000  # a stopping service waits at most this long for slow subscribers
MAX_THREADS = 256


class ConfigError(ValueError):
    """A bad launch file or option. ``errors`` lists every problem found, each as
    ``key.path: reason``; the message names the file (or what was checked) and all of them."""

    def __init__(self, message: str = "", errors: Sequence[str] = (), where: str = "",
                 hint: str = "") -> None:
        from stream.sources import redact

        def clean(e: str) -> str:
            """Redacted; a NotReady problem stays one (preview.check passes them on)."""
            return NotReady(redact(e)) if isinstance(e, NotReady) else redact(e)

        self.errors = tuple(clean(e) for e in errors) or (clean(message),)
        self.where = where
        head = f"{where}: " if where else ""
        if len(self.errors) == 1:
            text = head + self.errors[0]
        else:
            text = (f"{head}{len(self.errors)} errors:\n"
                    + "\n".join(f"  {e}" for e in self.errors))
        super().__init__(f"{text}\n{hint}" if hint else text)


class NotReadyError(ConfigError):
    """Every problem is a resource of this machine that is not there yet (an address DHCP
    has not assigned at boot): the commands exit 1, which a service restarts, where a
    wrong configuration exits 2."""


class NotReady(str):
    """A problem text (``key: reason``) that a later start may not have: see
    :class:`NotReadyError`."""


def _problems(found: list[tuple[str, str]]) -> None:
    """Raise one ConfigError listing every ``(key, reason)`` found by a ``__post_init__``."""
    if found:
        raise ConfigError(errors=[f"{key}: {why}" if key else why for key, why in found])


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class SourceConfig:
    """One camera. ``uri`` forms: file path or file://, v4l2://, rtsp://, csi://, test://,
    gst:// (see ``segstream run --help``)."""

    uri: str
    id: str = ""
    stall_timeout: float = 3.0  # seconds without a frame before the source is rebuilt
    max_retries: int = -1  # reconnect attempts; -1: forever

    def __post_init__(self) -> None:
        found = []
        if not self.uri:
            found.append(("uri", "must not be empty"))
        if not _finite(self.stall_timeout) or self.stall_timeout <= 0:
            found.append(("stall_timeout", f"must be a number of seconds > 0, got "
                                           f"{self.stall_timeout}"))
        if self.max_retries < -1:
            found.append(("max_retries", f"must be >= 0, or -1 to retry forever; got "
                                         f"{self.max_retries}"))
        _problems(found)


FRAME_RATE_ON = 10.0  # `--publish-frames` without a rate


def frame_problems(rate: float, scale: float, quality: int) -> list[tuple[str, str]]:
    """``(key, reason)`` for each bad frame-publishing setting (see :class:`PublishConfig`)."""
    found = []
    if not _finite(rate) or not 0 <= rate <= 1000:
        found.append(("publish_frames", f"must be frames per second per camera in 0..1000 "
                                        f"(0: off), got {rate}"))
    if not _finite(scale) or not 0 < scale <= 1:
        found.append(("frame_scale", f"must be in (0, 1] (1: the camera's size), got {scale}"))
    if isinstance(quality, bool) or not 1 <= quality <= 100:
        found.append(("frame_quality", f"must be a JPEG quality 1..100, got {quality}"))
    return found


@dataclass(frozen=True)
class PublishConfig:
    """Where and how label maps are published."""

    endpoints: tuple[str, ...] = ("tcp://*:5555",)
    encoding: str = "zstd"
    sndhwm: int = 4  # per-subscriber queue, in messages: a slow one drops beyond this
    linger_ms: int = 200
    curve_keys: str | None = None  # folder from `segstream keygen`: enables CURVE
    publish_frames: float = 0.0  # camera frames (JPEG, topic img/) per s per camera; 0: off
    frame_scale: float = 0.5  # frame size on the wire, relative to the camera's, (0, 1]
    frame_quality: int = 80  # JPEG quality 1..100

    def __post_init__(self) -> None:
        found = frame_problems(self.publish_frames, self.frame_scale, self.frame_quality)
        if self.encoding not in ENCODINGS:
            found.append(("encoding", f"must be one of {list(ENCODINGS)}, got "
                                      f"{self.encoding!r}"))
        if not self.endpoints:
            found.append(("endpoints", "at least one is needed, e.g. tcp://*:5555"))
        for i, ep in enumerate(self.endpoints):
            if not ep.startswith(("tcp://", "ipc://", "inproc://")):
                found.append((f"endpoints[{i}]", f"endpoint {ep!r} must start with tcp://, "
                                                 "ipc:// or inproc://"))
        if not 1 <= self.sndhwm <= MAX_SNDHWM:
            found.append(("sndhwm", f"must be 1..{MAX_SNDHWM} messages per subscriber, got "
                                    f"{self.sndhwm}"))
        if not 0 <= self.linger_ms <= MAX_LINGER_MS:
            found.append(("linger_ms", f"must be 0..{MAX_LINGER_MS} ms, got {self.linger_ms}"))
        _problems(found)


def listen_problems(port_key: str, port: int | None, host_key: str, host: str,
                    lowest: int = 1) -> list[tuple[str, str]]:
    """``(key, reason)`` for a TCP port to listen on (None: off; 0 allowed, meaning any
    free port, when ``lowest`` is 0) and the address it listens on."""
    found = []
    if port is not None and not lowest <= port <= 65535:
        free = " (0: any free port)" if lowest == 0 else ""
        found.append((port_key, f"must be a TCP port 1..65535{free}, got {port}"))
    if not host or any(c.isspace() for c in host):
        found.append((host_key, f"must be an address to listen on, e.g. 127.0.0.1 or "
                                f"0.0.0.0, got {host!r}"))
    return found


def listen_failure(e: OSError, host: str, port: int, port_key: str, host_key: str,
                   option: str) -> ConfigError:
    """The exception for a failed bind at start: :func:`listen_error`'s text, as a
    :class:`NotReadyError` when the address may appear later."""
    why = listen_error(e, host, port, port_key, host_key, option)
    return NotReadyError(why) if isinstance(why, NotReady) else ConfigError(why)


def listen_error(e: OSError, host: str, port: int, port_key: str, host_key: str,
                 option: str) -> str:
    """``key: reason`` for a failed bind of ``host:port``; ``option`` is the ``segstream
    run`` flag a user changes (``--preview``); the fix names it and ``port_key``, what a
    launch file sets."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    how = f"{option}, or {port_key} in a launch file"
    if e.errno == errno.EADDRINUSE:
        return (f"{port_key}: {where} is already in use (another segstream or server "
                f"listens there); pick a free port, e.g. {port + 1} ({how})")
    if e.errno == errno.EACCES:
        return (f"{port_key}: not allowed to listen on {where} (ports below 1024 need "
                f"root); use e.g. 8080 ({how})")
    if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, socket.EAI_AGAIN):
        return NotReady(f"{host_key}: cannot listen on {where}: {e.strerror or e} (not on "
                        "this machine yet? a service retries; else use an address of this "
                        "machine, e.g. 127.0.0.1 or 0.0.0.0)")
    return (f"{host_key}: cannot listen on {where}: {e.strerror or e}; use an address of "
            "this machine, e.g. 127.0.0.1 or 0.0.0.0")


@dataclass(frozen=True)
class PreviewConfig:
    """The live browser preview (``segstream run --preview``): off while ``port`` is None.

    Listens on loopback unless ``host`` says otherwise (it has no authentication); sends
    each watched camera's newest frame and label map at most ``fps`` times a second,
    scaled down to at most ``max_width`` pixels wide, the frame as JPEG of ``quality``."""

    port: int | None = None  # TCP port; 0: any free port (printed at start)
    host: str = "127.0.0.1"
    fps: float = 10.0
    max_width: int = 640
    quality: int = 75

    def __post_init__(self) -> None:
        found = listen_problems("port", self.port, "host", self.host, lowest=0)
        if not _finite(self.fps) or not 0 < self.fps <= 60:
            found.append(("fps", f"must be frames per second in (0, 60], got {self.fps}"))
        if not 16 <= self.max_width <= 8192:
            found.append(("max_width", f"must be 16..8192 pixels, got {self.max_width}"))
        if not 1 <= self.quality <= 100:
            found.append(("quality", f"must be a JPEG quality 1..100, got {self.quality}"))
        _problems(found)


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: sources -> engine -> publisher.

    Sources without an id get ``cam<position>`` here, as on the command line, so every
    way of building a config names cameras the same way."""

    sources: tuple[SourceConfig, ...]
    model: str | None = None  # None: the shipped CamVid model
    backend: str | None = None  # None: by model suffix
    threads: int | None = None  # engine CPU threads; None: all cores (max 4)
    letterbox: bool = False
    batch: int = 1  # frames of different cameras per engine call (stream.fanin)
    batch_wait_ms: float = 0.0  # how long a call's first frame may wait for other cameras
    overlap: str = "auto"  # post, encode and publish on their own thread: auto, on, off
    engine_policy: str = "auto"  # ONNX Runtime threads: auto, latency (spin), throughput
    tta: str = "none"  # test-time augmentation: flip = two network runs a frame, averaged
    publish: PublishConfig = field(default_factory=PublishConfig)
    stats_interval: float = 1.0  # seconds between status lines; 0 disables
    metrics_port: int | None = None  # Prometheus metrics on this port
    metrics_bind: str = "127.0.0.1"  # address the metrics server listens on (0.0.0.0: all)
    preview: PreviewConfig = field(default_factory=PreviewConfig)  # live browser view
    max_frames: int = 0  # stop after this many published frames (0: run until stopped)
    duration: float = 0.0  # stop after this many seconds (0: run until stopped)
    version: int = LAUNCH_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", with_default_ids(list(self.sources)))
        found = []
        if not self.sources:
            found.append(("sources", "at least one source is needed"))
        first: dict[str, int] = {}
        for i, s in enumerate(self.sources):
            if s.id in first:
                found.append((f"sources[{i}].id", f"{s.id!r} is already the id of "
                                                  f"sources[{first[s.id]}] (unnamed sources "
                                                  "are named cam<position>); ids must be unique"))
            first.setdefault(s.id, i)
        if self.version != LAUNCH_VERSION:
            found.append(("version", f"must be {LAUNCH_VERSION}, got {self.version}"))
        if self.backend not in (None, "onnxruntime", "torch", "tensorrt"):
            found.append(("backend", f"must be onnxruntime, torch or tensorrt, got "
                                     f"{self.backend!r}"))
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            found.append(("threads", f"must be 1..{MAX_THREADS}, got {self.threads}"))
        found += engine_problems(self.batch, self.batch_wait_ms, self.overlap,
                                 self.engine_policy)
        if self.tta not in TTA_MODES:
            found.append(("tta", f"must be one of {', '.join(TTA_MODES)}, got {self.tta!r}"))
        if not _finite(self.stats_interval) or self.stats_interval < 0:
            found.append(("stats_interval", f"must be seconds >= 0 (0: no status lines), got "
                                            f"{self.stats_interval}"))
        found += listen_problems("metrics_port", self.metrics_port, "metrics_bind",
                                 self.metrics_bind)
        if self.max_frames < 0:
            found.append(("max_frames", f"must be >= 0 (0: no limit), got {self.max_frames}"))
        if not _finite(self.duration) or self.duration < 0:
            found.append(("duration", f"must be seconds >= 0 (0: no limit), got "
                                      f"{self.duration}"))
        _problems(found)


def engine_problems(batch: int, batch_wait_ms: float, overlap: str,
                    engine_policy: str) -> list[tuple[str, str]]:
    """``(key, reason)`` for each bad concurrency setting (see :class:`PipelineConfig`)."""
    found = []
    if isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        found.append(("batch", f"must be 1..{MAX_BATCH} frames per engine call (1: no "
                               f"batching), got {batch}"))
    if not _finite(batch_wait_ms) or not 0 <= batch_wait_ms <= 1000:
        found.append(("batch_wait_ms", f"must be milliseconds in 0..1000, got {batch_wait_ms}"))
    if overlap not in OVERLAP_MODES:
        found.append(("overlap", f"must be one of {', '.join(OVERLAP_MODES)}, got {overlap!r}"))
    if engine_policy not in ENGINE_POLICIES:
        found.append(("engine_policy", f"must be one of {', '.join(ENGINE_POLICIES)}, got "
                                       f"{engine_policy!r}"))
    return found


def with_default_ids(sources: list[SourceConfig]) -> tuple[SourceConfig, ...]:
    """Give unnamed sources ids cam0, cam1, ... by position."""
    return tuple(s if s.id else dataclasses.replace(s, id=f"cam{i}") for i, s in enumerate(sources))


def parse_source_arg(text: str) -> SourceConfig:
    """``[ID=]URI`` from the command line; ``=`` inside a URI query is left alone."""
    from stream.sources import split_source_arg

    cam_id, uri = split_source_arg(text)
    return SourceConfig(uri=uri, id=cam_id)
