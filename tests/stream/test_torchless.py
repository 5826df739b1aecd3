"""A runtime install has no torch (Jetson, the ``gpu`` extra): every non-training command
must import, parse and run without it; train/export/models exit 2 naming the install.

Each case runs in a fresh interpreter whose import system reports torch as absent (as on a
machine without it), so the check fails as soon as any module on the path imports torch.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.stream._media import require_gst

REPO = Path(__file__).resolve().parents[2]

# Make ``import torch`` (and torchvision) fail like on a machine without them.
BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
for m in [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")]:
    del sys.modules[m]
"""

RUN_CLI = BLOCK_TORCH + """
from stream.cli import main
try:
    code = main(sys.argv[1:])
finally:  # --help exits through SystemExit
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
    print("TORCH-LEAK" if leaked else "TORCH-FREE", file=sys.stderr)
sys.exit(code)
"""


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_blocker_really_hides_torch() -> None:
    """The harness itself: with the blocker, importing the training module fails."""
    code = BLOCK_TORCH + "import engines.train\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode != 0 and "torch" in proc.stderr


@pytest.mark.parametrize("command", ["run", "launch", "subscribe", "view", "keygen", "bench",
                                     "probe", "calibrate", "eval", "predict", "build",
                                     "train", "export", "models"])
def test_every_command_help_without_torch(command: str) -> None:
    proc = _cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-FREE" in proc.stderr
    assert f"usage: segstream {command}" in proc.stdout


def test_top_level_help_lists_train_without_torch() -> None:
    proc = _cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "needs torch: not installed" in proc.stdout


@pytest.mark.parametrize("argv", [
    ("train", "--model", "fastscnn", "--data", "nowhere", "--qat"),
    ("export", "runs/x/best.pt", "--out", "m.onnx"),
    ("models",),
])
def test_torch_commands_say_how_to_install(argv: tuple[str, ...]) -> None:
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "needs torch, which is not installed" in proc.stderr
    assert "segstream[train]" in proc.stderr


def test_unknown_option_is_still_an_error() -> None:
    proc = _cli("probe", "test://", "--no-such-option")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_build_dry_run_without_torch(tiny_model: Path) -> None:
    proc = _cli("build", str(tiny_model), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-FREE" in proc.stderr


def test_run_streams_without_torch(tiny_model: Path) -> None:
    require_gst()
    endpoint = f"ipc:///tmp/segstream-notorch-{uuid.uuid4().hex[:8]}"
    proc = _cli("run", "--source", "test://smpte?width=160&height=120&fps=30", "--model",
                str(tiny_model), "--publish", endpoint, "--max-frames", "5",
                "--stats-interval", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH-FREE" in proc.stderr


def test_fp16_twin_of_an_onnx_without_torch(tiny_model: Path, tmp_path: Path) -> None:
    """A Jetson runtime install makes the FP16 ONNX of a shipped model for TensorRT."""
    out = tmp_path / "tiny.fp16.onnx"
    proc = _cli("export", str(tiny_model), "--fp16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-FREE" in proc.stderr and out.is_file()
