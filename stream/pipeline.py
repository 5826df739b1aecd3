"""The streaming pipeline: sources -> engine -> post -> publisher, composed by a plain loop.

Each camera keeps only its newest frame (the capture threads drop the rest), so a slow
engine lowers the frame rate but never builds a queue. The loop runs on the engine
thread; with overlap (the default) post-processing, encoding and publishing run on a
post worker at the same time, so frame N+1 is in the engine while frame N is
post-processed and sent::

    engine thread:  FanIn.gather() -> engine stage (pre, one call for 1..N cameras) ─┐
                                                                                      │ Handoff
    post worker:    post (upsample + argmax) -> check_labels() -> LabelSink.send() ◀──┘ (one per
                                                                                        camera)
The pieces are :mod:`stream.fanin`, :mod:`stream.stages`, :mod:`stream.handoff` and the
policies in :mod:`stream.policy` (overlap, ONNX Runtime's thread spinning). Nothing is
lost or reordered per camera: a result the worker has not taken is only ever replaced by
a newer one of the same camera, counted in that camera's ``dropped``, and the wire's
``dropped`` stays exact (:class:`stream.stages.PostStage`). Stage timings: see
:mod:`stream.stages`.
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

from stream.fanin import ENDED, FanIn
from stream.frames import Frame
from stream.handoff import Handoff
from stream.policy import EngineGovernor, resolve_overlap
from stream.stages import (
    CameraStats,
    EngineError,
    Inferred,
    PostStage,
    PostWorker,
    check_labels,
    engine_stage,
)
from stream.stats import EngineMode, format_line

__all__ = ["CameraStats", "EngineError", "FrameSource", "LabelSink", "Pipeline",
           "PipelineResult", "check_labels", "frame_size_problem"]

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
    """Where label maps go (the ZeroMQ publisher, or a list in tests).

    ``send`` is called from the post worker thread when stages overlap (from the loop's
    thread otherwise), one call at a time, each camera's maps in capture order.
    """

    def send(self, frame: Frame, labels: np.ndarray, t_infer_ns: int, dropped: int) -> None: ...

    def close(self) -> None: ...


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


@dataclass
class PipelineResult:
    """What a finished run did, per camera and in all."""

    published: int
    seconds: float
    per_camera: dict[str, CameraStats]  # its ``dropped``: results the hand-off replaced
    error: str | None = None
    camera_dropped: dict[str, int] = field(default_factory=dict)  # frames the camera replaced
    engine: EngineMode | None = None  # the engine's mode at the end

    @property
    def fps(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


class Pipeline:
    """Runs the loop until ``stop`` is set, ``max_frames`` are published or ``duration`` ends.

    Args:
        sources: the cameras (already started).
        segmenter: the engine (a :class:`~engines.segmenter.Segmenter`, a
            :class:`~engines.segmenter.GpuFusedSegmenter`, or anything with ``spec`` and
            ``run(image) -> (labels, StageNs)``); its ``max_batch`` is the most frames of
            different cameras one engine call takes.
        sink: the publisher stage.
        on_status: called with one status line per camera every ``stats_interval`` s.
        max_pixels: largest frame served (0: any); a camera whose frames are larger (or
            empty) is refused: its frames are skipped and ``on_refused(source, why)`` is
            called once (the runner ends that capture as failed).
        overlap: ``auto``, ``on`` or ``off`` (:func:`stream.policy.resolve_overlap`).
        batch_wait_ms: with batches, how long the first frame of a call may wait for
            other cameras' frames (:class:`stream.fanin.FanIn`).
    """

    def __init__(self, sources: Sequence[FrameSource], segmenter: object, sink: LabelSink,
                 *, max_frames: int = 0, duration: float = 0.0, stats_interval: float = 1.0,
                 on_status: Callable[[str], None] | None = None, poll_s: float = 0.001,
                 max_pixels: int = 0,
                 on_refused: Callable[[FrameSource, str], None] | None = None,
                 overlap: str = "auto", batch_wait_ms: float = 0.0) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        self.sources = list(sources)
        self.segmenter = segmenter
        self.sink = sink
        self.max_frames = max_frames
        self.duration = duration
        self.stats_interval = stats_interval
        self.on_status = on_status
        self.max_pixels = max_pixels
        self.on_refused = on_refused
        self.refused: dict[str, str] = {}  # camera id -> why its frames are not served
        self.stats = {s.camera_id: CameraStats() for s in self.sources}
        self.num_classes = segmenter.spec.num_classes  # type: ignore[attr-defined]
        self.engine = engine_stage(segmenter)
        backend = getattr(segmenter, "backend", None)
        self.overlap = resolve_overlap(overlap, backend)
        self.batch = min(self.engine.max_batch, len(self.sources))
        self.batch_wait_s = batch_wait_ms / 1e3
        self.governor = EngineGovernor.for_backend(backend)
        self.fanin = FanIn(self.sources, poll_s)
        self._post = PostStage(self.engine.finish, sink, self.stats, self.num_classes,
                               max_frames)
        self._handoff: Handoff[Inferred] = Handoff()
        self._delivered = 0  # results handed to the post stage (published or dropped)

    def _admit(self, got: list[tuple[FrameSource, Frame]]) -> list[Frame]:
        """The frames to segment; refuses (once) a camera whose frames cannot be served."""
        frames = []
        for src, frame in got:
            why = frame_size_problem(frame.shape[0], frame.shape[1], self.max_pixels)
            if why:
                self.refused[src.camera_id] = why
                log.error("%s: %s", src.camera_id, why)
                if self.on_refused is not None:
                    self.on_refused(src, why)
                continue
            frames.append(frame)
        return frames

    def _submit(self, frames: list[Frame], t_taken: int) -> None:
        try:
            self.engine.submit(frames, t_taken)
        except Exception as e:  # any backend error: stop, publish nothing of these frames
            which = ", ".join(f"{f.camera_id} seq {f.seq}" for f in frames)
            raise EngineError(f"engine failed on {which}: {e}") from e

    def _collect(self, worker: PostWorker | None) -> None:
        """Hand the oldest engine call's results to the post stage."""
        try:
            items = self.engine.collect()
        except Exception as e:
            raise EngineError(f"engine failed: {e}") from e
        if self.governor is not None and items:
            # the call's engine time on all sessions (two with --tta flip side by side)
            self.governor.call(getattr(self.engine, "last_busy_ns", 0) or items[0].infer_ns)
        for item in items:
            self._delivered += 1
            if worker is None:
                self._post(item)
            elif self._handoff.put(item.frame.camera_id, item) is not None:
                self.stats[item.frame.camera_id].dropped += 1

    def process(self, src: FrameSource, frame: Frame) -> None:
        """Run one frame through every stage on this thread and publish it."""
        frames = self._admit([(src, frame)]) if src.camera_id not in self.refused else []
        if frames:
            self._submit(frames, time.monotonic_ns())
            while self.engine.pending:
                self._collect(None)

    def reset_stats(self) -> None:
        """Start every camera's figures afresh (e.g. after a benchmark's warm-up).

        Entries are replaced in the shared dict, so the post worker counts into the new
        ones; the wire's ``dropped`` does not depend on these figures."""
        for cam in self.stats:
            self.stats[cam] = CameraStats()

    def engine_mode(self) -> EngineMode:
        """What ``overlap``, the engine policy and the batch resolved to, now."""
        backend = getattr(self.segmenter, "backend", None)
        gov = self.governor
        return EngineMode(overlap=self.overlap.post_worker,
                          mode=str(getattr(backend, "mode", "") or "fixed"),
                          auto=gov is not None, switches=gov.switches if gov else 0,
                          in_flight=self.engine.depth, batch=self.batch)

    def status_lines(self) -> list[str]:
        """One line per camera: fps, latency, frames dropped at the camera and in the
        hand-off, and the engine's mode (:func:`stream.stats.format_line`)."""
        mode = self.engine_mode()
        return [format_line(s.camera_id, self.stats[s.camera_id].times.fps(),
                            self.stats[s.camera_id].times.summaries(), s.dropped, s.state,
                            self.stats[s.camera_id].dropped, mode)
                for s in self.sources]

    def _will_publish(self) -> int:
        return self._delivered - self._handoff.dropped

    def run(self, stop: threading.Event | None = None) -> PipelineResult:
        stop = stop or threading.Event()
        start = time.monotonic()
        worker = None
        if self.overlap.post_worker:
            self._handoff = Handoff()
            worker = PostWorker(self._handoff, self._post)
            worker.start()
        error = None
        try:
            self._loop(stop, start, worker)
        except EngineError as e:
            error = str(e)
            log.error("%s", e)
            if self.engine.pending:
                log.warning("%d engine call(s) still in flight abandoned", self.engine.pending)
        finally:
            if worker is not None:
                self._handoff.close()  # the worker publishes what was handed off, then ends
                worker.join()
        if worker is not None and worker.exception is not None:
            raise worker.exception
        if worker is not None and worker.error is not None and error is None:
            error = str(worker.error)
            log.error("%s", error)
        return PipelineResult(self._post.published, time.monotonic() - start, self.stats, error,
                              {src.camera_id: src.dropped for src in self.sources},
                              self.engine_mode())

    def _loop(self, stop: threading.Event, start: float, worker: PostWorker | None) -> None:
        next_status = start + self.stats_interval
        engine, fanin, governor = self.engine, self.fanin, self.governor
        waits = worker is not None and self.overlap.engine_waits
        while not stop.is_set() and not (worker is not None and worker.failed.is_set()):
            now = time.monotonic()
            if self.duration and now - start >= self.duration:
                break
            if self.stats_interval and self.on_status and now >= next_status:
                for line in self.status_lines():
                    self.on_status(line)
                next_status = now + self.stats_interval
            if self.max_frames and self._will_publish() >= self.max_frames:
                break
            if waits and not self._handoff.wait_taken(0.05):
                continue  # back-pressure: the worker has not taken the last results yet
            while engine.pending >= engine.depth:  # no room (the depth may have shrunk)
                self._collect(worker)
            # Idle: wait for frames. A call in flight and room for another: look for a new
            # frame a little at a time, collecting the call as soon as it is done.
            timeout = 0.002 if engine.pending else 0.05
            # Read before gathering: a camera hands over its last frame before it reports
            # its end, so "ended" seen here means that frame is in the mailbox already.
            ended = all(s.state in ENDED for s in self.sources)
            got, _ = fanin.gather(self.batch, timeout, self.batch_wait_s, self.refused)
            if governor is not None:
                governor.update()
            frames = self._admit(got)
            if frames:
                self._submit(frames, time.monotonic_ns())
            if engine.pending and (engine.pending >= engine.depth or engine.ready()):
                self._collect(worker)
            elif not got and not engine.pending and ended:
                log.info("all sources ended")
                break
        while engine.pending and not (worker is not None and worker.failed.is_set()):
            self._collect(worker)  # calls still in flight (double-buffered engines)
