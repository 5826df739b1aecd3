"""One measured run of each kind for ``segstream bench`` (:mod:`stream.bench` repeats and
interleaves them):

- :func:`bench_engine`: ``backend.infer`` on one pre-processed batch, after a warm-up;
  every call returns host memory, so GPU work is complete (synchronised) when timed.
- :func:`bench_pipeline`: the real pipeline (GStreamer live test sources -> Segmenter ->
  ZeroMQ publisher) with a real subscriber attached over IPC, with the concurrency
  settings of a :class:`PipelineSettings` (overlap, engine policy, batch, cameras); stage
  windows are reset after the warm-up. Stages: capture (mailbox wait), pre, infer,
  handoff, post, publish (encode + send), total (capture timestamp -> sent), pooled over
  the cameras and per camera; encode is also timed alone on a published map.
- :func:`bench_clip_pipeline`: the pipeline on a video clip decoded as fast as consumed
  (no frame dropped), the counterpart of :func:`stream.handloop.run_hand_loop`.

Process CPU use (all threads; 100% = one core) and per thread group
(:mod:`stream.bench_cpu`), resident memory at the end of the run and, with
``nvidia-smi``, GPU utilisation and memory are recorded with each pipeline run.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import resource
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import create_backend
from stream.bench_cpu import ThreadCpu
from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.machine import cpu_jiffies
from stream.stats import STAGES, Summary

SOURCE_LIMITED = 0.9  # pipeline fps >= this x the source rate: the camera may be the limit


def bench_engine(model: Path, backend: str, *, threads: int | None, warmup_s: float,
                 max_s: float, iters: int) -> dict[str, Any]:
    """Bare engine: up to ``iters`` infer() calls within ``max_s`` s on one fixed batch.

    Returns fps (1 / mean call time), p50/p99 ms, iters and the (N, C, H, W) input shape.
    """
    be = create_backend(model, backend, threads=threads)
    try:
        n, c, h, w = be.input_shape
        batch = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(be.input_dtype)
        deadline = time.perf_counter() + warmup_s
        be.infer(batch)
        while time.perf_counter() < deadline:
            be.infer(batch)
        times = []
        t_end = time.perf_counter() + max_s
        while len(times) < iters and time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            be.infer(batch)
            times.append(time.perf_counter_ns() - t0)
    finally:
        be.close()
    s = Summary.of(times)
    return {"fps": 1e3 / s.mean_ms, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "iters": s.count,
            "input_shape": [n, c, h, w]}


def bench_engine_in_flight(model: Path, backend: str, *, threads: int | None,
                           warmup_s: float, max_s: float, iters: int) -> dict[str, Any] | None:
    """The engine as the pipeline's throughput mode runs it: ONNX Runtime's calls side by
    side, the threads split between their sessions (``policy="throughput"``), kept full
    with submit/collect.
    Returns fps (calls finished / elapsed), calls and in_flight; None for backends without
    that mode (TensorRT double-buffers inside the pipeline; torch has none)."""
    if backend != "onnxruntime":
        return None
    be = create_backend(model, backend, threads=threads, policy="throughput")
    try:
        batch = np.random.default_rng(0).standard_normal(be.input_shape).astype(be.input_dtype)
        depth = be.in_flight

        def run_for(seconds: float, limit: int) -> tuple[int, float]:
            done, t0 = 0, time.perf_counter()
            deadline = t0 + seconds
            for _ in range(depth):
                be.submit(batch)
            while done < limit and time.perf_counter() < deadline:
                be.collect()
                done += 1
                be.submit(batch)
            elapsed = time.perf_counter() - t0
            for _ in range(depth):  # the calls still running are not counted
                be.collect()
            return done, elapsed

        run_for(warmup_s, 1 << 30)
        calls, elapsed = run_for(max_s, iters)
    finally:
        be.close()
    return {"fps": calls / elapsed if elapsed > 0 else 0.0, "calls": calls, "in_flight": depth}


def _rss_mib() -> float:
    """Resident memory now (Linux), else the process's peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Usage:
    """Process CPU time and wall time between start() and stop()."""

    def start(self) -> None:
        t = os.times()
        self._cpu, self._wall = t.user + t.system, time.monotonic()

    def stop(self) -> dict[str, Any]:
        t = os.times()
        wall = time.monotonic() - self._wall
        cpu = (t.user + t.system - self._cpu) / wall * 100 if wall > 0 else float("nan")
        return {"cpu_percent": round(cpu, 1), "rss_mib": _rss_mib(), **gpu_usage()}


def _proc_stat() -> tuple[float, float] | None:
    """(busy, steal) seconds of the whole machine since boot, from /proc/stat (Linux)."""
    fields = cpu_jiffies()
    if fields is None:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / hz, steal / hz


class MachineLoad:
    """CPU used by *other* processes (machine busy time minus this process's CPU time)
    and time stolen by the hypervisor between start() and stop(), in % of one core:
    what makes figures on a shared machine or VM unreliable."""

    def start(self) -> None:
        t = os.times()
        self._own, self._wall, self._stat = t.user + t.system, time.monotonic(), _proc_stat()

    def stop(self) -> dict[str, float | None]:
        t, now, wall = os.times(), _proc_stat(), time.monotonic() - self._wall
        if self._stat is None or now is None or wall <= 0:
            return {"others_cpu_percent": None, "steal_percent": None}
        own = t.user + t.system - self._own
        others = max(0.0, now[0] - self._stat[0] - own)
        return {"others_cpu_percent": round(others / wall * 100, 1),
                "steal_percent": round((now[1] - self._stat[1]) / wall * 100, 1)}


def gpu_usage() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {"gpu_util_percent": None, "gpu_mem_mib": None}
    try:  # no answer, "[N/A]" under MIG, an odd driver: not a figure, not an error either
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip().splitlines()
        util, mem = (float(v) for v in out[0].split(","))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {"gpu_util_percent": None, "gpu_mem_mib": None}
    return {"gpu_util_percent": util, "gpu_mem_mib": mem}


def _subscribe(endpoint: str, stop: threading.Event, box: dict[str, Any]) -> None:
    from stream.subscribe import LabelMessage, Subscriber

    latencies, received, last, lost_at_reset = [], 0, None, 0
    with Subscriber(endpoint, timeout=0.2) as sub:
        box["ready"].set()
        while not stop.is_set():
            msg = sub.receive(0.2)
            if box["reset"].is_set():  # the measured window starts: warm-up not counted
                box["reset"].clear()
                latencies, received, lost_at_reset = [], 0, sub.stats.lost
            if isinstance(msg, LabelMessage):
                received += 1
                last = msg.labels  # the message's own array: no copy per map
                lat = msg.latency_ns(same_host=True)
                if lat is not None:
                    latencies.append(lat)
        box.update(received=received, lost=sub.stats.lost - lost_at_reset, last=last,
                   latency=Summary.of(latencies))


@dataclass(frozen=True)
class PipelineSettings:
    """The pipeline's settings a bench case varies (``segstream run``'s ``--overlap``,
    ``--engine-policy``, ``--batch``, ``--batch-wait-ms``, ``--tta``) and how many live
    test cameras feed it."""

    overlap: str = PipelineConfig.overlap
    engine_policy: str = PipelineConfig.engine_policy
    batch: int = PipelineConfig.batch
    batch_wait_ms: float = PipelineConfig.batch_wait_ms
    cameras: int = 1
    tta: str = PipelineConfig.tta

    def config(self) -> dict[str, Any]:
        """The :class:`~stream.config.PipelineConfig` keys (all but ``cameras``)."""
        return {"overlap": self.overlap, "engine_policy": self.engine_policy,
                "batch": self.batch, "batch_wait_ms": self.batch_wait_ms, "tta": self.tta}


def run_pipeline_measured(cfg: PipelineConfig, *, warmup_s: float,
                          window_s: float = 0.0) -> dict[str, Any]:
    """Run ``cfg`` with a subscriber attached. With ``window_s`` > 0 the run is measured
    for ``window_s`` s after ``warmup_s`` s (stage windows, counters, CPU clocks reset
    then) and stopped; otherwise it runs until ``cfg`` ends it and is measured whole.

    Returns fps and counts over all cameras, pooled stage summaries, per camera
    (``cameras``) fps, capture -> publish summary and drops, the engine's mode
    (``engine``, with the share of time in latency mode), the process's CPU use and
    per-thread-group CPU (``cpu_threads``, :mod:`stream.bench_cpu`).
    """
    from stream.runner import run_pipeline

    endpoint = cfg.publish.endpoints[0].replace("*", "127.0.0.1")
    stop, sub_stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {"ready": threading.Event(), "reset": threading.Event()}
    sub = threading.Thread(target=_subscribe, args=(endpoint, sub_stop, box),
                           name="bench-subscriber", daemon=True)
    usage, marks, cpu = _Usage(), {}, ThreadCpu()
    modes: list[str] = []  # the engine's mode, once per CPU sample

    def on_ready(pipeline: Any) -> None:
        marks["pipeline"] = pipeline
        cpu.engine_tid = threading.get_native_id()  # Pipeline.run runs on this thread
        cpu.mark_publisher()  # before the subscriber's own ZeroMQ threads start
        cpu.on_sample = lambda: modes.append(pipeline.engine_mode().mode)
        sub.start()
        box["ready"].wait(5)
        if window_s > 0:
            threading.Thread(target=window, name="bench-window", daemon=True).start()
        else:
            cpu.reset()
            modes.clear()
        marks["t_run"] = time.monotonic()  # Pipeline.run starts now

    def window() -> None:
        if warmup_s > 0 and stop.wait(warmup_s):
            return
        p = marks["pipeline"]
        p.reset_stats()
        marks["camera_dropped"] = {s.camera_id: s.dropped for s in p.sources}
        marks["switches"] = p.engine_mode().switches
        usage.start()
        cpu.reset()
        modes.clear()
        box["reset"].set()
        marks["t_reset"] = time.monotonic()
        if not stop.wait(window_s):
            cpu.freeze()
            try:  # CPU, RSS and GPU memory of the running pipeline, before its teardown
                marks["usage"] = usage.stop()
            finally:
                stop.set()

    usage.start()
    cpu.start()
    try:
        with open(os.devnull, "w") as devnull:
            code, result = run_pipeline(cfg, stop=stop, out=devnull, on_ready=on_ready)
    finally:  # on an error too: the CPU sampler, window and subscriber threads end
        stop.set()
        used = marks.get("usage") or usage.stop()  # whole runs: up to their end
        threads = cpu.result()
        sub_stop.set()
        if sub.is_alive():
            sub.join(5)
    # The loop's own end (closing the cameras and the publisher is not measured).
    seconds = result.seconds
    if "t_reset" in marks:
        seconds = marks["t_run"] + result.seconds - marks["t_reset"]
    per_cam = result.per_camera
    stages = {s: dataclasses.asdict(Summary.of(
        itertools.chain.from_iterable(st.times.samples(s) for st in per_cam.values())))
        for s in (*STAGES, "handoff")}
    if box.get("last") is not None:
        stages["encode"] = dataclasses.asdict(_time_encode(box["last"], cfg.publish.encoding))
    at_reset = marks.get("camera_dropped", {})
    cameras = {cam: {"published": st.published,
                     "fps": st.published / seconds if seconds > 0 else 0.0,
                     "dropped": result.camera_dropped.get(cam, 0) - at_reset.get(cam, 0),
                     "handoff_dropped": st.dropped,
                     "total": dataclasses.asdict(st.times.summary("total"))}
               for cam, st in per_cam.items()}
    published = sum(st.published for st in per_cam.values())
    engine = dataclasses.asdict(result.engine) if result.engine is not None else {}
    engine["latency_share"] = modes.count("latency") / len(modes) if modes else None
    if "switches" in engine:  # the measured window's, like the other engine-mode figures
        engine["switches"] -= marks.get("switches", 0)
    return {"exit_code": code, "error": result.error,
            "fps": published / seconds if seconds > 0 else 0.0,
            "published": published, "seconds": seconds, "stages": stages,
            "dropped": sum(c["dropped"] for c in cameras.values()),
            # results a newer one replaced before post-processing (overlapped stages)
            "post_dropped": sum(c["handoff_dropped"] for c in cameras.values()),
            "cameras": cameras, "engine": engine, "cpu_threads": threads,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                       if k not in ("sources", "publish", "model")},
            "subscriber": {"received": box.get("received", 0), "lost": box.get("lost", 0),
                           "latency": dataclasses.asdict(box["latency"])
                           if "latency" in box else None},
            **used}


def _time_encode(labels: np.ndarray, encoding: str, n: int = 50) -> Summary:
    from stream.wire import PayloadEncoder

    enc = PayloadEncoder(encoding)
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        enc.encode(labels)
        times.append(time.perf_counter_ns() - t0)
    return Summary.of(times)


def bench_pipeline(model: Path, backend: str, resolution: tuple[int, int], *,
                   source_fps: int, threads: int | None, encoding: str, warmup_s: float,
                   duration_s: float,
                   settings: PipelineSettings = PipelineSettings()) -> dict[str, Any]:
    """The pipeline on ``settings.cameras`` live ``videotestsrc`` cameras (the same
    pattern each) at ``source_fps`` each, (H, W) frames."""
    h, w = resolution
    n = settings.cameras
    srcs = tuple(SourceConfig(f"test://smpte?width={w}&height={h}&fps={source_fps}",
                              "bench" if n == 1 else f"cam{i}") for i in range(n))
    cfg = PipelineConfig(sources=srcs, model=str(model), backend=backend, threads=threads,
                         stats_interval=0, publish=PublishConfig((ipc_endpoint(),),
                                                                 encoding=encoding),
                         duration=warmup_s + duration_s + 10,  # a backstop: the window stops it
                         **settings.config())
    run = run_pipeline_measured(cfg, warmup_s=warmup_s, window_s=duration_s)
    return {"source_fps": source_fps,
            "source_limited": run["fps"] >= SOURCE_LIMITED * source_fps * n, **run}


def bench_clip_pipeline(model: Path, backend: str, video: Path, frames: int, *,
                        threads: int | None, encoding: str,
                        settings: PipelineSettings = PipelineSettings()) -> dict[str, Any]:
    """The pipeline on ``video`` decoded as fast as consumed, stopped after ``frames``
    label maps: fps over the whole run, like the hand loop's (one camera)."""
    cfg = PipelineConfig(sources=(SourceConfig(f"{video}?realtime=0", "bench"),),
                         model=str(model), backend=backend, threads=threads,
                         stats_interval=0, max_frames=frames,
                         publish=PublishConfig((ipc_endpoint(),), encoding=encoding),
                         **settings.config())
    return run_pipeline_measured(cfg, warmup_s=0.0)


def ipc_endpoint() -> str:
    return f"ipc:///tmp/segstream-bench-{uuid.uuid4().hex[:8]}"


def make_video(path: Path, frames: int, resolution: tuple[int, int]) -> Path:
    """Encode a test clip (MPEG-4 in AVI) that both OpenCV and GStreamer decode."""
    h, w = resolution
    if not shutil.which("gst-launch-1.0"):
        raise RuntimeError("--compare needs gst-launch-1.0 (gstreamer1.0-tools)")
    subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", f"num-buffers={frames}",
                    "pattern=ball", "!", f"video/x-raw,width={w},height={h},framerate=30/1",
                    "!", "videoconvert", "!", "avenc_mpeg4", "bitrate=4000000", "!", "avimux",
                    "!", "filesink", f"location={path}"], check=True, timeout=120,
                   capture_output=True)
    return path
