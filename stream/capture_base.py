"""What every capture backend shares: the newest-frame mailbox, counters, the state
machine, and the reconnect loop with exponential backoff.

A capture runs one thread. The thread repeatedly opens a *session* (one pipeline or
``cv2.VideoCapture``; the backend's :meth:`BaseCapture._session`), which pulls frames
until the stream ends, fails or stalls, and the loop here decides what comes next::

    starting -> running -> (stalled ->) reconnecting -> running -> ...
                        -> eos            (a file ended; a test source ran out)
                        -> failed         (a file broke; retries used up; no such element)
    close()  -> stopped                   (unless it already ended: eos / failed stay)

State changes go to the optional ``on_state(camera_id, state, detail)`` callback, called
from the capture thread: it must be quick and must not block (hand off to a queue).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from stream.frames import Frame
from stream.sources import SourceSpec

log = logging.getLogger(__name__)

STATES = ("starting", "running", "stalled", "reconnecting", "eos", "failed", "stopped")
ENDED = frozenset({"eos", "failed", "stopped"})
FPS_WINDOW_NS = 2_000_000_000  # CaptureStats.fps: frames pulled in the last 2 s

StateCallback = Callable[[str, str, str], None]  # (camera_id, state, detail)
FrameCallback = Callable[[str], None]  # (camera_id), after a frame is in the mailbox


@dataclass(frozen=True)
class Backoff:
    """Wait before reconnect attempt ``n`` (1-based): ``min(maximum, initial * factor**(n-1))``
    seconds, i.e. 0.5, 1, 2, 4, 8, 10, 10, ... by default."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError(f"backoff needs initial > 0, factor >= 1, maximum >= initial; "
                             f"got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt``; any attempt number, however large (a camera
        unplugged for days), gives at most :attr:`maximum` without overflowing."""
        wait = self.initial
        for _ in range(max(0, attempt - 1)):
            if wait >= self.maximum or self.factor == 1:
                break
            wait *= self.factor  # inf at worst, never an OverflowError
        return min(self.maximum, wait)


FIRST_FRAME_NETWORK_S = 10.0  # default first-frame allowance of RTSP and CSI sessions


@dataclass(frozen=True)
class CaptureOptions:
    """How a capture watches its source.

    Attributes:
        stall_timeout: seconds without a frame after which a live source is rebuilt and
            a file is declared failed.
        first_frame_timeout: seconds a session may take to its first frame (connecting,
            waiting for the first key frame); None: ``stall_timeout``, and at least
            :data:`FIRST_FRAME_NETWORK_S` for slow-start sources (RTSP, CSI, gst://
            pipelines with a network source; :attr:`SourceSpec.slow_start`).
        max_retries: reconnect attempts in a row before the source is declared failed;
            -1 retries forever. A session counts as recovered (the count and the backoff
            start again) once it has delivered frames for :meth:`healthy_s` seconds, so a
            source that flaps (one frame, then a stall) still backs off and gives up.
        backoff: waits between attempts.
        poll_interval: seconds the capture thread blocks in one pull; bounds how late it
            notices a stall, a bus message or :meth:`BaseCapture.close`.
    """

    stall_timeout: float = 3.0
    first_frame_timeout: float | None = None
    max_retries: int = -1
    backoff: Backoff = field(default_factory=Backoff)
    poll_interval: float = 0.1

    def first_frame_s(self, slow_start: bool) -> float:
        """Seconds a session may take to its first frame; ``slow_start``: the source's
        :attr:`stream.sources.SourceSpec.slow_start` (RTSP, CSI, ...)."""
        if self.first_frame_timeout is not None:
            return self.first_frame_timeout
        if slow_start:
            return max(self.stall_timeout, FIRST_FRAME_NETWORK_S)
        return self.stall_timeout

    def healthy_s(self) -> float:
        """Seconds a session must run, delivering frames, to reset the reconnect count:
        the longer of the stall timeout and the longest backoff wait."""
        return max(self.stall_timeout, self.backoff.maximum)

    def __post_init__(self) -> None:
        if self.stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {self.stall_timeout}")
        if self.first_frame_timeout is not None and self.first_frame_timeout <= 0:
            raise ValueError(f"first_frame_timeout must be > 0 seconds, got "
                             f"{self.first_frame_timeout}")
        if self.max_retries < -1:
            raise ValueError(f"max_retries must be >= 0, or -1 for forever; got {self.max_retries}")
        if not 0 < self.poll_interval <= self.stall_timeout:
            raise ValueError(f"poll_interval must be in (0, stall_timeout], "
                             f"got {self.poll_interval}")


@dataclass(frozen=True)
class CaptureStats:
    """A consistent snapshot of one capture's counters.

    ``captured`` counts frames that left the source (= next seq); ``dropped`` those lost
    before anyone took them: overwritten in the mailbox, or discarded by the source's
    appsink before the capture thread pulled them, or left in it when a session ended
    (``source_dropped``, part of ``dropped``; GStreamer backend only); ``reconnects``
    pipeline rebuilds
    after a stall, error or lost stream; ``errors`` error messages from the source.
    ``fps`` is the capture rate over the last 2 s (0 when stalled), ``frame_size`` (H, W)
    of the last frame, ``caps`` what the source negotiated (backend specific text).
    """

    camera_id: str
    backend: str
    state: str
    captured: int
    dropped: int
    reconnects: int
    errors: int
    fps: float
    last_error: str
    frame_size: tuple[int, int] | None
    caps: str
    source_dropped: int = 0


class Outcome(enum.Enum):
    """How a session ended, as the backend reports it to the reconnect loop."""

    END = "end"  # end of stream that is final: eos
    RETRY = "retry"  # stall, error or lost stream: rebuild after backoff (live sources)
    RESTART = "restart"  # rebuild at once, not counted (a file that cannot seek to loop)
    FATAL = "fatal"  # will not get better by retrying: failed
    STOPPED = "stopped"  # close() was called


class Mailbox:
    """One slot, newest frame wins.

    ``put`` replaces an unconsumed frame (counted in ``dropped``), or with ``block=True``
    waits until the slot is free (lossless file reading). ``take`` returns each frame at
    most once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self._finished = False
        self.dropped = 0

    def put(self, frame: Frame, *, block: bool = False) -> bool:
        """False when the mailbox was closed (the frame is discarded)."""
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self._frame is None or self._closed)
            if self._closed:
                return False
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None) -> Frame | None:
        """The newest unconsumed frame, waiting up to ``timeout`` s (None: forever);
        None on timeout, or at once when the source has finished and nothing is left."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._finished, timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    @property
    def pending(self) -> bool:
        return self._frame is not None

    def finish(self) -> None:
        """No more frames will come; waiting takers return (after the last one)."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def close(self) -> None:
        """Finish, discard the pending frame and release a blocked ``put``."""
        with self._cond:
            self._finished = self._closed = True
            self._frame = None
            self._cond.notify_all()


class BaseCapture(ABC):
    """One source in its own thread; see the module docstring for the state machine.

    Consumers call :meth:`latest` (newest frame not yet taken, or None on timeout) and
    read counters from the properties or :meth:`stats`. ``close()`` is idempotent, and
    the capture is a context manager.
    """

    backend = ""

    def __init__(self, spec: SourceSpec, *, options: CaptureOptions | None = None,
                 on_state: StateCallback | None = None,
                 on_frame: FrameCallback | None = None, start: bool = True) -> None:
        self.spec = spec
        self.camera_id = spec.id
        self.options = options or CaptureOptions()
        self._on_state = on_state
        self._on_frame = on_frame
        self._mailbox = Mailbox()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = "starting"
        self._state_detail = ""
        self._failed_outside = False
        self._seq = 0
        self._source_dropped = 0  # frames the source discarded before they were pulled
        self._reconnects = 0
        self._errors = 0
        self._last_error = ""
        self._caps = ""
        self._frame_size: tuple[int, int] | None = None
        self._pull_times: deque[int] = deque(maxlen=256)
        self._session_frames = 0
        self._session_first = 0.0  # monotonic time of the session's first frame
        self._last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=f"capture-{spec.id}",
                                        daemon=True)
        if start:
            self.start()

    # ------------------------------------------------------------------ consumer side

    def start(self) -> None:
        """Start the capture thread (done by the constructor unless ``start=False``)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._set_state("starting", self.spec.display)
            self._thread.start()

    def latest(self, timeout: float | None = 1.0) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` seconds; None on
        timeout or, without waiting, when the source has ended and nothing is left."""
        return self._mailbox.take(timeout)

    @property
    def state(self) -> str:
        return self._state

    @property
    def state_detail(self) -> str:
        """Why the capture is in its state (e.g. the error that made it ``failed``)."""
        return self._state_detail

    @property
    def finished(self) -> bool:
        """The source has ended (eos, failed or stopped): no more frames will come."""
        return self._state in ENDED

    @property
    def captured(self) -> int:
        return self._seq

    @property
    def dropped(self) -> int:
        """Frames lost before anyone took them: replaced in the mailbox, or discarded by
        the source before the capture thread pulled them."""
        return self._mailbox.dropped + self._source_dropped

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def pending(self) -> bool:
        """A frame is waiting in the mailbox."""
        return self._mailbox.pending

    def stats(self) -> CaptureStats:
        with self._lock:
            recent = [t for t in self._pull_times if t >= time.monotonic_ns() - FPS_WINDOW_NS]
            span = recent[-1] - recent[0] if len(recent) > 1 else 0
            fps = (len(recent) - 1) * 1e9 / span if span > 0 else 0.0
            return CaptureStats(self.camera_id, self.backend, self._state, self._seq,
                                self._mailbox.dropped + self._source_dropped,
                                self._reconnects, self._errors, fps, self._last_error,
                                self._frame_size, self._caps, self._source_dropped)

    def wait_state(self, states: Iterable[str], timeout: float) -> bool:
        """Block until the state is one of ``states`` (True) or ``timeout`` s pass."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while self._state not in wanted:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting (``close`` then waits)."""
        self._stop.set()
        self._mailbox.close()

    def fail(self, detail: str) -> None:
        """End the capture as ``failed`` from outside (e.g. the pipeline cannot serve its
        frames): stop the thread without waiting, and keep the state at failed."""
        self._count_error(detail)
        self._failed_outside = True
        self._set_state("failed", detail)
        self.request_stop()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and release the source; idempotent."""
        self.request_stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within %.1f s", self.camera_id,
                            timeout)
        if not self._thread.is_alive() and self._state not in ENDED:
            self._set_state("stopped", "closed")

    def __enter__(self) -> BaseCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.camera_id}={self.spec.display!r}, {self._state})"

    # ------------------------------------------------------------------ backend side

    @abstractmethod
    def _session(self) -> tuple[Outcome, str]:
        """Open the source, pull frames through :meth:`_emit` until it ends, fails,
        stalls or :attr:`_stopping`; release it; return the outcome and a detail."""

    @property
    def _stopping(self) -> bool:
        return self._stop.is_set()

    def _emit(self, image: np.ndarray, t_mono: int, t_wall: int, skipped: int = 0) -> bool:
        """Hand one pulled image (H, W, 3) uint8 BGR to consumers; timestamps are those
        taken when the pull returned. ``skipped``: frames the source discarded just
        before this one (they take the ``seq`` numbers before it, so the gap shows the
        loss). False when the capture is closing."""
        with self._lock:
            self._skip_locked(skipped)
            frame = Frame(self.camera_id, self._seq, t_mono, t_wall, image)
            self._seq += 1
            self._pull_times.append(t_mono)
            self._frame_size = (image.shape[0], image.shape[1])
        self._session_frames += 1
        if self._session_frames == 1:
            self._session_first = time.monotonic()
        if self._session_frames == 1 and self._state != "running":
            self._set_state("running", f"{image.shape[1]}x{image.shape[0]}")
        if not self._mailbox.put(frame, block=self.spec.lossless):
            return False
        self._last_progress = time.monotonic()
        if self._on_frame is not None:
            self._on_frame(self.camera_id)
        return True

    def _skip(self, lost: int) -> None:
        """``lost`` frames left the source and were discarded before they were pulled."""
        with self._lock:
            self._skip_locked(lost)

    def _skip_locked(self, lost: int) -> None:
        if lost > 0:
            self._seq += lost
            self._source_dropped += lost

    def _since_progress(self) -> float:
        """Seconds since the session started or last delivered a frame."""
        return time.monotonic() - self._last_progress

    def _count_error(self, detail: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = detail
        log.warning("%s: %s", self.camera_id, detail)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown capture state {state!r}")
        with self._lock:
            if self._failed_outside and state != "failed":
                return  # fail() was called: the capture thread's late changes do not count
            self._state = state
            self._state_detail = detail
        log.info("%s: %s%s", self.camera_id, state, f" ({detail})" if detail else "")
        if self._on_state is not None:
            try:
                self._on_state(self.camera_id, state, detail)
            except Exception:  # a broken listener must not kill the capture
                log.exception("%s: on_state callback failed", self.camera_id)

    def _main(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                self._session_frames = 0
                self._last_progress = time.monotonic()
                try:
                    outcome, detail = self._session()
                except Exception as e:  # a bug or an odd source: keep the thread's promise
                    log.exception("%s: capture session crashed", self.camera_id)
                    detail = f"{type(e).__name__}: {e}"
                    self._count_error(detail)
                    outcome = Outcome.RETRY
                if self._stopping or outcome is Outcome.STOPPED:
                    break
                if outcome is Outcome.END:
                    self._set_state("eos", detail)
                    break
                if outcome is Outcome.RESTART:
                    continue
                if outcome is Outcome.FATAL or not self.spec.live:
                    self._set_state("failed", detail)
                    break
                # recovered: frames came for healthy_s (connect time and the final
                # stall do not count, or a slow or stalling source would always pass)
                healthy = bool(self._session_frames) and (
                    self._last_progress - self._session_first >= self.options.healthy_s())
                attempt = 1 if healthy else attempt + 1
                retries = self.options.max_retries
                if 0 <= retries < attempt:
                    self._set_state("failed", f"{detail}; gave up after {retries} reconnects")
                    break
                delay = self.options.backoff.delay(attempt)
                self._set_state("reconnecting", f"{detail}; attempt {attempt} in {delay:g} s")
                if self._stop.wait(delay):
                    break
                with self._lock:
                    self._reconnects += 1
        except Exception as e:  # the loop itself broke: say so, never end as "stopped"
            log.exception("%s: capture thread crashed", self.camera_id)
            self._count_error(f"{type(e).__name__}: {e}")
            self._set_state("failed", f"capture thread crashed: {type(e).__name__}: {e}")
        finally:
            self._mailbox.finish()
            if self._state not in ENDED:
                self._set_state("stopped", "closed")
