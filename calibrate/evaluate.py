"""Measure a model: label maps, mIoU from one confusion matrix, FP32/INT8 agreement, speed.

Predictions go through :class:`engines.segmenter.Segmenter` (the stream's pre-process ->
ONNX Runtime -> upsample + argmax path), so the figures are those of the deployed model at
the label maps' resolution.

mIoU comes from :class:`engines.metrics.ConfusionMatrix` (the training module's metric): one
(K, K) matrix summed over the whole split, IoU per class = TP / (TP + FP + FN), mean over
classes that occur in the labels or the predictions. Label ids >= K (CamVid void = 11) and
``spec.ignore_index`` are ignored.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibrate.data import CalibrationDataError, LabelledFrame, NamedFrame
from engines.backend import create_backend
from engines.metrics import ConfusionMatrix
from engines.preprocess import Preprocessor
from engines.segmenter import Segmenter
from engines.spec import ModelSpec


@dataclass(frozen=True)
class SegScores:
    """mIoU (%) and per-class IoU (%, None where the class is absent) over one split."""

    miou: float
    per_class: dict[str, float | None]
    pixel_accuracy: float  # %, over non-void pixels


def has_labels(label: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(H, W) bool: the pixels that are scored (void / ignore ids, and ids >= K, are not)."""
    valid = label < spec.num_classes
    if spec.ignore_index is not None:
        valid &= label != spec.ignore_index
    return valid


def score(preds: Sequence[np.ndarray], frames: Sequence[LabelledFrame],
          spec: ModelSpec) -> SegScores:
    """Scores of (H, W) uint8 predictions against their frames' label maps."""
    k = spec.num_classes
    cm = ConfusionMatrix(k, ignore_index=None)
    for p, f in zip(preds, frames, strict=True):
        if p.shape != f.label.shape:
            raise ValueError(f"{f.name}: prediction {p.shape} and label {f.label.shape} differ")
        valid = has_labels(f.label, spec)
        cm.update(p[valid], f.label[valid])
    m = cm.result()
    if np.isnan(m.pixel_acc):  # no labelled pixel at all: a score of 0 would read as a
        # model, and a drop of 0 as "INT8 within budget"
        names = ", ".join(f.name for f in frames[:3]) + (", ..." if len(frames) > 3 else "")
        raise CalibrationDataError(
            f"the evaluation label maps ({names}) hold no labelled pixel: every id is void "
            f"or >= the model's {k} classes; give labels of this model's class table")
    per_class = {name: (None if v is None else round(100.0 * v, 3))
                 for name, v in m.per_class(spec.class_names).items()}
    return SegScores(round(100.0 * m.miou, 3), per_class, round(100.0 * m.pixel_acc, 3))


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """% of pixels where two sets of (H, W) label maps agree."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        same += int(np.count_nonzero(x == y))
        total += x.size
    return 100.0 * same / max(1, total)


def predict(model: Path, spec: ModelSpec, frames: Sequence[NamedFrame | LabelledFrame], *,
            threads: int | None = None, desc: str = "predict",
            progress: bool = True) -> list[np.ndarray]:
    """(H, W) uint8 label maps of ``model`` for each frame, at the frame's resolution."""
    seg = Segmenter(create_backend(model, "onnxruntime", spec=spec, threads=threads))
    try:
        return [seg(f.image) for f in tqdm(frames, desc=desc, unit="frame", leave=False,
                                           disable=not progress)]
    finally:
        seg.close()


@dataclass(frozen=True)
class Speed:
    """Network time on this CPU (ONNX Runtime, pre/post-processing excluded)."""

    median_ms: float
    p90_ms: float
    runs: int
    threads: int


def compare_speed(models: Sequence[Path], spec: ModelSpec, frame: np.ndarray, *,
                  threads: int | None = None, warmup: int = 5,
                  runs: int = 30, progress: bool = True) -> list[Speed]:
    """Median inference time of each model on the same input, same thread count.

    Runs are interleaved (A, B, A, B, ...) so background load on a shared CPU hits every
    model alike.
    """
    batch = Preprocessor(spec)(frame)  # (1, 3, H, W) float32
    backends = [create_backend(m, "onnxruntime", spec=spec, threads=threads) for m in models]
    times: list[list[float]] = [[] for _ in models]
    try:
        for _ in range(warmup):
            for be in backends:
                be.infer(batch)
        for _ in tqdm(range(runs), desc="speed", unit="run", leave=False,
                      disable=not progress):
            for i, be in enumerate(backends):
                t0 = time.perf_counter()
                be.infer(batch)
                times[i].append(1000.0 * (time.perf_counter() - t0))
        used = [getattr(be, "threads", threads or 0) for be in backends]
    finally:
        for be in backends:
            be.close()
    return [Speed(round(statistics.median(t), 3),
                  round(float(np.percentile(t, 90)), 3), runs, n)
            for t, n in zip(times, used, strict=True)]
