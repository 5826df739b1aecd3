"""A/B measurements of the pipeline's concurrency settings (issue 13), interleaved.

    .venv/bin/python scripts/bench_concurrency.py clip --res 360x480 --rounds 3
    .venv/bin/python scripts/bench_concurrency.py live --res 360x480 --fps 30
    .venv/bin/python scripts/bench_concurrency.py cameras --cameras 4 --batch 1 --batch 4

clip:    the hand-written loop (stream.handloop) and the pipeline on the same clip,
         every frame processed, for each --variant (overlap/engine policy/batch as
         KEY=VALUE,...); fps and the pipeline / hand loop ratio of each round.
live:    one live test camera at --fps: capture -> publish p50/p99 per engine policy, and
         the bare engine's best back-to-back p50 (min over rounds of per-round medians).
engine:  the bare engine (one plain session) per frame at each --batch, interleaved.
         With -m/--models given more than once: the models' bare engines at batch 1, one
         round over all models after the other (order reversed every other round), the
         median call of each; then the median of the rounds.
cameras: N live test cameras vs one, each at --fps (or --fps / N with --split): total
         fps, per-camera fps and capture -> publish p50/p99, per --batch.

Every pipeline run has a ZeroMQ subscriber in the process that decodes every map, like
``segstream bench``. Figures print as they come; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import create_backend
from engines.zoo import resolve_model
from stream.config import PipelineConfig, PublishConfig, SourceConfig

PATTERNS = ("smpte", "ball", "snow", "colors", "pinwheel", "gradient")


def _endpoint() -> str:
    return f"ipc:///tmp/segstream-cc-{uuid.uuid4().hex[:8]}"


def _subscriber(endpoint: str, stop: threading.Event, ready: threading.Event,
                box: dict[str, Any]) -> None:
    from stream.subscribe import LabelMessage, Subscriber

    with Subscriber(endpoint, timeout=0.2) as sub:
        ready.set()
        n = 0
        while not stop.is_set():
            if isinstance(sub.receive(0.2), LabelMessage):
                n += 1
        box["received"], box["lost"] = n, sub.stats.lost


def measure(cfg: PipelineConfig, warmup_s: float) -> dict[str, Any]:
    """Run ``cfg``; per camera fps and capture->publish p50/p99 after ``warmup_s``."""
    from stream.runner import run_pipeline

    endpoint = cfg.publish.endpoints[0]
    stop, sub_stop, sub_ready = threading.Event(), threading.Event(), threading.Event()
    box: dict[str, Any] = {}
    sub = threading.Thread(target=_subscriber, args=(endpoint, sub_stop, sub_ready, box),
                           daemon=True)
    marks: dict[str, Any] = {"cpu0": _cpu(), "others": Others()}

    def reset() -> None:
        if stop.wait(warmup_s):
            return
        p = marks["pipeline"]
        p.reset_stats()
        marks["t0"], marks["cpu0"], marks["others"] = time.monotonic(), _cpu(), Others()

    def sample_mode() -> None:  # the engine policy's mode, once per 0.1 s
        while not stop.wait(0.1):
            gov = marks["pipeline"].governor
            if gov is not None and "t0" in marks:
                marks.setdefault("modes", []).append(gov.mode)

    def on_ready(pipeline: Any) -> None:
        marks["pipeline"] = pipeline
        threading.Thread(target=sample_mode, daemon=True).start()
        sub.start()
        sub_ready.wait(5)
        marks["t_run"], marks["cpu0"] = time.monotonic(), _cpu()
        if warmup_s > 0:
            threading.Thread(target=reset, daemon=True).start()
        else:
            marks["t0"] = marks["t_run"]

    with open(os.devnull, "w") as devnull:
        code, result = run_pipeline(cfg, stop=stop, out=devnull, on_ready=on_ready)
    stop.set()
    others = marks["others"].cores()
    t_end = marks["t_run"] + result.seconds
    sub_stop.set()
    sub.join(5)
    t0 = marks.get("t0", marks["t_run"])
    seconds = t_end - t0
    cams = {}
    for cam, st in result.per_camera.items():
        tot = st.times.summary("total")
        cams[cam] = {"fps": st.published / seconds, "p50": tot.p50_ms, "p99": tot.p99_ms,
                     "infer": st.times.summary("infer").p50_ms,
                     "stages": " ".join(f"{k} {st.times.summary(k).p50_ms:.1f}" for k in (
                         "capture", "pre", "infer", "handoff", "post", "publish")),
                     "batch_dropped": st.dropped}
    modes = marks.get("modes", [])
    mode = (f"latency {100 * modes.count('latency') / len(modes):.0f}% of the time"
            if modes else "-")
    return {"code": code, "error": result.error, "seconds": seconds,
            "fps": sum(c["fps"] for c in cams.values()), "cameras": cams,
            "cpu_percent": 100 * (_cpu() - marks["cpu0"]) / seconds,
            "mode": mode, "received": box.get("received"), "others": others}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _machine_busy() -> float:
    """CPU seconds all processes used since boot (/proc/stat, all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Others:
    """CPU used by other processes (niced ones included) while a measurement runs, in
    cores: a run with other load is not comparable with one without."""

    def __init__(self) -> None:
        self.t, self.own, self.all = time.monotonic(), _cpu(), _machine_busy()

    def cores(self) -> float:
        wall = time.monotonic() - self.t
        return max(0.0, (_machine_busy() - self.all) - (_cpu() - self.own)) / wall


def _cfg(sources: tuple[SourceConfig, ...], model: str, **kw: Any) -> PipelineConfig:
    return PipelineConfig(sources=sources, model=model, stats_interval=0,
                          publish=PublishConfig((_endpoint(),), encoding="zstd"), **kw)


def _variant(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def median_call_ms(be: Any, x: np.ndarray, n: int, warmup: int) -> float:
    """Median ms of ``n`` back-to-back ``be.infer(x)`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        be.infer(x)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        be.infer(x)
        ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1e6


def engine_b2b(model: str, threads: int | None, policy: str | None, n: int = 150) -> float:
    """Median ms of ``n`` back-to-back infer() calls (after 20 warm-up calls); policy None:
    one plain session, "latency": one spinning session."""
    be = create_backend(model, threads=threads, policy=policy)
    try:
        x = np.random.default_rng(0).standard_normal(be.input_shape).astype(be.input_dtype)
        return median_call_ms(be, x, n, warmup=20)
    finally:
        be.close()


def cmd_clip(args: argparse.Namespace) -> None:
    from stream.bench_measure import make_video
    from stream.handloop import run_hand_loop

    h, w = args.res
    variants = [_variant(v) for v in args.variant] or [{"overlap": "off"}, {"overlap": "on"}]
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "clip.avi", args.frames, (h, w))
        for r in range(args.rounds):
            # the hand loop takes its turn in the order too (first, then last, ...): on a
            # VM whose speed drifts, a baseline always run first would favour one side
            runs: list[dict | None] = [None, *variants]
            order = runs if r % 2 == 0 else runs[::-1]
            results = []
            for v in order:
                if v is None:
                    others = Others()
                    hand = run_hand_loop(Path(args.model), video, args.frames, _endpoint(),
                                         threads=args.threads)["fps"]
                    print(f"round {r}: hand loop {hand:6.1f} fps  others "
                          f"{others.cores():.2f} cores", flush=True)
                    continue
                src = (SourceConfig(f"{video}?realtime=0", "clip"),)
                results.append((v, measure(_cfg(src, args.model, **{
                    "threads": args.threads, "max_frames": args.frames, **v}), warmup_s=0.0)))
            for v, res in results:
                stages = res["cameras"]["clip"]["stages"]
                print(f"round {r}: {_fmt(v):40s} {res['fps']:6.1f} fps  x{res['fps'] / hand:4.2f}"
                      f"  cpu {res['cpu_percent']:4.0f}%  mode {res['mode']}"
                      f"  others {res['others']:.2f} cores  p50 ms: {stages}"
                      f"  {res['error'] or ''}", flush=True)


def cmd_live(args: argparse.Namespace) -> None:
    h, w = args.res
    for r in range(args.rounds):
        b2b = {p or "plain": engine_b2b(args.model, args.threads, p) for p in (None, "latency")}
        print(f"round {r}: bare engine back-to-back p50: " + ", ".join(
            f"{p} {ms:.2f} ms" for p, ms in b2b.items()), flush=True)
        policies = args.policy if r % 2 == 0 else args.policy[::-1]
        for pol in policies:
            src = (SourceConfig(f"test://smpte?width={w}&height={h}&fps={args.fps}", "live"),)
            res = measure(_cfg(src, args.model, threads=args.threads, engine_policy=pol,
                               overlap=args.overlap, duration=args.warmup + args.duration),
                          warmup_s=args.warmup)
            c = res["cameras"]["live"]
            best = min(b2b.values())
            print(f"round {r}: policy {pol:10s} capture->publish p50 {c['p50']:6.2f} p99 "
                  f"{c['p99']:6.2f} ms (x{c['p50'] / best:4.2f} of best b2b {best:.2f})  "
                  f"{c['fps']:5.1f} fps; p50 ms: {c['stages']}; cpu "
                  f"{res['cpu_percent']:4.0f}%  mode {res['mode']}"
                  f"  others {res['others']:.2f} cores", flush=True)


def cmd_engine(args: argparse.Namespace) -> None:
    if len(args.models) > 1:
        cmd_engine_models(args)
        return
    args.model = args.models[0]
    h, w = resolve_model_input(args.model)
    backends = {n: create_backend(args.model, threads=args.threads, batch=n) for n in args.batch}
    for r in range(args.rounds):
        out, others = [], Others()
        for n, be in backends.items():
            x = np.random.default_rng(0).standard_normal((n, 3, h, w)).astype(be.input_dtype)
            ms = median_call_ms(be, x, max(8, 40 // n), warmup=3)
            out.append(f"batch {n}: {ms / n:6.2f} ms/frame")
        print(f"round {r}: " + ", ".join(out) + f"  others {others.cores():.2f} cores", flush=True)


def cmd_engine_models(args: argparse.Namespace) -> None:
    """Network alone of several models, batch 1, interleaved rounds (module docstring)."""
    args.models = [str(resolve_model(m)) for m in args.models]
    backends = {m: create_backend(m, threads=args.threads) for m in args.models}
    per_round: dict[str, list[float]] = {m: [] for m in args.models}
    for r in range(args.rounds):
        others = Others()
        for m in (args.models if r % 2 == 0 else args.models[::-1]):
            be = backends[m]
            x = np.random.default_rng(0).standard_normal(be.input_shape).astype(be.input_dtype)
            per_round[m].append(median_call_ms(be, x, 50, warmup=5))
        print(f"round {r}: " + ", ".join(f"{Path(m).name} {per_round[m][-1]:.2f} ms"
                                         for m in args.models)
              + f"  others {others.cores():.2f} cores", flush=True)
    for m, ms in per_round.items():
        mid = statistics.median(ms)
        print(f"{Path(m).name}: median {mid:.2f} ms ({1000 / mid:.0f} fps), rounds "
              f"{min(ms):.2f}-{max(ms):.2f} ms")
    for be in backends.values():
        be.close()


def resolve_model_input(model: str) -> tuple[int, int]:
    from engines.spec import ModelSpec, sidecar_path

    return ModelSpec.load(sidecar_path(model)).input_size


def cmd_cameras(args: argparse.Namespace) -> None:
    h, w = args.res
    runs = [(1, 1)] + [(args.cameras, b) for b in args.batch]
    for r in range(args.rounds):
        for n, batch in (runs if r % 2 == 0 else runs[::-1]):
            fps = max(1, args.fps // n) if args.split else args.fps
            src = tuple(SourceConfig(f"test://{PATTERNS[i % len(PATTERNS)]}?width={w}"
                                     f"&height={h}&fps={fps}", f"cam{i}")
                        for i in range(n))
            res = measure(_cfg(src, args.model, threads=args.threads, batch=batch,
                               batch_wait_ms=args.batch_wait_ms, overlap=args.overlap,
                               duration=args.warmup + args.duration), warmup_s=args.warmup)
            per = res["cameras"].values()
            each = " ".join(f"{c['fps']:5.1f}" for c in per)
            print(f"round {r}: {n} camera(s) at {fps} fps, batch {batch}: total "
                  f"{res['fps']:6.1f} fps; "
                  f"per camera {each}; p50 "
                  f"{max(c['p50'] for c in per):6.1f} p99 {max(c['p99'] for c in per):6.1f} ms "
                  f"(worst camera); cpu {res['cpu_percent']:4.0f}%  mode {res['mode']}"
                  f"  others {res['others']:.2f} cores",
                  flush=True)


def _fmt(v: dict[str, Any]) -> str:
    return ",".join(f"{k}={x}" for k, x in v.items()) or "defaults"


def _res(text: str) -> tuple[int, int]:
    h, w = (int(x) for x in text.lower().split("x"))
    return h, w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("clip", "live", "cameras", "engine"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=str(resolve_model(None)))
        p.add_argument("--res", type=_res, default=(360, 480), metavar="HxW")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--rounds", type=int, default=2)
        p.add_argument("--overlap", default="auto")
        p.add_argument("--warmup", type=float, default=2.0)
        p.add_argument("--duration", type=float, default=6.0)
    clip = sub.choices["clip"]
    clip.add_argument("--frames", type=int, default=600)
    clip.add_argument("--variant", action="append", default=[],
                      help="KEY=VALUE,... of PipelineConfig (overlap, engine_policy, batch)")
    live = sub.choices["live"]
    live.add_argument("--fps", type=int, default=30)
    live.add_argument("--policy", action="append",
                      default=None, help="engine policies (default: throughput latency auto)")
    cams = sub.choices["cameras"]
    cams.add_argument("--cameras", type=int, default=4)
    cams.add_argument("--fps", type=int, default=120)
    cams.add_argument("--batch", type=int, action="append", default=None)
    cams.add_argument("--batch-wait-ms", type=float, default=0.0)
    cams.add_argument("--split", action="store_true",
                      help="N cameras at --fps / N each (the same frames offered in all)")
    sub.choices["engine"].add_argument("--batch", type=int, action="append", default=None)
    sub.choices["engine"].add_argument("--models", "-m", action="append", default=None,
                                       help="several models: compare them, batch 1")
    args = ap.parse_args()
    if args.cmd == "live":
        args.policy = args.policy or ["throughput", "latency", "auto"]
    if args.cmd == "cameras":
        args.batch = args.batch or [1, args.cameras]
    if args.cmd == "engine":
        args.models = args.models or [args.model]
        if args.batch and len(args.models) > 1:
            print("# --batch is ignored with several models: batch 1")
        args.batch = args.batch or [1, 2, 4]
    print(f"# {args.cmd} {vars(args)}")
    {"clip": cmd_clip, "live": cmd_live, "cameras": cmd_cameras,
     "engine": cmd_engine}[args.cmd](args)


if __name__ == "__main__":
    main()
