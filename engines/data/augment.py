"""Training augmentation for (image, label) pairs, deterministic given a NumPy Generator.

Order: random scale -> pad (image with the mean colour, label with IGNORE) -> random crop
-> horizontal flip -> colour jitter (on the crop only, which is cheaper) -> optional
blur (:data:`PHOTOMETRIC` names two strengths of the last two). Optionally, a
second view of another frame is then mixed in (:func:`mix_views`: ClassMix or CutMix), so
that objects appear in streets and beside neighbours they never had in the recordings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engines.data.readers import IGNORE

MIX_MODES = ("classmix", "cutmix")
MIX_PROB = 0.5  # the default share of samples mixed

# Photometric strengths (AugmentConfig fields). "standard" is the jitter every shipped recipe
# used; "strong" is about the strength of mmsegmentation's PhotoMetricDistortion (contrast
# and saturation 0.5-1.5, hue +-18 degrees) plus a light Gaussian blur on a fifth of the
# samples: the weather, exposure and optics of a drive the training drives do not show.
PHOTOMETRIC = {
    "standard": {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25, "hue": 0.0,
                 "blur": 0.0},
    "strong": {"brightness": 0.35, "contrast": 0.5, "saturation": 0.5, "hue": 0.05,
               "blur": 0.2},
}
BLUR_SIGMA = (0.5, 1.5)  # Gaussian blur sigma range, pixels


def photometric(name: str) -> dict[str, float]:
    """The :class:`AugmentConfig` colour fields of a :data:`PHOTOMETRIC` strength.

    Raises:
        ValueError: an unknown name (the valid ones listed).
    """
    if name not in PHOTOMETRIC:
        raise ValueError(f"photometric must be one of {sorted(PHOTOMETRIC)}, got {name!r}")
    return dict(PHOTOMETRIC[name])


def check_mix(mix: str | None, mix_prob: float) -> None:
    """Raise ValueError for a mix mode not in :data:`MIX_MODES` (None: no mixing) or a
    mixing probability outside [0, 1]."""
    if mix is not None and mix not in MIX_MODES:
        raise ValueError(f"mix must be one of {MIX_MODES} or None, got {mix!r}")
    if not 0 <= mix_prob <= 1:
        raise ValueError(f"mix_prob must be a probability in [0, 1], got {mix_prob}")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation parameters.

    Attributes:
        crop: output (H, W).
        scale: range of the random resize factor, applied to both sides.
        hflip: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strengths; each factor is drawn from
            ``[1 - s, 1 + s]`` (0 disables).
        hue: hue shift, a fraction of the colour circle drawn from ``[-hue, hue]`` (0
            disables; with 0 the jitter draws exactly what it drew before hue existed).
        blur: probability of a Gaussian blur (sigma in :data:`BLUR_SIGMA`) after the jitter.
        pad_rgb: fill colour for padding (RGB uint8), the dataset mean by default so that
            padding becomes ~0 after normalisation.
        mix: ``None``, ``"classmix"`` (the pixels of half the classes of another view are
            pasted, Olsson et al. 2021) or ``"cutmix"`` (a box of another view, a quarter
            to half of the crop, Yun et al. 2019); see :func:`mix_views`.
        mix_prob: probability that a sample is mixed (when ``mix`` is set).
    """

    crop: tuple[int, int] = (360, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.0
    blur: float = 0.0
    pad_rgb: tuple[int, int, int] = (124, 116, 104)
    mix: str | None = None
    mix_prob: float = MIX_PROB

    def __post_init__(self) -> None:
        if len(self.crop) != 2 or min(self.crop) <= 0:
            raise ValueError(f"crop must be (H, W) > 0, got {self.crop}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range must be 0 < lo <= hi, got {self.scale}")
        check_mix(self.mix, self.mix_prob)
        if not (0 <= self.hue <= 0.5 and 0 <= self.blur <= 1):
            raise ValueError(f"hue must be in [0, 0.5] and blur a probability, got "
                             f"{self.hue} and {self.blur}")


def random_scale(img: np.ndarray, lbl: np.ndarray, factor: float) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Resize image bilinearly and label with nearest neighbour by ``factor``, both on
    half-pixel centres (``INTER_NEAREST_EXACT``; plain ``INTER_NEAREST`` samples
    ``floor(x * s)``, which puts the labels up to half a pixel up-left of the image)."""
    if factor == 1.0:
        return img, lbl
    h, w = lbl.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))  # cv2 takes (W, H)
    return (cv2.resize(img, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(lbl, size, interpolation=cv2.INTER_NEAREST_EXACT))


def check_crop_fits(cfg: AugmentConfig, shapes: Sequence[tuple[int, ...]]) -> None:
    """Refuse a crop that no frame of ``shapes`` ((H, W, ...) each) fills even at the
    largest scale: every crop would hold padding (ignored pixels), at the memory and
    time cost of its full size.

    Raises:
        ValueError: naming ``--crop``, the largest scaled frame and a crop that fits.
    """
    scaled = {(max(1, round(s[0] * cfg.scale[1])), max(1, round(s[1] * cfg.scale[1])))
              for s in shapes}
    if scaled and not any(cfg.crop[0] <= h and cfg.crop[1] <= w for h, w in scaled):
        h, w = max(scaled, key=lambda hw: hw[0] * hw[1])
        raise ValueError(f"--crop {cfg.crop[0]}x{cfg.crop[1]} is larger than any training "
                         f"frame even at the largest --scale ({cfg.scale[1]:g}: {h}x{w}), "
                         f"so every crop would hold padding; use a crop no larger than "
                         f"{h}x{w}")


def pad_to(img: np.ndarray, lbl: np.ndarray, crop: tuple[int, int],
           pad_rgb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right so both sides are at least ``crop``; label padding is IGNORE."""
    h, w = lbl.shape
    ph, pw = max(0, crop[0] - h), max(0, crop[1] - w)
    if ph == 0 and pw == 0:
        return img, lbl
    img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=pad_rgb)
    lbl = cv2.copyMakeBorder(lbl, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
    return img, lbl


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation (and, with ``cfg.hue``, hue) jitter in random order;
    uint8 RGB in and out."""
    out = img.astype(np.float32)
    ops = rng.permutation(4 if cfg.hue > 0 else 3)
    for op in ops:
        if op == 0 and cfg.brightness > 0:
            out *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        elif op == 1 and cfg.contrast > 0:
            f = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
            mean = out.mean()
            out = (out - mean) * f + mean
        elif op == 2 and cfg.saturation > 0:
            f = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
            gray = out @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
            out = (out - gray[..., None]) * f + gray[..., None]
        elif op == 3:
            out = shift_hue(out, float(rng.uniform(-cfg.hue, cfg.hue)))
    return np.clip(out, 0, 255).astype(np.uint8)


def shift_hue(rgb: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of (H, W, 3) float32 RGB in [0, 255] (values outside are clipped) by
    ``shift`` turns of the colour circle; saturation and value are kept."""
    hsv = cv2.cvtColor(np.clip(rgb, 0, 255) / np.float32(255), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + np.float32(shift * 360)) % np.float32(360)  # degrees
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.float32(255)


def augment(img: np.ndarray, lbl: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One random training view.

    Args:
        img: (H, W, 3) uint8 RGB.
        lbl: (H, W) uint8 class ids / IGNORE.
        rng: the only source of randomness (same generator state -> same output).
    Returns:
        (crop_h, crop_w, 3) uint8 RGB and (crop_h, crop_w) uint8 labels.
    """
    img, lbl = random_scale(img, lbl, float(rng.uniform(*cfg.scale)))
    img, lbl = pad_to(img, lbl, cfg.crop, cfg.pad_rgb)
    h, w = lbl.shape
    ch, cw = cfg.crop
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    img, lbl = img[y:y + ch, x:x + cw], lbl[y:y + ch, x:x + cw]
    if rng.random() < cfg.hflip:
        img, lbl = img[:, ::-1], lbl[:, ::-1]
    img = color_jitter(img, rng, cfg)
    if cfg.blur > 0 and rng.random() < cfg.blur:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*BLUR_SIGMA)))
    return np.ascontiguousarray(img), np.ascontiguousarray(lbl)


def mix_views(img: np.ndarray, lbl: np.ndarray, img_b: np.ndarray, lbl_b: np.ndarray,
              rng: np.random.Generator, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Paste part of view B onto view A; labels follow their pixels exactly.

    ``classmix``: the classes present in B (IGNORE excluded) are shuffled and the first
    half (rounded up) pasted, pixel for pixel, so whole objects and surfaces of B land in
    A's scene; B's ignored pixels (void, padding) never cover A. ``cutmix``: a box of B
    whose area is a uniform 25-50 % of the crop, with the crop's aspect ratio, at a
    uniform position.

    Args:
        img, img_b: (H, W, 3) uint8 RGB, the same shape.
        lbl, lbl_b: (H, W) uint8 class ids / IGNORE.
        rng: the only source of randomness.
        mode: ``"classmix"`` or ``"cutmix"``.
    Returns:
        the mixed (H, W, 3) uint8 image and (H, W) uint8 labels (new arrays).
    """
    if img.shape != img_b.shape or lbl.shape != lbl_b.shape:
        raise ValueError(f"views to mix must have one shape, got {img.shape} and {img_b.shape}")
    h, w = lbl.shape
    if mode == "classmix":
        present = np.unique(lbl_b)
        present = present[present != IGNORE]
        if present.size == 0:
            return img.copy(), lbl.copy()
        chosen = rng.permutation(present)[:(present.size + 1) // 2]
        mask = np.isin(lbl_b, chosen)  # (H, W) bool
    elif mode == "cutmix":
        side = float(np.sqrt(rng.uniform(0.25, 0.5)))
        bh, bw = max(1, round(h * side)), max(1, round(w * side))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask = np.zeros((h, w), bool)
        mask[y:y + bh, x:x + bw] = True
    else:
        raise ValueError(f"mix mode must be one of {MIX_MODES}, got {mode!r}")
    return (np.where(mask[..., None], img_b, img), np.where(mask, lbl_b, lbl))
