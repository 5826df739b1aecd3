"""Post-processing: network output -> uint8 label map at source resolution; colouring.

NumPy/OpenCV implementations, also the references for ``engines/cuda/postprocess.cu``.
Logits go through the compiled fused upsample + argmax of :mod:`engines.fused_post` where
it is available: the same labels as :func:`_upsample_argmax_cv`, byte for byte, 3-10x
faster (docs/benchmarks.md, "Post-processing").

Two references, one published: :func:`_upsample_argmax_cv` (OpenCV) is what the stream
publishes and what ``tests/golden`` holds; :func:`upsample_argmax_ref` (NumPy) states the
semantics. They agree except on ties and near-ties within a few float32 ulps (INT8
models' logits, multiples of one step, make exact ties common), where their rounding
differs: OpenCV's x86 wheels interpolate through Intel IPP (``a + t (b - a)``, one fused
multiply-add, ``t`` from a double coordinate), the NumPy reference computes
``a (1 - t) + b t`` with float32 coordinates. The fused path follows OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

from engines import fused_post
from engines.preprocess import Letterbox, resize_bilinear_ref
from engines.spec import ModelSpec


def upsample_argmax_ref(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Reference: bilinear upsample (half-pixel centres) of (K, h, w) logits, then argmax.

    Ties resolve to the lowest class id (NumPy argmax). Returns (out_h, out_w) uint8.
    """
    up = resize_bilinear_ref(logits.transpose(1, 2, 0), out_h, out_w)  # (H, W, K)
    return up.argmax(axis=2).astype(np.uint8)


class Postprocessor:
    """Network output for one frame -> (H, W) uint8 label map at the source size.

    Logits (K, h, w) are upsampled bilinearly to the source size and argmax'd, by the fused
    kernel (:mod:`engines.fused_post`, compiled or loaded from cache here, in the
    constructor, not on the first frame) or else one class plane at a time with OpenCV; full
    resolution logits never sit in memory at once. In-graph labels (H, W) are resized
    with nearest-neighbour.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._fused = fused_post.load()  # None: numba unavailable (logged once)

    def __call__(self, output: np.ndarray, out_hw: tuple[int, int],
                 box: Letterbox | None = None) -> np.ndarray:
        """(K, h, w) logits or (H, W) labels -> (out_h, out_w) uint8."""
        out_h, out_w = out_hw
        if output.ndim == 2:  # labels from the graph
            labels = output
            if box is not None:
                labels = labels[box.top:box.top + box.height, box.left:box.left + box.width]
            labels = labels.astype(np.uint8, copy=False)
            if labels.shape != (out_h, out_w):
                labels = cv2.resize(labels, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
            return labels
        if output.ndim != 3:
            raise ValueError(f"expected (K, h, w) logits or (H, W) labels, got {output.shape}")
        logits = output.astype(np.float32, copy=False)
        if box is not None:  # crop the letterboxed content at logits resolution
            in_h, in_w = self.spec.input_size
            _, h, w = logits.shape
            t, b = box.top * h / in_h, (box.top + box.height) * h / in_h
            lft, r = box.left * w / in_w, (box.left + box.width) * w / in_w
            rows = slice(int(t), max(int(t) + 1, round(b)))
            cols = slice(int(lft), max(int(lft) + 1, round(r)))
            logits = logits[:, rows, cols]
        logits = np.ascontiguousarray(logits)
        labels = None if self._fused is None else self._fused(logits, out_h, out_w)
        return _upsample_argmax_cv(logits, out_h, out_w) if labels is None else labels


_SMALL_OUTPUT = 64  # pixels; below this the running argmax's OpenCV ops are not used


def _upsample_argmax_cv(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(K, h, w) float32 -> (out_h, out_w) uint8: running argmax over per-class upsamples.

    Each class plane is upsampled on its own (OpenCV bilinear, half-pixel centres) and
    compared with the best score so far, so only two full-resolution float planes exist
    at any time, never the (K, H, W) upsampled logits. Strict ``>`` keeps the lowest
    class id on ties, like ``np.argmax``.
    """
    k, h, w = logits.shape
    if (h, w) == (out_h, out_w):
        return logits.argmax(axis=0).astype(np.uint8)
    size = (out_w, out_h)
    if out_h * out_w < _SMALL_OUTPUT:
        # OpenCV takes a 1x1 array for a scalar in min/max/compare (a python int then
        # becomes a 4x1 array and the result is garbage: class 255 for a 1x1 frame), so
        # tiny outputs stack their few upsampled pixels and argmax them in NumPy instead.
        planes = [cv2.resize(logits[c], size, interpolation=cv2.INTER_LINEAR).reshape(out_h, out_w)
                  for c in range(k)]
        return np.stack(planes).argmax(axis=0).astype(np.uint8)
    best = cv2.resize(logits[0], size, interpolation=cv2.INTER_LINEAR)  # (H, W) float32
    score = np.empty_like(best)
    better = np.empty((out_h, out_w), np.uint8)
    labels = np.zeros((out_h, out_w), np.uint8)
    # OpenCV's SIMD element-wise ops: NumPy's masked copies (copyto where=, boolean
    # assignment) cost 3-5x more per pass at 720p.
    for c in range(1, k):
        cv2.resize(logits[c], size, dst=score, interpolation=cv2.INTER_LINEAR)
        cv2.compare(score, best, cv2.CMP_GT, dst=better)  # 255 where c beats the best so far
        cv2.max(best, score, dst=best)
        # Classes come in increasing order and labels hold ids < c, so "c where better"
        # is max(labels, min(better, c)).
        cv2.min(better, c, dst=better)
        cv2.max(labels, better, dst=labels)
    return labels


def colorize(labels: np.ndarray, spec_or_palette: ModelSpec | np.ndarray) -> np.ndarray:
    """(H, W) uint8 labels -> (H, W, 3) uint8 BGR colour image (for OpenCV display)."""
    pal = spec_or_palette.palette() if isinstance(spec_or_palette, ModelSpec) else spec_or_palette
    return pal[labels][:, :, ::-1]


def overlay(frame_bgr: np.ndarray, labels: np.ndarray, spec_or_palette: ModelSpec | np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised labels over the frame: (H, W, 3) uint8 BGR."""
    color = colorize(labels, spec_or_palette)
    if color.shape[:2] != frame_bgr.shape[:2]:
        color = cv2.resize(color, frame_bgr.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(frame_bgr, 1.0 - alpha, color, alpha, 0.0)
