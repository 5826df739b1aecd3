"""What operators see of the concurrency modes at run time: per camera the frames the
post worker's hand-off replaced, and the engine's mode (overlap, latency/throughput,
calls in flight, batch), in the status line, the final summary, /metrics (tests in
test_metrics.py) and the preview's /api/status (test_preview.py). Real ONNX Runtime
sessions on the tiny model, real threads."""

from __future__ import annotations

import re

from engines.segmenter import Segmenter
from stream.pipeline import Pipeline
from stream.policy import Overlap
from stream.runner import summary
from stream.stats import EngineMode, StageTimes, format_line
from tests.stream.test_pipeline import ListSink, ListSource
from tests.stream.test_pipeline_concurrency import TimedSink


def test_status_line_keeps_camera_and_hand_off_drops_apart():
    times = StageTimes()
    times.add("total", 12_000_000)
    mode = EngineMode(overlap=True, mode="throughput", auto=True, switches=1, in_flight=2,
                      batch=1)
    line = format_line("front", 29.8, times.summaries(), 4, "running", 2, mode)
    assert line.endswith("| dropped 4, hand-off 2 | overlap on, throughput (auto, 1 switch), "
                         "2 in flight, batch 1")
    off = EngineMode(overlap=False, mode="plain", auto=False, switches=0, in_flight=1, batch=4)
    assert off.describe() == "overlap off, plain, 1 in flight, batch 4"
    assert format_line("front", 0.0, {}, 0).endswith("dropped 0, hand-off 0")


def test_hand_off_drops_and_engine_mode_in_status_lines_result_and_summary(tiny_model):
    """An engine that never waits for a slow post worker (the GPU policy) drops results
    in the hand-off; each camera's count is its own, apart from the camera's drops, and
    the mode is the one the backend runs (throughput: two calls side by side)."""
    seg = Segmenter.from_path(tiny_model, threads=2, policy="throughput")
    a, b = ListSource("a", 60), ListSource("b", 40, shape=(30, 40))
    b.dropped = 7  # frames b's own slot replaced
    lines: list[str] = []
    p = Pipeline([a, b], seg, TimedSink(delay=0.004), stats_interval=1e-9,
                 on_status=lines.append)
    p.overlap = Overlap(post_worker=True, engine_waits=False)
    res = p.run()
    assert res.error is None
    want = EngineMode(overlap=True, mode="throughput", auto=False, switches=0, in_flight=2,
                      batch=1)
    assert res.engine == want and p.engine_mode() == want
    assert res.camera_dropped == {"a": 0, "b": 7}
    handoff = {cam: st.dropped for cam, st in res.per_camera.items()}
    assert sum(handoff.values()) > 0, "the test needs drops"
    assert handoff["a"] + res.per_camera["a"].published == 60
    final = {ln.split()[0]: ln for ln in p.status_lines()}
    for cam, n in (("a", 0), ("b", 7)):
        assert f"| dropped {n}, hand-off {handoff[cam]} | {want.describe()}" in final[cam]
    assert any(re.search(r"dropped \d+, hand-off \d+ \| overlap on, throughput", ln)
               for ln in lines)  # the periodic lines as the run goes
    text = summary(res)
    assert "  engine: overlap on, throughput, 2 in flight, batch 1" in text
    assert f"  b: {res.per_camera['b'].published} maps, capture->publish p50" in text
    assert f"dropped 7 at the camera, {handoff['b']} in the hand-off" in text


def test_overlap_off_and_the_auto_policy_are_reported_as_they_run(tiny_model):
    seg = Segmenter.from_path(tiny_model, threads=2, policy="auto")
    res = Pipeline([ListSource("a", 10)], seg, ListSink(), stats_interval=0,
                   overlap="off").run()
    assert res.engine is not None and not res.engine.overlap and res.engine.auto
    assert res.engine.mode in ("latency", "throughput") and res.engine.batch == 1
    assert "engine: overlap off, " in summary(res)
    assert "(auto, " in summary(res) and "0 in the hand-off" in summary(res)
