"""All-GPU frame path: raw uint8 frame in, uint8 label map out; only uint8 crosses PCIe.

Per frame, on the backend's streams (slot s of the double buffer)::

    frame (H, W, 3|4) uint8 or NV12 --H2D, copy stream--> dev_frame[s]
    compute stream: seg_preprocess_* (resize, normalise, BGR->RGB, NCHW, fp32/fp16)
                    writes straight into the engine's input buffer dev_in[s]
                    -> TensorRT (execute_async_v3 or CUDA graph)
                    -> seg_upsample_argmax_* reads dev_out[s] logits, writes dev_labels[s]
                    --D2H--> pinned labels (H, W) uint8

Upload of frame N+1 (copy stream) overlaps inference and post-processing of frame N
(compute stream). The kernels are the ones verified in ``tests/engines/test_cuda_kernels``,
loaded precompiled from the package (:class:`engines.cuda_kernels.CudaKernels`). If they
cannot be loaded (no image for this GPU, a driver that refuses them, and no nvcc), the
segmenter logs a warning and runs the CPU pre/post-processing around the same engine.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.backend import BackendError
from engines.cuda_kernels import CudaKernels, KernelError, grid_for
from engines.kernel_refs import Normalization
from engines.trt.backend import Slot, TensorRTBackend

FORMATS = ("bgr", "bgrx", "nv12")
MAX_CLASSES = 256  # labels are uint8
log = logging.getLogger(__name__)


@dataclass
class _FrameBuffers:
    """Per-slot frame and label buffers, sized for the current frame size and format."""

    key: tuple[int, int, str]  # (H, W, format)
    host_frame: np.ndarray  # pinned uint8, the raw frame bytes
    dev_frame: Any
    dev_labels: Any  # (H, W) uint8 on the device
    host_labels: np.ndarray  # pinned (H, W) uint8


class GpuSegmenter:
    """Frames -> label maps with pre- and post-processing on the GPU.

    Args:
        backend: a :class:`TensorRTBackend` whose engine outputs logits (N=1, K <= 256).
        kernels: loaded kernels (default: :class:`CudaKernels`, the precompiled images,
            nvcc as fallback); when they cannot be loaded, CPU pre/post-processing is used
            with a warning (``uses_gpu_kernels`` is then False).

    ``submit(frame)`` / ``collect()`` keep two frames in flight; ``segment(frame)`` is
    the blocking form. Do not interleave with the backend's own ``submit``/``collect``.
    """

    def __init__(self, backend: TensorRTBackend, kernels: CudaKernels | None = None) -> None:
        if backend.spec.output != "logits":
            raise BackendError("the GPU pipeline needs a logits engine (argmax happens in the "
                               "post kernel); export without --argmax")
        n, c, h, w = backend.input_shape
        if n != 1 or c != 3:
            raise BackendError(f"the GPU pipeline runs batch 1, 3 channels; the engine takes "
                               f"{backend.input_shape}")
        if backend.input_dtype not in (np.float32, np.float16) or backend.output_dtype not in (
                np.float32, np.float16):
            raise BackendError(f"engine I/O must be float32/float16, got "
                               f"{backend.input_dtype} -> {backend.output_dtype}")
        k = backend.output_shape[1] if len(backend.output_shape) == 4 else 0
        if not 1 <= k <= MAX_CLASSES:
            raise BackendError(f"the engine outputs {backend.output_shape}: expected (1, K, h, w) "
                               f"logits with 1 <= K <= {MAX_CLASSES} (uint8 labels)")
        self.backend = backend
        self.kernels: CudaKernels | None = kernels
        self._cpu: tuple[Any, Any] | None = None
        if kernels is None:
            try:
                self.kernels = CudaKernels()
            except KernelError as e:
                from engines.postprocess import Postprocessor
                from engines.preprocess import Preprocessor

                log.warning("CUDA pre/post-processing kernels unavailable, running them on the "
                            "CPU around the TensorRT engine (slower): %s", e)
                self._cpu = (Preprocessor(backend.spec, dtype=backend.input_dtype),
                             Postprocessor(backend.spec))
        self._cuda = backend.driver
        self._in_hw = (h, w)
        self._norm = Normalization.from_spec(backend.spec).kernel_args()
        self._pre_suffix = "f16" if backend.input_dtype == np.float16 else "f32"
        self._post_suffix = "f16" if backend.output_dtype == np.float16 else "f32"
        self._buffers: dict[int, _FrameBuffers] = {}
        self._pending: deque[_FrameBuffers | tuple[int, int]] = deque()

    @property
    def uses_gpu_kernels(self) -> bool:
        """False when the kernels could not be loaded and pre/post run on the CPU."""
        return self._cpu is None

    def segment(self, frame: np.ndarray, fmt: str = "bgr") -> np.ndarray:
        """Blocking: one frame -> (H, W) uint8 labels at the frame's resolution."""
        self.submit(frame, fmt)
        return self.collect()

    def submit(self, frame: np.ndarray, fmt: str = "bgr") -> None:
        """Queue one frame.

        Args:
            frame: ``"bgr"`` (H, W, 3) / ``"bgrx"`` (H, W, 4) uint8, or ``"nv12"``
                (H * 3 / 2, W) uint8: the luma plane followed by the interleaved UV plane.
        """
        h, w = _frame_size(frame, fmt)
        if self._cpu is not None:
            self.backend.submit(self._cpu[0](_to_bgr(frame, fmt)))
            self._pending.append((h, w))
            return
        with self.backend.cuda_context():
            slot = self.backend.acquire_slot()
            buf = self._frame_buffers(slot, (h, w, fmt))
            copy_stream, compute = self.backend.streams
            np.copyto(buf.host_frame, frame.reshape(buf.host_frame.shape))
            try:
                self._cuda.memcpy_htod_async(buf.dev_frame, buf.host_frame, copy_stream)
                slot.uploaded.record(copy_stream)
                compute.wait_for_event(slot.uploaded)
                self._launch_pre(buf, slot, h, w, fmt, compute)
                self.backend.enqueue(slot)
                self._launch_post(slot, buf, h, w, compute)
                self._cuda.memcpy_dtoh_async(buf.host_labels, buf.dev_labels, compute)
            except BaseException:
                self.backend.abandon()
                raise
            self.backend.finish(slot)
        self._pending.append(buf)

    def collect(self) -> np.ndarray:
        """Wait for the oldest frame; its (H, W) uint8 labels (a fresh array)."""
        if not self._pending:
            raise BackendError("collect() without a submitted frame")
        item = self._pending.popleft()
        if isinstance(item, tuple):  # CPU pre/post fallback
            logits = self.backend.collect()[0]  # (K, h, w) float32
            return self._cpu[1](logits, item)  # type: ignore[index]
        with self.backend.cuda_context():
            self.backend.pop_finished()
        return item.host_labels.copy()

    def close(self) -> None:
        while self._pending:
            self.collect()
        if not self._buffers:
            return
        with self.backend.cuda_context():
            for buf in self._buffers.values():
                buf.dev_frame.free()
                buf.dev_labels.free()
        self._buffers.clear()

    # -- internals --------------------------------------------------------------------
    def _frame_buffers(self, slot: Slot, key: tuple[int, int, str]) -> _FrameBuffers:
        buf = self._buffers.get(id(slot))
        if buf is not None and buf.key == key:
            return buf
        if buf is not None:
            buf.dev_frame.free()
            buf.dev_labels.free()
        h, w, fmt = key
        shape = {"bgr": (h, w, 3), "bgrx": (h, w, 4), "nv12": (h * 3 // 2, w)}[fmt]
        host_frame = self._cuda.pagelocked_empty(shape, np.uint8)
        host_labels = self._cuda.pagelocked_empty((h, w), np.uint8)
        buf = _FrameBuffers(key, host_frame, self._cuda.mem_alloc(host_frame.nbytes),
                            self._cuda.mem_alloc(h * w), host_labels)
        self._buffers[id(slot)] = buf
        return buf

    def _launch_pre(self, buf: _FrameBuffers, slot: Slot, h: int, w: int, fmt: str,
                    stream: Any) -> None:
        in_h, in_w = self._in_hw
        grid = grid_for(in_w, in_h)
        base = int(buf.dev_frame)
        if fmt == "nv12":
            args = [base, w, base + h * w, w, h, w, int(slot.dev_in), in_h, in_w, *self._norm]
            name = f"seg_preprocess_nv12_{self._pre_suffix}"
        else:
            ch = 3 if fmt == "bgr" else 4
            args = [base, w * ch, ch, h, w, int(slot.dev_in), in_h, in_w, *self._norm]
            name = f"seg_preprocess_packed_{self._pre_suffix}"
        self.kernels.launch_async(name, grid, self.kernels.block, stream, args)

    def _launch_post(self, slot: Slot, buf: _FrameBuffers, h: int, w: int, stream: Any) -> None:
        _n, k, lh, lw = self.backend.output_shape
        self.kernels.launch_async(f"seg_upsample_argmax_{self._post_suffix}", grid_for(w, h),
                                  self.kernels.block, stream,
                                  [int(slot.dev_out), k, lh, lw, int(buf.dev_labels), w, h, w])


def _to_bgr(frame: np.ndarray, fmt: str) -> np.ndarray:
    """A frame in any of FORMATS -> (H, W, 3) uint8 BGR (the CPU fallback's input)."""
    import cv2

    if fmt == "bgr":
        return frame
    if fmt == "bgrx":
        return np.ascontiguousarray(frame[..., :3])
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_YUV2BGR_NV12)


def _frame_size(frame: np.ndarray, fmt: str) -> tuple[int, int]:
    if fmt not in FORMATS:
        raise ValueError(f"frame format must be one of {FORMATS}, got {fmt!r}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if fmt == "nv12":
        rows, w = frame.shape
        if rows % 3 or w % 2 or (rows * 2 // 3) % 2:
            raise ValueError(f"NV12 frame must be (H * 3 / 2, W) with even H, W; got "
                             f"{frame.shape}")
        return rows * 2 // 3, w
    ch = 3 if fmt == "bgr" else 4
    if frame.ndim != 3 or frame.shape[2] != ch:
        raise ValueError(f"{fmt} frame must be (H, W, {ch}) uint8, got {frame.shape}")
    return frame.shape[0], frame.shape[1]
