"""GpuSegmenter when the CUDA kernels cannot load: CPU pre/post around the same engine.

The engine here is the tiny ONNX model in ONNX Runtime, dressed as the TensorRT backend's
interface (``output_shape``, ``submit``/``collect``); pycuda is made unimportable so that
:class:`CudaKernels` fails exactly as on a machine without it.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.backend import BackendError, create_backend
from engines.segmenter import Segmenter
from engines.trt.pipeline import GpuSegmenter


class EngineStandIn:
    """The TensorRTBackend surface GpuSegmenter uses, over an ONNX Runtime session."""

    name = "tensorrt"

    def __init__(self, model: Path, output_shape: tuple[int, ...] | None = None) -> None:
        self._ort = create_backend(model, threads=1)
        self.spec = self._ort.spec
        self.input_shape = self._ort.input_shape
        self.input_dtype = np.dtype(np.float32)
        self.output_dtype = np.dtype(np.float32)
        probe = self._ort.infer(np.zeros(self.input_shape, np.float32))
        self.output_shape = output_shape or probe.shape
        self.driver = None
        self._queue: deque[np.ndarray] = deque()

    def submit(self, batch: np.ndarray) -> None:
        self._queue.append(self._ort.infer(batch))

    def collect(self) -> np.ndarray:
        return self._queue.popleft()


@pytest.fixture
def no_pycuda(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx", "pycuda.compiler"):
        monkeypatch.setitem(sys.modules, name, None)


def test_kernels_unavailable_falls_back_to_cpu(tiny_model: Path, no_pycuda: None,
                                               caplog: pytest.LogCaptureFixture) -> None:
    engine = EngineStandIn(tiny_model)
    with caplog.at_level("WARNING"):
        seg = GpuSegmenter(engine)  # type: ignore[arg-type]
    assert not seg.uses_gpu_kernels
    assert "kernels unavailable, running them on the CPU" in caplog.text
    assert "pycuda is not installed" in caplog.text
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 120, 3), np.uint8)
    reference = Segmenter(create_backend(tiny_model, threads=1))(frame)
    assert np.array_equal(seg.segment(frame), reference)
    bgrx = np.concatenate([frame, np.full((90, 120, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(seg.segment(bgrx, "bgrx"), reference)
    h, w = frame.shape[:2]
    i420 = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).reshape(-1)  # Y, then U, V planes
    u, v = i420[h * w:h * w * 5 // 4], i420[h * w * 5 // 4:]
    nv12 = np.concatenate([i420[:h * w], np.stack([u, v], axis=1).reshape(-1)]).reshape(-1, w)
    expected = Segmenter(create_backend(tiny_model, threads=1))(
        cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12))
    assert np.array_equal(seg.segment(nv12, "nv12"), expected)
    seg.submit(frame)
    seg.submit(frame)  # two in flight, collected in order
    assert np.array_equal(seg.collect(), reference) and np.array_equal(seg.collect(), reference)


def test_more_than_256_classes_is_refused(tiny_model: Path, no_pycuda: None) -> None:
    engine = EngineStandIn(tiny_model, output_shape=(1, 300, 16, 24))
    with pytest.raises(BackendError, match=r"1 <= K <= 256"):
        GpuSegmenter(engine)  # type: ignore[arg-type]
