"""Where a pipeline run's CPU goes: each thread's CPU time, grouped by what it does.

``segstream bench`` records this with every pipeline run (``cpu_threads`` in the JSON, the
"Where the CPU goes" tables). Linux only: each thread's CPU time comes from
``/proc/self/task/<tid>/schedstat`` (the scheduler's run time in ns), or where the kernel
has no schedstat from ``stat``'s user + system clock ticks (1/100 s: a thread busy for
20 ms of a second may then show 0 or 3 %); elsewhere the figures are absent. A sampler
thread reads every thread ``interval`` s apart, so a thread that ends during the run keeps
the time of its last sample; :meth:`ThreadCpu.reset` starts the window (after the
warm-up) and :meth:`ThreadCpu.freeze` ends it. With CPU shares in ``%`` below, 100 % is
one core.

A thread's group (:data:`GROUPS`), from its Python name (by native thread id) where it is
a Python thread, else from its kernel name (``comm``):

========== ===================================================================================
capture    GStreamer's streaming threads (source, demux, decode, convert), which GStreamer
           names after their element and pad (``videotestsrc0:src``; ``comm`` keeps 15
           characters), threads they start (FFmpeg's decoder threads inherit the name),
           GLib's ``pool-*`` threads, and segstream's ``capture-<camera>`` threads
engine     the pipeline loop's thread (fan-in, pre-processing, engine calls), the ONNX
           Runtime backend's call threads (``segstream-ort*``), and native threads under
           the process's own name started since the process's first measurement: they
           inherit the name from the thread that starts them, the loop's (ONNX Runtime's
           intra-op pool, OpenCV's pool for pre-processing, which outlives a run)
post       the post worker (``segstream-post``): upsample + argmax, the label check,
           encoding and the send call
publish    the publisher's ZeroMQ I/O threads (``ZMQbg/*`` that exist before the bench's
           subscriber connects) and its housekeeping and frame threads
subscriber the bench's own subscriber (receives and decodes every map) and its ZeroMQ
           threads: a measurement cost that a deployment pays in another process
other      everything else (native threads there at the first measurement, e.g. a BLAS
           pool; the bench's own threads)
========== ===================================================================================
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

GROUPS = ("capture", "engine", "post", "publish", "subscriber", "other")
SUBSCRIBER_THREADS = ("bench-subscriber", "segstream-subscriber")
_PY_GROUPS = (("segstream-post", "post"), ("segstream-ort", "engine"), ("capture-", "capture"),
              ("segstream-xpub", "publish"), ("segstream-frames", "publish"),
              *((name, "subscriber") for name in SUBSCRIBER_THREADS))


def thread_times() -> dict[int, tuple[str, int]]:
    """This process's threads: tid -> (kernel name, CPU time in ns); {} where there is no
    ``/proc`` (not Linux)."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return {}
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                text = f.read()
            fields = text[text.rindex(")") + 2:].split()
            ns = int((int(fields[11]) + int(fields[12])) * tick_ns)  # utime + stime
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])  # run time, ns
            except (OSError, ValueError, IndexError):
                pass  # no schedstat in this kernel: clock ticks
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (text[text.index("(") + 1:text.rindex(")")], ns)
    return out


def group_of(tid: int, comm: str, py_name: str | None, *, engine_tid: int | None,
             publisher_zmq: set[int], before: set[int]) -> str:
    """The :data:`GROUPS` entry of one thread (module docstring)."""
    if tid == engine_tid:
        return "engine"
    if py_name is not None and not py_name.startswith("Dummy-"):
        return next((g for prefix, g in _PY_GROUPS if py_name.startswith(prefix)), "other")
    if comm.startswith("ZMQbg"):
        return "publish" if tid in publisher_zmq else "subscriber"
    if ":" in comm or comm.startswith("pool-"):
        return "capture"
    if tid in before:
        return "other"
    return "engine" if comm == process_name() else "other"


def process_name() -> str:
    """The process's kernel name (``comm``), which threads inherit from their creator."""
    try:
        with open("/proc/self/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


_STARTUP: set[int] = set()  # native threads there at the first ThreadCpu.start()
_STARTED = threading.Event()


class ThreadCpu:
    """Per-thread CPU time of this process over a window, by :data:`GROUPS`.

    Call :meth:`start` before the pipeline is built,
    :meth:`mark_publisher` once the publisher is up and before the bench's subscriber
    connects, :meth:`reset` to start the window, :meth:`freeze` to end it, then
    :meth:`result`. ``on_sample`` is called from the sampler thread after each sample.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.engine_tid: int | None = None
        self.on_sample: Any = None
        self._lock = threading.Lock()
        self._last: dict[int, tuple[str, int]] = {}  # tid -> newest (comm, ticks)
        self._names: dict[int, str] = {}  # tid -> Python thread name
        self._base: dict[int, int] = {}
        self._before: set[int] = set()
        self._publisher_zmq: set[int] = set()
        self._t0 = self._t1 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)

    def start(self) -> None:
        self._sample()
        if not _STARTED.is_set():
            _STARTUP.update(self._last)
            _STARTED.set()
        self._before = set(_STARTUP)
        self.reset()
        self._thread.start()

    def mark_publisher(self) -> None:
        self._sample()
        with self._lock:
            self._publisher_zmq = {t for t, (c, _) in self._last.items() if c.startswith("ZMQbg")}

    def reset(self) -> None:
        """Start the window now."""
        self._sample()
        with self._lock:
            self._base = {t: ns for t, (_, ns) in self._last.items()}
            self._t0 = time.monotonic()

    def freeze(self) -> None:
        """End the window now (a last sample); idempotent."""
        self._sample()
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            if self.on_sample is not None:
                self.on_sample()

    def _sample(self) -> None:
        if self._stop.is_set():
            return
        now = thread_times()
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
        with self._lock:
            for tid, (comm, ns) in now.items():  # two samplers: never go back in time
                self._last[tid] = (comm, max(ns, self._last.get(tid, (comm, 0))[1]))
            self._names.update(names)
            self._t1 = time.monotonic()

    def result(self) -> dict[str, Any]:
        """``{"groups": {group: % of one core}, "total_percent", "wall_s", "threads":
        [{"tid", "name", "group", "cpu_percent"}] (busiest first, those above 0.5 %)}``;
        ``{}`` without ``/proc``."""
        self.freeze()
        with self._lock:
            wall = self._t1 - self._t0
            if not self._last or wall <= 0:
                return {}
            groups = dict.fromkeys(GROUPS, 0.0)
            threads = []
            for tid, (comm, ns) in self._last.items():
                pct = 100 * (ns - self._base.get(tid, 0)) / 1e9 / wall
                py = self._names.get(tid)
                g = group_of(tid, comm, py, engine_tid=self.engine_tid,
                             publisher_zmq=self._publisher_zmq, before=self._before)
                groups[g] += pct
                if pct > 0.5:
                    threads.append({"tid": tid, "name": py or comm, "group": g,
                                    "cpu_percent": round(pct, 1)})
        threads.sort(key=lambda t: -t["cpu_percent"])
        return {"groups": {g: round(v, 1) for g, v in groups.items()},
                "total_percent": round(sum(groups.values()), 1), "wall_s": round(wall, 2),
                "threads": threads}
