"""numba kernels of the fused bilinear upsample + argmax (see :mod:`engines.fused_post`).

Imported only through :func:`engines.fused_post.load`, which handles a missing or broken
numba. Compiled eagerly (explicit signatures) when this module is imported (~8 s on a
2-core VM) and cached on disk (then ~1 s with numba's import): next to this file when
that is writable, else in numba's per-user cache directory (``~/.cache/numba``;
``NUMBA_CACHE_DIR`` overrides), else for this process only (logged).

Arithmetic modes (``MODE_*``), each OpenCV's ``INTER_LINEAR`` float32 resize op for op:

* ``MODE_LERP_FMA`` (OpenCV's Intel IPP HAL, x86 wheels, sources of 2+ rows and columns):
  per row ``h = fma(S[x1] - S[x0], tx, S[x0])``, then ``v = fma(h1 - h0, ty, h0)``.
* ``MODE_WEIGHTED`` (OpenCV's own code): ``h = S[x0] * wx0 + S[x1] * wx1``, then
  ``v = h0 * wy0 + h1 * wy1``, two roundings per product and one per sum, no FMA.

The coefficients (source indices and float32 weights) come from :mod:`engines.fused_post`.
Nothing here uses ``fastmath``: LLVM must neither reassociate nor contract these ops.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

log = logging.getLogger("engines.fused_post")

MODE_LERP_FMA = 0
MODE_WEIGHTED = 1

# Rounding-error bound of either mode, relative to the corner magnitudes: the interpolated
# score of a class is within 6 u * max|corner| of the exact bilinear value (u = 2**-24);
# a class whose corners all beat another's by more than 2**-20 (|c| + |k|) wins strictly.
_REL_MARGIN = np.float32(2.0**-20)
_ABS_MARGIN = np.float32(1e-30)  # covers subnormal results, where relative bounds fail
_MAX_ABS = np.float32(1e37)  # larger logits could overflow b - a: the caller falls back
NOT_FINITE = -1


@intrinsic
def _fma(typingctx, a, b, c):
    """float32 fused multiply-add, one rounding (LLVM's llvm.fma.f32)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _maxnum(typingctx, a, b):
    """float32 maximum (LLVM's llvm.maxnum.f32: vmaxps, never a select; the inputs here
    are not NaN)."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.maxnum", [f32], ir.FunctionType(f32, [f32] * 2))
        return builder.call(fn, args)

    return sig, codegen


_cache = True  # False once numba found no writable cache location


def _jit(sig: str):
    def wrap(func):
        global _cache
        if _cache:
            try:
                return numba.njit(sig, cache=True, nogil=True, error_model="numpy")(func)
            except RuntimeError as exc:  # no writable cache location
                _cache = False
                log.info("numba cannot cache the fused post-processing kernels (%s): compiling "
                         "them for this process only; set NUMBA_CACHE_DIR to a writable "
                         "directory", exc)
        return numba.njit(sig, nogil=True, error_model="numpy")(func)

    return wrap


_INTERP_SIG = ("void(float32[:, ::1], int32[::1], int32[::1], float32[::1], float32[::1], "
               "int32[::1], int32[::1], float32[::1], float32[::1], int64, float32[:, ::1])")


@_jit(_INTERP_SIG)
def interp_plane(src, x0, x1, wx0, wx1, y0, y1, wy0, wy1, mode, out):
    """One (h, w) float32 plane -> (H, W) float32 bilinear upsample, ``mode`` arithmetic."""
    for r in range(out.shape[0]):
        ra, rb = src[y0[r]], src[y1[r]]
        for c in range(out.shape[1]):
            a, b = x0[c], x1[c]
            if mode == MODE_LERP_FMA:
                ha = _fma(ra[b] - ra[a], wx1[c], ra[a])
                hb = _fma(rb[b] - rb[a], wx1[c], rb[a])
                out[r, c] = _fma(hb - ha, wy1[r], ha)
            else:
                ha = ra[a] * wx0[c] + ra[b] * wx1[c]
                hb = rb[a] * wx0[c] + rb[b] * wx1[c]
                out[r, c] = ha * wy0[r] + hb * wy1[r]


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _corner_mag(logits, k, ya, yb, xa, xb):
    """max |score| of class k over a cell's four corners."""
    return max(abs(logits[k, ya, xa]), abs(logits[k, ya, xb]),
               abs(logits[k, yb, xa]), abs(logits[k, yb, xb]))


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _corner_lead(logits, d, k, ya, yb, xa, xb):
    """min over a cell's four corners of score(d) - score(k)."""
    return min(logits[d, ya, xa] - logits[k, ya, xa], logits[d, ya, xb] - logits[k, ya, xb],
               logits[d, yb, xa] - logits[k, yb, xa], logits[d, yb, xb] - logits[k, yb, xb])


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _candidates(logits, win, ya, yb, xa, xb, cand):
    """Classes that can win somewhere in the cell with corners (ya|yb, xa|xb), ascending
    into ``cand``; returns their number. A class is left out when a corner winner beats it
    at all four corners by more than the rounding margin (it then loses at every pixel)."""
    doms = (win[ya, xa], win[ya, xb], win[yb, xa], win[yb, xb])
    n = 0
    for k in range(logits.shape[0]):
        mk = _corner_mag(logits, k, ya, yb, xa, xb)
        beaten = False
        for d in doms:
            if d != k and _corner_lead(logits, d, k, ya, yb, xa, xb) > (
                    _REL_MARGIN * (_corner_mag(logits, d, ya, yb, xa, xb) + mk) + _ABS_MARGIN):
                beaten = True
                break
        if not beaten:
            cand[n] = k
            n += 1
    return n


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _horizontal(logits, k, ya, yb, x0, x1, wx0, wx1, mode, c0, c1, hor_a, hor_b, u, at):
    """Horizontal pass of class k's source rows ya, yb over the output columns [c0, c1) of
    one cell (one source column pair), into ``hor_a[u, at:]`` (upper row) and
    ``hor_b[u, at:]`` (lower row; ``MODE_LERP_FMA``: lower - upper, as IPP computes it).
    (Whole arrays and row indices, never views: each view costs atomic reference counts.)"""
    a, b = x0[c0], x1[c0]
    ua, ub, la, lb = logits[k, ya, a], logits[k, ya, b], logits[k, yb, a], logits[k, yb, b]
    if mode == MODE_LERP_FMA:
        du, dl = ub - ua, lb - la
        for c in range(c0, c1):
            h = _fma(du, wx1[c], ua)
            hor_a[u, at + c - c0] = h
            hor_b[u, at + c - c0] = _fma(dl, wx1[c], la) - h
    else:
        for c in range(c0, c1):
            hor_a[u, at + c - c0] = ua * wx0[c] + ub * wx1[c]
            hor_b[u, at + c - c0] = la * wx0[c] + lb * wx1[c]


# The per-row merges below write to other arrays than they read and load every operand
# unconditionally: a select stored back into its own input becomes a masked store
# (vmaskmovps), which AMD CPUs run ~10x slower than the plain vector code.


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _first(hor_a, hor_b, s0, s1, mode, k, n, best, label):
    """Scores of the first candidate (class k, row 0 of ``hor_*``) at one output row into
    ``best[0]``, k into ``label[0]``."""
    if mode == MODE_LERP_FMA:
        for p in range(n):
            best[0, p] = _fma(hor_b[0, p], s1, hor_a[0, p])
    else:
        for p in range(n):
            best[0, p] = hor_a[0, p] * s0 + hor_b[0, p] * s1
    for p in range(n):
        label[0, p] = k


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _merge(hor_a, hor_b, u, s0, s1, mode, k, n, best, label, src):
    """Scores of class k (row u of ``hor_*``) at one output row; where strictly above
    ``best[src]``, they and k go to ``best[1 - src]`` / ``label[1 - src]``, elsewhere
    ``best[src]`` / ``label[src]`` do (ties keep the lower class id)."""
    dst = 1 - src
    if mode == MODE_LERP_FMA:
        for p in range(n):
            v = _fma(hor_b[u, p], s1, hor_a[u, p])
            b, lab = best[src, p], label[src, p]
            better = v > b
            best[dst, p] = v if better else b
            label[dst, p] = k if better else lab
    else:
        for p in range(n):
            v = hor_a[u, p] * s0 + hor_b[u, p] * s1
            b, lab = best[src, p], label[src, p]
            better = v > b
            best[dst, p] = v if better else b
            label[dst, p] = k if better else lab


@numba.njit(nogil=True, error_model="numpy", inline="always")
def _source_stats(logits, win, gap, mag):
    """Per source pixel (h, w): winning class (first maximum) into ``win``, its lead over
    the second best into ``gap`` (inf for one class), max |score| into ``mag``. False when
    a score is NaN or beyond +-1e37. Classes outer, columns inner, double-buffered: the
    column loops vectorise."""
    k_n, h, w = logits.shape
    best = np.empty((2, w), np.float32)
    second = np.empty((2, w), np.float32)
    arg = np.empty((2, w), np.int32)
    bad = 0
    for y in range(h):
        for x in range(w):
            v = logits[0, y, x]
            best[0, x] = v
            second[0, x] = -np.inf
            arg[0, x] = 0
            mag[y, x] = abs(v)
            bad += 0 if abs(v) <= _MAX_ABS else 1
        for k in range(1, k_n):
            src = (k - 1) % 2
            dst = 1 - src
            for x in range(w):
                v = logits[k, y, x]
                b, s, a = best[src, x], second[src, x], arg[src, x]
                better = v > b
                best[dst, x] = v if better else b
                second[dst, x] = b if better else _maxnum(s, v)
                arg[dst, x] = k if better else a
                mag[y, x] = _maxnum(mag[y, x], abs(v))
                bad += 0 if abs(v) <= _MAX_ABS else 1
        last = (k_n - 1) % 2
        for x in range(w):
            win[y, x] = arg[last, x]
            gap[y, x] = best[last, x] - second[last, x]
    return bad == 0


_FUSED_SIG = ("int64(float32[:, :, ::1], int32[::1], int32[::1], float32[::1], float32[::1], "
              "int32[::1], int32[::1], float32[::1], float32[::1], int32[::1], int32[::1], "
              "int64, uint8[:, ::1])")


@_jit(_FUSED_SIG)
def upsample_argmax(logits, x0, x1, wx0, wx1, y0, y1, wy0, wy1, cseg, rseg, mode, out):
    """(K, h, w) float32 logits -> (H, W) uint8 argmax of the bilinear upsample, in ``out``.

    ``cseg`` / ``rseg`` hold the first output column / row of each run sharing one pair of
    source columns / rows, then W / H: a cell is one column run by one row run, its scores
    interpolate the same four corners. A cell where one class beats every other at all
    four corners by more than the rounding margin is that class throughout (one fill).
    The other cells of a row run are gathered into one list of columns, and their pixels
    get the first maximum (lowest class id on ties) of the scores, computed op for op as
    OpenCV does, of the classes that can win in at least one of them (a superset of each
    cell's candidates gives the same argmax; long loops vectorise, per-cell ones did not).

    Returns the number of settled cells, or ``NOT_FINITE`` (``out`` untouched) when a
    logit is NaN, infinite or larger in magnitude than 1e37.
    """
    k_n, h, w = logits.shape
    n_cols = out.shape[1]
    win = np.empty((h, w), np.int32)
    gap = np.empty((h, w), np.float32)
    mag = np.empty((h, w), np.float32)
    if not _source_stats(logits, win, gap, mag):
        return NOT_FINITE
    template = np.empty(n_cols, np.uint8)
    cand = np.empty(k_n, np.int32)
    wanted = np.zeros(k_n, np.bool_)  # classes that can win in some unsettled cell
    cells = np.empty(cseg.shape[0], np.int32)  # unsettled column runs of one row run
    cols = np.empty(n_cols, np.int32)  # their output columns, gathered
    hor_a = np.empty((k_n, n_cols), np.float32)
    hor_b = np.empty((k_n, n_cols), np.float32)
    best = np.empty((2, n_cols), np.float32)  # double-buffered: see _merge
    label = np.empty((2, n_cols), np.int32)
    settled = 0
    for i in range(rseg.shape[0] - 1):
        r0, r1 = rseg[i], rseg[i + 1]
        ya, yb = y0[r0], y1[r0]
        n = 0
        n_cells = 0
        for j in range(cseg.shape[0] - 1):
            c0, c1 = cseg[j], cseg[j + 1]
            xa, xb = x0[c0], x1[c0]
            c = win[ya, xa]
            if win[ya, xb] == c and win[yb, xa] == c and win[yb, xb] == c:
                g = min(gap[ya, xa], gap[ya, xb], gap[yb, xa], gap[yb, xb])
                m = max(mag[ya, xa], mag[ya, xb], mag[yb, xa], mag[yb, xb])
                if g > _REL_MARGIN * (m + m) + _ABS_MARGIN:
                    for cc in range(c0, c1):
                        template[cc] = c
                    settled += 1
                    continue
            nc = _candidates(logits, win, ya, yb, xa, xb, cand)
            if nc == 1:
                for cc in range(c0, c1):
                    template[cc] = cand[0]
                settled += 1
                continue
            for q in range(nc):
                wanted[cand[q]] = True
            cells[n_cells] = j
            n_cells += 1
            for cc in range(c0, c1):
                cols[n] = cc
                n += 1
        for r in range(r0, r1):  # (numba's slice assignment is ~20x slower than this)
            for cc in range(n_cols):
                out[r, cc] = template[cc]
        if n == 0:
            continue
        nu = 0
        for k in range(k_n):
            if wanted[k]:
                wanted[k] = False
                cand[nu] = k
                at = 0
                for q in range(n_cells):
                    c0, c1 = cseg[cells[q]], cseg[cells[q] + 1]
                    _horizontal(logits, k, ya, yb, x0, x1, wx0, wx1, mode, c0, c1,
                                hor_a, hor_b, nu, at)
                    at += c1 - c0
                nu += 1
        for r in range(r0, r1):
            _first(hor_a, hor_b, wy0[r], wy1[r], mode, cand[0], n, best, label)
            for q in range(1, nu):
                _merge(hor_a, hor_b, q, wy0[r], wy1[r], mode, cand[q], n, best, label,
                       (q - 1) % 2)
            final = (nu - 1) % 2
            for p in range(n):
                out[r, cols[p]] = label[final, p]
    return settled
