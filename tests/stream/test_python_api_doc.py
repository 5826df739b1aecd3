"""docs/python-api.md's consumer example, run as written against a real Publisher on
ipc:// (the only change: its ``tcp://localhost:5555`` becomes the test's endpoint)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from engines.spec import CAMVID_CLASSES
from stream.publish import Publisher
from stream.wire import ClassTable, ModelInfo

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
MARKER = "<!-- tested-example -->"
DOC_ENDPOINT = "tcp://localhost:5555"
TABLE = ClassTable.build(CAMVID_CLASSES, ModelInfo("camvid-test", "fastscnn", (360, 480)))


def example_code() -> str:
    text = DOC.read_text()
    assert MARKER in text, f"{DOC.name} lost its {MARKER} marker"
    match = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert match, f"no python block after {MARKER} in {DOC.name}"
    return match.group(1)


def test_example_is_short_and_names_the_documented_endpoint() -> None:
    code = example_code()
    assert DOC_ENDPOINT in code
    assert len([line for line in code.splitlines() if line.strip()]) <= 16


def _publish(endpoint: str, stop: threading.Event, ready: threading.Event) -> None:
    with Publisher(endpoint, class_table=TABLE, encoding="rle") as pub:
        ready.set()
        deadline = time.monotonic() + 10
        while pub.stats().subscriptions < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # cls/, seg/front, evt/front
        pub.publish_event("front", "running", "480x360")
        seq = 0
        while not stop.is_set() and seq < 2000:
            labels = np.zeros((36, 48), np.uint8)
            labels[:18] = 3  # road on the top half, sky below
            now_mono, now_wall = time.monotonic_ns(), time.time_ns()
            for cam in ("front", "rear"):
                pub.publish_labels(cam, seq, labels, t_capture_ns=now_wall,
                                   t_capture_mono_ns=now_mono)
            seq += 1
            time.sleep(0.002)


def test_example_runs_against_a_real_publisher(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"ipc:///tmp/segstream-doc-{uuid.uuid4().hex[:12]}.sock"
    stop, ready = threading.Event(), threading.Event()
    publisher = threading.Thread(target=_publish, args=(endpoint, stop, ready), daemon=True)
    publisher.start()
    assert ready.wait(10)
    try:
        exec(compile(example_code().replace(DOC_ENDPOINT, endpoint), str(DOC), "exec"), {})
    finally:
        stop.set()
        publisher.join(10)
    lines = capsys.readouterr().out.splitlines()
    maps = [line for line in lines if line.startswith("front #")]
    assert len(maps) == 20 and not any(line.startswith("rear") for line in lines)
    assert "[front] camera is running 480x360" in lines
    assert sorted(maps[-1].split(": ")[1].split(";")[0].split(", ")) == ["road 50%", "sky 50%"]
    assert maps[-1].endswith("; lost 0, overflow 0")
