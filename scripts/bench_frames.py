"""What publishing camera frames (``--publish-frames``, wire 1.2 ``img/``) costs the
publisher: the time ``Publisher.send`` takes on the calling (engine) thread, and the
process CPU per label map, frames off and on, with a subscriber draining every topic.

    .venv/bin/python scripts/bench_frames.py [--maps 600] [--size 480x360] [--rounds 2]
    .venv/bin/python scripts/bench_frames.py --pipeline 10 [--rounds 3]

Each configuration publishes ``--maps`` label maps of a ``--size`` camera (SMPTE-like
bars with noise, so the JPEG is not trivially small) whose capture times are 1/30 s
apart, at a pace of 200 maps a second; configurations are interleaved over ``--rounds``
to spread the machine's noise. The subscriber is a raw SUB in another process, so its
CPU is not counted here.

``--pipeline SECONDS`` times whole ``segstream run`` processes instead (the shipped model,
2 threads, a ``videotestsrc`` camera of ``--size`` at 150 fps so that the engine sets the
pace) with frames off, at 10/s and for every map, interleaved, the same subscriber
reading every topic, and prints each run's fps.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np

from engines.spec import CAMVID_CLASSES
from stream.frame_pub import FrameOptions
from stream.frames import Frame
from stream.publish import Publisher
from stream.wire import ClassTable, ModelInfo

CONFIGS = {  # name -> frames option
    "frames off": None,
    "10/s, x0.5, q80 (default)": FrameOptions(10.0, 0.5, 80),
    "every map, x0.5, q80": FrameOptions(1000.0, 0.5, 80),
    "every map, x1.0, q80": FrameOptions(1000.0, 1.0, 80),
}


def drain(endpoint: str) -> None:
    """Read every topic from ``endpoint`` until 3 s pass without a message; print counts."""
    import zmq

    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 10000)
    for topic in (b"seg/", b"cls/", b"evt/", b"img/"):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    counts: dict[str, int] = {}
    sock.poll(30_000)  # the publisher may take a while to start
    while sock.poll(3000):
        topic = bytes(sock.recv_multipart(copy=False)[0].buffer[:4]).decode()
        counts[topic] = counts.get(topic, 0) + 1
    print(f"drained {endpoint}: {counts}", flush=True)


def camera(h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR: eight colour bars with mild noise."""
    bars = np.array([[192, 192, 192], [0, 192, 192], [192, 192, 0], [0, 192, 0],
                     [192, 0, 192], [0, 0, 192], [192, 0, 0], [0, 0, 0]], np.uint8)
    img = bars[np.arange(w) * 8 // w][None].repeat(h, 0)  # (h, w, 3)
    noise = np.random.default_rng(0).integers(-12, 12, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def run(options: FrameOptions | None, maps: int, image: np.ndarray) -> dict[str, float]:
    table = ClassTable.build(CAMVID_CLASSES, ModelInfo("bench", "fastscnn", (360, 480)))
    endpoint = f"ipc:///tmp/segstream-bench-frames-{uuid.uuid4().hex[:8]}.sock"
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[image.shape[0] // 2:] = 3
    with Publisher(endpoint, class_table=table, frames=options) as pub:
        drainer = subprocess.Popen([sys.executable, __file__, "--drain", endpoint],
                                   stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while pub.stats().subscriptions < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0, sends = time.monotonic_ns(), []
        cpu0 = os.times()
        for seq in range(maps):
            frame = Frame("front", seq, t0 + seq * 33_333_333, time.time_ns(), image)
            start = time.perf_counter_ns()
            pub.send(frame, labels, time.time_ns(), 0)
            sends.append(time.perf_counter_ns() - start)
            time.sleep(0.005)
        time.sleep(0.2)  # let the encoder finish its last frame
        cpu1 = os.times()
        stats = pub.stats()
    drainer.wait(10)
    cpu_ms = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) * 1e3
    sends.sort()
    return {"send_p50_us": sends[len(sends) // 2] / 1e3,
            "send_p99_us": sends[int(len(sends) * 0.99)] / 1e3,
            "cpu_ms_per_map": cpu_ms / maps, "frames": stats.frames_sent,
            "skipped": stats.frames_skipped,
            "jpeg_kb": stats.frame_bytes / max(1, stats.frames_sent) / 1024}


PIPELINE_FRAMES = {"off": [], "10/s": ["--publish-frames", "10"],
                   "every map": ["--publish-frames", "1000"]}


def pipeline(seconds: float, rounds: int, w: int, h: int) -> None:
    """Interleaved ``segstream run`` timings, frames off / 10 per s / every map."""
    fps: dict[str, list[float]] = {name: [] for name in PIPELINE_FRAMES}
    for _ in range(rounds):
        for name, flags in PIPELINE_FRAMES.items():
            endpoint = f"ipc:///tmp/segstream-bench-frames-{uuid.uuid4().hex[:8]}.sock"
            drainer = subprocess.Popen([sys.executable, __file__, "--drain", endpoint],
                                       stdout=subprocess.DEVNULL)
            out = subprocess.run(
                [sys.executable, "-m", "stream.cli", "run", "--source",
                 f"front=test://smpte?width={w}&height={h}&fps=150", "--threads", "2",
                 "--publish", endpoint, "--duration", str(seconds), "--stats-interval", "0",
                 *flags], capture_output=True, text=True, check=True, timeout=seconds + 120)
            drainer.wait(60)
            fps[name].append(float(re.search(r"\(([\d.]+) fps\)", out.stderr).group(1)))
            print(f"{name:10} {fps[name][-1]:6.1f} fps", flush=True)
    for name, values in fps.items():
        print(f"{name:10} median {statistics.median(values):6.1f} fps of "
              f"{', '.join(f'{v:.1f}' for v in values)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=600)
    ap.add_argument("--size", default="480x360", help="camera WIDTHxHEIGHT")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pipeline", type=float, metavar="SECONDS",
                    help="time whole `segstream run` processes instead, SECONDS each")
    ap.add_argument("--drain", metavar="ENDPOINT", help=argparse.SUPPRESS)  # the subscriber
    args = ap.parse_args()
    if args.drain:
        drain(args.drain)
        return
    w, h = (int(v) for v in args.size.split("x"))
    if args.pipeline:
        pipeline(args.pipeline, args.rounds, w, h)
        return
    image = camera(h, w)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, options in CONFIGS.items():
            results[name].append(run(options, args.maps, image))
    print(f"camera {w}x{h}, {args.maps} maps per run, medians of {args.rounds} runs")
    print(f"{'configuration':28} {'send p50 us':>11} {'send p99 us':>11} {'CPU ms/map':>10} "
          f"{'frames':>7} {'skipped':>7} {'JPEG KiB':>8}")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:28} {med['send_p50_us']:11.0f} {med['send_p99_us']:11.0f} "
              f"{med['cpu_ms_per_map']:10.3f} {med['frames']:7.0f} {med['skipped']:7.0f} "
              f"{med['jpeg_kb']:8.1f}")


if __name__ == "__main__":
    main()
