"""Concurrency policies of the pipeline: stage overlap, and the engine thread policy.

``--overlap auto|on|off`` (:func:`resolve_overlap`): with overlap, post-processing,
encoding and publishing run on a post worker while the engine thread runs the next
engine call. Whether the engine then waits for the worker to take its previous results
depends on where the engine runs: on the CPU it shares the cores with the worker, and a
result computed only to be replaced (newest wins) would steal them from the frames that
are published, so it waits; on a GPU the engine's time is not the CPU's, it never waits
and the newest result wins. ``auto`` is ``on`` for every backend: on the project's
2-core CPU it measured within the noise of ``off`` (docs/benchmarks.md, "Pipeline
concurrency") and it keeps a slow send from delaying the next engine call; on a GPU it is
what keeps the GPU busy while the CPU post-processes and publishes.

``--engine-policy auto|latency|throughput`` (:class:`EngineGovernor`, modes of
:class:`engines.ort_backend.OrtBackend`): latency runs one call at a time on all threads,
spinning while it runs (a camera slower than the engine gets the back-to-back engine
time); throughput runs two calls at once on single-threaded sessions, no spinning (the
most frames per second when the pipeline is CPU-bound). ``auto`` measures, over each
second, the engine's load and the machine's idle CPU (``/proc/stat``: other processes
count too), and switches with hysteresis: to latency when the load is below ``low`` and
at least ``min_idle`` of all cores is idle; to throughput when the load is above
``high`` or less than ``min_idle / 2`` of the cores is idle. (A light engine load alone
is not enough: a pipeline limited by decoding also leaves the engine waiting, and there
spinning takes the decoder's core.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engines.ort_backend import OrtBackend
from stream.config import OVERLAP_MODES
from stream.machine import cpu_jiffies

log = logging.getLogger("segstream.pipeline")


@dataclass(frozen=True)
class Overlap:
    """How the stages overlap.

    Attributes:
        post_worker: post, encode and publish on their own thread.
        engine_waits: the engine starts a call only once the worker has taken the
            previous results (CPU engines); otherwise a newer result replaces an untaken one.
    """

    post_worker: bool
    engine_waits: bool


def engine_on_cpu(backend: object) -> bool:
    """Whether ``backend`` computes on the CPU (ONNX Runtime's CPU provider, torch on CPU)."""
    name = getattr(backend, "name", "")
    if name == "tensorrt":
        return False
    if name == "torch":
        return str(getattr(backend, "device", "cpu")).startswith("cpu")
    return True


def resolve_overlap(mode: str, backend: object) -> Overlap:
    """The :class:`Overlap` for ``--overlap MODE`` with ``backend`` (None: unknown, CPU)."""
    if mode not in OVERLAP_MODES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_MODES)}, got {mode!r}")
    if mode == "off":
        return Overlap(post_worker=False, engine_waits=False)
    return Overlap(post_worker=True, engine_waits=engine_on_cpu(backend))


def cpu_times() -> tuple[int, int] | None:
    """(idle, total) CPU time of all cores since boot in jiffies, from ``/proc/stat``;
    None where there is none (not Linux)."""
    fields = cpu_jiffies()
    if fields is None:
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


class EngineGovernor:
    """Switches an ``OrtBackend(policy="auto")`` between its latency and throughput modes.

    The engine thread reports each engine call's duration (:meth:`call`) and calls
    :meth:`update` once per loop. Every ``window_s`` the engine's load, the calls' time
    over the window's wall time times the calls the current mode runs at once (its
    ``in_flight``: a throughput mode running one call at a time on two single-threaded
    sessions is half loaded), and the machine's idle CPU decide (module docstring).
    ``cpu`` reads (idle, total) CPU time (default :func:`cpu_times`).
    """

    def __init__(self, backend: OrtBackend, *, window_s: float = 1.0, low: float = 0.5,
                 high: float = 0.75, min_idle: float = 0.3,
                 cpu: Callable[[], tuple[int, int] | None] | None = None) -> None:
        self.backend = backend
        self._read_cpu = cpu or cpu_times
        self.window_ns = int(window_s * 1e9)
        self.low, self.high, self.min_idle = low, high, min_idle
        self.load = float("nan")  # the engine's, last full window (0..1)
        self.cpu_idle = float("nan")  # the machine's idle CPU (all cores), last full window
        self.switches = 0
        self._start = time.monotonic_ns()
        self._cpu = self._read_cpu()
        self._busy = 0

    @classmethod
    def for_backend(cls, backend: object) -> EngineGovernor | None:
        """A governor when ``backend`` has both modes (ONNX Runtime, policy auto)."""
        if isinstance(backend, OrtBackend) and backend.policy == "auto":
            return cls(backend)
        return None

    def call(self, ns: int) -> None:
        """One engine call ran ``ns`` (its own run time where the backend measures it)."""
        self._busy += ns

    def update(self) -> None:
        now = time.monotonic_ns()
        wall = now - self._start
        if wall < self.window_ns:
            return
        self.load = min(1.0, self._busy / (wall * self.backend.in_flight))
        cpu = self._read_cpu()
        if cpu is not None and self._cpu is not None and cpu[1] > self._cpu[1]:
            self.cpu_idle = (cpu[0] - self._cpu[0]) / (cpu[1] - self._cpu[1])
        self._start, self._busy, self._cpu = now, 0, cpu
        now_mode = self.backend.mode
        idle = 1.0 if self.cpu_idle != self.cpu_idle else self.cpu_idle  # NaN: unknown
        if self.load > self.high or idle < self.min_idle / 2:
            want = "throughput"
        elif self.load < self.low and idle >= self.min_idle:
            want = "latency"
        else:
            want = now_mode
        if want != now_mode:
            self.backend.set_mode(want)
            self.switches += 1
            log.info("engine load %.0f %%, CPU idle %.0f %%: %s", 100 * self.load,
                     100 * idle, "latency mode (one session, threads spin)"
                     if want == "latency" else "throughput mode (calls side by side)")

    @property
    def mode(self) -> str:
        return self.backend.mode
