"""The fused upsample + argmax (engines/fused_post.py) against OpenCV's per-class path.

The published labels are OpenCV's (``_upsample_argmax_cv``, what tests/golden holds): the
fused kernel must give them byte for byte, ties and near-ties included, on every geometry
(upscales by any factor, downscales, 1xN / Nx1, single-row or -column sources, letterbox
crops) and class count up to 256. The NumPy reference (``upsample_argmax_ref``) rounds
differently; where it disagrees with OpenCV the two scores must be a tie up to rounding.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import fused_post
from engines.postprocess import Postprocessor, _upsample_argmax_cv, upsample_argmax_ref
from engines.preprocess import Letterbox, resize_bilinear_ref
from engines.spec import CAMVID_CLASSES, ModelSpec
from engines.zoo import shipped_models

REPO = Path(__file__).resolve().parents[2]
SPEC = ModelSpec("t", "tiny", CAMVID_CLASSES, (64, 96))
FUSED = fused_post.load()


def _fused(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    assert FUSED is not None, "numba is a dependency: the fused kernel must load"
    labels = FUSED(np.ascontiguousarray(logits, np.float32), out_h, out_w)
    assert labels is not None, "the fused kernel refused a geometry OpenCV handles"
    return labels


def _assert_same_as_opencv(logits: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    logits = np.ascontiguousarray(logits, np.float32)
    want = _upsample_argmax_cv(logits, out_h, out_w)
    got = _fused(logits, out_h, out_w)
    assert got.dtype == np.uint8 and got.shape == (out_h, out_w)
    diff = np.argwhere(got != want)
    assert not len(diff), (f"{len(diff)} labels differ from OpenCV's, first at {diff[0]}: "
                           f"{logits.shape} -> {(out_h, out_w)}")
    return got


def _assert_ref_differs_only_on_ties(logits: np.ndarray, labels: np.ndarray) -> None:
    """Where the NumPy reference picks another class, both classes' exact (float64)
    interpolated scores must be equal up to float32 rounding of the inputs' magnitude."""
    ref = upsample_argmax_ref(logits, *labels.shape)
    if np.array_equal(ref, labels):
        return
    exact = resize_bilinear_ref(logits.transpose(1, 2, 0).astype(np.float64), *labels.shape)
    ys, xs = np.nonzero(ref != labels)
    gap = np.abs(exact[ys, xs, labels[ys, xs]] - exact[ys, xs, ref[ys, xs]])
    scale = np.abs(logits).max()
    assert gap.max() <= 1e-5 * scale, f"reference and OpenCV disagree by {gap.max():.3g}"


@pytest.mark.parametrize("seed", range(12))
def test_random_geometries_match_opencv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(12):
        k = int(rng.choice([1, 2, 3, 5, 11, 19, 40]))
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 260, 2))
        logits = (rng.standard_normal((k, h, w)) * rng.choice([0.01, 1.0, 30.0])).astype(np.float32)
        labels = _assert_same_as_opencv(logits, out_h, out_w)
        _assert_ref_differs_only_on_ties(logits, labels)


@pytest.mark.parametrize("src,out", [
    ((45, 60), (720, 1280)), ((45, 60), (360, 480)), ((90, 120), (720, 1280)),
    ((45, 60), (719, 1279)), ((37, 53), (101, 997)), ((40, 60), (41, 61)),  # odd factors
    ((90, 120), (45, 60)), ((45, 60), (22, 30)), ((45, 60), (20, 31)), ((7, 9), (3, 1000)),
    ((45, 60), (1, 1280)), ((45, 60), (720, 1)), ((1, 1), (5, 7)), ((1, 30), (9, 200)),
    ((30, 1), (200, 9)), ((2, 2), (4, 4)), ((5, 5), (1, 1)), ((45, 60), (45, 60)),
])
def test_named_geometries_match_opencv(src: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(src) + sum(out))
    logits = rng.standard_normal((11, *src)).astype(np.float32) * 4
    _assert_same_as_opencv(logits, *out)
    _assert_same_as_opencv(np.round(logits), *out)  # integer logits: exact ties everywhere


def test_ties_and_near_ties_match_opencv() -> None:
    rng = np.random.default_rng(7)
    plane = rng.standard_normal((23, 31)).astype(np.float32)
    up = np.nextafter(plane, np.float32(np.inf))  # one ulp above
    down = np.nextafter(plane, np.float32(-np.inf))
    cases = [
        np.stack([plane - 1, plane, plane, plane - 2, plane]),  # exact ties: lowest id
        np.stack([plane, up, down, plane]),  # near-ties, each order
        np.stack([up, plane, np.nextafter(up, np.float32(np.inf)), down]),
        np.stack([plane, plane + np.float32(1e-7) * rng.standard_normal(plane.shape,
                                                                      dtype=np.float32)]),
        np.zeros((4, 23, 31), np.float32),
        np.round(rng.standard_normal((6, 23, 31)) * 2).astype(np.float32) * np.float32(0.664),
    ]
    for logits in cases:
        for out in ((97, 133), (360, 480), (46, 62), (11, 15)):
            _assert_same_as_opencv(logits, *out)
    assert np.all(_fused(cases[0], 97, 133) == 1)


@pytest.mark.parametrize("k", [255, 256])
def test_many_classes_match_opencv(k: int) -> None:
    logits = np.random.default_rng(k).standard_normal((k, 9, 11)).astype(np.float32)
    logits[k - 1, 4, 5] = 40.0
    labels = _assert_same_as_opencv(logits, 70, 90)
    assert labels.max() == k - 1


def test_int8_model_logits_show_why_the_references_differ() -> None:
    """Quantised logits put exact ties inside cells; OpenCV (IPP: a + t (b - a), one FMA)
    and the NumPy reference (a (1 - t) + b t) round them apart. The fused path is OpenCV's."""
    step = np.float32(0.6639757)  # Fast-SCNN INT8's logit step
    rng = np.random.default_rng(3)
    logits = (rng.integers(-6, 7, (11, 45, 60)) * step).astype(np.float32)
    labels = _assert_same_as_opencv(logits, 360, 480)
    _assert_ref_differs_only_on_ties(logits, labels)


def test_interpolation_reproduces_cv2_resize_bit_for_bit() -> None:
    """The probed arithmetic, on planes other than the probe's, equals cv2.resize exactly."""
    assert FUSED is not None
    rng = np.random.default_rng(11)
    for src, out in [((45, 60), (720, 1280)), ((90, 120), (360, 480)), ((1, 17), (5, 40)),
                     ((17, 1), (40, 5)), ((33, 47), (20, 300))]:
        geo = FUSED.geometry_for(*src, *out)
        assert geo is not None
        plane = (rng.standard_normal(src) * 100).astype(np.float32)
        want = cv2.resize(plane, out[::-1], interpolation=cv2.INTER_LINEAR).reshape(out)
        got = FUSED.interp_plane(plane, geo)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (src, out)


def test_letterboxed_crops_match_opencv() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((11, 45, 60)).astype(np.float32)
    post = Postprocessor(ModelSpec("t", "tiny", CAMVID_CLASSES, (360, 480)))
    for box, out in [(Letterbox(0.5, 60, 0, 240, 480), (480, 960)),
                     (Letterbox(0.75, 0, 61, 360, 357), (479, 475)),
                     (Letterbox(1.0, 3, 5, 7, 9), (7, 9))]:
        got = post(logits, out, box)
        t, b = box.top * 45 / 360, (box.top + box.height) * 45 / 360
        lft, r = box.left * 60 / 480, (box.left + box.width) * 60 / 480
        crop = logits[:, int(t):max(int(t) + 1, round(b)), int(lft):max(int(lft) + 1, round(r))]
        assert np.array_equal(got, _upsample_argmax_cv(np.ascontiguousarray(crop), *out))


def test_non_finite_logits_fall_back_to_opencv() -> None:
    assert FUSED is not None
    logits = np.random.default_rng(1).standard_normal((5, 8, 9)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf, 3e38):
        spoilt = logits.copy()
        spoilt[2, 4, 4] = bad
        assert FUSED(spoilt, 30, 40) is None
        assert np.array_equal(Postprocessor(SPEC)(spoilt, (30, 40)),
                              _upsample_argmax_cv(spoilt, 30, 40))
    assert FUSED(logits[:0], 30, 40) is None  # no classes
    assert FUSED(np.zeros((257, 4, 4), np.float32), 8, 8) is None  # labels are uint8


def test_postprocessor_uses_the_compiled_kernel_from_its_constructor() -> None:
    post = Postprocessor(SPEC)
    assert post._fused is FUSED is not None
    from engines import _fused_kernels

    assert _fused_kernels.upsample_argmax.signatures  # compiled (or loaded) already


def test_geometry_opencv_computes_otherwise_keeps_the_opencv_path(monkeypatch, caplog) -> None:
    """A geometry whose cv2.resize matches neither arithmetic (simulated: OpenCV off by
    one ulp) is refused, logged once, and the Postprocessor still returns OpenCV's labels."""
    assert FUSED is not None
    real_resize = cv2.resize

    def other_resize(src, dsize, **kw):
        out = real_resize(src, dsize, **kw)
        return np.nextafter(out, np.float32(np.inf))

    fused = fused_post.FusedUpsampleArgmax(FUSED._k)
    monkeypatch.setattr(fused_post.cv2, "resize", other_resize)
    with caplog.at_level(logging.WARNING, logger="engines.fused_post"):
        assert fused.geometry_for(6, 7, 30, 31) is None
        assert fused(np.zeros((3, 6, 7), np.float32), 30, 31) is None
    assert sum("matches none of" in r.getMessage() for r in caplog.records) == 1


def test_switch_off_and_missing_numba_fall_back_with_one_log_line(monkeypatch, caplog) -> None:
    fused_post.load.cache_clear()
    try:
        monkeypatch.setenv("SEGSTREAM_FUSED_POST", "0")
        with caplog.at_level(logging.INFO, logger="engines.fused_post"):
            assert fused_post.load() is None
        monkeypatch.delenv("SEGSTREAM_FUSED_POST")
        fused_post.load.cache_clear()
        monkeypatch.setitem(sys.modules, "engines._fused_kernels", None)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engines.fused_post"):
            assert fused_post.load() is None
            post = Postprocessor(SPEC)
        assert len(caplog.records) == 1 and "unavailable" in caplog.records[0].getMessage()
        logits = np.random.default_rng(2).standard_normal((11, 9, 12)).astype(np.float32)
        assert np.array_equal(post(logits, (40, 50)), _upsample_argmax_cv(logits, 40, 50))
    finally:
        fused_post.load.cache_clear()


_MODELS = [m for m in shipped_models() if m.suffix == ".onnx"]


@pytest.mark.skipif(not _MODELS, reason="no shipped model in engines/models")
@pytest.mark.parametrize("model", _MODELS, ids=[m.stem for m in _MODELS])
def test_golden_frames_byte_identical(model) -> None:
    """The golden frames' logits of every shipped model (INT8 included): OpenCV's labels;
    in the environment the goldens were made in, the committed PNGs themselves."""
    spec = importlib.util.spec_from_file_location("make_golden", REPO / "scripts/make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    from engines.segmenter import Segmenter

    seg = Segmenter.from_path(model, threads=1)
    try:
        isa = json.loads(make_golden.ISA_FILE.read_text()) if make_golden.ISA_FILE.is_file() else {}
        for name, frame in make_golden.synthetic_frames().items():
            logits = seg.backend.infer(seg.pre(frame))[0]
            labels = _assert_same_as_opencv(logits, *frame.shape[:2])
            path = make_golden.golden_path(model, name)
            if isa.get(path.name) == make_golden.environment():
                assert np.array_equal(labels, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    finally:
        seg.close()


@pytest.mark.camvid
def test_real_camvid_logits_byte_identical(camvid) -> None:
    from engines.segmenter import Segmenter

    model = REPO / "engines" / "models" / "camvid_fastscnn.onnx"
    if not model.is_file():
        pytest.skip("shipped model missing")
    seg = Segmenter.from_path(model, threads=1)
    try:
        for path in sorted((camvid / "val").glob("*.png"))[::25]:
            logits = seg.backend.infer(seg.pre(cv2.imread(str(path))))[0]
            for out in ((720, 1280), (360, 480)):
                _assert_same_as_opencv(logits, *out)
    finally:
        seg.close()
