"""Simulated INT8 quantization for quantization-aware fine-tuning (QAT).

``enable_fake_quant(model)`` makes every ``nn.Conv2d`` of a model compute with the
rounding that ``segstream calibrate`` (``--profile tensorrt``) later bakes into Q/DQ nodes:

* weights: int8, symmetric, zero point 0, one scale per output channel
  (``scale = max|w_c| / 127``, the restricted range [-127, 127] that ONNX Runtime's
  symmetric quantizer and TensorRT use);
* input activations: int8, symmetric, zero point 0, one scale per tensor, from an
  exponential moving average of the batch's ``max|x|`` (updated in training mode only).

Rounding uses PyTorch's fake-quantize ops, whose gradient is the straight-through
estimator (1 inside the clamp range, 0 outside), so the float weights learn to sit well
on the int8 grid. Per-channel symmetric scaling commutes with the per-channel factor of a
folded BatchNorm, so quantizing the unfolded convolution weight here equals quantizing the
folded weight of the exported graph.

Nothing is added to ``state_dict()``: checkpoints of a QAT run are ordinary float
checkpoints, exported by ``segstream export`` and then quantized by ``segstream calibrate``
(post-training ranges on weights that were trained to tolerate them).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn

QMIN, QMAX = -127, 127  # symmetric int8 (onnxruntime.quantization: INT8 symmetric range)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """(C_out, ...) float weight -> the same values rounded to per-channel int8 steps."""
    amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)  # (C_out,)
    scale = (amax / QMAX).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, QMIN, QMAX)


def fake_quant_act(x: torch.Tensor, amax: float | torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activation -> rounded to the int8 steps of the range [-amax, amax].

    ``amax`` may be a 0-d tensor on ``x``'s device (no host sync in the training loop).
    Rounds in float32 and returns ``x``'s dtype (float16 activations under CUDA AMP).
    """
    a = torch.as_tensor(amax, dtype=torch.float32, device=x.device).clamp_min(1e-12)
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    q = torch.fake_quantize_per_tensor_affine(x.float(), a / QMAX, zero, QMIN, QMAX)
    return q.to(x.dtype)


@dataclass
class _ActRange:
    """Moving-average ``max|x|`` of one convolution's input: a 0-d float32 tensor on the
    input's device, kept off the host so a GPU step needs no sync (not a buffer)."""

    momentum: float
    amax: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        m = x.detach().abs().amax().float()
        self.amax = m if self.amax is None else self.momentum * self.amax + \
            (1.0 - self.momentum) * m


def _qat_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    rng: _ActRange = self._segstream_act_range
    if self.training or rng.amax is None:
        rng.update(x)
    return self._conv_forward(fake_quant_act(x, rng.amax), fake_quant_weight(self.weight),
                              self.bias)


def enable_fake_quant(model: nn.Module, momentum: float = 0.95) -> int:
    """Simulate INT8 in every ``nn.Conv2d`` of ``model`` (in place); returns how many.

    ``momentum`` weights the running activation range (0: the last batch only).
    """
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and not hasattr(m, "_segstream_act_range"):
            m._segstream_act_range = _ActRange(momentum)
            m.forward = types.MethodType(_qat_forward, m)
            n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer to quantize")
    return n


def disable_fake_quant(model: nn.Module) -> int:
    """Undo :func:`enable_fake_quant`; returns how many layers were restored."""
    n = 0
    for m in model.modules():
        if hasattr(m, "_segstream_act_range"):
            del m._segstream_act_range
            del m.forward  # back to the class's forward
            n += 1
    return n
