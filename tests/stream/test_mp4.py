"""stream.mp4: odd frame sizes are padded, not cropped, so pixels keep their place."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stream.mp4 import Mp4Writer, even_size


def _read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_an_odd_frame_keeps_its_pixel_coordinates(tmp_path: Path) -> None:
    w, h = 65, 49
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w - 8:] = (0, 0, 255)  # the last 8 columns red: a crop would shift/cut them
    img[h - 8:, :] = (0, 255, 0)  # the last 8 rows green
    writer = Mp4Writer(tmp_path / "odd.mp4", 10, (w, h))
    assert writer.opened and writer.video_size == (66, 50) == even_size((w, h))
    for _ in range(3):
        writer.write(img)
    writer.write(cv2.resize(img, (130, 98), interpolation=cv2.INTER_NEAREST))  # size change
    writer.release()
    frames = _read_all(tmp_path / "odd.mp4")
    assert len(frames) == 4 and frames[0].shape == (50, 66, 3)
    for got in frames:
        content = got[:h, :w].astype(int)
        assert np.abs(content - img).mean() < 6  # mp4v is lossy; a 1-px shift is not
        assert (got[:h - 10, w - 6, 2] > 200).all() and got[h - 4, 10, 1] > 200
