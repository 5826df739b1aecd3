"""engines.data.prefetch: order, errors at their position, early stop, bounded run-ahead."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from engines.data.prefetch import Prefetcher


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_yields_every_item_in_order(depth: int) -> None:
    with Prefetcher(range(50), depth=depth) as p:
        assert list(p) == list(range(50))


def test_empty_source() -> None:
    with Prefetcher([], depth=2) as p:
        assert list(p) == []


def test_source_error_is_raised_after_the_items_before_it() -> None:
    def source():
        yield 0
        yield 1
        raise OSError("bad image 2")

    got = []
    with Prefetcher(source()) as p, pytest.raises(OSError, match="bad image 2"):
        for item in p:
            got.append(item)
    assert got == [0, 1]


def test_runs_at_most_depth_items_ahead() -> None:
    produced = []

    def source():
        for i in itertools.count():
            produced.append(i)
            yield i

    with Prefetcher(source(), depth=3) as p:
        it = iter(p)
        assert next(it) == 0
        time.sleep(0.3)  # let the thread run as far ahead as it may
        # 1 consumed + 3 queued + 1 held by the blocked put
        assert len(produced) <= 5


def test_close_stops_an_endless_source_and_its_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    p = Prefetcher(itertools.count(), depth=2, name="prefetch-under-test")
    assert "prefetch-under-test" in {t.name for t in threading.enumerate()} - before
    for i in p:
        if i == 10:
            break
    p.close()
    assert "prefetch-under-test" not in {t.name for t in threading.enumerate()}


def test_work_happens_off_the_consumer_thread() -> None:
    names = []

    def source():
        for i in range(3):
            names.append(threading.current_thread().name)
            yield i

    with Prefetcher(source(), name="aug") as p:
        assert list(p) == [0, 1, 2]
    assert set(names) == {"aug"}


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(range(3), depth=0)
