"""NumPy references for the CUDA kernels in ``engines/cuda/``.

Two kinds of reference live here:

* **Semantic references** reuse the CPU path (:func:`engines.preprocess.preprocess_ref`,
  :func:`engines.postprocess.upsample_argmax_ref`, :func:`engines.postprocess.colorize`)
  or extend it to inputs the CPU path does not take (NV12 frames).
* **Float32 mirrors** (``*_f32``) repeat the kernels' float32 operation sequence op for op,
  so a kernel's labels and blends can be required to match *bit for bit*. The CPU path's
  references blend in float64 (NumPy promotes ``float32 - int64``); the kernels blend in
  float32, which can differ only on near-ties far below any model's noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.preprocess import resize_bilinear_ref
from engines.spec import ModelSpec

F32 = np.float32


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine map applied to 0..255 pixel values, RGB order.

    ``x = v * scale + shift`` with ``scale = 1 / (255 std)``, ``shift = -mean / std``,
    which equals ``(v / 255 - mean) / std``.
    """

    scale: tuple[float, float, float]
    shift: tuple[float, float, float]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Normalization:
        mean = np.asarray(spec.mean, np.float64)
        std = np.asarray(spec.std, np.float64)
        scale = (1.0 / (255.0 * std)).astype(F32)
        shift = (-mean / std).astype(F32)
        return cls(tuple(float(v) for v in scale), tuple(float(v) for v in shift))

    def kernel_args(self) -> tuple[np.float32, ...]:
        """(scale_r, scale_g, scale_b, shift_r, shift_g, shift_b) as float32 scalars."""
        return tuple(F32(v) for v in (*self.scale, *self.shift))


# BT.601 limited-range YCbCr -> RGB, the constants of preprocess.cu's Nv12Source.
_Y_GAIN, _RV, _GU, _GV, _BU = F32(1.164383), F32(1.596027), F32(0.391762), F32(0.812968), \
    F32(2.017232)


def nv12_to_bgr_f32(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """NV12 -> BGR float32 on the 0..255 scale, clamped, not rounded.

    Args:
        luma: (H, W) uint8, H and W even.
        chroma: (H/2, W) uint8, interleaved U, V per 2x2 block.
    Returns:
        (H, W, 3) float32 BGR.
    """
    h, w = luma.shape
    if h % 2 or w % 2 or chroma.shape != (h // 2, w):
        raise ValueError(f"NV12 needs even (H, W) and chroma (H/2, W); got luma {luma.shape}, "
                         f"chroma {chroma.shape}")
    y = (luma.astype(F32) - F32(16)) * _Y_GAIN
    uv = chroma.reshape(h // 2, w // 2, 2).astype(F32) - F32(128)
    u = np.repeat(np.repeat(uv[..., 0], 2, axis=0), 2, axis=1)  # (H, W)
    v = np.repeat(np.repeat(uv[..., 1], 2, axis=0), 2, axis=1)
    r = y + _RV * v
    g = (y - _GU * u) - _GV * v
    b = y + _BU * u
    return np.clip(np.stack([b, g, r], axis=2), F32(0), F32(255))


def normalize_chw(rgb_0_255: np.ndarray, norm: Normalization) -> np.ndarray:
    """(H, W, 3) RGB float on 0..255 -> (1, 3, H, W) float32 normalised."""
    x = rgb_0_255 * np.asarray(norm.scale, np.float64) + np.asarray(norm.shift, np.float64)
    return x.transpose(2, 0, 1)[None].astype(F32)


def preprocess_nv12_ref(luma: np.ndarray, chroma: np.ndarray, out_hw: tuple[int, int],
                        norm: Normalization) -> np.ndarray:
    """NV12 frame -> (1, 3, h, w) float32: convert to BGR, bilinear resize, normalise, RGB."""
    bgr = nv12_to_bgr_f32(luma, chroma)
    rgb = resize_bilinear_ref(bgr, *out_hw)[:, :, ::-1]
    return normalize_chw(rgb, norm)


def preprocess_packed_ref(frame: np.ndarray, out_hw: tuple[int, int],
                          norm: Normalization) -> np.ndarray:
    """(H, W, 3|4) uint8 BGR/BGRx -> (1, 3, h, w) float32 (the padding byte is ignored)."""
    rgb = resize_bilinear_ref(frame[:, :, :3], *out_hw)[:, :, ::-1]
    return normalize_chw(rgb, norm)


def _taps_f32(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 mirror of seg::source_tap for every destination index."""
    scale = F32(in_size) / F32(out_size)
    s = (np.arange(out_size, dtype=F32) + F32(0.5)) * scale - F32(0.5)
    s = np.minimum(np.maximum(s, F32(0)), F32(in_size - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (s - i0.astype(F32)).astype(F32)


def resize_bilinear_f32(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Float32 mirror of the kernels' bilinear sample: (H, W, C) -> (out_h, out_w, C) float32."""
    h, w = img.shape[:2]
    y0, y1, wy = _taps_f32(out_h, h)
    x0, x1, wx = _taps_f32(out_w, w)
    f = img.astype(F32)
    wx = wx[None, :, None]
    wy = wy[:, None, None]
    ox, oy = F32(1) - wx, F32(1) - wy
    top = f[y0][:, x0] * ox + f[y0][:, x1] * wx
    bot = f[y1][:, x0] * ox + f[y1][:, x1] * wx
    return (top * oy + bot * wy).astype(F32)


def upsample_argmax_f32(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Float32 mirror of postprocess.cu: (K, h, w) float32/16 -> (out_h, out_w) uint8.

    Ties resolve to the lowest class id.
    """
    up = resize_bilinear_f32(logits.transpose(1, 2, 0), out_h, out_w)  # (H, W, K)
    return up.argmax(axis=2).astype(np.uint8)


def colorize_ref(labels: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 labels + (256, 3) RGB palette -> (H, W, 3) uint8 BGR."""
    return palette_rgb[labels][:, :, ::-1]


def overlay_f32(frame_bgr: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray,
                alpha: float) -> np.ndarray:
    """Float32 mirror of seg_overlay: nearest-upsampled colours blended over the frame.

    Returns (H, W, 3) uint8 BGR, ``rint(frame * (1 - alpha) + colour * alpha)`` saturated.
    """
    h, w = frame_bgr.shape[:2]
    lh, lw = labels.shape
    ys = np.minimum(np.arange(h, dtype=np.int64) * lh // h, lh - 1)
    xs = np.minimum(np.arange(w, dtype=np.int64) * lw // w, lw - 1)
    color = colorize_ref(labels[ys][:, xs], palette_rgb).astype(F32)
    a = F32(alpha)
    v = frame_bgr.astype(F32) * (F32(1) - a) + color * a
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)
