"""Training losses: class-weighted cross-entropy with optional OHEM, and class weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.train_config import CLASS_WEIGHTINGS


def class_frequencies(labels: Sequence[np.ndarray], num_classes: int) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Pixel counts per class, and pixels of the images in which each class appears.

    Args:
        labels: (H, W) uint8 maps with ids 0..K-1 (other ids are ignored).
    Returns:
        (count, image_pixels), both (K,) int64.
    """
    count = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for lbl in labels:
        c = np.bincount(lbl.reshape(-1), minlength=256)[:num_classes]
        count += c
        image_pixels += (c > 0) * lbl.size
    return count, image_pixels


def median_frequency_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015): ``w_c = median(f) / f_c`` with
    ``f_c = pixels of c / pixels of images containing c``. Absent classes get weight 0.
    Returns (K,) float32.
    """
    count, image_pixels = class_frequencies(labels, num_classes)
    present = image_pixels > 0
    freq = np.zeros(num_classes, np.float64)
    freq[present] = count[present] / image_pixels[present]
    med = np.median(freq[present & (freq > 0)])
    w = np.zeros(num_classes, np.float64)
    nz = freq > 0
    w[nz] = med / freq[nz]
    return w.astype(np.float32)


def class_weights(kind: str, labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray | None:
    """(K,) float32 loss weights for ``kind`` in :data:`CLASS_WEIGHTINGS` (None for "none").

    ``mfb`` is median frequency balancing; ``sqrt-mfb`` its square root, a softer version
    (on CamVid the weight ratio drops from ~60x to ~8x), which over-predicts the rare
    classes less and so loses less IoU on the large ones.
    """
    if kind == "none":
        return None
    if kind not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting {kind!r} unknown; valid: {', '.join(CLASS_WEIGHTINGS)}")
    w = median_frequency_weights(labels, num_classes)
    return np.sqrt(w).astype(np.float32) if kind == "sqrt-mfb" else w


class SegLoss(nn.Module):
    """Cross-entropy on logits upsampled to the label size, with ignore, class weights,
    optional OHEM and auxiliary heads.

    ``forward(outputs, target)``: ``outputs`` is (N, K, h, w) logits or a tuple
    (main, aux1, ...) of them; ``target`` is (N, H, W) int64. Aux losses are weighted by
    ``aux_weight``. With ``ohem_thresh`` set, only pixels whose true-class probability is
    below the threshold count (at least ``ohem_min_kept`` per batch), as in BiSeNet.
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255,
                 aux_weight: float = 0.4, ohem_thresh: float | None = None,
                 ohem_min_kept: int = 100_000) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                   align_corners=False)
        logits = logits.float()
        if self.ohem_thresh is None:
            return F.cross_entropy(logits, target, weight=self.weight,
                                   ignore_index=self.ignore_index)
        # Hard pixels are chosen on the plain loss -log p(true class): the class weights
        # scale what a chosen pixel contributes, not whether it is chosen.
        pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                                reduction="none").reshape(-1)
        flat = target.reshape(-1)
        valid = flat != self.ignore_index
        pixel, flat = pixel[valid], flat[valid]
        if pixel.numel() == 0:
            return logits.sum() * 0.0
        thresh = -torch.log(torch.tensor(self.ohem_thresh, device=pixel.device))
        chosen = (pixel > thresh).nonzero().squeeze(1)
        if chosen.numel() < min(self.ohem_min_kept, pixel.numel()):
            chosen = pixel.topk(min(self.ohem_min_kept, pixel.numel())).indices
        if self.weight is None:
            return pixel[chosen].mean()
        w = self.weight[flat[chosen]]
        return (pixel[chosen] * w).sum() / w.sum()

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self._single(outputs, target)
        main, *aux = outputs
        loss = self._single(main, target)
        for a in aux:
            loss = loss + self.aux_weight * self._single(a, target)
        return loss
