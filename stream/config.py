"""Pipeline configuration: frozen dataclasses and the validated YAML launch-file loader.

A launch file is YAML read with ``yaml.safe_load``; every key is checked against the
dataclasses below. Unknown keys, wrong types and bad values raise :class:`ConfigError`
naming the file, the key path (``sources[1].stall_timeout``) and the reason.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LAUNCH_VERSION = 1
ENCODINGS = ("raw", "zstd", "rle")


class ConfigError(ValueError):
    """A bad launch file or option; the message names the file, key and reason."""


@dataclass(frozen=True)
class SourceConfig:
    """One camera. ``uri`` forms: file path or file://, v4l2://, rtsp://, csi://, test://,
    gst:// (see ``segstream run --help``)."""

    uri: str
    id: str = ""
    stall_timeout: float = 3.0  # seconds without a frame before the source is rebuilt
    max_retries: int = -1  # reconnect attempts; -1: forever

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("uri must not be empty")
        if self.stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0, got {self.stall_timeout}")


@dataclass(frozen=True)
class PublishConfig:
    """Where and how label maps are published."""

    endpoints: tuple[str, ...] = ("tcp://*:5555",)
    encoding: str = "zstd"
    sndhwm: int = 4  # per-subscriber queue, in messages: a slow one drops beyond this
    linger_ms: int = 200
    curve_keys: str | None = None  # folder from `segstream keygen`: enables CURVE

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {self.encoding!r}")
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed, e.g. tcp://*:5555")
        for ep in self.endpoints:
            if not ep.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"endpoint {ep!r} must start with tcp://, ipc:// or inproc://")
        if self.sndhwm < 1:
            raise ValueError("sndhwm must be >= 1")


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: sources -> engine -> publisher."""

    sources: tuple[SourceConfig, ...]
    model: str | None = None  # None: the shipped CamVid model
    backend: str | None = None  # None: by model suffix
    threads: int | None = None  # engine CPU threads; None: all cores (max 4)
    letterbox: bool = False
    publish: PublishConfig = field(default_factory=PublishConfig)
    stats_interval: float = 1.0  # seconds between status lines; 0 disables
    metrics_port: int | None = None  # Prometheus metrics on this port
    max_frames: int = 0  # stop after this many published frames (0: run until stopped)
    duration: float = 0.0  # stop after this many seconds (0: run until stopped)
    version: int = LAUNCH_VERSION

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("at least one source is needed")
        ids = [s.id for s in self.sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source ids must be unique, got {ids}")
        if self.version != LAUNCH_VERSION:
            raise ValueError(f"version must be {LAUNCH_VERSION}, got {self.version}")
        if self.backend not in (None, "onnxruntime", "torch", "tensorrt"):
            raise ValueError(
                f"backend must be onnxruntime, torch or tensorrt, got {self.backend!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")


def with_default_ids(sources: list[SourceConfig]) -> tuple[SourceConfig, ...]:
    """Give unnamed sources ids cam0, cam1, ... by position."""
    return tuple(s if s.id else dataclasses.replace(s, id=f"cam{i}") for i, s in enumerate(sources))


def parse_source_arg(text: str) -> SourceConfig:
    """``[ID=]URI`` from the command line; ``=`` inside a URI query is left alone."""
    from stream.sources import split_source_arg

    cam_id, uri = split_source_arg(text)
    return SourceConfig(uri=uri, id=cam_id)


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, rejecting unknown keys (recursive)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; valid keys: "
                          f"{', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'top level'}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'top level'}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str | dict) or not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or
                                          (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def config_from_dict(data: Any, *, source: str = "<dict>") -> PipelineConfig:
    """Validate a parsed launch document; errors are prefixed with ``source``."""
    try:
        cfg = _build(PipelineConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return dataclasses.replace(cfg, sources=with_default_ids(list(cfg.sources)))


def load_launch(path: str | Path) -> PipelineConfig:
    """Read and validate a launch file. Relative model paths resolve against the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"launch file {path} not found (see launch/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    cfg = config_from_dict(data, source=str(path))
    if cfg.model and not Path(cfg.model).is_absolute() and not Path(cfg.model).exists():
        candidate = path.parent / cfg.model
        if candidate.exists():
            cfg = dataclasses.replace(cfg, model=str(candidate))
    return cfg
