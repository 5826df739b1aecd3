"""Real calibration runs on tiny models: Q/DQ structure, ORT execution, report, fallback."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from calibrate.checks import tensorrt_issues
from calibrate.data import FrameReader, read_frames
from calibrate.evaluate import agreement, predict
from calibrate.pipeline import CalibrateJob, run_calibration
from calibrate.quantize import (
    QuantConfig,
    load_float_model,
    preprocess_graph,
    quantize_to,
    resolve_keep_float,
    summarize_qdq,
)
from engines.spec import ModelSpec
from stream.cli import main
from tests.calibrate.conftest import synthetic_frame, write_fp32_labels
from tests.calibrate.models import make_offset_model


def _quantize(model: Path, frames_dir: Path, tmp_path: Path, config: QuantConfig) -> Path:
    fm = load_float_model(model)
    prepped = preprocess_graph(fm.path, tmp_path / "prepped.onnx")
    reader = FrameReader(read_frames(frames_dir, 8), fm.spec, fm.input_name)
    return quantize_to(prepped, tmp_path / "out" / "q.onnx", config, reader=reader,
                       cache=tmp_path / f"ranges_{config.method}.json")


def _fresh_frames(n: int = 6) -> list:
    from calibrate.data import NamedFrame

    rng = np.random.default_rng(123)  # frames the calibration never saw
    return [NamedFrame(f"x{i}", synthetic_frame(rng)) for i in range(n)]


def test_qdq_structure_symmetric_int8_per_channel(seg_model: Path, frames_dir: Path,
                                                  tmp_path: Path) -> None:
    q = _quantize(seg_model, frames_dir, tmp_path, QuantConfig())
    model = onnx.load(str(q))
    inits = {i.name: i for i in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = numpy_helper.to_array(inits[n.input[2]])
            assert zp.dtype == np.int8, n.name
            assert not np.any(zp), f"{n.name}: zero point {zp} is not 0 (symmetric)"
    weights_seen = 0
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            w = inits[n.input[0]]
            assert w.data_type == TensorProto.INT8, f"{n.input[0]} stored as {w.data_type}"
            scale = numpy_helper.to_array(inits[n.input[1]])
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            assert scale.shape == (w.dims[0],) and axis == 0, n.name  # one scale per out-ch
            weights_seen += 1
    assert weights_seen == 3  # the three conv weights; biases stay float
    summary = summarize_qdq(q)
    assert summary.per_channel_weights == 3 and summary.per_tensor_weights == 0
    assert summary.nonzero_zero_points == 0 and summary.float_compute_nodes == ()
    assert tensorrt_issues(q) == []
    # Every conv reads a dequantized input: nothing left in float.
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert all(n.input[0] in dq_out for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_runs_in_ort_and_agrees_with_fp32(method: str, seg_model: Path,
                                               frames_dir: Path, tmp_path: Path) -> None:
    q = _quantize(seg_model, frames_dir, tmp_path, QuantConfig(method=method))
    spec = ModelSpec.load(seg_model.with_suffix(".json"))
    frames = _fresh_frames()
    fp32 = predict(seg_model, spec, frames, progress=False)
    int8 = predict(q, spec, frames, progress=False)
    assert int8[0].shape == (96, 128) and int8[0].dtype == np.uint8
    assert agreement(fp32, int8) > 95.0
    assert len({int(v) for x in int8 for v in np.unique(x)}) >= 2  # not a constant map


def test_per_tensor_and_weight_qdq_pair_layouts(seg_model: Path, frames_dir: Path,
                                                tmp_path: Path) -> None:
    q = _quantize(seg_model, frames_dir, tmp_path / "a", QuantConfig(per_channel=False))
    s = summarize_qdq(q)
    assert s.per_tensor_weights == 3 and s.per_channel_weights == 0
    q2 = _quantize(seg_model, frames_dir, tmp_path / "b", QuantConfig(weight_qdq_pair=True))
    s2 = summarize_qdq(q2)
    assert s2.per_channel_weights == 3 and s2.nonzero_zero_points == 0
    assert tensorrt_issues(q2) == []
    model = onnx.load(str(q2))
    inits = {i.name for i in model.graph.initializer}
    # TensorRT 8.x layout: float weight -> QuantizeLinear -> DequantizeLinear.
    assert sum(n.op_type == "QuantizeLinear" and n.input[0] in inits
               for n in model.graph.node) == 3
    spec = ModelSpec.load(seg_model.with_suffix(".json"))
    frames = _fresh_frames(3)
    assert agreement(predict(seg_model, spec, frames, progress=False),
                     predict(q2, spec, frames, progress=False)) > 95.0


def test_cli_writes_model_sidecar_and_report(seg_model: Path, frames_dir: Path,
                                             tmp_path: Path, capsys) -> None:
    labels = write_fp32_labels(seg_model, frames_dir, tmp_path / "labels")
    out = tmp_path / "built" / "seg.int8.onnx"
    rc = main(["calibrate", str(seg_model), "--data", str(frames_dir), "--labels", str(labels),
               "--samples", "8", "--method", "entropy", "--out", str(out), "--max-drop", "50",
               "--speed-runs", "3", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| mIoU % | 100.00 |" in printed and "CPU ms/frame" in printed
    report = json.loads((tmp_path / "built" / "seg.int8.report.json").read_text())
    assert report["fp32"]["miou"] == 100.0  # labels are the FP32 predictions
    assert 0.0 <= report["miou_drop"] <= 50.0
    assert set(report["int8"]["per_class"]) == {f"class{i}" for i in range(4)}
    assert report["calibration_frames"] == 8 and report["eval_frames"] == 16
    assert report["agreement_eval"] > 90.0 and report["speed_int8"]["median_ms"] > 0
    md = (tmp_path / "built" / "seg.int8.report.md").read_text()
    assert "| class | FP32 IoU % | INT8 IoU % | change |" in md
    spec = ModelSpec.load(out.with_suffix(".json"))
    assert spec.name == "seg-int8" and spec.input_size == (48, 64)
    q = spec.metrics["quantization"]
    assert q["method"] == "entropy" and q["precision"] == "int8" and q["profile"] == "tensorrt"
    assert spec.metrics["val_miou"] == pytest.approx(report["int8"]["miou"] / 100, abs=1e-4)
    assert summarize_qdq(out).quantize_nodes > 0 and q["tensorrt_rules_ok"] is True
    assert "TensorRT explicit-quantization rules: all followed" in md
    assert not list((tmp_path / "built").glob(".*tmp"))  # no staging files left


def test_fallback_keeps_the_culprit_layer_in_float(frames_dir: Path, tmp_path: Path) -> None:
    # A large common offset on the logits: int8 rounding of the logits tensor flattens the
    # class differences, so the classifier is the layer INT8 breaks.
    model = make_offset_model(tmp_path / "m", offset=1000.0, name="offset")
    labels = write_fp32_labels(model, frames_dir, tmp_path / "labels")
    job = CalibrateJob(model=model, data=frames_dir, samples=8, eval_images=frames_dir,
                       eval_labels=labels, max_drop=10.0, sensitivity_samples=8,
                       speed_runs=2, progress=False)
    report = run_calibration(job)
    assert 100.0 - report.int8_first.miou > 10.0  # plain INT8 is broken
    assert report.kept_float[0] == "classifier"
    assert report.fallback.met and report.miou_drop <= 10.0
    assert report.fallback.candidates[0].name == "classifier"  # measured best recovery
    groups = {c.name: c.members for c in report.fallback.candidates}
    assert groups["conv1"] == ("conv1", "relu1")  # ReLU goes to float with its conv
    assert "relu1" not in groups
    final = summarize_qdq(job.out_path)
    assert "classifier" in final.float_compute_nodes and "conv1" not in final.float_compute_nodes
    meta = ModelSpec.load(job.out_path.with_suffix(".json")).metrics["quantization"]
    assert meta["nodes_kept_float"] == list(report.kept_float)
    assert "Nodes kept in float: `classifier`" in report.to_markdown()


def test_no_labels_reports_agreement_and_min_agreement_fallback(frames_dir: Path,
                                                                tmp_path: Path) -> None:
    model = make_offset_model(tmp_path / "m", offset=1000.0, name="offset")
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    rng = np.random.default_rng(5)
    for _ in range(12):
        writer.write(synthetic_frame(rng))
    writer.release()
    job = CalibrateJob(model=model, data=frames_dir, samples=8, min_agreement=97.0,
                       agreement_data=video, agreement_samples=6,
                       sensitivity_samples=8, speed_runs=2, progress=False)
    report = run_calibration(job)
    assert report.fp32 is None and report.eval_frames == 0
    assert report.agreement_frames == 6 and report.agreement_source == str(video)
    assert report.fallback is not None and report.fallback.met
    assert report.agreement_data >= 97.0 and "classifier" in report.kept_float


def test_ort_cpu_profile_uint8_activations_int8_symmetric_weights(
        seg_model: Path, frames_dir: Path, tmp_path: Path) -> None:
    q = _quantize(seg_model, frames_dir, tmp_path, QuantConfig(profile="ort-cpu"))
    model = onnx.load(str(q))
    inits = {i.name: i for i in model.graph.initializer}
    act_zp = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
              if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)
    weight_zp = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].data_type == TensorProto.INT8]
    assert len(weight_zp) == 3 and not any(np.any(z) for z in weight_zp)
    issues = tensorrt_issues(q)  # uint8 activations and int32 biases: not for TensorRT
    assert any("uint8 zero point" in i for i in issues)
    assert any("INT32 initializer" in i for i in issues)
    spec = ModelSpec.load(seg_model.with_suffix(".json"))
    frames = _fresh_frames(3)
    assert agreement(predict(seg_model, spec, frames, progress=False),
                     predict(q, spec, frames, progress=False)) > 95.0


def test_argmax_model_with_unnamed_nodes(tiny_argmax_model: Path, frames_dir: Path) -> None:
    # Exporters may leave node names empty; nodes_to_exclude needs names, so the prepared
    # graph names every node, and an "everything in float" exclusion of "" cannot happen.
    assert not any(n.name for n in onnx.load(str(tiny_argmax_model)).graph.node)
    job = CalibrateJob(model=tiny_argmax_model, data=frames_dir, samples=8,
                       min_agreement=100.0, sensitivity_samples=8, speed_runs=2,
                       progress=False)
    report = run_calibration(job)
    names = [c.name for c in report.fallback.candidates]
    assert names and all(names) and len(set(names)) == len(names)
    assert all(report.kept_float)
    spec = ModelSpec.load(job.out_path.with_suffix(".json"))
    assert spec.output == "labels" and spec.name == "tiny_argmax-int8"
    frames = _fresh_frames(2)
    out = predict(job.out_path, spec, frames, progress=False)
    assert out[0].shape == (96, 128) and out[0].dtype == np.uint8


def test_method_auto_keeps_the_better_calibration(seg_model: Path, frames_dir: Path,
                                                  tmp_path: Path, capsys) -> None:
    labels = write_fp32_labels(seg_model, frames_dir, tmp_path / "labels")
    rc = main(["calibrate", str(seg_model), "--data", str(frames_dir), "--labels", str(labels),
               "--samples", "8", "--method", "auto", "--no-fallback", "--speed-runs", "2",
               "--no-progress"])
    assert rc == 0
    assert "Calibration methods tried (kept: " in capsys.readouterr().out
    report = json.loads(seg_model.with_name("seg.int8.report.json").read_text())
    trials = report["method_trials"]
    assert set(trials) == {"minmax", "percentile"}
    assert report["method"] == max(trials, key=lambda m: trials[m]["miou"])
    assert report["int8"]["miou"] == trials[report["method"]]["miou"]
    assert report["fallback"] is None


def test_reference_model_is_the_fp32_baseline(frames_dir: Path, tmp_path: Path) -> None:
    """A QAT fine-tune is scored against the model it came from, not against itself."""
    from dataclasses import replace

    from calibrate.data import CalibrationDataError

    ref = make_offset_model(tmp_path / "ref", name="ref")
    tuned = make_offset_model(tmp_path / "tuned", name="tuned", seed=4)  # other weights
    labels = write_fp32_labels(ref, frames_dir, tmp_path / "labels")
    job = CalibrateJob(model=tuned, reference=ref, data=frames_dir, samples=8,
                       eval_images=frames_dir, eval_labels=labels, max_drop=None,
                       speed_runs=2, progress=False)
    report = run_calibration(job)
    assert report.fp32.miou == 100.0  # the reference's own predictions are the labels
    assert report.reference_model == str(ref)
    plain = run_calibration(replace(job, model=ref, reference=None,
                                    out=tmp_path / "plain.int8.onnx"))
    assert plain.reference_model is None
    assert report.agreement_eval < plain.agreement_eval - 5  # tuned differs from ref
    assert report.miou_drop > plain.miou_drop
    assert "FP32 column: the reference" in report.to_markdown()
    meta = ModelSpec.load(job.out_path.with_suffix(".json")).metrics["quantization"]
    assert meta["fp32_reference"] == str(ref)
    other = make_offset_model(tmp_path / "k5", num_classes=5, name="k5")
    with pytest.raises(CalibrationDataError, match=r"--reference .*\(num_classes differ\)"):
        run_calibration(replace(job, reference=other))


def test_sensitivity_subset_skips_frames_without_labelled_pixels(frames_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Sparsely labelled data (most masks all void): the sensitivity search scores only
    frames that have labelled pixels, instead of failing on a void subset."""
    model = make_offset_model(tmp_path / "m", offset=1000.0, name="offset")
    labels = write_fp32_labels(model, frames_dir, tmp_path / "labels")
    for png in sorted(labels.glob("*.png"))[:12]:  # the first 12 of 16: void only
        cv2.imwrite(str(png), np.full(cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape, 255,
                                      np.uint8))
    job = CalibrateJob(model=model, data=frames_dir, samples=8, eval_images=frames_dir,
                       eval_labels=labels, max_drop=10.0, sensitivity_samples=1,
                       speed_runs=2, progress=False)
    report = run_calibration(job)
    assert report.kept_float and report.fallback.met


def test_int8_sidecar_keeps_no_figure_of_the_fp32_weights() -> None:
    """The INT8 sidecar carried the FP32 model's pixel and mean accuracy beside the INT8
    IoUs (the shipped litefpn INT8 sidecar did)."""
    from calibrate.evaluate import SegScores
    from calibrate.report import CalibrationReport

    fp32_metrics = {"val_miou": 0.8, "val_pixel_acc": 0.959, "val_mean_acc": 0.937,
                    "per_class_iou": {"a": 0.8}, "eval_images": 101, "protocol": {"x": 1},
                    "seen_split_fit": {"val_miou": 0.8, "val_pixel_acc": 0.959}}
    report = CalibrationReport("m.onnx", "m.int8.onnx", "minmax", True, "ort-cpu", "d", 8,
                               eval_source="data/val", eval_frames=7,
                               int8=SegScores(81.0, {"a": 81.0}, 96.13))
    m = report.sidecar_metrics(fp32_metrics)
    assert m["val_miou"] == 0.81 and m["val_pixel_acc"] == 0.9613
    assert m["per_class_iou"] == {"a": 0.81} and m["protocol"] == {"x": 1}
    assert "val_mean_acc" not in m and "seen_split_fit" not in m
    # the INT8 figures say where they were measured (the FP32 model's eval_images is gone)
    assert (m["eval_split"], m["eval_images"], m["eval_backend"]) == ("data/val", 7,
                                                                      "onnxruntime")
    # scored on frames the FP32 weights were trained on: a fit, filed as eval --record does
    seen = CalibrationReport("m.onnx", "m.int8.onnx", "minmax", True, "ort-cpu", "d", 8,
                             eval_source="d/val", eval_frames=7, eval_split="camvid:d val (7)",
                             int8=SegScores(81.0, {"a": 81.0}, 96.13))
    m = seen.sidecar_metrics(fp32_metrics, "camvid:d train (5) + camvid:d val (7); 3 epochs")
    assert "val_miou" not in m and m["seen_split_fit"]["val_miou"] == 0.81
    assert m["seen_split_fit"]["eval_split"] == "camvid:d val (7)"
    assert seen.sidecar_metrics(fp32_metrics, "camvid:d train (5); 3 epochs")["val_miou"] == 0.81
    unscored = CalibrationReport("m.onnx", "m.int8.onnx", "minmax", True, "ort-cpu", "d", 8)
    assert not {"val_miou", "val_pixel_acc", "per_class_iou", "eval_split", "eval_images"} & set(
        unscored.sidecar_metrics(fp32_metrics))


def test_eval_frames_are_named_as_segstream_eval_names_them(tmp_path: Path) -> None:
    from calibrate.pipeline import describe_eval

    root = tmp_path / "camvid"
    assert describe_eval(root / "val", root / "valannot", 101) == f"camvid:{root} val (101)"
    assert describe_eval(tmp_path / "f", tmp_path / "l", 4) == f"folder:{tmp_path / 'f'} (4)"
    assert describe_eval(None, None, 0) is None


def test_keep_float_nodes_stay_float_with_their_activation_and_add_to_the_fallback(
        frames_dir: Path, tmp_path: Path) -> None:
    # The offset model's classifier is what INT8 breaks (see the fallback test); conv1 is
    # requested in float, so the fallback must add the classifier on top of it and never
    # measure conv1 as a candidate.
    model = make_offset_model(tmp_path / "m", offset=1000.0, name="offset")
    labels = write_fp32_labels(model, frames_dir, tmp_path / "labels")
    job = CalibrateJob(model=model, data=frames_dir, samples=8, eval_images=frames_dir,
                       eval_labels=labels, max_drop=10.0, sensitivity_samples=8,
                       speed_runs=2, progress=False, keep_float=("conv1",))
    report = run_calibration(job)
    assert report.kept_float_requested == ("conv1", "relu1")  # ReLU goes with its conv
    assert report.kept_float == ("conv1", "relu1", "classifier")
    assert "conv1" not in {c.name for c in report.fallback.candidates}
    final = summarize_qdq(job.out_path)
    assert {"conv1", "classifier"} <= set(final.float_compute_nodes)
    meta = ModelSpec.load(job.out_path.with_suffix(".json")).metrics["quantization"]
    assert meta["nodes_kept_float"] == ["conv1", "relu1", "classifier"]
    md = report.to_markdown()
    assert "- kept in float on request (--keep-float): `conv1`, `relu1`" in md
    assert "Nodes kept in float by the fallback: `classifier`" in md


def test_keep_float_without_fallback(seg_model: Path, frames_dir: Path,
                                     tmp_path: Path) -> None:
    job = CalibrateJob(model=seg_model, data=frames_dir, samples=8, max_drop=None,
                       speed_runs=2, progress=False, keep_float=("class*",),  # a glob
                       out=tmp_path / "q" / "seg.int8.onnx")
    report = run_calibration(job)
    assert report.fallback is None and report.kept_float == ("classifier",)
    # an activation alone brings its convolution: the two stay in float together
    assert resolve_keep_float(preprocess_graph(seg_model, tmp_path / "p.onnx"),
                              ["relu1"]) == ("conv1", "relu1")
    q = summarize_qdq(job.out_path)
    assert q.float_compute_nodes == ("classifier",) and q.quantize_nodes > 0


def test_keep_float_pattern_matching_nothing_exits_2_and_writes_nothing(
        seg_model: Path, frames_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "built" / "seg.int8.onnx"
    rc = main(["calibrate", str(seg_model), "--data", str(frames_dir), "--samples", "4",
               "--keep-float", "/model/encoder/stem/*", "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--keep-float '/model/encoder/stem/*' matches no node" in err
    assert "conv1 (Conv)" in err  # names the graph's nodes to pick from
    assert not out.parent.exists() or not any(out.parent.iterdir())
