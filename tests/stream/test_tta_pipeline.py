"""``--tta flip`` in the stream: an engine that keeps two calls in flight runs a frame's two
runs side by side and publishes the averaged maps; the governor weighs both runs; a model
with labels output is refused by ``launch --check`` and ``bench`` before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.backend import create_backend
from engines.segmenter import Segmenter
from stream.cli import main as cli_main
from stream.pipeline import Pipeline
from stream.stages import StagedEngine
from tests.stream.test_pipeline import ListSink, ListSource


def test_flip_tta_runs_through_a_two_call_engine(tiny_model: Path) -> None:
    """Every published map is the flip-averaged one (the engine's own in-flight calls would
    skip the mirrored run), the two runs went through submit / collect, and the engine time
    the governor weighs holds both runs."""
    seg = Segmenter.from_path(tiny_model, threads=2, policy="throughput", tta="flip")
    flip = Segmenter.from_path(tiny_model, threads=1, tta="flip")
    plain = Segmenter.from_path(tiny_model, threads=1)
    try:
        assert seg.backend.in_flight == 2 and StagedEngine(seg).depth == 1
        sink = ListSink()
        res = Pipeline([ListSource("a", 10)], seg, sink, stats_interval=0).run()
        assert res.published == 10
        for frame, labels in sink.sent:
            assert labels.tobytes() == flip(frame.image).tobytes()
        assert any(labels.tobytes() != plain(frame.image).tobytes()
                   for frame, labels in sink.sent)
        assert seg.backend.last_call_ns > 0  # set by collect(): the runs were submitted
        engine = StagedEngine(seg)
        engine.submit([ListSource("b", 1).latest(0)], 0)
        assert len(engine.collect()) == 1
        # both sessions' run times, not the pair's wall time (which they overlap in)
        assert engine.last_busy_ns == seg.last_busy_ns > seg.backend.last_call_ns > 0
    finally:
        for s in (seg, flip, plain):
            s.close()


def test_flip_of_a_batch_side_by_side_equals_one_after_the_other(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    """Batches of 2 through the two-session path give the maps of two plain calls."""
    two = Segmenter.from_path(tiny_model, threads=2, policy="throughput", batch=2, tta="flip")
    one = create_backend(tiny_model, threads=1, batch=2)
    try:
        assert two.max_batch == 2 and two.backend.in_flight == 2
        x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
        expected = (one.infer(x) + one.infer(np.ascontiguousarray(x[..., ::-1]))[..., ::-1]) / 2
        np.testing.assert_allclose(two.infer(x), expected, rtol=1e-5, atol=1e-5)
        assert not two.backend.ready()  # nothing left in flight
    finally:
        two.close()
        one.close()


def test_a_failing_pair_leaves_no_call_in_flight(tiny_model: Path) -> None:
    seg = Segmenter.from_path(tiny_model, threads=2, policy="throughput", tta="flip")
    try:
        bad = np.zeros((1, 3, 10, 10), np.float32)  # the wrong input size: ORT refuses it
        with pytest.raises(Exception, match="invalid dimensions"):  # ONNX Runtime's own
            seg.infer(bad)
        x = np.zeros((1, 3, 64, 96), np.float32)
        assert seg.infer(x).shape[0] == 1  # the next frame is not refused nor stale
    finally:
        seg.close()


def test_labels_output_with_flip_is_refused_before_anything_runs(
        tiny_argmax_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = tmp_path / "l.yaml"
    doc.write_text(f"version: 1\nsources: [{{uri: 'test://smpte'}}]\nmodel: "
                   f"{tiny_argmax_model}\ntta: flip\n")
    assert cli_main(["launch", str(doc), "--check"]) == 2
    assert ("tta: test-time augmentation 'flip' averages logits, but model 'tiny_argmax' "
            "outputs labels") in capsys.readouterr().err
    assert cli_main(["bench", "--model", str(tiny_argmax_model), "--tta", "flip",
                     "--repeat", "1", "--duration", "0.5"]) == 2
    assert "outputs labels" in capsys.readouterr().err
