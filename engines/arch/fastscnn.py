"""Fast-SCNN: a ~1M-parameter two-branch real-time segmentation network.

Poudel, Liwicki, Cipolla, "Fast-SCNN: Fast Semantic Segmentation Network" (BMVC 2019).

Layout (input (N, 3, H, W), strides relative to the input):

    learning-to-downsample   conv3x3 s2 -> DSConv s2 -> DSConv s2        (N, 64, H/8, W/8)
    global feature extractor inverted residuals 64 s2, 96 s2, 128 s1     (N, 128, H/32, W/32)
                             + pyramid pooling (global + fixed 2x2/4x4 avg pooling)
    feature fusion           upsample x4, depthwise conv, add the H/8 skip (N, 128, H/8, W/8)
    classifier               2 x DSConv, 1x1 conv                        (N, K, H/8, W/8)
    (optional) upsample      bilinear to the input size                  (N, K, H, W)

By default the network outputs H/8 logits (``output_stride = 8``): the client's
post-processor (or the loss in training) upsamples them bilinearly before the argmax,
which on a 2-core CPU is faster end to end than upsampling 11 full-size planes in the
graph (8.6 vs 11.4 ms per 360x480 frame measured with ONNX Runtime, see docs/training.md).

Deployment constraints (ONNX Runtime and TensorRT): only Conv, BatchNorm (folded at
export), ReLU, Add, Concat, AveragePool with fixed kernels, GlobalAveragePool and
bilinear Resize with ``align_corners=False``. No adaptive pooling with non-divisible
sizes, so any input size works (strides round up: 360 -> 45 -> 12 rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.arch._blocks import init_weights
from engines.registry import register


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                  relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DSConv(nn.Sequential):
    """Depthwise-separable conv: depthwise 3x3 (stride s) + BN + ReLU, pointwise + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            _conv_bn_relu(cin, cin, 3, stride, groups=cin),
            _conv_bn_relu(cin, cout, 1),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (x t), depthwise 3x3 (stride s), 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn_relu(cin, hidden, 1),
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn_relu(hidden, cout, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


class PyramidPooling(nn.Module):
    """Context at several scales, export-friendly.

    Branches: global average pooling, and fixed-kernel average pooling (2x2 and 4x4
    windows, stride = kernel) instead of adaptive bins, each followed by 1x1 conv and
    bilinear upsampling back to the input size; concatenated with the input and fused
    by a 1x1 conv. (N, C, h, w) -> (N, C_out, h, w).
    """

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        mid = cin // 4
        self.kernels = kernels
        self.global_branch = _conv_bn_relu(cin, mid, 1)
        self.local_branches = nn.ModuleList(_conv_bn_relu(cin, mid, 1) for _ in kernels)
        self.fuse = _conv_bn_relu(cin + mid * (1 + len(kernels)), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        g = self.global_branch(torch.mean(x, dim=(2, 3), keepdim=True))  # (N, mid, 1, 1)
        feats = [x, g.expand(-1, -1, size[0], size[1])]
        for k, branch in zip(self.kernels, self.local_branches, strict=True):
            p = F.avg_pool2d(x, k, k, ceil_mode=True)  # (N, C, ceil(h/k), ceil(w/k))
            feats.append(F.interpolate(branch(p), size=size, mode="bilinear",
                                       align_corners=False))
        return self.fuse(torch.cat(feats, dim=1))


class FeatureFusion(nn.Module):
    """Add the H/8 detail branch to the upsampled H/32 context branch."""

    def __init__(self, high_ch: int, low_ch: int, out_ch: int) -> None:
        super().__init__()
        self.low_dw = _conv_bn_relu(low_ch, low_ch, 3, groups=low_ch)
        self.low_proj = _conv_bn_relu(low_ch, out_ch, 1, relu=False)
        self.high_proj = _conv_bn_relu(high_ch, out_ch, 1, relu=False)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(self.high_proj(high) + self.low_proj(self.low_dw(low)))


class FastSCNN(nn.Module):
    """Fast-SCNN. (N, 3, H, W) float32 normalised RGB -> (N, K, ceil(H/8), ceil(W/8))
    logits (or (N, K, H, W) with ``upsample=True``).

    ``width`` scales every channel count (1.0 = the paper's 1.1M parameters).
    ``aux=True`` adds two auxiliary heads used only in training mode (deep supervision on
    the detail and context branches); in ``eval()`` the forward returns logits only.
    """

    def __init__(self, num_classes: int, width: float = 1.0, upsample: bool = False,
                 aux: bool = False) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(8, round(n * width / 8) * 8)

        c32, c48, c64, c96, c128 = c(32), c(48), c(64), c(96), c(128)
        self.num_classes = num_classes
        self.upsample = upsample
        self.output_stride = 1 if upsample else 8
        self.downsample = nn.Sequential(
            _conv_bn_relu(3, c32, 3, 2),
            DSConv(c32, c48, 2),
            DSConv(c48, c64, 2),
        )
        self.global_features = nn.Sequential(
            InvertedResidual(c64, c64, 2), InvertedResidual(c64, c64, 1),
            InvertedResidual(c64, c64, 1),
            InvertedResidual(c64, c96, 2), InvertedResidual(c96, c96, 1),
            InvertedResidual(c96, c96, 1),
            InvertedResidual(c96, c128, 1), InvertedResidual(c128, c128, 1),
            InvertedResidual(c128, c128, 1),
            PyramidPooling(c128, c128),
        )
        self.fusion = FeatureFusion(c64, c128, c128)
        self.classifier = nn.Sequential(
            DSConv(c128, c128), DSConv(c128, c128),
            nn.Dropout2d(0.1),
            nn.Conv2d(c128, num_classes, 1),
        )
        self.aux_heads: nn.ModuleList | None = None
        if aux:
            self.aux_heads = nn.ModuleList([
                nn.Sequential(_conv_bn_relu(c64, 32, 3), nn.Conv2d(32, num_classes, 1)),
                nn.Sequential(_conv_bn_relu(c128, 32, 3), nn.Conv2d(32, num_classes, 1)),
            ])
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        size = x.shape[-2:]
        high = self.downsample(x)  # (N, 64, H/8, W/8)
        low = self.global_features(high)  # (N, 128, H/32, W/32)
        fused = self.fusion(high, low)  # (N, 128, H/8, W/8)
        out = self.classifier(fused)  # (N, K, H/8, W/8)
        if self.upsample:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.training and self.aux_heads is not None:
            return out, self.aux_heads[0](high), self.aux_heads[1](low)
        return out


@register("fastscnn", family="realtime",
          description="Fast-SCNN (BMVC 2019), ~1.2M params, two-branch, H/8 logits")
def fastscnn(num_classes: int, width: float = 1.0, upsample: bool = False,
             aux: bool = False) -> FastSCNN:
    """Fast-SCNN (~1.1M parameters at width 1.0)."""
    return FastSCNN(num_classes, width=width, upsample=upsample, aux=aux)
