"""Backbones for the classic decoders: ResNet-18/34 and MobileNetV2, from scratch.

An encoder maps (N, 3, H, W) to five feature maps, finest first::

    [f2, f4, f8, f16, f32]   with f_s of shape (N, encoder.channels[i], ceil(H/s), ceil(W/s))

``output_stride`` 16 or 8 replaces the stride of the last one or two stages by dilation
(2, then 4), as DeepLab and PSPNet do; the features then keep their size from that stage
on and ``encoder.strides`` says the real stride of each. No pretrained weights are used
(nothing can be downloaded on the vehicle build machines): ``width`` scales every channel
count so small variants train quickly from scratch.

This module registers no model; :func:`build_encoder` is what the decoders call.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.arch._blocks import BasicBlock, conv_bn_relu, init_weights, scaled

ENCODERS = ("resnet18", "resnet34", "mobilenetv2")
_RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class Encoder(nn.Module):
    """Common interface: ``channels`` and ``strides`` of the five returned features."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def _dilations(output_stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, dilation) of the stride-16 and stride-32 stages for an output stride."""
    if output_stride == 32:
        return (2, 1), (2, 1)
    if output_stride == 16:
        return (2, 1), (1, 2)
    if output_stride == 8:
        return (1, 2), (1, 4)
    raise ValueError(f"encoder output_stride must be 8, 16 or 32, got {output_stride}")


def _real_strides(output_stride: int) -> tuple[int, ...]:
    return tuple(min(s, output_stride) for s in (2, 4, 8, 16, 32))


class ResNetEncoder(Encoder):
    """ResNet-18/34 (He et al. 2016) with BasicBlocks.

    Stem: 7x7 s2 conv (f2, 64 ch), 3x3 s2 max-pool, then stages of 64/128/256/512 channels
    (x ``width``) at strides 4/8/16/32.
    """

    def __init__(self, depths: tuple[int, int, int, int], width: float = 1.0,
                 output_stride: int = 32) -> None:
        super().__init__()
        c = [scaled(n, width) for n in (64, 64, 128, 256, 512)]
        (s16, d16), (s32, d32) = _dilations(output_stride)
        self.stem = conv_bn_relu(3, c[0], 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(c[0], c[1], depths[0], 1, 1)
        self.layer2 = self._stage(c[1], c[2], depths[1], 2, 1)
        self.layer3 = self._stage(c[2], c[3], depths[2], s16, d16)
        self.layer4 = self._stage(c[3], c[4], depths[3], s32, d32)
        self.channels = tuple(c)
        self.strides = _real_strides(output_stride)
        init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride, dilation)]
        layers += [BasicBlock(cout, cout, 1, dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.stem(x)  # (N, c0, H/2, W/2)
        f4 = self.layer1(self.pool(f2))  # (N, c1, H/4, W/4)
        f8 = self.layer2(f4)  # (N, c2, H/8, W/8)
        f16 = self.layer3(f8)  # (N, c3, H/16, W/16) at output_stride 32
        f32 = self.layer4(f16)  # (N, c4, H/32, W/32) at output_stride 32
        return [f2, f4, f8, f16, f32]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x t), 3x3 depthwise (stride, dilation), 1x1 project.

    Uses ReLU instead of ReLU6 (same accuracy from scratch; one op fewer for INT8
    calibration to clip).
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int,
                 dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, 1))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, dilation=dilation, groups=hidden),
            conv_bn_relu(hidden, cout, 1, relu=False),
        ]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


class MobileNetV2Encoder(Encoder):
    """MobileNetV2 (Sandler et al. 2018) feature extractor without the final 1280 conv.

    Features: f2 16 ch, f4 24, f8 32, f16 96, f32 320 (x ``width``).
    """

    # (expand t, channels c, repeats n, stride s) from the paper, grouped by output stride.
    _CFG = (
        (1, 16, 1, 1),   # -> f2
        (6, 24, 2, 2),   # -> f4
        (6, 32, 3, 2),   # -> f8
        (6, 64, 4, 2),
        (6, 96, 3, 1),   # -> f16
        (6, 160, 3, 2),
        (6, 320, 1, 1),  # -> f32
    )
    _TAPS = (0, 1, 2, 4, 6)

    def __init__(self, width: float = 1.0, output_stride: int = 32) -> None:
        super().__init__()
        (s16, d16), (s32, d32) = _dilations(output_stride)
        cin = scaled(32, width)
        self.stem = conv_bn_relu(3, cin, 3, 2)
        stages: list[nn.Sequential] = []
        dilation = 1
        for i, (t, c, n, paper_stride) in enumerate(self._CFG):
            cout = scaled(c, width)
            if i == 3:  # first stride-16 stage
                s, d_next = s16, d16
            elif i == 5:  # first stride-32 stage
                s, d_next = s32, d32
            else:
                s, d_next = paper_stride, dilation
            blocks = [InvertedResidual(cin, cout, s, t, dilation)]
            dilation = d_next
            blocks += [InvertedResidual(cout, cout, 1, t, dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(scaled(self._CFG[i][1], width) for i in self._TAPS)
        self.strides = _real_strides(output_stride)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)  # (N, 32w, H/2, W/2)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._TAPS:
                feats.append(x)
        return feats  # [f2, f4, f8, f16, f32]


def build_encoder(name: str, *, width: float = 1.0, output_stride: int = 32) -> Encoder:
    """Build encoder ``name`` (one of :data:`ENCODERS`)."""
    if name in _RESNET_DEPTHS:
        return ResNetEncoder(_RESNET_DEPTHS[name], width, output_stride)
    if name == "mobilenetv2":
        return MobileNetV2Encoder(width, output_stride)
    raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}")
