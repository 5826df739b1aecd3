"""LinkNet (Chaurasia & Culurciello 2017) on a ResNet / MobileNetV2 encoder.

(N, 3, H, W) -> encoder [f2, f4, f8, f16, f32] -> decoder blocks that *add* (not concat)
each skip: f32 -> f16 -> f8 -> f4 -> H/2, then the final block (two 3x3 convs, 1x1
classifier, bilinear upsample to the input size): logits (N, K, H, W), ``output_stride`` 1.

Deviation from the paper: the 3x3 stride-2 transposed convolutions are replaced by
bilinear upsampling to the skip's size followed by a 3x3 conv, which handles sides that
are not multiples of 32 and exports to ONNX Resize + Conv.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.arch._blocks import SegModel, conv_bn_relu, init_weights, resize_to, scaled
from engines.arch.encoders import build_encoder
from engines.registry import register


class LinkDecoder(nn.Module):
    """1x1 conv to cin/4, upsample to ``size``, 3x3 conv, 1x1 conv to cout.
    (N, cin, h, w) -> (N, cout, *size)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(8, cin // 4)
        self.reduce = conv_bn_relu(cin, mid, 1)
        self.up_conv = conv_bn_relu(mid, mid, 3)
        self.expand = conv_bn_relu(mid, cout, 1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.expand(self.up_conv(resize_to(self.reduce(x), size)))


class LinkNet(SegModel):
    """LinkNet. (N, 3, H, W) -> (N, K, H, W) logits; aux head on the stride-16 feature."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                 aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=1)
        self.encoder = build_encoder(encoder, width=width)
        c = self.encoder.channels  # f2, f4, f8, f16, f32
        self.decoders = nn.ModuleList([
            LinkDecoder(c[4], c[3]),
            LinkDecoder(c[3], c[2]),
            LinkDecoder(c[2], c[1]),
            LinkDecoder(c[1], c[1]),
        ])
        head = scaled(32, width)
        self.final_up = conv_bn_relu(c[1], head, 3)
        self.final_conv = conv_bn_relu(head, head, 3)
        self.classifier = nn.Conv2d(head, num_classes, 1)
        init_weights(self)
        if aux:
            self._make_aux([c[3]], [self.encoder.strides[3]])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        f2, f4, f8, f16, f32 = self.encoder(x)
        y = self.decoders[0](f32, f16.shape[-2:]) + f16  # (N, c3, H/16, W/16)
        y = self.decoders[1](y, f8.shape[-2:]) + f8  # (N, c2, H/8, W/8)
        y = self.decoders[2](y, f4.shape[-2:]) + f4  # (N, c1, H/4, W/4)
        y = self.decoders[3](y, f2.shape[-2:])  # (N, c1, H/2, W/2)
        y = self.final_conv(self.final_up(y))  # (N, 32w, H/2, W/2)
        # 1x1 conv and bilinear resize commute (both linear, weights sum to 1): classify at
        # H/2, then upsample K channels instead of 32.
        y = resize_to(self.classifier(y), x.shape[-2:])  # (N, K, H, W)
        return self._outputs(y, [f16])


@register("linknet", family="classic",
          description="LinkNet on ResNet-18/34 or MobileNetV2, additive skips, full-res logits")
def linknet(num_classes: int, encoder: str = "resnet18", width: float = 1.0,
            aux: bool = False) -> LinkNet:
    """LinkNet (encoder = resnet18 | resnet34 | mobilenetv2)."""
    return LinkNet(num_classes, encoder, width, aux)
