"""The pipeline loop with in-memory sources and sinks (GStreamer/ZeroMQ: test_run_e2e.py)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from engines.segmenter import Segmenter
from stream.frames import Frame, now_ns
from stream.pipeline import EngineError, Pipeline, check_labels


class ListSource:
    """Hands out prepared frames one by one, then reports end of stream."""

    def __init__(self, camera_id: str, n: int, shape=(48, 64)) -> None:
        self.camera_id = camera_id
        rng = np.random.default_rng(len(camera_id))
        self._images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]
        self._seq = 0
        self.state = "running"
        self.dropped = 0

    def latest(self, timeout: float) -> Frame | None:
        if self._seq >= len(self._images):
            self.state = "eos"
            return None
        mono, wall = now_ns()
        f = Frame(self.camera_id, self._seq, mono, wall, self._images[self._seq])
        self._seq += 1
        return f

    def close(self) -> None:
        self.state = "stopped"


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[Frame, np.ndarray]] = []

    def send(self, frame, labels, t_infer_ns, dropped) -> None:
        self.sent.append((frame, labels.copy()))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_pipeline_publishes_every_frame_of_two_sources(tiny_model, overlap):
    seg = Segmenter.from_path(tiny_model, threads=1)
    a, b = ListSource("a", 5), ListSource("bb", 3, shape=(30, 40))
    sink = ListSink()
    res = Pipeline([a, b], seg, sink, stats_interval=0, overlap=overlap).run()
    assert res.error is None and res.published == 8
    seqs = {cam: [f.seq for f, _ in sink.sent if f.camera_id == cam] for cam in ("a", "bb")}
    assert seqs == {"a": [0, 1, 2, 3, 4], "bb": [0, 1, 2]}
    for frame, labels in sink.sent:
        assert labels.shape == frame.shape and labels.dtype == np.uint8
        assert np.array_equal(labels, seg(frame.image))
    times = res.per_camera["a"].times.summaries()
    assert times["total"].count == 5 and times["infer"].p50_ms > 0


def test_pipeline_stops_on_event_and_max_frames(tiny_model):
    seg = Segmenter.from_path(tiny_model, threads=1)
    res = Pipeline([ListSource("a", 50)], seg, ListSink(), max_frames=7).run()
    assert res.published == 7
    stop = threading.Event()
    stop.set()
    assert Pipeline([ListSource("a", 50)], seg, ListSink()).run(stop).published == 0


def test_engine_failure_publishes_nothing_and_reports(tiny_model):
    class Broken:
        spec = Segmenter.from_path(tiny_model, threads=1).spec

        def run(self, image):
            raise RuntimeError("CUDA error: illegal address")

    sink = ListSink()
    res = Pipeline([ListSource("a", 3)], Broken(), sink).run()
    assert sink.sent == [] and "illegal address" in res.error and "seq 0" in res.error


def test_invalid_label_maps_are_refused():
    frame = Frame("a", 0, 0, 0, np.zeros((4, 5, 3), np.uint8))
    check_labels(np.zeros((4, 5), np.uint8), frame, 3)
    with pytest.raises(EngineError, match="expected uint8"):
        check_labels(np.zeros((4, 5), np.int64), frame, 3)
    with pytest.raises(EngineError, match="expected uint8"):
        check_labels(np.zeros((5, 4), np.uint8), frame, 3)
    with pytest.raises(EngineError, match="class id 7"):
        check_labels(np.full((4, 5), 7, np.uint8), frame, 3)


def test_status_lines_report_fps_and_drops(tiny_model):
    seg = Segmenter.from_path(tiny_model, threads=1)
    lines: list[str] = []
    src = ListSource("cam0", 40)
    src.dropped = 3
    p = Pipeline([src], seg, ListSink(), stats_interval=1e-9, on_status=lines.append)
    p.run()
    time.sleep(0)
    assert any("cam0" in ln and "dropped 3, hand-off 0" in ln and "fps" in ln
               and "overlap on" in ln for ln in lines)


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_dropped_makes_the_loss_formula_exact_for_every_pair(tiny_model, overlap):
    """Wire 1.1: a source that skips frames while the engine is busy (and drops more while
    a map is in flight). For every pair of published maps of a camera,
    (seq2 - seq1 - 1) - (dropped2 - dropped1) must be exactly 0 (nothing lost)."""

    class SkippingSource(ListSource):
        def __init__(self) -> None:
            super().__init__("cam", 60)
            self._rng = np.random.default_rng(7)

        def latest(self, timeout: float) -> Frame | None:
            self._seq += int(self._rng.integers(0, 4))  # 0-3 frames overwritten unread
            self.dropped += 5  # and the mailbox keeps dropping newer ones meanwhile
            return super().latest(timeout)

    class DroppedSink(ListSink):
        def send(self, frame, labels, t_infer_ns, dropped) -> None:
            self.sent.append((frame.seq, dropped))

    seg = Segmenter.from_path(tiny_model, threads=1)
    sink = DroppedSink()
    Pipeline([SkippingSource()], seg, sink, stats_interval=0, overlap=overlap).run()
    assert len(sink.sent) > 10
    assert sink.sent[0][1] == sink.sent[0][0]  # frames before the first one never published
    for (s1, d1), (s2, d2) in itertools.pairwise(sink.sent):
        assert (s2 - s1 - 1) - (d2 - d1) == 0


class LastFrameAtTheEnd(ListSource):
    """A camera whose last frame and end of stream land together, between the loop's look
    at the mailbox (empty) and its look at the cameras' states: the capture thread hands
    the last frame over, then reports eos (as stream.capture_base does)."""

    def __init__(self, camera_id: str, n: int) -> None:
        super().__init__(camera_id, n)
        self._held = self._images.pop()  # not captured yet
        self._state = "running"

    @property
    def state(self) -> str:
        if self._held is not None and self._seq >= len(self._images):
            self._images.append(self._held)  # the capture thread puts the last frame...
            self._held = None
            self._state = "eos"  # ...then reaches the end of the stream
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    def latest(self, timeout: float) -> Frame | None:
        if self._seq >= len(self._images):
            return None  # the end is reported by the capture thread, not here
        return super().latest(timeout)


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_a_last_frame_that_arrives_with_the_end_of_stream_is_published(tiny_model, overlap):
    seg = Segmenter.from_path(tiny_model, threads=1)
    sink = ListSink()
    Pipeline([LastFrameAtTheEnd("a", 4)], seg, sink, stats_interval=0, overlap=overlap).run()
    assert [f.seq for f, _ in sink.sent] == [0, 1, 2, 3]
