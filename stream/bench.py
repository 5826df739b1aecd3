"""``segstream bench``: bare-engine and end-to-end FPS with per-stage latency.

For each configuration (model x backend x camera resolution):

1. engine: ``backend.infer`` on one pre-processed batch, after a warm-up; every call
   returns host memory, so GPU work is complete (synchronised) when it is timed.
2. pipeline: the real pipeline (GStreamer live test source at ``source_fps`` ->
   Segmenter -> ZeroMQ publisher) with a real subscriber attached over IPC; stage
   windows are reset after the warm-up. Stages: capture (mailbox wait), pre, infer,
   post, publish (encode + send), total (capture timestamp -> sent); encode is also
   timed alone on the published maps.
3. ``--compare``: the same model on the same video file, once through the pipeline
   (file decoded as fast as consumed, no frame dropped) and once through the
   hand-written loop of :mod:`stream.handloop`.

Process CPU use (all threads; 100% = one core), peak RSS and, with ``nvidia-smi``,
GPU utilisation and memory are recorded with each pipeline run.
"""

from __future__ import annotations

import dataclasses
import json
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
from engines.spec import ModelSpec, sidecar_path
from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.stats import STAGES, Summary


@dataclass(frozen=True)
class BenchOptions:
    """How long and how hard to measure."""

    warmup_s: float = 2.0
    duration_s: float = 10.0
    engine_iters: int = 200
    source_fps: int = 0  # 0: 1.5x the bare engine rate (30..240), so the engine is the limit
    encoding: str = "zstd"
    threads: int | None = None
    compare_frames: int = 600


@dataclass(frozen=True)
class BenchCase:
    """One configuration: model file, backend and camera resolution (H, W)."""

    model: Path
    backend: str
    resolution: tuple[int, int]

    @property
    def label(self) -> str:
        return (f"{self.model.stem}/{self.backend}/{precision_of(self.model)}/"
                f"{self.resolution[0]}x{self.resolution[1]}")


def precision_of(model: Path) -> str:
    """fp32 / fp16 / int8 as the model file itself says (Q/DQ nodes, fp16 weights, or
    a TensorRT engine's sidecar)."""
    if model.suffix == ".onnx":
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        ops = {n.op_type for n in m.graph.node}
        if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
            return "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
            return "fp16"
        return "fp32"
    side = sidecar_path(model)
    if side.is_file():
        doc = json.loads(side.read_text())
        return str(doc.get("precision") or doc.get("metrics", {}).get("precision") or "?")
    return "?"


def bench_engine(model: Path, backend: str, opts: BenchOptions) -> dict[str, Any]:
    """Bare engine: infer() calls per second on one fixed batch, with p50/p99."""
    be = create_backend(model, backend, threads=opts.threads)
    try:
        n, c, h, w = be.input_shape
        batch = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(be.input_dtype)
        deadline = time.perf_counter() + opts.warmup_s
        while time.perf_counter() < deadline:
            be.infer(batch)
        times = []
        t_end = time.perf_counter() + max(opts.duration_s / 2, 1.0)
        while len(times) < opts.engine_iters and time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            be.infer(batch)
            times.append(time.perf_counter_ns() - t0)
    finally:
        be.close()
    s = Summary.of(times)
    return {"fps": 1e3 / s.mean_ms, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "iters": s.count,
            "input_shape": [n, c, h, w]}


class _Usage:
    """Process CPU time and wall time between start() and stop()."""

    def start(self) -> None:
        t = os.times()
        self._cpu, self._wall = t.user + t.system, time.monotonic()

    def stop(self) -> dict[str, Any]:
        t = os.times()
        wall = time.monotonic() - self._wall
        cpu = (t.user + t.system - self._cpu) / wall * 100 if wall > 0 else float("nan")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"cpu_percent": round(cpu, 1), "peak_rss_mib": round(rss, 1), **gpu_usage()}


def gpu_usage() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {"gpu_util_percent": None, "gpu_mem_mib": None}
    out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=5, check=False).stdout.strip().splitlines()
    if not out:
        return {"gpu_util_percent": None, "gpu_mem_mib": None}
    util, mem = (float(v) for v in out[0].split(","))
    return {"gpu_util_percent": util, "gpu_mem_mib": mem}


def _subscribe(endpoint: str, stop: threading.Event, box: dict[str, Any]) -> None:
    from stream.subscribe import LabelMessage, Subscriber

    latencies, received, last = [], 0, None
    with Subscriber(endpoint, timeout=0.2) as sub:
        box["ready"].set()
        while not stop.is_set():
            msg = sub.receive(0.2)
            if isinstance(msg, LabelMessage):
                received += 1
                last = msg.labels.copy()
                lat = msg.latency_ns(same_host=True)
                if lat is not None:
                    latencies.append(lat)
        box.update(received=received, lost=sub.stats.lost, last=last,
                   latency=Summary.of(latencies))


def run_pipeline_measured(cfg: PipelineConfig, opts: BenchOptions, *,
                          warmup_s: float | None = None) -> dict[str, Any]:
    """Run ``cfg`` with a subscriber attached; stats reset after the warm-up."""
    from stream.pipeline import CameraStats
    from stream.runner import run_pipeline

    endpoint = cfg.publish.endpoints[0].replace("*", "127.0.0.1")
    stop, sub_stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {"ready": threading.Event()}
    sub = threading.Thread(target=_subscribe, args=(endpoint, sub_stop, box), daemon=True)
    usage, ready = _Usage(), {}

    def on_ready(pipeline: Any) -> None:
        ready["pipeline"] = pipeline
        sub.start()
        box["ready"].wait(5)

    warm = opts.warmup_s if warmup_s is None else warmup_s

    def reset_after_warmup() -> None:
        if stop.wait(warm) or "pipeline" not in ready:
            return
        p = ready["pipeline"]
        for cam in p.stats:
            p.stats[cam] = CameraStats()
        usage.start()
        ready["t_reset"] = time.monotonic()

    timer = threading.Thread(target=reset_after_warmup, daemon=True)
    usage.start()
    timer.start()
    with open(os.devnull, "w") as devnull:
        code, result = run_pipeline(cfg, stop=stop, out=devnull, on_ready=on_ready)
    t_end = time.monotonic()
    stop.set()
    used = usage.stop()
    sub_stop.set()
    if sub.is_alive():
        sub.join(5)
    cam = next(iter(result.per_camera.values()))
    stages = {s: dataclasses.asdict(cam.times.summary(s)) for s in STAGES}
    if box.get("last") is not None:
        stages["encode"] = dataclasses.asdict(_time_encode(box["last"], cfg.publish.encoding))
    if "t_reset" in ready:  # measured window: after the warm-up
        seconds = t_end - ready["t_reset"]
    else:
        seconds = result.seconds
    fps = cam.published / seconds if seconds > 0 else 0.0
    return {"exit_code": code, "error": result.error, "fps": fps,
            "published": cam.published, "seconds": seconds, "stages": stages,
            "dropped": _dropped(ready.get("pipeline")),
            "subscriber": {"received": box.get("received", 0), "lost": box.get("lost", 0),
                           "latency": dataclasses.asdict(box["latency"])
                           if "latency" in box else None},
            **used}


def _dropped(pipeline: Any) -> int:
    return sum(s.dropped for s in pipeline.sources) if pipeline is not None else 0


def _time_encode(labels: np.ndarray, encoding: str, n: int = 50) -> Summary:
    from stream.wire import PayloadEncoder

    enc = PayloadEncoder(encoding)
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        enc.encode(labels)
        times.append(time.perf_counter_ns() - t0)
    return Summary.of(times)


def bench_pipeline(case: BenchCase, opts: BenchOptions, engine_fps: float = 0.0) -> dict[str, Any]:
    h, w = case.resolution
    fps = opts.source_fps or int(min(240, max(30, 1.5 * engine_fps)))
    src = SourceConfig(f"test://smpte?width={w}&height={h}&fps={fps}", "bench")
    cfg = PipelineConfig(sources=(src,), model=str(case.model), backend=case.backend,
                         threads=opts.threads, stats_interval=0,
                         publish=PublishConfig((_ipc(),), encoding=opts.encoding),
                         duration=opts.warmup_s + opts.duration_s)
    return {"source_fps": fps, **run_pipeline_measured(cfg, opts)}


def _ipc() -> str:
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


def bench_compare(case: BenchCase, opts: BenchOptions, workdir: Path) -> dict[str, Any]:
    """Pipeline vs the hand-written loop on the same clip, every frame processed."""
    from stream.handloop import run_hand_loop

    n = opts.compare_frames
    video = make_video(workdir / f"compare_{case.resolution[0]}x{case.resolution[1]}.avi",
                       n, case.resolution)
    hand = run_hand_loop(case.model, video, n, _ipc())
    cfg = PipelineConfig(sources=(SourceConfig(f"{video}?realtime=0", "bench"),),
                         model=str(case.model), backend=case.backend, threads=opts.threads,
                         stats_interval=0, publish=PublishConfig((_ipc(),),
                                                                 encoding=opts.encoding))
    pipe = run_pipeline_measured(cfg, opts, warmup_s=0.0)
    return {"frames": n, "hand_loop": hand, "pipeline_fps": pipe["fps"],
            "pipeline_published": pipe["published"],
            "speedup": pipe["fps"] / hand["fps"] if hand["fps"] else None}


def run_bench(cases: list[BenchCase], opts: BenchOptions, *, compare: bool = False,
              workdir: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """Measure every case; returns the JSON-able report (machine, options, results)."""
    from stream.machine import machine_info

    results = []
    for case in cases:
        spec = ModelSpec.load(sidecar_path(case.model))
        entry: dict[str, Any] = {
            "label": case.label, "model": str(case.model), "backend": case.backend,
            "precision": precision_of(case.model), "resolution": list(case.resolution),
            "model_input": list(spec.input_size), "model_output": spec.output}
        entry["engine"] = bench_engine(case.model, case.backend, opts)
        _step(progress, f"{case.label}: pipeline")
        entry["pipeline"] = bench_pipeline(case, opts, entry["engine"]["fps"])
        entry["pipeline_vs_engine"] = entry["pipeline"]["fps"] / entry["engine"]["fps"]
        if compare:
            _step(progress, f"{case.label}: compare")
            entry["compare"] = bench_compare(case, opts, workdir or Path("/tmp"))
        results.append(entry)
        _step(progress, f"{case.label}: done", advance=1)
    return {"segstream_bench": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(), "options": dataclasses.asdict(opts),
            "results": results}


def _step(progress: Any, text: str, advance: int = 0) -> None:
    if progress is not None:
        progress.set_postfix_str(text)
        progress.update(advance)
