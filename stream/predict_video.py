"""Segment a video file or any source URI (``segstream predict drive.mp4``).

Frames come through the stream's capture layer (:func:`stream.capture.open_capture`), so
every source ``segstream run`` takes works here: a file path, ``file://``, ``test://``,
``rtsp://``, ``v4l2://``, ``gst://``. Files are read with ``realtime=0``: as fast as the
model goes, and no frame is skipped; by OpenCV's FFmpeg backend when it can open them
(cheaper per frame), else by GStreamer.

Three stages overlap: the capture thread decodes, the calling thread segments, and a
writer thread renders and writes the outputs into ``OUT``:

* ``labels/<frame>.png``: (H, W) uint8 class ids, one PNG per frame (``<frame>`` is the
  source's frame number, 6 digits; gaps mean a live source dropped frames);
* ``annotated.mp4``: the frame with the labels drawn on it (``--visualize``) and a class
  legend, MPEG-4 part 2 (``mp4v``);
* ``class_share.csv``: one row per frame, ``frame,time_s`` then one column per class:
  the fraction of the frame's pixels given that class.

Everything is written under temporary names in ``OUT`` and renamed at the end, so a run
that fails (a file that cannot be decoded, a full disk) leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import csv
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from engines.predict import PredictError
from engines.segmenter import Segmenter
from stream.capture import open_capture
from stream.capture_base import CaptureOptions
from stream.mp4 import Mp4Writer
from stream.sources import SourceSpec, parse_source, split_source_arg

VISUALIZE = ("overlay", "mask", "side-by-side", "none")
LABELS_DIR, VIDEO_NAME, CSV_NAME = "labels", "annotated.mp4", "class_share.csv"
# Label maps are runs of few values: no row filter and zlib's RLE strategy write them in a
# quarter of the time of the default filters, and smaller (0.6 vs 2.4 ms, 4.1 vs 5.4 KB at
# 360x480 here). Older OpenCV builds lack the filter option; they get level 1.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
              cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
LIVE_RETRIES = 5  # reconnects in a row (0.5 + 1 + 2 + 4 + 8 s of backoff) before giving up


@dataclass(frozen=True)
class VideoPredictResult:
    """What :func:`predict_video` wrote (paths are None for outputs not asked for)."""

    frames: int
    dropped: int
    seconds: float
    labels_dir: Path | None
    video: Path | None
    csv: Path
    interrupted: bool = False  # Ctrl-C: the outputs hold the frames up to it
    lost_source: str = ""  # a live source that failed after delivering frames: why

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------- source


def resolve_source(text: str) -> SourceSpec:
    """A predict input (video path or source URI) -> its :class:`SourceSpec`. Files
    default to ``realtime=0`` (lossless, as fast as possible) unless the URI says
    otherwise; ``loop=1`` is refused (it never ends).

    Raises:
        PredictError: no such file, or a source string :func:`parse_source` rejects.
    """
    from stream.sources import SourceError

    cam_id, uri = split_source_arg(text)
    if "://" not in uri and not Path(uri.partition("?")[0]).exists() and not Path(uri).exists():
        raise PredictError(f"input {uri} not found: give an image folder, a video file or "
                           f"a source URI (test://, rtsp://, v4l2://, gst://...)")
    try:
        spec = parse_source(uri, cam_id or "cam0")
        # A path that exists as written (even with a '?' in its name) becomes a file://
        # URI, so that realtime=0 can be added as a query.
        base = Path(uri).resolve().as_uri() if "://" not in uri and Path(uri).exists() else uri
        query = urlsplit(base).query
        if spec.kind == "file" and "realtime" not in dict(parse_qsl(query)):
            spec = parse_source(f"{base}{'&' if query else '?'}realtime=0", spec.id)
    except SourceError as e:
        raise PredictError(str(e)) from None
    if spec.loop:
        raise PredictError(f"input {spec.display}: loop=1 never ends; drop it, or stop "
                           f"after N frames with --frames N")
    return spec


@dataclass(frozen=True)
class FileInfo:
    """What OpenCV's FFmpeg backend reads from a video file's header."""

    opened: bool
    fps: float = 0.0  # 0: unknown
    frames: int = 0  # 0: unknown


def probe_file(path: str) -> FileInfo:
    """Open ``path`` with ``cv2.VideoCapture`` and read its frame rate and length."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return FileInfo(False)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not 0 < fps <= 1000:  # unknown, or an odd muxer's time base (18000 "fps")
            fps = 0.0
        return FileInfo(True, fps, max(0, count))
    finally:
        cap.release()


def pick_capture(spec: SourceSpec, info: FileInfo, requested: str = "auto") -> str:
    """The capture backend: as requested, or for ``auto`` OpenCV for files it can open
    (FFmpeg decodes straight to BGR: about a quarter less CPU per frame than decodebin +
    videoconvert here) and GStreamer (if importable) for the rest."""
    if requested != "auto":
        return requested
    return "opencv" if spec.kind == "file" and info.opened else "auto"


# -------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Legend:
    """A class legend drawn once and pasted into the top-left corner of each frame."""

    patch: np.ndarray  # (h, w, 3) uint8 BGR

    @classmethod
    def build(cls, names: list[str], palette_bgr: np.ndarray, frame_h: int) -> Legend | None:
        """None when not even two rows fit into ``frame_h``."""
        row_h = min(18, max(10, (frame_h - 8) // max(1, len(names))))
        rows = min(len(names), (frame_h - 8) // row_h)
        if rows < min(2, len(names)) or rows == 0:
            return None
        scale = 0.4 * row_h / 18
        text_w = max(cv2.getTextSize(n[:18], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
                     for n in names[:rows])
        patch = np.full((rows * row_h + 8, text_w + row_h + 16, 3), 32, np.uint8)
        box = row_h - 6
        for i, name in enumerate(names[:rows]):
            y = 4 + i * row_h
            color = tuple(int(v) for v in palette_bgr[i])
            cv2.rectangle(patch, (6, y), (6 + box, y + box), color, thickness=-1)
            cv2.putText(patch, name[:18], (12 + box, y + box), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (255, 255, 255), 1, cv2.LINE_AA)
        return cls(patch)

    def draw(self, img: np.ndarray) -> None:
        """Paste into ``img`` (H, W, 3) in place, clipped to its size."""
        h, w = min(self.patch.shape[0], img.shape[0]), min(self.patch.shape[1], img.shape[1])
        img[:h, :w] = self.patch[:h, :w]


class Renderer:
    """(frame, labels) -> the annotated video frame for one ``--visualize`` mode."""

    def __init__(self, mode: str, names: list[str], palette_rgb: np.ndarray,
                 frame_hw: tuple[int, int], alpha: float = 0.5) -> None:
        if mode not in VISUALIZE or mode == "none":
            raise ValueError(f"visualize must be one of {', '.join(VISUALIZE[:3])}, got {mode!r}")
        self.mode, self.alpha = mode, alpha
        self.palette_bgr = np.ascontiguousarray(palette_rgb[:, ::-1])  # (K, 3) uint8
        self.legend = Legend.build(names, self.palette_bgr, frame_hw[0])
        h, w = frame_hw
        self.size = (2 * w if mode == "side-by-side" else w, h)  # (W, H) for VideoWriter

    def __call__(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        color = np.take(self.palette_bgr, labels, axis=0)  # (H, W, 3) uint8 BGR
        if self.mode == "overlay":
            out = cv2.addWeighted(frame, 1.0 - self.alpha, color, self.alpha, 0.0)
        elif self.mode == "mask":
            out = color
        else:
            out = np.concatenate([frame, color], axis=1)  # (H, 2W, 3)
        if self.legend is not None:
            self.legend.draw(out if self.mode != "side-by-side" else out[:, frame.shape[1]:])
        return out


# ---------------------------------------------------------------------------- outputs


class Outputs:
    """The three outputs under temporary names in ``out_dir``; :meth:`commit` renames
    them into place, :meth:`discard` removes them. Writes happen on a writer thread fed
    by :meth:`put`; its errors surface in the next :meth:`put` or in :meth:`finish`."""

    def __init__(self, out_dir: Path, names: list[str], *, visualize: str, fps: float,
                 alpha: float, palette_rgb: np.ndarray) -> None:
        self._made_dir = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.names, self.visualize, self.fps = out_dir, names, visualize, fps
        self.alpha, self.palette_rgb = alpha, palette_rgb
        self.tmp_labels = Path(tempfile.mkdtemp(prefix=".labels.", suffix=".partial",
                                                dir=out_dir))
        fd, tmp_csv = tempfile.mkstemp(prefix=".class_share.", suffix=".partial", dir=out_dir)
        os.close(fd)
        self.tmp_csv = Path(tmp_csv)
        umask = os.umask(0)
        os.umask(umask)  # mkstemp/mkdtemp make private files; outputs get the usual mode
        self.tmp_labels.chmod(0o777 & ~umask)
        self.tmp_csv.chmod(0o666 & ~umask)
        self.tmp_video = out_dir / f".annotated.{os.getpid()}.partial.mp4"
        self._csv_file: TextIO = self.tmp_csv.open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "time_s", *names])
        self._video: Mp4Writer | None = None
        self._renderer: Renderer | None = None
        self._queue: queue.Queue[tuple[int, np.ndarray, np.ndarray] | None] = queue.Queue(4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="predict-writer", daemon=True)
        self._thread.start()

    def row(self, seq: int, time_s: float, labels: np.ndarray) -> None:
        """The frame's per-class pixel share (written on the calling thread)."""
        counts = np.bincount(labels.ravel(), minlength=len(self.names))[:len(self.names)]
        share = counts / max(1, labels.size)
        self._csv.writerow([seq, f"{time_s:.3f}", *(f"{v:.5f}" for v in share)])

    def put(self, seq: int, frame: np.ndarray, labels: np.ndarray) -> None:
        while True:
            self._raise()
            try:
                self._queue.put((seq, frame, labels), timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                seq, frame, labels = item
                png = self.tmp_labels / f"{seq:06d}.png"
                if not cv2.imwrite(str(png), labels, PNG_PARAMS):
                    raise PredictError(f"cannot write {png}: check the folder is writable")
                if self.visualize != "none":
                    self._write_video(frame, labels)
        except Exception as e:  # any failure here must reach the caller, never hang put()
            self._error = e if isinstance(e, (PredictError, OSError, cv2.error)) else \
                PredictError(f"writing the outputs failed: {type(e).__name__}: {e}")
            while self._queue.get() is not None:  # keep draining so put() never blocks
                pass

    def _write_video(self, frame: np.ndarray, labels: np.ndarray) -> None:
        if self._renderer is None:
            self._renderer = Renderer(self.visualize, self.names, self.palette_rgb,
                                      frame.shape[:2], self.alpha)
            self._video = Mp4Writer(self.tmp_video, self.fps, self._renderer.size)
            if not self._video.opened:
                raise PredictError(f"cannot write video {self.tmp_video}: this OpenCV has "
                                   f"no mp4v encoder, or the folder is not writable")
        assert self._video is not None
        self._video.write(self._renderer(frame, labels))  # resized if the source changed size

    def finish(self) -> None:
        """Wait for the writer thread and close the files; raises its error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._csv_file.close()
        if self._video is not None:
            self._video.release()
        self._raise()

    def commit(self) -> tuple[Path, Path | None, Path]:
        """Rename into place: (labels dir, video or None, csv)."""
        labels = self.out_dir / LABELS_DIR
        if labels.exists():  # replace an earlier run's folder only once the new one is done
            old = Path(tempfile.mkdtemp(prefix=".labels.", suffix=".old", dir=self.out_dir))
            os.replace(labels, old / LABELS_DIR)
            os.replace(self.tmp_labels, labels)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp_labels, labels)
        video = self.out_dir / VIDEO_NAME
        if self._video is None:
            video.unlink(missing_ok=True)  # an earlier run's video would not match the labels
        else:
            os.replace(self.tmp_video, video)
        csv_path = self.out_dir / CSV_NAME
        os.replace(self.tmp_csv, csv_path)
        return labels, (video if self._video is not None else None), csv_path

    def discard(self) -> None:
        with contextlib.suppress(PredictError, OSError, cv2.error):
            self.finish()  # the run already failed; its first error is the one reported
        shutil.rmtree(self.tmp_labels, ignore_errors=True)
        self.tmp_csv.unlink(missing_ok=True)
        self.tmp_video.unlink(missing_ok=True)
        if self._made_dir and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()


# ------------------------------------------------------------------------------ main


def predict_video(model: str | Path, source: str, out_dir: str | Path, *,
                  visualize: str = "overlay", alpha: float = 0.5, backend: str | None = None,
                  threads: int | None = None, max_frames: int = 0, fps: float = 0.0,
                  capture_backend: str = "auto", progress: bool = True,
                  on_frame: Callable[[int], None] | None = None,
                  tta: str = "none") -> VideoPredictResult:
    """Segment every frame of ``source`` (a video path or source URI) into ``out_dir``.

    Args:
        visualize: "overlay", "mask", "side-by-side" or "none" (no annotated video).
        max_frames: stop after this many frames (0: until the source ends; Ctrl-C stops a
            live source and keeps what was written, and so does a live source lost after
            delivering frames: see ``lost_source``; Ctrl-C during a file, or before a
            live source's first frame, raises KeyboardInterrupt and leaves ``out_dir`` as
            it was).
        fps: frame rate written into the video; 0: the file's own, else the source's
            requested rate, else 30.
        capture_backend: "auto" (:func:`pick_capture`), "gstreamer" or "opencv".
        tta: test-time augmentation (:data:`engines.backend.TTA_MODES`; ``flip``: two
            network runs per frame).

    Raises:
        PredictError: missing input, a source that cannot be opened or decoded, an output
            that cannot be written; the message names it. Nothing is left in ``out_dir``.
    """
    if visualize not in VISUALIZE:
        raise PredictError(f"--visualize must be one of {', '.join(VISUALIZE)}, "
                           f"got {visualize!r}")
    spec = resolve_source(source)
    info = probe_file(spec.target) if spec.kind == "file" else FileInfo(False)
    file_fps, count = info.fps, info.frames
    capture_backend = pick_capture(spec, info, capture_backend)
    video_fps = fps or file_fps or float(spec.fps) or 30.0
    total = min(count, max_frames) if count and max_frames else (count or max_frames or None)
    seg = Segmenter.from_path(model, backend, threads=threads, tta=tta)
    outputs = None
    try:
        names = list(seg.spec.class_names)
        try:
            outputs = Outputs(Path(out_dir), names, visualize=visualize, fps=video_fps,
                              alpha=alpha, palette_rgb=np.asarray(seg.spec.palette(), np.uint8))
        except OSError as e:
            raise PredictError(f"cannot write into --out {out_dir}: {e.strerror or e}; "
                               f"give a writable folder") from None
        frames, interrupted, t0, dropped, lost = _loop(seg, spec, outputs, capture_backend,
                                                       max_frames, total, progress, file_fps,
                                                       on_frame)
        outputs.finish()
        labels, video, csv_path = outputs.commit()
    except BaseException:
        if outputs is not None:
            outputs.discard()
        raise
    finally:
        seg.close()
    return VideoPredictResult(frames, dropped, time.perf_counter() - t0, labels, video,
                              csv_path, interrupted, lost)


def _loop(seg: Segmenter, spec: SourceSpec, outputs: Outputs, capture_backend: str,
          max_frames: int, total: int | None, progress: bool, file_fps: float,
          on_frame: Callable[[int], None] | None) -> tuple[int, bool, float, int, str]:
    """Capture -> segment -> outputs until the end; (frames, interrupted, t0, dropped,
    why a live source was lost after delivering frames or "")."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=spec.id, unit="frame", dynamic_ncols=True)
    frames, interrupted, t0, first_mono = 0, False, time.perf_counter(), None
    # A live source is rebuilt after errors, but one that never delivers must end the run.
    options = CaptureOptions(max_retries=LIVE_RETRIES) if spec.live else None
    cap = open_capture(spec, backend=capture_backend, options=options)
    try:
        while not max_frames or frames < max_frames:
            frame = cap.latest(timeout=0.5)
            if frame is None:
                if cap.finished and not cap.pending:
                    break
                continue
            if frames == 0:
                t0 = time.perf_counter()  # the model and the decoder are warm from here
            first_mono = frame.t_capture_mono if first_mono is None else first_mono
            labels, _ = seg.run(frame.image)  # (H, W) uint8
            t = frame.seq / file_fps if file_fps else (frame.t_capture_mono - first_mono) / 1e9
            outputs.row(frame.seq, t, labels)
            outputs.put(frame.seq, frame.image, labels)
            frames += 1
            if bar is not None:
                bar.update(1)
            if on_frame is not None:
                on_frame(frames)
    except KeyboardInterrupt:  # Ctrl-C ends a live source; what was written is kept
        if not (spec.live and frames):  # a file half done, or nothing yet: an earlier
            raise  # run's complete outputs stay, this run's are discarded
        interrupted = True
    finally:
        state, detail, dropped = cap.state, cap.state_detail, cap.dropped
        cap.close()
        if bar is not None:
            bar.close()
    if state == "failed" and spec.live and frames:
        return frames, interrupted, t0, dropped, detail or "failed"
    if state == "failed" or (frames == 0 and not interrupted):
        what = f"video {spec.target}" if spec.kind == "file" else f"source {spec.display}"
        why = f": {detail}" if state == "failed" and detail else ": no frames"
        raise PredictError(f"cannot decode {what}{why}")
    return frames, interrupted, t0, dropped, ""
