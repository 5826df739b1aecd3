"""`segstream subscribe` and `segstream view` against a live publisher in a thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import cv2
import numpy as np
import pytest

from engines.spec import CAMVID_CLASSES
from stream.cli import main
from stream.commands.subscribe import is_same_host, top_classes
from stream.commands.view import LEGEND_W, ROW_H, render
from stream.publish import Publisher
from stream.wire import ClassTable, LabelsHeader, ModelInfo, pack_class_table, pack_labels
from tests.stream.test_pubsub import RawPublisher

TABLE = ClassTable.build(CAMVID_CLASSES, ModelInfo("camvid-test", "fastscnn", (360, 480)))


def scene(h: int = 48, w: int = 64) -> np.ndarray:
    """Top quarter sky (0), middle quarter building (1), bottom half road (3)."""
    labels = np.full((h, w), 3, np.uint8)
    labels[: h // 4] = 0
    labels[h // 4: h // 2] = 1
    return labels


@contextlib.contextmanager
def publishing(camera: str = "front", period_ns: int | None = None):
    """A publisher on ipc sending the scene at ~100 Hz as ``camera`` (and a "running"
    event after a few maps) until the block ends; yields its endpoint. Capture times are
    the clock's, or ``period_ns`` apart whatever the real pace."""
    pub = Publisher(f"ipc:///tmp/segstream-cli-{uuid.uuid4().hex[:10]}.sock", class_table=TABLE,
                    encoding="rle", sndhwm=1000)
    stop = threading.Event()

    def loop() -> None:
        seq, t0 = 0, time.monotonic_ns()
        while not stop.is_set():
            t_mono = time.monotonic_ns() if period_ns is None else t0 + seq * period_ns
            pub.publish_labels(camera, seq, scene(), t_capture_ns=time.time_ns(),
                               t_capture_mono_ns=t_mono)
            if seq == 3:
                pub.publish_event(camera, "running", "first frames")
            seq += 1
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield pub.bound_endpoints[0]
    finally:
        stop.set()
        t.join()
        pub.close()


@pytest.fixture
def live_publisher():
    """:func:`publishing` camera 'front' until the test ends."""
    with publishing() as endpoint:
        yield endpoint


def test_subscribe_prints_a_summary_per_map_and_stats(live_publisher, capsys):
    code = main(["subscribe", live_publisher, "--count", "5", "--timeout", "10"])
    out, err = capsys.readouterr()
    assert code == 0
    maps = [ln for ln in out.splitlines() if " seq " in ln]
    assert len(maps) == 5
    for line in maps:
        assert line.split()[0] == "front" and "48x64 rle" in line
        assert line.endswith(" ms")
    # Class names come from the class table, sent on subscription; only the very first
    # map can beat it (when the subscription lands during that map's send).
    for line in maps[1:]:
        assert "| road 50% sky 25% building 25% |" in line
    seqs = [int(ln.split()[2]) for ln in maps]
    assert seqs == sorted(seqs)
    assert "[front]" in err and "latency p50" in err and "(mono)" in err and "lost 0" in err


def test_subscribe_json_lines(live_publisher, capsys):
    assert main(["subscribe", live_publisher, "--count", "3", "--json", "--camera", "front",
                 "--stats-interval", "0", "--timeout", "10"]) == 0
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    maps = [d for d in docs if d["type"] == "labels"]
    assert len(maps) == 3
    assert all(d["type"] in ("labels", "source_state") for d in docs)
    last = maps[-1]  # (the first map may precede the class table, see above)
    assert last["camera"] == "front" and last["shape"] == [48, 64]
    assert last["class_table"] == TABLE.id and last["latency_ms"] >= 0
    assert [c["name"] for c in last["top_classes"]] == ["road", "sky", "building"]
    assert last["top_classes"][0]["fraction"] == 0.5


def test_subscribe_latest_only_and_camera_filter(live_publisher, capsys):
    assert main(["subscribe", live_publisher, "--latest-only", "--count", "2",
                 "--camera", "front", "--timeout", "10"]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if " seq " in ln]) == 2
    assert main(["subscribe", live_publisher, "--camera", "rear", "--timeout", "0.5"]) == 1
    assert main(["subscribe", live_publisher, "--camera", "bad id"]) == 2
    assert "camera id 'bad id' is invalid" in capsys.readouterr().err


def test_subscribe_times_out_and_rejects_bad_endpoints(capsys):
    ep = f"ipc:///tmp/segstream-nobody-{uuid.uuid4().hex[:8]}.sock"
    assert main(["subscribe", ep, "--timeout", "0.3"]) == 1
    assert "no message from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused by the argument parser
        main(["subscribe", "udp://x:1", "--timeout", "0.3"])
    assert e.value.code == 2 and "give tcp://HOST:PORT or ipc:///PATH" in capsys.readouterr().err


def test_view_saves_png_frames_in_class_colours(live_publisher, tmp_path, capsys):
    out = tmp_path / "frames"
    assert main(["view", live_publisher, "--no-window", "--save-dir", str(out),
                 "--count", "4", "--timeout", "10"]) == 0
    pngs = sorted((out / "front").glob("*.png"))
    assert len(pngs) == 4
    img = cv2.imread(str(pngs[-1]))  # BGR (the first may precede the class table)
    assert img.shape == (max(48, 18 * len(CAMVID_CLASSES) + 8), 64 + LEGEND_W, 3)
    road = CAMVID_CLASSES[3].color
    assert img[40, 10].tolist() == [road[2], road[1], road[0]]
    sky = CAMVID_CLASSES[0].color
    assert img[2, 10].tolist() == [sky[2], sky[1], sky[0]]
    assert img[:, 64:].any()  # legend drawn


def test_view_records_an_mp4(tmp_path):
    video = tmp_path / "out-{camera}.mp4"
    with publishing(period_ns=10_000_000) as endpoint:  # a 100 fps stream
        assert main(["view", endpoint, "--no-window", "--save", str(video), "--count", "6",
                     "--timeout", "10", "--no-legend"]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "out-front.mp4"))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        assert frame.shape == (48, 64, 3)
    cap.release()
    # 6 maps of a 100 fps stream (50 ms, up to 80 ms with maps lost on the way) on a 30 fps
    # timeline: 3 frames (0, 33, 67 ms), the other maps skipped
    assert frames == 3


def test_view_save_plays_at_the_streams_real_rate(tmp_path):
    """30 maps captured 100 ms apart (a 10 fps stream, 2.9 s) into a 30 fps video: each
    map held for 3 frames, 88 frames = 2.9 s; before, the video ran at 15 fps whatever
    the stream did (a 30 fps stream played at half speed)."""
    video = tmp_path / "rate.mp4"
    with publishing(period_ns=100_000_000) as endpoint:  # a 10 fps stream, sent at ~100 Hz
        assert main(["view", endpoint, "--no-window", "--save", str(video),
                     "--count", "30", "--timeout", "10", "--fps", "30"]) == 0
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30, abs=0.5)
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    lost_tolerance = 3 * 3  # a map lost on the way is covered by its neighbours' frames
    assert abs(frames - 88) <= lost_tolerance


def test_view_without_display_or_output_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", "ipc:///tmp/none", "--count", "1"]) == 2
    assert "--save out.mp4" in capsys.readouterr().err


def test_helpers():
    assert is_same_host("ipc:///tmp/x") and is_same_host("tcp://127.0.0.1:5555")
    assert is_same_host("tcp://localhost:1") and not is_same_host("tcp://10.0.0.5:5555")
    top = top_classes(scene(), None)
    assert [t["id"] for t in top] == [3, 0, 1] and top[0]["name"] == "class3"
    img = render(scene(), None, legend=True)  # before a class table: fallback colours
    assert img.shape[1] == 64 + LEGEND_W and img.dtype == np.uint8


def test_view_file_names_stay_inside_the_save_dir(tmp_path):
    """Wire camera ids are printable ASCII without '/': '..' is one, and must not make
    --save-dir write into the folder's parent."""
    out = tmp_path / "a" / "frames"
    with publishing("..") as endpoint:
        assert main(["view", endpoint, "--no-window", "--save-dir", str(out),
                     "--count", "3", "--timeout", "10"]) == 0
    assert len(list((out / "%2E%2E").glob("*.png"))) == 3
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["frames"]


def test_view_window_stays_responsive_while_nothing_arrives(monkeypatch, capsys):
    """No publisher: the window keeps polling keys (q quits at once) instead of blocking
    in receive until --timeout."""
    from stream.commands import view

    keys = iter([-1, -1, ord("q")])
    calls = []

    def wait_key(ms: int) -> int:
        calls.append(ms)
        return next(keys, ord("q"))

    monkeypatch.setattr(view, "has_display", lambda: True)
    monkeypatch.setattr(cv2, "waitKey", wait_key)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    t0 = time.monotonic()
    assert main(["view", f"ipc:///tmp/segstream-none-{uuid.uuid4().hex[:8]}.sock",
                 "--count", "1", "--timeout", "20"]) == 0
    assert len(calls) == 3 and time.monotonic() - t0 < 10  # not the 20 s timeout
    monkeypatch.setattr(view, "WINDOW_POLL_S", 0.01)
    keys = iter([])  # no key: --timeout still ends an idle window
    monkeypatch.setattr(cv2, "waitKey", lambda ms: -1)
    assert main(["view", f"ipc:///tmp/segstream-none-{uuid.uuid4().hex[:8]}.sock",
                 "--count", "1", "--timeout", "0.3"]) == 1
    assert "no message from" in capsys.readouterr().err


@pytest.mark.parametrize("fps", ["nan", "inf", "0"])
def test_view_refuses_a_bad_fps(fps, capsys):
    with pytest.raises(SystemExit) as e:
        main(["view", "ipc:///tmp/none", "--save", "x.mp4", "--fps", fps])
    assert e.value.code == 2
    assert "--fps: must be a number of frames per second > 0" in capsys.readouterr().err


@pytest.mark.parametrize("endpoint", ["tcp://localhost:99999", "tcp://localhost:0",
                                      "inproc://x", "tcp://:5555", "udp://h:1"])
def test_an_endpoint_no_publisher_can_have_is_refused(capsys, endpoint):
    """These waited for ever (or until --timeout, exit 1) for a publisher that cannot be."""
    with pytest.raises(SystemExit) as e:
        main(["subscribe", endpoint, "--timeout", "1"])
    assert e.value.code == 2 and "argument ENDPOINT" in capsys.readouterr().err


@pytest.mark.parametrize("args, why", [
    (["--max-pixels", "0"], "--max-pixels: must be a number of pixels > 0"),
    (["--stats-interval", "-1"], "--stats-interval: must be a number of seconds >= 0"),
    (["--stats-interval", "nan"], "--stats-interval: must be a number of seconds >= 0"),
])
def test_bad_numbers_are_refused_before_connecting(capsys, args, why):
    """--max-pixels 0 refused every map; a negative or nan interval printed stats at every
    message (or never)."""
    with pytest.raises(SystemExit) as e:
        main(["subscribe", "tcp://127.0.0.1:1", *args])
    assert e.value.code == 2 and why in capsys.readouterr().err


def _table_race(pub: RawPublisher, table_at: int | None, stop: threading.Event) -> None:
    """Maps of camera 'front' 33 ms apart in capture time; the class table only from map
    ``table_at`` on (None: never), as a publisher whose first maps beat it would."""
    pub.wait_subscribed()
    seq = 0
    while not stop.is_set():
        if table_at is not None and seq >= table_at and seq % 10 == table_at % 10:
            pub.send(pack_class_table(TABLE))
        labels = scene()
        h = LabelsHeader("front", seq, time.time_ns(), seq * 33_000_000, 3, 4, labels.shape,
                         "raw", TABLE.id, 0, "p1")
        pub.send(pack_labels(h, labels.tobytes()))
        seq += 1
        time.sleep(0.01)


@pytest.mark.parametrize("table_at", [5, None])
def test_view_recording_waits_for_the_class_table(table_at, tmp_path, capsys, monkeypatch):
    """Maps that come before the class table they name (the wire format allows it) are
    skipped by --save: the first map would otherwise set the video's size without the
    legend's rows and squash every later frame. A table that never comes: fallback
    colours after the wait."""
    from stream.commands import view

    monkeypatch.setattr(view, "TABLE_WAIT_S", 0.3)
    pub, stop = RawPublisher(), threading.Event()
    t = threading.Thread(target=_table_race, args=(pub, table_at, stop), daemon=True)
    t.start()
    video = tmp_path / "race.mp4"
    try:
        assert main(["view", pub.endpoint, "--no-window", "--no-frames", "--save",
                     str(video), "--count", "8", "--timeout", "10"]) == 0
    finally:
        stop.set()
        t.join(5)
        pub.close()
    err = capsys.readouterr().err
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    assert ok
    assert "that came before their class table" in err
    if table_at is not None:  # the legend lists all 11 classes from the first frame on
        assert first.shape == (ROW_H * len(CAMVID_CLASSES) + 8, 64 + LEGEND_W, 3)
        assert "fallback colours" not in err
    else:  # the ids shown (0, 1, 3) in the legend; the wait is said
        assert first.shape == (ROW_H * 3 + 8, 64 + LEGEND_W, 3)
        assert "no class table within 0.3 s: recording with fallback colours" in err


def test_table_wait_starts_afresh_after_a_table(capsys):
    """Per camera: table-less maps held for the limit, then drawn; once a table has come,
    a restarted publisher's first table-less map waits again instead of being drawn at
    once against the old wait's start."""
    from stream.commands.view import TableWait

    s = 1_000_000_000
    wait = TableWait(limit_s=1.0)
    assert wait.hold("front", False, 0) and wait.hold("front", False, s // 2)
    assert not wait.hold("rear", True, s // 2)  # another camera is not held up
    assert not wait.hold("front", True, s)  # the table came
    assert wait.hold("front", False, 10 * s)  # publisher restarted: new model, new wait
    assert not wait.hold("front", False, 11 * s) and not wait.hold("front", False, 12 * s)
    assert wait.held == 3
    assert capsys.readouterr().err.count("no class table within 1 s") == 1
