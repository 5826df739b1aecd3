"""Pipeline configuration: frozen dataclasses and the validated YAML launch-file loader.

A launch file is YAML read with ``yaml.safe_load``; every key is checked against the
dataclasses below. Unknown keys, wrong types and bad values raise :class:`ConfigError`
naming the file, the key path (``sources[1].stall_timeout``) and the reason.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import re
import socket
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engines.backend import ENGINE_POLICIES

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


_BAD = object()  # a value that failed validation (its errors are already recorded)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _build(cls: type, data: Any, where: str, errors: list[str]) -> Any:
    """Construct dataclass ``cls`` from a mapping, rejecting unknown keys (recursive);
    top-level ``x-...`` keys are the file's own (anchors for ``<<:`` merges) and ignored.

    Every problem is appended to ``errors`` as ``key.path: reason``; returns ``_BAD`` when
    there was one, so that siblings are still checked and all errors are reported."""
    if data is None and not where:
        errors.append("the file is empty: a launch file needs at least `sources:` (see "
                      "launch/*.yaml for examples)")
        return _BAD
    if not isinstance(data, dict):
        got = "nothing (an empty entry)" if data is None else type(data).__name__
        errors.append(f"{where or 'top level'}: expected a mapping, got {got}")
        return _BAD
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    n_errors = len(errors)
    extension = {k for k in data if not where and isinstance(k, str) and k.startswith("x-")}
    for name in sorted(set(data) - set(fields) - extension, key=str):
        errors.append(f"{_key(where, str(name))}: unknown key; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        if name in fields:
            kwargs[name] = _coerce(hints[name], value, _key(where, name), errors)
    for n, f in fields.items():
        if (n not in kwargs and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            errors.append(f"{where or 'top level'}: missing required key {n!r}")
    if len(errors) > n_errors:  # still check the good values here, to report every error
        errors.extend(_key(where, e) for e in _own_problems(cls, kwargs))
        return _BAD
    try:
        return cls(**kwargs)
    except ConfigError as e:
        errors.extend(_key(where, err) for err in e.errors)
    except (TypeError, ValueError) as e:
        errors.append(f"{where or 'top level'}: {e}")
    return _BAD


def _own_problems(cls: type, kwargs: dict[str, Any]) -> list[str]:
    """The errors ``cls.__post_init__`` finds in the valid ``kwargs`` when others are bad
    or missing (those fields take their defaults, and errors about them are dropped)."""
    obj = object.__new__(cls)
    skip = set()
    for f in dataclasses.fields(cls):
        value = kwargs.get(f.name, _BAD)
        if value is _BAD:
            skip.add(f.name)
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = ()  # a required field (sources): empty, and its errors are dropped
        object.__setattr__(obj, f.name, value)
    try:
        obj.__post_init__()
    except ConfigError as e:
        return [err for err in e.errors if re.split(r"[.\[:]", err, maxsplit=1)[0] not in skip]
    except (TypeError, ValueError):
        pass  # reported once the other errors are fixed
    return []


def _coerce(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, errors)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if value is None:
            errors.append(f"{where}: empty: give a list with at least one entry")
            return _BAD
        if isinstance(value, str | dict) or not isinstance(value, list | tuple):
            value = [value]
        items = tuple(_coerce(item, v, f"{where}[{i}]", errors) for i, v in enumerate(value))
        return _BAD if any(v is _BAD for v in items) else items
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, errors)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or
                                          (tp is int and isinstance(value, bool))):
        hint = ""
        if tp is str and isinstance(value, bool):
            hint = (" (YAML reads unquoted on/off/yes/no as true/false: quote the word, e.g. "
                    "'off')")
        elif isinstance(value, bool):
            hint = (" (YAML reads unquoted on/off/yes/no as true/false: write a number, or "
                    "leave the key out for its default)")
        elif tp in (int, float) and isinstance(value, str):
            hint = _number_hint(tp, value)
        errors.append(f"{where}: expected {tp.__name__}, got {value!r}{hint}")
        return _BAD
    return value


def _number_hint(tp: type, text: str) -> str:
    """Why a number came out as text: YAML 1.1 reads ``1e3`` as a string (it needs a dot
    and a signed exponent), and a quoted ``"2.5"`` is a string."""
    if re.fullmatch(r"[-+]?\d+(\.\d*)?", text.strip()):
        return " (quoted: drop the quotes)"
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text.strip()):
        if tp is int:
            return f" (YAML reads {text} as text: write the whole number, e.g. {float(text):.0f})"
        return (f" (YAML reads {text} as text: write it with a dot and a signed exponent, "
                f"e.g. {float(text):.1e}, or in full)")
    return ""


def config_from_dict(data: Any, *, source: str = "<dict>",
                     errors: Sequence[str] = ()) -> PipelineConfig:
    """Validate a parsed launch document; every error (plus ``errors`` found earlier, e.g.
    duplicate keys) is reported at once, prefixed with ``source``."""
    found = list(errors)
    cfg = _build(PipelineConfig, data, "", found)
    if found or cfg is _BAD:
        raise ConfigError(errors=found, where=source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records duplicate mapping keys (which YAML silently lets
    the last one win) in ``duplicates`` as ``key (lines A and B)``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be
                key: Any = "<<"                          # overridden here; the base merges
            else:
                key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    what = ("merge both mappings: give one <<: [*a, *b]" if key == "<<"
                            else "silently keep the last one")
                    self.duplicates.append(f"{key}: duplicate key (lines {seen[key]} and "
                                           f"{line}); YAML would {what}")
                else:
                    seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep=deep)


_STEP_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


@dataclass(frozen=True)
class Override:
    """One ``--set KEY=VALUE`` (or ``--publish``): a key path into the launch document
    and the YAML value put there before the document is validated.

    Attributes:
        key: the key path as written, e.g. ``sources[0].uri``.
        steps: the path split into mapping keys (str) and list indices (int).
        value: the value, read as YAML (``2.5`` a float, ``[a, b]`` a list, empty: null).
        origin: the option as given, for error messages.
    """

    key: str
    steps: tuple[str | int, ...]
    value: Any
    origin: str


def parse_override(text: str) -> Override:
    """``KEY=VALUE`` -> :class:`Override`; the value is YAML (a bare string stays a string).

    Raises:
        ConfigError: no ``=``, or a key that is not ``name``, ``name[i]`` and dots.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    steps: list[str | int] = []
    for part in key.split(".") if sep else []:
        m = _STEP_RE.fullmatch(part)
        if not m:
            steps = []
            break
        steps.append(m.group(1))
        steps.extend(int(i) for i in re.findall(r"\d+", m.group(2)))
    if not steps:
        if re.search(r"\[\s*-", key):
            hint = "; list indexes count from 0 (sources[0] is the first), none from the end"
        elif "-" in key:
            hint = f"; keys are written with underscores: {key.replace('-', '_')}"
        else:
            hint = ""
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with KEY a path such as "
                          f"publish.encoding or sources[0].uri{hint}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # e.g. "*" (a YAML alias): take the text as it is
    return Override(key, tuple(steps), value, f"--set {text}")


def _path_text(steps: Sequence[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".")


def apply_overrides(data: Any, overrides: Sequence[Override]) -> tuple[Any, list[str]]:
    """A copy of launch document ``data`` with every override applied, and the errors of
    those that could not be (a path through a non-mapping, a list index past the end).

    Missing mappings on the way are created; a list index may be one past the end to add
    an entry (``sources[1].uri=...`` on a one-source file).
    """
    import copy

    doc = {} if data is None else copy.deepcopy(data)
    errors = []
    for ov in overrides:
        node: Any = doc
        for depth, step in enumerate(ov.steps):
            here = _path_text(ov.steps[:depth]) or "the top level"
            last = depth == len(ov.steps) - 1
            fresh: Any = ov.value if last else ({} if isinstance(ov.steps[depth + 1], str)
                                               else [])
            if isinstance(step, str):
                if not isinstance(node, dict):
                    errors.append(f"{ov.key}: {here} is not a mapping ({ov.origin})")
                    break
                if last or not isinstance(node.get(step), dict | list):
                    node[step] = fresh if last or node.get(step) is None else node[step]
                node = node[step]
            else:
                if not isinstance(node, list) or step > len(node):
                    size = len(node) if isinstance(node, list) else 0
                    what = (f"{here} has {size} entr{'y' if size == 1 else 'ies'}"
                            if isinstance(node, list)
                            else f"{here} is not a list")
                    errors.append(f"{ov.key}: {what}; an index may be at most {size} "
                                  f"(to add one) ({ov.origin})")
                    break
                if step == len(node):
                    node.append(fresh)
                elif last:
                    node[step] = fresh
                node = node[step]
    return doc, errors


def blame(errors: Sequence[str], overrides: Sequence[Override]) -> list[str]:
    """Name the ``--set`` option behind each error whose key path it set."""
    out = []
    for err in errors:
        key = err.split(":", 1)[0]
        hit = next((ov for ov in reversed(overrides) if key == ov.key
                    or key.startswith((ov.key + ".", ov.key + "["))), None)
        out.append(f"{err} ({hit.origin})" if hit and hit.origin not in err else err)
    return out


def parse_launch(path: str | Path, overrides: Sequence[Override] = ()
                 ) -> tuple[PipelineConfig | None, list[str], Any]:
    """Read a launch file: (config or None, every error as ``key.path: reason``, the
    parsed YAML document with ``overrides`` applied). Relative model paths resolve
    against the file."""
    path = Path(path)
    if not path.is_file():
        return None, [f"launch file {path} not found (see launch/ for examples)"], None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return None, [f"launch file {path} is not UTF-8 text (byte {e.start}): is it the "
                      "YAML file?"], None
    except OSError as e:
        return None, [f"cannot read launch file {path}: {e.strerror or e}"], None
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        return None, [f"not valid YAML: {e}"], None
    finally:
        loader.dispose()
    errors = list(loader.duplicates)
    if overrides:
        data, errors2 = apply_overrides(data, overrides)
        errors += errors2
    cfg = _build(PipelineConfig, data, "", errors)
    if errors or cfg is _BAD:
        return None, blame(errors, overrides), data
    if cfg.model and not Path(cfg.model).is_absolute():
        candidate = path.parent / cfg.model  # next to the launch file first, then the cwd
        if candidate.exists():
            cfg = dataclasses.replace(cfg, model=str(candidate))
    return cfg, [], data


def load_launch(path: str | Path) -> PipelineConfig:
    """Read and validate a launch file (its shape and values; what needs the machine is
    :func:`stream.validate.check_launch`).

    Raises:
        ConfigError: naming the file and listing every problem with its key path.
    """
    cfg, errors, _ = parse_launch(path)
    if cfg is None:
        if not Path(path).is_file():
            raise ConfigError(errors[0])
        raise ConfigError(errors=errors, where=str(path))
    return cfg
