"""Prometheus metrics for a running pipeline (``--metrics-port``).

A custom collector reads the live counters on every scrape, so nothing is updated on
the hot path. Exposed families (label ``camera`` where per camera):

    segstream_frames_published_total      label maps published
    segstream_frames_captured_total       frames that left the source
    segstream_frames_dropped_total        frames lost before the engine took them (mailbox, appsink)
    segstream_handoff_dropped_total       engine results a newer one of the camera replaced
                                          before the post worker took them (--overlap)
    segstream_source_reconnects_total     pipeline rebuilds after stalls/errors
    segstream_source_errors_total         error messages from the source
    segstream_source_up                   1 while the source state is "running"
    segstream_fps                         published frames per second (last 2 s)
    segstream_latency_seconds{stage,quantile}  per-stage p50/p99 over the last 2000 frames
    segstream_publisher_sent_total / _dropped_total / _connections

and the engine's mode (one engine serves every camera), what ``--overlap``,
``--engine-policy`` and ``--batch`` resolved to (:class:`stream.stats.EngineMode`):

    segstream_engine_info{overlap,mode,policy}   1 (``mode``: latency, throughput, plain,
                                                 fixed; ``policy``: auto or fixed)
    segstream_engine_in_flight            engine calls that may run at once
    segstream_engine_batch                most frames of different cameras per engine call
    segstream_engine_mode_switches_total  switches of --engine-policy auto
"""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from stream.config import ConfigError, listen_error, listen_failure
from stream.stats import STAGES, EngineMode
from stream.web_guard import host_allowed, host_name_of

INSTALL_HINT = ("metrics_port: the metrics endpoint needs prometheus-client: "
                "pip install 'segstream[metrics]'")


class PipelineCollector:
    """Collects from the pipeline, its captures and its publisher at scrape time."""

    def __init__(self, pipeline: Any, captures: Sequence[Any], publisher: Any) -> None:
        self.pipeline = pipeline
        self.captures = captures
        self.publisher = publisher

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cam = ["camera"]
        published = CounterMetricFamily("segstream_frames_published", "label maps published",
                                        labels=cam)
        captured = CounterMetricFamily("segstream_frames_captured", "frames from the source",
                                       labels=cam)
        dropped = CounterMetricFamily("segstream_frames_dropped",
                                      "frames lost before the engine took them", labels=cam)
        reconnects = CounterMetricFamily("segstream_source_reconnects", "source rebuilds",
                                         labels=cam)
        errors = CounterMetricFamily("segstream_source_errors", "source errors", labels=cam)
        up = GaugeMetricFamily("segstream_source_up", "1 while the source is running", labels=cam)
        fps = GaugeMetricFamily("segstream_fps", "published frames per second", labels=cam)
        lat = GaugeMetricFamily("segstream_latency_seconds", "per-stage latency quantiles",
                                labels=["camera", "stage", "quantile"])
        handoff = CounterMetricFamily("segstream_handoff_dropped",
                                      "engine results a newer one replaced before the post "
                                      "worker took them", labels=cam)
        for c in self.captures:
            st = c.stats()
            cs = self.pipeline.stats[c.camera_id]
            published.add_metric([c.camera_id], cs.published)
            captured.add_metric([c.camera_id], st.captured)
            dropped.add_metric([c.camera_id], st.dropped)
            handoff.add_metric([c.camera_id], cs.dropped)
            reconnects.add_metric([c.camera_id], st.reconnects)
            errors.add_metric([c.camera_id], st.errors)
            up.add_metric([c.camera_id], 1.0 if st.state == "running" else 0.0)
            fps.add_metric([c.camera_id], cs.times.fps())
            for stage in STAGES:
                s = cs.times.summary(stage)
                if s.count:
                    lat.add_metric([c.camera_id, stage, "0.5"], s.p50_ms / 1e3)
                    lat.add_metric([c.camera_id, stage, "0.99"], s.p99_ms / 1e3)
        ps = self.publisher.stats()
        yield from (published, captured, dropped, handoff, reconnects, errors, up, fps, lat)
        yield from engine_metrics(self.pipeline.engine_mode())
        yield CounterMetricFamily("segstream_publisher_sent", "label maps sent", value=ps.sent)
        yield CounterMetricFamily("segstream_publisher_dropped", "sends refused at once",
                                  value=ps.dropped)
        yield GaugeMetricFamily("segstream_publisher_connections", "subscriber connections",
                                value=ps.connections)


def engine_metrics(mode: EngineMode) -> Iterator[Any]:
    """The engine's mode as metric families (module docstring)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    info = GaugeMetricFamily("segstream_engine_info", "how the engine runs now (value 1)",
                             labels=["overlap", "mode", "policy"])
    info.add_metric(["on" if mode.overlap else "off", mode.mode,
                     "auto" if mode.auto else "fixed"], 1.0)
    yield info
    yield GaugeMetricFamily("segstream_engine_in_flight", "engine calls that may run at once",
                            value=mode.in_flight)
    yield GaugeMetricFamily("segstream_engine_batch", "most frames per engine call",
                            value=mode.batch)
    yield CounterMetricFamily("segstream_engine_mode_switches",
                              "engine mode switches (--engine-policy auto)", value=mode.switches)


def check(port: int | None, addr: str) -> list[str]:
    """Problems only the machine can tell (prometheus-client installed, ``addr:port``
    free), for :mod:`stream.validate`; binds and releases the port at once."""
    if port is None:
        return []
    if importlib.util.find_spec("prometheus_client") is None:
        return [INSTALL_HINT]
    try:
        socket.create_server((addr, port), family=_family(addr, port)).close()
    except OSError as e:
        return [listen_error(e, addr, port, "metrics_port", "metrics_bind", "--metrics-port")]
    return []


@contextmanager
def serve_metrics(port: int, pipeline: Any, captures: Sequence[Any], publisher: Any,
                  addr: str = "127.0.0.1") -> Iterator[Any]:
    """Serve ``/metrics`` on ``addr:port`` while the context is open (loopback by default:
    the counters describe the vehicle's cameras; expose them with ``--metrics-bind``).

    Raises:
        ConfigError: prometheus-client missing, the port in use, or an address this host
            lacks.
    """
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline, captures, publisher))
    try:
        server = _wsgi_server(addr, port, _host_checked(make_wsgi_app(registry), addr))
    except OSError as e:
        raise listen_failure(e, addr, port, "metrics_port", "metrics_bind",
                             "--metrics-port") from e
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def _family(addr: str, port: int) -> socket.AddressFamily:
    """The address family a listener on ``addr:port`` needs (IPv4 or IPv6)."""
    return socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0][0]


def _host_checked(app: Callable[..., Any], listen_host: str) -> Callable[..., Any]:
    """``app`` answering only requests addressed to this machine
    (:func:`stream.web_guard.host_allowed`): 403 otherwise (DNS rebinding)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not host_allowed(host_name_of(environ.get("HTTP_HOST", "")), listen_host):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"unknown host name\n"]
        return app(environ, start_response)

    return guarded


def _wsgi_server(addr: str, port: int, app: Callable[..., Any]) -> Any:
    """A threading WSGI server bound to ``addr:port`` (IPv4 or IPv6, as the address is)
    that logs no request lines."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    family = _family(addr, port)

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    return make_server(addr, port, app, Server, handler_class=Quiet)
