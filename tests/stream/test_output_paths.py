"""Output options are checked before any work: an output that is an input of the command
(the model, its sidecar, a report being rendered, the video being read) or a path that
cannot be written exits 2 naming the option, and nothing is written or replaced. These
were found replacing a model with a JSON report, a sidecar with Markdown, and failing
with a traceback after a whole calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.cli import main
from stream.commands._common import output_problem


def test_output_problem_names_the_conflict(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = {
        tmp_path / "m.onnx": "is " + str(tmp_path / "m.onnx") + ", an input",
        tmp_path / "m.json": "an input of this command",
        tmp_path / "afile" / "r.json": "is a file, not a folder",
        tmp_path / "adir": "is a folder",
        Path("/proc/segstream-x.json"): "cannot write in /proc",
    }
    for out, why in cases.items():
        got = output_problem(out, "--out", inputs=[model])
        assert got is not None and why in got, (out, got)
    assert "must end in .onnx" in output_problem(tmp_path / "x.json", "--out",
                                                 suffixes=(".onnx",))
    assert output_problem(tmp_path / "new" / "deeper" / "r.json", "--out", inputs=[model]) is None


def test_eval_refuses_to_write_its_report_over_the_model_or_record_a_partial_score(
        tiny_model: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"  # never read: the paths are refused first
    before = {p: p.read_bytes() for p in (tiny_model, tiny_model.with_suffix(".json"))}
    for extra, why in ((["--out", str(tiny_model.with_suffix(".json"))], "an input"),
                       (["--out", str(tiny_model)], "must end in .json"),
                       (["--limit", "2", "--record"], "score the whole split")):
        assert main(["eval", "--model", str(tiny_model), "--data", str(data), *extra]) == 2
        assert why in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_calibrate_wants_an_onnx_out_and_checks_it_first(tiny_model: Path, tmp_path: Path,
                                                        capsys) -> None:
    (tmp_path / "afile").write_text("x")
    for out, why in ((tmp_path / "c.json", "must end in .onnx"),
                     (tmp_path / "afile" / "c.onnx", "is a file, not a folder")):
        assert main(["calibrate", str(tiny_model), "--data", str(tmp_path / "none"),
                     "--out", str(out)]) == 2
        assert why in capsys.readouterr().err
    assert main(["calibrate", str(tiny_model), "--data", str(tmp_path), "--max-drop",
                 "nan"]) == 2
    assert "--max-drop must be a number" in capsys.readouterr().err


def test_calibrate_of_a_shipped_model_needs_out(tmp_path: Path, capsys) -> None:
    """The help's first example, run as written, wrote over the shipped INT8 model, its
    sidecar (with the training protocol) and report."""
    from engines.zoo import MODELS_DIR, shipped_models

    shipped = [p for p in shipped_models() if (MODELS_DIR / f"{p.stem}.int8.onnx").is_file()]
    if not shipped:
        pytest.skip("no shipped model with an INT8 twin in engines/models")
    int8 = MODELS_DIR / f"{shipped[0].stem}.int8.onnx"
    before = {p: p.stat().st_mtime_ns for p in MODELS_DIR.iterdir()}
    assert main(["calibrate", str(shipped[0]), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert str(int8) in err and "give --out" in err
    assert {p: p.stat().st_mtime_ns for p in MODELS_DIR.iterdir()} == before
    # with --out the same command goes on (to the missing --data here)
    assert main(["calibrate", str(shipped[0]), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "m.int8.onnx")]) == 2
    assert "give --out" not in capsys.readouterr().err


def test_bench_does_not_render_a_report_over_itself(tmp_path: Path, capsys) -> None:
    report = tmp_path / "b.json"
    report.write_text(json.dumps({"results": []}))
    assert main(["bench", "--from-json", str(report), "--markdown", str(report)]) == 2
    assert "an input of this command" in capsys.readouterr().err
    assert json.loads(report.read_text()) == {"results": []}


@pytest.mark.parametrize("save, why", [("shot.png", "must end in .mp4 or .avi or .mov"),
                                       ("afile/run-{camera}.mp4", "is a file, not a folder")])
def test_view_checks_its_recording_path(tmp_path: Path, capsys, monkeypatch, save, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["view", "ipc:///tmp/segstream-none", "--no-window", "--save", save]) == 2
    assert why in capsys.readouterr().err


def test_predict_does_not_overwrite_the_video_it_reads(tiny_model: Path, tmp_path: Path,
                                                       capsys) -> None:
    video = tmp_path / "annotated.mp4"
    video.write_bytes(b"not decoded: refused first")
    assert main(["predict", str(video), "--model", str(tiny_model), "--out",
                 str(tmp_path)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert video.read_bytes() == b"not decoded: refused first"
    assert main(["predict", "test://ball?frames=3", "--out", str(tmp_path / "o"),
                 "--fps", "nan"]) == 2
    assert "--fps 0..1000" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["predict", "x", "--out", "y"]])
def test_threads_must_be_positive(command, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--threads", "-3"])
    assert e.value.code == 2 and "--threads: must be a whole number > 0" in \
        capsys.readouterr().err
