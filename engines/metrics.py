"""Segmentation metrics from one confusion matrix accumulated over a whole split.

mIoU is computed from the split-level confusion matrix (the standard protocol), not
averaged per image. Pixels whose ground truth is the ignore id are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def fmt_miou(miou: float) -> str:
    """An mIoU (a 0..1 fraction) as every command prints it: percent with the sign, two
    decimals (``0.6734`` -> ``"67.34 %"``)."""
    return f"{miou * 100:.2f} %"


class ConfusionMatrix:
    """(K, K) int64 counts; row = ground truth, column = prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image or batch.

        Args:
            pred: integer class ids, any shape.
            target: same shape; ``ignore_index`` pixels are skipped.
        Raises:
            ValueError: shape mismatch, or a target/prediction id outside 0..K-1
                (other than ``ignore_index`` in the target).
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
        t = target.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            t, p = t[keep], p[keep]
        k = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target ids must be in 0..{k - 1} or {self.ignore_index}, got "
                             f"{sorted(set(np.unique(t).tolist()) - set(range(k)))}")
        if p.size and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predicted ids must be in 0..{k - 1}, got "
                             f"{sorted(set(np.unique(p).tolist()) - set(range(k)))}")
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def result(self) -> SegMetrics:
        return SegMetrics.from_matrix(self.matrix)


@dataclass(frozen=True)
class SegMetrics:
    """Scores derived from a confusion matrix.

    Attributes:
        iou: (K,) per-class IoU, NaN for classes absent from both ground truth and
            prediction.
        miou: mean of the non-NaN IoUs.
        pixel_acc: correctly labelled / labelled pixels.
        mean_acc: mean per-class recall over classes present in the ground truth.
        matrix: the (K, K) confusion matrix (rows: ground truth).
    """

    iou: np.ndarray
    miou: float
    pixel_acc: float
    mean_acc: float
    matrix: np.ndarray

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> SegMetrics:
        m = matrix.astype(np.float64)
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pr = m.sum(axis=0)
        union = gt + pr - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            recall = np.where(gt > 0, tp / gt, np.nan)
        total = m.sum()
        valid = ~np.isnan(iou)
        return cls(
            iou=iou,
            miou=float(iou[valid].mean()) if valid.any() else float("nan"),
            pixel_acc=float(tp.sum() / total) if total else float("nan"),
            mean_acc=float(np.nanmean(recall)) if (~np.isnan(recall)).any() else float("nan"),
            matrix=matrix.copy(),
        )

    def per_class(self, names: Sequence[str]) -> dict[str, float | None]:
        """Class name -> IoU (None where undefined)."""
        return {n: (None if np.isnan(v) else round(float(v), 4))
                for n, v in zip(names, self.iou, strict=True)}

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "miou": round(self.miou, 4),
            "pixel_acc": round(self.pixel_acc, 4),
            "mean_acc": round(self.mean_acc, 4),
            "per_class_iou": self.per_class(names),
            "confusion_matrix": self.matrix.tolist(),
        }

    def table(self, names: Sequence[str]) -> str:
        """Plain-text per-class table for terminals."""
        width = max(12, *(len(n) for n in names))
        gt = self.matrix.sum(axis=1)
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'pixels':>12}"]
        for n, v, g in zip(names, self.iou, gt, strict=True):
            iou = "   n/a" if np.isnan(v) else f"{v * 100:6.2f}"
            lines.append(f"{n:<{width}}  {iou}  {int(g):>12d}")
        lines.append(f"{'mIoU':<{width}}  {fmt_miou(self.miou):>8}")
        lines.append(f"{'pixel acc':<{width}}  {self.pixel_acc * 100:6.2f}")
        return "\n".join(lines)
