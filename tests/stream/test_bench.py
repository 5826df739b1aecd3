"""segstream bench on a tiny model: repeated interleaved runs, median (min-max) summaries,
a hand loop of pipeline quality, tables that fit 120 columns, re-rendering from JSON (and
from reports of the previous format), pipeline settings and several cameras per row, and
where each run's CPU goes per thread group."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.segmenter import Segmenter
from stream.bench import (
    BenchCase,
    BenchOptions,
    calibrate,
    camera_rate,
    compare_skip_reason,
    expand,
    groups_of,
    precision_of,
    run_bench,
    schedule,
    source_rate,
)
from stream.bench_cpu import GROUPS, ThreadCpu, group_of, process_name, thread_times
from stream.bench_report import (
    MAX_WIDTH,
    markdown,
    plot,
    spread,
    summarize_result,
    table,
    upgrade,
)
from stream.cli import main
from stream.handloop import HandLoop
from tests.stream._media import require_gst


def test_bench_repeats_interleaved_with_compare(tiny_model, tmp_path, capsys):
    require_gst()
    opts = BenchOptions(warmup_s=0.3, duration_s=1.0, engine_iters=20, repeat=2, source_fps=30,
                        threads=1, compare_frames=20)
    report = run_bench([BenchCase(tiny_model, "onnxruntime", (120, 160))], opts, compare=True,
                       workdir=tmp_path)
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["machine"]["versions"]
    kinds = ["engine", "pipeline", "hand_loop", "clip_pipeline"]
    assert report["order"] == [[0, 0, k] for k in kinds] + [[1, 0, k] for k in kinds[::-1]]
    (r,) = report["results"]
    assert r["precision"] == "fp32" and r["resolution"] == [120, 160] and r["source_fps"] == 30
    assert [run["round"] for run in r["runs"]] == [0, 1]
    for run in r["runs"]:
        assert run["engine"]["fps"] > 0 and run["engine"]["iters"] > 0
        # the engine as the pipeline's throughput mode runs it: one-thread calls side by side
        assert run["engine"]["in_flight"]["fps"] > 0 and run["engine"]["in_flight"]["calls"] > 0
        assert run["engine"]["in_flight"]["in_flight"] >= 1
        p = run["pipeline"]
        assert p["error"] is None and p["published"] > 0 and p["fps"] > 0
        assert p["subscriber"]["received"] > 0 and p["source_fps"] == 30
        assert p["config"]["threads"] == 1  # the pipeline's settings, for reproducing it
        for stage in ("capture", "pre", "infer", "post", "publish", "total", "encode"):
            assert p["stages"][stage]["count"] > 0
            assert math.isfinite(p["stages"][stage]["p99_ms"])
        assert p["stages"]["total"]["p50_ms"] >= p["stages"]["infer"]["p50_ms"]
        assert run["hand_loop"]["frames"] == 20 and run["hand_loop"]["received"] == 20
        assert run["clip_pipeline"]["published"] == 20 and run["clip_pipeline"]["fps"] > 0
        assert p["cameras"]["bench"]["published"] == p["published"]
        assert p["engine"]["overlap"] is True and p["engine"]["batch"] == 1
        groups = p["cpu_threads"]["groups"]
        assert groups["engine"] > 0 and groups["capture"] > 0, p["cpu_threads"]
        assert all(run[k]["others_cpu_percent"] >= 0 for k in kinds)  # Linux: /proc/stat
        started = [run[k]["started"] for k in kinds]
        assert started == sorted(started, reverse=run["round"] == 1)
    s = r["summary"]
    for key in ("engine_fps", "engine_in_flight_fps", "pipeline_vs_in_flight", "e2e_count",
                "engine_fps", "pipeline_fps", "pipeline_vs_engine", "e2e_p50_ms", "hand_fps",
                "clip_fps", "pipeline_vs_hand", "post_p50_ms"):
        assert s[key]["n"] == 2 and s[key]["min"] <= s[key]["median"] <= s[key]["max"], key
    ratios = [run["clip_pipeline"]["fps"] / run["hand_loop"]["fps"] for run in r["runs"]]
    assert s["pipeline_vs_hand"]["min"] == pytest.approx(min(ratios))
    text = table(report)
    assert "pipeline fps" in text and "tiny ort fp32 120x160" in text and "hand loop fps" in text
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH
    assert markdown(report).startswith("| config |")
    assert plot(report, tmp_path / "b.png").stat().st_size > 1000
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(report, default=str))
    capsys.readouterr()
    assert main(["bench", "--from-json", str(saved), "--markdown", str(tmp_path / "b.md")]) == 0
    assert capsys.readouterr().out.startswith(text)
    assert (tmp_path / "b.md").read_text() == markdown(report) + "\n"


def test_source_rate_follows_the_fastest_engine_run():
    assert source_rate([46.0, 90.0, 52.0]) == 135  # a busy minute slowed two runs
    assert source_rate([5.0, 6.0, 7.0]) == 30 and source_rate([900.0, 1000.0, 950.0]) == 240


def test_calibration_runs_the_engine_several_times(tiny_model):
    opts = BenchOptions(engine_iters=20, repeat=2, threads=1, calibration_s=0.2)
    (cal,) = calibrate([BenchCase(tiny_model, "onnxruntime", (120, 160)),
                        BenchCase(tiny_model, "onnxruntime", (240, 320))], opts)
    assert len(cal["engine_fps"]) == 3 and all(f > 0 for f in cal["engine_fps"])
    assert cal["source_fps"] == source_rate(cal["engine_fps"])


def test_schedule_alternates_the_order_each_round():
    order = schedule([[0], [1]], 3, [True, False])
    assert order[:6] == [(0, 0, "engine"), (0, 0, "pipeline"), (0, 0, "hand_loop"),
                         (0, 0, "clip_pipeline"), (0, 1, "engine"), (0, 1, "pipeline")]
    assert order[6:12] == [(1, 0, "clip_pipeline"), (1, 0, "hand_loop"), (1, 0, "pipeline"),
                           (1, 0, "engine"), (1, 1, "pipeline"), (1, 1, "engine")]
    assert [o[0] for o in order] == sorted(o[0] for o in order) and len(order) == 18


def test_cases_differing_only_in_settings_share_engine_and_hand_loop_runs(tmp_path):
    model = tmp_path / "m.onnx"
    cases = expand([model], ["onnxruntime"], [(360, 480), (720, 1280)],
                   overlaps=["on", "off"], batches=[1, 2], waits=[0.0, 5.0])
    # a batch of 1 never waits: (1, 0 ms) once, (2, 0 ms) and (2, 5 ms)
    assert len(cases) == 2 * 2 * 3 and len(set(cases)) == len(cases)
    assert {(c.settings.batch, c.settings.batch_wait_ms) for c in cases} == {
        (1, 0.0), (2, 0.0), (2, 5.0)}
    groups = groups_of(cases)
    assert [len(g) for g in groups] == [6, 6]
    order = schedule([[0, 1, 2]], 2, [True, False, True])
    assert order[:6] == [(0, 0, "engine"), (0, 0, "pipeline"), (0, 1, "pipeline"),
                         (0, 2, "pipeline"), (0, 0, "hand_loop"), (0, 0, "clip_pipeline")]
    assert order[6:8] == [(0, 2, "clip_pipeline"), (1, 2, "clip_pipeline")]
    assert order[-1] == (1, 0, "engine") and len(order) == 14
    assert camera_rate(135, 0, 4) == 33 and camera_rate(135, 30, 4) == 30
    assert camera_rate(135, 0, 1) == 135 and camera_rate(3, 0, 4) == 1


def test_settings_and_cameras_per_row_in_one_interleaved_run(tiny_model, tmp_path):
    """Two cameras vs one and overlap on vs off, in one run: per-camera figures, the mode
    the engine actually ran in, where the CPU went, and one engine run a round shared."""
    require_gst()
    opts = BenchOptions(warmup_s=0.3, duration_s=1.0, engine_iters=20, repeat=1, source_fps=30,
                        threads=1)
    cases = expand([tiny_model], ["onnxruntime"], [(120, 160)], overlaps=["on", "off"],
                   cameras=[1, 2])
    report = run_bench(cases, opts, workdir=tmp_path)
    assert report["segstream_bench"] == 3
    assert [k for _, _, k in report["order"]] == ["engine"] + ["pipeline"] * 4
    res = report["results"]
    assert [(r["overlap"], r["cameras"]) for r in res] == [("on", 1), ("on", 2), ("off", 1),
                                                          ("off", 2)]
    engines = {id(r["runs"][0]["engine"]) for r in res}
    assert len(engines) == 1  # one engine run, shared by the four rows
    for r in res:
        p = r["runs"][0]["pipeline"]
        assert p["error"] is None and set(p["cameras"]) == (
            {"bench"} if r["cameras"] == 1 else {"cam0", "cam1"})
        assert sum(c["published"] for c in p["cameras"].values()) == p["published"]
        assert all(c["fps"] > 0 and c["total"]["count"] > 0 for c in p["cameras"].values())
        assert p["engine"]["overlap"] is (r["overlap"] == "on")
        assert p["config"]["overlap"] == r["overlap"]
        groups = p["cpu_threads"]["groups"]
        assert groups["engine"] > 0, p["cpu_threads"]
        # the post worker's thread exists (and works) only with overlap
        assert (groups["post"] > 0) is (r["overlap"] == "on"), p["cpu_threads"]
        s = r["summary"]
        assert s["camera_fps_min"]["median"] <= s["camera_fps_max"]["median"]
        assert s["worst_p99_ms"]["median"] >= s["worst_p50_ms"]["median"] > 0
    two = res[1]["summary"]
    assert two["pipeline_fps"]["median"] > res[0]["summary"]["pipeline_fps"]["median"]
    text = table(report)
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH, "\n" + text
    assert "Pipeline settings in every row: engine policy auto, batch 1." in text
    for label in ("tiny ort fp32 120x160 ov-on 1cam", "tiny ort fp32 120x160 ov-off 2cam"):
        assert label in text, text
    for header in ("camera fps min", "worst p99 ms", "hand-off dropped", "engine %", "post %",
                   "bench sub %"):
        assert header in text, header
    assert " 2x30" in text  # two cameras at 30 fps each


def test_tta_is_a_pipeline_setting_of_its_own_row(tiny_model, tmp_path):
    """--tta flip and none side by side: each row's pipeline ran with its setting; the
    hand-written loop (one network call a frame) is not compared with the flip row."""
    require_gst()
    opts = BenchOptions(warmup_s=0.3, duration_s=1.0, engine_iters=20, repeat=1, source_fps=30,
                        threads=1)
    cases = expand([tiny_model], ["onnxruntime"], [(120, 160)], ttas=["none", "flip"])
    assert [compare_skip_reason(c) for c in cases] == [
        "", "the hand-written loop runs the network once a frame (no --tta)"]
    report = run_bench(cases, opts, workdir=tmp_path)
    res = report["results"]
    assert [r["tta"] for r in res] == ["none", "flip"]
    for r in res:
        p = r["runs"][0]["pipeline"]
        assert p["error"] is None and p["published"] > 0 and p["config"]["tta"] == r["tta"]
    text = table(report)
    for label in ("tiny ort fp32 120x160 tta-none", "tiny ort fp32 120x160 tta-flip"):
        assert label in text, text
    assert "tta = --tta" in text


def _frame(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A smooth random (H, W, 3) uint8 BGR image: label regions larger than a pixel."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)


def test_hand_loop_labels_match_the_pipeline_not_nearest_neighbour(tiny_model):
    hand = HandLoop(tiny_model, threads=1)
    seg = Segmenter.from_path(tiny_model, threads=1)
    frame = _frame((120, 160))
    labels, reference = hand.segment(frame), seg(frame)
    assert labels.shape == (120, 160) and labels.dtype == np.uint8
    assert (labels == reference).mean() >= 0.999
    logits = seg.backend.infer(seg.pre(frame))[0]  # (K, h, w)
    blocky = cv2.resize(logits.argmax(0).astype(np.uint8), (160, 120),
                        interpolation=cv2.INTER_NEAREST)
    assert (blocky == reference).mean() < 0.95  # what the old baseline did is detectably worse


def _run(engine: float, pipe: float, e2e: float, hand: float | None, clip: float | None,
         limited: bool = False, others: float = 3.0) -> dict:
    def stage(p50: float) -> dict:
        return {"count": 100, "mean_ms": p50, "p50_ms": p50, "p99_ms": p50 * 1.4,
                "max_ms": p50 * 2}

    stages = {"capture": stage(1.9), "pre": stage(0.42), "infer": stage(11.6),
              "post": stage(4.2), "encode": stage(0.12), "publish": stage(0.41),
              "total": stage(e2e)}
    load = {"others_cpu_percent": others, "steal_percent": 0.4}
    run: dict = {"engine": {"fps": engine, "p50_ms": 1e3 / engine, **load},
                 "pipeline": {"fps": pipe, "stages": stages, "cpu_percent": 186.4,
                              "rss_mib": 401.2, "dropped": 1570, "source_limited": limited,
                              "error": None, **load}}
    if hand is not None and clip is not None:
        run |= {"hand_loop": {"fps": hand, **load}, "clip_pipeline": {"fps": clip, **load}}
    return run


def _entry(model: str, backend: str, precision: str, res: list[int], runs: list[dict],
           compare: bool, skipped: str = "") -> dict:
    return {"model": model, "backend": backend, "precision": precision, "resolution": res,
            "source_fps": 214, "compare": compare, "compare_skipped": skipped,
            "runs": [{"round": i, **r} for i, r in enumerate(runs)]}


def realistic_report() -> dict:
    """Figures of the size a 2-core VM and a GPU give, 4 configurations, with --compare."""
    fp32 = [_run(142.8, 79.3, 15.1, 99.6, 105.4), _run(120.4, 75.0, 16.9, 97.1, 101.0),
            _run(150.2, 82.1, 14.2, 101.3, 110.2)]
    slow = [_run(87.3, 64.7, 119.2, 88.6, 71.6), _run(91.0, 61.2, 127.9, 90.1, 70.3, others=85),
            _run(85.5, 66.0, 104.8, 86.0, 73.3)]
    gpu = [_run(1234.6, 238.0, 4.1, None, None, limited=True),
           _run(1190.1, 239.5, 4.3, None, None, limited=True),
           _run(1301.7, 237.1, 3.9, None, None, limited=True)]
    long_name = "/home/user/models/cityscapes_litefpn_effnet_lite0_fpn_stride4_qat_v3.onnx"
    return {"options": {"repeat": 3, "compare_frames": 600},
            "machine": {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5, "gpus": [],
                        "versions": {"onnxruntime": "1.32.0"}},
            "results": [
                _entry("engines/models/camvid_fastscnn.onnx", "onnxruntime", "fp32",
                       [360, 480], fp32, True),
                _entry("engines/models/camvid_fastscnn.int8.onnx", "onnxruntime", "int8",
                       [720, 1280], slow, True),
                _entry("camvid_fastscnn.fp16.trt.engine", "tensorrt", "fp16", [1080, 1920], gpu,
                       False, "the hand-written loop runs ONNX Runtime on .onnx models only"),
                _entry(long_name, "onnxruntime", "int8", [1080, 1920], fp32, True)]}


def test_terminal_table_fits_120_columns_with_units():
    report = realistic_report()
    text = table(report)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= MAX_WIDTH, "\n" + text
    for header in ("engine fps", "pipeline fps", "e2e p50 ms", "e2e p99 ms", "infer ms",
                   "post ms", "cpu %", "rss MiB", "hand loop fps", "pipeline/hand"):
        assert header in text, header
    assert "143 (120-150)" in text  # engine fps: median (min-max) of the three runs
    assert "79.3 (75.0-82.1)" in text and "1235 (1190-1302)" in text
    assert "214*" in text and "camera may" in text  # the GPU case was source-limited
    assert "camvid_fastscnn.fp16.trt trt fp16 1080x1920: no --compare" in text
    assert "not quiet: other processes used up to 85 % of a core during" in text
    long_rows = [line for line in lines if line.startswith("cityscapes_litefpn")]
    assert long_rows and all(".. ort int8 1080x1920 " in line for line in long_rows)
    assert "others cpu %" in text and "steal %" in text
    md = markdown(report)
    assert md.count("\n| ") == 4 and "1.06 (1.04-1.09)" in md
    quiet = realistic_report()
    quiet["results"].pop(1)
    assert "not quiet" not in table(quiet)


def test_spread_and_summary_ratios_are_per_round():
    assert spread([3.0, None, 1.0, float("nan"), 2.0]) == {"median": 2.0, "min": 1.0,
                                                          "max": 3.0, "n": 3}
    assert spread([]) is None
    s = summarize_result(_entry("m.onnx", "onnxruntime", "fp32", [1, 1],
                                [_run(100.0, 50.0, 10.0, 40.0, 80.0),
                                 _run(200.0, 60.0, 10.0, 80.0, 80.0)], True))
    assert s["pipeline_vs_engine"] == {"median": 0.4, "min": 0.3, "max": 0.5, "n": 2}
    assert s["pipeline_vs_hand"]["min"] == 1.0 and s["pipeline_vs_hand"]["max"] == 2.0


def test_worst_camera_latency_ignores_a_camera_that_published_nothing():
    """A starved camera (no maps: NaN latency, as Summary.of writes it) shows in the
    slowest camera's fps, and the worst latency is the served cameras', in any order."""
    nan = float("nan")
    starved = {"published": 0, "fps": 0.0, "total": {"count": 0, "mean_ms": nan,
                                                     "p50_ms": nan, "p99_ms": nan, "max_ms": nan}}
    served = {"published": 90, "fps": 30.0, "total": {"count": 90, "mean_ms": 21.0,
                                                      "p50_ms": 20.0, "p99_ms": 31.0,
                                                      "max_ms": 40.0}}
    for cams in ([starved, served], [served, starved]):
        run = _run(100.0, 30.0, 20.0, None, None)
        run["pipeline"]["cameras"] = {f"cam{i}": c for i, c in enumerate(cams)}
        s = summarize_result(_entry("m.onnx", "onnxruntime", "fp32", [1, 1], [run], False))
        assert s["camera_fps_min"]["median"] == 0.0 and s["camera_fps_max"]["median"] == 30.0
        assert s["worst_p50_ms"]["median"] == 20.0 and s["worst_p99_ms"]["median"] == 31.0


def test_a_failing_pipeline_run_leaves_no_measuring_thread_behind(tmp_path):
    """The run's error reaches the caller, and the CPU sampler (and the window and the
    subscriber where they started) end instead of running for the rest of the process."""
    from stream.bench_measure import ipc_endpoint, run_pipeline_measured
    from stream.config import ConfigError, PipelineConfig, PublishConfig, SourceConfig

    before = set(threading.enumerate())
    cfg = PipelineConfig(sources=(SourceConfig("test://smpte?width=160&height=120", "bench"),),
                         model=str(tmp_path / "missing.onnx"), stats_interval=0,
                         publish=PublishConfig((ipc_endpoint(),)), duration=1.0)
    with pytest.raises(ConfigError, match=r"missing\.onnx"):
        run_pipeline_measured(cfg, warmup_s=0.0)
    deadline = time.monotonic() + 2.0
    while (left := [t.name for t in set(threading.enumerate()) - before if t.is_alive()]) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert left == []


def test_precision_is_read_from_the_model(tiny_model):
    assert precision_of(tiny_model) == "fp32"


@pytest.mark.parametrize(("argv", "message"), [
    (["--resolution", "wide"], "HxW"),
    (["--repeat", "0"], "argument --repeat/-n: must be a whole number > 0, got '0'"),
    (["--source-fps", "x"], "argument --source-fps: must be a whole number > 0, got 'x'"),
    (["--duration", "nan"], "argument --duration: must be a number of seconds > 0, got 'nan'"),
    (["--warmup", "-1"], "argument --warmup: must be a number of seconds >= 0, got '-1'"),
    (["--overlap", "maybe"], "argument --overlap: invalid choice: 'maybe'"),
    (["--engine-policy", "fast"], "argument --engine-policy: invalid choice: 'fast'"),
    (["--batch", "0"], "argument --batch: must be a whole number of frames > 0 and <= 64"),
    (["--batch", "65"], "argument --batch: must be a whole number of frames > 0 and <= 64"),
    (["--batch-wait-ms", "-5"], "argument --batch-wait-ms: must be a number of milliseconds "
                                ">= 0 and <= 1000, got '-5'"),
    (["--cameras", "1", "--cameras", "0"], "argument --cameras: must be a whole number of "
                                           "cameras > 0 and <= 16, got '0'"),
])
def test_bench_cli_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["probe", "test://smpte", "--seconds", "0"],
     "argument --seconds: must be a number of seconds > 0, got '0'"),
    (["probe", "test://smpte", "--stall-timeout", "inf"],
     "argument --stall-timeout: must be a number of seconds > 0, got 'inf'"),
    (["subscribe", "tcp://localhost:5555", "--timeout", "soon"],
     "argument --timeout: must be a number of seconds > 0, got 'soon'"),
    (["subscribe", "tcp://localhost:5555", "--max-backlog-mb", "-1"],
     "argument --max-backlog-mb: must be a number of MiB > 0, got '-1'"),
    (["bench", "--threads", "1.5"], "argument --threads: must be a whole number > 0, got '1.5'"),
])
def test_every_command_words_a_bad_number_alike(argv, message, capsys):
    """One helper (stream.commands._common.positive): argparse names the flag, the
    message says what the value must be and what it got; exit 2 before anything runs."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_cli_rejects_a_file_that_is_not_a_report(tmp_path: Path, capsys):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"segstream_bench": 1, "results": []}))
    assert main(["bench", "--from-json", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--from-json: {bad} is not a segstream bench report of format 2 or 3" in err
    assert "it says format 1" in err


def test_bench_cli_names_a_binary_file_given_as_a_report(tmp_path: Path, capsys):
    png = tmp_path / "frame.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert main(["bench", "--from-json", str(png)]) == 2
    assert f"--from-json: {png} is not JSON" in capsys.readouterr().err


def test_a_report_of_the_previous_format_renders_with_its_recorded_settings(tmp_path, capsys):
    old = realistic_report()
    old["segstream_bench"] = 2
    for entry in old["results"]:  # format 2 kept each run's pipeline config, no settings
        entry["runs"][0]["pipeline"]["config"] = {"overlap": "auto", "engine_policy": "auto",
                                                  "batch": 1, "batch_wait_ms": 0.0}
    new = upgrade(json.loads(json.dumps(old)))
    assert new["segstream_bench"] == 3 and new["upgraded_from"] == 2
    assert all((e["overlap"], e["cameras"]) == ("auto", 1) for e in new["results"])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert main(["bench", "--from-json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Pipeline settings in every row: overlap auto, engine policy auto, "
                          "batch 1, 1 camera.")
    assert "79.3 (75.0-82.1)" in out and "Where the CPU goes" not in out  # not recorded then


def test_thread_groups_from_python_names_and_kernel_names():
    def group(tid: int, comm: str, py: str | None = None) -> str:
        return group_of(tid, comm, py, engine_tid=1, publisher_zmq={10}, before={20})

    assert group(1, "python", "MainThread") == "engine"  # the loop's thread
    assert group(2, "python", "segstream-post") == "post"
    assert group(3, "python", "segstream-ort_1") == "engine"
    assert group(4, "python", "capture-front") == "capture"
    assert group(5, "python", "bench-subscriber") == "subscriber"
    assert group(6, "python", "Thread-3 (reset)") == "other"
    assert group(10, "ZMQbg/IO/0") == "publish" and group(11, "ZMQbg/IO/0") == "subscriber"
    assert group(12, "videotestsrc0:s", "Dummy-1") == "capture"  # GStreamer's, in Python too
    assert group(13, "pool-python") == "capture"
    assert group(20, process_name()) == "other"  # there before the run (e.g. a BLAS pool)
    assert group(21, process_name()) == "engine"  # started during it under the process's name
    assert group(22, "gmain") == "other"


def test_thread_cpu_measures_a_busy_thread_in_its_group():
    """Real threads: one burns CPU under the post worker's name while another sleeps."""
    cpu = ThreadCpu(interval=0.05)
    cpu.start()
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(2000))

    busy = threading.Thread(target=burn, name="segstream-post", daemon=True)
    idle = threading.Thread(target=stop.wait, name="bench-subscriber", daemon=True)
    busy.start()
    idle.start()
    cpu.reset()
    time.sleep(0.4)
    res = cpu.result()
    stop.set()
    busy.join()
    assert res["wall_s"] >= 0.35 and set(res["groups"]) == set(GROUPS)
    assert res["groups"]["post"] > 10, res  # busy: a core, less on a loaded machine
    assert res["groups"]["subscriber"] < 5
    top = res["threads"][0]
    assert top["name"] == "segstream-post" and top["group"] == "post"
    assert res["total_percent"] == pytest.approx(sum(res["groups"].values()), abs=0.5)
    assert thread_times()[threading.get_native_id()][1] > 0  # this thread's CPU time, ns
