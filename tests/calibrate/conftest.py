"""Fixtures for the calibration tests: synthetic frames and tiny models on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibrate.data import read_frames
from calibrate.evaluate import predict
from engines.spec import ModelSpec
from tests.calibrate.models import make_offset_model


@pytest.fixture(autouse=True)
def exact_int8_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check calibration (ranges, Q/DQ placement, fallback) against fixed
    agreement thresholds, so INT8 runs with exact 32-bit accumulation: on x86 CPUs without
    VNNI, ONNX Runtime's fast u8s8 kernels saturate int16 sums and the tiny test models'
    agreement drops to ~92 % for reasons that are the CPU's, not the calibration's
    (engines/ort_backend.py, SEGSTREAM_INT8_PRECISE)."""
    monkeypatch.setenv("SEGSTREAM_INT8_PRECISE", "1")


def synthetic_frame(rng: np.random.Generator, h: int = 96, w: int = 128) -> np.ndarray:
    """(h, w, 3) uint8 BGR: a 4x5 grid of random colour blocks plus noise (road-scene-like
    flat regions with edges, so the tiny models output several classes)."""
    grid = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int16)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    """16 synthetic 96x128 PNG frames (not the model's 48x64 input: the resize is exercised)."""
    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(7)
    for i in range(16):
        cv2.imwrite(str(d / f"f{i:03d}.png"), synthetic_frame(rng))
    return d


@pytest.fixture
def seg_model(tmp_path: Path) -> Path:
    """3-conv logits model (4 classes, 48x64 input) with its sidecar."""
    return make_offset_model(tmp_path / "models")


def write_fp32_labels(model: Path, frames_dir: Path, out_dir: Path) -> Path:
    """Label maps = the FP32 model's own predictions, so FP32 mIoU is 100 by construction
    and every INT8 error is a quantization error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = read_frames(frames_dir)
    spec = ModelSpec.load(model.with_suffix(".json"))
    for f, labels in zip(frames, predict(model, spec, frames, progress=False), strict=True):
        cv2.imwrite(str(out_dir / f"{f.name}.png"), labels)
    return out_dir
