"""Soak: full rate for a bounded time with a slow and a fast subscriber.

Not part of the normal suite (marker ``soak``). Run it with

    SEGSTREAM_SOAK_SECONDS=600 .venv/bin/python -m pytest -m soak tests/stream/test_soak.py -s

It prints the figures (published, received, lost, RSS over time) and checks that memory
stays flat after the warm-up, the fast subscriber loses no sequence number, and the
slow subscriber does not slow the pipeline down.

The subscribers run in their own processes, as in service: a subscriber that dies (for
example on a libzmq abort) is reported with its exit code instead of taking the pipeline
down with it, and the pipeline process's RSS is not mixed with theirs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import uuid

import pytest

from engines.zoo import NoModelError, default_model_path
from stream.config import PipelineConfig, PublishConfig, SourceConfig
from stream.runner import run_pipeline
from stream.subscribe import LabelMessage, Subscriber
from tests.stream._media import require_gst

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("SEGSTREAM_SOAK_SECONDS", "600"))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _subscriber(endpoint: str, stop: mp.Event, delay: float, out: mp.Queue) -> None:
    """Subscriber process: receive until ``stop``, then put its figures on ``out``."""
    seqs = []
    with Subscriber(endpoint, timeout=0.2) as sub:
        out.put({"ready": delay})
        while not stop.is_set():
            msg = sub.receive(0.2)
            if isinstance(msg, LabelMessage):
                seqs.append(msg.seq)
                if delay:
                    time.sleep(delay)
        out.put({"delay": delay, "received": len(seqs), "lost": sub.stats.lost, "seqs": seqs})


@pytest.mark.timeout(SECONDS + 300)  # the suite's 300 s limit would end a 600 s soak
def test_soak(tiny_model):
    require_gst()
    seconds = SECONDS
    try:
        model = default_model_path()
    except NoModelError:
        model = tiny_model
    endpoint = f"ipc:///tmp/segstream-soak-{uuid.uuid4().hex[:8]}"
    cfg = PipelineConfig(
        sources=(SourceConfig("test://smpte?width=480&height=360&fps=30", "soak"),),
        model=str(model), stats_interval=0, duration=seconds,
        publish=PublishConfig((endpoint,), encoding="zstd"))
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    rss = []
    subs = [ctx.Process(target=_subscriber, args=(endpoint, stop, d, results), daemon=True)
            for d in (0.0, 0.5)]
    box = {}

    def run() -> None:
        with open(os.devnull, "w") as devnull:
            box["code"], box["result"] = run_pipeline(cfg, out=devnull)

    pipe = threading.Thread(target=run, daemon=True)
    pipe.start()
    time.sleep(1.0)
    for s in subs:
        s.start()
    for _ in subs:  # spawned interpreters take a few seconds to import
        assert "ready" in results.get(timeout=120)
    t0 = time.monotonic()
    while pipe.is_alive():
        rss.append((time.monotonic() - t0, _rss_mib()))
        pipe.join(min(5.0, max(1.0, seconds / 50)))
    stop.set()
    got = {}
    for _ in subs:
        r = results.get(timeout=60)
        got[r["delay"]] = r
    for s in subs:
        s.join(10)
    assert all(s.exitcode == 0 for s in subs), f"subscriber exit codes {[s.exitcode for s in subs]}"
    fast, slow = got[0.0], got[0.5]
    result = box["result"]
    after_warmup = [m for t, m in rss if t > max(10.0, seconds * 0.1)] or [rss[-1][1]]
    growth = max(after_warmup) - min(after_warmup)
    print(f"\nsoak {seconds:.0f} s with {model.name}: published {result.published} "
          f"({result.fps:.1f} fps); fast subscriber received {fast['received']} lost "
          f"{fast['lost']}; slow subscriber received {slow['received']} lost {slow['lost']}; "
          f"RSS after warm-up {min(after_warmup):.1f}..{max(after_warmup):.1f} MiB "
          f"(growth {growth:.1f} MiB)")
    assert box["code"] == 0
    seqs = fast["seqs"]
    assert fast["lost"] == 0 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert slow["received"] < fast["received"] / 2  # the slow one really was slow ...
    assert fast["received"] >= 0.9 * (result.published - seqs[0])  # ... and stalled nothing
    assert growth < 25.0
