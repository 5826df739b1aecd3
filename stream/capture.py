"""Camera capture: GStreamer pipelines (OpenCV fallback) in their own threads, the newest
frame in a one-slot mailbox, stall detection and reconnection.

    from stream.sources import parse_source
    from stream.capture import open_capture

    with open_capture(parse_source("rtsp://10.0.0.5/stream1")) as cap:
        while not cap.finished:
            frame = cap.latest(timeout=1.0)   # stream.frames.Frame or None
            ...

See :mod:`stream.capture_base` for the state machine and counters,
:mod:`stream.sources` for source strings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from stream.capture_base import (
    BaseCapture,
    CaptureOptions,
    CaptureStats,
    FrameCallback,
    Outcome,
    StateCallback,
)
from stream.frames import Frame, now_ns
from stream.gst import (
    AppsinkArrivals,
    appsink_rendered,
    gst_available,
    has_rendered_counter,
    load_gst,
    missing_elements,
    sample_to_bgr,
)
from stream.sources import SourceSpec, redact

log = logging.getLogger(__name__)


class GstCapture(BaseCapture):
    """A source read through ``Gst.parse_launch(spec.pipeline)`` and its appsink.

    The capture thread pulls with ``try_pull_sample(poll_interval)``, copies each sample
    into a read-only (H, W, 3) uint8 BGR array (row padding removed) and polls the bus
    for ERROR and EOS between pulls; no GLib main loop is needed. Frames the appsink
    discarded before they were pulled (``drop=true``) take ``seq`` numbers too and count
    in ``dropped`` (:class:`stream.gst.AppsinkArrivals`).

    Raises:
        stream.gst.GstUnavailableError: PyGObject/GStreamer cannot be imported.
    """

    backend = "gstreamer"

    def __init__(self, spec: SourceSpec, **kwargs: Any) -> None:
        self._gst = load_gst()
        self._arrivals = AppsinkArrivals()  # a new one per session (pipeline)
        self._rendered: Any = lambda: None  # the session's appsink_rendered reader
        super().__init__(spec, **kwargs)

    def _session(self) -> tuple[Outcome, str]:
        Gst, GLib = self._gst.Gst, self._gst.GLib
        try:
            pipeline = Gst.parse_launch(self.spec.pipeline)
        except GLib.Error as e:
            missing = missing_elements(self.spec.pipeline)
            detail = f"cannot build the pipeline: {e.message}"
            if missing:
                detail += (f"; this GStreamer has no {', '.join(missing)} element (install "
                           f"the plugin that provides it; check with gst-inspect-1.0)")
            self._count_error(detail)
            return Outcome.FATAL, detail
        try:
            sink = pipeline.get_by_name("sink")
            if sink is None:
                return Outcome.FATAL, "the pipeline has no appsink named 'sink'"
            bus = pipeline.get_bus()
            self._arrivals = AppsinkArrivals()
            self._rendered = (lambda: appsink_rendered(sink)) if has_rendered_counter(sink) \
                else (lambda: None)
            if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                detail = self._bus_error(bus) or "the pipeline refused to start"
                self._count_error(detail)
                return Outcome.RETRY, detail
            try:
                return self._pull(pipeline, sink, bus)
            finally:  # frames the sink took in and nobody pulled
                self._skip(self._arrivals.finish(self._rendered()))
        finally:
            pipeline.set_state(Gst.State.NULL)

    def _pull(self, pipeline: Any, sink: Any, bus: Any) -> tuple[Outcome, str]:
        Gst = self._gst.Gst
        poll_ns = int(self.options.poll_interval * Gst.SECOND)
        first = self.options.first_frame_s(self.spec.slow_start)
        while not self._stopping:
            sample = sink.try_pull_sample(poll_ns)
            if sample is not None:
                t_mono, t_wall = now_ns()
                if not self._session_frames:  # a camera may come back with other caps
                    self._caps = sample.get_caps().to_string()
                skipped = self._arrivals.pulled(self._rendered())
                if not self._emit(sample_to_bgr(sample), t_mono, t_wall, skipped):
                    return Outcome.STOPPED, ""
            elif sink.is_eos():  # pulls return at once now: wait on the bus instead
                msg = bus.timed_pop_filtered(poll_ns, Gst.MessageType.EOS | Gst.MessageType.ERROR)
                result = self._handle(msg, pipeline) if msg is not None else None
                if result is not None:
                    return result
            result = self._drain_bus(bus, pipeline)
            if result is not None:
                return result
            stall = self.options.stall_timeout if self._session_frames else first
            if sample is None and self._since_progress() > stall:
                what = "no frame" if self._session_frames else "no first frame"
                detail = f"{what} for {stall:.1f} s"
                if not self.spec.live:
                    return Outcome.FATAL, f"{detail} from the file (decoder stuck?)"
                self._set_state("stalled", detail)
                return Outcome.RETRY, detail
        return Outcome.STOPPED, ""

    def _drain_bus(self, bus: Any, pipeline: Any) -> tuple[Outcome, str] | None:
        Gst = self._gst.Gst
        kinds = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
        while (msg := bus.pop_filtered(kinds)) is not None:
            result = self._handle(msg, pipeline)
            if result is not None:
                return result
        return None

    def _handle(self, msg: Any, pipeline: Any) -> tuple[Outcome, str] | None:
        """Act on one bus message; an outcome ends the session, None carries on."""
        Gst = self._gst.Gst
        if msg.type == Gst.MessageType.WARNING:
            err, _ = msg.parse_warning()
            log.info("%s: warning from %s: %s", self.camera_id, msg.src.get_name(),
                     redact(err.message))
        elif msg.type == Gst.MessageType.ERROR:
            detail = self._format_error(msg)
            self._count_error(detail)
            return (Outcome.RETRY if self.spec.live else Outcome.FATAL), detail
        elif msg.type == Gst.MessageType.EOS:
            return self._at_eos(pipeline)
        return None

    def _at_eos(self, pipeline: Any) -> tuple[Outcome, str] | None:
        Gst = self._gst.Gst
        if self.spec.loop:
            flags = Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT
            if pipeline.seek_simple(Gst.Format.TIME, flags, 0):
                self._skip(self._arrivals.flushed())
                log.info("%s: end of file, looping", self.camera_id)
                self._last_progress = time.monotonic()
                return None
            if not self._session_frames:  # reopening would only end the same way, at once
                return Outcome.END, "end of file without a frame, cannot seek: not looping"
            return Outcome.RESTART, "end of file, cannot seek: reopening"
        if self.spec.live and self.spec.eos_is_loss:
            return Outcome.RETRY, "the stream ended (camera or server closed it)"
        return Outcome.END, f"end of stream after {self._seq} frames"

    def _bus_error(self, bus: Any) -> str:
        msg = bus.pop_filtered(self._gst.Gst.MessageType.ERROR)
        return self._format_error(msg) if msg is not None else ""

    def _format_error(self, msg: Any) -> str:
        """``element: message (reason)``; the reason is the last line of GStreamer's debug
        text (e.g. "Failed to connect. (Generic error)"), without its source location."""
        err, debug = msg.parse_error()
        log.debug("%s: %s debug: %s", self.camera_id, msg.src.get_name(), redact(debug or ""))
        text = f"{msg.src.get_name()}: {err.message}"
        reason = (debug or "").strip().splitlines()[-1:] if debug and "\n" in debug else []
        if reason and reason[0] not in text:
            text += f" ({reason[0]})"
        return redact(text)


def open_capture(spec: SourceSpec, *, backend: str = "auto",
                 options: CaptureOptions | None = None,
                 on_state: StateCallback | None = None,
                 on_frame: FrameCallback | None = None, start: bool = True) -> BaseCapture:
    """Open one source with GStreamer, or with OpenCV when GStreamer cannot be imported.

    Args:
        backend: "auto" (GStreamer if importable, else OpenCV), "gstreamer" or "opencv".

    Raises:
        stream.sources.SourceError: OpenCV fallback for a source OpenCV cannot open.
        stream.gst.GstUnavailableError: backend="gstreamer" without GStreamer.
    """
    if backend not in ("auto", "gstreamer", "opencv"):
        raise ValueError(f"backend must be auto, gstreamer or opencv, got {backend!r}")
    if backend == "auto":
        backend = "gstreamer" if gst_available() else "opencv"
        if backend == "opencv":
            log.warning("GStreamer is not importable; capturing %s with OpenCV", spec.id)
    kwargs = {"options": options, "on_state": on_state, "on_frame": on_frame,
              "start": start}
    if backend == "gstreamer":
        return GstCapture(spec, **kwargs)
    from stream.cvcapture import CvCapture

    return CvCapture(spec, **kwargs)


def close_all(captures: Sequence[BaseCapture]) -> None:
    """Ask every capture to stop first, then wait for each: closing takes the slowest
    camera's time, not the sum of them (a service has TimeoutStopSec to finish in)."""
    for cap in captures:
        cap.request_stop()
    for cap in captures:
        cap.close()


class MultiCapture:
    """Several sources in one process, each in its own capture thread; one that fails
    or stalls does not disturb the others.

    ``wait(timeout)`` returns the newest frame of every camera that has a new one (empty
    dict on timeout), so one consumer loop can serve all cameras fairly.
    """

    def __init__(self, specs: Iterable[SourceSpec], *, backend: str = "auto",
                 options: CaptureOptions | None = None,
                 on_state: StateCallback | None = None) -> None:
        self._cond = threading.Condition()
        self.captures: dict[str, BaseCapture] = {}
        try:
            for spec in specs:
                if spec.id in self.captures:
                    raise ValueError(f"camera id {spec.id!r} is used twice")
                self.captures[spec.id] = open_capture(
                    spec, backend=backend, options=options, on_state=self._state_hook(on_state),
                    on_frame=self._wake)
        except BaseException:
            self.close()
            raise
        if not self.captures:
            raise ValueError("MultiCapture needs at least one source")

    def _state_hook(self, on_state: StateCallback | None) -> StateCallback:
        def hook(camera_id: str, state: str, detail: str) -> None:
            if on_state is not None:
                on_state(camera_id, state, detail)
            self._wake(camera_id)  # so wait() notices a camera ending
        return hook

    def _wake(self, _camera_id: str) -> None:
        with self._cond:
            self._cond.notify_all()

    def __getitem__(self, camera_id: str) -> BaseCapture:
        return self.captures[camera_id]

    def __len__(self) -> int:
        return len(self.captures)

    @property
    def finished(self) -> bool:
        """Every source has ended."""
        return all(c.finished for c in self.captures.values())

    def wait(self, timeout: float | None = 1.0) -> dict[str, Frame]:
        """Newest new frame per camera, waiting up to ``timeout`` s for at least one."""
        with self._cond:
            self._cond.wait_for(lambda: self.finished or any(
                c.pending for c in self.captures.values()), timeout)
        frames = {}
        for cam, cap in self.captures.items():
            frame = cap.latest(0)
            if frame is not None:
                frames[cam] = frame
        return frames

    def stats(self) -> dict[str, CaptureStats]:
        return {cam: cap.stats() for cam, cap in self.captures.items()}

    def close(self) -> None:
        close_all(list(self.captures.values()))

    def __enter__(self) -> MultiCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
