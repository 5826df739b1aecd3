"""Segmenter: pre-process -> backend -> post-process, with stage timings.

The composition every consumer uses (stream pipeline, predict, eval, bench), so that a
label map means the same thing everywhere. Besides the one-call :meth:`Segmenter.run`,
the stages are separate methods (:meth:`~Segmenter.prepare`, :meth:`~Segmenter.infer`,
:meth:`~Segmenter.finish`) so that the stream pipeline can run them on different
threads and put several cameras' frames into one engine call (:meth:`~Segmenter.run_batch`
is the same thing in one call). Every label map is the same whichever way it was made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.backend import (
    TTA_MODES,
    Backend,
    BackendError,
    backend_for_path,
    create_backend,
    max_batch_of,
)
from engines.postprocess import Postprocessor
from engines.preprocess import Letterbox, Preprocessor
from engines.spec import ModelSpec

log = logging.getLogger(__name__)


def check_tta_mode(tta: str) -> None:
    """Raise ValueError unless ``tta`` is one of :data:`~engines.backend.TTA_MODES`."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; valid: "
                         f"{', '.join(TTA_MODES)}")


def check_tta(tta: str, spec: ModelSpec) -> None:
    """Raise unless ``tta`` is a known mode that ``spec``'s output can take (BackendError
    for a model with labels output)."""
    check_tta_mode(tta)
    if tta != "none" and spec.output != "logits":
        raise BackendError(f"test-time augmentation {tta!r} averages logits, but model "
                           f"{spec.name!r} outputs labels (argmax inside the graph); export "
                           "it with logits output, or leave tta at none")


@dataclass(frozen=True)
class StageNs:
    """Durations of the three engine stages for one frame, in nanoseconds."""

    pre: int
    infer: int
    post: int


class Segmenter:
    """uint8 BGR frame (H, W, 3) -> uint8 label map (H, W) at the frame's resolution.

    Thread use: :meth:`prepare` keeps the last letterbox in the pre-processor, so call it
    from one thread; :meth:`finish` keeps no state and may run on another thread at the
    same time (the stream pipeline's post worker).
    """

    def __init__(self, backend: Backend, *, letterbox: bool = False,
                 tta: str = "none") -> None:
        check_tta(tta, backend.spec)
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.tta = tta
        # with tta: engine time the last infer() took on all the backend's sessions together
        # (the load an EngineGovernor weighs; the wall time is less when the runs overlap)
        self.last_busy_ns = 0
        self.pre = Preprocessor(self.spec, letterbox=letterbox, dtype=backend.input_dtype)
        self.post = Postprocessor(self.spec)

    @classmethod
    def from_path(cls, model: str | Path, backend: str | None = None, *,
                  threads: int | None = None, letterbox: bool = False, batch: int = 1,
                  policy: str | None = None, tta: str = "none",
                  **options: object) -> Segmenter | GpuFusedSegmenter:
        """Load a model.

        Args:
            batch: frames per engine call the pipeline may use: ONNX Runtime makes its
                session take up to ``batch`` (rewriting a fixed-batch-1 graph, see
                :mod:`engines.onnx_batch`); a TensorRT engine with a batch profile is
                configured for ``batch`` clamped to its profile (an engine with a fixed N
                takes N).
            policy: ONNX Runtime's engine thread policy (``auto``, ``latency``,
                ``throughput``, or None: one plain session; see
                :class:`engines.ort_backend.OrtBackend`).
            tta: test-time augmentation, one of :data:`TTA_MODES` (``flip``: two network
                runs per frame, see :meth:`infer`).

        TensorRT engines with logits output, no letterbox, no ``tta`` and one frame per
        call (batch 1, or a batch-profile engine asked for 1) get the fused CUDA
        pre/post-processing path (:class:`GpuFusedSegmenter`); other TensorRT engines
        run pre/post-processing on the CPU around the engine.
        """
        name = backend or backend_for_path(model)
        if name == "onnxruntime":
            options = {"batch": batch, "policy": policy, **options}
        elif name == "tensorrt":
            options = {"batch": batch, **options}
        check_tta_mode(tta)  # before a model is loaded
        be = create_backend(model, backend, threads=threads, **options)
        if (be.name == "tensorrt" and be.spec.output == "logits" and not letterbox
                and tta == "none" and max_batch_of(be) == 1):
            return GpuFusedSegmenter(be)
        try:
            return cls(be, letterbox=letterbox, tta=tta)
        except BackendError:
            be.close()
            raise

    @property
    def max_batch(self) -> int:
        """Frames one :meth:`infer` call takes (1 unless the backend was made for batches)."""
        return max_batch_of(self.backend)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.run(frame)[0]

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox | None]:
        """(H, W, 3) uint8 BGR -> ((1, 3, h, w) network input, letterbox or None)."""
        x = self.pre(frame)  # (1, 3, h, w)
        return x, (self.pre.last_box if self.pre.letterbox else None)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, h, w) -> (N, K, h', w') logits or (N, H, W) labels (N <= max_batch).

        With ``tta="flip"``: the mean of the logits of ``batch`` and of ``batch`` mirrored
        left-right (mirrored back), float32; two backend calls, submitted together where the
        backend takes two at once (see :meth:`_pair_in_flight`)."""
        if self.tta == "none":
            return self.backend.infer(batch)
        flipped = np.ascontiguousarray(batch[..., ::-1])
        be = self.backend
        if int(getattr(be, "in_flight", 1)) >= 2 and callable(getattr(be, "submit", None)):
            first, mirrored, busy = self._pair_in_flight(be, batch, flipped)
        else:
            t0 = time.perf_counter_ns()
            first, mirrored = be.infer(batch), be.infer(flipped)
            busy = time.perf_counter_ns() - t0
        self.last_busy_ns = busy
        # a new float32 array: never written into an array the backend handed out
        out = np.add(first, mirrored[..., ::-1], dtype=np.float32)  # (N, K, h', w')
        out *= 0.5
        return out

    @staticmethod
    def _pair_in_flight(be: Backend, a: np.ndarray, b: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, int]:
        """``a`` and ``b`` submitted together (ONNX Runtime's throughput mode runs them on
        two sessions at once; TensorRT queues them on its stream, its copies overlapping),
        collected in order; (out a, out b, summed run time). On failure no call is left
        pending (a later submit would be refused, a later collect stale)."""
        submitted = 0
        try:
            be.submit(a)  # type: ignore[attr-defined]
            submitted += 1
            be.submit(b)  # type: ignore[attr-defined]
            submitted += 1
            out_a = be.collect()  # type: ignore[attr-defined]
            submitted -= 1
            busy = int(getattr(be, "last_call_ns", 0))
            out_b = be.collect()  # type: ignore[attr-defined]
            submitted -= 1
            return out_a, out_b, busy + int(getattr(be, "last_call_ns", 0))
        except BaseException:
            for _ in range(submitted):  # drain what is still pending
                try:
                    be.collect()  # type: ignore[attr-defined]
                except Exception:  # the first error is the one raised
                    log.debug("discarding a failed pending call", exc_info=True)
            raise

    def finish(self, output: np.ndarray, out_hw: tuple[int, int],
               box: Letterbox | None = None) -> np.ndarray:
        """One frame's (K, h', w') logits or (H, W) labels -> (out_h, out_w) uint8 labels."""
        return self.post(output, out_hw, box)

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, StageNs]:
        """Segment one frame. Returns ((H, W) uint8 labels, stage durations)."""
        t0 = time.perf_counter_ns()
        x, box = self.prepare(frame)  # (1, 3, h, w)
        t1 = time.perf_counter_ns()
        out = self.infer(x)[0]  # (K, h', w') logits or (h, w) labels
        t2 = time.perf_counter_ns()
        labels = self.finish(out, frame.shape[:2], box)  # (H, W) uint8
        t3 = time.perf_counter_ns()
        return labels, StageNs(t1 - t0, t2 - t1, t3 - t2)

    def run_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment frames (any sizes) in engine calls of up to :attr:`max_batch`; one
        (H, W) uint8 label map per frame, each equal to what :meth:`run` gives it."""
        labels: list[np.ndarray] = []
        step = self.max_batch
        for i in range(0, len(frames), step):
            chunk = frames[i:i + step]
            prepared = [self.prepare(f) for f in chunk]
            out = self.infer(np.concatenate([x for x, _ in prepared]))  # (n, ...)
            labels += [self.finish(out[j], f.shape[:2], box)
                       for j, (f, (_, box)) in enumerate(zip(chunk, prepared, strict=True))]
        return labels

    def close(self) -> None:
        self.backend.close()


class GpuFusedSegmenter:
    """TensorRT with the fused CUDA kernels: uint8 frame in, uint8 labels out.

    Pre-processing, inference and upsample+argmax all run on the GPU
    (:class:`engines.trt.pipeline.GpuSegmenter`), so only uint8 crosses PCIe. The three
    stages are one GPU submission: their total is reported as ``infer``, ``pre`` and
    ``post`` are 0 (use Nsight Systems for the split). :meth:`submit` / :meth:`collect`
    keep two frames in flight (upload of one overlaps the other's inference: the
    double-buffered stream path the stream pipeline uses); :meth:`run` is the blocking
    form. Batch 1 (the kernels handle one frame).
    """

    max_batch = 1
    in_flight_max = 2

    def __init__(self, backend: Backend) -> None:
        from engines.trt.pipeline import GpuSegmenter

        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self._gpu = GpuSegmenter(backend)  # type: ignore[arg-type]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.run(frame)[0]

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, StageNs]:
        """(H, W, 3) uint8 BGR -> ((H, W) uint8 labels, stage durations)."""
        t0 = time.perf_counter_ns()
        labels = self._gpu.segment(np.ascontiguousarray(frame), "bgr")  # synchronised
        return labels, StageNs(0, time.perf_counter_ns() - t0, 0)

    def submit(self, frame: np.ndarray) -> None:
        """Queue one (H, W, 3) uint8 BGR frame; at most :attr:`in_flight_max` at once."""
        self._gpu.submit(np.ascontiguousarray(frame), "bgr")

    def collect(self) -> np.ndarray:
        """The oldest submitted frame's (H, W) uint8 labels (waits for the GPU)."""
        return self._gpu.collect()

    def ready(self) -> bool:
        """The oldest submitted frame is done (:meth:`collect` will not wait)."""
        return self.backend.ready()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._gpu.close()
        self.backend.close()
