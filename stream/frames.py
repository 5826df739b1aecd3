"""The frame that flows from a source through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured camera frame.

    Attributes:
        camera_id: the source's id (``--source ID=URI``, default ``cam0``, ``cam1``...).
        seq: per-camera sequence number, counted from 0 as frames leave the source
            (before the mailbox's newest-wins drop), so gaps downstream show drops. A
            frame GStreamer's one-buffer appsink discarded before the capture thread pulled
            it (the thread pulls continuously: that happens only when it cannot keep up
            with the camera) gets a number too, at the latest when the next one is
            discarded or the session ends (:class:`stream.gst.AppsinkArrivals`).
        t_capture_mono: ``time.monotonic_ns()`` when the capture thread pulled the sample
            (after decoding and colour conversion; not the sensor's exposure time).
        t_capture_wall: ``time.time_ns()`` at the same moment (for cross-host clients).
        image: (H, W, 3) uint8 BGR, C-contiguous.
    """

    camera_id: str
    seq: int
    t_capture_mono: int
    t_capture_wall: int
    image: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def now_ns() -> tuple[int, int]:
    """(monotonic, wall clock) in nanoseconds, read together."""
    return time.monotonic_ns(), time.time_ns()
