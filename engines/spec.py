"""Model sidecar: what a model file needs to be run and understood.

A model is an ONNX (or TensorRT engine) file plus a JSON sidecar with the same stem
(``model.onnx`` -> ``model.json``). The sidecar names the classes with their display
colours, the network input size, the normalisation, what the graph outputs, and where
the weights came from (architecture, training data, measured mIoU).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.atomic import write_text

SIDECAR_VERSION = 1
OUTPUT_KINDS = ("logits", "labels")
MAX_CLASSES = 256  # label maps are uint8


class ModelSpecError(ValueError):
    """A sidecar is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class ClassInfo:
    """One output class: label id, name, and display colour (R, G, B)."""

    id: int
    name: str
    color: tuple[int, int, int]

    def __post_init__(self) -> None:
        color = self.color
        if (not isinstance(color, tuple | list) or len(color) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                           for v in color)):
            shown = list(color) if isinstance(color, tuple | list) else color
            raise ModelSpecError(f"class {self.id} ({self.name!r}): color must be 3 integers "
                                 f"0..255 (R, G, B), got {shown!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything besides the weights that a backend and a client need.

    Attributes:
        name: short model name, e.g. ``"camvid-fastscnn"``.
        architecture: registry name of the network, e.g. ``"fastscnn"``.
        classes: the output classes, ids 0..K-1 in order.
        input_size: network input (H, W) in pixels.
        mean, std: per-channel normalisation in RGB order on the 0..1 scale:
            ``x = (pixel / 255 - mean) / std``.
        output: ``"logits"`` (N, K, h, w) float, or ``"labels"`` (N, H, W) integer ids
            when argmax (and upsampling to ``input_size``) live in the graph.
        ignore_index: label id of the void class in training data, or None.
        training_data: free text, e.g. ``"CamVid train+val 360x480"``.
        metrics: measured figures, e.g. ``{"val_miou": 0.61, "per_class_iou": {...}}``.
    """

    name: str
    architecture: str
    classes: tuple[ClassInfo, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    output: str = "logits"
    ignore_index: int | None = None
    training_data: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ModelSpecError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ModelSpecError(f"input_size must be (H, W) > 0, got {self.input_size!r}")
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))) or not ids:
            raise ModelSpecError(f"class ids must be 0..K-1 in order, got {ids}")
        if self.ignore_index is not None and (
                not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool)):
            raise ModelSpecError(f"ignore_index must be an integer or null, got "
                                 f"{self.ignore_index!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelSpecError("mean and std must have 3 entries, std > 0")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def palette(self) -> Any:
        """(256, 3) uint8 RGB palette; ids past the class table map to black."""
        import numpy as np

        pal = np.zeros((256, 3), np.uint8)
        for c in self.classes:
            pal[c.id] = c.color
        return pal

    def class_table(self) -> list[dict[str, Any]]:
        """The class table as plain JSON-able dicts (used by the wire format)."""
        return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sidecar_version"] = SIDECAR_VERSION
        d["classes"] = self.class_table()
        d["metrics"] = dict(self.metrics)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> ModelSpec:
        # "tensorrt": the build record of a TensorRT engine's sidecar (engines.trt).
        known = {f for f in cls.__dataclass_fields__} | {"sidecar_version", "tensorrt"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelSpecError(f"{source}: unknown keys {unknown}; valid keys: {sorted(known)}")
        try:
            classes = tuple(
                ClassInfo(int(c["id"]), str(c["name"]), tuple(_int(v) for v in c["color"]))
                for c in d["classes"]
            )
            if len(classes) > MAX_CLASSES:  # a spec built in code may (export checks it)
                raise ModelSpecError(f"{len(classes)} classes; at most {MAX_CLASSES} fit a "
                                     "uint8 label map")
            return cls(
                name=str(d["name"]),
                architecture=str(d["architecture"]),
                classes=classes,
                input_size=tuple(int(v) for v in d["input_size"]),
                mean=tuple(float(v) for v in d.get("mean", cls.mean)),
                std=tuple(float(v) for v in d.get("std", cls.std)),
                output=str(d.get("output", "logits")),
                ignore_index=d.get("ignore_index"),
                training_data=str(d.get("training_data", "")),
                metrics=dict(d.get("metrics", {})),
            )
        except KeyError as e:
            raise ModelSpecError(f"{source}: missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ModelSpecError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write the sidecar atomically (a temporary file renamed over ``path``): a
        reader never sees half a file, and a failed write leaves the old one."""
        return write_text(path, self.to_text())

    def to_text(self) -> str:
        """The sidecar's JSON text (what :meth:`save` writes)."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise ModelSpecError(
                f"model sidecar {path} not found: every model file needs a JSON sidecar "
                "with the same stem (see `segstream export`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelSpecError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(data, source=str(path))


def _int(v: Any) -> int:
    """A JSON integer (1.0 allowed, 1.5 and "1" not)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` / ``model.engine`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


CAMVID_CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, n, c)
    for i, (n, c) in enumerate(
        [
            ("sky", (128, 128, 128)),
            ("building", (128, 0, 0)),
            ("pole", (192, 192, 128)),
            ("road", (128, 64, 128)),
            ("sidewalk", (60, 40, 222)),
            ("tree", (128, 128, 0)),
            ("sign", (192, 128, 128)),
            ("fence", (64, 64, 128)),
            ("car", (64, 0, 128)),
            ("pedestrian", (64, 64, 0)),
            ("bicyclist", (0, 128, 192)),
        ]
    )
)
