"""Shared fixtures: tiny ONNX models, the CamVid location."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.tinymodel import make_tiny_model

REPO = Path(__file__).resolve().parents[1]

# A runtime-only install (no torch: Jetson, the Python 3.10 CI leg in scripts/test_py310.sh)
# does not collect the training test modules, recognised by a top-level torch import; the
# tests that need torch only in places skip themselves with pytest.importorskip.
HAS_TORCH = importlib.util.find_spec("torch") is not None
_TOP_LEVEL_TORCH = re.compile(r"^(?:import torch\b|from torch\b)", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if _TOP_LEVEL_TORCH.search(collection_path.read_text()) else None


def pytest_report_header() -> str | None:
    if HAS_TORCH:
        return None
    return "torch not installed: training test modules (top-level `import torch`) not collected"


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
