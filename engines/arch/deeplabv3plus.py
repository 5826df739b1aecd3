"""DeepLabV3+ (Chen et al. 2018) on a dilated ResNet / MobileNetV2 encoder.

(N, 3, H, W) -> encoder at output stride 16 (last stage dilated) -> ASPP (1x1, three
3x3 atrous convs at rates 6/12/18, image pooling) -> 1x1 projection (256) -> upsample to
the stride-4 feature, concat its 48-channel 1x1 reduction -> two 3x3 convs -> 1x1
classifier: logits (N, K, ceil(H/4), ceil(W/4)), ``output_stride`` 4 (1 with
``upsample=True``).

ONNX / TensorRT: the image-pooling branch is a ReduceMean over H, W followed by a
broadcast (Expand) back to the feature size, valid for any (dynamic) input size.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.arch._blocks import SegModel, conv_bn_relu, init_weights, resize_to, scaled
from engines.arch.encoders import build_encoder
from engines.registry import register


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling. (N, cin, h, w) -> (N, cout, h, w)."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, 1)]
            + [conv_bn_relu(cin, cout, 3, dilation=r) for r in rates])
        self.image_pool = conv_bn_relu(cin, cout, 1)
        self.project = nn.Sequential(conv_bn_relu(cout * (len(rates) + 2), cout, 1),
                                     nn.Dropout2d(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = self.image_pool(torch.mean(x, dim=(2, 3), keepdim=True))  # (N, cout, 1, 1)
        feats = [b(x) for b in self.branches] + [pooled.expand(-1, -1, h, w)]
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(SegModel):
    """DeepLabV3+. ``encoder_output_stride`` 16 (default) or 8; ASPP rates double at 8."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                 decoder_width: float = 1.0, encoder_output_stride: int = 16,
                 upsample: bool = False, aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=4, upsample=upsample)
        self.encoder = build_encoder(encoder, width=width, output_stride=encoder_output_stride)
        c = self.encoder.channels
        d, low = scaled(256, decoder_width), scaled(48, decoder_width)
        rates = (6, 12, 18) if encoder_output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(c[4], d, rates)
        self.low_proj = conv_bn_relu(c[1], low, 1)
        self.fuse = nn.Sequential(conv_bn_relu(d + low, d, 3), conv_bn_relu(d, d, 3))
        self.classifier = nn.Conv2d(d, num_classes, 1)
        init_weights(self)
        if aux:
            self._make_aux([c[3]], [self.encoder.strides[3]])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        _, f4, _, f16, f32 = self.encoder(x)
        y = self.aspp(f32)  # (N, d, H/16, W/16) at encoder output stride 16
        y = torch.cat([resize_to(y, f4.shape[-2:]), self.low_proj(f4)], dim=1)
        y = self.classifier(self.fuse(y))  # (N, K, H/4, W/4)
        return self._outputs(self._finish(y, x.shape[-2:]), [f16])


@register("deeplabv3plus", family="classic",
          description="DeepLabV3+ (ASPP, OS16 dilated encoder, H/4 decoder), ResNet/MobileNetV2")
def deeplabv3plus(num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                  decoder_width: float = 1.0, encoder_output_stride: int = 16,
                  upsample: bool = False, aux: bool = False) -> DeepLabV3Plus:
    """DeepLabV3+ (encoder = resnet18 | resnet34 | mobilenetv2)."""
    return DeepLabV3Plus(num_classes, encoder, width, decoder_width, encoder_output_stride,
                         upsample, aux)
