"""StageTimes read from other threads while the post worker writes (status line, /metrics,
preview): every read is a consistent snapshot, never a RuntimeError."""

from __future__ import annotations

import sys
import threading

import pytest

from stream.stats import StageTimes


@pytest.fixture
def eager_thread_switches():
    """Switch threads every microsecond, so a reader loses the GIL inside its loops."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_reads_while_another_thread_writes(eager_thread_switches: None) -> None:
    times = StageTimes(window=4000)
    for _ in range(4000):  # a full window: fps() walks many ticks
        times.tick()
    stop, errors = threading.Event(), []

    def writer() -> None:
        i = 4000
        while not stop.is_set():
            times.tick()
            times.add("total", 5_000_000)
            times.add(f"stage{i % 20}", 1_000)  # new keys: the dict grows while read
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(100):
            assert times.fps(horizon_s=3.0) > 0
            assert "total" in times.summaries()
            times.samples("total")
    except RuntimeError as e:  # "deque mutated during iteration", "dict changed size"
        errors.append(e)
    finally:
        stop.set()
        t.join()
    assert not errors, errors


def test_fps_over_the_horizon() -> None:
    times = StageTimes()
    for i in range(100):
        times.tick(i * 10_000_000)  # 100 fps for 1 s
    last = 99 * 10_000_000
    assert times.fps(horizon_s=0.5, now_ns=last) == pytest.approx(100.0)
    assert times.frames == 100
    assert StageTimes().fps() == 0.0


def test_fps_of_a_camera_that_stopped_falls_to_zero() -> None:
    """The status line, /metrics and the preview must not show a stalled camera's last
    rate for good: the window ends now."""
    times = StageTimes()
    for i in range(100):
        times.tick(i * 10_000_000)  # 100 fps for 1 s, then nothing
    last = 99 * 10_000_000
    assert times.fps(horizon_s=0.5, now_ns=last + 250_000_000) == pytest.approx(100.0)
    assert times.fps(horizon_s=0.5, now_ns=last + 495_000_000) == 0.0  # one tick left
    assert times.fps(horizon_s=0.5, now_ns=last + 3_000_000_000) == 0.0
    live = StageTimes()
    live.tick()
    live.tick()
    assert live.fps() > 0  # default now: the ticks' own clock
