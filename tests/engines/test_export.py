"""ONNX export: I/O contract, sidecar, argmax labels, dynamic shapes, fp16, the torch
check, and the `segstream export` / `segstream models` commands."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engines.backend import create_backend
from engines.export import ExportCheckError, ExportError, export_onnx
from engines.registry import available_models, build_model
from engines.spec import ClassInfo, ModelSpec, sidecar_path
from stream.cli import main as cli_main

K = 6
ARCH, OPTS = "bisenetv2", {"width": 0.25}  # small, stride 8, exercises every export path
SPEC = ModelSpec("t", ARCH, tuple(ClassInfo(i, f"c{i}", (i, 0, 0)) for i in range(K)),
                 (64, 96), training_data="random weights")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = build_model(ARCH, K, **OPTS).eval()
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():  # non-trivial BN so folding is exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _labels(logits: np.ndarray, size) -> np.ndarray:
    up = nn.functional.interpolate(torch.from_numpy(logits), size=size, mode="bilinear",
                                   align_corners=False)
    return up.argmax(1).numpy().astype(np.uint8)


def test_static_logits_contract_and_sidecar(model, tmp_path):
    path = export_onnx(model, SPEC, tmp_path / "m.onnx")
    sess = _session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    # N symbolic: one engine call may take several cameras' frames (run --batch)
    assert (inp.name, inp.shape, inp.type) == ("input", ["batch", 3, 64, 96], "tensor(float)")
    assert (out.name, out.shape, out.type) == ("logits", ["batch", K, 8, 12], "tensor(float)")
    assert ModelSpec.load(sidecar_path(path)) == SPEC  # output stays "logits"
    graph = onnx.load(path).graph
    conv_outputs = {n.output[0] for n in graph.node if n.op_type == "Conv"}
    unfolded = [n.name for n in graph.node
                if n.op_type == "BatchNormalization" and n.input[0] in conv_outputs]
    assert not unfolded, f"Conv + BatchNorm pairs left unfolded: {unfolded}"
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 96), dtype=np.float32)
    ref = _torch(model, x)
    assert np.abs(sess.run(None, {"input": x})[0] - ref).max() <= 1e-4 * max(1, np.abs(ref).max())
    assert model.training is False
    x3 = np.random.default_rng(4).standard_normal((3, 3, 64, 96), dtype=np.float32)
    got3 = sess.run(None, {"input": x3})[0]
    assert got3.shape == (3, K, 8, 12)
    assert np.abs(got3 - _torch(model, x3)).max() <= 1e-4 * max(1, np.abs(ref).max())


def test_argmax_labels_static_and_dynamic(model, tmp_path):
    rng = np.random.default_rng(4)
    for dynamic in (False, True):
        path = export_onnx(model, SPEC, tmp_path / f"l{dynamic}.onnx", argmax=True,
                           dynamic=dynamic)
        assert ModelSpec.load(sidecar_path(path)).output == "labels"
        sess = _session(path)
        assert sess.get_outputs()[0].name == "labels"
        assert sess.get_outputs()[0].type == "tensor(uint8)"
        shapes = [(1, 3, 64, 96)] + ([(2, 3, 50, 70)] if dynamic else [])
        for shape in shapes:
            x = rng.standard_normal(shape, dtype=np.float32)
            got = sess.run(None, {"input": x})[0]
            want = _labels(_torch(model, x), shape[2:])
            assert got.dtype == np.uint8 and got.shape == (shape[0], *shape[2:])
            assert (got == want).mean() >= 0.999
    with pytest.raises(Exception, match="input"):  # static model rejects other sizes
        _session(tmp_path / "lFalse.onnx").run(None, {"input": np.zeros((1, 3, 50, 70),
                                                                         np.float32)})


def test_exported_file_runs_in_the_ort_backend(model, tmp_path):
    path = export_onnx(model, SPEC, tmp_path / "b.onnx", argmax=True)
    backend = create_backend(path)
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 96), dtype=np.float32)
    assert backend.spec.output == "labels"
    assert (backend.infer(x) == _labels(_torch(model, x), (64, 96))).mean() >= 0.999
    backend.close()


def test_fp16_keeps_float32_io(model, tmp_path):
    reports = []
    path = export_onnx(model, SPEC, tmp_path / "m.fp16.onnx", fp16=True,
                       on_check=lambda kind, r: reports.append(kind))
    assert reports == ["fp32", "fp16"]
    proto = onnx.load(path)
    kinds = {i.data_type for i in proto.graph.initializer if i.dims and len(i.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}  # every conv weight is half precision
    sess = _session(path)
    assert sess.get_inputs()[0].type == sess.get_outputs()[0].type == "tensor(float)"
    x = np.random.default_rng(6).standard_normal((1, 3, 64, 96), dtype=np.float32)
    got, ref = sess.run(None, {"input": x})[0], _torch(model, x)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


class BakedScale(nn.Module):
    """A Python float taken from the data: tracing bakes the dummy input's value in."""

    num_classes = K
    output_stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float(x.abs().max())


def test_check_catches_mismatch_and_keeps_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous good model")
    torch.manual_seed(0)
    with pytest.raises(ExportCheckError, match="does not match torch: max"):
        export_onnx(BakedScale(), SPEC, path)
    assert path.read_bytes() == b"previous good model"
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_requests_are_clear_errors(model, tmp_path):
    with pytest.raises(ExportError, match=r"must end in \.onnx"):
        export_onnx(model, SPEC, tmp_path / "m.engine")
    spec3 = ModelSpec("t", ARCH, SPEC.classes[:3], (64, 96))
    with pytest.raises(ExportError, match="model has 6 classes but the spec lists 3"):
        export_onnx(model, spec3, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="opset 9 not supported"):
        export_onnx(model, SPEC, tmp_path / "m.onnx", opset=9)
    big = ModelSpec("t", "x", tuple(ClassInfo(i, f"c{i}", (0, 0, 0)) for i in range(300)),
                    (8, 8))
    conv = nn.Conv2d(3, 300, 1)
    with pytest.raises(ExportError, match="300 classes do not fit"):
        export_onnx(conv, big, tmp_path / "m.onnx", argmax=True)


def _checkpoint(tmp_path, model) -> str:
    ckpt = {"arch": ARCH, "arch_options": OPTS, "num_classes": K,
            "model": model.state_dict(), "spec": SPEC.to_json(), "epoch": 0,
            "rng": {"numpy": np.random.get_state()}}
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    return str(path)


def test_export_command(model, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, model)
    out = tmp_path / "out" / "m.onnx"
    rc = cli_main(["export", ckpt, "--out", str(out), "--argmax", "--size", "48x80",
                   "--dynamic"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "check fp32: max |error|" in text and "label agreement" in text
    spec = ModelSpec.load(out.with_suffix(".json"))
    assert spec.input_size == (48, 80) and spec.output == "labels"
    x = np.random.default_rng(7).standard_normal((1, 3, 48, 80), dtype=np.float32)
    got = _session(out).run(None, {"input": x})[0]
    assert (got == _labels(_torch(model, x), (48, 80))).mean() >= 0.999

    assert cli_main(["export", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert cli_main(["export", ckpt, "--out", str(out), "--size", "48by80"]) == 2
    assert "expected HxW" in capsys.readouterr().err
    before = out.read_bytes()
    assert cli_main(["export", ckpt, "--out", str(out), "--opset", "9"]) == 2
    assert "opset 9 not supported" in capsys.readouterr().err
    assert cli_main(["export", ckpt, "--out", str(tmp_path / "m.onx")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert out.read_bytes() == before and not (tmp_path / "m.onx").exists()


def test_models_command_lists_registry(capsys):
    assert cli_main(["models", "--json", "--classes", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == available_models()
    for r in rows:
        assert r["params"] > 0 and r["output_stride"] in (1, 2, 4, 8, 16, 32)
        assert r["family"] in ("realtime", "classic") and r["description"]
    unet = next(r for r in rows if r["name"] == "unet")
    assert unet["options"]["encoder"] == "resnet18" and unet["options"]["aux"] is False
    assert cli_main(["models", "--family", "realtime"]) == 0
    text = capsys.readouterr().out
    assert "ddrnet23-slim" in text and "unet" not in text


@pytest.mark.camvid
def test_export_command_checks_on_real_frames(model, tmp_path, capsys, camvid):
    ckpt = _checkpoint(tmp_path, model)
    out = tmp_path / "real.onnx"
    rc = cli_main(["export", ckpt, "--out", str(out), "--check-images", str(camvid / "val")])
    text = capsys.readouterr().out
    assert rc == 0, text
    # two random inputs plus four CamVid frames, all at the export size
    assert text.count("(1, 3, 64, 96)") == 6


def test_fp16_converter_refuses_what_it_cannot_convert():
    from onnx import TensorProto, helper, numpy_helper

    from engines.onnx_fp16 import Fp16ConversionError, convert_to_fp16

    def graph(inputs, weight):
        w = numpy_helper.from_array(np.full((2, 3, 1, 1), weight, np.float32), "w")
        node = helper.make_node("Conv", ["input", "w"], ["logits"])
        g = helper.make_graph(
            [node], "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in inputs],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    ok = convert_to_fp16(graph(["input"], 0.5))
    assert [n.op_type for n in ok.graph.node] == ["Cast", "Conv", "Cast"]
    x = np.ones((1, 3, 4, 4), np.float32)
    got = ort.InferenceSession(ok.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert got.dtype == np.float32 and np.allclose(got, 1.5)
    with pytest.raises(Fp16ConversionError, match="expected one graph input"):
        convert_to_fp16(graph(["input", "extra"], 0.5))
    with pytest.raises(Fp16ConversionError, match="exceed the float16 range"):
        convert_to_fp16(graph(["input"], 1e6))
