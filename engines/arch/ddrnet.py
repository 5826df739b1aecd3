"""DDRNet-23-slim (Hong et al. 2021, "Deep Dual-resolution Networks"), from scratch.

Two branches after a shared stem (input (N, 3, H, W), strides relative to the input)::

    stem        conv3x3 s2, conv3x3 s2, 2 x BasicBlock(32), 2 x BasicBlock(64) s2   H/8
    low branch  2 x BasicBlock(128) s2 -> H/16, 2 x BasicBlock(256) s2 -> H/32,
                Bottleneck(256 -> 512) s2 -> H/64 -> DAPPM (-> 128 ch)
    high branch 2 x BasicBlock(64) -> 2 x BasicBlock(64) -> Bottleneck(64 -> 128), all H/8
    bilateral fusion after stages 3 and 4: low += strided convs(high),
                                            high += upsample(1x1 conv(low))
    head        high + upsample(DAPPM(low)) -> BN-ReLU-conv3x3(64) -> BN-ReLU-conv1x1(K)

Logits (N, K, ceil(H/8), ceil(W/8)), ``output_stride`` 8 (1 with ``upsample=True``).
``aux=True`` adds the paper's auxiliary head on the high branch after stage 3 (training
only). ``width`` scales the base width 32 (64 gives DDRNet-23, the non-slim model).

DAPPM pooling uses fixed AveragePool kernels (5/s2, 9/s4, 17/s8, padding k//2) plus a
global mean, so any input size and dynamic H / W export work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.arch._blocks import (
    BasicBlock,
    Bottleneck,
    SegModel,
    conv_bn_relu,
    init_weights,
    resize_to,
    scaled,
)
from engines.registry import register


def _bn_relu_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    """Pre-activation conv (BN, ReLU, conv) as used in DAPPM and the DDRNet heads."""
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, k, 1, k // 2, bias=False))


def _stage(block_in: int, block_out: int, blocks: int, stride: int) -> nn.Sequential:
    # The last block leaves out its ReLU: DDRNet adds the other branch before activating.
    layers = [BasicBlock(block_in, block_out, stride, relu_out=blocks > 1)]
    layers += [BasicBlock(block_out, block_out, 1, relu_out=i < blocks - 2)
               for i in range(blocks - 1)]
    return nn.Sequential(*layers)


class DAPPM(nn.Module):
    """Deep aggregation pyramid pooling. (N, cin, h, w) -> (N, cout, h, w).

    Scales: identity, avg-pool 5/s2, 9/s4, 17/s8 and global mean; each coarser scale is
    upsampled, added to the previous finer one and refined by a 3x3 conv (hierarchical
    residual fusion), then all five are concatenated and compressed, plus a 1x1 shortcut.
    """

    _POOLS = ((5, 2), (9, 4), (17, 8))

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.scale0 = _bn_relu_conv(cin, mid, 1)
        n = len(self._POOLS) + 1  # pooled scales incl. the global one
        self.scales = nn.ModuleList(_bn_relu_conv(cin, mid, 1) for _ in range(n))
        self.process = nn.ModuleList(_bn_relu_conv(mid, mid, 3) for _ in range(n))
        self.compression = _bn_relu_conv(mid * (n + 1), cout, 1)
        self.shortcut = _bn_relu_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.avg_pool2d(x, k, s, k // 2) for k, s in self._POOLS]  # count_include_pad
        pooled.append(torch.mean(x, dim=(2, 3), keepdim=True))  # (N, cin, 1, 1)
        outs = [self.scale0(x)]  # (N, mid, h, w)
        for p, scale, process in zip(pooled, self.scales, self.process, strict=True):
            outs.append(process(resize_to(scale(p), size) + outs[-1]))
        return self.compression(torch.cat(outs, dim=1)) + self.shortcut(x)


class DDRHead(nn.Sequential):
    """BN-ReLU-conv3x3 (mid), BN-ReLU-conv1x1 (K, with bias). (N, cin, h, w) -> (N, K, h, w)."""

    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__(
            _bn_relu_conv(cin, mid, 3),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, num_classes, 1),
        )


class DDRNet(SegModel):
    """DDRNet-23(-slim). (N, 3, H, W) -> (N, K, H/8, W/8) logits."""

    def __init__(self, num_classes: int, width: float = 1.0, upsample: bool = False,
                 aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=8, upsample=upsample)
        p = scaled(32, width)  # "planes": 32 for -slim, 64 for DDRNet-23
        hp = 2 * p  # high-resolution branch width
        self.stem = nn.Sequential(
            conv_bn_relu(3, p, 3, 2), conv_bn_relu(p, p, 3, 2),  # H/4
            _stage(p, p, 2, 1),
        )
        self.layer2 = _stage(p, 2 * p, 2, 2)  # H/8
        self.layer3 = _stage(2 * p, 4 * p, 2, 2)  # H/16 (low)
        self.layer3_ = _stage(2 * p, hp, 2, 1)  # H/8 (high)
        self.down3 = conv_bn_relu(hp, 4 * p, 3, 2, relu=False)
        self.compression3 = conv_bn_relu(4 * p, hp, 1, relu=False)
        self.layer4 = _stage(4 * p, 8 * p, 2, 2)  # H/32 (low)
        self.layer4_ = _stage(hp, hp, 2, 1)  # H/8 (high)
        self.down4 = nn.Sequential(conv_bn_relu(hp, 4 * p, 3, 2),
                                   conv_bn_relu(4 * p, 8 * p, 3, 2, relu=False))
        self.compression4 = conv_bn_relu(8 * p, hp, 1, relu=False)
        self.layer5_ = Bottleneck(hp, hp, 1, expansion=2, relu_out=False)  # H/8, 2*hp
        self.layer5 = Bottleneck(8 * p, 8 * p, 2, expansion=2, relu_out=False)  # H/64, 16p
        self.spp = DAPPM(16 * p, scaled(128, width), 4 * p)
        head = 2 * p
        self.final = DDRHead(4 * p, head, num_classes)
        init_weights(self)
        if aux:
            self._make_aux([hp], [8], mid=head)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x8 = self.layer2(F.relu(self.stem(x)))  # (N, 2p, H/8, W/8), pre-activation
        low = self.layer3(F.relu(x8))  # (N, 4p, H/16, W/16)
        high = self.layer3_(F.relu(x8))  # (N, 2p, H/8, W/8)
        low, high = (low + self.down3(F.relu(high)),
                     high + resize_to(self.compression3(F.relu(low)), high.shape[-2:]))
        aux_feature = high
        low = self.layer4(F.relu(low))  # (N, 8p, H/32, W/32)
        high = self.layer4_(F.relu(high))  # (N, 2p, H/8, W/8)
        low, high = (low + self.down4(F.relu(high)),
                     high + resize_to(self.compression4(F.relu(low)), high.shape[-2:]))
        high = self.layer5_(F.relu(high))  # (N, 4p, H/8, W/8)
        ctx = self.spp(self.layer5(F.relu(low)))  # (N, 4p, H/64, W/64)
        logits = self.final(high + resize_to(ctx, high.shape[-2:]))  # (N, K, H/8, W/8)
        return self._outputs(self._finish(logits, x.shape[-2:]), [F.relu(aux_feature)])


@register("ddrnet23-slim", family="realtime",
          description="DDRNet-23-slim (2021), dual-resolution branches + DAPPM, ~5.7M params, H/8")
def ddrnet23_slim(num_classes: int, width: float = 1.0, upsample: bool = False,
                  aux: bool = False) -> DDRNet:
    """DDRNet-23-slim (``width=2`` gives DDRNet-23)."""
    return DDRNet(num_classes, width, upsample, aux)
