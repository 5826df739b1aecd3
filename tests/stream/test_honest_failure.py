"""Honest failure: a run whose sources never work exits non-zero and says why; a lost
camera is not a clean end; a file that plays to its end is. Real files, real GStreamer."""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq

from stream.cli import main
from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from tests.stream._media import RtspTestServer, encode_video, require_elements, require_gst


@pytest.fixture(autouse=True)
def _gst():
    require_gst()


def _ipc() -> str:
    return f"ipc:///tmp/segstream-test-{uuid.uuid4().hex[:8]}"


def _text_as_mp4(d: Path) -> str:
    (d / "notes.mp4").write_text("this is a shopping list, not a video\n")
    return str(d / "notes.mp4")


def _empty_mp4(d: Path) -> str:
    (d / "empty.mp4").write_bytes(b"")
    return str(d / "empty.mp4")


def _truncated_mp4(d: Path) -> str:
    # mp4mux writes the index (moov) at the end: cut it off, as a recorder killed mid-file
    full = encode_video(d / "full.mp4", frames=30, container="mp4")
    data = full.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    return str(d / "cut.mp4")


@pytest.mark.parametrize("make,needle", [
    (_text_as_mp4, "Could not determine type"),
    (_empty_mp4, "no data"),
    (_truncated_mp4, "no playable streams|no first frame"),
    (lambda _d: "csi://0", "nvarguscamerasrc"),
], ids=["text-renamed-mp4", "zero-byte", "truncated-mp4", "csi-off-jetson"])
def test_every_source_failed_exits_2_and_says_why(make, needle, tmp_path, tiny_model, capsys):
    if Path("/etc/nv_tegra_release").exists() and make is not _text_as_mp4:
        pytest.skip("on a Jetson these sources may work")
    uri = make(tmp_path)
    t0 = time.monotonic()
    code = main(["run", "--source", uri, "--model", str(tiny_model), "--publish", _ipc(),
                 "--stats-interval", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "every source failed before delivering a frame" in err
    assert re.search(needle, err), err
    assert time.monotonic() - t0 < 15


def test_one_bad_source_next_to_a_file_that_ends_is_still_exit_2(tmp_path, tiny_model, capsys):
    video = encode_video(tmp_path / "ok.mkv", frames=5)
    code = main(["run", "--source", f"{video}?realtime=0", "--source", _empty_mp4(tmp_path),
                 "--model", str(tiny_model), "--publish", _ipc(), "--stats-interval", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "1 of 2 sources failed before delivering a frame (cam1:" in err


def test_a_file_played_to_its_end_is_exit_0(tmp_path, tiny_model, capsys):
    video = encode_video(tmp_path / "ok.mkv", frames=5)
    assert main(["run", "--source", str(video), "--model", str(tiny_model),
                 "--publish", _ipc(), "--stats-interval", "0"]) == 0
    assert "error" not in capsys.readouterr().err


def test_a_camera_lost_after_frames_exits_3(tiny_model):
    require_elements("rtspsrc", "decodebin", "videotestsrc")
    server = RtspTestServer(width=160, height=120, fps=15).start()
    cfg = PipelineConfig(
        sources=(SourceConfig(server.url, "yard", stall_timeout=1.0, max_retries=0),),
        model=str(tiny_model), threads=1, publish=PublishConfig((_ipc(),)), stats_interval=0,
        duration=30)
    box: dict = {}
    out = io.StringIO()

    def target() -> None:
        box["code"], box["result"] = run_pipeline(
            cfg, out=out, on_ready=lambda pipe: box.setdefault("pipe", pipe))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 15
        while "pipe" not in box or not box["pipe"].stats["yard"].published:
            assert time.monotonic() < deadline and t.is_alive(), out.getvalue()
            time.sleep(0.05)
    finally:
        server.stop()  # the camera dies for good
    t.join(20)
    assert box["code"] == 3, out.getvalue()
    assert box["result"].published > 0
    assert "lost 1 of 1 sources (yard after" in out.getvalue()


# ------------------------------------------------------------------ ipc path takeover


def test_second_publisher_on_a_live_ipc_path_is_refused(tiny_model, capsys):
    from engines.spec import ModelSpec, sidecar_path
    from stream.publish import Publisher, PublishError

    endpoint = _ipc()
    spec = ModelSpec.load(sidecar_path(tiny_model))
    with Publisher.for_spec(endpoint, spec):
        with pytest.raises(PublishError, match="another process is publishing there"):
            Publisher.for_spec(endpoint, spec)
        code = main(["run", "--source", "test://?width=64&height=48", "--model", str(tiny_model),
                     "--publish", endpoint, "--stats-interval", "0", "--max-frames", "1"])
        assert code == 2
        assert f"cannot bind {endpoint}: another process" in capsys.readouterr().err
        # the first publisher still owns the path: a new subscriber gets its class table
        ctx = zmq.Context.instance()
        with ctx.socket(zmq.SUB) as sub:
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
            assert sub.poll(5000), "the first publisher no longer answers on its path"
            assert sub.recv_multipart()[0].startswith(b"cls")


def test_stale_ipc_socket_file_is_reused_and_a_plain_file_is_not(tiny_model, tmp_path):
    import socket

    from engines.spec import ModelSpec, sidecar_path
    from stream.publish import Publisher, PublishError

    spec = ModelSpec.load(sidecar_path(tiny_model))
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # the owner "dies": the file stays, nobody listens
    assert stale.is_socket()
    with Publisher.for_spec(f"ipc://{stale}", spec):
        pass
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(PublishError, match="is not a socket"):
        Publisher.for_spec(f"ipc://{plain}", spec)
    assert plain.read_text() == "keep me"
    link = tmp_path / "link.sock"  # a symlink is never followed, whatever it points at
    link.symlink_to(stale)
    with pytest.raises(PublishError, match="is not a socket"):
        Publisher.for_spec(f"ipc://{link}", spec)


def test_ipc_socket_admits_this_user_and_its_group_only(tiny_model, tmp_path):
    import stat

    from engines.spec import ModelSpec, sidecar_path
    from stream.publish import Publisher

    old = os.umask(0o002)  # a umask that would leave the socket group- and world-readable
    try:
        path = tmp_path / "seg.sock"
        with Publisher.for_spec(f"ipc://{path}", ModelSpec.load(sidecar_path(tiny_model))):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        os.umask(old)


# ------------------------------------------------------------------ frame sizes


def test_a_1x1_camera_is_segmented_not_stopped(tiny_model, capsys):
    assert main(["run", "--source", "test://?width=1&height=1", "--model", str(tiny_model),
                 "--publish", _ipc(), "--stats-interval", "0", "--max-frames", "5"]) == 0
    err = capsys.readouterr().err
    assert "published 5 label maps" in err and "class id" not in err


def test_a_camera_too_large_to_publish_exits_2_at_start(tiny_model, capsys):
    t0 = time.monotonic()
    code = main(["run", "--source", "test://?width=16384&height=4200", "--model",
                 str(tiny_model), "--publish", _ipc(), "--stats-interval", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "sources[0].uri: test://?width=16384&height=4200: 16384x4200 frames" in err
    assert "Traceback" not in err and "starting" not in err  # refused before any camera opened
    assert time.monotonic() - t0 < 10


def test_frames_of_an_unannounced_size_too_large_fail_that_camera(tiny_model):
    # A source whose size is only known from its frames (a file, a gst:// pipeline): the
    # loop refuses the camera at its first frame, ends the capture as failed, and the run
    # is judged a bad source (2), not a traceback from the publisher.
    from engines.segmenter import Segmenter
    from stream.capture import open_capture
    from stream.pipeline import Pipeline
    from stream.runner import source_verdict
    from stream.sources import parse_source

    sent = []

    class Sink:
        def send(self, frame, labels, t_infer_ns, dropped):
            sent.append(frame)

        def close(self):
            pass

    seg = Segmenter.from_path(tiny_model, threads=1)
    big = open_capture(parse_source("gst://videotestsrc ! video/x-raw,width=160,height=120",
                                    "big"))
    small = open_capture(parse_source("test://?width=32&height=24&frames=10&live=0", "small"))
    caps = {c.camera_id: c for c in (big, small)}
    try:
        pipe = Pipeline([big, small], seg, Sink(), stats_interval=0, duration=20,
                        max_pixels=100 * 100,
                        on_refused=lambda src, why: caps[src.camera_id].fail(why))
        result = pipe.run()
    finally:
        big.close()
        small.close()
    assert result.seconds < 15 and result.published >= 1
    assert big.state == "failed" and "160x120 frames (19200 pixels) are larger" in big.state_detail
    assert {f.camera_id for f in sent} == {"small"}
    code, why = source_verdict([big, small], {c: s.published for c, s in result.per_camera.items()})
    assert code == 2 and "1 of 2 sources failed before delivering a frame (big: 160x120" in why
