"""Pipeline concurrency (issue 13): overlapped stages, cross-camera batching, the engine
thread policy. Real ONNX Runtime sessions (tiny models and the shipped ones), real
threads; GStreamer + ZeroMQ end to end at the bottom."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.backend import BackendError, create_backend
from engines.onnx_batch import batch_mismatch, input_batch, make_batch_dynamic
from engines.segmenter import Segmenter
from engines.zoo import shipped_models
from stream.cli import main as cli_main
from stream.config import ConfigError, PipelineConfig, PublishConfig, SourceConfig
from stream.fanin import FanIn
from stream.frames import Frame
from stream.handoff import Handoff
from stream.launch_file import load_launch
from stream.pipeline import Pipeline
from stream.policy import EngineGovernor, Overlap, resolve_overlap
from tests.stream.test_pipeline import ListSink, ListSource
from tests.tinymodel import make_tiny_model


class TimedSink(ListSink):
    """Records each send's (start, end, thread) and takes ``delay`` s per send."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.calls: list[tuple[float, float, str]] = []
        self.dropped: list[tuple[str, int, int]] = []  # (camera, seq, wire dropped)

    def send(self, frame, labels, t_infer_ns, dropped) -> None:
        t0 = time.perf_counter()
        super().send(frame, labels, t_infer_ns, dropped)
        self.dropped.append((frame.camera_id, frame.seq, dropped))
        time.sleep(self.delay)
        self.calls.append((t0, time.perf_counter(), threading.current_thread().name))


def record_infer(seg: Segmenter, delay: float = 0.0) -> list[tuple[float, float, int, str]]:
    """Wrap the real backend's infer to log (start, end, batch size, thread); ``delay``
    makes it as slow as a real network (a tiny model takes microseconds)."""
    calls: list[tuple[float, float, int, str]] = []
    real = seg.backend.infer

    def infer(batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = real(batch)
        time.sleep(delay)
        calls.append((t0, time.perf_counter(), batch.shape[0], threading.current_thread().name))
        return out

    seg.backend.infer = infer  # type: ignore[method-assign]
    return calls


# -- the hand-off ----------------------------------------------------------------------------

def test_handoff_newest_wins_per_camera_and_serves_cameras_in_arrival_order():
    h: Handoff[str] = Handoff()
    assert h.put("a", "a0") is None and h.put("b", "b0") is None
    assert h.put("a", "a1") == "a0"  # a0 never reaches the worker
    assert h.dropped == 1 and len(h) == 2
    assert [h.take(0), h.take(0), h.take(0)] == ["b0", "a1", None]
    assert h.wait_taken(0)
    h.put("c", "c0")
    assert not h.wait_taken(0.01)
    h.close()
    assert h.take(None) == "c0" and h.take(None) is None  # closed: what is left, then None
    h2: Handoff[str] = Handoff()
    h2.put("a", "x")
    assert h2.close(discard=True) == ["x"] and h2.take(None) is None


# -- overlapped stages -------------------------------------------------------------------------

def test_post_and_publish_overlap_the_next_engine_call(tiny_model):
    """With overlap, frame N+1 is in the engine while frame N is sent (on another thread);
    without it, never. Labels are the same either way."""
    for mode in ("on", "off"):
        seg = Segmenter.from_path(tiny_model, threads=1)
        infers = record_infer(seg, delay=0.01)
        sink = TimedSink(delay=0.02)
        res = Pipeline([ListSource("a", 12)], seg, sink, stats_interval=0, overlap=mode).run()
        assert res.error is None and res.published == 12
        assert [f.seq for f, _ in sink.sent] == list(range(12))
        for frame, labels in sink.sent:
            assert np.array_equal(labels, seg(frame.image))
        overlapped = sum(any(i0 < s1 and s0 < i1 for s0, s1, _ in sink.calls)
                         for i0, i1, _, _ in infers)
        engine_threads = {t for *_, t in infers[:12]}
        sink_threads = {t for *_, t in sink.calls}
        if mode == "on":
            assert overlapped >= 8, "the engine did not run while frames were being sent"
            assert sink_threads == {"segstream-post"} and not engine_threads & sink_threads
        else:
            assert overlapped == 0 and sink_threads == engine_threads
        times = res.per_camera["a"].times.summaries()
        assert times["total"].count == 12 and times["post"].count == 12
        assert times["handoff"].count == 12


def test_newest_wins_drops_are_counted_and_wire_dropped_stays_exact(tiny_model):
    """An engine that never waits for the post worker (the GPU policy) with a slow sink:
    untaken results are replaced. Nothing is reordered, every frame is either published or
    counted as dropped, and the loss formula holds for every pair of published maps."""
    seg = Segmenter.from_path(tiny_model, threads=1)
    a, b = ListSource("a", 60), ListSource("b", 40, shape=(30, 40))
    sink = TimedSink(delay=0.004)
    p = Pipeline([a, b], seg, sink, stats_interval=0)
    p.overlap = Overlap(post_worker=True, engine_waits=False)
    res = p.run()
    assert res.error is None
    for cam, n in (("a", 60), ("b", 40)):
        got = [(seq, d) for c, seq, d in sink.dropped if c == cam]
        seqs = [s for s, _ in got]
        assert seqs == sorted(set(seqs)) and seqs[-1] == n - 1  # in order, the last one sent
        assert got[0][1] == got[0][0]  # everything before the first map: never published
        for (s1, d1), (s2, d2) in itertools.pairwise(got):
            assert (s2 - s1 - 1) - (d2 - d1) == 0
        stats = res.per_camera[cam]
        assert stats.published == len(seqs) and stats.published + stats.dropped == n
    assert sum(s.dropped for s in res.per_camera.values()) > 0, "the test needs drops"
    for line in p.status_lines():  # each camera's hand-off drops, apart from its camera's
        cam = line.split()[0]
        assert f"| dropped 0, hand-off {res.per_camera[cam].dropped} |" in line


def test_overlap_policy_per_backend():
    cpu, gpu = SimpleNamespace(name="onnxruntime"), SimpleNamespace(name="tensorrt")
    assert resolve_overlap("auto", cpu) == Overlap(post_worker=True, engine_waits=True)
    assert resolve_overlap("on", gpu) == Overlap(post_worker=True, engine_waits=False)
    assert resolve_overlap("auto", SimpleNamespace(name="torch", device="cuda:0")).engine_waits \
        is False
    assert resolve_overlap("off", gpu).post_worker is False
    with pytest.raises(ValueError, match="auto, on, off"):
        resolve_overlap("sometimes", cpu)


def test_post_failure_stops_the_run_and_publishes_nothing_invalid(tiny_model):
    class BadPost(Segmenter):
        def finish(self, output, out_hw, box=None):
            return np.full(out_hw, 9, np.uint8)  # class 9 of 5

    seg = BadPost(create_backend(tiny_model, threads=1))
    sink = ListSink()
    res = Pipeline([ListSource("a", 30)], seg, sink, stats_interval=0).run()
    assert sink.sent == [] and "class id 9" in res.error


def test_a_sink_that_raises_still_raises_from_run(tiny_model):
    class Broken(ListSink):
        def send(self, frame, labels, t_infer_ns, dropped) -> None:
            raise OSError("socket closed")

    seg = Segmenter.from_path(tiny_model, threads=1)
    with pytest.raises(OSError, match="socket closed"):
        Pipeline([ListSource("a", 5)], seg, Broken(), stats_interval=0).run()


# -- cross-camera batching ---------------------------------------------------------------------

def _frames(rng: np.random.Generator, shapes) -> list[np.ndarray]:
    """Smooth random frames (blurred noise: regions, not salt and pepper)."""
    import cv2

    out = []
    for h, w in shapes:
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return out


def test_fixed_batch_1_onnx_is_rewritten_and_batches_give_identical_labels(tiny_model):
    assert input_batch(onnx.load(str(tiny_model))) == 1
    one = Segmenter.from_path(tiny_model, threads=1)
    seg = Segmenter.from_path(tiny_model, threads=1, batch=3)
    assert (one.max_batch, seg.max_batch) == (1, 3)
    calls = record_infer(seg)
    frames = _frames(np.random.default_rng(1), [(48, 64), (64, 96), (30, 40), (120, 160),
                                                 (64, 96)])
    got = seg.run_batch(frames)
    assert [c[2] for c in calls] == [3, 2]
    for f, labels in zip(frames, got, strict=True):
        assert labels.tobytes() == one(f).tobytes()


@pytest.mark.parametrize("name", ["camvid_fastscnn.onnx", "camvid_fastscnn.int8.onnx"])
def test_shipped_model_batched_labels_are_byte_identical(name):
    path = next((p for p in shipped_models() if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} is not shipped in this checkout")
    one = Segmenter.from_path(path, threads=2)
    seg = Segmenter.from_path(path, threads=2, batch=3)
    frames = _frames(np.random.default_rng(2), [(360, 480), (720, 1280), (360, 480)])
    for f, labels in zip(frames, seg.run_batch(frames), strict=True):
        assert labels.tobytes() == one(f).tobytes()


def test_pipeline_puts_cameras_in_one_call_and_matches_the_sequential_path(tiny_model):
    seg = Segmenter.from_path(tiny_model, threads=1, batch=3)
    one = Segmenter.from_path(tiny_model, threads=1)
    calls = record_infer(seg)
    sources = [ListSource("a", 10), ListSource("bb", 10, shape=(30, 40)),
               ListSource("ccc", 10, shape=(64, 96))]
    sink = ListSink()
    res = Pipeline(sources, seg, sink, stats_interval=0, batch_wait_ms=50).run()
    assert res.error is None and res.published == 30
    assert max(c[2] for c in calls) == 3 and len(calls) < 30
    for cam in ("a", "bb", "ccc"):
        assert [f.seq for f, _ in sink.sent if f.camera_id == cam] == list(range(10))
    for frame, labels in sink.sent:
        assert labels.tobytes() == one(frame.image).tobytes()


def _tiny_graph(path: Path, middle: list, inits: list) -> Path:
    """A 2-class logits model (1, 3, 8, 8) -> (1, 2, 8, 8) with ``middle`` between a 1x1
    conv ("c") and the output ("logits"), and its sidecar."""
    from engines.spec import ClassInfo, ModelSpec

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(
        (2, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), *middle], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 8, 8])],
        [w, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    ModelSpec("g", "test", (ClassInfo(0, "a", (0, 0, 0)), ClassInfo(1, "b", (9, 9, 9))),
              (8, 8), training_data="none").save(path.with_suffix(".json"))
    return path


def test_graphs_that_cannot_batch_fail_at_load_naming_the_fix(tmp_path):
    flat = numpy_helper.from_array(np.array([1, -1], np.int64), "flat")
    back = numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "back")
    fixed = _tiny_graph(tmp_path / "reshape.onnx", [
        helper.make_node("Reshape", ["c", "flat"], ["f"]),
        helper.make_node("Reshape", ["f", "back"], ["logits"])], [flat, back])
    mixing = _tiny_graph(tmp_path / "mix.onnx", [  # every frame plus the batch's mean
        helper.make_node("ReduceMean", ["c"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Add", ["c", "m"], ["logits"])], [])
    for model, why in ((fixed, "does not run with N = 2"), (mixing, "differ")):
        create_backend(model, threads=1).close()  # batch 1 is fine
        with pytest.raises(BackendError, match=rf"(?s)batches of 4.*{why}.*re-export"):
            create_backend(model, threads=1, batch=4)


def test_batch_rewrite_keeps_resize_sizes_following_the_input(tmp_path):
    """INT8 calibration folds Resize sizes to a constant [1, C, H, W]: made N-following."""
    sizes = numpy_helper.from_array(np.array([1, 2, 16, 16], np.int64), "sizes")
    pool = [helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Resize", ["p", "", "", "sizes"], ["r"], mode="linear"),
            helper.make_node("MaxPool", ["r"], ["logits"], kernel_shape=[2, 2],
                             strides=[2, 2])]
    path = _tiny_graph(tmp_path / "resize.onnx", pool, [sizes])
    model = onnx.load(str(path))
    changed = make_batch_dynamic(model)
    assert any("constant sizes [1, 2, 16, 16]" in c for c in changed)
    assert input_batch(model) is None
    be = create_backend(path, threads=1, batch=3)
    assert be.max_batch == 3
    assert batch_mismatch(be.infer, (1, 3, 8, 8), np.dtype(np.float32), n=3) == ""


def test_fanin_does_not_wait_long_for_a_silent_camera():
    a, b = ListSource("a", 5), ListSource("b", 0)
    b.latest = lambda timeout: None  # running, but never delivers
    fan = FanIn([a, b])
    t0 = time.monotonic()
    got, _ = fan.gather(2, timeout=5.0, wait_s=0.02)
    assert [s.camera_id for s, _ in got] == ["a"] and time.monotonic() - t0 < 1.0
    b.state = "eos"  # an ended camera is not waited for at all
    t0 = time.monotonic()
    got, _ = fan.gather(2, timeout=5.0, wait_s=10.0)
    assert [s.camera_id for s, _ in got] == ["a"] and time.monotonic() - t0 < 1.0


def test_fanin_serves_every_camera_in_turn_when_batches_are_smaller():
    sources = [ListSource(f"c{i}", 20) for i in range(4)]
    fan = FanIn(sources)
    rounds = [[s.camera_id for s, _ in fan.gather(2, 1.0)[0]] for _ in range(4)]
    assert rounds == [["c0", "c1"], ["c2", "c3"], ["c0", "c1"], ["c2", "c3"]]
    got, _ = fan.gather(3, 1.0, skip={"c1"})
    assert [s.camera_id for s, _ in got] == ["c0", "c2", "c3"]


# -- the engine thread policy -------------------------------------------------------------------

def test_auto_policy_has_both_sessions_with_identical_outputs(tiny_model):
    be = create_backend(tiny_model, threads=2, policy="auto")
    x = np.random.default_rng(3).standard_normal(be.input_shape).astype(np.float32)
    assert be.mode == "throughput" and not be.spinning
    calm = be.infer(x)
    assert be.set_mode("latency") == "latency" and be.spinning and be.in_flight == 1
    assert np.array_equal(be.infer(x), calm)
    assert be.set_mode("throughput") == "throughput" and be.in_flight == 2
    fixed = create_backend(tiny_model, threads=2, policy="throughput")
    assert fixed.set_mode("latency") == "throughput"  # no latency session: unchanged
    assert create_backend(tiny_model, threads=2).mode == "plain"
    with pytest.raises(BackendError, match="engine policy"):
        create_backend(tiny_model, policy="fast")


@pytest.mark.skipif(not shipped_models(), reason="no shipped model in engines/models")
@pytest.mark.parametrize("model", shipped_models(), ids=lambda m: m.stem)
def test_engine_modes_give_identical_labels_on_every_shipped_model(model):
    """auto switches between a 2-thread session and 1-thread sessions mid-run: the labels
    of a frame must not depend on which one ran it (same for a plain session)."""
    seg = Segmenter.from_path(model, threads=2, policy="auto")
    plain = Segmenter.from_path(model, threads=1)
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (360, 480, 3), np.uint8)
    frame[:120] = (235, 200, 180)  # a sky, so the map has several classes and boundaries
    x = seg.pre(frame)
    outs = {}
    for mode in ("throughput", "latency"):
        assert seg.backend.set_mode(mode) == mode
        outs[mode] = seg.backend.infer(x)[0]
    labels = {m: seg.finish(o, frame.shape[:2]) for m, o in outs.items()}
    assert np.array_equal(labels["throughput"], labels["latency"])
    assert np.array_equal(labels["latency"], plain(frame))


def test_throughput_mode_runs_calls_side_by_side_in_order(tiny_model):
    plain = create_backend(tiny_model, threads=2)
    be = create_backend(tiny_model, threads=2, policy="throughput")
    assert (plain.in_flight, be.in_flight, be.streams) == (1, 2, 2)
    xs = [np.random.default_rng(i).standard_normal(be.input_shape).astype(np.float32)
          for i in range(5)]
    be.submit(xs[0])
    be.submit(xs[1])
    with pytest.raises(BackendError, match="collect"):
        be.submit(xs[2])
    got = [be.collect()]
    for x in xs[2:]:
        be.submit(x)
        got.append(be.collect())
    got.append(be.collect())
    for x, out in zip(xs, got, strict=True):
        assert np.array_equal(out, plain.infer(x))
    be.close()
    # through the pipeline: two frames of a camera in flight, published in order
    seg = Segmenter.from_path(tiny_model, threads=2, policy="throughput")
    one = Segmenter.from_path(tiny_model, threads=1)
    sink = ListSink()
    res = Pipeline([ListSource("a", 25)], seg, sink, stats_interval=0).run()
    assert res.published == 25 and [f.seq for f, _ in sink.sent] == list(range(25))
    for frame, labels in sink.sent:
        assert labels.tobytes() == one(frame.image).tobytes()


def test_a_call_collected_late_reports_its_run_time_not_the_wait(tiny_model):
    """With two calls in flight the engine loop collects a finished call when it next looks
    (after gathering frames, submitting the next call): the "infer" stage is the call's own
    time on its session, not the time it waited to be collected."""
    from stream.stages import StagedEngine

    seg = Segmenter.from_path(tiny_model, threads=2, policy="throughput")
    engine = StagedEngine(seg)
    assert engine.depth == 2
    frame = ListSource("a", 1).latest(0)
    engine.submit([frame], time.monotonic_ns())
    while not engine.ready():
        time.sleep(0.001)
    time.sleep(0.25)  # the loop was busy elsewhere: the result waits to be collected
    (item,) = engine.collect()
    assert 0 < item.infer_ns == seg.backend.last_call_ns < 0.2e9
    seg.backend.close()


class PacedSource(ListSource):
    """Frames at ``fps``, like a live camera."""

    def __init__(self, camera_id: str, n: int, fps: float, shape=(48, 64)) -> None:
        super().__init__(camera_id, n, shape)
        self._period, self._next = 1.0 / fps, time.monotonic()

    def latest(self, timeout: float) -> Frame | None:
        wait = self._next - time.monotonic()
        if wait > timeout:
            time.sleep(timeout)
            return None
        time.sleep(max(0.0, wait))
        self._next += self._period
        return super().latest(0)


class MachineIdle:
    """/proc/stat as the governor sees it, for a machine that is ``idle`` idle."""

    def __init__(self, idle: float) -> None:
        self.idle, self.t = idle, 0

    def __call__(self) -> tuple[int, int]:
        self.t += 1000
        return int(self.idle * self.t), self.t


def test_governor_spins_for_a_slow_camera_and_goes_parallel_when_cpu_bound():
    """The shipped model (a real engine load): a 10 fps camera gets latency mode, frames
    as fast as they come get throughput mode (two calls at once), and a slow camera on a
    machine without an idle core stays in throughput mode."""
    model = next((p for p in shipped_models() if p.name == "camvid_fastscnn.onnx"), None)
    if model is None:
        pytest.skip("the shipped camvid_fastscnn.onnx is not in this checkout")
    seg = Segmenter.from_path(model, threads=2, policy="auto")
    assert not seg.backend.spinning and seg.backend.in_flight == 2

    def run(source: ListSource, idle: float, **kw) -> EngineGovernor:
        sink = ListSink()
        p = Pipeline([source], seg, sink, stats_interval=0, **kw)
        p.governor = EngineGovernor(seg.backend, window_s=0.3, cpu=MachineIdle(idle))
        assert p.run().error is None
        seqs = [f.seq for f, _ in sink.sent]  # in order across mode switches
        assert seqs == sorted(set(seqs)) and len(seqs) >= 5
        return p.governor

    # 5 fps: a load below 0.5 even if the busy test machine makes a call take 100 ms
    gov = run(PacedSource("a", 8, fps=5, shape=(360, 480)), 0.9)
    assert seg.backend.spinning and gov.mode == "latency" and gov.switches >= 1
    assert seg.backend.in_flight == 1 and gov.cpu_idle == pytest.approx(0.9)
    gov = run(ListSource("a", 400, shape=(360, 480)), 0.9, duration=1.0)
    assert not seg.backend.spinning and gov.switches >= 1 and seg.backend.in_flight == 2
    gov = run(PacedSource("a", 8, fps=5, shape=(360, 480)), 0.05)
    assert not seg.backend.spinning and gov.switches == 0  # no idle core: no spinning
    assert 0 <= gov.load <= 1
    assert EngineGovernor.for_backend(Segmenter.from_path(model).backend) is None


# -- configuration ------------------------------------------------------------------------------

def test_launch_keys_and_run_flags(tmp_path, capsys):
    doc = tmp_path / "l.yaml"
    doc.write_text("version: 1\nsources: [{uri: 'test://smpte'}]\nbatch: 4\n"
                   "batch_wait_ms: 5\noverlap: 'off'\nengine_policy: latency\ntta: flip\n")
    cfg = load_launch(doc)
    assert (cfg.batch, cfg.batch_wait_ms, cfg.overlap, cfg.engine_policy, cfg.tta) == (
        4, 5.0, "off", "latency", "flip")
    doc.write_text("version: 1\nsources: [{uri: 'test://smpte'}]\noverlap: off\n")
    with pytest.raises(ConfigError, match=r"overlap: expected str, got False .*quote"):
        load_launch(doc)
    doc.write_text("version: 1\nsources: [{uri: 'test://smpte'}]\nbatch: 0\n"
                   "batch_wait_ms: -1\noverlap: maybe\nengine_policy: fast\ntta: mirror\n")
    with pytest.raises(ConfigError) as e:
        load_launch(doc)
    keys = sorted(err.split(":")[0] for err in e.value.errors)
    assert keys == ["batch", "batch_wait_ms", "engine_policy", "overlap", "tta"]
    assert cli_main(["run", "--source", "test://smpte", "--batch", "65"]) == 2
    assert "batch: must be 1..64" in capsys.readouterr().err


# -- TensorRT: the batch profile (pure Python here), the engine itself on a GPU -----------------

def test_trt_build_batch_profile_min_1_opt_max_n(tiny_model):
    from engines.trt.build import BuildOptions, prepare_build

    prep = prepare_build(tiny_model, None, BuildOptions(batch=4))
    (rng,) = prep.shapes
    assert (rng.min, rng.opt, rng.max) == ((1, 3, 64, 96), (4, 3, 64, 96), (4, 3, 64, 96))
    assert prep.rewrite_batch  # the tiny model fixes N = 1
    with pytest.raises(ValueError, match="--batch sets the profile"):
        prepare_build(tiny_model, None, BuildOptions(batch=4, shape=("1x3x64x96",)))


def test_trt_batched_engine_pads_partial_batches(tiny_model, tmp_path):
    from tests.gpu.conftest import require_tensorrt

    require_tensorrt()  # skips here: no TensorRT / CUDA GPU on this machine
    from engines.trt.build import BuildOptions, build_engine

    engine, _ = build_engine(tiny_model, tmp_path / "t.engine", BuildOptions(batch=3))
    seg = Segmenter.from_path(engine, batch=3)  # CPU pre/post around a batch engine
    one = Segmenter.from_path(tiny_model, threads=1)
    assert seg.max_batch == 3 and seg.backend.in_flight == 2
    frames = _frames(np.random.default_rng(4), [(64, 96)] * 4)
    for f, labels in zip(frames, seg.run_batch(frames), strict=True):  # 3 + 1 (padded)
        assert (labels == one(f)).mean() > 0.99  # GPU float order differs from the CPU's
    sink = ListSink()
    sources = [ListSource(c, 8, shape=(64, 96)) for c in ("a", "b", "c")]
    res = Pipeline(sources, seg, sink, stats_interval=0).run()  # two batches in flight
    assert res.published == 24 and res.error is None
    for cam in ("a", "b", "c"):
        assert [f.seq for f, _ in sink.sent if f.camera_id == cam] == list(range(8))


def test_trt_fused_pipeline_keeps_two_frames_in_flight_in_order(tiny_model, tmp_path):
    from tests.gpu.conftest import require_tensorrt

    require_tensorrt()
    from engines.segmenter import GpuFusedSegmenter
    from engines.trt.build import build_engine

    engine, _ = build_engine(tiny_model, tmp_path / "f.engine")
    seg = Segmenter.from_path(engine)
    assert isinstance(seg, GpuFusedSegmenter)
    one = Segmenter.from_path(tiny_model, threads=1)
    sink = ListSink()
    res = Pipeline([ListSource("a", 20, shape=(64, 96))], seg, sink, stats_interval=0).run()
    assert res.published == 20 and [f.seq for f, _ in sink.sent] == list(range(20))
    for frame, labels in sink.sent:
        assert (labels == one(frame.image)).mean() > 0.99


# -- end to end: GStreamer cameras, one engine call for both, ZeroMQ -----------------------------

def test_two_live_cameras_batched_end_to_end(tmp_path):
    from stream.runner import run_pipeline
    from stream.subscribe import LabelMessage, Subscriber
    from tests.stream._media import require_gst

    require_gst()
    endpoint = f"ipc:///tmp/segstream-test-{uuid.uuid4().hex[:8]}"
    model = make_tiny_model(tmp_path / "m")
    srcs = tuple(SourceConfig(f"test://{p}?width=160&height=120&fps=60", cam)
                 for p, cam in (("smpte", "left"), ("ball", "right")))
    cfg = PipelineConfig(sources=srcs, model=str(model), threads=1, batch=2,
                         batch_wait_ms=10, duration=2.5, stats_interval=0,
                         publish=PublishConfig((endpoint,), encoding="zstd"))
    got: list[LabelMessage] = []
    box: dict = {}

    def run() -> None:
        with open(os.devnull, "w") as devnull:
            box["code"], box["result"] = run_pipeline(cfg, out=devnull)

    with Subscriber(endpoint, timeout=0.2) as sub:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        while t.is_alive() or len(got) == 0:
            msg = sub.receive(0.2)
            if isinstance(msg, LabelMessage):
                got.append(msg)
            if not t.is_alive() and msg is None:
                break
        t.join(10)
    assert box["code"] == 0
    cams = {m.camera for m in got}
    assert cams == {"left", "right"}
    for cam in cams:
        maps = [m for m in got if m.camera == cam]
        assert [m.seq for m in maps] == sorted({m.seq for m in maps}) and len(maps) > 10
        # `dropped` never counts a map that was published: a gap is never smaller than
        # the drops it spans (it is larger only where ZeroMQ dropped for this subscriber)
        for m1, m2 in itertools.pairwise(maps):
            assert (m2.seq - m1.seq - 1) - (m2.dropped - m1.dropped) >= 0
