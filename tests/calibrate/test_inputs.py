"""Calibration inputs: image folders, videos, label maps, and clear errors for bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibrate.data import CalibrationDataError, read_frames, read_labelled
from calibrate.evaluate import agreement, score
from calibrate.quantize import QuantizeError, load_float_model
from calibrate.sensitivity import NodeCost, Objective, greedy_fallback
from engines.spec import ClassInfo, ModelSpec
from stream.cli import main
from tests.calibrate.conftest import synthetic_frame


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["calibrate", *args, "--no-progress", "--speed-runs", "2"])
    return rc, capsys.readouterr().err


def test_image_folder_is_sampled_evenly_in_name_order(frames_dir: Path) -> None:
    frames = read_frames(frames_dir, 4)
    assert [f.name for f in frames] == ["f000", "f005", "f010", "f015"]
    assert frames[0].image.shape == (96, 128, 3) and frames[0].image.dtype == np.uint8
    assert len(read_frames(frames_dir)) == 16


def test_video_source(tmp_path: Path) -> None:
    path = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(synthetic_frame(rng))
    writer.release()
    frames = read_frames(path, 5)
    assert [f.name for f in frames] == ["drive#0", "drive#5", "drive#10", "drive#14",
                                        "drive#19"]
    assert all(f.image.shape == (96, 128, 3) for f in frames)


def test_bad_data_sources_name_the_input(tmp_path: Path, seg_model: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(empty))
    assert rc == 2 and f"no images (png/jpg/jpeg/bmp) in {empty}" in err

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("not a frame")
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(odd))
    assert rc == 2 and "notes.txt" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    cv2.imwrite(str(broken / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (broken / "b.png").write_bytes(b"\x89PNG truncated")
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(broken))
    assert rc == 2 and f"cannot decode image {broken / 'b.png'}" in err

    rc, err = _run_cli(capsys, str(seg_model), "--data", str(tmp_path / "nope.mp4"))
    assert rc == 2 and "nope.mp4 does not exist" in err

    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"not a video at all")
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(bad_video))
    assert rc == 2 and "bad.mp4" in err


def test_bad_label_maps_name_the_file(frames_dir: Path, tmp_path: Path, seg_model: Path,
                                      capsys) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    for p in sorted(frames_dir.glob("*.png")):
        cv2.imwrite(str(labels / p.name), np.zeros((96, 128), np.uint8))
    cv2.imwrite(str(labels / "f003.png"), np.zeros((48, 64), np.uint8))  # wrong size
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(frames_dir), "--labels",
                       str(labels))
    assert rc == 2 and f"label map {labels / 'f003.png'} is 48x64 but its frame is 96x128" in err

    (labels / "f003.png").unlink()
    with pytest.raises(CalibrationDataError, match=r"f003\.png has no label map"):
        read_labelled(frames_dir, labels)

    cv2.imwrite(str(labels / "f003.png"), np.dstack([np.zeros((96, 128), np.uint8),
                                                      np.ones((96, 128), np.uint8),
                                                      np.zeros((96, 128), np.uint8)]))
    with pytest.raises(CalibrationDataError, match="differing channels"):
        read_labelled(frames_dir, labels)

    # ids of another class table (e.g. raw Cityscapes ids): refused, not scored as void
    k = ModelSpec.load(seg_model.with_suffix(".json")).num_classes
    other = np.full((96, 128), k + 3, np.uint8)
    other[:, :4] = 255  # void: fine
    cv2.imwrite(str(labels / "f003.png"), other)
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(frames_dir), "--labels",
                       str(labels))
    assert rc == 2 and f"label map of f003 holds ids [{k + 3}] outside" in err


def test_bad_models_name_the_file(tmp_path: Path, seg_model: Path, frames_dir: Path,
                                  capsys) -> None:
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    shutil.copy(seg_model.with_suffix(".json"), not_onnx.with_suffix(".json"))
    rc, err = _run_cli(capsys, str(not_onnx), "--data", str(frames_dir))
    assert rc == 2 and f"{not_onnx} is not an ONNX model" in err

    lonely = tmp_path / "lonely" / "seg.onnx"
    lonely.parent.mkdir()
    shutil.copy(seg_model, lonely)
    rc, err = _run_cli(capsys, str(lonely), "--data", str(frames_dir))
    assert rc == 2 and f"model sidecar {lonely.with_suffix('.json')} not found" in err

    rc, err = _run_cli(capsys, str(tmp_path / "missing.onnx"), "--data", str(frames_dir))
    assert rc == 2 and "missing.onnx not found" in err

    wrong = tmp_path / "wrong" / "seg.onnx"
    wrong.parent.mkdir()
    shutil.copy(seg_model, wrong)
    spec = ModelSpec.load(seg_model.with_suffix(".json"))
    ModelSpec(spec.name, spec.architecture, spec.classes, (96, 128)).save(
        wrong.with_suffix(".json"))
    with pytest.raises(QuantizeError, match=r"input_size \[96, 128\]"):
        load_float_model(wrong)


def test_outputs_never_overwrite_the_fp32_models_files(tmp_path: Path, seg_model: Path,
                                                       frames_dir: Path, capsys) -> None:
    model = tmp_path / "m" / "seg.onnx"
    model.parent.mkdir()
    shutil.copy(seg_model, model)
    shutil.copy(seg_model.with_suffix(".json"), model.with_suffix(".json"))
    sidecar = model.with_suffix(".json").read_bytes()
    # --out without .onnx: its sidecar would be the FP32 one
    rc, err = _run_cli(capsys, str(model), "--data", str(frames_dir), "--out",
                       str(model.with_suffix("")))
    assert rc == 2 and "must end in .onnx" in err
    rc, err = _run_cli(capsys, str(model), "--data", str(frames_dir), "--report",
                       str(model.with_suffix("")))
    assert rc == 2 and f"is {model.with_suffix('.json')}, an input of this command" in err
    assert model.with_suffix(".json").read_bytes() == sidecar
    assert sorted(f.name for f in model.parent.iterdir()) == ["seg.json", "seg.onnx"]


def test_eval_data_needs_camvid_layout(tmp_path: Path, seg_model: Path, frames_dir: Path,
                                       capsys) -> None:
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(frames_dir), "--eval-data",
                       str(tmp_path))
    assert rc == 2 and f"{tmp_path / 'val'} not found" in err and "CamVid layout" in err


def test_score_ignores_void_and_uses_one_confusion_matrix() -> None:
    from calibrate.data import LabelledFrame

    spec = ModelSpec("t", "t", tuple(ClassInfo(i, f"c{i}", (0, 0, 0)) for i in range(2)),
                     (2, 2), ignore_index=11)
    img = np.zeros((2, 2, 3), np.uint8)
    frames = [LabelledFrame("a", img, np.array([[0, 0], [1, 11]], np.uint8)),
              LabelledFrame("b", img, np.array([[1, 1], [1, 1]], np.uint8))]
    preds = [np.array([[0, 1], [1, 0]], np.uint8), np.array([[1, 1], [1, 0]], np.uint8)]
    s = score(preds, frames, spec)
    # Split totals (void pixel skipped): class 0: TP 1, FN 1, FP 1 -> 1/3;
    # class 1: TP 4, FN 1, FP 1 -> 4/6.
    assert s.per_class == {"c0": pytest.approx(100 / 3, abs=1e-2),
                           "c1": pytest.approx(400 / 6, abs=1e-2)}
    assert s.miou == pytest.approx(50.0, abs=1e-2)
    assert agreement(preds, [np.array([[0, 1], [1, 1]]), preds[1]]) == pytest.approx(87.5)
    void = [LabelledFrame("all-void", img, np.full((2, 2), 11, np.uint8))]
    with pytest.raises(CalibrationDataError, match=r"\(all-void\) hold no labelled pixel"):
        score(preds[:1], void, spec)  # not a score of 0 (nor a drop of 0 for INT8)


def test_greedy_fallback_rejects_layers_that_do_not_help() -> None:
    # Exact scores per set of float layers, as a real re-quantization would give them.
    table = {(): 90.0, ("a",): 89.0, ("b",): 95.0, ("b", "c"): 99.6}
    measured = [NodeCost("a", "Conv", -10, 95, 5.0), NodeCost("b", "Conv", -20, 94, 4.0),
                NodeCost("c", "Add", -30, 91, 1.0), NodeCost("d", "Conv", -40, 90, 0.0)]
    result = greedy_fallback(measured, Objective("miou", 100.0, 0.5), 90.0,
                             quantize=lambda nodes: tuple(sorted(nodes)),
                             score_fn=lambda key, subset: table[key], progress=False)
    assert result.kept_float == ("b", "c") and result.met and result.score == 99.6
    assert [s[2] for s in result.steps] == [False, True, True]  # "a" tried, put back


def test_min_agreement_with_labels_is_rejected(frames_dir: Path, seg_model: Path,
                                               tmp_path: Path, capsys) -> None:
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(frames_dir), "--labels",
                       str(tmp_path), "--min-agreement", "99")
    assert rc == 2 and "--min-agreement is the fallback target without labels" in err
    rc, err = _run_cli(capsys, str(seg_model), "--data", str(frames_dir), "--samples", "0")
    assert rc == 2 and "--samples must be > 0" in err


@pytest.mark.camvid
def test_camvid_val_layout_reads_frames_and_void_labels(camvid: Path) -> None:
    from calibrate.data import camvid_split

    images, labels = camvid_split(camvid, "val")
    frames = read_labelled(images, labels, 3)
    assert len(frames) == 3
    for f in frames:
        assert f.image.shape == (360, 480, 3) and f.label.shape == (360, 480)
        assert f.label.dtype == np.uint8 and int(f.label.max()) <= 11  # 11 = void
