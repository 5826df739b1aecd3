"""Segmentation datasets: readers for CamVid / Cityscapes / image+mask folders, and
training augmentation. Loaded labels use ids 0..K-1 and ``IGNORE`` (255) for void.

The torch views (``engines.data.torch_dataset``) are imported separately so that the
readers work without torch.
"""

from engines.data.augment import AugmentConfig, augment
from engines.data.readers import (
    FORMATS,
    IGNORE,
    DatasetError,
    SplitData,
    detect_format,
    open_split,
    read_class_file,
)

__all__ = [
    "FORMATS",
    "IGNORE",
    "AugmentConfig",
    "DatasetError",
    "SplitData",
    "augment",
    "detect_format",
    "open_split",
    "read_class_file",
]
