"""PSPNet (Zhao et al. 2017) on a dilated ResNet / MobileNetV2 encoder.

(N, 3, H, W) -> encoder at output stride 8 (last two stages dilated) -> pyramid pooling
module over 1x1, 2x2, 3x3 and 6x6 bins -> 3x3 conv (512) -> 1x1 classifier: logits
(N, K, ceil(H/8), ceil(W/8)), ``output_stride`` 8 (1 with ``upsample=True``).

Pyramid pooling and ONNX / TensorRT. Adaptive average pooling exports to a fixed
AveragePool only when the bin count divides the feature size, and its kernel would be
baked for the export size, silently wrong for a dynamic-shape model. Here the 1x1 bin is
an exact global mean (ReduceMean), and the b x b bins average a bilinear resample of the
feature map on a fixed ``grid`` x ``grid`` lattice (default 24, divisible by 2, 3 and 6)
with a static ``grid/b`` kernel. This equals adaptive pooling exactly when the feature map
is ``grid`` x ``grid`` (192 x 192 input at stride 8) and approximates it otherwise (each
bin averages (grid/b)^2 bilinear samples of its region instead of every pixel). Every
kernel is static, so any input size and dynamic H / W export work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.arch._blocks import (
    SegHead,
    SegModel,
    conv_bn_relu,
    init_weights,
    resize_to,
    scaled,
)
from engines.arch.encoders import build_encoder
from engines.registry import register


class PyramidPoolingModule(nn.Module):
    """PPM. (N, cin, h, w) -> (N, cin + len(bins) * cin/len(bins), h, w)."""

    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6), grid: int = 24) -> None:
        super().__init__()
        for b in bins:
            if grid % b:
                raise ValueError(f"pyramid grid {grid} must be divisible by every bin {bins}")
        self.bins, self.grid = bins, grid
        mid = max(8, cin // len(bins))
        self.convs = nn.ModuleList(conv_bn_relu(cin, mid, 1) for _ in bins)
        self.out_channels = cin + mid * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        lattice = None
        feats = [x]
        for b, conv in zip(self.bins, self.convs, strict=True):
            if b == 1:
                pooled = torch.mean(x, dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
                feats.append(conv(pooled).expand(-1, -1, h, w))
                continue
            if lattice is None:
                lattice = resize_to(x, (self.grid, self.grid))  # (N, C, grid, grid)
            k = self.grid // b
            pooled = F.avg_pool2d(lattice, k, k)  # (N, C, b, b)
            feats.append(resize_to(conv(pooled), (h, w)))
        return torch.cat(feats, dim=1)


class PSPNet(SegModel):
    """PSPNet. With ``aux=True`` the aux head reads the stride-16 stage (as in the paper)."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0,
                 encoder_output_stride: int = 8, bins: tuple[int, ...] = (1, 2, 3, 6),
                 grid: int = 24, upsample: bool = False, aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=encoder_output_stride, upsample=upsample)
        self.encoder = build_encoder(encoder, width=width, output_stride=encoder_output_stride)
        c = self.encoder.channels
        self.ppm = PyramidPoolingModule(c[4], tuple(bins), grid)
        self.head = SegHead(self.ppm.out_channels, scaled(512, width), num_classes)
        init_weights(self)
        if aux:
            self._make_aux([c[3]], [self.encoder.strides[3]])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feats = self.encoder(x)
        y = self.head(self.ppm(feats[4]))  # (N, K, H/8, W/8)
        return self._outputs(self._finish(y, x.shape[-2:]), [feats[3]])


@register("pspnet", family="classic",
          description="PSPNet (pyramid pooling 1/2/3/6, OS8 dilated encoder), ResNet/MobileNetV2")
def pspnet(num_classes: int, encoder: str = "resnet18", width: float = 1.0,
           encoder_output_stride: int = 8, grid: int = 24, upsample: bool = False,
           aux: bool = False) -> PSPNet:
    """PSPNet (encoder = resnet18 | resnet34 | mobilenetv2)."""
    return PSPNet(num_classes, encoder, width, encoder_output_stride, grid=grid,
                  upsample=upsample, aux=aux)
