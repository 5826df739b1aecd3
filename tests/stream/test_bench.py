"""segstream bench on a tiny model: repeated interleaved runs, median (min-max) summaries,
a hand loop of pipeline quality, tables that fit 120 columns, re-rendering from JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.segmenter import Segmenter
from stream.bench import (
    BenchCase,
    BenchOptions,
    calibrate,
    precision_of,
    run_bench,
    schedule,
    source_rate,
)
from stream.bench_report import MAX_WIDTH, markdown, plot, spread, summarize_result, table
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
        assert all(run[k]["others_cpu_percent"] >= 0 for k in kinds)  # Linux: /proc/stat
        started = [run[k]["started"] for k in kinds]
        assert started == sorted(started, reverse=run["round"] == 1)
    s = r["summary"]
    for key in ("engine_fps", "pipeline_fps", "pipeline_vs_engine", "e2e_p50_ms", "hand_fps",
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
    order = schedule(2, 3, [True, False])
    assert order[:6] == [(0, 0, "engine"), (0, 0, "pipeline"), (0, 0, "hand_loop"),
                         (0, 0, "clip_pipeline"), (0, 1, "engine"), (0, 1, "pipeline")]
    assert order[6:12] == [(1, 0, "clip_pipeline"), (1, 0, "hand_loop"), (1, 0, "pipeline"),
                           (1, 0, "engine"), (1, 1, "pipeline"), (1, 1, "engine")]
    assert [o[0] for o in order] == sorted(o[0] for o in order) and len(order) == 18


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


def test_precision_is_read_from_the_model(tiny_model):
    assert precision_of(tiny_model) == "fp32"


@pytest.mark.parametrize(("argv", "message"), [
    (["--resolution", "wide"], "HxW"),
    (["--repeat", "0"], "--repeat must be > 0"),
    (["--source-fps", "x"], "--source-fps must be a number"),
])
def test_bench_cli_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_cli_rejects_a_file_that_is_not_a_report(tmp_path: Path, capsys):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"segstream_bench": 1, "results": []}))
    assert main(["bench", "--from-json", str(bad)]) == 2
    assert "not a segstream bench report of format 2" in capsys.readouterr().err
