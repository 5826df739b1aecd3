"""``--tta flip``: the Segmenter averages a frame's logits with its mirror image's (real ONNX
Runtime sessions on the tiny models); eval and predict take it, eval's report says so."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.backend import BackendError, create_backend
from engines.evaluate import evaluate
from engines.predict import predict_folder
from engines.segmenter import Segmenter
from tests.engines.test_predict import _labelled_folder, _write_images


def _batch(seed: int = 0, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 96)).astype(np.float32)


def test_flip_is_the_mean_of_the_logits_and_the_mirrored_logits(tiny_model: Path) -> None:
    be = create_backend(tiny_model, threads=1)
    x = _batch()  # (N, 3, h, w)
    plain = np.array(be.infer(x))  # (N, K, h', w')
    mirrored = np.array(be.infer(np.ascontiguousarray(x[..., ::-1])))[..., ::-1]
    seg = Segmenter(be, tta="flip")
    out = seg.infer(x)
    assert out.dtype == np.float32 and out.shape == plain.shape
    np.testing.assert_allclose(out, (plain + mirrored) / 2, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, plain, atol=1e-3)  # the tiny model is not symmetric itself
    # averaged so, the output of a mirrored frame is the mirrored output
    np.testing.assert_allclose(seg.infer(np.ascontiguousarray(x[..., ::-1])), out[..., ::-1],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(Segmenter(be).infer(x), plain)  # default: one plain call
    seg.close()


def test_flip_labels_are_mirror_symmetric(tiny_model: Path) -> None:
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    seg = Segmenter.from_path(tiny_model, threads=1, tta="flip")
    try:
        labels = seg(frame)  # (H, W) uint8
        mirrored = seg(np.ascontiguousarray(frame[:, ::-1]))
    finally:
        seg.close()
    # the two label maps agree up to the rare pixel where two classes' means tie within
    # float rounding
    assert (labels[:, ::-1] == mirrored).mean() > 0.999


def test_flip_needs_logits_and_a_known_mode(tiny_model: Path, tiny_argmax_model: Path) -> None:
    with pytest.raises(BackendError, match="outputs labels"):
        Segmenter.from_path(tiny_argmax_model, threads=1, tta="flip")
    with pytest.raises(ValueError, match="valid: none, flip"):
        Segmenter.from_path(tiny_model, threads=1, tta="multiscale")
    Segmenter.from_path(tiny_argmax_model, threads=1).close()  # without tta: fine


def test_eval_and_predict_take_flip(tiny_model: Path, tmp_path: Path) -> None:
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    report = evaluate(tiny_model, root, threads=1, progress=False, tta="flip")
    assert report.tta == "flip" and report.to_json()["tta"] == "flip"
    # masks are the plain predictions: the flip average disagrees somewhere
    assert report.metrics.pixel_acc < 1.0
    assert evaluate(tiny_model, root, threads=1, progress=False).to_json()["tta"] == "none"

    _write_images(tmp_path / "in", [(64, 96)])
    res = predict_folder(tiny_model, tmp_path / "in", tmp_path / "labels", threads=1,
                         progress=False, tta="flip")
    seg = Segmenter.from_path(tiny_model, threads=1, tta="flip")
    frame = cv2.imread(str(tmp_path / "in" / "frame_00.png"))
    np.testing.assert_array_equal(cv2.imread(str(res.labels[0]), cv2.IMREAD_UNCHANGED),
                                  seg(frame))
    seg.close()


def test_eval_cli_writes_tta_and_refuses_it_with_record(tiny_model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from stream.cli import main

    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    out = tmp_path / "report.json"
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--threads", "1",
                 "--tta", "flip", "--no-progress", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tta"] == "flip"
    sidecar = tiny_model.with_suffix(".json").read_text()
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--threads", "1",
                 "--tta", "flip", "--record"]) == 2
    assert "a --tta flip score is not one of them" in capsys.readouterr().err
    assert tiny_model.with_suffix(".json").read_text() == sidecar  # nothing recorded
