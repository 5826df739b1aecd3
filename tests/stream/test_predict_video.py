"""``segstream predict`` on videos and source URIs: real encoded files, the real capture
layer (GStreamer, and the OpenCV fallback) and the tiny ONNX model."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.predict import PredictError
from engines.spec import ModelSpec, sidecar_path
from stream.cli import main
from stream.predict_video import (
    FileInfo,
    Legend,
    Renderer,
    pick_capture,
    predict_video,
    probe_file,
    resolve_source,
)
from tests.stream._media import require_gst, write_mjpg_avi

W, H, N = 160, 120, 12


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_mjpg_avi(tmp_path / "drive.avi", N, width=W, height=H, fps=25)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("capture", ["gstreamer", "opencv"])
def test_video_writes_labels_csv_and_annotated_video(video: Path, tiny_model: Path,
                                                     tmp_path: Path, capture: str) -> None:
    if capture == "gstreamer":
        require_gst()
    out = tmp_path / "out"
    res = predict_video(tiny_model, str(video), out, visualize="side-by-side", threads=1,
                        capture_backend=capture, progress=False)
    assert res.frames == N and res.dropped == 0 and not res.interrupted
    pngs = sorted(res.labels_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(N)]
    labels = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (H, W) and labels.dtype == np.uint8 and labels.max() < 5

    names = ModelSpec.load(sidecar_path(tiny_model)).class_names
    rows = _rows(res.csv)
    assert rows[0] == ["frame", "time_s", *names] and len(rows) == N + 1
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(N)]
    assert float(rows[2][1]) == pytest.approx(1 / 25, abs=1e-3)  # seq / the file's fps
    for r in rows[1:]:
        assert sum(float(v) for v in r[2:]) == pytest.approx(1.0, abs=1e-3)
    share0 = np.bincount(labels.ravel(), minlength=5) / labels.size
    assert [float(v) for v in rows[1][2:]] == pytest.approx(share0, abs=1e-5)

    cap = cv2.VideoCapture(str(res.video))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) \
        == (2 * W, H)
    cap.release()
    assert res.video == out / "annotated.mp4" and _leftovers(out) == []


def test_cli_video_replaces_an_earlier_run_and_stops_at_frames(
        video: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "999999.png").write_bytes(b"old")
    assert main(["predict", str(video), "--model", str(tiny_model), "--out", str(out),
                 "--threads", "1", "--frames", "5", "--visualize", "mask"]) == 0
    assert "wrote 5 frames" in capsys.readouterr().out
    assert len(list((out / "labels").iterdir())) == 5
    assert len(_rows(out / "class_share.csv")) == 6
    assert (out / "annotated.mp4").stat().st_size > 0 and _leftovers(out) == []


def test_cli_visualize_none_writes_no_video(video: Path, tiny_model: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "annotated.mp4").write_bytes(b"an earlier run's video")
    assert main(["predict", str(video), "--model", str(tiny_model), "--out", str(out),
                 "--threads", "1", "--visualize", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["class_share.csv", "labels"]


def test_missing_file_exits_2_naming_it(tiny_model: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "drive.mp4"), "--model", str(tiny_model),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "drive.mp4 not found" in err and "video file" in err
    assert not out.exists()


@pytest.mark.parametrize("capture", ["gstreamer", "opencv"])
def test_undecodable_file_exits_2_and_leaves_nothing(tiny_model: Path, tmp_path: Path,
                                                      capture: str) -> None:
    if capture == "gstreamer":
        require_gst()
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video\n" * 200)
    out = tmp_path / "out"
    with pytest.raises(PredictError, match=r"cannot decode video .*broken\.mp4"):
        predict_video(tiny_model, str(bad), out, threads=1, capture_backend=capture,
                      progress=False)
    assert not out.exists()
    out.mkdir()  # an existing folder stays, empty
    with pytest.raises(PredictError, match=r"broken\.mp4"):
        predict_video(tiny_model, str(bad), out, threads=1, capture_backend=capture,
                      progress=False)
    assert list(out.iterdir()) == []


def test_an_out_that_is_a_file_exits_2(video: Path, tiny_model: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("a file")
    assert main(["predict", str(video), "--model", str(tiny_model), "--out",
                 str(tmp_path / "taken")]) == 2
    assert "cannot write into --out" in capsys.readouterr().err


def test_cli_undecodable_file_message(tiny_model: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 4096)
    assert main(["predict", str(bad), "--model", str(tiny_model), "--out",
                 str(tmp_path / "o")]) == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_test_source_uri(tiny_model: Path, tmp_path: Path) -> None:
    require_gst()
    res = predict_video(tiny_model, "test://ball?width=96&height=64&fps=30&frames=40", tmp_path,
                        threads=1, max_frames=4, progress=False)
    assert res.frames == 4 and len(list(res.labels_dir.iterdir())) == 4
    assert len(_rows(res.csv)) == 5


def test_resolve_source_reads_files_losslessly(video: Path) -> None:
    spec = resolve_source(str(video))
    assert spec.kind == "file" and spec.lossless and spec.target == str(video.resolve())
    assert not resolve_source(f"{video}?realtime=1").lossless
    assert resolve_source(f"file://{video}").lossless
    with pytest.raises(PredictError, match="loop=1 never ends"):
        resolve_source(f"{video}?loop=1")
    with pytest.raises(PredictError, match="unknown scheme"):
        resolve_source("ftp://host/x.mp4")
    odd = video.with_name("odd?name.avi")
    video.rename(odd)
    assert resolve_source(str(odd)).lossless and resolve_source(str(odd)).target == str(odd)


def test_files_opencv_can_open_are_read_by_opencv(video: Path, tmp_path: Path) -> None:
    info = probe_file(str(video))
    assert info == FileInfo(True, 25.0, N)
    spec = resolve_source(str(video))
    assert pick_capture(spec, info) == "opencv"
    assert pick_capture(spec, info, "gstreamer") == "gstreamer"
    (tmp_path / "odd.mp4").write_bytes(b"\0" * 64)
    assert pick_capture(resolve_source(str(tmp_path / "odd.mp4")),
                        probe_file(str(tmp_path / "odd.mp4"))) == "auto"
    assert pick_capture(resolve_source("test://"), FileInfo(False)) == "auto"


def test_cli_rejects_options_for_the_other_input_kind(video: Path, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    assert main(["predict", str(video), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_model), "--overlay-dir", str(tmp_path / "ov")]) == 2
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--model",
                 str(tiny_model), "--visualize", "mask"]) == 2


def test_renderer_modes_and_legend() -> None:
    names = ["road", "car", "sky"]
    palette = np.array([[128, 64, 128], [0, 0, 142], [70, 130, 180]], np.uint8)  # RGB
    frame = np.full((120, 160, 3), 200, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[60:] = 1
    for mode, width in (("overlay", 160), ("mask", 160), ("side-by-side", 320)):
        r = Renderer(mode, names, palette, (120, 160))
        img = r(frame, labels)
        assert img.shape == (120, width, 3) and r.size == (width, 120)
        legend = r.legend.patch
        x0 = 160 if mode == "side-by-side" else 0
        assert np.array_equal(img[:legend.shape[0], x0:x0 + legend.shape[1]], legend)
    mask = Renderer("mask", names, palette, (120, 160))(frame, labels)
    assert tuple(mask[-1, -1]) == (142, 0, 0)  # car, BGR, outside the legend
    assert Legend.build(names * 10, palette[[0, 1, 2] * 10], 20) is None  # does not fit


def test_a_live_source_lost_after_frames_keeps_them_and_exits_3(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    require_gst()
    monkeypatch.setattr("stream.predict_video.LIVE_RETRIES", 0)  # give up at the first error
    source = ("gst://videotestsrc is-live=true num-buffers=100 ! "
              "video/x-raw,width=64,height=48,framerate=60/1 ! identity error-after=6")
    out = tmp_path / "out"
    assert main(["predict", source, "--model", str(tiny_model), "--out", str(out),
                 "--threads", "1"]) == 3
    assert "the source was lost after" in capsys.readouterr().err
    frames = len(list((out / "labels").iterdir()))
    assert frames >= 1 and len(_rows(out / "class_share.csv")) == frames + 1


def _interrupt_after(n: int):
    def on_frame(frames: int) -> None:
        if frames >= n:
            raise KeyboardInterrupt
    return on_frame


def test_ctrl_c_during_a_file_keeps_the_earlier_complete_run(video: Path, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    """Ctrl-C half-way through a file (or before a live source's first frame) must not
    replace a complete earlier run with a partial one."""
    out = tmp_path / "out"
    first = predict_video(tiny_model, str(video), out, threads=1, progress=False)
    before = sorted(p.name for p in first.labels_dir.iterdir())
    video_bytes = (out / "annotated.mp4").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        predict_video(tiny_model, str(video), out, threads=1, progress=False,
                      on_frame=_interrupt_after(3))
    assert sorted(p.name for p in (out / "labels").iterdir()) == before and len(before) == N
    assert (out / "annotated.mp4").read_bytes() == video_bytes
    assert len(_rows(out / "class_share.csv")) == N + 1 and _leftovers(out) == []


def test_ctrl_c_on_a_live_source_keeps_what_was_written(tiny_model: Path,
                                                        tmp_path: Path) -> None:
    require_gst()
    res = predict_video(tiny_model, "test://ball?width=96&height=64&fps=30", tmp_path / "o",
                        threads=1, progress=False, on_frame=_interrupt_after(3))
    assert res.interrupted and res.frames == 3 and len(list(res.labels_dir.iterdir())) == 3


def test_a_file_with_an_equals_sign_in_its_name_is_that_file(
        video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = video.with_name("take=2.avi")
    video.rename(odd)
    monkeypatch.chdir(odd.parent)  # "take=2.avi" as typed in its folder: not camera "take"
    spec = resolve_source("take=2.avi")
    assert spec.kind == "file" and spec.target == str(odd.resolve()) and spec.id == "cam0"
    assert resolve_source(f"front={odd}").id == "front"  # ID=PATH still names the camera
