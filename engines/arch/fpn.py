"""FPN semantic segmentation (Kirillov et al. 2019, "Panoptic FPN" semantic branch).

(N, 3, H, W) -> encoder [f2, f4, f8, f16, f32] -> 1x1 laterals on f4..f32 to a 256-ch
pyramid with top-down addition (P2..P5) -> per level: 3x3 conv (128) + upsample, repeated
until stride 4 -> sum -> 1x1 classifier: logits (N, K, ceil(H/4), ceil(W/4)),
``output_stride`` 4 (1 with ``upsample=True``).
"""

from __future__ import annotations

import torch
from torch import nn

from engines.arch._blocks import SegModel, conv_bn_relu, init_weights, resize_to, scaled
from engines.arch.encoders import build_encoder
from engines.registry import register


class FPN(SegModel):
    """FPN. ``pyramid`` / ``head`` channels default 256 / 128 (x ``decoder_width``)."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                 decoder_width: float = 1.0, upsample: bool = False,
                 aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=4, upsample=upsample)
        self.encoder = build_encoder(encoder, width=width)
        c = self.encoder.channels[1:]  # f4, f8, f16, f32
        p, h = scaled(256, decoder_width), scaled(128, decoder_width)
        self.laterals = nn.ModuleList(nn.Conv2d(ci, p, 1) for ci in c)
        self.smooth = nn.ModuleList(conv_bn_relu(p, h, 3) for _ in c)
        # level i (stride 4 * 2**i) gets max(1, i) 3x3 conv + 2x upsample stages.
        self.refine = nn.ModuleList(
            nn.ModuleList(conv_bn_relu(h, h, 3) for _ in range(max(0, i - 1))) for i in
            range(len(c)))
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(h, num_classes, 1))
        init_weights(self)
        if aux:
            self._make_aux([self.encoder.channels[3]], [self.encoder.strides[3]])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feats = self.encoder(x)[1:]  # f4, f8, f16, f32
        # Top-down pathway: P5 = L5, P_i = L_i + up(P_{i+1}).
        pyramid = [self.laterals[-1](feats[-1])]
        for lat, f in zip(self.laterals[-2::-1], feats[-2::-1], strict=True):
            top = pyramid[0]
            pyramid.insert(0, lat(f) + resize_to(top, f.shape[-2:]))
        size4 = feats[0].shape[-2:]
        out = None
        for i, (level, smooth, refine) in enumerate(
                zip(pyramid, self.smooth, self.refine, strict=True)):
            y = smooth(level)  # (N, h, H/2^(i+2), W/2^(i+2))
            finer = feats[i - 1:0:-1] if i > 1 else []  # f at strides 2^(i+1) .. 8
            for conv, f in zip(refine, finer, strict=True):
                y = conv(resize_to(y, f.shape[-2:]))  # one octave finer each step
            if i > 0:
                y = resize_to(y, size4)
            out = y if out is None else out + y  # (N, h, H/4, W/4)
        logits = self._finish(self.classifier(out), x.shape[-2:])
        return self._outputs(logits, [feats[2]])


@register("fpn", family="classic",
          description="FPN semantic head (Panoptic FPN) on ResNet-18/34 or MobileNetV2, H/4")
def fpn(num_classes: int, encoder: str = "resnet18", width: float = 1.0,
        decoder_width: float = 1.0, upsample: bool = False, aux: bool = False) -> FPN:
    """FPN (encoder = resnet18 | resnet34 | mobilenetv2)."""
    return FPN(num_classes, encoder, width, decoder_width, upsample, aux)
