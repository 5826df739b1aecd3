"""Model sidecar, backend factory, ONNX Runtime backend, pre/post-processing, Segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engines.backend import BackendError, backend_for_path, create_backend
from engines.postprocess import Postprocessor, colorize, overlay, upsample_argmax_ref
from engines.preprocess import Preprocessor, preprocess_ref, resize_bilinear_ref
from engines.registry import UnknownModelError, build_model
from engines.segmenter import Segmenter
from engines.spec import CAMVID_CLASSES, ModelSpec, ModelSpecError, sidecar_path

SPEC = ModelSpec("t", "tiny", CAMVID_CLASSES, (64, 96))


def test_spec_round_trip(tmp_path):
    p = SPEC.save(tmp_path / "m.json")
    assert ModelSpec.load(p) == SPEC
    assert SPEC.palette()[3].tolist() == [128, 64, 128]
    assert sidecar_path("a/b/model.engine").name == "model.json"


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d.pop("classes"), "missing key 'classes'"),
    (lambda d: d.update(output="probs"), "output must be one of"),
    (lambda d: d.update(input_size=[0, 10]), "input_size"),
])
def test_spec_rejects_bad_sidecars(tmp_path, mutate, msg):
    d = SPEC.to_json()
    mutate(d)
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match=msg):
        ModelSpec.load(tmp_path / "m.json")


def test_factory_errors(tmp_path, tiny_model):
    with pytest.raises(BackendError, match="not found"):
        create_backend(tmp_path / "missing.onnx")
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        create_backend(tiny_model, "tflite")
    with pytest.raises(BackendError, match="suffix"):
        backend_for_path("model.tflite")
    sidecar_path(tiny_model).unlink()
    with pytest.raises(ModelSpecError, match="sidecar"):
        create_backend(tiny_model)


def test_not_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    SPEC.save(sidecar_path(bad))
    with pytest.raises(BackendError, match="could not load"):
        create_backend(bad)


def test_registry_unknown_name_lists_valid_names():
    pytest.importorskip("torch", reason="the model registry builds torch modules (training)")
    with pytest.raises(UnknownModelError, match="valid models"):
        build_model("no-such-net", 11)


@pytest.mark.parametrize("src,dst", [((37, 53), (29, 41)), ((29, 41), (64, 96)), ((8, 8), (8, 8))])
def test_preprocess_matches_reference(src, dst):
    spec = ModelSpec("t", "tiny", CAMVID_CLASSES, dst)
    frame = np.random.default_rng(1).integers(0, 256, (*src, 3), dtype=np.uint8)
    fast, ref = Preprocessor(spec)(frame), preprocess_ref(frame, spec)
    assert fast.shape == ref.shape == (1, 3, *dst)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    # OpenCV resizes uint8 in fixed point and rounds to uint8: within one grey level.
    assert np.abs(fast - ref).max() <= 1.0 / 255 / min(spec.std)


def test_preprocess_channel_order_and_normalisation():
    spec = ModelSpec("t", "tiny", CAMVID_CLASSES, (4, 4), mean=(0.0, 0.0, 0.0), std=(1, 1, 1))
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x = Preprocessor(spec)(frame)
    assert x[0, 2].min() == 1.0 and x[0, 0].max() == 0.0  # blue is the last RGB plane


def test_letterbox_keeps_aspect_and_pads_with_zeros():
    spec = ModelSpec("t", "tiny", CAMVID_CLASSES, (64, 64))
    pre = Preprocessor(spec, letterbox=True)
    x = pre(np.full((32, 64, 3), 200, np.uint8))
    assert pre.last_box.height == 32 and pre.last_box.top == 16
    assert np.all(x[0, :, :16] == 0) and np.all(x[0, :, 48:] == 0)


def test_resize_reference_identity_and_constant():
    img = np.random.default_rng(0).random((5, 7, 2)).astype(np.float32)
    assert np.allclose(resize_bilinear_ref(img, 5, 7), img)
    assert np.allclose(resize_bilinear_ref(np.full((3, 3, 1), 4.0), 10, 11), 4.0)


@pytest.mark.parametrize("k,h,w,H,W", [(11, 45, 60, 360, 480), (5, 7, 13, 33, 51), (3, 9, 9, 9, 9)])
def test_postprocess_matches_reference(k, h, w, H, W):
    logits = np.random.default_rng(2).standard_normal((k, h, w)).astype(np.float32)
    got = Postprocessor(SPEC)(logits, (H, W))
    assert got.dtype == np.uint8 and got.shape == (H, W)
    assert np.array_equal(got, upsample_argmax_ref(logits, H, W))


def test_postprocess_ties_pick_lowest_class_and_many_classes():
    plane = np.random.default_rng(5).standard_normal((6, 7)).astype(np.float32)
    logits = np.stack([plane - 1, plane, plane, plane - 2, plane])  # 1, 2, 4 tie
    assert np.all(Postprocessor(SPEC)(logits, (13, 17)) == 1)
    assert np.all(Postprocessor(SPEC)(np.zeros((4, 6, 7), np.float32), (13, 17)) == 0)
    # 256 classes: the largest id that fits a uint8 label map.
    many = np.random.default_rng(6).standard_normal((256, 5, 6)).astype(np.float32)
    many[255, 2, 3] = 50.0
    got = Postprocessor(SPEC)(many, (20, 24))
    assert np.array_equal(got, upsample_argmax_ref(many, 20, 24)) and got.max() == 255


def test_postprocess_labels_are_resized_nearest():
    labels = np.arange(4, dtype=np.uint8).reshape(2, 2)
    out = Postprocessor(SPEC)(labels, (4, 4))
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_colorize_and_overlay():
    labels = np.array([[0, 3]], np.uint8)
    color = colorize(labels, SPEC)
    assert color[0, 1].tolist() == [128, 64, 128][::-1]  # road, BGR
    out = overlay(np.zeros((1, 2, 3), np.uint8), labels, SPEC, alpha=1.0)
    assert np.array_equal(out, color)


def test_ort_backend_and_segmenter(tiny_model):
    backend = create_backend(tiny_model, threads=1)
    assert backend.name == "onnxruntime" and backend.input_shape == (1, 3, 64, 96)
    seg = Segmenter(backend)
    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    labels, times = seg.run(frame)
    assert labels.shape == (120, 160) and labels.dtype == np.uint8
    assert labels.max() < backend.spec.num_classes
    assert min(times.pre, times.infer, times.post) > 0
    # Same result as the references composed by hand.
    logits = backend.infer(preprocess_ref(frame, backend.spec))[0]
    ref = upsample_argmax_ref(logits, 120, 160)
    assert (labels == ref).mean() > 0.99  # pre-processing rounding may flip near-ties


def test_in_graph_argmax_model_matches_logits_model(tiny_model, tiny_argmax_model):
    frame = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    a = Segmenter.from_path(tiny_model, threads=1)(frame)
    b = Segmenter.from_path(tiny_argmax_model, threads=1)(frame)
    assert (a == b).mean() > 0.99


def test_opencv_blob_path_matches_numpy_path():
    spec = ModelSpec("t", "tiny", CAMVID_CLASSES, (29, 41))
    frame = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    fused = Preprocessor(spec)
    plain = Preprocessor(spec)
    plain._blob = None  # force the NumPy steps (the path for OpenCV < 4.8)
    if fused._blob is None:
        pytest.skip("this OpenCV has no blobFromImageWithParams")
    assert np.abs(fused(frame) - plain(frame)).max() < 1e-5
