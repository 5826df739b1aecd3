"""Kernel parity cases shared by the CPU-shim tests and the GPU tests.

A test module subclasses :class:`KernelParityCases` (as ``Test...``) and provides an
``ops`` fixture: a :class:`engines.cuda_kernels.KernelOps` executor (HostKernels on the
CPU, CudaKernels on a GPU). The same cases then run against the same kernel source.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.cuda_kernels import KernelOps
from engines.kernel_refs import (
    Normalization,
    colorize_ref,
    overlay_f32,
    preprocess_nv12_ref,
    preprocess_packed_ref,
    upsample_argmax_f32,
)
from engines.postprocess import overlay, upsample_argmax_ref
from engines.preprocess import preprocess_ref
from engines.spec import CAMVID_CLASSES, ModelSpec

SPEC = ModelSpec(name="k", architecture="none", classes=CAMVID_CLASSES, input_size=(29, 41))
NORM = Normalization.from_spec(SPEC)
# (source H, W) -> (output H, W): down, up, odd, mixed, identity.
RESIZES = [((37, 53), (29, 41)), ((29, 41), (37, 53)), ((17, 5), (40, 33)),
           ((64, 48), (31, 97)), ((23, 19), (23, 19)), ((1, 7), (3, 2))]
FP16_TOL = dict(rtol=2e-3, atol=4e-3)  # |x| <= ~2.7 after normalisation, 11-bit mantissa


def padded(arr: np.ndarray, extra: int, rng: np.random.Generator) -> np.ndarray:
    """View of ``arr`` inside rows padded by ``extra`` bytes of garbage (odd pitch)."""
    h = arr.shape[0]
    row = int(np.prod(arr.shape[1:]))
    buf = rng.integers(0, 256, (h, row + extra), dtype=np.uint8)
    item = arr.strides[-2] if arr.ndim == 3 else 1  # bytes per pixel
    strides = (row + extra, item, 1)[: arr.ndim]
    view = np.lib.stride_tricks.as_strided(buf, shape=arr.shape, strides=strides)
    view[...] = arr
    return view


class KernelParityCases:
    """Kernel results against the NumPy references (``ops`` fixture from the subclass)."""

    @pytest.mark.parametrize(("src_hw", "out_hw"), RESIZES)
    @pytest.mark.parametrize("channels", [3, 4])
    def test_preprocess_packed_fp32(self, ops: KernelOps, src_hw, out_hw, channels) -> None:
        rng = np.random.default_rng(hash((src_hw, out_hw, channels)) % 2**32)
        frame = rng.integers(0, 256, (*src_hw, channels), dtype=np.uint8)
        got = ops.preprocess(padded(frame, 5, rng), out_hw, NORM)
        assert got.shape == (1, 3, *out_hw) and got.dtype == np.float32
        np.testing.assert_allclose(got, preprocess_packed_ref(frame, out_hw, NORM),
                                   rtol=1e-5, atol=2e-5)
        if channels == 3:  # and against the CPU path's own reference
            spec = ModelSpec(name="k", architecture="none", classes=CAMVID_CLASSES,
                             input_size=out_hw)
            np.testing.assert_allclose(got, preprocess_ref(frame, spec), rtol=1e-5, atol=2e-5)

    @pytest.mark.parametrize(("src_hw", "out_hw"), RESIZES[:3])
    def test_preprocess_packed_fp16(self, ops: KernelOps, src_hw, out_hw) -> None:
        rng = np.random.default_rng(7)
        frame = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
        got = ops.preprocess(frame, out_hw, NORM, dtype=np.float16)
        assert got.dtype == np.float16
        ref = preprocess_packed_ref(frame, out_hw, NORM)
        np.testing.assert_allclose(got.astype(np.float32), ref, **FP16_TOL)
        # Rounding is to nearest: the fp32 kernel result rounded to fp16 is the fp16 result.
        fp32 = ops.preprocess(frame, out_hw, NORM)
        np.testing.assert_array_equal(got, fp32.astype(np.float16))

    def test_preprocess_channel_order(self, ops: KernelOps) -> None:
        """A pure-blue BGR frame lands in plane 2 (B) of the RGB output, at the spec's value."""
        frame = np.zeros((6, 10, 3), np.uint8)
        frame[..., 0] = 255
        got = ops.preprocess(frame, (3, 5), NORM)[0]  # (3, h, w)
        expect = (np.array([0.0, 0.0, 1.0]) - np.array(SPEC.mean)) / np.array(SPEC.std)
        np.testing.assert_allclose(got.reshape(3, -1).mean(axis=1), expect, rtol=1e-5)

    @pytest.mark.parametrize(("src_hw", "out_hw"), [((38, 54), (29, 41)), ((16, 22), (37, 53)),
                                                    ((2, 2), (5, 3))])
    @pytest.mark.parametrize("dtype", [np.float32, np.float16])
    def test_preprocess_nv12(self, ops: KernelOps, src_hw, out_hw, dtype) -> None:
        rng = np.random.default_rng(11)
        h, w = src_hw
        luma = rng.integers(0, 256, (h, w), dtype=np.uint8)
        chroma = rng.integers(0, 256, (h // 2, w), dtype=np.uint8)
        got = ops.preprocess_nv12(padded(luma, 3, rng), padded(chroma, 7, rng), out_hw, NORM,
                                  dtype=dtype)
        ref = preprocess_nv12_ref(luma, chroma, out_hw, NORM)
        tol = dict(rtol=1e-5, atol=3e-5) if dtype == np.float32 else FP16_TOL
        np.testing.assert_allclose(got.astype(np.float32), ref, **tol)

    def test_nv12_grey_matches_bgr(self, ops: KernelOps) -> None:
        """Neutral chroma and luma 16..235 is the grey ramp 0..255 (BT.601 limited range)."""
        luma = np.tile(np.array([16, 235, 126, 16], np.uint8), (4, 1))
        chroma = np.full((2, 4), 128, np.uint8)
        grey = np.round((luma.astype(np.float64) - 16) * 255 / 219).astype(np.uint8)
        bgr = np.repeat(grey[:, :, None], 3, axis=2)
        np.testing.assert_allclose(ops.preprocess_nv12(luma, chroma, (4, 4), NORM),
                                   ops.preprocess(bgr, (4, 4), NORM), atol=2e-3)

    @pytest.mark.parametrize(("src_hw", "out_hw"), RESIZES)
    @pytest.mark.parametrize("k", [1, 5, 11])
    def test_upsample_argmax_fp32(self, ops: KernelOps, src_hw, out_hw, k) -> None:
        rng = np.random.default_rng(k * 1000 + src_hw[0])
        logits = rng.standard_normal((k, *src_hw)).astype(np.float32) * 4
        got = ops.upsample_argmax(logits, out_hw)
        assert got.shape == out_hw and got.dtype == np.uint8
        np.testing.assert_array_equal(got, upsample_argmax_f32(logits, *out_hw))
        np.testing.assert_array_equal(got, upsample_argmax_ref(logits, *out_hw))

    @pytest.mark.parametrize(("src_hw", "out_hw"), RESIZES[:4])
    def test_upsample_argmax_fp16(self, ops: KernelOps, src_hw, out_hw) -> None:
        rng = np.random.default_rng(3)
        logits = (rng.standard_normal((11, *src_hw)) * 4).astype(np.float16)
        got = ops.upsample_argmax(logits, out_hw)
        np.testing.assert_array_equal(got, upsample_argmax_f32(logits, *out_hw))
        np.testing.assert_array_equal(got, upsample_argmax_ref(logits, *out_hw))

    def test_upsample_argmax_ties_pick_lowest_class(self, ops: KernelOps) -> None:
        rng = np.random.default_rng(5)
        plane = rng.standard_normal((9, 13)).astype(np.float32)
        logits = np.stack([plane - 1, plane, plane, plane - 2, plane])  # 1, 2, 4 tie
        got = ops.upsample_argmax(logits, (20, 31))
        assert (got == 1).all()
        flat = np.zeros((4, 6, 7), np.float32)  # all tie: class 0
        assert (ops.upsample_argmax(flat, (11, 5)) == 0).all()

    def test_upsample_argmax_camvid_size(self, ops: KernelOps) -> None:
        """Fast-SCNN-like logits (11, 45, 60) to a 360x480 CamVid frame."""
        rng = np.random.default_rng(9)
        logits = rng.standard_normal((11, 45, 60)).astype(np.float32)
        got = ops.upsample_argmax(logits, (360, 480))
        np.testing.assert_array_equal(got, upsample_argmax_ref(logits, 360, 480))

    def test_colorize(self, ops: KernelOps) -> None:
        rng = np.random.default_rng(1)
        labels = rng.integers(0, 256, (13, 17), dtype=np.uint8)
        pal = SPEC.palette()
        np.testing.assert_array_equal(ops.colorize(labels, pal), colorize_ref(labels, pal))

    @pytest.mark.parametrize(("frame_hw", "label_hw"), [((13, 17), (13, 17)), ((30, 41), (7, 9))])
    @pytest.mark.parametrize("alpha", [0.0, 0.35, 1.0])
    def test_overlay(self, ops: KernelOps, frame_hw, label_hw, alpha) -> None:
        rng = np.random.default_rng(2)
        frame = rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
        labels = rng.integers(0, 11, label_hw, dtype=np.uint8)
        pal = SPEC.palette()
        got = ops.overlay(frame, labels, pal, alpha)
        np.testing.assert_array_equal(got, overlay_f32(frame, labels, pal, alpha))
        if frame_hw == label_hw:  # the CPU path's cv2.addWeighted, up to its rounding
            cpu = overlay(frame, labels, pal, alpha).astype(np.int16)
            assert np.abs(got.astype(np.int16) - cpu).max() <= 1

    def test_bad_inputs_are_named(self, ops: KernelOps) -> None:
        with pytest.raises(ValueError, match="NV12"):
            ops.preprocess_nv12(np.zeros((5, 4), np.uint8), np.zeros((2, 4), np.uint8), (2, 2),
                                NORM)
        with pytest.raises(ValueError, match="float32 or float16"):
            ops.preprocess(np.zeros((4, 4, 3), np.uint8), (2, 2), NORM, dtype=np.float64)
        with pytest.raises(ValueError, match="256 classes"):
            ops.upsample_argmax(np.zeros((300, 2, 2), np.float32), (4, 4))
        with pytest.raises(ValueError, match="palette"):
            ops.colorize(np.zeros((2, 2), np.uint8), np.zeros((11, 3), np.uint8))
