"""Segmenter: pre-process -> backend -> post-process for one frame, with stage timings.

The composition every consumer uses (stream pipeline, predict, eval, bench), so that a
label map means the same thing everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.backend import Backend, create_backend
from engines.postprocess import Postprocessor
from engines.preprocess import Preprocessor
from engines.spec import ModelSpec


@dataclass(frozen=True)
class StageNs:
    """Durations of the three engine stages for one frame, in nanoseconds."""

    pre: int
    infer: int
    post: int


class Segmenter:
    """uint8 BGR frame (H, W, 3) -> uint8 label map (H, W) at the frame's resolution."""

    def __init__(self, backend: Backend, *, letterbox: bool = False) -> None:
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.pre = Preprocessor(self.spec, letterbox=letterbox, dtype=backend.input_dtype)
        self.post = Postprocessor(self.spec)

    @classmethod
    def from_path(cls, model: str | Path, backend: str | None = None, *,
                  threads: int | None = None, letterbox: bool = False,
                  **options: object) -> Segmenter | GpuFusedSegmenter:
        """Load a model. TensorRT engines with logits output and no letterbox get the
        fused CUDA pre/post-processing path (:class:`GpuFusedSegmenter`)."""
        be = create_backend(model, backend, threads=threads, **options)
        if be.name == "tensorrt" and be.spec.output == "logits" and not letterbox:
            return GpuFusedSegmenter(be)
        return cls(be, letterbox=letterbox)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.run(frame)[0]

    def run(self, frame: np.ndarray) -> tuple[np.ndarray, StageNs]:
        """Segment one frame. Returns ((H, W) uint8 labels, stage durations)."""
        t0 = time.perf_counter_ns()
        batch = self.pre(frame)  # (1, 3, h, w)
        t1 = time.perf_counter_ns()
        out = self.backend.infer(batch)[0]  # (K, h', w') logits or (h, w) labels
        t2 = time.perf_counter_ns()
        box = self.pre.last_box if self.pre.letterbox else None
        labels = self.post(out, frame.shape[:2], box)  # (H, W) uint8
        t3 = time.perf_counter_ns()
        return labels, StageNs(t1 - t0, t2 - t1, t3 - t2)

    def close(self) -> None:
        self.backend.close()


class GpuFusedSegmenter:
    """TensorRT with the fused CUDA kernels: uint8 frame in, uint8 labels out.

    Pre-processing, inference and upsample+argmax all run on the GPU
    (:class:`engines.trt.pipeline.GpuSegmenter`), so only uint8 crosses PCIe. The three
    stages are one GPU submission: their total is reported as ``infer``, ``pre`` and
    ``post`` are 0 (use Nsight Systems for the split).
    """

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

    def close(self) -> None:
        self._gpu.close()
        self.backend.close()
