"""The fan-in: each camera's newest frame for the engine, cameras in turn.

One engine call may take frames of several cameras (the nvstreammux idea, ``--batch``):
:meth:`FanIn.gather` takes every camera's newest frame that is there, at most one per
camera and ``limit`` in all, and when that is fewer than ``limit`` waits at most
``wait_s`` after the first one for the other cameras, so that a slow camera never holds
the others back by more than that. Cameras are scanned from where the last gather
stopped, so with more cameras than ``limit`` each one gets its turn.
"""

from __future__ import annotations

import time
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from stream.frames import Frame

if TYPE_CHECKING:
    from stream.pipeline import FrameSource

ENDED = ("eos", "failed", "stopped")


class FanIn:
    """Takes frames from ``sources`` for the engine (one thread calls :meth:`gather`).

    Args:
        sources: the cameras.
        poll_s: with several cameras, how often their mailboxes are looked at while
            waiting (one camera: its mailbox wakes the wait directly).
    """

    def __init__(self, sources: Sequence[FrameSource], poll_s: float = 0.001) -> None:
        self.sources = list(sources)
        self.poll_s = poll_s
        self._rr = 0

    def gather(self, limit: int, timeout: float, wait_s: float = 0.0,
               skip: Container[str] = ()) -> tuple[list[tuple[FrameSource, Frame]], int]:
        """Up to ``limit`` newest frames, one per camera, oldest-served camera first.

        Waits up to ``timeout`` s for a first frame, then up to ``wait_s`` s more for
        other cameras while fewer than ``limit`` are there and another camera is still
        running. Frames of cameras in ``skip`` are taken and discarded.

        Returns:
            ((source, frame) pairs, ns spent waiting for the first frame).
        """
        start = time.monotonic()
        n = len(self.sources)
        if n == 1:
            src = self.sources[0]
            f = src.latest(timeout)
            waited = int((time.monotonic() - start) * 1e9)
            if f is None or src.camera_id in skip:
                return [], waited
            return [(src, f)], waited
        got: list[tuple[FrameSource, Frame]] = []
        first = 0.0
        while True:
            for i in range(n):
                src = self.sources[(self._rr + i) % n]
                if any(s is src for s, _ in got):
                    continue
                f = src.latest(0.0)
                if f is None or src.camera_id in skip:
                    continue
                got.append((src, f))
                if len(got) >= limit:
                    break
            now = time.monotonic()
            if got and not first:
                first = now
            if len(got) >= limit or (got and (now - first >= wait_s
                                              or not self._others_running(got, skip))):
                break
            if not got and now - start >= timeout:
                break
            time.sleep(self.poll_s)
        if got:
            last = next(i for i, s in enumerate(self.sources) if s is got[-1][0])
            self._rr = (last + 1) % n
        return got, int(((first or time.monotonic()) - start) * 1e9)

    def _others_running(self, got: list[tuple[FrameSource, Frame]],
                        skip: Container[str]) -> bool:
        """Some camera without a frame in ``got`` may still deliver one."""
        taken = {id(s) for s, _ in got}
        return any(id(s) not in taken and s.camera_id not in skip and s.state not in ENDED
                   for s in self.sources)
