"""Camera frames end to end: ``segstream run --publish-frames`` on a test:// source with
the tiny ONNX model and a subscriber pairing frames with label maps, its options and
launch-file keys, ``segstream view`` overlays read back from the video it saved, and the
frames example of docs/python-api.md run as a script.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from engines.spec import CAMVID_CLASSES
from stream.cli import main
from stream.commands.view import LEGEND_W, ROW_H
from stream.config import ConfigError
from stream.frame_pub import FrameOptions
from stream.launch_file import config_from_dict
from stream.publish import Publisher
from stream.subscribe import FrameMessage, FramePairer, LabelMessage, Subscriber
from tests.stream._frames import REPO, ROAD, SKY, TABLE, ipc, send_frames
from tests.stream._media import require_gst


def test_python_api_doc_frames_example_runs_as_written(tmp_path):
    """docs/python-api.md's frames example, run as a script against a real publisher."""
    text = (REPO / "docs" / "python-api.md").read_text()
    marker = "<!-- tested-example: frames -->"
    code = re.search(r"```python\n(.*?)```", text[text.index(marker):], re.DOTALL).group(1)
    endpoint = ipc()
    script = tmp_path / "example.py"
    script.write_text(code.replace("tcp://localhost:5555", endpoint))
    stop = threading.Event()
    with Publisher(endpoint, class_table=TABLE, frames=FrameOptions(rate=10)) as pub:
        def loop() -> None:
            seq, t0 = 0, time.monotonic_ns()
            while not stop.is_set():
                send_frames(pub, 1, start=seq, t0=t0, pause=0.01)
                seq += 1

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                 timeout=60, cwd=REPO, check=False)
        finally:
            stop.set()
            thread.join(5)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5 and all(re.fullmatch(r"front #\d+: overlay \(48, 64, 3\)", line)
                                   for line in lines), lines


def test_segstream_run_publishes_frames_that_pair_with_its_label_maps(tiny_model, capsys):
    require_gst()
    endpoint = ipc()
    argv = ["run", "--source", "front=test://smpte?width=160&height=120&fps=30", "--model",
            str(tiny_model), "--threads", "1", "--publish", endpoint, "--publish-frames",
            "--frame-scale", "0.5", "--frame-quality", "90", "--duration", "5",
            "--stats-interval", "0"]
    box: dict[str, int] = {}
    thread = threading.Thread(target=lambda: box.setdefault("code", main(argv)), daemon=True)
    thread.start()
    pairer, pairs = FramePairer(), []
    try:
        with Subscriber(endpoint, frames=True, timeout=1) as sub:
            deadline = time.monotonic() + 20
            while len(pairs) < 3 and time.monotonic() < deadline and thread.is_alive():
                msg = sub.receive(0.5)
                if isinstance(msg, LabelMessage | FrameMessage) and (pair := pairer.add(msg)):
                    pairs.append(pair)
    finally:
        thread.join(30)
    assert box.get("code") == 0, capsys.readouterr().err
    assert len(pairs) == 3
    for labels, frame in pairs:
        assert labels.seq == frame.seq and labels.shape == frame.source_shape == (120, 160)
        assert frame.shape == (60, 80)
        # SMPTE colour bars: the top-left bar is light grey, the next one yellow (BGR)
        assert frame.image[10, 3].min() > 150 and frame.image[10, 16][0] < 80
    gaps = np.diff([f.t_capture_mono_ns for _, f in pairs]) / 1e9
    assert gaps.min() >= 0.075  # --publish-frames without a rate: 10 a second at most


@pytest.mark.parametrize(("flags", "needle"), [
    (["--publish-frames", "-1"], "publish_frames: must be frames per second"),
    (["--publish-frames", "--frame-scale", "0"], "frame_scale: must be in (0, 1]"),
    (["--frame-quality", "101"], "frame_quality: must be a JPEG quality"),
])
def test_bad_frame_options_exit_2_naming_the_setting(flags, needle, tiny_model, capsys):
    assert main(["run", "--source", "test://", "--model", str(tiny_model), "--publish",
                 ipc(), *flags]) == 2
    assert needle in capsys.readouterr().err


def test_launch_file_keys():
    cfg = config_from_dict({"sources": [{"uri": "test://"}], "publish": {
        "publish_frames": 5, "frame_scale": 0.25, "frame_quality": 60}})
    assert FrameOptions.from_config(cfg.publish) == FrameOptions(5.0, 0.25, 60)
    off = config_from_dict({"sources": [{"uri": "test://"}]}).publish
    assert FrameOptions.from_config(off) is None
    with pytest.raises(ConfigError, match=r"publish\.frame_scale: must be in \(0, 1\]"):
        config_from_dict({"sources": [{"uri": "test://"}], "publish": {"frame_scale": 2}})


def _publish_frames_until(pub: Publisher, stop: threading.Event) -> None:
    seq, t0 = 0, time.monotonic_ns()
    while not stop.is_set():
        send_frames(pub, 1, start=seq, t0=t0, pause=0.01)
        if seq == 2:
            pub.publish_event("front", "running")
        seq += 1


def test_view_save_draws_overlays_with_a_legend(tmp_path, capsys):
    """view --save on a stream with frames: the image region is the camera frame blended
    with the class colours (--alpha), the legend panel shows each class's colour."""
    video = tmp_path / "overlay.mp4"
    stop = threading.Event()
    with Publisher(ipc(), class_table=TABLE, frames=FrameOptions(10, 1.0, 95)) as pub:
        thread = threading.Thread(target=_publish_frames_until, args=(pub, stop), daemon=True)
        thread.start()
        try:
            code = main(["view", pub.bound_endpoints[0], "--no-window", "--save", str(video),
                         "--count", "12", "--timeout", "10", "--alpha", "0.4"])
        finally:
            stop.set()
            thread.join(5)
        assert pub.stats().frames_sent >= 3
    err = capsys.readouterr().err
    assert code == 0, err
    assert re.search(r"\((\d+) over camera frames\)", err).group(1) != "0"
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    assert len(frames) >= 12
    last = frames[-1].astype(int)  # BGR; mp4v is lossy: compare with a tolerance
    legend_h = ROW_H * len(CAMVID_CLASSES) + 8
    assert last.shape == (legend_h, 64 + LEGEND_W, 3)

    def blend(cam_bgr: tuple[int, ...], cls: int) -> np.ndarray:
        rgb = CAMVID_CLASSES[cls].color
        return 0.6 * np.array(cam_bgr) + 0.4 * np.array(rgb[::-1])

    for (y, x), cam, cls in [((8, 8), (255, 0, 0), ROAD), ((8, 56), (0, 255, 0), ROAD),
                             ((40, 8), (255, 0, 0), SKY), ((40, 56), (0, 255, 0), SKY)]:
        assert np.abs(last[y, x] - blend(cam, cls)).max() < 30, (y, x, last[y, x])
    for i, c in enumerate(CAMVID_CLASSES):  # the legend's colour boxes
        box = last[4 + i * ROW_H + 3: 4 + i * ROW_H + 9, 64 + 9: 64 + 15].reshape(-1, 3)
        assert np.abs(np.median(box, axis=0) - np.array(c.color[::-1])).max() < 40, c.name


def test_view_without_frames_asks_for_none_and_draws_flat_colours(tmp_path):
    out = tmp_path / "pngs"
    stop = threading.Event()
    with Publisher(ipc(), class_table=TABLE, frames=FrameOptions(rate=30)) as pub:
        thread = threading.Thread(target=_publish_frames_until, args=(pub, stop), daemon=True)
        thread.start()
        try:
            assert main(["view", pub.bound_endpoints[0], "--no-window", "--no-frames",
                         "--save-dir", str(out), "--count", "4", "--timeout", "10"]) == 0
        finally:
            stop.set()
            thread.join(5)
        assert pub.stats().frames_sent == 0
    img = cv2.imread(str(sorted((out / "front").glob("*.png"))[-1]))
    assert img[8, 8].tolist() == list(CAMVID_CLASSES[ROAD].color[::-1])
    assert img[40, 56].tolist() == list(CAMVID_CLASSES[SKY].color[::-1])


def test_view_rejects_a_bad_alpha(capsys):
    assert main(["view", ipc(), "--no-window", "--save-dir", "/tmp/x", "--alpha", "1.5"]) == 2
    assert "--alpha in 0..1" in capsys.readouterr().err
