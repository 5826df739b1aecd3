"""``sample_to_bgr`` with gst-python's overrides installed (python3-gst-1.0, as on Jetson).

There ``Gst.Buffer.map`` returns a memoryview of the mapped memory that ``unmap`` releases,
so a frame must be copied before unmapping (reading it afterwards raises ValueError). The
venv's PyGObject finds the system overrides through ``gi.overrides``' extended path once the
Debian dist-packages folder is on ``sys.path`` (appended, so the venv's packages win).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.stream._media import require_gst

REPO = Path(__file__).resolve().parents[2]
DIST = Path("/usr/lib/python3/dist-packages")
OVERRIDE = DIST / "gi" / "overrides" / f"_gi_gst{sysconfig.get_config_var('EXT_SUFFIX')}"

SCRIPT = f"""
import sys
sys.path.append({str(DIST)!r})
import numpy as np
from stream.gst import load_gst, sample_to_bgr
Gst = load_gst().Gst
assert "gi.overrides.Gst" in sys.modules, "gst-python overrides not loaded"

def sample(raw, width, h):
    return Gst.Sample.new(Gst.Buffer.new_wrapped(raw.tobytes()),
                          Gst.Caps.from_string(f"video/x-raw,format=BGR,width={{width}},"
                                               f"height={{h}}"), None, None)

# the overrides really hand out a view that unmap releases
buf = Gst.Buffer.new_wrapped(b"0123")
ok, info = buf.map(Gst.MapFlags.READ)
view = info.data
buf.unmap(info)
try:
    bytes(view)
    print("MAP-DATA-SURVIVES-UNMAP")
except ValueError:
    print("MAP-DATA-RELEASED-BY-UNMAP")

for width in (320, 322):
    h, stride = 7, (width * 3 + 3) // 4 * 4
    raw = np.random.default_rng(width).integers(0, 256, h * stride, np.uint8)
    image = sample_to_bgr(sample(raw, width, h))
    expected = np.stack([raw[r * stride: r * stride + width * 3] for r in range(h)])
    assert image.shape == (h, width, 3) and image.flags.c_contiguous
    assert np.array_equal(image.reshape(h, width * 3), expected), width
    try:
        sample_to_bgr(sample(raw[: (h - 1) * stride + width * 3 - 1], width, h))
        raise AssertionError("short buffer accepted")
    except ValueError as e:
        assert "too small" in str(e), e
print("FRAMES-OK")
"""


def test_sample_to_bgr_with_gst_python_overrides() -> None:
    require_gst()
    if not OVERRIDE.is_file():
        pytest.skip(f"gst-python overrides for this Python not installed ({OVERRIDE} missing): "
                    "apt install python3-gst-1.0 (scripts/setup.sh does)")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, text=True,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MAP-DATA-RELEASED-BY-UNMAP" in proc.stdout  # the situation being tested
    assert "FRAMES-OK" in proc.stdout
