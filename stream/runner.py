"""Build and run a whole pipeline from a :class:`~stream.config.PipelineConfig`.

Used by ``segstream run`` (flags) and ``segstream launch`` (YAML). Owns the lifecycle:
engine first (a bad model fails before any camera opens), then the publisher, then
the cameras; SIGINT/SIGTERM stop the loop; everything is closed in reverse order with
bounded waits, and the exit code says how it ended.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Protocol, TextIO

from engines.segmenter import Segmenter
from engines.zoo import resolve_model
from stream.capture import close_all, open_capture
from stream.capture_base import CaptureOptions
from stream.config import PipelineConfig
from stream.pipeline import LabelSink, Pipeline, PipelineResult
from stream.publish import Publisher
from stream.sources import parse_source
from stream.validate import validate

log = logging.getLogger("segstream.run")

EXIT_OK, EXIT_ENGINE, EXIT_SETUP, EXIT_SOURCE_LOST = 0, 1, 2, 3


class _Ended(Protocol):
    """What :func:`source_verdict` reads of a capture."""

    camera_id: str

    @property
    def state(self) -> str: ...

    @property
    def state_detail(self) -> str: ...


def source_verdict(captures: Sequence[_Ended], published: Mapping[str, int]) -> tuple[int, str]:
    """Exit code and reason for a run whose loop ended, judged by how its sources ended.

    ``published``: label maps per camera. Only a run in which every source has ended is
    judged; a stop by signal, ``duration`` or ``max_frames`` is a clean end whatever the
    cameras do. Then: a source that failed before any of its frames was published is a
    bad source (2: a user error that restarting will not fix); one that failed after
    that was lost (3: worth a restart, e.g. systemd ``Restart=on-failure``); sources that
    reached their end of stream are a clean end (0).
    """
    if not captures or any(c.state not in ("eos", "failed", "stopped") for c in captures):
        return EXIT_OK, ""
    failed = [c for c in captures if c.state == "failed"]
    never = [c for c in failed if not published.get(c.camera_id)]
    if never:
        what = ("every source failed" if len(never) == len(captures)
                else f"{len(never)} of {len(captures)} sources failed")
        why = "; ".join(f"{c.camera_id}: {c.state_detail or 'failed'}" for c in never)
        return EXIT_SETUP, (f"{what} before delivering a frame ({why}); check that each "
                            "source plays, e.g. with `segstream probe`")
    if failed:
        why = "; ".join(f"{c.camera_id} after {published[c.camera_id]} label maps: "
                        f"{c.state_detail or 'failed'}" for c in failed)
        return EXIT_SOURCE_LOST, f"lost {len(failed)} of {len(captures)} sources ({why})"
    return EXIT_OK, ""


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); restore handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: the user does not want to wait
            log.warning("received %s again, exiting at once", signal.Signals(signum).name)
            os._exit(130)
        log.info("received %s, stopping (again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run_pipeline(cfg: PipelineConfig, *, stop: threading.Event | None = None,
                 out: TextIO | None = None,
                 on_ready: Callable[[Pipeline], None] | None = None,
                 where: str = "") -> tuple[int, PipelineResult]:
    """Run ``cfg`` until stopped or finished. Returns (exit code, result).

    Raises ConfigError (all problems :func:`stream.validate.validate` finds, prefixed with
    ``where``), or the model's and endpoints' errors, before any camera opens.

    Exit codes: 0 stopped or finished cleanly (sources at their end of stream count as
    finished), 1 the engine failed (nothing invalid was published), 2 the pipeline could
    not be set up (bad model, source or endpoint, mostly raised as exceptions for the
    callers' error handling; returned when no source ever delivered a frame), 3 every
    source ended and one that had worked failed (see :func:`source_verdict`).
    """
    stop = stop or threading.Event()
    out = out or sys.stderr
    validate(cfg, where=where)  # every config problem at once, before anything opens
    model = resolve_model(cfg.model)
    with ExitStack() as stack:
        segmenter = Segmenter.from_path(model, cfg.backend, threads=cfg.threads,
                                        letterbox=cfg.letterbox, batch=cfg.batch,
                                        policy=cfg.engine_policy, tta=cfg.tta)
        stack.callback(segmenter.close)
        specs = [parse_source(s.uri, s.id) for s in cfg.sources]
        publisher = Publisher.from_config(cfg.publish, segmenter.spec)
        stack.callback(publisher.close)
        sink: LabelSink = publisher
        preview = None
        if cfg.preview.port is not None:  # bound here: a port in use fails before cameras open
            from stream.preview import Preview

            preview = Preview(cfg.preview, segmenter.spec, [s.id for s in cfg.sources], out)
            stack.callback(preview.close)
            sink = preview.tap(publisher)

        def on_state(camera: str, state: str, detail: str) -> None:
            print(f"[{camera}] {state}{': ' + detail if detail else ''}", file=out, flush=True)
            publisher.publish_event(camera, state, detail)

        captures = []
        for s, spec in zip(cfg.sources, specs, strict=True):
            opts = CaptureOptions(stall_timeout=s.stall_timeout, max_retries=s.max_retries,
                                  poll_interval=min(0.1, s.stall_timeout))
            if not captures:  # closed in one go (LIFO: after the loop has stopped)
                stack.callback(close_all, captures)
            captures.append(open_capture(spec, options=opts, on_state=on_state))
        by_id = {c.camera_id: c for c in captures}
        pipeline = Pipeline(captures, segmenter, sink, max_frames=cfg.max_frames,
                            duration=cfg.duration, stats_interval=cfg.stats_interval,
                            on_status=lambda line: print(line, file=out, flush=True),
                            max_pixels=publisher.max_pixels,
                            on_refused=lambda src, why: by_id[src.camera_id].fail(why),
                            overlap=cfg.overlap, batch_wait_ms=cfg.batch_wait_ms)
        if cfg.metrics_port:
            from stream.metrics import serve_metrics

            stack.enter_context(serve_metrics(cfg.metrics_port, pipeline, captures, publisher,
                                              addr=cfg.metrics_bind))
        print(f"segstream: {model.name} ({segmenter.backend.name}, "
              f"{segmenter.spec.input_size[0]}x{segmenter.spec.input_size[1]}) -> "
              f"{', '.join(cfg.publish.endpoints)} [{cfg.publish.encoding}]", file=out, flush=True)
        if preview is not None:
            preview.start(pipeline, captures)
        if on_ready:
            on_ready(pipeline)
        with stop_on_signals(stop):
            result = pipeline.run(stop)
        published = {cam: st.published for cam, st in result.per_camera.items()}
        code, why = (EXIT_ENGINE, "") if result.error else source_verdict(captures, published)
    print(summary(result), file=out, flush=True)
    if why:
        print(f"segstream: error: {why}", file=out, flush=True)
    return code, result


def summary(result: PipelineResult) -> str:
    """The final report: label maps and fps, per camera its latency and the frames dropped
    at the camera and in the hand-off, and the mode the engine ended in."""
    lines = [f"segstream: published {result.published} label maps in {result.seconds:.1f} s "
             f"({result.fps:.1f} fps)"]
    if result.engine is not None:
        lines.append(f"  engine: {result.engine.describe()}")
    for cam, st in result.per_camera.items():
        total = st.times.summary("total")
        latency = (f", capture->publish p50 {total.p50_ms:.1f} ms p99 {total.p99_ms:.1f} ms"
                   if total.count else "")
        lines.append(f"  {cam}: {st.published} maps{latency}, dropped "
                     f"{result.camera_dropped.get(cam, 0)} at the camera, {st.dropped} in the "
                     "hand-off")
    if result.error:
        lines.append(f"segstream: stopped on engine failure: {result.error}")
    return "\n".join(lines)
