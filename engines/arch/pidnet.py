"""PIDNet-S (Xu et al., CVPR 2023, "PIDNet: A Real-time Semantic Segmentation Network
Inspired by PID Controllers"), from scratch.

Three branches after a shared stem (input (N, 3, H, W), strides relative to the input)::

    stem  conv3x3 s2, conv3x3 s2, 2 x BasicBlock(32), 2 x BasicBlock(64) s2      H/8
    I     integral (context): BasicBlocks 128 s2 (H/16), 256 s2 (H/32),
          Bottleneck 512 s2 (H/64) -> PAPPM (-> 128 ch)
    P     proportional (detail): BasicBlocks 64 at H/8; after each I stage a pixel-
          attention-guided fusion (PagFM) pulls in the I features
    D     derivative (boundary): light blocks at H/8 plus 3x3 "difference" convs of I
    Bag   boundary-attention-guided fusion: sigmoid(D) weighs P against I
    head  BN-ReLU-conv3x3(128) -> BN-ReLU-conv1x1(K)                               H/8

Logits (N, K, ceil(H/8), ceil(W/8)), ``output_stride`` 8 (1 with ``upsample=True``).
``aux=True`` adds the P-branch auxiliary head (stride 8), returned after the logits in
training mode. The paper's boundary head (binary edge loss on the D branch) is left
out: the segmentation losses here have no edge targets, and the D branch still learns
end to end through the Bag fusion. PAPPM pooling uses fixed AveragePool kernels and a
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
from engines.arch.ddrnet import DDRHead, _bn_relu_conv, _stage
from engines.registry import register


class PagFM(nn.Module):
    """Pixel-attention-guided fusion: per pixel, sigma = sigmoid(<f(p), g(i)>) blends the
    detail features p (N, c, h, w) with upsampled context i (N, c, h', w'):
    ``(1 - sigma) * p + sigma * up(i)`` -> (N, c, h, w)."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.f_p = conv_bn_relu(c, mid, 1, relu=False)
        self.f_i = conv_bn_relu(c, mid, 1, relu=False)

    def forward(self, p: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        size = p.shape[-2:]
        q = resize_to(self.f_i(i), size)  # (N, mid, h, w)
        sigma = torch.sigmoid(torch.sum(self.f_p(p) * q, dim=1, keepdim=True))  # (N, 1, h, w)
        return (1 - sigma) * p + sigma * resize_to(i, size)


class PAPPM(nn.Module):
    """Parallel aggregation pyramid pooling (the DAPPM scales, fused in one grouped conv).
    (N, cin, h, w) -> (N, cout, h, w)."""

    _POOLS = ((5, 2), (9, 4), (17, 8))

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        n = len(self._POOLS) + 1  # pooled scales incl. the global one
        self.scale0 = _bn_relu_conv(cin, mid, 1)
        self.scales = nn.ModuleList(_bn_relu_conv(cin, mid, 1) for _ in range(n))
        self.process = nn.Sequential(
            nn.BatchNorm2d(mid * n), nn.ReLU(inplace=True),
            nn.Conv2d(mid * n, mid * n, 3, 1, 1, groups=n, bias=False))
        self.compression = _bn_relu_conv(mid * (n + 1), cout, 1)
        self.shortcut = _bn_relu_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.avg_pool2d(x, k, s, k // 2) for k, s in self._POOLS]
        pooled.append(torch.mean(x, dim=(2, 3), keepdim=True))  # (N, cin, 1, 1)
        base = self.scale0(x)  # (N, mid, h, w)
        branches = [resize_to(scale(p), size) + base
                    for p, scale in zip(pooled, self.scales, strict=True)]
        out = self.process(torch.cat(branches, dim=1))  # (N, mid * n, h, w)
        return self.compression(torch.cat([base, out], dim=1)) + self.shortcut(x)


class LightBag(nn.Module):
    """Boundary-attention-guided fusion: e = sigmoid(d) selects detail p at edges and
    context i inside regions. p, i, d: (N, c, h, w) -> (N, cout, h, w)."""

    def __init__(self, c: int, cout: int) -> None:
        super().__init__()
        self.conv_p = conv_bn_relu(c, cout, 1, relu=False)
        self.conv_i = conv_bn_relu(c, cout, 1, relu=False)

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        edge = torch.sigmoid(d)
        return self.conv_p((1 - edge) * i + p) + self.conv_i(i + edge * p)


class PIDNet(SegModel):
    """PIDNet-S. (N, 3, H, W) -> (N, K, H/8, W/8) logits; ``width`` scales planes (32)."""

    def __init__(self, num_classes: int, width: float = 1.0, upsample: bool = False,
                 aux: bool = False) -> None:
        super().__init__(num_classes, native_stride=8, upsample=upsample)
        p = scaled(32, width)
        self.stem = nn.Sequential(conv_bn_relu(3, p, 3, 2), conv_bn_relu(p, p, 3, 2),
                                  _stage(p, p, 2, 1))  # H/4
        self.layer2 = _stage(p, 2 * p, 2, 2)  # H/8
        # I branch
        self.layer3 = _stage(2 * p, 4 * p, 3, 2)  # H/16
        self.layer4 = _stage(4 * p, 8 * p, 3, 2)  # H/32
        self.layer5 = nn.Sequential(Bottleneck(8 * p, 8 * p, 2, relu_out=True),
                                    Bottleneck(16 * p, 8 * p, 1, relu_out=False))  # H/64
        # P branch
        self.layer3_p = _stage(2 * p, 2 * p, 2, 1)
        self.layer4_p = _stage(2 * p, 2 * p, 2, 1)
        self.layer5_p = Bottleneck(2 * p, 2 * p, 1, relu_out=False)  # -> 4p
        self.compression3 = conv_bn_relu(4 * p, 2 * p, 1, relu=False)
        self.compression4 = conv_bn_relu(8 * p, 2 * p, 1, relu=False)
        self.pag3, self.pag4 = PagFM(2 * p, p), PagFM(2 * p, p)
        # D branch
        self.layer3_d = BasicBlock(2 * p, p, relu_out=False)
        self.layer4_d = Bottleneck(p, p, 1, relu_out=False)  # -> 2p
        self.layer5_d = Bottleneck(2 * p, 2 * p, 1, relu_out=False)  # -> 4p
        self.diff3 = conv_bn_relu(4 * p, p, 3, relu=False)
        self.diff4 = conv_bn_relu(8 * p, 2 * p, 3, relu=False)
        self.spp = PAPPM(16 * p, scaled(96, width), 4 * p)
        self.bag = LightBag(4 * p, 4 * p)
        self.final = DDRHead(4 * p, 4 * p, num_classes)
        init_weights(self)
        if aux:
            self._make_aux([2 * p], [8], mid=4 * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x8 = F.relu(self.layer2(F.relu(self.stem(x))))  # (N, 2p, H/8, W/8)
        i = F.relu(self.layer3(x8))  # (N, 4p, H/16, W/16)
        p_ = self.pag3(self.layer3_p(x8), self.compression3(i))  # (N, 2p, H/8, W/8)
        size = p_.shape[-2:]
        d = self.layer3_d(x8) + resize_to(self.diff3(i), size)  # (N, p, H/8, W/8)
        aux_feature = F.relu(p_)
        i = F.relu(self.layer4(i))  # (N, 8p, H/32, W/32)
        p_ = self.pag4(self.layer4_p(F.relu(p_)), self.compression4(i))
        d = self.layer4_d(F.relu(d)) + resize_to(self.diff4(i), size)  # (N, 2p, H/8, W/8)
        p_ = self.layer5_p(F.relu(p_))  # (N, 4p, H/8, W/8)
        d = self.layer5_d(F.relu(d))  # (N, 4p, H/8, W/8)
        ctx = resize_to(self.spp(self.layer5(i)), size)  # (N, 4p, H/8, W/8)
        logits = self.final(self.bag(p_, ctx, d))  # (N, K, H/8, W/8)
        return self._outputs(self._finish(logits, x.shape[-2:]), [aux_feature])


@register("pidnet-s", family="realtime",
          description="PIDNet-S (CVPR 2023): P/I/D branches, PAPPM, boundary-guided fusion, H/8")
def pidnet_s(num_classes: int, width: float = 1.0, upsample: bool = False,
             aux: bool = False) -> PIDNet:
    """PIDNet-S (~7.6M parameters in the paper, boundary head excluded here)."""
    return PIDNet(num_classes, width, upsample, aux)
