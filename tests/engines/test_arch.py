"""Every registered architecture (including ones added later): shapes, gradients, aux
outputs, and ONNX export that ONNX Runtime runs with the same numbers as torch."""

from __future__ import annotations

import inspect
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.arch.encoders import ENCODERS, build_encoder
from engines.export import export_onnx
from engines.registry import UnknownModelError, available_models, build_model, get_entry
from engines.spec import ClassInfo, ModelSpec

K = 5
MODELS = available_models()
CLASSIC = [n for n in MODELS if get_entry(n).family == "classic"]


def _accepts(name: str, option: str) -> bool:
    return option in inspect.signature(get_entry(name).factory).parameters


def _small(name: str) -> dict:
    """Narrow variant where the factory takes ``width`` (same graph, less compute)."""
    return {"width": 0.5} if _accepts(name, "width") else {}


def _spec(name: str, size=(64, 96)) -> ModelSpec:
    classes = tuple(ClassInfo(i, f"c{i}", (i, i, i)) for i in range(K))
    return ModelSpec(f"test-{name}", name, classes, size)


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so that export folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def test_registry_has_both_families():
    families = {get_entry(n).family for n in MODELS}
    assert families == {"realtime", "classic"}
    for name in ("ddrnet23-slim", "pidnet-s", "bisenetv2", "unet", "deeplabv3plus", "fpn",
                 "linknet", "pspnet"):
        assert name in MODELS


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        build_model("segformer-b9", K)
    msg = str(info.value)
    assert "segformer-b9" in msg
    assert all(n in msg for n in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_shapes_and_finite_gradients(name):
    """Training mode with aux heads where the model has them: (logits, aux...) shapes,
    every parameter (aux heads included) gets a finite gradient (DDP needs all used)."""
    torch.manual_seed(0)
    aux = _accepts(name, "aux")
    model = build_model(name, K, **_small(name), **({"aux": True} if aux else {})).train()
    stride = model.output_stride
    outs = model(torch.randn(2, 3, 64, 96))
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert len(outs) >= (2 if aux else 1)
    assert outs[0].shape == (2, K, math.ceil(64 / stride), math.ceil(96 / stride))
    assert all(o.shape[:2] == (2, K) for o in outs)
    loss = sum(torch.nn.functional.cross_entropy(
        o, torch.randint(0, K, (2, *o.shape[-2:]))) for o in outs)
    assert torch.isfinite(loss)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (breaks DDP): {unused[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_default_model_shapes_at_size_not_multiple_of_32(name):
    """Default options (what gets trained): plain logits in training mode without aux,
    (N, K, ceil(H/s), ceil(W/s)) finite logits in eval mode."""
    model = build_model(name, K)
    s = model.output_stride
    with torch.no_grad():
        assert isinstance(model.train()(torch.randn(2, 3, 45, 61)), torch.Tensor)
        out = model.eval()(torch.randn(1, 3, 45, 61))
    assert out.shape == (1, K, math.ceil(45 / s), math.ceil(61 / s))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in MODELS if _accepts(n, "upsample")])
def test_upsample_option_gives_input_size(name):
    model = build_model(name, K, upsample=True, **_small(name)).eval()
    assert model.output_stride == 1
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, K, 45, 61)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_matches_torch(name, tmp_path):
    """Dynamic-shape export; ONNX Runtime vs torch at the export size and another size."""
    torch.manual_seed(1)
    model = build_model(name, K, **_small(name)).eval()
    _randomize_bn(model)
    path = export_onnx(model, _spec(name), tmp_path / f"{name}.onnx", dynamic=True,
                       check=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 64, 96), (2, 3, 40, 72)):
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(["logits"], {"input": x})[0]
        assert got.shape == ref.shape
        tol = 1e-4 + 1e-4 * np.abs(ref).max()
        assert np.abs(got - ref).max() <= tol, f"{name} {shape}: max err {np.abs(got - ref).max()}"
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_encoder_features(encoder, output_stride):
    enc = build_encoder(encoder, width=0.25, output_stride=output_stride).eval()
    with torch.inference_mode():
        feats = enc(torch.randn(1, 3, 64, 96))
    assert enc.strides == tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))
    for f, c, s in zip(feats, enc.channels, enc.strides, strict=True):
        assert f.shape == (1, c, 64 // s, 96 // s)


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("encoder", ["resnet34", "mobilenetv2"])
def test_classic_models_take_every_encoder(name, encoder):
    model = build_model(name, K, encoder=encoder, width=0.25).eval()
    s = model.output_stride
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, K, 64 // s, 96 // s)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="valid encoders: resnet18, resnet34, mobilenetv2"):
        build_model(CLASSIC[0], K, encoder="vgg16")
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        build_encoder("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="divisible by every bin"):
        build_model("pspnet", K, grid=20)


def test_stochastic_depth_drops_whole_samples_and_keeps_the_mean():
    from engines.arch.efficientnet_lite import stochastic_depth

    torch.manual_seed(0)
    y = torch.ones(4000, 2, 3, 3)
    out = stochastic_depth(y, 0.25, training=True)
    per_sample = out.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped or kept whole
    values = set(per_sample[:, 0].tolist())
    assert values == {0.0, float(torch.tensor(1 / 0.75))}  # float32
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert abs(out.mean().item() - 1.0) < 0.05
    assert stochastic_depth(y, 0.25, training=False) is y
    assert stochastic_depth(y, 0.0, training=True) is y


def test_litefpn_drop_path_acts_in_training_only():
    torch.manual_seed(0)
    plain = build_model("litefpn", 3, drop_path=0.0)
    dropped = build_model("litefpn", 3, drop_path=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # weights load as before
    dropped.load_state_dict(plain.state_dict())
    rates = [b.drop_path for b in dropped.encoder.blocks]
    assert rates[0] == 0.0 and rates == sorted(rates) and 0.45 < rates[-1] < 0.5
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for m in (plain, dropped):
            m.eval()
        # eval: the identity, so the exported graph is the plain one
        torch.testing.assert_close(dropped(x), plain(x), rtol=0, atol=0)
        for m in (plain, dropped):  # training, the classifier's Dropout2d held still
            m.train()
            m.classifier[1].eval()
        torch.manual_seed(1)
        assert torch.equal(plain(x)[0], plain(x)[0])
        assert not torch.equal(dropped(x)[0], plain(x)[0])
    with pytest.raises(ValueError, match="drop_path"):
        build_model("litefpn", 3, drop_path=1.0)
