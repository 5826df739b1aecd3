"""mp4v video files whose pixels keep their coordinates.

MPEG-4 Part 2 (OpenCV's ``mp4v``) needs even frame sizes: FFmpeg silently crops an odd
row or column (a 641x359 frame is written as 640x358), so an annotated video would no
longer line up pixel for pixel with the label maps written beside it. :class:`Mp4Writer`
pads odd sizes with black at the right and bottom instead: frame pixel (x, y) is video
pixel (x, y), and the extra column / row is visibly not content.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) rounded up to even numbers."""
    w, h = size
    return w + w % 2, h + h % 2


class Mp4Writer:
    """An mp4v writer for frames of one ``size`` (width, height), BGR uint8.

    Frames of another size (a source that changed resolution) are resized to ``size``
    (nearest neighbour: label colours stay exact); odd sizes are padded to even.
    ``opened`` is False when OpenCV has no mp4v encoder or cannot create the file.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        self.size = size
        self.video_size = even_size(size)
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                       self.video_size)

    @property
    def opened(self) -> bool:
        return bool(self._writer.isOpened())

    def write(self, img: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 BGR frame."""
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_NEAREST)
        pad_w, pad_h = self.video_size[0] - self.size[0], self.video_size[1] - self.size[1]
        if pad_w or pad_h:
            img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        self._writer.write(img)

    def release(self) -> None:
        self._writer.release()
