"""The pipeline's stages between the fan-in and the label sink, each usable alone.

    engine stage (engine thread)            post stage (post worker, or inline)
    pre -> one engine call for 1..N  ──▶ hand-off ──▶ post -> check_labels -> LabelSink.send
    frames of different cameras               (stream.handoff)      -> per-stage times

An :class:`Inferred` carries one frame's engine output and its timings from one stage to
the other. Engine stages wrap the three kinds of segmenter (:func:`engine_stage`):

* :class:`StagedEngine`: a :class:`~engines.segmenter.Segmenter` (ONNX Runtime, torch,
  TensorRT with CPU pre/post): pre-processing and the engine call on the engine thread,
  post-processing (upsample + argmax) on the post stage. A backend with ``submit`` /
  ``collect`` keeps up to its ``in_flight`` calls running (TensorRT's two buffers, ONNX
  Runtime's throughput-mode sessions); with test-time augmentation (``--tta flip``) a
  frame's two runs are submitted together by ``Segmenter.infer`` instead.
* :class:`FusedEngine`: TensorRT with the fused CUDA kernels: labels come out of the GPU,
  two frames in flight (the double-buffered stream path).
* :class:`WholeFrameEngine`: anything else with ``run(image) -> (labels, StageNs)``.

Timing per frame (monotonic ns), each taken on the thread that does the work: capture =
the source handing the frame over -> the engine taking it (with the batch's wait); pre,
infer (the engine call that carried it, whatever its batch size; submit -> collect when
calls overlap), handoff (engine output ready -> the post stage taking it), post, publish
(``LabelSink.send``), total = capture timestamp -> sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engines.preprocess import Letterbox
from engines.segmenter import GpuFusedSegmenter, Segmenter, StageNs
from stream.frames import Frame
from stream.handoff import Handoff
from stream.stats import StageTimes

if TYPE_CHECKING:
    from engines.spec import ModelSpec
    from stream.pipeline import LabelSink

log = logging.getLogger("segstream.pipeline")


class EngineError(RuntimeError):
    """The engine raised or produced an invalid label map; nothing was published."""


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
    """One camera's figures: stage times, label maps published, and results the post
    stage never got because a newer one of the camera replaced them (``dropped``; frames
    the source itself overwrote are the source's ``dropped``)."""

    times: StageTimes = field(default_factory=StageTimes)
    published: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class Inferred:
    """One frame's engine result on its way to the post stage.

    Attributes:
        frame: the camera frame.
        output: the network's output for this frame, (K, h, w) logits or (h, w) labels,
            or (H, W) uint8 labels when ``post_ns`` >= 0 (post-processing already done).
        box: where the frame sits in the network input (letterbox), else None.
        t_taken: monotonic ns when the engine took the frame (its batch closed).
        pre_ns, infer_ns: this frame's pre-processing; its engine call.
        t_ready: monotonic ns when the engine output was available.
        post_ns: -1, or the post-processing time already spent by the engine stage.
    """

    frame: Frame
    output: np.ndarray
    box: Letterbox | None
    t_taken: int
    pre_ns: int
    infer_ns: int
    t_ready: int
    post_ns: int = -1


class EngineStage(Protocol):
    """Frames in, :class:`Inferred` results out, on the engine thread.

    ``submit`` starts one engine call for up to ``max_batch`` frames; ``collect`` returns
    the results of the oldest call not collected (waiting for it). At most ``depth``
    calls are in flight; ``pending`` says how many are, ``ready`` whether the oldest one
    has finished.
    """

    max_batch: int
    depth: int

    @property
    def pending(self) -> int: ...

    def ready(self) -> bool: ...

    def submit(self, frames: Sequence[Frame], t_taken: int) -> None: ...

    def collect(self) -> list[Inferred]: ...

    def finish(self, item: Inferred) -> np.ndarray:
        """(post stage) the item's (H, W) uint8 label map."""
        ...


class StagedEngine:
    """A :class:`Segmenter`: pre + engine call here, post-processing in :meth:`finish`."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.backend = segmenter.backend
        self.max_batch = segmenter.max_batch
        # submit() starts the engine call and returns, collect() waits for it; with
        # test-time augmentation a frame takes two backend calls, which Segmenter.infer
        # makes and averages, so calls are not left in flight then
        self._async = segmenter.tta == "none" and callable(
            getattr(self.backend, "submit", None)) and callable(
            getattr(self.backend, "collect", None))
        self._calls: deque[tuple[list[Frame], list[tuple[np.ndarray, Letterbox | None, int]],
                                 int, int, np.ndarray | None, int]] = deque()
        self.last_busy_ns = 0  # engine time of the last collected call, all sessions

    @property
    def pending(self) -> int:
        return len(self._calls)

    @property
    def depth(self) -> int:
        """Calls in flight before the oldest is collected (the backend's, else 1)."""
        return max(1, int(getattr(self.backend, "in_flight", 1))) if self._async else 1

    def ready(self) -> bool:
        if not self._calls:
            return False
        return self._calls[0][4] is not None or bool(self.backend.ready())  # type: ignore[attr-defined]

    def submit(self, frames: Sequence[Frame], t_taken: int) -> None:
        prepared = []
        for f in frames:
            t0 = time.perf_counter_ns()
            x, box = self.segmenter.prepare(f.image)  # (1, 3, h, w)
            prepared.append((x, box, time.perf_counter_ns() - t0))
        x = prepared[0][0] if len(prepared) == 1 else np.concatenate([p[0] for p in prepared])
        t1 = time.perf_counter_ns()
        if self.depth > 1:
            self.backend.submit(x)  # type: ignore[attr-defined]
            out = None
        else:
            out = self.segmenter.infer(x)  # (N, K, h', w') or (N, h, w)
        self._calls.append((list(frames), prepared, t_taken, t1, out, time.perf_counter_ns()))

    def collect(self) -> list[Inferred]:
        frames, prepared, t_taken, t1, out, t2 = self._calls.popleft()
        infer_ns = t2 - t1
        if out is None:
            out = self.backend.collect()  # type: ignore[attr-defined]
            # the call's own run time where the backend measures it (ONNX Runtime): the
            # wall time since submit also holds the engine loop's wait to collect it
            ran = getattr(self.backend, "last_call_ns", 0)
            infer_ns = ran if isinstance(ran, int) and ran > 0 else time.perf_counter_ns() - t1
        # engine time the call took on all the backend's sessions (the governor's load):
        # with tta, a frame's two runs side by side (never on the submit/collect path)
        tta_busy = self.segmenter.last_busy_ns if self.segmenter.tta != "none" else 0
        self.last_busy_ns = tta_busy or infer_ns
        t_ready = time.monotonic_ns()
        return [Inferred(f, out[i], box, t_taken, pre_ns, infer_ns, t_ready)
                for i, (f, (_, box, pre_ns)) in enumerate(zip(frames, prepared, strict=True))]

    def finish(self, item: Inferred) -> np.ndarray:
        return self.segmenter.finish(item.output, item.frame.shape, item.box)


class FusedEngine:
    """TensorRT with the fused CUDA kernels: two frames in flight, labels from the GPU."""

    max_batch = 1

    def __init__(self, segmenter: GpuFusedSegmenter) -> None:
        self.segmenter = segmenter
        self.depth = segmenter.in_flight_max
        self._calls: deque[tuple[Frame, int, int]] = deque()

    @property
    def pending(self) -> int:
        return len(self._calls)

    def ready(self) -> bool:
        return bool(self._calls) and self.segmenter.ready()

    def submit(self, frames: Sequence[Frame], t_taken: int) -> None:
        (frame,) = frames
        t0 = time.perf_counter_ns()
        self.segmenter.submit(frame.image)
        self._calls.append((frame, t_taken, t0))

    def collect(self) -> list[Inferred]:
        frame, t_taken, t0 = self._calls.popleft()
        labels = self.segmenter.collect()  # (H, W) uint8, pre and post done on the GPU
        t1 = time.perf_counter_ns()
        return [Inferred(frame, labels, None, t_taken, 0, t1 - t0, time.monotonic_ns(), 0)]

    def finish(self, item: Inferred) -> np.ndarray:
        return item.output


class _RunsFrames(Protocol):
    spec: ModelSpec

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, StageNs]: ...


class WholeFrameEngine:
    """Any object with ``run(image) -> (labels, StageNs)``: everything on the engine thread."""

    max_batch = 1
    depth = 1

    def __init__(self, segmenter: _RunsFrames) -> None:
        self.segmenter = segmenter
        self._done: deque[Inferred] = deque()

    @property
    def pending(self) -> int:
        return 1 if self._done else 0

    def ready(self) -> bool:
        return bool(self._done)

    def submit(self, frames: Sequence[Frame], t_taken: int) -> None:
        for f in frames:
            labels, st = self.segmenter.run(f.image)
            self._done.append(Inferred(f, labels, None, t_taken, st.pre, st.infer,
                                       time.monotonic_ns(), st.post))

    def collect(self) -> list[Inferred]:
        done = list(self._done)
        self._done.clear()
        return done

    def finish(self, item: Inferred) -> np.ndarray:
        return item.output


def engine_stage(segmenter: object) -> StagedEngine | FusedEngine | WholeFrameEngine:
    """The engine stage for a segmenter (see the module docstring)."""
    if isinstance(segmenter, Segmenter):
        return StagedEngine(segmenter)
    if isinstance(segmenter, GpuFusedSegmenter):
        return FusedEngine(segmenter)
    return WholeFrameEngine(segmenter)  # type: ignore[arg-type]


class PostStage:
    """Post-process, check and publish one :class:`Inferred`, and record its times.

    ``dropped`` on the wire (format 1.1): frames of the camera with a smaller ``seq`` that
    will never be published. Results of a camera reach this stage in capture order (the
    fan-in takes a camera's frames in order and the hand-off only ever replaces a result
    by a newer one of the same camera), so that is ``seq`` minus the maps of the camera
    published before: exact, whatever was dropped at the source or in the hand-off.
    """

    def __init__(self, finish: Callable[[Inferred], np.ndarray], sink: LabelSink,
                 stats: dict[str, CameraStats], num_classes: int, max_frames: int = 0) -> None:
        self.finish = finish
        self.sink = sink
        self.stats = stats  # looked up per frame: a caller may replace a camera's entry
        self.num_classes = num_classes
        self.max_frames = max_frames
        self.published = 0
        self._sent: dict[str, int] = {}  # camera -> maps published (for `dropped`)

    def __call__(self, item: Inferred) -> bool:
        """Publish ``item``; False when ``max_frames`` were already published.

        Raises:
            EngineError: post-processing failed or its label map is invalid.
        """
        frame = item.frame
        t0 = time.monotonic_ns()
        try:
            labels = self.finish(item) if item.post_ns < 0 else item.output
        except Exception as e:  # any post-processing error: publish nothing
            raise EngineError(f"post-processing failed on {frame.camera_id} seq {frame.seq}: "
                              f"{e}") from e
        t1 = time.monotonic_ns()
        check_labels(labels, frame, self.num_classes)
        if self.max_frames and self.published >= self.max_frames:
            return False
        cam = frame.camera_id
        sent = self._sent.get(cam, 0)
        t_infer = time.time_ns()  # wire t_infer_ns: network and post-processing done
        t2 = time.monotonic_ns()
        self.sink.send(frame, labels, t_infer, max(0, frame.seq - sent))
        t_sent = time.monotonic_ns()
        self._sent[cam] = sent + 1
        self.published += 1
        st = self.stats[cam]
        times = st.times
        times.add("capture", item.t_taken - frame.t_capture_mono)
        times.add("pre", item.pre_ns)
        times.add("infer", item.infer_ns)
        times.add("handoff", t0 - item.t_ready)
        times.add("post", t1 - t0 if item.post_ns < 0 else item.post_ns)
        times.add("publish", t_sent - t2)
        times.add("total", t_sent - frame.t_capture_mono)
        times.tick(t_sent)
        st.published += 1
        return True


class PostWorker:
    """Runs the :class:`PostStage` on results from a :class:`Handoff`, on its own thread.

    Stops when the hand-off is closed and empty. A failure ends it early: an
    :class:`EngineError` is kept in ``error``, anything else (a sink that raised) in
    ``exception`` for the pipeline to raise; ``failed`` is set either way and the waiting
    results are discarded.
    """

    def __init__(self, handoff: Handoff[Inferred], stage: PostStage) -> None:
        self.handoff = handoff
        self.stage = stage
        self.error: EngineError | None = None
        self.exception: BaseException | None = None
        self.failed = threading.Event()
        self._thread = threading.Thread(target=self._main, name="segstream-post", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        while True:
            item = self.handoff.take(None)
            if item is None:
                return
            try:
                self.stage(item)
            except EngineError as e:
                self.error = e
            except Exception as e:  # the sink's: re-raised by the pipeline's thread
                self.exception = e
            if self.error is not None or self.exception is not None:
                left = self.handoff.close(discard=True)
                if left:  # computed, never to be published: say so
                    log.warning("post worker stopped: %d computed label map(s) not "
                                "published (cameras %s)", len(left),
                                ", ".join(sorted({i.frame.camera_id for i in left})))
                self.failed.set()
                return

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to finish what was handed off (close the hand-off first)."""
        self._thread.join(timeout)
