"""The streaming pipeline: sources -> Segmenter -> publisher, composed by a plain loop.

One worker loop serves every camera round-robin, always taking each camera's newest
frame (the capture threads drop the rest), so a slow engine lowers the frame rate but
never builds a queue. Stages are small objects with one job each:

    FrameSource.latest()  ->  Segmenter.run()  ->  check_labels()  ->  LabelSink.send()

Timing per frame (monotonic ns): capture = wait between the source handing the frame
over and the loop picking it up; pre / infer / post from the Segmenter; publish = encode
and send; total = capture timestamp -> sent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.segmenter import Segmenter
from stream.frames import Frame
from stream.stats import StageTimes, format_line

log = logging.getLogger("segstream.pipeline")


class FrameSource(Protocol):
    """A camera: newest-frame mailbox fed by its own capture thread."""

    camera_id: str

    @property
    def state(self) -> str: ...

    @property
    def dropped(self) -> int: ...

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        ...

    def close(self) -> None: ...


class LabelSink(Protocol):
    """Where label maps go (the ZeroMQ publisher, or a list in tests)."""

    def send(self, frame: Frame, labels: np.ndarray, t_infer_ns: int, dropped: int) -> None: ...

    def close(self) -> None: ...


class EngineError(RuntimeError):
    """The engine raised or produced an invalid label map; nothing was published."""


def frame_size_problem(height: int, width: int, max_pixels: int) -> str:
    """Why a (height, width) frame cannot be segmented and published, or "" if it can."""
    if height < 1 or width < 1:
        return f"{width}x{height} frames are empty"
    if max_pixels and height * width > max_pixels:
        side = math.isqrt(max_pixels)
        return (f"{width}x{height} frames ({height * width} pixels) are larger than the "
                f"largest label map segstream publishes ({max_pixels} pixels, as "
                f"{side}x{side}); ask the source for a smaller size, e.g. ?width=3840&height=2160")
    return ""


def check_labels(labels: np.ndarray, frame: Frame, num_classes: int) -> None:
    """Refuse to publish anything but a (H, W) uint8 map of valid class ids for ``frame``."""
    if labels.dtype != np.uint8 or labels.shape != frame.shape:
        raise EngineError(f"engine returned {labels.dtype} {labels.shape} for a frame of "
                            f"{frame.shape}; expected uint8 {frame.shape}")
    top = int(labels.max(initial=0))
    if top >= num_classes:
        raise EngineError(f"engine returned class id {top} but the model has {num_classes} "
                            "classes")


@dataclass
class CameraStats:
    times: StageTimes = field(default_factory=StageTimes)
    published: int = 0


@dataclass
class PipelineResult:
    """What a finished run did, per camera and in all."""

    published: int
    seconds: float
    per_camera: dict[str, CameraStats]
    error: str | None = None

    @property
    def fps(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


class Pipeline:
    """Runs the loop until ``stop`` is set, ``max_frames`` are published or ``duration`` ends.

    Args:
        sources: the cameras (already started).
        segmenter: the engine stage.
        sink: the publisher stage.
        on_status: called with one status line per camera every ``stats_interval`` s.
        max_pixels: largest frame served (0: any); a camera whose frames are larger (or
            empty) is refused: its frames are skipped and ``on_refused(source, why)`` is
            called once (the runner ends that capture as failed).
    """

    def __init__(self, sources: Sequence[FrameSource], segmenter: Segmenter, sink: LabelSink,
                 *, max_frames: int = 0, duration: float = 0.0, stats_interval: float = 1.0,
                 on_status: Callable[[str], None] | None = None, poll_s: float = 0.001,
                 max_pixels: int = 0,
                 on_refused: Callable[[FrameSource, str], None] | None = None) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        self.sources = list(sources)
        self.segmenter = segmenter
        self.sink = sink
        self.max_frames = max_frames
        self.duration = duration
        self.stats_interval = stats_interval
        self.on_status = on_status
        self.poll_s = poll_s
        self.max_pixels = max_pixels
        self.on_refused = on_refused
        self.refused: dict[str, str] = {}  # camera id -> why its frames are not served
        self.stats = {s.camera_id: CameraStats() for s in self.sources}
        self.num_classes = segmenter.spec.num_classes
        self._rr = 0

    def _next_frame(self, timeout: float) -> tuple[FrameSource, Frame] | None:
        """Newest frame of the next camera (round-robin) that has one, within ``timeout``."""
        n = len(self.sources)
        if n == 1:
            f = self.sources[0].latest(timeout)
            return (self.sources[0], f) if f is not None else None
        deadline = time.monotonic() + timeout
        while True:
            for i in range(n):
                src = self.sources[(self._rr + i) % n]
                f = src.latest(0.0)
                if f is not None:
                    self._rr = (self._rr + i + 1) % n
                    return src, f
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_s)

    def process(self, src: FrameSource, frame: Frame) -> None:
        """Run one frame through the engine and publish it."""
        cam = self.stats[src.camera_id]
        t_taken = time.monotonic_ns()
        if src.camera_id in self.refused:
            return
        why = frame_size_problem(frame.shape[0], frame.shape[1], self.max_pixels)
        if why:
            self.refused[src.camera_id] = why
            log.error("%s: %s", src.camera_id, why)
            if self.on_refused is not None:
                self.on_refused(src, why)
            return
        try:
            labels, st = self.segmenter.run(frame.image)
        except Exception as e:  # any backend error: stop, publish nothing
            raise EngineError(f"engine failed on {frame.camera_id} seq {frame.seq}: {e}") from e
        check_labels(labels, frame, self.num_classes)
        t_infer = time.time_ns()
        t0 = time.monotonic_ns()
        # Wire format 1.1 `dropped`: frames of this camera older than this one that will
        # never be published (seqs start at 0 and this loop serves a camera in order), so
        # a subscriber's loss formula is exact per pair, not off by in-flight drops.
        self.sink.send(frame, labels, t_infer, max(0, frame.seq - cam.published))
        t_sent = time.monotonic_ns()
        times = cam.times
        times.add("capture", t_taken - frame.t_capture_mono)
        times.add("pre", st.pre)
        times.add("infer", st.infer)
        times.add("post", st.post)
        times.add("publish", t_sent - t0)
        times.add("total", t_sent - frame.t_capture_mono)
        times.tick(t_sent)
        cam.published += 1

    def status_lines(self) -> list[str]:
        return [format_line(s.camera_id, self.stats[s.camera_id].times.fps(),
                            self.stats[s.camera_id].times.summaries(), s.dropped, s.state)
                for s in self.sources]

    def run(self, stop: threading.Event | None = None) -> PipelineResult:
        stop = stop or threading.Event()
        start = time.monotonic()
        next_status = start + self.stats_interval
        published = 0
        error = None
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self.duration and now - start >= self.duration:
                    break
                if self.stats_interval and self.on_status and now >= next_status:
                    for line in self.status_lines():
                        self.on_status(line)
                    next_status = now + self.stats_interval
                got = self._next_frame(0.05)
                if got is None:
                    if all(s.state in ("eos", "failed", "stopped") for s in self.sources):
                        log.info("all sources ended")
                        break
                    continue
                before = self.stats[got[0].camera_id].published
                self.process(*got)
                published += self.stats[got[0].camera_id].published - before
                if self.max_frames and published >= self.max_frames:
                    break
        except EngineError as e:
            error = str(e)
            log.error("%s", e)
        return PipelineResult(published, time.monotonic() - start, self.stats, error)
