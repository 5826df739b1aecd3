"""Models shipped with segstream (``engines/models/``) and how to find them."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_FILE = "camvid_fastscnn.onnx"


class NoModelError(FileNotFoundError):
    """No model was given and none is shipped."""


def shipped_models() -> list[Path]:
    """ONNX models in ``engines/models`` that have a sidecar."""
    return sorted(p for p in MODELS_DIR.glob("*.onnx") if p.with_suffix(".json").is_file())


def default_model_path() -> Path:
    """The model ``segstream run`` uses when ``--model`` is omitted.

    ``engines/models/camvid_fastscnn.onnx`` when present, else the only shipped FP32 model.
    """
    preferred = MODELS_DIR / DEFAULT_MODEL_FILE
    if preferred.is_file():
        return preferred
    fp32 = [p for p in shipped_models() if ".int8" not in p.name and ".fp16" not in p.name]
    if len(fp32) == 1:
        return fp32[0]
    raise NoModelError(
        f"no default model in {MODELS_DIR} (found {[p.name for p in fp32]}); pass --model "
        "PATH.onnx, or train one: segstream train --model fastscnn --data ../shared/camvid"
    )


def resolve_model(model: str | Path | None) -> Path:
    """``None`` -> the default shipped model; a bare shipped name -> its path; else as given."""
    if model is None:
        return default_model_path()
    p = Path(model)
    if not p.exists() and (MODELS_DIR / p.name).is_file() and p.parent == Path("."):
        return MODELS_DIR / p.name
    return p
