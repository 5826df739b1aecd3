"""Post-processing: network output -> uint8 label map at source resolution; colouring.

NumPy/OpenCV implementations, also the references for ``engines/cuda/postprocess.cu``.
"""

from __future__ import annotations

import cv2
import numpy as np

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

    Logits (K, h, w) are upsampled bilinearly to the source size and argmax'd, in
    bands of rows so that full-resolution logits never sit in memory at once. In-graph
    labels (H, W) are resized with nearest-neighbour.
    """

    def __init__(self, spec: ModelSpec, *, band_rows: int = 64) -> None:
        self.spec = spec
        self.band_rows = band_rows

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
        return _upsample_argmax_cv(logits, out_h, out_w, self.band_rows)


def _upsample_argmax_cv(logits: np.ndarray, out_h: int, out_w: int, band: int) -> np.ndarray:
    """(K, h, w) float32 -> (out_h, out_w) uint8, processing ``band`` output rows at a time."""
    _, h, w = logits.shape
    if (h, w) == (out_h, out_w):
        return logits.argmax(axis=0).astype(np.uint8)
    hwk = np.ascontiguousarray(logits.transpose(1, 2, 0))  # (h, w, K)
    out = np.empty((out_h, out_w), np.uint8)
    sy = h / out_h
    for y0 in range(0, out_h, band):
        y1 = min(out_h, y0 + band)
        # Source rows this band touches (half-pixel centres), with a row of margin.
        s0 = max(0, int(np.floor((y0 + 0.5) * sy - 0.5)) - 1)
        s1 = min(h, int(np.ceil((y1 - 0.5) * sy - 0.5)) + 2)
        band_logits = _band_resize(hwk, s0, s1, y0, y1, out_w, sy, w)  # (y1-y0, out_w, K)
        out[y0:y1] = band_logits.argmax(axis=2)
    return out


def _band_resize(hwk: np.ndarray, s0: int, s1: int, y0: int, y1: int, out_w: int,
                 sy: float, w: int) -> np.ndarray:
    """Bilinear resample rows y0..y1 of the output from source rows s0..s1 (any K)."""
    h = hwk.shape[0]
    ys = np.clip((np.arange(y0, y1, dtype=np.float32) + 0.5) * sy - 0.5, 0, h - 1)
    yi = np.floor(ys).astype(np.int64)
    wy = (ys - yi)[:, None, None]
    yj = np.minimum(yi + 1, h - 1)
    # Horizontal pass on the few source rows involved, with OpenCV (fast, any K <= 512).
    rows = cv2.resize(hwk[s0:s1].reshape(s1 - s0, w, -1), (out_w, s1 - s0),
                      interpolation=cv2.INTER_LINEAR)
    rows = rows.reshape(s1 - s0, out_w, -1)
    return rows[yi - s0] * (1 - wy) + rows[yj - s0] * wy


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
