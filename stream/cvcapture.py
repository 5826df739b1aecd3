"""OpenCV fallback capture, for machines where PyGObject/GStreamer cannot be imported.

Same interface and state machine as :class:`stream.capture.GstCapture`, but only for the
sources ``cv2.VideoCapture`` can open by itself: files, V4L2 devices and RTSP URLs
(through OpenCV's FFmpeg backend). A blocking ``read()`` is bounded by OpenCV's read
timeout, set to ``stall_timeout``; opening by its open timeout, set to the first-frame
allowance (:meth:`stream.capture_base.CaptureOptions.first_frame_s`).
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from stream.capture_base import BaseCapture, Outcome
from stream.frames import now_ns
from stream.sources import SourceError, SourceSpec


class CvCapture(BaseCapture):
    """``cv2.VideoCapture`` in a capture thread.

    Raises:
        SourceError: the source kind (csi://, test://, gst://) needs GStreamer.
    """

    backend = "opencv"

    def __init__(self, spec: SourceSpec, **kwargs: Any) -> None:
        if not spec.target:
            raise SourceError(f"source {spec.display!r}: {spec.kind}:// sources need GStreamer "
                              f"(PyGObject); the OpenCV fallback opens only files, v4l2 "
                              f"devices and rtsp URLs")
        super().__init__(spec, **kwargs)

    def _open(self) -> cv2.VideoCapture:
        ms = int(self.options.stall_timeout * 1000)
        # connecting gets the first-frame allowance (an RTSP handshake over a slow link)
        open_ms = int(self.options.first_frame_s(self.spec.slow_start) * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        if self.spec.kind == "v4l2":
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.spec.width),
                                (cv2.CAP_PROP_FRAME_HEIGHT, self.spec.height),
                                (cv2.CAP_PROP_FPS, self.spec.fps)):
                if value:
                    params += [prop, value]
            return cv2.VideoCapture(self.spec.target, cv2.CAP_V4L2, params)
        return cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG, params)

    def _session(self) -> tuple[Outcome, str]:
        cap = self._open()
        try:
            if not cap.isOpened():
                detail = f"OpenCV could not open {self.spec.display}"
                self._count_error(detail)
                return (Outcome.RETRY if self.spec.live else Outcome.FATAL), detail
            self._caps = (f"opencv {cap.getBackendName()} "
                          f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
                          f"{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))} "
                          f"@ {cap.get(cv2.CAP_PROP_FPS):.2f} fps")
            fps = cap.get(cv2.CAP_PROP_FPS)
            period = 1.0 / fps if not self.spec.live and self.spec.realtime and fps > 0 else 0.0
            next_due = time.monotonic()
            while not self._stopping:
                ok, image = cap.read()
                t_mono, t_wall = now_ns()
                if not ok:
                    return self._at_end(cap)
                if not self._emit(_as_bgr(image), t_mono, t_wall):
                    return Outcome.STOPPED, ""
                if period:  # play a file at its own rate
                    next_due += period
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
            return Outcome.STOPPED, ""
        finally:
            cap.release()

    def _at_end(self, cap: cv2.VideoCapture) -> tuple[Outcome, str]:
        if self.spec.live:
            detail = f"no frame from {self.spec.display} (read failed or timed out)"
            self._set_state("stalled", detail)
            return Outcome.RETRY, detail
        if self.spec.loop and self._session_frames:
            return Outcome.RESTART, "end of file, looping"
        return Outcome.END, f"end of stream after {self._seq} frames"


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's frame (H, W, 3) uint8 BGR, or gray/BGRA, as read-only (H, W, 3) BGR."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    image = np.ascontiguousarray(image)
    image.flags.writeable = False
    return image
