"""torch ``Dataset`` views over an in-memory :class:`~engines.data.readers.SplitData`."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from engines.data.augment import AugmentConfig, augment, mix_views
from engines.data.readers import SplitData


def to_tensor(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    m = np.asarray(mean, np.float32) * 255.0
    s = np.asarray(std, np.float32) * 255.0
    x = (img.astype(np.float32) - m) / s
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class TrainDataset(Dataset):
    """Random augmented crops. Sample ``i`` of epoch ``e`` is a pure function of
    ``(seed, e, i)``, independent of workers and order; call :meth:`set_epoch` each epoch.
    With ``aug.mix`` set, a sample is mixed (probability ``aug.mix_prob``) with an
    augmented view of another random frame, drawn from the same generator; without it the
    samples are those of a run before mixing existed.

    Items: ``(image (3, crop_h, crop_w) float32, label (crop_h, crop_w) int64)``.
    """

    def __init__(self, data: SplitData, aug: AugmentConfig, mean: Sequence[float],
                 std: Sequence[float], seed: int = 0) -> None:
        self.data, self.aug, self.mean, self.std, self.seed = data, aug, mean, std, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, lbl = augment(self.data.images[i], self.data.labels[i], rng, self.aug)
        if self.aug.mix is not None and len(self.data) > 1 and rng.random() < self.aug.mix_prob:
            j = int(rng.integers(0, len(self.data) - 1))
            j += j >= i  # another frame, never this one
            img_b, lbl_b = augment(self.data.images[j], self.data.labels[j], rng, self.aug)
            img, lbl = mix_views(img, lbl, img_b, lbl_b, rng, self.aug.mix)
        return to_tensor(img, self.mean, self.std), torch.from_numpy(lbl.astype(np.int64))


class EvalDataset(Dataset):
    """Whole images resized to the network input ``size`` (H, W) (labels keep their size
    when ``size`` is None or equal). Items: ``(image (3, H, W) float32, label (h, w) int64)``.
    """

    def __init__(self, data: SplitData, mean: Sequence[float], std: Sequence[float],
                 size: tuple[int, int] | None = None) -> None:
        self.data, self.mean, self.std, self.size = data, mean, std, size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.data.images[i]
        if self.size is not None and img.shape[:2] != tuple(self.size):
            img = cv2.resize(img, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return (to_tensor(img, self.mean, self.std),
                torch.from_numpy(self.data.labels[i].astype(np.int64)))
