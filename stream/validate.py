"""The one validation path for ``segstream run``, ``segstream launch`` and ``launch --check``.

:mod:`stream.config` (its dataclasses) and :mod:`stream.launch_file` (a file's unknown and
duplicate keys, its types) check a configuration's shape and values; :func:`check_config`
checks what needs the machine: that every source parses and exists, that its frame size can
be served, that the model and its sidecar load (and, with ``load_model``, that the graph
agrees with the sidecar), that the publish endpoints can be bound and that the preview's
and the metrics' ports are free. Every
problem is reported at once, each with its key path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stream.config import ConfigError, NotReady, NotReadyError, PipelineConfig
from stream.launch_file import Override, blame, parse_launch


def check_config(cfg: PipelineConfig, *, load_model: bool = False) -> list[str]:
    """Every problem in ``cfg`` that only the machine can tell, as ``key.path: reason``."""
    return (_check_sources([(s.uri, s.id) for s in cfg.sources])
            + _check_model(cfg.model, cfg.backend, load_model, cfg.batch, cfg.tta)
            + _check_publish(cfg.publish.endpoints, cfg.publish.curve_keys)
            + _check_preview(cfg) + _check_metrics(cfg))


def validate(cfg: PipelineConfig, *, where: str = "", load_model: bool = False) -> None:
    """Raise one :class:`ConfigError` listing every problem :func:`check_config` finds."""
    errors = check_config(cfg, load_model=load_model)
    if errors:
        raise _error(errors, where, _not_ready(errors))


def check_launch(path: str | Path, *, load_model: bool = False,
                 overrides: Sequence[Override] = ()) -> PipelineConfig:
    """Load a launch file and check everything, for ``launch`` and ``launch --check`` alike.

    Structural errors (types, ranges, unknown and duplicate keys) and machine errors
    (sources, model, endpoints) are reported together: when the file does not even form
    a config, the sources, model and endpoints that can be read from it are still checked.
    ``overrides`` (``--set``, ``--publish``) are applied to the document first, so they go
    through the same checks; an error on a key they set names the option.

    Raises:
        ConfigError: naming the file and listing every problem with its key path.
    """
    cfg, errors, data = parse_launch(path, overrides)
    if cfg is not None:
        problems = check_config(cfg, load_model=load_model)
        if problems:
            raise _error(blame(problems, overrides), str(path), _not_ready(problems))
        return cfg
    if not Path(path).is_file():
        raise ConfigError(errors[0])
    raw = blame(_check_raw(data, Path(path).parent), overrides)
    errors += [e for e in raw if e not in errors]
    raise _error(errors, str(path))


def _error(errors: list[str], where: str, not_ready: bool = False) -> ConfigError:
    """One error for all ``errors``; a :class:`NotReadyError` when ``not_ready`` (every
    problem may be gone at the next start)."""
    from stream.sources import VALID_FORMS

    hint = VALID_FORMS if any(".uri:" in e for e in errors) else ""
    cls = NotReadyError if not_ready else ConfigError
    return cls(errors=errors, where=where, hint=hint)


def _not_ready(problems: Sequence[str]) -> bool:
    return bool(problems) and all(isinstance(p, NotReady) for p in problems)


def _check_raw(data: object, base: Path) -> list[str]:
    """Machine checks on the parts of a launch document that are well-formed."""
    if not isinstance(data, dict):
        return []
    errors = []
    sources = data.get("sources")
    if isinstance(sources, list):
        # each well-formed source, checked under its own index (a malformed one beside it
        # is reported by the structural check, and must not shift the others' numbers)
        for i, s in enumerate(sources):
            if isinstance(s, dict) and isinstance(s.get("uri"), str) and s["uri"]:
                cam_id = s.get("id") or f"cam{i}"
                if isinstance(cam_id, str):
                    errors += _check_sources([(s["uri"], cam_id)], first=i)
    model = data.get("model")
    if model is None or isinstance(model, str):
        if model and not Path(model).is_absolute() and (base / model).exists():
            model = str(base / model)
        backend = data.get("backend")
        errors += _check_model(model, backend if isinstance(backend, str) else None, False)
    port, bind = data.get("metrics_port"), data.get("metrics_bind", "127.0.0.1")
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535 and (
            isinstance(bind, str) and bind):
        from stream.metrics import check

        errors += check(port, bind)
    publish = data.get("publish")
    if isinstance(publish, dict):
        eps = publish.get("endpoints", ())
        eps = [eps] if isinstance(eps, str) else eps
        keys = publish.get("curve_keys")
        if (isinstance(eps, list) and all(isinstance(e, str) for e in eps)
                and (keys is None or isinstance(keys, str))):
            errors += _check_publish(tuple(eps), keys)
    return errors


def _check_sources(sources: Sequence[tuple[str, str]], first: int = 0) -> list[str]:
    """Problems of ``(uri, id)`` pairs, keyed ``sources[first + n]``."""
    from stream.pipeline import frame_size_problem
    from stream.sources import SourceError, parse_source
    from stream.wire import DEFAULT_MAX_PIXELS

    errors = []
    for i, (uri, cam_id) in enumerate(sources, start=first):
        try:
            spec = parse_source(uri, cam_id)
        except SourceError as e:
            text = str(e).split("\n", 1)[0]  # the valid forms are listed once, at the end
            errors.append(f"sources[{i}].{'id' if text.startswith('camera id') else 'uri'}: "
                          f"{text}")
            continue
        if spec.width and spec.height and (
                why := frame_size_problem(spec.height, spec.width, DEFAULT_MAX_PIXELS)):
            errors.append(f"sources[{i}].uri: {spec.display}: {why}")
    return errors


def _check_model(name: str | None, backend: str | None, load_model: bool,
                 batch: int = 1, tta: str = "none") -> list[str]:
    from engines.backend import (
        BackendError,
        DeviceUnavailableError,
        backend_for_path,
        create_backend,
    )
    from engines.segmenter import check_tta
    from engines.spec import ModelSpec, ModelSpecError, sidecar_path
    from engines.zoo import NoModelError, resolve_model

    try:
        model = resolve_model(name)
    except NoModelError as e:
        return [f"model: {e}"]
    if not model.is_file():
        make = ("build it with `segstream build MODEL.onnx --out ...`"
                if model.suffix in (".engine", ".plan")
                else "train one with `segstream train`")
        where = "" if model.is_absolute() else (
            f" ({model.absolute()}: a relative path is looked up next to the launch file, "
            "then in the working directory)")
        return [f"model: model file {model}{where} not found; {make} or leave out model to "
                "use the shipped CamVid model"]
    side = sidecar_path(model)
    try:
        if side.is_file() or model.suffix != ".pt":  # a .pt may carry its own spec
            spec = ModelSpec.load(side)
            try:
                check_tta(tta, spec)
            except BackendError as e:
                return [f"tta: {e}"]
        if load_model:  # with --batch, also that ONNX Runtime can run the batches
            ort = batch > 1 and (backend or backend_for_path(model)) == "onnxruntime"
            create_backend(model, backend, threads=1, **({"batch": batch} if ort else {})).close()
    except DeviceUnavailableError:
        raise  # not a problem of the launch file: the caller exits 1 (worth a restart)
    except (ModelSpecError, BackendError) as e:
        return [f"model: {e}"]
    return []


def _check_preview(cfg: PipelineConfig) -> list[str]:
    if cfg.preview.port is None:
        return []
    from stream.preview import check

    return check(cfg.preview)


def _check_metrics(cfg: PipelineConfig) -> list[str]:
    from stream.metrics import check  # no metrics_port: nothing to check

    return check(cfg.metrics_port, cfg.metrics_bind)


def _check_publish(endpoints: Sequence[str], keys: str | None) -> list[str]:
    errors = []
    for i, ep in enumerate(endpoints):
        key = f"publish.endpoints[{i}]"
        if ep.startswith("ipc://"):
            path = ep[len("ipc://"):]
            if path and path != "*" and not path.startswith("@"):
                parent = Path(path).parent
                if not parent.is_dir():
                    errors.append(f"{key}: folder {parent} of {ep} does not exist")
        elif ep.startswith("tcp://"):
            host, sep, port = ep[len("tcp://"):].rpartition(":")
            if not sep or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
                errors.append(f"{key}: {ep} needs a port 1..65535 or *, e.g. tcp://*:5555")
            elif port != "*" and (why := _port_taken(host, int(port))):
                errors.append(f"{key}: {ep}: {why}")
    if keys is not None and not Path(keys).is_dir():
        errors.append(f"publish.curve_keys: folder {keys} not found; create it with "
                      "`segstream keygen`")
    elif keys is not None:
        from stream.security import CurveConfig, check_server_keys

        errors += [f"publish.curve_keys: {why}"
                   for why in check_server_keys(CurveConfig.from_keys_dir(keys))]
    return errors


def _port_taken(host: str, port: int) -> str:
    """Why ZeroMQ could not bind ``tcp://host:port`` (in use, not allowed), else "": binds
    and releases a plain IPv4 socket, as ZeroMQ binds (IPv6 off). Only ``*`` and numeric
    IPv4 hosts (and ``localhost``) are probed; other names and interfaces (``eth0``) are
    left to the bind (resolving them could wait on DNS)."""
    import errno
    import ipaddress
    import socket

    host = {"*": "0.0.0.0", "": "0.0.0.0", "localhost": "127.0.0.1"}.get(host, host)
    try:
        if ipaddress.ip_address(host).version != 4:
            return ""
    except ValueError:
        return ""
    try:
        socket.create_server((host, port), family=socket.AF_INET).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return "the port is already in use (another segstream or server listens there)"
        if e.errno == errno.EACCES:
            return "not allowed to listen there (ports below 1024 need root)"
    return ""
