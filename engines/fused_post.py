"""Fused bilinear upsample + argmax on the CPU, byte-identical to OpenCV's per-class path.

:func:`engines.postprocess._upsample_argmax_cv` upsamples every class plane of the (K, h, w)
logits to the frame size with ``cv2.resize`` (bilinear, half-pixel centres) and keeps a
running argmax: K full-resolution passes. Most of the frame does not need them. A *cell* is
the block of output pixels that interpolate the same 2x2 source corners; where one class
beats every other at all four corners by more than the rounding error of the
interpolation, it wins at every pixel of the cell (bilinear weights are non-negative and
sum to one), so the cell is filled at once: ~80 % of the cells of real CamVid logits. The
other cells compute, per pixel, the scores of the classes that can still win there (those
no corner winner beats by the margin) and keep the first maximum (lowest class id on ties).

Exactness: the per-pixel scores repeat OpenCV's float32 arithmetic op for op, so the labels
are OpenCV's, near-ties included. Which arithmetic ``cv2.resize`` uses is a property of
the OpenCV build and the geometry (measured, opencv-python 5.0 on x86_64): sources with 2+
rows and columns go through the Intel IPP HAL, ``a + t (b - a)`` as one fused multiply-add
with ``t`` rounded from a double source coordinate, rows then columns
(``MODE_LERP_FMA``); single-row or single-column sources through OpenCV's own code,
``a (1 - t) + b t`` with float32 coordinates and unclamped vertical weights
(``MODE_WEIGHTED``). Rather than trust that table on another machine (aarch64 has no IPP),
each new geometry is probed once: ``cv2.resize`` of random planes must equal this module's
interpolation bit for bit in one of the modes, else that geometry keeps the OpenCV path
(one log line). The margin: either mode's score is within 6 u max|corner| of the exact
bilinear value (u = 2**-24, two roundings per pass); the kernels ask for 16 u (|c| + |k|).

The kernels are numba (``engines/_fused_kernels.py``), compiled once and cached on disk;
:func:`load` compiles or loads them, so call it (``Postprocessor`` does, in its
constructor) before the first frame. Without numba, or with ``SEGSTREAM_FUSED_POST=0``,
:func:`load` returns None and post-processing stays on the OpenCV path.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from types import ModuleType

import cv2
import numpy as np

log = logging.getLogger(__name__)

MODE_LERP_FMA = 0  # keep in step with engines/_fused_kernels.py
MODE_WEIGHTED = 1
MODE_NAMES = {MODE_LERP_FMA: "lerp-fma (IPP)", MODE_WEIGHTED: "weighted (OpenCV)"}
MAX_CLASSES = 256  # uint8 labels
_PROBE_VALUES = 4096  # interpolated values compared per probed mode, at least
_MAX_GEOMETRIES = 64  # cached (h, w, out_h, out_w) entries
_UNKNOWN = object()  # geometry_for: "not probed yet" (a cached None means "no mode fits")


@dataclass(frozen=True)
class Axis:
    """Resize coefficients of one axis: output index -> two source indices and weights.

    ``i0``, ``i1``: (n_out,) int32 source indices (clamped to the image); ``w0``, ``w1``:
    (n_out,) float32 weights of ``i0`` and ``i1`` (``MODE_LERP_FMA`` uses ``w1`` as ``t``).
    ``runs``: (n_runs + 1,) int32, the first output index of each run of equal (i0, i1),
    then n_out.
    """

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray
    runs: np.ndarray


def lerp_fma_axis(n_in: int, n_out: int) -> Axis:
    """IPP's coefficients: ``s = (d + 0.5) n_in / n_out - 0.5`` in double, clamped to
    [0, n_in - 1]; ``t = float32(s - floor(s))``."""
    s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    i0 = np.floor(s)
    t = (s - i0).astype(np.float32)
    i0 = i0.astype(np.int32)
    return _axis(i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - t, t)


def weighted_axis(n_in: int, n_out: int, *, clamp_weights: bool) -> Axis:
    """OpenCV's own coefficients: ``f = float32((d + 0.5) / (n_out / n_in) - 0.5)``,
    ``t = f - floor(f)`` in float32, ``w0 = 1 - t``. Columns (``clamp_weights``) outside
    the image take the edge column with weights (1, 0); rows keep their weights and clamp
    the row indices only (as ``cv::resize`` does)."""
    f = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    i0 = np.floor(f)
    t = (f - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    if clamp_weights:
        out = (i0 < 0) | (i0 >= n_in - 1)
        t[out] = 0.0
        i0 = np.clip(i0, 0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
    else:
        i1 = np.clip(i0 + 1, 0, n_in - 1)
        i0 = np.clip(i0, 0, n_in - 1)
    return _axis(i0.astype(np.int32), i1.astype(np.int32), np.float32(1) - t, t)


def _axis(i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> Axis:
    change = np.flatnonzero((np.diff(i0) != 0) | (np.diff(i1) != 0)) + 1
    runs = np.concatenate([[0], change, [len(i0)]]).astype(np.int32)
    return Axis(i0.astype(np.int32), i1.astype(np.int32), w0.astype(np.float32),
                w1.astype(np.float32), runs)


@dataclass(frozen=True)
class Geometry:
    """One (h, w) -> (out_h, out_w) resize in one arithmetic mode: ``cols``, ``rows``."""

    mode: int
    cols: Axis
    rows: Axis


def geometry(h: int, w: int, out_h: int, out_w: int, mode: int) -> Geometry:
    if mode == MODE_LERP_FMA:
        return Geometry(mode, lerp_fma_axis(w, out_w), lerp_fma_axis(h, out_h))
    return Geometry(mode, weighted_axis(w, out_w, clamp_weights=True),
                    weighted_axis(h, out_h, clamp_weights=False))


class FusedUpsampleArgmax:
    """(K, h, w) float32 logits -> (out_h, out_w) uint8 labels, OpenCV's labels exactly.

    Returns None where it does not apply (more than 256 classes, non-finite or huge logits,
    a geometry whose probe found no matching arithmetic): the caller uses OpenCV then.
    Thread-safe; the kernels release the GIL.
    """

    def __init__(self, kernels: ModuleType) -> None:
        self._k = kernels
        self._geometries: dict[tuple[int, int, int, int], Geometry | None] = {}

    def __call__(self, logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray | None:
        res = self.run(logits, out_h, out_w)
        return None if res is None else res[0]

    def run(self, logits: np.ndarray, out_h: int, out_w: int
            ) -> tuple[np.ndarray, float] | None:
        """Like ``__call__``, with the fraction of settled (filled at once) cells."""
        if (logits.ndim != 3 or logits.dtype != np.float32 or not 0 < len(logits) <= MAX_CLASSES
                or min(out_h, out_w) < 1 or min(logits.shape[1:]) < 1):
            return None
        _, h, w = logits.shape
        geo = self.geometry_for(h, w, out_h, out_w)
        if geo is None:
            return None
        out = np.empty((out_h, out_w), np.uint8)
        cols, rows = geo.cols, geo.rows
        settled = self._k.upsample_argmax(
            np.ascontiguousarray(logits), cols.i0, cols.i1, cols.w0, cols.w1,
            rows.i0, rows.i1, rows.w0, rows.w1, cols.runs, rows.runs, geo.mode, out)
        if settled == self._k.NOT_FINITE:
            return None
        return out, settled / ((len(cols.runs) - 1) * (len(rows.runs) - 1))

    def geometry_for(self, h: int, w: int, out_h: int, out_w: int) -> Geometry | None:
        """The geometry in the mode ``cv2.resize`` computes here, probed once and cached;
        None when neither mode reproduces it (logged)."""
        key = (h, w, out_h, out_w)
        cached = self._geometries.get(key, _UNKNOWN)  # one lookup: another thread may clear
        if cached is not _UNKNOWN:
            return cached
        geo = self._probe(h, w, out_h, out_w)  # another thread may probe it too: same result
        if len(self._geometries) >= _MAX_GEOMETRIES:
            self._geometries.clear()
        self._geometries[key] = geo
        return geo

    def interp_plane(self, plane: np.ndarray, geo: Geometry) -> np.ndarray:
        """(h, w) float32 -> (out_h, out_w) float32 in ``geo``'s arithmetic (probe, tests)."""
        out = np.empty((len(geo.rows.i0), len(geo.cols.i0)), np.float32)
        c, r = geo.cols, geo.rows
        self._k.interp_plane(np.ascontiguousarray(plane, np.float32), c.i0, c.i1, c.w0, c.w1,
                             r.i0, r.i1, r.w0, r.w1, geo.mode, out)
        return out

    def _probe(self, h: int, w: int, out_h: int, out_w: int) -> Geometry | None:
        """Random planes through ``cv2.resize`` and through each mode: the mode whose
        every value is bit-identical, the IPP one first where IPP would take it."""
        n = min(64, -(-_PROBE_VALUES // (out_h * out_w)))
        rng = np.random.default_rng(20260517)
        planes = (rng.standard_normal((n + 1, h, w)) * 8).astype(np.float32)[1:]  # offset planes
        want = [cv2.resize(p, (out_w, out_h), interpolation=cv2.INTER_LINEAR).reshape(out_h, out_w)
                for p in planes]
        order = (MODE_LERP_FMA, MODE_WEIGHTED) if min(h, w) >= 2 else (MODE_WEIGHTED, MODE_LERP_FMA)
        for mode in order:
            geo = geometry(h, w, out_h, out_w, mode)
            if all(np.array_equal(self.interp_plane(p, geo).view(np.uint32), ref.view(np.uint32))
                   for p, ref in zip(planes, want, strict=True)):
                return geo
        log.warning("fused post-processing: this OpenCV's bilinear resize %dx%d -> %dx%d matches "
                    "none of %s; that size keeps the per-class OpenCV path", w, h, out_w, out_h,
                    ", ".join(MODE_NAMES.values()))
        return None


@functools.cache
def load() -> FusedUpsampleArgmax | None:
    """The fused path, compiled (or loaded from numba's cache) and warmed up; None, logged
    once, when numba is missing or fails here or ``SEGSTREAM_FUSED_POST=0`` turns it off."""
    if os.environ.get("SEGSTREAM_FUSED_POST", "") == "0":
        log.info("fused post-processing off (SEGSTREAM_FUSED_POST=0): OpenCV path")
        return None
    try:
        import engines._fused_kernels as kernels

        fused = FusedUpsampleArgmax(kernels)
        warm = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
        if fused(warm, 7, 9) is None:
            raise RuntimeError("the warm-up geometry matched no arithmetic mode")
    except Exception as exc:  # numba missing, or any compile/cache failure: stay correct
        log.warning("fused post-processing unavailable (%s: %s): using the per-class OpenCV "
                    "path (about 4 ms per 720p frame)", type(exc).__name__, exc)
        return None
    return fused
