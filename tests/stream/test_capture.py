"""GstCapture / CvCapture / MultiCapture with real GStreamer pipelines and real files."""

from __future__ import annotations

import gc
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stream.capture import GstCapture, MultiCapture, open_capture
from stream.capture_base import Backoff, BaseCapture, CaptureOptions, Mailbox
from stream.frames import Frame
from stream.gst import AppsinkArrivals
from stream.sources import SourceError, parse_source
from tests.stream._media import encode_video, require_elements, require_gst, write_mjpg_avi

pytestmark = pytest.mark.timeout(60)

FAST = CaptureOptions(stall_timeout=2.0, poll_interval=0.05)


class StateLog:
    """on_state listener that records (camera_id, state, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, camera_id: str, state: str, detail: str) -> None:
        with self._lock:
            self.events.append((camera_id, state, detail))

    def states(self, camera_id: str | None = None) -> list[str]:
        with self._lock:
            return [s for c, s, _ in self.events if camera_id in (None, c)]


def take_all(cap: BaseCapture, limit: int = 10_000, timeout: float = 5.0) -> list[Frame]:
    """Every frame until the source ends (lossless sources deliver them all)."""
    frames = []
    while len(frames) < limit:
        frame = cap.latest(timeout)
        if frame is None:
            break
        frames.append(frame)
    return frames


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------- pure parts


def test_backoff_and_options():
    assert [Backoff().delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert Backoff(0.1, 3, 1).delay(3) == pytest.approx(0.9)
    # a camera unplugged for days: attempt numbers past float range stay at the maximum
    assert Backoff().delay(5000) == 10.0 and Backoff(1e-3, 1e300, 0.01).delay(10**6) == 0.01
    assert Backoff(1e-3, 1e300, 0.01).delay(3) == 0.01
    assert Backoff(0.2, 1, 5).delay(10**9) == 0.2
    with pytest.raises(ValueError, match="stall_timeout"):
        CaptureOptions(stall_timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        CaptureOptions(max_retries=-2)
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=0)


def test_first_frame_allowance_by_source_kind():
    """A session's first frame may take longer than a stall on network and CSI cameras
    (handshake, first key frame, Argus start-up); elsewhere it is the stall timeout."""
    opts = CaptureOptions()
    slow = [parse_source(u).slow_start for u in (
        "rtsp://10.0.0.5/s", "csi://0", "gst://rtspsrc location=rtsp://10.0.0.5/s ! decodebin",
        "gst://udpsrc port=5000 ! application/x-rtp ! rtph264depay ! avdec_h264",
        "gst://uridecodebin uri=rtsp://10.0.0.5/s", "gst://souphttpsrc location=http://h/a.ts",
        "v4l2:///dev/video0", "gst://videotestsrc", "test://", "gst://uridecodebin uri=file:///a")]
    assert slow == [True] * 6 + [False] * 4
    assert opts.first_frame_s(True) == 10.0 and opts.first_frame_s(False) == 3.0
    assert CaptureOptions(stall_timeout=12).first_frame_s(True) == 12
    assert CaptureOptions(first_frame_timeout=0.5).first_frame_s(True) == 0.5
    with pytest.raises(ValueError, match="first_frame_timeout"):
        CaptureOptions(first_frame_timeout=0)


def test_mailbox_newest_wins_and_counts_drops():
    box = Mailbox()
    frames = [Frame("c", i, i, i, np.zeros((1, 1, 3), np.uint8)) for i in range(4)]
    for f in frames[:3]:
        box.put(f)
    assert box.dropped == 2 and box.take(0).seq == 2 and box.take(0) is None
    box.put(frames[3])
    box.finish()
    assert box.take(5).seq == 3  # the last frame survives finish()
    t0 = time.monotonic()
    assert box.take(5) is None and time.monotonic() - t0 < 1  # no waiting once finished


# -------------------------------------------------------------- GStreamer sources


def make_sample(data: bytes, caps: str):
    """A real Gst.Sample wrapping ``data`` with ``caps``."""
    from stream.gst import load_gst

    Gst = load_gst().Gst
    return Gst.Sample.new(Gst.Buffer.new_wrapped(data), Gst.Caps.from_string(caps), None, None)


@pytest.mark.parametrize(("width", "short_last_row"), [(322, False), (322, True), (320, False)])
def test_sample_to_bgr_cuts_row_padding(width: int, short_last_row: bool):
    require_gst()
    from stream.gst import sample_to_bgr

    h, stride = 7, (width * 3 + 3) // 4 * 4  # GStreamer rounds BGR rows up to 4 bytes
    rng = np.random.default_rng(width)
    raw = rng.integers(0, 256, h * stride, np.uint8)
    if short_last_row:  # a buffer may end right after the last row's pixels
        raw = raw[: (h - 1) * stride + width * 3]
    sample = make_sample(raw.tobytes(), f"video/x-raw,format=BGR,width={width},height={h}")
    image = sample_to_bgr(sample)
    del sample  # packed rows are a view of the mapped copy: it must outlive the sample
    gc.collect()
    expected = np.stack([raw[r * stride: r * stride + width * 3] for r in range(h)])
    assert image.shape == (h, width, 3) and image.flags.c_contiguous
    assert not image.flags.writeable
    assert np.array_equal(image.reshape(h, width * 3), expected)
    with pytest.raises(ValueError, match="too small"):
        sample_to_bgr(make_sample(raw[: (h - 1) * stride + width * 3 - 1].tobytes(),
                                  f"video/x-raw,format=BGR,width={width},height={h}"))
    with pytest.raises(ValueError, match="format=BGR"):
        sample_to_bgr(make_sample(raw.tobytes(),
                                  f"video/x-raw,format=RGB,width={width},height={h}"))


def test_test_source_delivers_sized_frames_with_increasing_seq():
    require_elements("videotestsrc")
    log = StateLog()
    spec = parse_source("test://smpte?width=322&height=98&fps=30", "front")
    with open_capture(spec, backend="gstreamer", options=FAST, on_state=log) as cap:
        assert isinstance(cap, GstCapture)
        frames = []
        while len(frames) < 8:
            frame = cap.latest(3.0)
            assert frame is not None, f"no frame, state {cap.state}"
            assert frame.t_capture_mono <= time.monotonic_ns()
            assert abs(frame.t_capture_wall - time.time_ns()) < 2e9
            frames.append(frame)
        stats = cap.stats()
    for f in frames:
        assert f.camera_id == "front" and f.shape == (98, 322)
        assert f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert not f.image.flags.writeable
    seqs = [f.seq for f in frames]
    monos = [f.t_capture_mono for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 0
    assert monos == sorted(monos)
    # 322*3 = 966 bytes of pixels in a 968-byte GStreamer stride: SMPTE bars are vertical,
    # so the top rows are identical only if the padding was cut off row by row.
    top = frames[-1].image[:60]
    assert (top == top[0]).all()
    assert {tuple(c) for c in top[0]} >= {(255, 255, 255), (0, 0, 255), (255, 0, 0)}
    assert stats.state == "running" and stats.captured >= 8 and stats.frame_size == (98, 322)
    assert "format=(string)BGR" in stats.caps and stats.errors == 0
    assert cap.state == "stopped" and log.states() == ["starting", "running", "stopped"]
    cap.close()  # idempotent
    assert cap.latest(5.0) is None


def test_test_source_with_frame_count_ends_in_eos():
    require_elements("videotestsrc")
    spec = parse_source("test://ball?width=64&height=48&fps=100&frames=5")
    with open_capture(spec, options=FAST) as cap:
        assert cap.wait_state({"eos"}, 10)
        assert cap.captured == 5 and cap.reconnects == 0


@pytest.mark.parametrize("container", ["avi", "mkv", "mp4"])
def test_file_realtime0_delivers_every_frame(tmp_path: Path, container: str):
    path = encode_video(tmp_path / f"clip.{container}", frames=40, container=container)
    spec = parse_source(f"{path}?realtime=0")
    with open_capture(spec, backend="gstreamer", options=FAST) as cap:
        frames = take_all(cap)
        assert cap.state == "eos"
        assert [f.seq for f in frames] == list(range(40))
        assert cap.captured == 40 and cap.dropped == 0
        assert frames[0].shape == (120, 160)


def test_file_with_audio_track_delivers_the_video(tmp_path: Path):
    require_elements("audiotestsrc")
    path = encode_video(tmp_path / "av.mkv", frames=20, container="mkv", audio=True)
    with open_capture(parse_source(f"{path}?realtime=0"), options=FAST) as cap:
        frames = take_all(cap)
        assert cap.state == "eos" and len(frames) == 20 and cap.errors == 0


def test_file_realtime_plays_at_file_rate(tmp_path: Path):
    path = encode_video(tmp_path / "clip.avi", frames=12, fps=30)
    t0 = time.monotonic()
    with open_capture(parse_source(str(path)), options=FAST) as cap:
        assert cap.wait_state({"eos"}, 10)
    # 12 frames at 30 fps span 0.4 s; a decoder running free would take a few ms.
    assert time.monotonic() - t0 >= 0.3
    assert cap.captured == 12


@pytest.mark.parametrize("backend", ["gstreamer", "opencv"])
def test_file_loop_replays(tmp_path: Path, backend: str):
    if backend == "gstreamer":
        path = encode_video(tmp_path / "clip.mkv", frames=10, container="mkv")
    else:
        path = write_mjpg_avi(tmp_path / "clip.avi", frames=10)
    log = StateLog()
    spec = parse_source(f"{path.as_uri()}?loop=1&realtime=0")
    with open_capture(spec, backend=backend, options=FAST, on_state=log) as cap:
        frames = take_all(cap, limit=25)
        assert len(frames) == 25 and cap.state == "running"
        assert [f.seq for f in frames] == list(range(25)) and cap.reconnects == 0
    assert log.states() == ["starting", "running", "stopped"]  # a replay is no new event


def test_slow_consumer_gets_newest_frames_and_drops_are_counted():
    require_elements("videotestsrc")
    spec = parse_source("test://ball?width=64&height=48&fps=60")
    with open_capture(spec, options=FAST) as cap:
        taken = []
        for _ in range(5):
            time.sleep(0.2)
            captured_before = cap.captured
            frame = cap.latest(2.0)
            assert frame is not None
            # newest wins: the frame handed out is at least as new as the newest one
            # captured before asking (seq counts before the frame reaches the mailbox)
            assert frame.seq >= captured_before - 2
            taken.append(frame)
        cap.request_stop()
        cap.close()
    assert cap.dropped > 10  # ~12 frames arrive per 0.2 s, one is taken
    assert len(taken) + cap.dropped <= cap.captured <= len(taken) + cap.dropped + 1
    assert all(b.seq - a.seq > 3 for a, b in itertools.pairwise(taken))


def test_appsink_arrivals_turns_the_rendered_counter_into_skipped_frames():
    arrivals = AppsinkArrivals()
    # the first frame is handed out at preroll, before the counter counts it
    assert arrivals.pulled(0) == 0
    # steady: one frame taken in per pull, nothing skipped
    assert [arrivals.pulled(r) for r in (2, 3)] == [0, 0]
    # a frame came in between the pull and the read: it is queued, not lost
    assert arrivals.pulled(5) == 0
    assert arrivals.pulled(5) == 0  # ... and this pull took it
    # the sink took in 4 frames since: one was pulled, one may wait in the queue (newer
    # than the pulled one, so not numbered yet), at least 2 were discarded before it
    assert arrivals.pulled(9) == 2
    # 4 more: the one left from before was discarded too, with 2 of these
    assert arrivals.pulled(13) == 3
    assert arrivals.finish(14) == 2  # the queued one and one more nobody pulled
    # totals are exact: 14 taken in, 7 pulled, 2 + 3 + 2 never pulled
    # a flushing seek restarts the counter; the frame queued at that moment is lost
    arrivals = AppsinkArrivals()
    assert arrivals.pulled(2) == 0  # one queued after the pull
    assert arrivals.flushed() == 1
    assert [arrivals.pulled(r) for r in (0, 2)] == [0, 0]  # preroll again, then steady
    assert arrivals.pulled(1) == 0  # restarted without a flushed() call: caught too
    assert arrivals.finish(None) == 0
    assert arrivals.pulled(None) == 0  # a GStreamer without the counter: nothing known


def test_frames_the_appsink_discards_take_seq_numbers_and_count_as_dropped():
    """A capture thread that falls behind a live source (here: a slow on_frame listener)
    makes the appsink (max-buffers=1 drop=true) discard frames it never hands out. They
    must show as seq gaps and in ``dropped``, or the wire's loss formula misses them."""
    require_elements("videotestsrc")
    spec = parse_source("test://ball?width=64&height=48&fps=120")
    taken: list[Frame] = []

    def slow_listener(_camera_id: str) -> None:
        time.sleep(0.03)  # the capture thread pulls ~30 frames/s of the 120 offered

    cap = open_capture(spec, backend="gstreamer", options=FAST, on_frame=slow_listener)
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            frame = cap.latest(0.5)
            if frame is not None:
                taken.append(frame)
    finally:
        cap.request_stop()
        cap.close()
    stats = cap.stats()
    assert len(taken) >= 10
    assert stats.source_dropped > len(taken)  # ~3 of 4 frames never left the appsink
    gaps = sum(b.seq - a.seq - 1 for a, b in itertools.pairwise(taken))
    assert len(taken) < gaps <= stats.dropped  # they show between the frames taken
    # every seq number is a frame taken, replaced in the mailbox or discarded by the sink
    assert stats.captured == len(taken) + stats.dropped + (1 if cap.pending else 0)


def test_two_sources_and_a_broken_one_in_one_process():
    require_elements("videotestsrc")
    log = StateLog()
    specs = [parse_source("test://ball?width=64&height=48&fps=30", "a"),
             parse_source("test://snow?width=80&height=60&fps=30", "b"),
             parse_source("gst://nosuchelement_xyz ! video/x-raw", "bad")]
    seen: dict[str, list[Frame]] = {"a": [], "b": []}
    with MultiCapture(specs, options=FAST, on_state=log) as multi:
        deadline = time.monotonic() + 10
        while min(len(v) for v in seen.values()) < 5 and time.monotonic() < deadline:
            for cam, frame in multi.wait(1.0).items():
                seen[cam].append(frame)
        stats = multi.stats()
        assert multi["bad"].state == "failed" and not multi.finished
    assert [f.shape for f in seen["a"][:1] + seen["b"][:1]] == [(48, 64), (60, 80)]
    assert all(f.camera_id == cam for cam, fs in seen.items() for f in fs)
    assert stats["a"].state == stats["b"].state == "running"
    assert "nosuchelement_xyz" in stats["bad"].last_error and stats["bad"].reconnects == 0
    assert "failed" in log.states("bad") and "running" not in log.states("bad")


def test_missing_element_fails_at_once_naming_it():
    require_gst()
    cap = open_capture(parse_source("gst://nvarguscamerasrc_missing sensor-id=0"), options=FAST)
    try:
        assert cap.wait_state({"failed"}, 5)
        assert cap.latest(5.0) is None
        assert "nvarguscamerasrc_missing" in cap.stats().last_error and cap.errors == 1
    finally:
        cap.close()
    assert cap.state == "failed"  # close() keeps the reason the source ended


def test_garbage_file_fails_without_hanging(tmp_path: Path):
    require_elements("filesrc", "decodebin")
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, np.uint8).tobytes())
    t0 = time.monotonic()
    with open_capture(parse_source(f"{bad}?realtime=0"), options=FAST) as cap:
        assert cap.latest(10.0) is None
        assert cap.state == "failed" and cap.errors >= 1 and cap.stats().last_error
    assert time.monotonic() - t0 < 10


def test_truncated_files_end_without_hanging(tmp_path: Path):
    for container in ("mp4", "mkv"):
        path = encode_video(tmp_path / f"clip.{container}", frames=60, container=container)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with open_capture(parse_source(f"{path}?realtime=0"), options=FAST) as cap:
            frames = take_all(cap)
            assert cap.state in ("eos", "failed"), container
            assert len(frames) < 60
            if container == "mp4":  # the index (moov) is written last: nothing playable
                assert cap.state == "failed" and not frames


def test_stalled_live_source_is_rebuilt_and_seq_continues():
    require_elements("videotestsrc")
    log = StateLog()
    # One frame every 5 s: each new pipeline gives a frame at once, then stalls.
    spec = parse_source("gst://videotestsrc is-live=true ! "
                        "video/x-raw,width=32,height=24,framerate=1/5")
    # A slow pipeline start on a loaded machine is not the stall under test.
    opts = CaptureOptions(stall_timeout=0.4, poll_interval=0.05, backoff=Backoff(0.1, 2, 0.2),
                          first_frame_timeout=5)
    with open_capture(spec, options=opts, on_state=log) as cap:
        frames = [f for f in (cap.latest(5.0) for _ in range(3)) if f is not None]
        assert wait_until(lambda: cap.reconnects >= 2, 10)
    assert [f.seq for f in frames] == [0, 1, 2]
    states = log.states()
    assert states[:5] == ["starting", "running", "stalled", "reconnecting", "running"]
    assert cap.errors == 0


def test_gives_up_after_max_retries():
    require_elements("videotestsrc", "identity")
    spec = parse_source("gst://videotestsrc is-live=true ! identity drop-probability=1.0")
    opts = CaptureOptions(stall_timeout=0.3, poll_interval=0.05, max_retries=2,
                          backoff=Backoff(0.05, 2, 0.1))
    log = StateLog()
    with open_capture(spec, options=opts, on_state=log) as cap:
        assert cap.wait_state({"failed"}, 10)
        assert cap.reconnects == 2 and cap.captured == 0
        assert cap.latest(5.0) is None
    assert log.states().count("stalled") == 3
    assert "no first frame for 0.3 s; gave up after 2 reconnects" in log.events[-1][2]


def test_eos_of_a_network_or_camera_gst_pipeline_is_a_loss_not_an_end():
    loss = [parse_source(u).eos_is_loss for u in (
        "gst://rtspsrc location=rtsp://10.0.0.5/s latency=0 ! rtph264depay ! avdec_h264",
        "gst://v4l2src device=/dev/video0 ! videoconvert", "gst://srtsrc uri=srt://:7001 ! tsdemux",
        "rtsp://10.0.0.5/s", "v4l2:///dev/video0", "csi://0",
        "gst://uridecodebin uri=rtsp://10.0.0.5/s",
        "gst://urisourcebin uri=\"srt://h:7001\" ! tsdemux",
        "gst://videotestsrc num-buffers=10", "gst://filesrc location=a.mp4 ! decodebin",
        "gst://souphttpsrc location=https://h/clip.mp4 ! decodebin",
        "gst://v4l2src num-buffers=30 ! videoconvert", "gst://uridecodebin uri=file:///a.mp4",
        "test://",
        "gst://souphttpsrc location=http://cam/video.mjpg ! multipartdemux ! jpegdec",
        "gst://souphttpsrc is-live=true location=http://cam/live.ts ! tsdemux")]
    assert loss == [True] * 8 + [False] * 6 + [True] * 2


@pytest.mark.parametrize("stall", [0.3, 0.6], ids=["stall<backoff.max", "stall>backoff.max"])
def test_a_flapping_source_backs_off_and_gives_up(stall: float):
    """One frame, then a stall, over and over: a frame alone does not reset the reconnect
    count (it did, so such a source reconnected at the first backoff step forever and
    max_retries never counted), nor does a session that lasted long only by its stall."""
    require_elements("videotestsrc")
    spec = parse_source("gst://videotestsrc is-live=true ! "
                        "video/x-raw,width=32,height=24,framerate=1/5")
    opts = CaptureOptions(stall_timeout=stall, poll_interval=0.05, max_retries=3,
                          backoff=Backoff(0.05, 2, 0.4), first_frame_timeout=5)
    log = StateLog()
    with open_capture(spec, options=opts, on_state=log) as cap:
        assert cap.wait_state({"failed"}, 15)
        assert cap.reconnects == 3 and cap.captured == 4
    waits = [d.rsplit(" in ", 1)[1] for _, s, d in log.events if s == "reconnecting"]
    assert waits == ["0.05 s", "0.1 s", "0.2 s"]
    assert "gave up after 3 reconnects" in log.events[-1][2]


def test_a_capture_loop_crash_ends_failed_not_stopped(monkeypatch):
    """An exception outside a session (here the backoff) ends the capture as failed, with
    the reason, so a one-camera run exits non-zero and its service restarts."""
    require_elements("videotestsrc", "identity")

    def broken(self: Backoff, attempt: int) -> float:
        raise OverflowError("(34, 'Numerical result out of range')")

    monkeypatch.setattr(Backoff, "delay", broken)
    spec = parse_source("gst://videotestsrc is-live=true ! identity drop-probability=1.0")
    opts = CaptureOptions(stall_timeout=0.2, poll_interval=0.05)
    with open_capture(spec, options=opts) as cap:
        assert cap.wait_state({"failed", "stopped"}, 10)
        assert cap.state == "failed"
        assert "OverflowError" in cap.stats().last_error


def test_broken_state_listener_does_not_stop_capture():
    require_elements("videotestsrc")

    def explode(*_args: object) -> None:
        raise RuntimeError("listener bug")

    with open_capture(parse_source("test://?width=32&height=24"), options=FAST,
                      on_state=explode) as cap:
        assert cap.latest(3.0) is not None and cap.state == "running"


# -------------------------------------------------------------- OpenCV fallback


def test_opencv_fallback_reads_a_file_in_order(tmp_path: Path):
    path = write_mjpg_avi(tmp_path / "gray.avi", frames=20)
    spec = parse_source(f"{path}?realtime=0")
    with open_capture(spec, backend="opencv", options=FAST) as cap:
        assert cap.backend == "opencv"
        frames = take_all(cap)
        assert cap.state == "eos"
    assert [f.seq for f in frames] == list(range(20))
    levels = [int(f.image.mean()) for f in frames]
    assert levels == sorted(levels) and abs(levels[-1] - 8 * 19) <= 4
    assert frames[0].shape == (64, 96) and not frames[0].image.flags.writeable


def test_auto_backend_falls_back_to_opencv_without_gstreamer(tmp_path: Path, monkeypatch):
    import stream.capture

    path = write_mjpg_avi(tmp_path / "gray.avi", frames=3)
    monkeypatch.setattr(stream.capture, "gst_available", lambda: False)
    with open_capture(parse_source(f"{path}?realtime=0"), options=FAST) as cap:
        assert cap.backend == "opencv" and len(take_all(cap)) == 3


def test_opencv_fallback_rejects_gstreamer_only_sources():
    with pytest.raises(SourceError, match="need GStreamer"):
        open_capture(parse_source("test://ball"), backend="opencv")
    with pytest.raises(ValueError, match="backend must be"):
        open_capture(parse_source("test://ball"), backend="ffmpeg")


def test_opencv_fallback_gives_rtsp_the_first_frame_allowance_to_connect(monkeypatch):
    """OpenCV's open timeout was the stall timeout, so an RTSP camera on a slow link that
    GStreamer allows 10 s to connect got 3 s with the fallback."""
    import cv2

    from stream.cvcapture import CvCapture

    seen: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda target, api, params: seen.append(
        (target, params)))
    opts = CaptureOptions(stall_timeout=3.0)
    for uri in ("rtsp://10.0.0.5/s", "v4l2:///dev/video0"):
        CvCapture(parse_source(uri), options=opts, start=False)._open()
    timeouts = [dict(zip(p[::2], p[1::2], strict=False)) for _, p in seen]
    assert [t[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC] for t in timeouts] == [10_000, 3_000]
    assert [t[cv2.CAP_PROP_READ_TIMEOUT_MSEC] for t in timeouts] == [3_000, 3_000]
