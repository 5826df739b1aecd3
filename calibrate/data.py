"""Calibration and evaluation data: frames from an image folder or a video, label maps.

Every frame that reaches a network here goes through :class:`engines.preprocess.Preprocessor`
with the model's sidecar :class:`~engines.spec.ModelSpec`, exactly as in the stream, so the
activation ranges measured during calibration are the ranges the deployed model sees.

Frames are uint8 BGR (H, W, 3) as OpenCV decodes them; label maps are uint8 (H, W) class
ids at the frame's resolution (CamVid layout: ``val/NAME.png`` has ``valannot/NAME.png``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from engines.preprocess import Preprocessor
from engines.spec import ModelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".ts", ".mjpeg")


class CalibrationDataError(ValueError):
    """Calibration or evaluation data is missing or malformed; the message names the input."""


@dataclass(frozen=True)
class NamedFrame:
    """One decoded frame: ``name`` (file stem or ``video#index``), (H, W, 3) uint8 BGR."""

    name: str
    image: np.ndarray


@dataclass(frozen=True)
class LabelledFrame:
    """A frame with its ground truth: (H, W, 3) uint8 BGR and (H, W) uint8 class ids."""

    name: str
    image: np.ndarray
    label: np.ndarray


def evenly_spaced(n_total: int, n_pick: int | None) -> list[int]:
    """``n_pick`` indices spread evenly over ``range(n_total)`` (all when None or larger)."""
    if n_pick is None or n_pick >= n_total:
        return list(range(n_total))
    if n_pick <= 0:
        raise CalibrationDataError(f"sample count must be > 0, got {n_pick}")
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n_pick).round()})


def list_images(folder: Path) -> list[Path]:
    """Image files (png/jpg/jpeg/bmp) in ``folder``, sorted by name (frame order)."""
    if not folder.is_dir():
        raise CalibrationDataError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        others = ", ".join(p.name for p in files[:5]) or "nothing"
        raise CalibrationDataError(
            f"no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in {folder} (found: {others}); "
            "point --data at a folder of frames, e.g. ../shared/camvid/train, or at a video file"
        )
    return images


def read_image(path: Path) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8 BGR; grey/alpha/16-bit are converted."""
    # as stored, like the training readers: an EXIF orientation tag would turn an image
    # but not its label map
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        raise CalibrationDataError(
            f"cannot decode image {path}: the file is empty, truncated or not an image; "
            "remove it from the folder or replace it"
        )
    return img


def read_label(path: Path, expect_hw: tuple[int, int]) -> np.ndarray:
    """Decode one label map to (H, W) uint8 and check it matches its frame's size."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None or lab.size == 0:
        raise CalibrationDataError(f"cannot decode label map {path}: empty or not an image")
    if lab.ndim == 3:
        # Colour-coded or RGB-stored ids: only accept when the channels are identical.
        if not (np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 0],
                                                                             lab[..., 2])):
            raise CalibrationDataError(
                f"label map {path} has {lab.shape[2]} differing channels: expected a single-"
                "channel image of class ids (CamVid *annot/ format), not a colour rendering"
            )
        lab = lab[..., 0]
    if lab.dtype != np.uint8:
        if lab.max() > 255:
            raise CalibrationDataError(f"label map {path} has ids > 255 ({lab.dtype})")
        lab = lab.astype(np.uint8)
    if lab.shape != tuple(expect_hw):
        raise CalibrationDataError(
            f"label map {path} is {lab.shape[0]}x{lab.shape[1]} but its frame is "
            f"{expect_hw[0]}x{expect_hw[1]}: label maps must have the frame's exact size"
        )
    return lab


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def read_frames(source: str | Path, limit: int | None = None) -> list[NamedFrame]:
    """Frames from an image folder or a video file, ``limit`` of them spread evenly.

    Args:
        source: folder of png/jpg frames (sorted by name) or a video file OpenCV can read.
        limit: number of frames to keep, evenly spaced over the source; None keeps all.
    Returns:
        list of :class:`NamedFrame`, (H, W, 3) uint8 BGR each.
    """
    source = Path(source)
    if source.is_dir():
        images = list_images(source)
        return [NamedFrame(images[i].stem, read_image(images[i]))
                for i in evenly_spaced(len(images), limit)]
    if not source.exists():
        raise CalibrationDataError(f"--data {source} does not exist: give a folder of frames "
                                   "or a video file")
    if not is_video(source):
        raise CalibrationDataError(
            f"--data {source} is neither a folder nor a video "
            f"({', '.join(VIDEO_SUFFIXES)}); give a folder of png/jpg frames or a video file"
        )
    return _read_video(source, limit)


def _read_video(path: Path, limit: int | None) -> list[NamedFrame]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise CalibrationDataError(f"cannot open video {path}: unsupported codec or "
                                       "corrupt file; convert it to png frames or mp4 (H.264)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames: list[NamedFrame] = []
        if count > 0:
            wanted = set(evenly_spaced(count, limit))
            for idx in range(max(wanted) + 1):
                if idx in wanted:
                    ok, img = cap.read()
                    if not ok:
                        break
                    frames.append(NamedFrame(f"{path.stem}#{idx}", img))
                elif not cap.grab():
                    break
        else:  # container without a frame count: read everything, then sample
            all_frames = []
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                all_frames.append(img)
            frames = [NamedFrame(f"{path.stem}#{i}", all_frames[i])
                      for i in evenly_spaced(len(all_frames), limit)] if all_frames else []
    finally:
        cap.release()
    if not frames:
        raise CalibrationDataError(f"video {path} yielded no frames: empty or undecodable")
    return frames


def read_labelled(images_dir: str | Path, labels_dir: str | Path,
                  limit: int | None = None) -> list[LabelledFrame]:
    """Frames and their label maps, paired by file stem (CamVid: ``val/`` + ``valannot/``).

    Raises:
        CalibrationDataError: a frame without a label map, or a label map whose size
            differs from its frame.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    images = list_images(images_dir)
    if not labels_dir.is_dir():
        raise CalibrationDataError(f"label folder {labels_dir} does not exist")
    by_stem = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out = []
    for i in evenly_spaced(len(images), limit):
        img_path = images[i]
        lab_path = by_stem.get(img_path.stem)
        if lab_path is None:
            raise CalibrationDataError(
                f"frame {img_path} has no label map {labels_dir / (img_path.stem + '.png')}; "
                "every evaluation frame needs one with the same name"
            )
        img = read_image(img_path)
        out.append(LabelledFrame(img_path.stem, img, read_label(lab_path, img.shape[:2])))
    return out


def camvid_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """(frames, labels) folders of a CamVid-layout split: ``root/split``, ``root/splitannot``."""
    root = Path(root)
    images, labels = root / split, root / f"{split}annot"
    for p in (images, labels):
        if not p.is_dir():
            raise CalibrationDataError(
                f"{p} not found: --eval-data must hold {split}/ and {split}annot/ (CamVid layout)"
            )
    return images, labels


class FrameReader(CalibrationDataReader):
    """ONNX Runtime calibration reader: frames -> ``{input_name: (1, 3, H, W) float32}``.

    Frames are pre-processed lazily with the stream's :class:`Preprocessor`, one per call,
    and served in chunks of :attr:`chunk` frames (memory stays bounded).
    """

    def __init__(self, frames: Sequence[NamedFrame], spec: ModelSpec, input_name: str,
                 progress: object | None = None) -> None:
        self._frames = frames
        self._pre = Preprocessor(spec)
        self._input_name = input_name
        self._progress = progress  # optional tqdm bar, advanced per frame
        self._it: Iterator[NamedFrame] = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._it, None)
        if frame is None:
            return None
        if self._progress is not None:
            self._progress.update(1)
        return {self._input_name: self._pre(frame.image)}  # (1, 3, H, W) float32

    def rewind(self) -> None:
        self._it = iter(self._frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve frames[start_index:end_index] only (ORT's chunked calibration)."""
        self._it = iter(self._frames[start_index:end_index])

    @property
    def chunk(self) -> int:
        """Frames per calibration chunk: the largest divisor of the count that is <= 4.

        ONNX Runtime's calibrators keep every intermediate tensor of a chunk in memory
        (about 90 MB per 360x480 frame for a small network), so frames are fed in chunks.
        """
        n = len(self._frames)
        return max(d for d in range(1, min(n, 4) + 1) if n % d == 0)

    def __len__(self) -> int:
        return len(self._frames)


def check_label_ids(frames: list[LabelledFrame], num_classes: int,
                    ignore_index: int | None) -> None:
    """Refuse label maps with ids the model cannot mean: a class id is 0..K-1; K (CamVid's
    void), 255 and the model's ignore index are skipped when scoring; anything else means
    labels of another class table (e.g. raw Cityscapes ids) and would score as a plausible
    but wrong mIoU.

    Raises:
        CalibrationDataError: naming the first such file and its ids.
    """
    allowed = {num_classes, 255} | ({ignore_index} if ignore_index is not None else set())
    for f in frames:
        ids = np.unique(f.label[f.label >= num_classes])
        bad = [int(i) for i in ids if int(i) not in allowed]
        if bad:
            raise CalibrationDataError(
                f"label map of {f.name} holds ids {bad[:8]} outside the model's "
                f"{num_classes} classes (0..{num_classes - 1}; {num_classes} and 255 count "
                "as void): labels of another class table? Give label maps in the model's ids")
