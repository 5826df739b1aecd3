"""Layers shared by the architectures in ``engines/arch`` (not a registry module).

Every layer here exports to ONNX opset >= 13 with ops that ONNX Runtime and TensorRT
run natively: Conv (BatchNorm is folded at export), Relu, Add, Mul, Sigmoid, Concat,
MaxPool / AveragePool with fixed kernels, ReduceMean, and bilinear Resize with
``align_corners=False`` (ONNX ``half_pixel``).

Output contract shared by every model built on :class:`SegModel`:

* ``model.eval()``: ``model(x)`` returns logits ``(N, K, ceil(H/s), ceil(W/s))`` float32,
  where ``s = model.output_stride`` (1 when the model upsamples to the input itself).
* ``model.train()`` with ``aux=True`` requested at construction: ``model(x)`` returns the
  tuple ``(logits, aux_1, ..., aux_n)``; each ``aux_i`` is ``(N, K, h_i, w_i)`` logits at
  an intermediate stride (listed in ``model.aux_strides``). The trainer upsamples each to
  the label size and adds ``aux_weight * CE(aux_i, labels)`` (0.4 is the usual weight).
  Without ``aux=True`` (the default) training mode returns plain logits as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled(channels: int, width: float, *, minimum: int = 8, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least ``minimum``)."""
    return max(minimum, round(channels * width / divisor) * divisor)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, *, dilation: int = 1,
                 groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv k x k ('same' padding for odd k, dilation aware) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation=dilation, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (N, C, h, w) -> (N, C, *size), ``align_corners=False``.

    Sizes are taken from a tensor's shape rather than a fixed scale factor so that inputs
    whose sides are not multiples of 32 (360 x 480) line up with their skip connections.
    """
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegHead(nn.Sequential):
    """Classifier: 3x3 conv + BN + ReLU, dropout, 1x1 conv to K classes. (N, C, h, w) ->
    (N, K, h, w)."""

    def __init__(self, cin: int, mid: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(
            conv_bn_relu(cin, mid, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(mid, num_classes, 1),
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with identity (or 1x1 projection) shortcut.

    (N, cin, h, w) -> (N, cout, ceil(h/stride), ceil(w/stride)). ``relu_out=False``
    leaves the final ReLU out (DDRNet fuses branches before it).
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1,
                 relu_out: bool = True) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, 3, stride, dilation=dilation)
        self.conv2 = conv_bn_relu(cout, cout, 3, dilation=dilation, relu=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False)
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x)) + self.shortcut(x)
        return F.relu(out) if self.relu_out else out


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (stride), 1x1 expand by ``expansion``.

    (N, cin, h, w) -> (N, mid * expansion, ceil(h/stride), ceil(w/stride)).
    """

    def __init__(self, cin: int, mid: int, stride: int = 1, expansion: int = 2,
                 relu_out: bool = True) -> None:
        super().__init__()
        cout = mid * expansion
        self.body = nn.Sequential(
            conv_bn_relu(cin, mid, 1),
            conv_bn_relu(mid, mid, 3, stride),
            conv_bn_relu(mid, cout, 1, relu=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False)
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x) + self.shortcut(x)
        return F.relu(out) if self.relu_out else out


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convs, BN to identity: the usual from-scratch start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegModel(nn.Module):
    """Base for the segmentation networks: output stride, optional auxiliary heads.

    ``native_stride`` is the stride of the classifier's logits; with ``upsample=True``
    the model resizes them to the input size itself and ``output_stride`` becomes 1.
    Subclasses call :meth:`_make_aux` in ``__init__`` when ``aux=True`` with the channel
    counts and strides of the features their aux heads read, and end ``forward`` with
    ``return self._outputs(self._finish(logits, x.shape[-2:]), [feature, ...])``.
    """

    def __init__(self, num_classes: int, native_stride: int, upsample: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.upsample = upsample
        self.output_stride = 1 if upsample else native_stride
        self.aux_heads: nn.ModuleList | None = None
        self.aux_strides: tuple[int, ...] = ()

    def _make_aux(self, channels: list[int], strides: list[int], mid: int = 64) -> None:
        self.aux_heads = nn.ModuleList(SegHead(c, mid, self.num_classes) for c in channels)
        self.aux_strides = tuple(strides)

    def _finish(self, logits: torch.Tensor, input_size: torch.Size) -> torch.Tensor:
        """Upsample to the input size when built with ``upsample=True``, else as is."""
        return resize_to(logits, input_size) if self.upsample else logits

    def _outputs(self, logits: torch.Tensor, aux_features: list[torch.Tensor]
                 ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits in eval mode; ``(logits, aux_1, ...)`` in training mode with aux heads."""
        if self.training and self.aux_heads is not None:
            aux = [head(f) for head, f in zip(self.aux_heads, aux_features, strict=True)]
            return (logits, *aux)
        return logits
