"""Helpers shared by the camera-frame tests (wire 1.2 ``img/``): a synthetic camera, its
label map, and feeding frames to a real Publisher through its pipeline sink interface."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engines.spec import CAMVID_CLASSES
from stream.frames import Frame
from stream.publish import Publisher
from stream.subscribe import Subscriber
from stream.wire import ClassTable, ModelInfo

REPO = Path(__file__).resolve().parents[2]
TABLE = ClassTable.build(CAMVID_CLASSES, ModelInfo("camvid-test", "fastscnn", (360, 480)))
ROAD, SKY = 3, 0


def ipc() -> str:
    return f"ipc:///tmp/segstream-frames-{uuid.uuid4().hex[:12]}.sock"


def wait_until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def camera_image(h: int = 48, w: int = 64) -> np.ndarray:
    """(h, w, 3) BGR: left half blue, right half green (flat, so JPEG keeps it exact-ish)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[:, w // 2:] = (0, 255, 0)
    return img


def scene(h: int = 48, w: int = 64) -> np.ndarray:
    """(h, w) labels: top half road, bottom half sky."""
    labels = np.full((h, w), SKY, np.uint8)
    labels[: h // 2] = ROAD
    return labels


def send_frames(pub: Publisher, n: int, *, fps: float = 30.0, image: np.ndarray | None = None,
                pause: float = 0.005, start: int = 0, t0: int | None = None) -> None:
    """``n`` frames of camera 'front' through the pipeline's sink interface, capture times
    1/fps apart (whatever the real pace), each with its label map."""
    image = camera_image() if image is None else image
    t0 = time.monotonic_ns() if t0 is None else t0
    for seq in range(start, start + n):
        frame = Frame("front", seq, t0 + int(seq * 1e9 / fps), time.time_ns(), image)
        pub.send(frame, scene(*image.shape[:2]), time.time_ns(), 0)
        time.sleep(pause)


def drain(sub: Subscriber, timeout: float = 0.5) -> list:
    got = []
    while (msg := sub.receive(timeout)) is not None:
        got.append(msg)
    return got
