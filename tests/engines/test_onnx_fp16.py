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


@pytest.mark.parametrize("case", ["no-fp16", "argmax", "same-path", "already-fp16", "missing",
                                  "no-check-folder"])
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
        out, why = tiny_model, "an input of this command"
    elif case == "already-fp16":
        src = tmp_path / "h.onnx"
        assert main(["export", str(tiny_model), "--fp16", "--out", str(src)]) == 0
        capsys.readouterr()
        why = "already holds float16 weights"
    elif case == "no-check-folder":
        args, why = ["--fp16", "--check-images", str(tmp_path / "frames")], "no such folder"
    else:
        src, why = tmp_path / "nope.onnx", "not found"
    before = tiny_model.read_bytes()
    assert main(["export", str(src), *args, "--out", str(out)]) == 2
    assert why in capsys.readouterr().err
    assert tiny_model.read_bytes() == before
    assert case == "same-path" or not out.exists()


def test_a_file_that_is_not_onnx_is_a_clear_error(tiny_model, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    sidecar_path(junk).write_text(sidecar_path(tiny_model).read_text())
    assert main(["export", str(junk), "--fp16", "--out", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert "is not a readable ONNX model" in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_an_fp16_twin_that_changes_the_labels_exits_1_and_writes_nothing(tmp_path, capsys):
    """Logits 1000.00 and 1000.01 apart by less than float16's step there (0.5): the FP16
    file would label every pixel with the first class."""
    from tests.tinymodel import make_tiny_model

    src = make_tiny_model(tmp_path / "m", num_classes=2)
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(onnx.numpy_helper.from_array(
                np.zeros(onnx.numpy_helper.to_array(init).shape, np.float32), "w2"))
        if init.name == "b2":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([1000.0, 1000.01], np.float32),
                                                       "b2"))
    onnx.save(model, str(src))
    out = tmp_path / "o.fp16.onnx"
    assert main(["export", str(src), "--fp16", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "fp16 ONNX output does not match the FP32 model" in err and "label agreement" in err
    assert not out.exists() and not sidecar_path(out).exists()


def test_an_fp32_model_onnx_runtime_cannot_load_is_the_inputs_fault_exit_2(tmp_path, capsys):
    from tests.tinymodel import make_tiny_model

    src = make_tiny_model(tmp_path / "m")
    model = onnx.load(str(src))
    model.graph.node[1].op_type = "SegstreamNoSuchOp"  # the Relu: an op no runtime knows
    onnx.save(model, str(src))
    out = tmp_path / "o.fp16.onnx"
    assert main(["export", str(src), "--fp16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "SegstreamNoSuchOp" in err and "Traceback" not in err
    assert not out.exists()
