"""Latency and rate statistics for the live pipeline and the benchmark.

All times are nanoseconds from ``time.monotonic_ns`` / ``time.perf_counter_ns``;
reported figures are milliseconds and frames per second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

STAGES = ("capture", "pre", "infer", "post", "encode", "publish", "total")


@dataclass(frozen=True)
class Summary:
    """Percentiles of one stage over the window, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ns: Iterable[int]) -> Summary:
        a = np.fromiter(samples_ns, dtype=np.float64)
        if a.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        a /= 1e6
        p50, p99 = np.percentile(a, [50, 99])
        return cls(int(a.size), float(a.mean()), float(p50), float(p99), float(a.max()))


class StageTimes:
    """Rolling windows of per-stage durations plus a frame-rate meter.

    ``add(stage, ns)`` records one duration; ``tick()`` counts one finished frame.
    Windows hold the last ``window`` samples, so percentiles follow the live state.

    Thread use: the post worker writes while the status line, ``/metrics`` and the
    preview read from other threads; one lock makes every read a consistent snapshot
    (iterating a deque or dict that another thread appends to raises ``RuntimeError``).
    """

    def __init__(self, window: int = 2000) -> None:
        self._w: dict[str, deque[int]] = {s: deque(maxlen=window) for s in STAGES}
        self._ticks: deque[int] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.frames = 0

    def add(self, stage: str, ns: int) -> None:
        with self._lock:
            self._w.setdefault(stage, deque(maxlen=self._ticks.maxlen)).append(int(ns))

    def tick(self, t_ns: int | None = None) -> None:
        t = time.monotonic_ns() if t_ns is None else t_ns
        with self._lock:
            self._ticks.append(t)
            self.frames += 1

    def fps(self, horizon_s: float = 2.0, now_ns: int | None = None) -> float:
        """Frames per second of the ticks in the ``horizon_s`` seconds up to now
        (``now_ns``, default ``time.monotonic_ns()``, the ticks' clock): the rate between
        the first and last of them, so a steady camera reads its rate, and one that stops
        falls to 0 once its ticks leave the horizon instead of showing its last rate for
        good."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        start_limit = now - int(horizon_s * 1e9)
        with self._lock:  # walks back over the horizon only, not the whole window
            if len(self._ticks) < 2:
                return 0.0
            end = self._ticks[-1]
            n, first = 0, end
            for t in reversed(self._ticks):
                if t < start_limit:
                    break
                n, first = n + 1, t
        return (n - 1) * 1e9 / (end - first) if n > 1 and end > first else 0.0

    def summary(self, stage: str) -> Summary:
        return Summary.of(self.samples(stage))

    def summaries(self) -> dict[str, Summary]:
        with self._lock:
            windows = {s: list(d) for s, d in self._w.items() if d}
        return {s: Summary.of(v) for s, v in windows.items()}

    def samples(self, stage: str) -> list[int]:
        """The window's durations of ``stage`` in ns, oldest first (e.g. to pool cameras)."""
        with self._lock:
            return list(self._w.get(stage, ()))


@dataclass(frozen=True)
class EngineMode:
    """How the pipeline runs its engine right now (what ``--overlap``, ``--engine-policy``
    and ``--batch`` resolved to), as the status line, ``/metrics``, the preview's
    ``/api/status`` and the final summary report it.

    Attributes:
        overlap: post, encode and publish run on the post worker (``--overlap`` on/auto).
        mode: the backend's current mode: ONNX Runtime ``latency`` (one spinning
            session), ``throughput`` (calls side by side) or ``plain`` (one session, no
            policy); ``fixed`` for backends without modes (TensorRT, torch).
        auto: ``--engine-policy auto`` switches ``mode`` by measured load.
        switches: mode switches so far (auto).
        in_flight: engine calls that may run at once now (2: double-buffered / side by side).
        batch: most frames of different cameras one engine call takes.
    """

    overlap: bool
    mode: str
    auto: bool
    switches: int
    in_flight: int
    batch: int

    def describe(self) -> str:
        """``overlap on, throughput (auto, 1 switch), 2 in flight, batch 1``."""
        how = f"auto, {self.switches} switch{'es' if self.switches != 1 else ''}"
        return (f"overlap {'on' if self.overlap else 'off'}, {self.mode}"
                f"{f' ({how})' if self.auto else ''}, {self.in_flight} in flight, "
                f"batch {self.batch}")


def format_line(camera: str, fps: float, s: dict[str, Summary], dropped: int,
                state: str = "running", handoff_dropped: int = 0,
                engine: EngineMode | None = None) -> str:
    """One compact status line: ``cam0 29.8 fps | e2e p50 12.1 p99 20.3 ms | infer ...
    | dropped 4, hand-off 1 | overlap on, ...``: ``dropped`` are frames lost before the engine
    took them (the camera's newest-frame slot replaced them, or its appsink discarded them
    before the capture thread pulled them), ``hand-off`` results the post
    worker's slot replaced before it took them; then the engine's mode."""
    def part(name: str) -> str:
        x = s.get(name)
        return f"{name} {x.p50_ms:5.1f}/{x.p99_ms:5.1f}" if x and x.count else f"{name} -"
    stages = " ".join(part(n) for n in ("pre", "infer", "post", "publish"))
    total = s.get("total")
    e2e = f"e2e p50 {total.p50_ms:6.1f} p99 {total.p99_ms:6.1f} ms" if total and total.count \
        else "e2e -"
    mode = f" | {engine.describe()}" if engine is not None else ""
    return (f"{camera:>8} {state:>8} {fps:6.1f} fps | {e2e} | {stages} ms | dropped {dropped}, "
            f"hand-off {handoff_dropped}{mode}")
