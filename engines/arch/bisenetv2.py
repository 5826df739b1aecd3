"""BiSeNetV2 (Yu et al. 2021, "BiSeNet V2: Bilateral Network with Guided Aggregation").

Input (N, 3, H, W); strides relative to the input::

    detail branch    wide and shallow: 3 stages of 3x3 convs, 64/64/128 ch    -> H/8
    semantic branch  narrow and deep: stem (16 ch, H/4), gather-and-expansion
                     layers 32 (H/8), 64 (H/16), 128 (H/32), context embedding  -> H/32
    aggregation      bilateral guided aggregation (BGA): each branch gates the
                     other through a sigmoid, at H/8 and H/32, summed at H/8
    head             3x3 conv (1024 x width) + 1x1 classifier                  -> H/8

Logits (N, K, ceil(H/8), ceil(W/8)), ``output_stride`` 8 (1 with ``upsample=True``).
``aux=True`` adds the paper's booster heads on the semantic stages (strides 4, 8, 16, 32),
returned after the logits in training mode only. Every op exports to ONNX/TensorRT:
Conv, depthwise Conv, MaxPool/AveragePool 3x3 s2, ReduceMean, Sigmoid, Mul, Resize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.arch._blocks import SegHead, SegModel, conv_bn_relu, init_weights, resize_to, scaled
from engines.registry import register


class StemBlock(nn.Module):
    """3x3 s2 conv, then [1x1 + 3x3 s2 conv] || [3x3 s2 max-pool], concat, 3x3 conv.
    (N, 3, H, W) -> (N, c, H/4, W/4)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(3, c, 3, 2)
        self.left = nn.Sequential(conv_bn_relu(c, c // 2, 1), conv_bn_relu(c // 2, c, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = conv_bn_relu(2 * c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expansion layer: 3x3 conv, depthwise 3x3 expanding x6 (stride 1 or 2,
    with a second depthwise conv when strided), 1x1 projection, residual, ReLU.
    (N, cin, h, w) -> (N, cout, ceil(h/s), ceil(w/s))."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [
            conv_bn_relu(cin, cin, 3),
            conv_bn_relu(cin, mid, 3, stride, groups=cin, relu=False),
        ]
        if stride == 2:
            layers.append(conv_bn_relu(mid, mid, 3, groups=mid, relu=False))
        layers.append(conv_bn_relu(mid, cout, 1, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 2 or cin != cout:
            self.shortcut = nn.Sequential(
                conv_bn_relu(cin, cin, 3, stride, groups=cin, relu=False),
                conv_bn_relu(cin, cout, 1, relu=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global mean -> BN -> 1x1 conv, broadcast-added to the input, then 3x3 conv.
    (N, c, h, w) -> (N, c, h, w)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.gap_conv = conv_bn_relu(c, c, 1)
        self.out = conv_bn_relu(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gap_conv(self.bn(torch.mean(x, dim=(2, 3), keepdim=True)))  # (N, c, 1, 1)
        return self.out(x + g)


class BilateralGuidedAggregation(nn.Module):
    """BGA. detail (N, c, H/8, W/8) + semantic (N, c, H/32, W/32) -> (N, c, H/8, W/8)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(conv_bn_relu(c, c, 3, groups=c, relu=False),
                                         nn.Conv2d(c, c, 1, bias=False))
        self.detail_down = nn.Sequential(conv_bn_relu(c, c, 3, 2, relu=False),
                                         nn.AvgPool2d(3, 2, 1))
        self.semantic_up = conv_bn_relu(c, c, 3, relu=False)
        self.semantic_keep = nn.Sequential(conv_bn_relu(c, c, 3, groups=c, relu=False),
                                           nn.Conv2d(c, c, 1, bias=False))
        self.fuse = conv_bn_relu(c, c, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        gate_hi = torch.sigmoid(resize_to(self.semantic_up(semantic), size))  # (N, c, H/8, ..)
        high = self.detail_keep(detail) * gate_hi
        low = self.detail_down(detail)  # (N, c, H/32, W/32)
        low = low * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(high + resize_to(low, size))


class BiSeNetV2(SegModel):
    """BiSeNetV2. ``width`` scales every channel count (1.0: the paper's network)."""

    def __init__(self, num_classes: int, width: float = 1.0, upsample: bool = False,
                 aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=8, upsample=upsample)
        d64, d128 = scaled(64, width), scaled(128, width)
        self.detail = nn.Sequential(
            conv_bn_relu(3, d64, 3, 2), conv_bn_relu(d64, d64, 3),  # H/2
            conv_bn_relu(d64, d64, 3, 2), conv_bn_relu(d64, d64, 3), conv_bn_relu(d64, d64, 3),
            conv_bn_relu(d64, d128, 3, 2), conv_bn_relu(d128, d128, 3),
            conv_bn_relu(d128, d128, 3),  # H/8
        )
        s16, s32, s64 = scaled(16, width), scaled(32, width), scaled(64, width)
        self.stem = StemBlock(s16)  # H/4
        self.s3 = nn.Sequential(GatherExpand(s16, s32, 2), GatherExpand(s32, s32))  # H/8
        self.s4 = nn.Sequential(GatherExpand(s32, s64, 2), GatherExpand(s64, s64))  # H/16
        self.s5 = nn.Sequential(GatherExpand(s64, d128, 2),
                                *(GatherExpand(d128, d128) for _ in range(3)))  # H/32
        self.context = ContextEmbedding(d128)
        self.bga = BilateralGuidedAggregation(d128)
        self.head = SegHead(d128, scaled(1024, width), num_classes)
        init_weights(self)
        if aux:
            self._make_aux([s16, s32, s64, d128], [4, 8, 16, 32], mid=scaled(128, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        detail = self.detail(x)  # (N, 128, H/8, W/8)
        f4 = self.stem(x)  # (N, 16, H/4, W/4)
        f8 = self.s3(f4)  # (N, 32, H/8, W/8)
        f16 = self.s4(f8)  # (N, 64, H/16, W/16)
        f32 = self.s5(f16)  # (N, 128, H/32, W/32)
        logits = self.head(self.bga(detail, self.context(f32)))  # (N, K, H/8, W/8)
        return self._outputs(self._finish(logits, x.shape[-2:]), [f4, f8, f16, f32])


@register("bisenetv2", family="realtime",
          description="BiSeNetV2 (2021): detail + semantic branches, guided aggregation, H/8")
def bisenetv2(num_classes: int, width: float = 1.0, upsample: bool = False,
              aux: bool = False) -> BiSeNetV2:
    """BiSeNetV2 (~3.4M parameters at width 1.0, ~3.6M with aux heads)."""
    return BiSeNetV2(num_classes, width, upsample, aux)
