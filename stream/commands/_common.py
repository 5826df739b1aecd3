"""Helpers shared by the command modules: error reporting, argument types, logging setup."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engines.backend import BackendError, DeviceUnavailableError
from engines.spec import ModelSpecError
from engines.zoo import NoModelError
from stream.config import ConfigError, NotReadyError

# Errors that mean "the user's input is wrong": print the message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    BackendError, ModelSpecError, NoModelError, ConfigError, FileNotFoundError,
)


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the stream-side ones (imported lazily: GStreamer, ZeroMQ)."""
    from stream.publish import PublishError
    from stream.security import SecurityError
    from stream.sources import SourceError

    return (*USER_ERRORS, SourceError, PublishError, SecurityError)


def report_errors(func: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wrap a command: user errors print ``segstream: error: ...`` and exit 2; an
    accelerator that is not usable just now, or an address not on this machine yet, exits
    1, which a service restarts."""

    def wrapper(args: Any) -> int:
        try:
            return func(args)
        except (DeviceUnavailableError, NotReadyError) as e:
            print(f"segstream: error: {e}", file=sys.stderr)
            return 1
        except user_errors() as e:
            print(f"segstream: error: {e}", file=sys.stderr)
            return 2

    wrapper.__doc__ = func.__doc__
    return wrapper


def positive(kind: type = float, what: str = "a number", *, zero: bool = False,
             most: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for a finite number > 0 (``zero``: >= 0), at most ``most``.

    Every command words a bad value alike; argparse names the flag in front:
    ``argument --repeat/-n: must be a whole number > 0, got '0'``. ``what`` says what the
    value is (``"a number of seconds"``); ints read as ``"a whole number"`` by default.
    """
    if kind is int and what == "a number":
        what = "a whole number"
    low = ">= 0" if zero else "> 0"
    rule = f"{what} {low}" + (f" and <= {most:g}" if most is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or (
                most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback wording, never reached
    return parse


def output_problem(path: str | Path | None, flag: str, *, inputs: Sequence[Any] = (),
                   suffixes: Sequence[str] = ()) -> str | None:
    """Why writing ``path`` (an output option) would fail or destroy an input, else None;
    for checking before any work is done (a report written after an hour of calibration
    must not fail on its path, nor replace the model it scored).

    ``inputs``: files the command reads (a model's sidecar is added for each ``.onnx``,
    ``.engine`` or ``.plan``); ``suffixes``: the suffixes the output may have.
    """
    if path is None or str(path) == "":
        return None
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        return f"{flag} {out} must end in {' or '.join(suffixes)}"
    guarded = []
    for item in inputs:
        if item:
            guarded.append(Path(item))
            if Path(item).suffix.lower() in (".onnx", ".engine", ".plan"):
                guarded.append(Path(item).with_suffix(".json"))
    target = out.resolve()
    for item in guarded:
        if item.exists() and item.resolve() == target:
            return f"{flag} {out} is {item}, an input of this command: write elsewhere"
    if out.is_dir():
        return f"{flag} {out} is a folder: give a file path in it"
    parent = out.parent.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {out}: {parent} is a file, not a folder"
    try:  # os.access says yes to root on /proc and read-only mounts: try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        return f"{flag} {out}: cannot write in {parent} ({e.strerror or e})"
    return None


TORCH_PACKAGES = ("torch", "torchvision")
TORCH_INSTALL = ("install the training extra: pip install torch==2.13.0 (CPU) or the torch "
                 "build for your platform (on Jetson: NVIDIA's JetPack wheel), then "
                 "pip install 'segstream[train]'")


def is_missing_torch(error: BaseException) -> bool:
    """True when ``error`` is the ModuleNotFoundError of an absent torch (or torchvision)."""
    name = getattr(error, "name", None) or ""
    return isinstance(error, ModuleNotFoundError) and name.split(".")[0] in TORCH_PACKAGES


def torch_missing_message(command: str) -> str:
    """What a torch-only command prints when torch is not installed (exit code 2)."""
    return (f"segstream {command}: error: this command needs torch, which is not installed; "
            f"{TORCH_INSTALL}. Streaming, build, bench, calibrate and subscribe do not need it.")


def setup_logging(verbose: int = 0) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(logging.DEBUG, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
