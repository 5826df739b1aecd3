"""The shipped INT8 sidecars say what their calibration reports measured: every figure in
``metrics.seen_split_fit`` of an INT8 model is the INT8 model's (one sidecar carried its
FP32 model's pixel and mean accuracy beside INT8 IoUs), and the report in docs/reports is
the one of the shipped file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INT8 = sorted((ROOT / "engines" / "models").glob("*.int8.json"))


def _report_row(md: str, label: str) -> tuple[float, float]:
    m = re.search(rf"^\| {re.escape(label)} \| ([\d.]+) \| ([\d.]+) \|", md, flags=re.M)
    assert m, f"no '{label}' row"
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("sidecar", INT8, ids=[p.stem for p in INT8])
def test_int8_sidecar_figures_are_the_int8_reports(sidecar: Path) -> None:
    report = ROOT / "docs" / "reports" / f"{sidecar.stem}.report.md"
    if not report.is_file():
        pytest.skip(f"no calibration report {report.name} shipped for {sidecar.name}")
    md = report.read_text()
    metrics = json.loads(sidecar.read_text())["metrics"]
    scored = metrics.get("seen_split_fit") or metrics
    fp32_miou, int8_miou = _report_row(md, "mIoU %")
    _, int8_acc = _report_row(md, "pixel accuracy %")
    assert 100 * scored["val_miou"] == pytest.approx(int8_miou, abs=0.01)
    assert 100 * scored["val_pixel_acc"] == pytest.approx(int8_acc, abs=0.01)
    assert "val_mean_acc" not in scored  # calibrate does not measure it for INT8
    q = metrics["quantization"]
    assert 100 * q["fp32_val_miou"] == pytest.approx(fp32_miou, abs=0.01)


SIDECARS = sorted((ROOT / "engines" / "models").glob("*.json"))


@pytest.mark.parametrize("sidecar", SIDECARS, ids=[p.stem for p in SIDECARS])
def test_train_only_figures_are_those_of_the_committed_report(sidecar: Path) -> None:
    """A sidecar's held-out figures (``metrics.protocol.train_only``) are copied by
    scripts/record_protocol.py from a ``segstream eval`` report; where that report is
    committed, they must still be its figures."""
    protocol = json.loads(sidecar.read_text()).get("metrics", {}).get("protocol") or {}
    train_only = protocol.get("train_only") or {}
    recorded = str(train_only.get("report", ""))
    if not recorded or recorded.startswith("runs/"):  # runs/ is not in git
        pytest.skip(f"{sidecar.name}: its train-only report is not committed")
    report = ROOT / recorded
    assert report.is_file(), f"{sidecar.name} names {recorded}, which is missing"
    figures = json.loads(report.read_text())
    assert train_only["val_miou"] == figures["miou"] == protocol["train_only_val_miou"]
    assert train_only["per_class_iou"] == figures["per_class_iou"]
    assert train_only["pixel_acc"] == figures["pixel_acc"]


def test_record_protocol_keeps_what_eval_record_filed_as_a_fit(tmp_path: Path) -> None:
    """scripts/record_protocol.py replaced a seen_split_fit that `segstream eval --record`
    had written with stale top-level figures (a train+val run that validated on val)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_protocol",
                                                  ROOT / "scripts" / "record_protocol.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    side = tmp_path / "m.json"
    side.write_text(json.dumps({
        "training_data": "camvid:d train (367) + camvid:d val (101); 3 epochs",
        "metrics": {"val_miou": 0.9, "epoch": 3,  # the training loop's val score, a fit
                    "seen_split_fit": {"val_miou": 0.82, "eval_images": 101}}}))
    report = {"miou": 0.7, "per_class_iou": {"a": 0.7}, "pixel_acc": 0.9, "data": "d val",
              "backend": "onnxruntime"}
    final = {"epochs": 3, "optimizer_steps": 10, "final_loss": 0.3, "recipe": {},
             "split": "train+val"}
    mod.record(side, report, final)
    metrics = json.loads(side.read_text())["metrics"]
    assert "val_miou" not in metrics and metrics["protocol"]["train_only_val_miou"] == 0.7
    fit = metrics["seen_split_fit"]
    assert fit["val_miou"] == 0.82 and fit["eval_images"] == 101 and fit["epoch"] == 3
