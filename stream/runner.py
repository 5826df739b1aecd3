"""Build and run a whole pipeline from a :class:`~stream.config.PipelineConfig`.

Used by ``segstream run`` (flags) and ``segstream launch`` (YAML). Owns the lifecycle:
engine first (a bad model fails before any camera opens), then the publisher, then
the cameras; SIGINT/SIGTERM stop the loop; everything is closed in reverse order with
bounded waits, and the exit code says how it ended.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TextIO

from engines.segmenter import Segmenter
from engines.zoo import resolve_model
from stream.capture import open_capture
from stream.capture_base import CaptureOptions
from stream.config import PipelineConfig
from stream.pipeline import Pipeline, PipelineResult
from stream.publish import Publisher
from stream.sources import parse_source

log = logging.getLogger("segstream.run")

EXIT_OK, EXIT_ENGINE, EXIT_SETUP = 0, 1, 2


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); restore handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run_pipeline(cfg: PipelineConfig, *, stop: threading.Event | None = None,
                 out: TextIO = sys.stderr,
                 on_ready: Callable[[Pipeline], None] | None = None) -> tuple[int, PipelineResult]:
    """Run ``cfg`` until stopped or finished. Returns (exit code, result).

    Exit codes: 0 stopped or finished cleanly, 1 the engine failed (nothing invalid was
    published), 2 the pipeline could not be set up (bad model, source or endpoint;
    raised as exceptions by the callers' error handling instead when they prefer).
    """
    stop = stop or threading.Event()
    model = resolve_model(cfg.model)
    with ExitStack() as stack:
        segmenter = Segmenter.from_path(model, cfg.backend, threads=cfg.threads,
                                        letterbox=cfg.letterbox)
        stack.callback(segmenter.close)
        specs = [parse_source(s.uri, s.id) for s in cfg.sources]
        publisher = Publisher.from_config(cfg.publish, segmenter.spec)
        stack.callback(publisher.close)

        def on_state(camera: str, state: str, detail: str) -> None:
            print(f"[{camera}] {state}{': ' + detail if detail else ''}", file=out, flush=True)
            publisher.publish_event(camera, state, detail)

        captures = []
        for s, spec in zip(cfg.sources, specs, strict=True):
            opts = CaptureOptions(stall_timeout=s.stall_timeout, max_retries=s.max_retries,
                                  poll_interval=min(0.1, s.stall_timeout))
            cap = open_capture(spec, options=opts, on_state=on_state)
            stack.callback(cap.close)
            captures.append(cap)
        pipeline = Pipeline(captures, segmenter, publisher, max_frames=cfg.max_frames,
                            duration=cfg.duration, stats_interval=cfg.stats_interval,
                            on_status=lambda line: print(line, file=out, flush=True))
        if cfg.metrics_port:
            from stream.metrics import serve_metrics

            stack.enter_context(serve_metrics(cfg.metrics_port, pipeline, captures, publisher))
        print(f"segstream: {model.name} ({segmenter.backend.name}, "
              f"{segmenter.spec.input_size[0]}x{segmenter.spec.input_size[1]}) -> "
              f"{', '.join(cfg.publish.endpoints)} [{cfg.publish.encoding}]", file=out, flush=True)
        if on_ready:
            on_ready(pipeline)
        with stop_on_signals(stop):
            result = pipeline.run(stop)
    print(summary(result), file=out, flush=True)
    return (EXIT_ENGINE if result.error else EXIT_OK), result


def summary(result: PipelineResult) -> str:
    lines = [f"segstream: published {result.published} label maps in {result.seconds:.1f} s "
             f"({result.fps:.1f} fps)"]
    for cam, st in result.per_camera.items():
        total = st.times.summary("total")
        if total.count:
            lines.append(f"  {cam}: {st.published} maps, capture->publish p50 "
                         f"{total.p50_ms:.1f} ms p99 {total.p99_ms:.1f} ms")
    if result.error:
        lines.append(f"segstream: stopped on engine failure: {result.error}")
    return "\n".join(lines)
