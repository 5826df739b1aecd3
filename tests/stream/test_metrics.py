"""--metrics-port: a real Prometheus scrape of a running pipeline."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from tests.stream._media import require_gst

pytest.importorskip("prometheus_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp)."""
    out = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_metrics_endpoint_reports_per_camera_figures(tiny_model):
    require_gst()
    port = _free_port()
    cfg = PipelineConfig(sources=(SourceConfig("test://colors?width=160&height=120&fps=30",
                                               "front"),),
                         model=str(tiny_model), threads=1, stats_interval=0, metrics_port=port,
                         publish=PublishConfig((f"ipc:///tmp/segstream-m-{uuid.uuid4().hex[:8]}",)))
    stop = threading.Event()

    def target() -> None:
        with open(os.devnull, "w") as devnull:
            run_pipeline(cfg, stop=stop, out=devnull)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        body, deadline = "", time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) \
                    .read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            if 'segstream_frames_published_total{camera="front"} 0.0' not in body \
                    and "segstream_latency_seconds" in body:
                break
            time.sleep(0.2)
        listening = _listening_addresses(port)
        # a page the operator opens, through its own DNS name pointed here (DNS rebinding)
        rebound = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=2)
        assert refused.value.code == 403
        plain = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                       headers={"Host": f"localhost:{port}"})
        assert urllib.request.urlopen(plain, timeout=2).status == 200
    finally:
        stop.set()
        t.join(15)
    assert listening == ["127.0.0.1"], "the metrics port must bind loopback by default"
    assert 'segstream_source_up{camera="front"} 1.0' in body
    published = [ln for ln in body.splitlines()
                 if ln.startswith('segstream_frames_published_total{camera="front"}')]
    assert published and float(published[0].split()[-1]) > 0
    assert 'stage="infer"' in body and "segstream_source_reconnects_total" in body
    # per camera: results the post worker's hand-off replaced; the engine's mode
    assert re.search(r'^segstream_handoff_dropped_total\{camera="front"\} \d+\.0$', body, re.M)
    assert re.search(r'^segstream_engine_info\{mode="(latency|throughput)",overlap="on",'
                     r'policy="auto"\} 1\.0$', body, re.M), body
    assert "segstream_engine_in_flight 1.0" in body  # threads 1: one session per mode
    assert "segstream_engine_batch 1.0" in body and "segstream_engine_mode_switches_total" in body
