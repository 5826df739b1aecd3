"""Simulated INT8 for quantization-aware fine-tuning: the rounding matches int8 arithmetic
done by hand, gradients pass straight through, checkpoints stay plain float."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from engines.quant_sim import (  # noqa: E402
    disable_fake_quant,
    enable_fake_quant,
    fake_quant_act,
    fake_quant_weight,
)
from engines.registry import available_models, build_model  # noqa: E402


def _int8_ref(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Symmetric int8 by hand: round half to even, clamp to [-127, 127], back to float."""
    return np.clip(np.round(x / scale), -127, 127) * scale


def test_weight_rounding_is_per_channel_symmetric_int8() -> None:
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    w[2] *= 50.0  # one channel with a much larger range keeps its own scale
    got = fake_quant_weight(w).numpy()
    wn = w.numpy()
    scale = np.abs(wn).reshape(6, -1).max(axis=1) / 127
    np.testing.assert_allclose(got, _int8_ref(wn, scale[:, None, None, None]), rtol=0,
                               atol=1e-6 * np.abs(wn).max())
    for c in range(6):  # at most 255 levels per channel, the extreme one exactly kept
        assert len(np.unique(got[c])) <= 255
        assert np.abs(got[c]).max() == pytest.approx(np.abs(wn[c]).max(), rel=1e-6)
        assert np.abs(got[c] - wn[c]).max() <= scale[c] / 2 + 1e-6


def test_activation_rounding_clamps_to_the_range() -> None:
    x = torch.linspace(-3.0, 3.0, 101)
    got = fake_quant_act(x, 2.0).numpy()
    np.testing.assert_allclose(got, _int8_ref(x.numpy(), np.float32(2.0 / 127)), atol=1e-6)
    assert got.max() == pytest.approx(2.0) and got.min() == pytest.approx(-2.0)


def test_straight_through_gradient() -> None:
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fake_quant_weight(w).sum().backward()
    assert torch.all(w.grad == 1.0)  # every weight is inside its channel's range
    x = torch.tensor([0.5, 1.0, 5.0], requires_grad=True)
    fake_quant_act(x, 1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clamped values get no gradient


@pytest.mark.parametrize("arch", available_models())
def test_every_model_quantizes_and_restores(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 3).eval()
    x = torch.randn(1, 3, 64, 96)
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        n = enable_fake_quant(model)
        fq = model(x)
    assert n == sum(type(m) is nn.Conv2d for m in model.modules()) and n > 0
    assert set(model.state_dict()) == keys  # checkpoints stay plain float checkpoints
    err = float(torch.linalg.vector_norm(fq - ref) / torch.linalg.vector_norm(ref))
    assert 0.0 < err < 0.5, f"{arch}: relative INT8 simulation error {err:.3f}"
    assert disable_fake_quant(model) == n
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_ranges_follow_training_batches_and_freeze_in_eval() -> None:
    conv = nn.Conv2d(3, 4, 3)
    enable_fake_quant(conv, momentum=0.5)
    rng = conv._segstream_act_range
    conv.train()
    conv(torch.full((1, 3, 5, 5), 2.0))
    conv(torch.full((1, 3, 5, 5), 4.0))
    assert float(rng.amax) == pytest.approx(3.0)  # 0.5 * 2 + 0.5 * 4
    conv.eval()
    conv(torch.full((1, 3, 5, 5), 100.0))
    assert float(rng.amax) == pytest.approx(3.0)


def test_model_without_convolutions_is_refused() -> None:
    with pytest.raises(ValueError, match="no Conv2d"):
        enable_fake_quant(nn.Sequential(nn.ReLU()))


def test_half_precision_activations_keep_their_dtype() -> None:
    x = torch.linspace(-1.0, 1.0, 33).half()
    got = fake_quant_act(x, 1.0)
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), _int8_ref(x.float().numpy(),
                                                              np.float32(1 / 127)), atol=1e-3)
