"""The validated YAML launch-file loader: YAML (``yaml.SafeLoader``, duplicate keys
refused) -> ``--set`` overrides -> the frozen dataclasses of :mod:`stream.config`.

Unknown keys, wrong types and bad values raise :class:`~stream.config.ConfigError` naming
the file, the key path (``sources[1].stall_timeout``) and the reason; every error of a
file is reported at once.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stream.config import ConfigError, PipelineConfig

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
