"""Shared fixtures: tiny ONNX models, the CamVid location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tinymodel import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


def camvid_root() -> Path:
    return Path(os.environ.get("SEGSTREAM_CAMVID", REPO.parent / "shared" / "camvid"))


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A tiny logits model (5 classes, 64x96 input) with its sidecar."""
    return make_tiny_model(tmp_path / "models")


@pytest.fixture
def tiny_argmax_model(tmp_path: Path) -> Path:
    """The same tiny model with in-graph upsample + argmax (uint8 labels out)."""
    return make_tiny_model(tmp_path / "models", name="tiny_argmax", argmax=True)


@pytest.fixture
def camvid() -> Path:
    root = camvid_root()
    if not (root / "val").is_dir():
        pytest.skip(f"CamVid not found at {root} (set SEGSTREAM_CAMVID)")
    return root
