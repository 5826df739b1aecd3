"""`segstream export MODEL.onnx --fp16`: the FP16 twin of an FP32 ONNX, without the
training checkpoint (what a Jetson user holding only a shipped model needs for an FP16
TensorRT engine), checked against the FP32 file in ONNX Runtime. No torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from engines.spec import ModelSpec, sidecar_path
from stream.cli import main


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_fp16_twin_of_an_onnx_file(tiny_model, tmp_path, capsys):
    out = tmp_path / "out" / "tiny.fp16.onnx"
    assert main(["export", str(tiny_model), "--fp16", "--out", str(out)]) == 0
    assert "check fp16: max |error|" in capsys.readouterr().out
    half = onnx.load(str(out))
    assert {i.data_type for i in half.graph.initializer if i.dims} == {TensorProto.FLOAT16}
    io = [v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert ModelSpec.load(sidecar_path(out)) == ModelSpec.load(sidecar_path(tiny_model))
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96), dtype=np.float32)
    ref, got = _run(tiny_model, x), _run(out, x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(got, ref, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize("case", ["no-fp16", "argmax", "same-path", "already-fp16", "missing"])
def test_what_an_onnx_input_cannot_do_is_a_clear_error_and_writes_nothing(
        tiny_model, tmp_path, capsys, case):
    out = tmp_path / "o.onnx"
    src = tiny_model
    args = ["--fp16"]
    if case == "no-fp16":
        args, why = [], "add --fp16"
    elif case == "argmax":
        args, why = ["--fp16", "--argmax"], "drop --argmax"
    elif case == "same-path":
        out, why = tiny_model, "must be a new .onnx path"
    elif case == "already-fp16":
        src = tmp_path / "h.onnx"
        assert main(["export", str(tiny_model), "--fp16", "--out", str(src)]) == 0
        capsys.readouterr()
        why = "already holds float16 weights"
    else:
        src, why = tmp_path / "nope.onnx", "not found"
    before = tiny_model.read_bytes()
    assert main(["export", str(src), *args, "--out", str(out)]) == 2
    assert why in capsys.readouterr().err
    assert tiny_model.read_bytes() == before
    assert case == "same-path" or not out.exists()
