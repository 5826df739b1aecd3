"""GStreamer through PyGObject: lazy loading, appsink sample -> numpy conversion, and the
frames an appsink discarded (:class:`AppsinkArrivals`).

Importing this module never fails; :func:`load_gst` raises :class:`GstUnavailableError` (with
the reason and the fix) when PyGObject or the GStreamer typelibs are missing, and
:func:`gst_available` tells the capture factory whether to fall back to OpenCV.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

_lock = threading.Lock()
_gst: SimpleNamespace | None = None
_error: str | None = None


class GstUnavailableError(ImportError):
    """PyGObject or the GStreamer 1.0 typelibs (Gst, GstApp, GstVideo) are missing."""


def load_gst() -> SimpleNamespace:
    """Import and initialise GStreamer once; returns a namespace with ``Gst``, ``GstApp``,
    ``GstVideo`` and ``GLib``.

    Raises:
        GstUnavailableError: with the import error and the packages to install.
    """
    global _gst, _error
    with _lock:
        if _gst is not None:
            return _gst
        if _error is None:
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstVideo", "1.0")
                from gi.repository import GLib, Gst, GstApp, GstVideo

                Gst.init(None)
                _gst = SimpleNamespace(Gst=Gst, GstApp=GstApp, GstVideo=GstVideo, GLib=GLib)
                return _gst
            except (ImportError, ValueError) as e:
                _error = (f"GStreamer is not usable from Python ({e}); install PyGObject and "
                          "the GStreamer 1.0 typelibs, e.g. apt install python3-gi "
                          "gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
                          "gstreamer1.0-plugins-good gstreamer1.0-libav")
        raise GstUnavailableError(_error)


def gst_available() -> bool:
    """True when :func:`load_gst` succeeds."""
    try:
        load_gst()
    except GstUnavailableError:
        return False
    return True


def missing_elements(description: str) -> list[str]:
    """Element factory names at the start of each ``!``-separated stage of a launch
    description that this GStreamer installation does not have (caps stages skipped)."""
    gst = load_gst()
    missing = []
    for stage in description.split("!"):
        words = stage.strip().split()
        if not words or "/" in words[0] or "=" in words[0] or words[0].startswith("("):
            continue
        if gst.Gst.ElementFactory.find(words[0]) is None and words[0] not in missing:
            missing.append(words[0])
    return missing


def sample_to_bgr(sample: Any) -> np.ndarray:
    """A ``video/x-raw,format=BGR`` appsink sample as a numpy image that outlives the
    sample (a copy only where needed: :func:`_bgr_from_mapped`).

    Rows in a GStreamer buffer are ``stride`` bytes apart, and the stride is rounded up
    to a multiple of 4 (a 322-pixel BGR row is 966 bytes of pixels in a 968-byte
    stride), so the padding is cut off here.

    Returns:
        (H, W, 3) uint8 BGR, C-contiguous, read-only (frames are shared by several
        consumers; copy before drawing on one).

    Raises:
        ValueError: the caps are not packed BGR or the buffer is smaller than they say.
    """
    gst = load_gst()
    caps = sample.get_caps()
    info = gst.GstVideo.VideoInfo.new_from_caps(caps)
    if info is None or info.finfo.format != gst.GstVideo.VideoFormat.BGR:
        raise ValueError(f"appsink caps must be video/x-raw,format=BGR, got {caps.to_string()}")
    w, h, stride, offset = info.width, info.height, info.stride[0], info.offset[0]
    buf = sample.get_buffer()
    ok, mapinfo = buf.map(gst.Gst.MapFlags.READ)
    if not ok:
        raise ValueError("could not map the GStreamer buffer for reading")
    try:
        # Plain PyGObject hands out a bytes copy of the mapped memory: packed rows are used
        # in place (one copy per frame in all). gst-python's overrides (python3-gst-1.0,
        # common on Jetson) hand out a memoryview of the mapping itself, released by unmap:
        # the pixels are copied out here, before unmapping.
        image = _bgr_from_mapped(mapinfo.data, w, h, stride, offset)
    finally:
        buf.unmap(mapinfo)
    image.flags.writeable = False
    return image


def _bgr_from_mapped(data: Any, w: int, h: int, stride: int, offset: int) -> np.ndarray:
    """Mapped bytes -> a C-contiguous (H, W, 3) uint8 array, row padding cut off, that
    stays valid after unmap.

    ``bytes`` (immutable, already a copy) with packed rows is viewed without copying: the
    array keeps the bytes alive. A memoryview (valid only until unmap) or padded rows are
    copied into a fresh array.
    """
    flat = np.frombuffer(data, dtype=np.uint8)
    need = offset + (h - 1) * stride + w * 3
    if flat.size < need:
        raise ValueError(f"buffer of {flat.size} bytes is too small for {w}x{h} BGR "
                         f"(stride {stride}, needs {need})")
    if stride == w * 3:
        image = flat[offset:offset + h * stride].reshape(h, w, 3)  # (H, W, 3)
        return image if isinstance(data, bytes) else image.copy()
    # Rows 0..H-2 as a (H-1, stride) view cut to W*3 bytes; the last row separately,
    # since a buffer need not carry the padding after it.
    image = np.empty((h, w * 3), np.uint8)
    last = offset + (h - 1) * stride
    image[:-1] = flat[offset:last].reshape(h - 1, stride)[:, :w * 3]
    image[-1] = flat[last:last + w * 3]
    return image.reshape(h, w, 3)  # (H, W, 3)


def appsink_rendered(sink: Any) -> int | None:
    """Buffers that reached ``sink`` since its pipeline started or last flushed (GstBaseSink's
    ``stats`` ``rendered``): every frame the appsink took in, including those its
    ``drop=true`` queue later discarded. None where this GStreamer has no such counter
    (check once per sink with :func:`has_rendered_counter`: this reads it, ~7 us)."""
    ok, value = sink.get_property("stats").get_uint64("rendered")
    return int(value) if ok else None


def has_rendered_counter(sink: Any) -> bool:
    """The sink has GstBaseSink's ``stats`` property (for :func:`appsink_rendered`)."""
    return sink.find_property("stats") is not None


class AppsinkArrivals:
    """Frames an appsink took in that the capture thread never pulled, from its ``rendered``
    counter read after each pull.

    With ``max-buffers=1 drop=true`` an appsink replaces its queued buffer when a new one
    comes before the capture thread pulls (a busy capture thread, a CPU-starved process).
    Such frames never get a ``seq``, so without this the wire's loss formula would not see
    them. After a pull, ``rendered`` minus the frames pulled is what the sink took in and
    nobody pulled: frames it dropped, plus at most one waiting in its queue (newer than the
    pulled one). :meth:`pulled` therefore reports all but one of those as skipped before
    the pulled frame, and keeps the last one in reserve; :meth:`finish` reports the rest
    when the session ends. Counts alone cannot tell a queued frame from a discarded one,
    so a lone discarded frame stays in that reserve until another is discarded, the
    pipeline flushes or the session ends: its number may come later than the loss (the
    frames pulled in between are numbered one lower than their arrival order would give).
    Reports never exceed the frames actually lost, and totals are exact. (Exact places would
    need a pad probe calling Python on GStreamer's streaming thread for every buffer, which
    can hold that thread up to the interpreter's 5 ms switch interval behind the GIL.) The
    first frame after a start or a flush is handed out at preroll, before ``rendered``
    counts it: that pull runs one ahead of the counter, which catches up at the next reads
    (the backlog may be -1 in between).
    """

    def __init__(self) -> None:
        self._last = 0  # `rendered` at the previous read
        self._backlog = 0  # taken in by the sink, neither pulled nor reported yet

    def _arrived(self, rendered: int) -> int:
        if rendered < self._last:  # the counter restarted (a flushing seek)
            self._last = 0
        arrived, self._last = rendered - self._last, rendered
        return arrived

    def pulled(self, rendered: int | None) -> int:
        """One frame was pulled and ``rendered`` read after it: how many frames the sink
        took in before that frame and discarded (0 with ``rendered`` None)."""
        if rendered is None:
            return 0
        self._backlog += self._arrived(rendered) - 1
        skipped = max(0, self._backlog - 1)  # one may still be queued, newer than the pull
        self._backlog -= skipped
        return skipped

    def flushed(self) -> int:
        """The pipeline flushed (a seek): the counter restarts and a queued frame is gone.
        Returns the frames taken in and never pulled before the flush."""
        lost, self._backlog, self._last = max(0, self._backlog), 0, 0
        return lost

    def finish(self, rendered: int | None) -> int:
        """The session ends: frames the sink took in and nobody pulled since the last
        report (dropped, or left in its queue)."""
        if rendered is not None:
            self._backlog += self._arrived(rendered)
        lost, self._backlog = max(0, self._backlog), 0
        return lost
