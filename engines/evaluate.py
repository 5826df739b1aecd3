"""Evaluate a model on a labelled split through the same engine path as the stream.

Every image goes BGR uint8 -> :class:`~engines.preprocess.Preprocessor` -> backend
(``engines.backend.create_backend``: ONNX Runtime, torch or TensorRT) ->
:class:`~engines.postprocess.Postprocessor` -> (H, W) uint8 labels at the label size, so
the figures are those of the deployed pipeline, not of a separate torch loop. One
confusion matrix is accumulated over the whole split (void ignored).
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.backend import create_backend
from engines.data.readers import IGNORE, SplitData, open_split
from engines.metrics import ConfusionMatrix, SegMetrics, fmt_miou
from engines.segmenter import Segmenter
from engines.spec import ModelSpec, sidecar_path


class EvalError(ValueError):
    """Model and dataset do not fit together; the message says how."""


@dataclass(frozen=True)
class EvalReport:
    """Result of :func:`evaluate`. ``metrics`` holds the split-level scores."""

    model: str
    backend: str
    data: str
    split: str
    num_images: int
    class_names: tuple[str, ...]
    metrics: SegMetrics
    ms_per_image: float
    tta: str = "none"  # test-time augmentation (engines.backend.TTA_MODES)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "backend": self.backend, "data": self.data,
            "split": self.split, "num_images": self.num_images, "tta": self.tta,
            "ms_per_image": round(self.ms_per_image, 2),
            **self.metrics.to_json(self.class_names),
            "class_names": list(self.class_names),
        }


def evaluate_split(model: str | Path, data: SplitData, *, backend: str | None = None,
                   threads: int | None = None, split: str = "",
                   progress: bool = True, tta: str = "none",
                   **options: object) -> EvalReport:
    """Run ``model`` over every image of ``data`` and score it (``tta``: see
    :class:`~engines.segmenter.Segmenter`)."""
    be = create_backend(model, backend, threads=threads, **options)
    try:
        spec = be.spec
        if spec.num_classes != data.num_classes:
            raise EvalError(f"model {model} has {spec.num_classes} classes but the dataset "
                            f"{data.source} has {data.num_classes}; evaluate on the data the "
                            "model was trained for")
        seg = Segmenter(be, tta=tta)
        pre, post = seg.pre, seg.post
        cm = ConfusionMatrix(spec.num_classes, IGNORE)
        it: Any = zip(data.images, data.labels, strict=True)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(data), desc=f"eval {Path(model).name}", unit="img")
        t_infer = 0.0
        for rgb, lbl in it:
            t0 = time.perf_counter()
            x = pre(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # (1, 3, h, w)
            out = seg.infer(x)[0]  # (K, h', w') logits or (h, w) labels
            pred = post(out, lbl.shape)  # (H, W) uint8
            t_infer += time.perf_counter() - t0
            cm.update(pred, lbl)
        return EvalReport(
            model=str(model), backend=be.name, data=data.source, split=split,
            num_images=len(data), class_names=tuple(spec.class_names), metrics=cm.result(),
            ms_per_image=1000.0 * t_infer / max(1, len(data)), tta=tta,
        )
    finally:
        be.close()


def evaluate(model: str | Path, data_root: str | Path, split: str = "val", *,
             fmt: str = "auto", backend: str | None = None, threads: int | None = None,
             limit: int | None = None, progress: bool = True, tta: str = "none",
             **options: object) -> EvalReport:
    """Load ``split`` of the dataset at ``data_root`` (first ``limit`` images) and score
    ``model`` on it. See :func:`evaluate_split`."""
    data = open_split(data_root, split, fmt, progress=progress, limit=limit)
    return evaluate_split(model, data, backend=backend, threads=threads, split=split,
                          progress=progress, tta=tta, **options)


def save_confusion_png(metrics: SegMetrics, names: tuple[str, ...] | list[str],
                       path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: ground truth) as a PNG heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = metrics.matrix.astype(np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(k):
        for j in range(k):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"mIoU {fmt_miou(metrics.miou)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: EvalReport, out: str | Path) -> tuple[Path, Path | None]:
    """Write ``out`` (JSON) and the confusion matrix PNG beside it (``<stem>_confusion.png``;
    None when matplotlib, an extra of ``train``/``dev``, is not installed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if importlib.util.find_spec("matplotlib") is None:
        return out, None
    png = out.with_name(f"{out.stem}_confusion.png")
    save_confusion_png(report.metrics, report.class_names, png,
                       title=f"{Path(report.model).name} on {report.split}: "
                             f"mIoU {fmt_miou(report.metrics.miou)}")
    return out, png


# One part of a data description, "FORMAT:ROOT SPLIT (N)" or "folder:ROOT (N)"
# (``SplitData.source``; --limit makes it "(first K of N)"); joined splits are parts
# separated by " + ", and the sidecar's training_data is that, then "; " and the recipe.
_DATA_PART = re.compile(r"(\w+):(.+?)(?: (\S+))? \((?:first \d+ of )?(\d+)\)")
# what a sequence filter appends (:func:`engines.data.readers.open_split`): " only A,B (N)",
# or with --limit " only A,B (first K of N)"
_FILTERED = re.compile(r" (only|except) \S+ \((?:first \d+ of )?\d+\)$")
SEEN_SPLIT_NOTE = "scored on a split these weights were trained on: a fit figure, not accuracy"


def _data_parts(text: str) -> dict[tuple[str, tuple[str, ...], str | None, int], str]:
    """Each part of a data description keyed by (format, the dataset folder's last two path
    components, split, frames); parts that do not parse are left out."""
    found = {}
    for part in text.split(" + "):
        m = _DATA_PART.fullmatch(part.strip())
        if m is not None:
            fmt, root, split, n = m.groups()
            found[(fmt, Path(root).parts[-2:], split, int(n))] = m.group(0)
    return found


def seen_in_training(data: str, training_data: str) -> str | None:
    """The part of a sidecar's ``training_data`` that holds the frames ``data`` (an
    :class:`EvalReport`'s) describes, e.g. ``"camvid:../shared/camvid val (101)"``; None
    when they share no split, or when either keeps or drops recordings (``:only=`` /
    ``:except=``: which frames overlap is not told by the descriptions).

    Parts match on format, the dataset folder's last two path components, split and frame
    count, so the same data reached by another path (``../shared/camvid`` vs
    ``/work/shared/camvid``) matches and another dataset's ``val`` does not. Conservative:
    what cannot be told (a filter, a --limit over joined splits) is not claimed.
    """
    train_part = training_data.split(";", maxsplit=1)[0].strip()
    if _FILTERED.search(data.strip()) or _FILTERED.search(train_part):
        return None
    seen = _data_parts(train_part)
    for key in _data_parts(data):
        if key in seen:
            return seen[key]
    return None


def file_figures(metrics: dict[str, Any], figures: dict[str, Any], data: str | None,
                 training_data: str) -> dict[str, Any]:
    """``metrics`` with ``figures`` (scores of the frames ``data`` describes) filed where a
    reader takes them for what they are: at the top level, or, when the weights were trained
    on those frames (:func:`seen_in_training`), under ``seen_split_fit`` with a note, the
    top-level keys of the same names (fits too) removed."""
    if data and seen_in_training(data, training_data):
        kept = {k: v for k, v in metrics.items() if k not in figures}
        return {**kept, "seen_split_fit": {**figures, "note": SEEN_SPLIT_NOTE}}
    return {**metrics, **figures}


# The figures of one scoring on val at the top of a sidecar's ``metrics`` (what
# record_in_sidecar writes for split "val", plus the training loop's "epoch"): what INT8
# calibration and scripts/record_protocol.py move aside when they belong to another model
# or to a split the model saw.
VAL_FIGURE_KEYS = ("val_miou", "val_pixel_acc", "val_mean_acc", "per_class_iou", "eval_split",
                   "eval_images", "eval_backend", "epoch")


def record_in_sidecar(report: EvalReport, model: str | Path) -> Path:
    """Merge the report's figures into the model's JSON sidecar under ``metrics``.

    Keys written: ``<split>_miou``, ``<split>_pixel_acc``, ``<split>_mean_acc``,
    ``per_class_iou`` (this split), ``eval_split``, ``eval_images``, ``eval_backend``.
    Other metric keys already in the sidecar are kept. When the sidecar's
    ``training_data`` holds the scored frames (:func:`seen_in_training`), the same keys go
    under ``metrics.seen_split_fit`` with a note instead: a fit, never a held-out figure.
    """
    path = sidecar_path(model)
    spec = ModelSpec.load(path)
    split = report.split or "eval"
    m = report.metrics
    figures = {
        f"{split}_miou": round(m.miou, 4),
        f"{split}_pixel_acc": round(m.pixel_acc, 4),
        f"{split}_mean_acc": round(m.mean_acc, 4),
        "per_class_iou": m.per_class(report.class_names),
        "eval_split": report.data,
        "eval_images": report.num_images,
        "eval_backend": report.backend,
    }
    metrics = file_figures(dict(spec.metrics), figures, report.data, spec.training_data)
    return ModelSpec.from_json({**spec.to_json(), "metrics": metrics}, source=str(path)) \
        .save(path)
