"""RTSP against a real GstRtspServer on 127.0.0.1: the server goes away (a camera
reboots), the capture notices, backs off, reconnects when the server is back on the same
port, and frames resume with the sequence counting on."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from stream.capture import open_capture
from stream.capture_base import Backoff, CaptureOptions
from stream.sources import parse_source_args
from tests.stream._media import RtspTestServer, require_elements

pytestmark = pytest.mark.timeout(60)


class States:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, _camera_id: str, state: str, _detail: str) -> None:
        with self._lock:
            self.seen.append(state)


def next_frame(cap, after_seq: int, timeout: float):
    """First frame with seq > after_seq within timeout seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = cap.latest(0.5)
        if frame is not None and frame.seq > after_seq:
            return frame
    return None


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_capture_reconnects_after_server_restart(transport: str):
    require_elements("rtspsrc", "decodebin", "videotestsrc")
    server = RtspTestServer(width=160, height=120, fps=15).start()
    states = States()
    opts = CaptureOptions(stall_timeout=1.0, poll_interval=0.05,
                          backoff=Backoff(initial=0.25, factor=2, maximum=1.0))
    (spec,) = parse_source_args([f"yard={server.url}?transport={transport}"])
    cap = open_capture(spec, backend="gstreamer", options=opts, on_state=states)
    try:
        first = next_frame(cap, -1, 10)
        assert first is not None, f"no frame from {server.url}: {cap.stats()}"
        assert first.camera_id == "yard" and first.shape == (120, 160)
        assert cap.state == "running" and cap.reconnects == 0

        server.stop()  # the camera reboots
        assert cap.wait_state({"stalled", "reconnecting"}, 5), cap.stats()
        time.sleep(1.0)  # at least one attempt meets a closed port
        before = cap.captured

        server = RtspTestServer(port=server.port, width=160, height=120, fps=15).start()
        resumed = next_frame(cap, before - 1, 12)
        assert resumed is not None, f"frames did not resume: {cap.stats()}"
        assert resumed.shape == (120, 160) and resumed.seq >= before
        assert cap.wait_state({"running"}, 5)
        assert cap.reconnects >= 1
    finally:
        cap.close()
        server.stop()
    assert states.seen[:2] == ["starting", "running"]
    assert "reconnecting" in states.seen
    assert states.seen[-2:] == ["running", "stopped"]


def test_rtsp_camera_with_audio_delivers_video():
    """rtspsrc's first pad is the audio stream here; the video must still be decoded."""
    require_elements("rtspsrc", "decodebin", "videotestsrc", "audiotestsrc", "rtpL16pay")
    with RtspTestServer(width=96, height=64, audio=True) as server:
        spec = parse_source_args([server.url])[0]
        with open_capture(spec, backend="gstreamer",
                          options=CaptureOptions(stall_timeout=3.0, max_retries=0)) as cap:
            frame = next_frame(cap, -1, 10)
            assert frame is not None, cap.stats()
            assert frame.shape == (64, 96) and cap.errors == 0


def test_hung_camera_is_detected_as_stalled_and_closes_promptly():
    """A camera that accepts the TCP connection but never answers RTSP: no error ever
    comes, only the stall timeout notices, and close() must not hang in the handshake."""
    require_elements("rtspsrc", "decodebin")
    states = States()
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"rtsp://127.0.0.1:{hung.getsockname()[1]}/stream1"
        opts = CaptureOptions(stall_timeout=0.5, first_frame_timeout=0.5, poll_interval=0.05,
                              backoff=Backoff(initial=0.1, factor=2, maximum=0.2))
        cap = open_capture(parse_source_args([url])[0], backend="gstreamer", options=opts,
                           on_state=states)
        try:
            deadline = time.monotonic() + 10
            while cap.reconnects < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert cap.reconnects >= 2 and cap.captured == 0 and cap.errors == 0
        finally:
            t0 = time.monotonic()
            cap.close()
            assert time.monotonic() - t0 < 5
    assert states.seen[:3] == ["starting", "stalled", "reconnecting"]
    assert states.seen[-1] == "stopped"


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_many_camera_reboots():
    """Ten server restarts in a row: frames resume every time, threads and memory stay
    flat. Run on purpose: pytest -m soak tests/stream/test_rtsp_reconnect.py"""
    require_elements("rtspsrc", "decodebin", "videotestsrc")
    server = RtspTestServer(width=160, height=120, fps=15).start()
    opts = CaptureOptions(stall_timeout=1.0, poll_interval=0.05,
                          backoff=Backoff(initial=0.25, factor=2, maximum=1.0))
    cap = open_capture(parse_source_args([server.url])[0], backend="gstreamer", options=opts)
    rss = []
    try:
        assert next_frame(cap, -1, 10) is not None
        threads = threading.active_count()
        for i in range(10):
            server.stop()
            assert cap.wait_state({"stalled", "reconnecting"}, 5), (i, cap.stats())
            before = cap.captured
            server = RtspTestServer(port=server.port, width=160, height=120, fps=15).start()
            assert next_frame(cap, before - 1, 12) is not None, (i, cap.stats())
            rss.append(int(Path("/proc/self/statm").read_text().split()[1]))
        assert cap.reconnects >= 10
        assert threading.active_count() <= threads + 1
        # pages; the server's pipelines live in this process too (~1 MB up and down per
        # restart), so only a leak of several MB per rebuild fails this
        assert rss[-1] - rss[1] < 10_000
    finally:
        cap.close()
        server.stop()
