"""Paste-safe examples: every command line in every ``--help`` epilog and in the docs'
shell blocks can be pasted into a POSIX shell as is.

* A word with ``&`` or ``?`` (a URI query) is quoted: unquoted, ``&`` ends the command
  and sends it to the background, and ``?`` is a glob (zsh refuses the line).
* A multi-line example keeps its ``\\`` continuations. An epilog written as a non-raw
  string with a single backslash at a line end loses it (Python joins the lines), which
  shows up as the next line's indent in the middle of a command.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from stream.cli import EPILOG as TOP_EPILOG
from stream.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = ("segstream", ".venv/bin/segstream", "torchrun", "make", "python", ".venv/bin/python",
            "gst-launch-1.0", "sudo")
SHELL_FENCES = ("bash", "sh", "shell", "console", "")
LOST_CONTINUATION = re.compile(r"\S {3,}--?\w")  # "... entropy       --agreement-data"


def _is_command(line: str) -> bool:
    words = line.strip().removeprefix("$ ").split()
    env_prefix = len(words) > 1 and "=" in words[0] and words[1] in PROGRAMS  # VAR=x cmd
    return bool(words) and (words[0] in PROGRAMS or env_prefix)


def commands(lines: list[str]) -> list[str]:
    """Command lines, continuation lines joined (with the backslash-newline kept)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _is_command(lines[i]):
            i += 1
            continue
        cmd = lines[i].strip().removeprefix("$ ")
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd += "\n" + lines[i]
        out.append(cmd)
        i += 1
    return out


def _strip_comment(cmd: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` after a space, unquoted)."""
    quote = ""
    for i, c in enumerate(cmd):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or cmd[i - 1].isspace()):
            return cmd[:i]
    return cmd


def unquoted_specials(cmd: str) -> list[str]:
    """Words of ``cmd`` that hold an ``&`` or ``?`` outside quotes."""
    bad, word, quote, special = [], "", "", False
    for c in _strip_comment(cmd) + " ":
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c.isspace():
            if special:
                bad.append(word)
            word, special = "", False
            continue
        elif c in "&?" and not word.endswith("\\"):
            special = True
        word += c
    return bad


def problems(cmd: str) -> list[str]:
    found = [f"unquoted & or ? in {w!r}" for w in unquoted_specials(cmd)]
    if any(LOST_CONTINUATION.search(part.strip()) for part in _strip_comment(cmd).split("\n")):
        found.append("a continuation backslash was lost (indent in mid-command)")
    return found


def _check(where: str, lines: list[str]) -> list[str]:
    errors = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("--") and i and _is_command(lines[i - 1]) \
                and not lines[i - 1].rstrip().endswith("\\"):
            errors.append(f"{where}: option line without a continuation on the line above: "
                          f"{lines[i - 1].strip()!r}")
    errors += [f"{where}: {p}: {cmd!r}" for cmd in commands(lines) for p in problems(cmd)]
    return errors


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def markdown_shell_lines(text: str) -> list[str]:
    """Lines of fenced shell blocks, plus inline code spans that are commands."""
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            lines.append("")  # blocks never join
            continue
        if fence is not None:
            if fence in SHELL_FENCES:
                lines.append(line)
        else:
            lines += [span for span in re.findall(r"`([^`]+)`", line) if _is_command(span)]
            lines.append("")
    return lines


# ------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(("cmd", "expected"), [
    ("segstream probe 'test://ball?width=1&height=2'", []),
    ("segstream probe test://ball?width=1&height=2", ["test://ball?width=1&height=2"]),
    ("segstream run --source x=rtsp://h/p?transport=tcp  # a ?comment & more",
     ["x=rtsp://h/p?transport=tcp"]),
    ('segstream run --source "v4l2:///dev/video0?width=1" --publish tcp://*:5555', []),
])
def test_unquoted_specials(cmd: str, expected: list[str]) -> None:
    assert unquoted_specials(cmd) == expected


def test_checker_catches_a_lost_continuation() -> None:
    lost = "  segstream calibrate m.onnx --method entropy       --agreement-data d.mp4"
    assert _check("x", [lost])
    assert _check("x", ["  segstream calibrate m.onnx --method entropy", "      --data d"])
    kept = ["  segstream calibrate m.onnx --method entropy \\", "      --data d.mp4"]
    assert _check("x", kept) == []
    assert _check("x", ["  segstream bench                # shipped model"]) == []


# ------------------------------------------------------------------------- the sources


def test_every_epilog_is_paste_safe() -> None:
    errors = _check("segstream --help", TOP_EPILOG.splitlines())
    for name, parser in _subparsers().items():
        for field in ("epilog", "description"):
            errors += _check(f"segstream {name} --help ({field})",
                             (getattr(parser, field) or "").splitlines())
    assert not errors, "\n".join(errors)


def test_epilogs_with_backslashes_are_raw_strings() -> None:
    """A non-raw string literal whose line ends in a single backslash joins the lines."""
    errors = []
    for path in [*sorted((REPO / "stream" / "commands").glob("*.py")), REPO / "stream/cli.py"]:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            literal = ast.get_source_segment(source, node) or ""
            raw = literal[:2].lower() in ('r"', "r'")
            if not raw and re.search(r"(?<!\\)\\\n", literal):
                errors.append(f"{path.relative_to(REPO)}:{node.lineno}: a line ends in a "
                              f"single backslash in a non-raw string; use r\"\"\"...\"\"\"")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("doc", [*sorted(p.name for p in (REPO / "docs").glob("*.md")),
                                 "../README.md"])
def test_doc_examples_are_paste_safe(doc: str) -> None:
    path = REPO / "docs" / doc
    errors = _check(doc, markdown_shell_lines(path.read_text()))
    assert not errors, "\n".join(errors)
