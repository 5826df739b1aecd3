"""segstream bench on a tiny model: the report has every figure, the outputs render."""

from __future__ import annotations

import json
import math

import pytest

from stream.bench import BenchCase, BenchOptions, precision_of, run_bench
from stream.bench_report import markdown, plot, table
from stream.cli import main
from tests.stream._media import require_gst


@pytest.fixture(autouse=True)
def _gst():
    require_gst()


def test_bench_report_with_compare(tiny_model, tmp_path):
    opts = BenchOptions(warmup_s=0.5, duration_s=1.5, engine_iters=20, source_fps=30,
                        threads=1, compare_frames=20)
    report = run_bench([BenchCase(tiny_model, "onnxruntime", (120, 160))], opts, compare=True,
                       workdir=tmp_path)
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["machine"]["versions"]
    (r,) = report["results"]
    assert r["precision"] == "fp32" and r["resolution"] == [120, 160]
    assert r["engine"]["fps"] > 0 and r["engine"]["iters"] > 0
    p = r["pipeline"]
    assert p["error"] is None and p["published"] > 0 and p["fps"] > 0
    assert p["subscriber"]["received"] > 0
    for stage in ("capture", "pre", "infer", "post", "publish", "total", "encode"):
        assert p["stages"][stage]["count"] > 0 and math.isfinite(p["stages"][stage]["p99_ms"])
    assert p["stages"]["total"]["p50_ms"] >= p["stages"]["infer"]["p50_ms"]
    c = r["compare"]
    assert c["hand_loop"]["frames"] == 20 and c["pipeline_published"] == 20 and c["speedup"] > 0
    text = table(report)
    assert "pipeline fps" in text and "tiny.onnx" in text
    assert markdown(report).startswith("| model |")
    assert plot(report, tmp_path / "b.png").stat().st_size > 1000
    json.dumps(report, default=str)


def test_precision_is_read_from_the_model(tiny_model):
    assert precision_of(tiny_model) == "fp32"


def test_bench_cli_rejects_bad_resolution(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--resolution", "wide"])
    assert "HxW" in capsys.readouterr().err
