"""The hand-off between the engine thread and the post worker: one slot per camera.

Never a growing queue: each camera has at most one result waiting. A newer result of a
camera whose previous one the worker has not taken yet replaces it (newest wins) and the
older one is handed back to the caller as dropped. The worker takes waiting results in the
order they arrived, so every camera is served in turn, and within a camera in capture
order: a result only ever replaces an older one of the same camera.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """Per-camera one-deep, newest-wins slots between one producer and one consumer.

    ``put`` never blocks; ``take`` waits for a result; ``wait_taken`` lets a producer
    that shares the CPU with the consumer wait until its previous results were taken
    (back-pressure instead of computing results that would be dropped).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, T] = OrderedDict()  # camera -> result, arrival order
        self._closed = False
        self.dropped = 0  # results replaced before the consumer took them, all cameras

    def put(self, camera: str, item: T) -> T | None:
        """Leave ``item`` for the consumer; returns the camera's result it replaced
        (dropped: it will never be taken), or None."""
        with self._cond:
            old = self._waiting.pop(camera, None)
            if old is not None:
                self.dropped += 1
            self._waiting[camera] = item
            self._cond.notify_all()
            return old

    def take(self, timeout: float | None) -> T | None:
        """The oldest waiting result, waiting up to ``timeout`` s (None: forever); None
        on timeout, or at once once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._waiting or self._closed, timeout):
                return None
            if not self._waiting:
                return None
            _, item = self._waiting.popitem(last=False)
            self._cond.notify_all()
            return item

    def wait_taken(self, timeout: float | None) -> bool:
        """Wait until no result is waiting (the consumer took them all, and may still be
        working on the last); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting or self._closed, timeout)

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self, *, discard: bool = False) -> list[T]:
        """No more puts: ``take`` returns what is left, then None. With ``discard`` the
        waiting results are removed and returned (never to be taken)."""
        with self._cond:
            self._closed = True
            left = list(self._waiting.values()) if discard else []
            if discard:
                self._waiting.clear()
            self._cond.notify_all()
            return left
