"""The live browser preview (``segstream run --preview``): its pieces alone, and its HTTP
and WebSocket answers from a real ``segstream run`` (GStreamer test source, ONNX Runtime,
real sockets). The pages in a real browser: ``test_preview_browser.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from engines.spec import ModelSpec, sidecar_path
from stream.cli import main
from stream.config import ConfigError, PipelineConfig, PreviewConfig, SourceConfig
from stream.frames import Frame
from stream.preview import (
    NewestSlot,
    PreviewTap,
    Shot,
    blend,
    decode_view,
    encode_view,
    is_loopback,
    palette_bgr,
    parse_listen,
)
from stream.validate import check_config
from tests.stream._preview import (
    get,
    in_process_run,
    require_preview,
    run_cfg,
    segstream_run,
    status,
    until,
    ws_frames,
    ws_messages,
)


def _frame(cam: str, seq: int, h: int = 120, w: int = 160) -> Frame:
    image = np.full((h, w, 3), seq % 256, np.uint8)
    return Frame(cam, seq, time.monotonic_ns(), time.time_ns(), image)


class ListSink:
    """A LabelSink keeping what it was sent (the publisher's place in these tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.closed = False

    def send(self, frame: Frame, labels: np.ndarray, t_infer_ns: int, dropped: int) -> None:
        self.sent.append((frame.camera_id, frame.seq))

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------- pieces

def test_slot_is_one_deep_and_newest_wins():
    slot = NewestSlot()
    assert slot.get() == (0, None)
    a, b = Shot(_frame("c", 0), np.zeros((120, 160), np.uint8)), Shot(_frame("c", 1),
                                                                        np.ones((120, 160),
                                                                                np.uint8))
    slot.put(a)
    slot.put(b)
    version, item = slot.get()
    assert version == 2 and item is b
    assert slot.get() == (2, b)  # several readers see the same newest item
    slot.clear()
    assert slot.get() == (2, None)


def test_tap_forwards_everything_and_keeps_only_watched_cameras():
    sink = ListSink()
    tap = PreviewTap(sink, ["a", "b"])
    labels = np.zeros((120, 160), np.uint8)
    tap.send(_frame("a", 0), labels, 0, 0)
    assert tap.slots["a"].get() == (0, None)  # nobody watches: no reference is kept
    tap.watch(["a", "nosuch"])
    assert tap.watched == frozenset({"a"})
    for seq in range(1, 4):
        tap.send(_frame("a", seq), labels, 0, 0)
        tap.send(_frame("b", seq), labels, 0, 0)
    version, shot = tap.slots["a"].get()
    assert version == 3 and shot.frame.seq == 3 and shot.labels is labels  # a reference
    assert tap.slots["b"].get() == (0, None)
    assert sink.sent == [("a", 0)] + [(c, s) for s in range(1, 4) for c in ("a", "b")]
    tap.watch([])
    assert tap.slots["a"].get() == (3, None)  # let go of the arrays
    tap.close()
    assert sink.closed


def test_tap_takes_sends_from_several_threads():
    sink = ListSink()
    tap = PreviewTap(sink, ["a", "b", "c", "d"])
    tap.watch(["a", "b", "c", "d"])
    labels = np.zeros((8, 8), np.uint8)

    def worker(cam: str) -> None:
        for seq in range(500):
            tap.send(_frame(cam, seq, 8, 8), labels, 0, 0)
            if seq % 100 == 0:
                tap.watch(["a", "b", "c", "d"])

    threads = [threading.Thread(target=worker, args=(c,)) for c in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sink.sent) == 2000
    for cam in "abcd":
        version, shot = tap.slots[cam].get()
        assert version == 500 and shot.frame.seq == 499


def test_view_message_round_trip_scales_down_and_keeps_class_ids_exact():
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 255, (9, 16, 3), dtype=np.uint8), (1280, 720),
                       interpolation=cv2.INTER_LINEAR)  # smooth: JPEG keeps it close
    labels = cv2.resize(rng.integers(0, 11, (18, 32), dtype=np.uint8), (1280, 720),
                        interpolation=cv2.INTER_NEAREST)
    shot = Shot(Frame("front", 7, 0, 1_700_000_000_123_456_789, image), labels)
    head, got_image, got_labels = decode_view(encode_view(shot, max_width=640, quality=90))
    assert head["seq"] == 7 and (head["width"], head["height"]) == (640, 360)
    assert head["t_capture_ms"] == 1_700_000_000_123
    assert got_labels.shape == (360, 640) and got_image.shape == (360, 640, 3)
    expected = cv2.resize(labels, (640, 360), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(got_labels, expected)  # lossless: the browser colours exact ids
    small = cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA)
    assert np.abs(got_image.astype(int) - small).mean() < 3
    # not scaled when already narrow enough
    head, got_image, got_labels = decode_view(encode_view(shot, max_width=2000, quality=90))
    assert (head["width"], head["height"]) == (1280, 720)
    assert np.array_equal(got_labels, labels)


def test_blend_lays_class_colours_over_the_frame(tiny_model):
    spec = ModelSpec.load(sidecar_path(tiny_model))
    palette = palette_bgr(spec)
    image = np.full((120, 160, 3), 200, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[:, 80:] = 3
    shot = Shot(Frame("c", 0, 0, 0, image), labels)
    full = blend(shot, palette, 1.0, 640)
    assert (full[0, 0] == spec.classes[0].color[::-1]).all()  # BGR
    assert (full[0, 100] == spec.classes[3].color[::-1]).all()
    assert (blend(shot, palette, 0.0, 640) == image).all()
    half = blend(shot, palette, 0.5, 80)
    assert half.shape == (60, 80, 3)
    assert np.abs(half[0, 0].astype(int) - (image[0, 0] // 2 + palette[0] // 2)).max() <= 1


@pytest.mark.parametrize("text,expected", [
    ("8080", ("127.0.0.1", 8080)), ("0", ("127.0.0.1", 0)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)), ("localhost:9000", ("localhost", 9000)),
    ("[::1]:8080", ("::1", 8080)),
])
def test_listen_forms(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text,needle", [
    ("", "[HOST:]PORT"), ("http", "[HOST:]PORT"), (":8080", "[HOST:]PORT"),
    ("70000", "[HOST:]PORT"), ("::1:8080", "brackets"), ("8080:host", "[HOST:]PORT"),
])
def test_bad_listen_forms_name_the_fix(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_listen(text)
    assert needle in str(e.value) and "--preview" in str(e.value)


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    assert not is_loopback("example.com")


def test_preview_config_rejects_bad_values_with_key_paths():
    with pytest.raises(ConfigError) as e:
        PreviewConfig(port=70000, fps=0, max_width=4, quality=101, host="")
    text = str(e.value)
    for key in ("port", "fps", "max_width", "quality", "host"):
        assert f"{key}:" in text


def test_launch_file_preview_keys(tmp_path, tiny_model):
    from stream.launch_file import load_launch

    f = tmp_path / "l.yaml"
    f.write_text(f"sources: [{{uri: 'test://ball'}}]\nmodel: {tiny_model}\n"
                 "preview: {port: 8080, fps: 5, max_width: 320}\n")
    cfg = load_launch(f)
    assert cfg.preview == PreviewConfig(port=8080, fps=5.0, max_width=320)
    f.write_text("sources: [{uri: 'test://ball'}]\npreview: {port: 8080, colour: red}\n")
    with pytest.raises(ConfigError, match=r"preview\.colour: unknown key"):
        load_launch(f)


# ---------------------------------------------------------------------------- real runs

# ---------------------------------------------------------------------------- real runs

@pytest.fixture
def gst():
    require_preview()


def test_http_and_websocket_against_a_real_run(gst, tiny_model):
    spec = ModelSpec.load(sidecar_path(tiny_model))
    with segstream_run(["--source", "front=test://ball?width=320&height=240&fps=30",
                        "--model", str(tiny_model), "--threads", "1", "--stats-interval", "0",
                        "--publish", f"ipc:///tmp/segstream-preview-{os.getpid()}",
                        "--preview", "0", "--preview-fps", "5", "--preview-width", "160"]
                       ) as (_, url):
        code, ctype, body = get(url)
        assert code == 200 and ctype.startswith("text/html")
        assert b'href="/camera/front"' in body
        code, _, body = get(url + "camera/front")
        page = body.decode()
        assert code == 200
        for c in spec.classes:  # the legend: every class with its colour
            assert f">{c.name}</span>" in page
            assert f"rgb({c.color[0]}, {c.color[1]}, {c.color[2]})" in page
        assert get(url + "camera/nosuch")[0] == 404
        assert get(url + "static/preview.js")[0] == 200
        assert get(url, {"Host": "rebound.example:80"})[0] == 403  # DNS rebinding
        # another site's page asking for snapshots (browsers send Sec-Fetch-Site)
        assert get(url + "camera/front/snapshot.jpg", {"Sec-Fetch-Site": "cross-site"})[0] == 403
        assert get(url, {"Sec-Fetch-Site": "same-origin"})[0] == 200
        assert get(url, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                         "Sec-Fetch-Dest": "document"})[0] == 200  # a link from elsewhere

        # fps is a rate between two frames: with one published map it is still 0
        st = until(lambda: (s := status(url, "front")).get("published", 0) >= 2
                   and s.get("fps", 0) > 0 and s, what="maps")
        assert st["state"] == "running" and st["fps"] > 0
        assert {"pre", "infer", "post", "publish", "total"} <= set(st["stages"])
        assert st["dropped"] >= 0 and st["handoff_dropped"] >= 0
        engine = st["engine"]  # the mode the engine runs in, as the status line says it
        assert engine["overlap"] is True and engine["auto"] is True and engine["batch"] == 1
        assert engine["mode"] in ("latency", "throughput") and engine["in_flight"] == 1
        assert engine["describe"].startswith(f"overlap on, {engine['mode']} (auto, ")
        assert st["preview"]["frames"] == 0 and st["preview"]["viewers"] == 0  # no browser

        got = asyncio.run(ws_messages(url.replace("http", "ws") + "camera/front/ws", 6))
        messages = [m for _, m in got]
        frames = [m for m in messages if isinstance(m, bytes)]
        # --preview-fps 5 (the camera: 30); from the second frame on, so that a slow first
        # encode on a loaded machine does not bunch the arrivals
        times = [t for t, m in got if isinstance(m, bytes)][1:]
        assert times[-1] - times[0] >= 4 * 0.2 * 0.9
        seqs = []
        for m in frames:
            head, image, labels = decode_view(m)
            assert (head["width"], head["height"]) == (160, 120)  # scaled down
            assert image.shape == (120, 160, 3) and labels.shape == (120, 160)
            assert labels.max() < len(spec.classes)
            seqs.append(head["seq"])
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        figures = [json.loads(m) for m in messages if isinstance(m, str)]
        assert all(s["type"] == "status" and s["camera"]["camera"] == "front" for s in figures)
        assert status(url, "front")["preview"]["frames"] >= 5

        code, ctype, body = get(url + "camera/front/snapshot.jpg?opacity=1&width=100")
        assert code == 200 and ctype == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (75, 100, 3)
        assert get(url + "camera/front/snapshot.jpg?opacity=2")[0] == 400


def test_port_in_use_exits_2_before_any_camera_opens(gst, tiny_model, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["run", "--source", "test://ball", "--model", str(tiny_model),
                     "--publish", f"ipc:///tmp/segstream-preview-p{os.getpid()}",
                     "--preview", str(port)])
        cfg = PipelineConfig(sources=(SourceConfig("test://ball"),), model=str(tiny_model),
                             preview=PreviewConfig(port=port))
        problems = check_config(cfg)  # what `segstream launch --check` reports
    err = capsys.readouterr().err
    assert code == 2
    assert f"127.0.0.1:{port} is already in use" in err and "--preview" in err
    assert "starting" not in err and "Traceback" not in err
    assert problems == [f"preview.port: 127.0.0.1:{port} is already in use (another segstream "
                        f"or server listens there); pick a free port, e.g. {port + 1} "
                        f"(--preview, or preview.port in a launch file)"]


def test_bad_preview_flags_exit_2(capsys):
    assert main(["run", "--source", "test://ball", "--preview", "host:"]) == 2
    assert "--preview 'host:'" in capsys.readouterr().err
    assert main(["run", "--source", "test://ball", "--preview-fps", "0"]) == 2
    assert "preview.fps: must be" in capsys.readouterr().err
    assert main(["run", "--source", "test://ball", "--preview-quality", "101"]) == 2
    assert "preview.quality: must be a JPEG quality" in capsys.readouterr().err


def test_a_browser_that_reads_nothing_never_blocks_the_stream(gst, tiny_model):
    # One viewer stops reading (tiny receive buffer, never read); another keeps reading:
    # the stuck one's frames are skipped and counted, the other's keep coming, and the
    # pipeline keeps publishing.
    cfg = run_cfg(tiny_model, "test://snow?width=640&height=480&fps=30", fps=30,
                  quality=100, max_width=640)
    with in_process_run(cfg) as (url, _, _box):
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((host, int(port)))
        stuck.sendall(b"GET /camera/cam0/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
        try:
            until(lambda: status(url, "cam0")["preview"]["skipped"] > 5, timeout=30,
                  what="the stuck viewer's frames to be skipped")
            before = status(url, "cam0")["published"]
            frames = ws_frames(url.replace("http", "ws") + "camera/cam0/ws", 5)
            assert len(frames) == 5
            assert status(url, "cam0")["published"] > before
        finally:
            stuck.close()


def test_a_non_loopback_preview_warns_that_it_has_no_authentication(gst, tiny_model):
    cfg = run_cfg(tiny_model, "test://ball?width=160&height=120")
    cfg = dataclasses.replace(cfg, preview=PreviewConfig(port=0, host="0.0.0.0"))
    with in_process_run(cfg) as (url, out, _):
        assert url.startswith("http://127.0.0.1:")
        assert any("warning" in line and "no authentication" in line for line in out.lines())




@pytest.mark.parametrize(("listen", "host", "ok"), [
    ("127.0.0.1", "127.0.0.1", True), ("127.0.0.1", "localhost", True),
    ("127.0.0.1", "[::1]", True), ("127.0.0.1", "rebound.example", False),
    ("0.0.0.0", "192.0.2.7", True), ("0.0.0.0", "localhost", True),
    ("0.0.0.0", "rebound.example", False),  # bound to every interface: still no foreign name
    ("0.0.0.0", "REBOUND.example.", False),
])
def test_preview_answers_only_names_of_this_machine(listen, host, ok):
    from stream.preview_web import host_allowed

    assert host_allowed(host, listen) is ok


def test_preview_on_every_interface_answers_this_machines_own_name():
    from stream.preview_web import host_allowed

    name = socket.gethostname()
    assert host_allowed(name, "0.0.0.0") and host_allowed(name.upper() + ".", "0.0.0.0")
    assert not host_allowed(name, "127.0.0.1") or name == "localhost"  # loopback: IPs only
