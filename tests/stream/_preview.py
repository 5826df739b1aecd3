"""Helpers of the preview tests: a real ``segstream run`` (as a process, or
``run_pipeline`` on a thread) with the preview on, and clients of its HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.config import PipelineConfig, PreviewConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from tests.stream._media import require_gst

REPO = Path(__file__).resolve().parents[2]
URL_RE = re.compile(r"preview on (http://\S+/)")


def require_preview() -> None:
    require_gst()
    pytest.importorskip("tornado", reason="the preview needs tornado: pip install "
                                          "'segstream[preview]'")


@contextlib.contextmanager
def segstream_run(args: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real ``segstream run ... --preview`` process and the URL it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        url = ""
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if m := URL_RE.search(line):
                url = m.group(1)
        assert url, "no preview URL printed:\n" + "".join(lines)
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe open
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        finally:
            proc.kill()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def status(url: str, cam: str) -> dict:
    cams = json.loads(get(url + "api/status")[2])["cameras"]
    return next(c for c in cams if c["camera"] == cam)


def until(check, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def ws_messages(url: str, n_frames: int, timeout: float = 20.0
                      ) -> list[tuple[float, bytes | str]]:
    """(arrival time, message) from a camera page's WebSocket until ``n_frames`` frames."""
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(url)
    got: list[tuple[float, bytes | str]] = []
    try:
        deadline = time.monotonic() + timeout
        while sum(isinstance(m, bytes) for _, m in got) < n_frames:
            left = deadline - time.monotonic()
            msg = await asyncio.wait_for(conn.read_message(), max(left, 0.01))
            assert msg is not None, "the server closed the WebSocket"
            got.append((time.monotonic(), msg))
    finally:
        conn.close()
    return got


def ws_frames(url: str, n: int) -> list[bytes]:
    return [m for _, m in asyncio.run(ws_messages(url, n)) if isinstance(m, bytes)]


class _Out(io.StringIO):
    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


@contextlib.contextmanager
def in_process_run(cfg: PipelineConfig) -> Iterator[tuple[str, _Out, dict]]:
    """``run_pipeline(cfg)`` on a thread; the preview URL it printed, its output, and
    (after the block) its exit code and result in the dict."""
    stop, out, box = threading.Event(), _Out(), {}

    def target() -> None:
        box["code"], box["result"] = run_pipeline(cfg, stop=stop, out=out)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        url = until(lambda: (m := URL_RE.search(out.getvalue())) and m.group(1),
                    timeout=60, what="the preview URL")
        yield url, out, box
    finally:
        stop.set()
        thread.join(20)


def run_cfg(model: Path, uri: str, **preview: object) -> PipelineConfig:
    return PipelineConfig(sources=(SourceConfig(uri, "cam0"),), model=str(model), threads=1,
                          publish=PublishConfig((f"ipc:///tmp/segstream-pv-{os.getpid()}-"
                                                 f"{time.monotonic_ns()}",)),
                          stats_interval=0, preview=PreviewConfig(port=0, **preview))


