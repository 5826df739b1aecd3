"""End to end with real parts: GStreamer source -> ONNX Runtime -> ZeroMQ -> Subscriber."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from engines.segmenter import Segmenter
from stream.capture import open_capture
from stream.cli import main
from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from stream.sources import parse_source
from stream.subscribe import LabelMessage, Subscriber
from tests.stream._media import encode_video, require_gst

TEST_SRC = "test://colors?width=160&height=120&fps=30"


@pytest.fixture(autouse=True)
def _gst():
    require_gst()


def _ipc() -> str:
    return f"ipc:///tmp/segstream-test-{uuid.uuid4().hex[:8]}"


def _start(cfg: PipelineConfig) -> tuple[threading.Event, threading.Thread, dict]:
    stop, box = threading.Event(), {}

    def target() -> None:
        with open(os.devnull, "w") as devnull:
            box["code"], box["result"] = run_pipeline(cfg, stop=stop, out=devnull)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return stop, t, box


def _collect(endpoint: str, n: int, cameras=None, timeout: float = 20.0) -> list[LabelMessage]:
    got: list[LabelMessage] = []
    deadline = time.monotonic() + timeout
    with Subscriber(endpoint, cameras=cameras, timeout=0.5) as sub:
        while len(got) < n and time.monotonic() < deadline:
            msg = sub.receive(0.5)
            if isinstance(msg, LabelMessage):
                got.append(msg)
    return got


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_videotestsrc_to_subscriber_is_bit_exact(tiny_model, tta):
    # The "colors" test pattern is the same image in every frame, so every published map
    # must equal the engine's map of one frame captured here the same way.
    with open_capture(parse_source(TEST_SRC, "ref")) as cap:
        frame = cap.latest(10.0)
    assert frame is not None
    expected = Segmenter.from_path(tiny_model, threads=1, tta=tta)(frame.image)

    endpoint = _ipc()
    cfg = PipelineConfig(sources=(SourceConfig(TEST_SRC, "front"),), model=str(tiny_model),
                         threads=1, publish=PublishConfig((endpoint,), encoding="rle"),
                         stats_interval=0, tta=tta)
    stop, thread, box = _start(cfg)
    try:
        msgs = _collect(endpoint, 8)
    finally:
        stop.set()
        thread.join(15)
    assert box["code"] == 0 and len(msgs) == 8
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(seqs)
    for m in msgs:
        assert m.camera == "front" and m.shape == (120, 160) and m.encoding == "rle"
        assert np.array_equal(m.labels, expected)
        assert m.t_capture_ns <= m.t_infer_ns <= m.t_publish_ns <= m.t_receive_ns
    assert msgs[-1].class_table is not None
    assert msgs[-1].class_table.names == [f"class{i}" for i in range(5)]


def test_two_sources_and_a_file_over_tcp(tiny_model, tmp_path):
    video = tmp_path / "clip.mkv"
    encode_video(video, frames=20)
    port = _free_port()
    cfg = PipelineConfig(
        sources=(SourceConfig(TEST_SRC, "live"), SourceConfig(f"{video}?loop=1", "file")),
        model=str(tiny_model), threads=1,
        publish=PublishConfig((f"tcp://127.0.0.1:{port}",), encoding="zstd"), stats_interval=0)
    stop, thread, box = _start(cfg)
    try:
        msgs = _collect(f"tcp://127.0.0.1:{port}", 30)
    finally:
        stop.set()
        thread.join(15)
    assert box["code"] == 0
    assert {m.camera for m in msgs} == {"live", "file"}
    assert {m.shape for m in msgs} == {(120, 160)}


def test_file_read_as_fast_as_possible_publishes_every_frame(tiny_model, tmp_path):
    video = tmp_path / "clip.mkv"
    encode_video(video, frames=25)
    cfg = PipelineConfig(sources=(SourceConfig(f"{video}?realtime=0", "f"),),
                         model=str(tiny_model), threads=1,
                         publish=PublishConfig((_ipc(),)), stats_interval=0)
    with open(os.devnull, "w") as devnull:
        code, result = run_pipeline(cfg, out=devnull)
    assert code == 0 and result.published == 25


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv,needle", [
    (["--source", "test://", "--model", "/nonexistent/model.onnx"], "model file"),
    (["--source", "nosuch://x"], "valid sources"),
    (["--source", "/nonexistent/video.mp4"], "video.mp4"),
])
def test_bad_inputs_exit_2_with_a_clear_message(argv, needle, tiny_model, capsys):
    if "--model" not in argv:
        argv = [*argv, "--model", str(tiny_model)]
    assert main(["run", *argv, "--publish", _ipc()]) == 2
    assert needle in capsys.readouterr().err


def test_sigterm_stops_cleanly_with_exit_0(tiny_model):
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "run", "--source", TEST_SRC, "--model",
         str(tiny_model), "--publish", _ipc(), "--stats-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "running" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "published" in out


def test_model_disagreeing_with_its_sidecar_fails_at_load_not_at_the_first_frame(
        tiny_model, capsys):
    # A sidecar that disagrees with the graph (input 32x32 vs the ONNX's 64x96) used to
    # fail only when ONNX Runtime met the first frame: now the model load refuses it, with
    # exit 2, before any camera opens or anything is published.
    import dataclasses

    from engines.spec import ModelSpec, sidecar_path

    spec = ModelSpec.load(sidecar_path(tiny_model))
    dataclasses.replace(spec, input_size=(32, 32)).save(sidecar_path(tiny_model))
    endpoint = _ipc()
    received = []
    with Subscriber(endpoint, timeout=0.2) as sub:
        code = main(["run", "--source", TEST_SRC, "--model", str(tiny_model), "--publish",
                     endpoint, "--stats-interval", "0", "--duration", "20"])
        while (msg := sub.receive(0.3)) is not None:
            received.append(msg)
    err = capsys.readouterr().err
    assert code == 2
    assert "input_size is 32x32 (HxW) but the graph takes 64x96" in err
    assert "starting" not in err and "Traceback" not in err
    assert not [m for m in received if isinstance(m, LabelMessage)]
