"""Prepare training batches on a background thread while the main thread trains.

On a CPU the data path of a step (decode-free here: the split is in memory, but random
scale, crop, flip, photometric jitter, normalisation and collation) costs a few percent of
the step. OpenCV, NumPy's large-array kernels and torch all release the GIL, so a thread is
enough to run it beside the forward/backward pass; worker *processes* (``--workers``) would
copy the whole in-memory split into each worker and compete for the same two cores.

The order of batches is exactly the source's: the thread only runs ahead of the consumer,
never reorders, so a run is bit-identical with and without prefetching.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    """An exception raised by the source, carried to the consumer thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Iterate ``source`` on a daemon thread, at most ``depth`` items ahead of the consumer.

    Use as a context manager (or call :meth:`close`) so that a consumer that stops early
    (``break``) also stops the thread. An exception raised by the source is re-raised in the
    consumer, at the position of the item that failed.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(source),), name=name,
                                        daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator[T]) -> None:
        try:
            for item in it:
                if not self._put(item):
                    return
        except Exception as e:  # carried to and re-raised by the consumer
            self._put(_Failure(e))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                raise RuntimeError("the prefetch thread ended without finishing its "
                                   "source") from None
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the thread (drops anything prepared and not consumed) and wait for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
