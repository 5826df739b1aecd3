"""A network camera that goes down and comes back, seen from a subscriber.

Real GstRtspServer on loopback -> `run_pipeline` -> ZeroMQ -> Subscriber: while the camera
is down the other camera keeps publishing, the subscriber gets source_state events for
the lost one, and label maps for it resume after the server restarts.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from stream.subscribe import LabelMessage, Subscriber
from stream.wire import SourceEvent
from tests.stream._media import RtspTestServer


def _drain(sub: Subscriber, seconds: float, into: list) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = sub.receive(0.1)
        if msg is not None:
            into.append(msg)


def test_rtsp_camera_down_and_back_while_another_keeps_running(tiny_model):
    server = RtspTestServer(width=160, height=120, fps=15).start()
    endpoint = f"ipc:///tmp/segstream-down-{uuid.uuid4().hex[:8]}"
    cfg = PipelineConfig(
        sources=(SourceConfig(f"{server.url}?transport=tcp", "gate", stall_timeout=1.0),
                 SourceConfig("test://colors?width=160&height=120&fps=15", "yard")),
        model=str(tiny_model), threads=1, stats_interval=0,
        publish=PublishConfig((endpoint,), encoding="rle"))
    stop, box = threading.Event(), {}

    def target() -> None:
        with open(os.devnull, "w") as devnull:
            box["code"], _ = run_pipeline(cfg, stop=stop, out=devnull)

    pipe = threading.Thread(target=target, daemon=True)
    before, down, after = [], [], []
    with Subscriber(endpoint, timeout=0.2) as sub:
        pipe.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(
                    isinstance(m, LabelMessage) and m.camera == "gate" for m in before):
                _drain(sub, 0.5, before)
            server.stop()
            _drain(sub, 4.0, down)
            server = RtspTestServer(port=server.port, width=160, height=120, fps=15).start()
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and not any(
                    isinstance(m, LabelMessage) and m.camera == "gate" for m in after):
                _drain(sub, 0.5, after)
        finally:
            stop.set()
            pipe.join(15)
            server.stop()
    assert box.get("code") == 0
    assert any(isinstance(m, LabelMessage) and m.camera == "gate" for m in before)
    gate_states = [m.state for m in down + after if isinstance(m, SourceEvent)
                   and m.camera == "gate"]
    assert {"stalled", "reconnecting"} & set(gate_states), gate_states
    assert any(isinstance(m, LabelMessage) and m.camera == "yard" for m in down)
    assert any(isinstance(m, LabelMessage) and m.camera == "gate" for m in after)
