"""``predict`` writes one label PNG per image through the stream's engine path; ``eval``
scores a model through the same path (real ONNX Runtime sessions on tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.evaluate import EvalError, evaluate, evaluate_split, write_report
from engines.predict import PredictError, predict_folder
from engines.segmenter import Segmenter
from engines.spec import ModelSpec, sidecar_path
from engines.zoo import MODELS_DIR


def _write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"frame_{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"
        cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_predict_writes_label_pngs_at_input_size(tiny_model: Path, tmp_path: Path) -> None:
    sizes = [(64, 96), (50, 70), (120, 160)]
    inputs = _write_images(tmp_path / "in", sizes)
    res = predict_folder(tiny_model, tmp_path / "in", tmp_path / "labels",
                         overlay_dir=tmp_path / "ov", threads=1, progress=False)
    assert [p.name for p in res.labels] == ["frame_00.png", "frame_01.png", "frame_02.png"]
    assert [p.name for p in res.overlays] == ["frame_00.jpg", "frame_01.jpg", "frame_02.jpg"]
    seg = Segmenter.from_path(tiny_model, threads=1)
    for src, dst, (h, w) in zip(inputs, res.labels, sizes, strict=True):
        lbl = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
        assert lbl.shape == (h, w) and lbl.dtype == np.uint8
        assert lbl.max() < 5
        # Bit-identical to running the stream's Segmenter on the same frame.
        np.testing.assert_array_equal(lbl, seg(cv2.imread(str(src))))
    for ov, (h, w) in zip(res.overlays, sizes, strict=True):
        assert cv2.imread(str(ov)).shape == (h, w, 3)
    seg.close()
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == \
        ["frame_00.png", "frame_01.png", "frame_02.png"]


def test_predict_in_graph_argmax_model(tiny_argmax_model: Path, tmp_path: Path) -> None:
    _write_images(tmp_path / "in", [(64, 96), (32, 48)])
    res = predict_folder(tiny_argmax_model, tmp_path / "in", tmp_path / "out", threads=1,
                         progress=False)
    assert [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in res.labels] == \
        [(64, 96), (32, 48)]


def test_predict_errors(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="not found"):
        predict_folder(tiny_model, tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no images"):
        predict_folder(tiny_model, tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PredictError, match=r"cannot read image .*broken\.png"):
        predict_folder(tiny_model, tmp_path / "bad", tmp_path / "out", progress=False)
    (tmp_path / "twins").mkdir()
    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("a.png", "a.jpg", "b.png"):
        cv2.imwrite(str(tmp_path / "twins" / name), img)
    with pytest.raises(PredictError, match=r"a\.jpg and a\.png would both write a\.png"):
        predict_folder(tiny_model, tmp_path / "twins", tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_a_failed_predict_leaves_the_output_folders_as_they_were(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    images = tmp_path / "images"
    _write_images(images, [(64, 96)] * 3, seed=1)
    (images / "zz_broken.png").write_bytes(b"not a png")  # sorted last: after 3 good ones
    out, ov = tmp_path / "out", tmp_path / "ov"
    out.mkdir()
    (out / "00.png").write_bytes(b"an older result")
    with pytest.raises(PredictError, match="zz_broken"):
        predict_folder(tiny_model, images, out, overlay_dir=ov, progress=False)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no staging left
    assert [f.name for f in out.iterdir()] == ["00.png"]
    assert (out / "00.png").read_bytes() == b"an older result" and not any(ov.iterdir())
    with pytest.raises(PredictError, match="is the input folder"):
        predict_folder(tiny_model, images, images, progress=False)
    (images / "zz_broken.png").unlink()
    res = predict_folder(tiny_model, images, out, overlay_dir=ov, progress=False)
    assert sorted(f.name for f in out.iterdir()) == ["00.png"] + [p.name for p in res.labels]
    assert len(list(ov.iterdir())) == len(res.overlays) == len(res.labels)


def _labelled_folder(root: Path, model: Path, n: int = 4) -> Path:
    """A folder dataset whose masks are the tiny model's own predictions."""
    spec = ModelSpec.load(sidecar_path(model))
    _write_images(root / "images", [(64, 96)] * n, seed=3)
    (root / "images" / "notes.txt").unlink()
    res = predict_folder(model, root / "images", root / "masks", threads=1, progress=False)
    assert len(res.labels) == n
    (root / "classes.txt").write_text("\n".join(spec.class_names) + "\n")
    return root


def test_eval_of_a_model_on_its_own_predictions_is_perfect(tiny_model: Path,
                                                           tmp_path: Path) -> None:
    root = _labelled_folder(tmp_path / "ds", tiny_model)
    report = evaluate(tiny_model, root, threads=1, progress=False)
    assert report.num_images == 4 and report.backend == "onnxruntime"
    assert report.metrics.pixel_acc == 1.0
    assert report.metrics.miou == 1.0
    assert report.metrics.matrix.sum() == 4 * 64 * 96


@pytest.mark.parametrize(("flags", "bars"), [([], True), (["--no-progress"], False)])
def test_eval_no_progress_leaves_only_the_table(tiny_model: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                flags: list[str], bars: bool) -> None:
    from stream.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # bars on unless the flag says otherwise
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--threads", "1",
                 *flags]) == 0
    out, err = capsys.readouterr()
    assert "mIoU" in out
    assert ("img/s" in err) is bars, err  # tqdm's rate: a bar was drawn


def test_eval_counts_errors_and_ignores_void(tiny_model: Path, tmp_path: Path) -> None:
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    masks = sorted((root / "masks").iterdir())
    m0 = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    wrong = m0.copy()
    wrong[:32] = (m0[:32] + 1) % 5  # top half wrong
    cv2.imwrite(str(masks[0]), wrong)
    m1 = cv2.imread(str(masks[1]), cv2.IMREAD_UNCHANGED)
    m1[:, :48] = 255  # left half void: ignored
    cv2.imwrite(str(masks[1]), m1)
    report = evaluate(tiny_model, root, threads=1, progress=False)
    labelled = 64 * 96 + 64 * 48
    assert report.metrics.matrix.sum() == labelled
    assert report.metrics.pixel_acc == pytest.approx((labelled - 32 * 96) / labelled)


def test_eval_report_files(tiny_model: Path, tmp_path: Path) -> None:
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    report = evaluate(tiny_model, root, threads=1, progress=False)
    js, png = write_report(report, tmp_path / "reports" / "tiny.json")
    data = json.loads(js.read_text())
    assert data["miou"] == 1.0 and data["num_images"] == 2
    assert len(data["confusion_matrix"]) == 5 and len(data["per_class_iou"]) == 5
    img = cv2.imread(str(png))
    assert png.name == "tiny_confusion.png" and img is not None and img.shape[0] > 100



def test_eval_report_without_matplotlib_is_the_json_alone(tiny_model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime-only install (no matplotlib): the report, no PNG, no traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    report = evaluate(tiny_model, root, threads=1, progress=False)
    js, png = write_report(report, tmp_path / "r.json")
    assert png is None and json.loads(js.read_text())["miou"] == 1.0
    assert not (tmp_path / "r_confusion.png").exists()


def test_record_in_sidecar(tiny_model: Path, tmp_path: Path) -> None:
    from engines.evaluate import record_in_sidecar

    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    report = evaluate(tiny_model, root, split="val", threads=1, progress=False)
    before = ModelSpec.load(sidecar_path(tiny_model))
    record_in_sidecar(report, tiny_model)
    after = ModelSpec.load(sidecar_path(tiny_model))
    assert after.metrics["val_miou"] == 1.0 and after.metrics["eval_images"] == 2
    assert len(after.metrics["per_class_iou"]) == 5
    assert after.classes == before.classes and after.input_size == before.input_size


def test_seen_in_training_matches_the_split_not_the_path() -> None:
    """The shipped train+val weights scored on val: the same frames, reached by another
    path or through --limit, are seen; another split, or a filtered one, is not claimed."""
    from engines.evaluate import seen_in_training

    trained = ("camvid:../shared/camvid train (367) + camvid:../shared/camvid val (101); "
               "crop 288x288, 84 epochs")
    assert seen_in_training("camvid:/work/shared/camvid val (101)", trained) == \
        "camvid:../shared/camvid val (101)"
    assert seen_in_training("camvid:../shared/camvid val (first 3 of 101)", trained)
    assert seen_in_training("camvid:../shared/camvid test (233)", trained) is None
    assert seen_in_training("camvid:../shared/camvid val (101)",
                            "camvid:../shared/camvid train (367); crop 288x288") is None
    assert seen_in_training("cityscapes:../shared/camvid val (101)", trained) is None
    # ':only=' / ':except=': which frames overlap is not in the descriptions
    assert seen_in_training("camvid:../shared/camvid train (367) only 0006R0 (101)",
                            trained) is None
    assert seen_in_training("camvid:../shared/camvid val (101)", "camvid:../shared/camvid "
                            "train (367) + camvid:../shared/camvid val (101) except 0006R0 "
                            "(367)") is None
    assert seen_in_training("camvid:../shared/camvid train (367) only 0006R0 (first 3 of 101)",
                            trained) is None  # filtered, then limited: still not claimed
    # train+val --limit 400: 367 train frames and the first 33 of val were trained on
    limited = ("camvid:../shared/camvid train (367) + camvid:../shared/camvid val "
               "(first 33 of 101); crop 288x288")
    assert seen_in_training("camvid:../shared/camvid val (101)", limited)
    assert seen_in_training("folder:/data/my set (12)", "folder:/data/my set (12); 5 epochs")
    assert seen_in_training("camvid:x val (101)", "") is None
    assert seen_in_training("camvid:x val (101)", "free text, no parts") is None
    # found by review: a folder named like a duplicate download, another drive's val
    trained_dup = "camvid:/home/u/camvid (1) train (367) + camvid:/home/u/camvid (1) val (101)"
    assert seen_in_training("camvid:/home/u/camvid (1) test (233)", trained_dup) is None
    assert seen_in_training("camvid:/home/u/camvid (1) val (101)", trained_dup)
    assert seen_in_training("folder:/a/drive1/val (100)", "folder:/b/drive2/val (100)") is None
    # "only" / "except" inside a path is not a filter
    assert seen_in_training("camvid:/data/only set/camvid val (101)",
                            "camvid:/data/only set/camvid val (101); 3 epochs")


def test_record_on_a_split_the_model_was_trained_on_is_a_fit(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """`eval --record` of the shipped train+val weights on val wrote val_miou at the top of
    the sidecar, where tools read a held-out figure: it goes under seen_split_fit."""
    from engines.evaluate import SEEN_SPLIT_NOTE, record_in_sidecar

    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    report = evaluate(tiny_model, root, split="val", threads=1, progress=False)
    path = sidecar_path(tiny_model)
    doc = json.loads(path.read_text())
    doc["training_data"] = f"{report.data}; 3 epochs"
    doc.setdefault("metrics", {})["val_miou"] = 0.61  # the training loop's, same frames
    path.write_text(json.dumps(doc))
    record_in_sidecar(report, tiny_model)
    m = ModelSpec.load(path).metrics
    assert "val_miou" not in m and "eval_images" not in m  # the old top-level fit moved
    fit = m["seen_split_fit"]
    assert fit["val_miou"] == 1.0 and fit["eval_images"] == 2 and fit["note"] == SEEN_SPLIT_NOTE


def test_eval_class_count_mismatch(tiny_model: Path, tmp_path: Path) -> None:
    root = _labelled_folder(tmp_path / "ds", tiny_model, n=1)
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\nf\n")
    with pytest.raises(EvalError, match="5 classes but the dataset"):
        evaluate(tiny_model, root, threads=1, progress=False)


def test_cli_predict_and_eval(tiny_model: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    root = _labelled_folder(tmp_path / "ds", tiny_model, n=2)
    assert main(["predict", str(root / "images"), "--model", str(tiny_model), "--out",
                 str(tmp_path / "p"), "--threads", "1"]) == 0
    assert "wrote 2 label maps" in capsys.readouterr().out
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--threads", "1",
                 "--out", str(tmp_path / "r.json")]) == 0
    cap = capsys.readouterr()
    assert "mIoU" in cap.out and "100.00" in cap.out and "note:" not in cap.err
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r_confusion.png").is_file()
    # the same frames named as the model's training data: the figure is called a fit
    path = sidecar_path(tiny_model)
    doc = json.loads(path.read_text())
    data = json.loads((tmp_path / "r.json").read_text())["data"]
    path.write_text(json.dumps({**doc, "training_data": f"{data}; 3 epochs"}))
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--threads", "1"]) == 0
    assert "was trained on" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "nope.onnx"), "--data", str(root)]) == 2
    assert "not found" in capsys.readouterr().err
    # refused before any evaluation: nothing is scored, nothing written
    assert main(["eval", "--model", str(tmp_path / "run.pt"), "--data", str(root),
                 "--record"]) == 2
    assert "--record needs a model with a JSON sidecar" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--data", str(root), "--limit", "0",
                 "--out", str(tmp_path / "never.json")]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


SHIPPED = sorted(p for p in MODELS_DIR.glob("camvid_*.onnx") if ".int8" not in p.name
                 and ".fp16" not in p.name)


@pytest.mark.camvid
@pytest.mark.skipif(not SHIPPED, reason="no shipped CamVid model in engines/models")
def test_shipped_model_on_camvid_val_subset(camvid: Path) -> None:
    """The shipped model, through ONNX Runtime, on the first 12 val frames."""
    from engines.data import open_split
    from engines.data.readers import SplitData

    data = open_split(camvid, "val")
    sub = SplitData(data.images[:12], data.labels[:12], data.names[:12], data.classes,
                    data.source)
    report = evaluate_split(SHIPPED[0], sub, threads=2, progress=False)
    spec = ModelSpec.load(sidecar_path(SHIPPED[0]))
    # held out: the sidecar's val figure, or (weights trained on train+val) the train-only
    # run's, recorded under the protocol; a seen-split fit is not a val figure
    m = spec.metrics
    held_out = m["val_miou"] if "val_miou" in m else m["protocol"]["train_only_val_miou"]
    assert held_out > 0.3
    # A subset of frames scores near the full-split figure in the sidecar, far above chance.
    assert report.metrics.pixel_acc > 0.7
    assert report.metrics.miou > 0.3
