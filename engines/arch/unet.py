"""U-Net decoder on a ResNet / MobileNetV2 encoder (Ronneberger et al. 2015, encoder form).

(N, 3, H, W) -> encoder features [f2, f4, f8, f16, f32] -> four decoder blocks, each
"upsample to the skip's size, concat the skip, two 3x3 conv+BN+ReLU" (f32 -> f16 -> f8 ->
f4 -> f2), a last block that upsamples to the input size, and a 1x1 classifier:
logits (N, K, H, W), ``output_stride`` 1.

Upsampling is bilinear + conv rather than transposed conv: it needs no ``output_padding``
for odd sizes (360 / 32 is not an integer) and exports to a plain ONNX Resize.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.arch._blocks import SegModel, conv_bn_relu, init_weights, resize_to, scaled
from engines.arch.encoders import build_encoder
from engines.registry import register


class DecoderBlock(nn.Module):
    """Upsample (N, cin, h, w) to the skip's size, concat skip, 2 x conv3x3 -> (N, cout, ...)."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                size: torch.Size | None = None) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([resize_to(x, skip.shape[-2:]), skip], dim=1)
        else:
            x = resize_to(x, size)
        return self.convs(x)


class UNet(SegModel):
    """U-Net with an encoder backbone. (N, 3, H, W) -> (N, K, H, W) logits.

    ``decoder_width`` scales the decoder channels (256, 128, 64, 32, 16). With ``aux=True``
    an auxiliary head reads the stride-16 encoder feature.
    """

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                 decoder_width: float = 1.0, aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=1)
        self.encoder = build_encoder(encoder, width=width)
        enc = self.encoder.channels  # f2, f4, f8, f16, f32
        dec = [scaled(c, decoder_width) for c in (256, 128, 64, 32, 16)]
        self.blocks = nn.ModuleList([
            DecoderBlock(enc[4], enc[3], dec[0]),
            DecoderBlock(dec[0], enc[2], dec[1]),
            DecoderBlock(dec[1], enc[1], dec[2]),
            DecoderBlock(dec[2], enc[0], dec[3]),
            DecoderBlock(dec[3], 0, dec[4]),
        ])
        self.classifier = nn.Conv2d(dec[4], num_classes, 1)
        init_weights(self.blocks)
        if aux:
            self._make_aux([enc[3]], [self.encoder.strides[3]])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        f2, f4, f8, f16, f32 = self.encoder(x)
        y = self.blocks[0](f32, f16)  # (N, d0, H/16, W/16)
        y = self.blocks[1](y, f8)  # (N, d1, H/8, W/8)
        y = self.blocks[2](y, f4)  # (N, d2, H/4, W/4)
        y = self.blocks[3](y, f2)  # (N, d3, H/2, W/2)
        y = self.blocks[4](y, None, x.shape[-2:])  # (N, d4, H, W)
        return self._outputs(self.classifier(y), [f16])  # (N, K, H, W)


@register("unet", family="classic",
          description="U-Net decoder on ResNet-18/34 or MobileNetV2 encoder, full-res logits")
def unet(num_classes: int, encoder: str = "resnet18", width: float = 1.0,
         decoder_width: float = 1.0, aux: bool = False) -> UNet:
    """U-Net (encoder = resnet18 | resnet34 | mobilenetv2)."""
    return UNet(num_classes, encoder, width, decoder_width, aux)
