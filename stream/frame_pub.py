"""Camera frames on the wire (topic ``img/<camera>``, wire 1.2): sampled, scaled, JPEG.

The pipeline hands every frame it publishes labels for to :meth:`FrameTap.offer` (via
``Publisher.send``), on its own thread. ``offer`` only decides and parks the frame: it
returns at once unless a subscriber of that camera's ``img/`` topic exists (the XPUB
tells the publisher who subscribed) and the camera's sampling schedule is due. Scaling,
JPEG encoding and the CRC happen on the tap's own thread, one frame per camera waiting at
most (a newer frame replaces one not yet encoded: counted as ``frames_skipped``), so the
encoder never sits on the engine's path and never queues.

Sampling follows capture time: at most ``rate`` frames per second per camera. A frame is
taken when it is no more than a quarter period early for the next slot, and slots advance
by one period from the later of the slot and the frame taken, so consecutive frames are
at least 0.75 periods apart and a 25 fps camera sampled at 10 gets 10, not 8.3.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from stream.config import FRAME_RATE_ON, PublishConfig, frame_problems
from stream.frames import Frame
from stream.wire_frames import max_jpeg_bytes

log = logging.getLogger("segstream.publish")

# frame, (h, w) of the JPEG, its bytes, their CRC-32 -> True when ZeroMQ took the message
SendFrame = Callable[[Frame, tuple[int, int], np.ndarray, int], bool]


@dataclass(frozen=True)
class FrameOptions:
    """What ``--publish-frames RATE --frame-scale S --frame-quality Q`` ask for.

    Attributes:
        rate: frames per second per camera, at most (> 0; above the camera's rate: all).
        scale: JPEG size relative to the camera frame, (0, 1].
        quality: JPEG quality 1..100.
    """

    rate: float = FRAME_RATE_ON
    scale: float = PublishConfig.frame_scale
    quality: int = PublishConfig.frame_quality

    def __post_init__(self) -> None:
        found = frame_problems(self.rate, self.scale, self.quality)
        if self.rate == 0:
            found.append(("publish_frames", "must be > 0 here (leave frames out to turn "
                                            "them off)"))
        if found:
            raise ValueError("; ".join(f"{key}: {why}" for key, why in found))

    @classmethod
    def from_config(cls, cfg: PublishConfig) -> FrameOptions | None:
        """The options of a ``publish:`` section; None when frames are off."""
        if not cfg.publish_frames:
            return None
        return cls(cfg.publish_frames, cfg.frame_scale, cfg.frame_quality)


def scaled_shape(h: int, w: int, scale: float) -> tuple[int, int]:
    """(h, w) of a frame of (H, W) = (``h``, ``w``) scaled by ``scale``, at least 1x1."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def encode_jpeg(image: np.ndarray, shape: tuple[int, int], quality: int) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR -> JPEG bytes of ``shape`` (h, w) as a (N,) uint8 array, or None
    when OpenCV cannot encode it. Downscaling uses area averaging (no aliasing)."""
    h, w = shape
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)  # (h, w, 3)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.reshape(-1) if ok else None


class FrameTap:
    """Samples frames for the ``img/`` topic and encodes them on a thread of its own.

    Args:
        options: rate, scale and quality.
        send: publishes one encoded frame (the publisher's, under its socket lock).
        wanted: True while some subscriber's subscription covers ``img/<camera>``.

    Counters (read any time): ``encoded`` frames sent, ``skipped`` frames replaced before
    the encoder got to them (or whose last subscriber left), ``errors`` frames OpenCV
    could not encode or that came out larger than the wire format allows, ``unsent``
    frames ZeroMQ refused.
    """

    def __init__(self, options: FrameOptions, send: SendFrame,
                 wanted: Callable[[str], bool]) -> None:
        self.options = options
        self._send, self._wanted = send, wanted
        self._period_ns = int(1e9 / options.rate)
        self._due: dict[str, int] = {}  # camera -> capture time (mono ns) of its next slot
        self._slots: dict[str, Frame] = {}  # camera -> the frame waiting to be encoded
        self._cond = threading.Condition()
        self._stop = False
        self.encoded = self.skipped = self.errors = self.unsent = self.bytes = 0
        self._thread = threading.Thread(target=self._run, name="segstream-frames",
                                        daemon=True)
        self._thread.start()

    def offer(self, frame: Frame) -> bool:
        """Take ``frame`` for encoding if someone wants this camera's frames and its
        sampling slot is due; never blocks on the encoder. True when taken."""
        cam = frame.camera_id
        if not self._wanted(cam):
            return False
        t = frame.t_capture_mono
        with self._cond:
            due = self._due.get(cam)
            if due is not None and t < due - self._period_ns // 4:
                return False
            self._due[cam] = (t if due is None else max(due, t)) + self._period_ns
            if self._stop:
                return False
            self.skipped += cam in self._slots
            self._slots[cam] = frame
            self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._slots and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                cam = next(iter(self._slots))
                frame = self._slots.pop(cam)
            if self._wanted(cam):
                self._publish(frame)
            else:  # its last subscriber left meanwhile
                with self._cond:  # offer() counts under the lock too
                    self.skipped += 1

    def _publish(self, frame: Frame) -> None:
        h, w = frame.shape
        shape = scaled_shape(h, w, self.options.scale)
        try:
            jpeg = encode_jpeg(frame.image, shape, self.options.quality)
        except (cv2.error, MemoryError) as e:  # this frame only: keep going
            log.debug("JPEG encoding failed: %s", e)
            jpeg = None
        if jpeg is None or jpeg.nbytes > max_jpeg_bytes(*shape):
            self.errors += 1
            if self.errors <= 3:
                log.warning("%s: frame %d not published: %s", frame.camera_id, frame.seq,
                            "JPEG encoding failed" if jpeg is None else
                            f"its JPEG ({jpeg.nbytes} bytes) exceeds the wire format's bound")
            return
        if self._send(frame, shape, jpeg, zlib.crc32(jpeg)):
            self.encoded += 1
            self.bytes += jpeg.nbytes
        else:
            self.unsent += 1

    def close(self) -> None:
        """Stop the encoder thread (a frame being encoded is finished first)."""
        with self._cond:
            self._stop = True
            self._slots.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
