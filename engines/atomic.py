"""Files replaced whole or not at all: write to temporary siblings, then rename.

Models, sidecars, checkpoints, engines and admitted keys are read by other processes (a running
pipeline, a resumed training run, a subscriber loading keys) and written by commands that
can fail or be killed half-way. Everything that writes them goes through :func:`staged`:
a reader sees the old file or the new one, never half of one, and a failed write leaves
the old file and no temporary behind. A rename also replaces a symlink at the path
instead of writing through it.

``engines`` is imported by ``stream`` and ``calibrate``, so this one helper serves all.
(keygen's new key pairs are made in a private temporary folder instead, so that a secret
key is never readable by others.) A process killed inside a block leaves its hidden
temporary (``.NAME.PID.TOKEN.tmp.SUFFIX``) behind; nothing else reads those names.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_path(path: Path) -> Path:
    """A temporary sibling of ``path``: hidden, unique to this call (process id and a
    random token: threads and processes writing the same path do not collide), and ending
    in the same suffix (writers such as matplotlib and onnx pick the format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def staged(*paths: str | Path, mkdir: bool = False) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary sibling for each path; when the block ends without an error,
    rename each over its path, in the order given; otherwise remove them.

    Write every file inside the block and nothing is renamed until all of them are
    complete (a model and its sidecar: both new, or both old, except for a crash between
    the renames). ``mkdir`` creates missing parent folders first.

    Example::

        with staged(onnx_path, sidecar) as (tmp_onnx, tmp_side):
            onnx.save(proto, tmp_onnx)
            tmp_side.write_text(text)
    """
    finals = [Path(p) for p in paths]
    if mkdir:
        for p in finals:
            p.parent.mkdir(parents=True, exist_ok=True)
    tmps = tuple(staging_path(p) for p in finals)
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, mkdir: bool = False) -> Path:
    """``path.write_bytes(data)``, atomically (:func:`staged`)."""
    with staged(path, mkdir=mkdir) as (tmp,):
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, mkdir: bool = False) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically (:func:`staged`)."""
    with staged(path, mkdir=mkdir) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
