"""Segment a folder of images: one 8-bit label PNG per image (class ids, input size),
and optionally a colourised overlay per image.

Images go through :class:`~engines.segmenter.Segmenter` (the stream's pre-process ->
backend -> post-process path).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2

from engines.data.readers import IMAGE_SUFFIXES
from engines.postprocess import overlay
from engines.segmenter import Segmenter


class PredictError(ValueError):
    """Bad input or output folder; the message names it."""


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_folder` wrote. ``labels`` and ``overlays`` are in input order."""

    labels: tuple[Path, ...]
    overlays: tuple[Path, ...]
    ms_per_image: float


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files (``.png .jpg .jpeg .bmp``) directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictError(f"input folder {folder} not found")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise PredictError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def predict_folder(model: str | Path, input_dir: str | Path, out_dir: str | Path, *,
                   overlay_dir: str | Path | None = None, backend: str | None = None,
                   threads: int | None = None, alpha: float = 0.5, progress: bool = True,
                   **options: object) -> PredictResult:
    """Segment every image in ``input_dir``.

    Writes ``out_dir/<stem>.png``: (H, W) uint8 class ids at the image's own size, and
    with ``overlay_dir`` also ``overlay_dir/<stem>.jpg``: the colourised labels blended
    over the image. Unreadable images raise :class:`PredictError` naming the file; a
    failed run leaves the output folders as they were (files are staged beside them and
    moved in at the end). An output folder that is the input folder is refused.
    ``options`` go to :meth:`Segmenter.from_path` (e.g. ``tta="flip"``).
    """
    images = list_images(input_dir)
    out_dir = Path(out_dir)
    ov_dir = Path(overlay_dir) if overlay_dir is not None else None
    for d in (out_dir, ov_dir):
        if d is not None and d.resolve() == Path(input_dir).resolve():
            raise PredictError(f"output folder {d} is the input folder: its images would be "
                               "replaced by label maps; give another --out / --overlay-dir")
    by_stem: dict[str, Path] = {}
    for path in images:  # outputs are named by stem: a.png and a.jpg would overwrite
        if (other := by_stem.setdefault(path.stem, path)) is not path:
            raise PredictError(f"images {other.name} and {path.name} would both write "
                               f"{path.stem}.png; rename one, or predict them from separate "
                               "folders (nothing was written)")
    seg = Segmenter.from_path(model, backend, threads=threads, **options)
    labels_out: list[Path] = []
    overlays_out: list[Path] = []
    total_ns = 0
    # Written into staging folders beside the outputs and moved in at the end: a failed
    # run (an unreadable image, Ctrl-C) leaves the output folders as they were.
    staged: list[tuple[Path, Path]] = []  # (staging folder, destination folder)
    try:
        stage = _staging(out_dir)
        staged.append((stage, out_dir))
        ov_stage = None
        if ov_dir is not None:
            ov_stage = _staging(ov_dir)
            staged.append((ov_stage, ov_dir))
        it = images
        if progress:
            from tqdm import tqdm

            it = tqdm(images, desc="predict", unit="img")
        for path in it:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (H, W, 3) uint8 BGR
            if frame is None:
                raise PredictError(f"cannot read image {path} (nothing was written)")
            labels, stages = seg.run(frame)  # (H, W) uint8
            total_ns += stages.pre + stages.infer + stages.post
            name = f"{path.stem}.png"
            if not cv2.imwrite(str(stage / name), labels):
                raise PredictError(f"cannot write {stage / name} (nothing was written)")
            labels_out.append(out_dir / name)
            if ov_stage is not None and ov_dir is not None:
                ov = f"{path.stem}.jpg"
                if not cv2.imwrite(str(ov_stage / ov), overlay(frame, labels, seg.spec, alpha)):
                    raise PredictError(f"cannot write {ov_stage / ov} (nothing was written)")
                overlays_out.append(ov_dir / ov)
        for src, dst in staged:
            for f in sorted(src.iterdir()):
                os.replace(f, dst / f.name)
    finally:
        seg.close()
        for src, _ in staged:
            shutil.rmtree(src, ignore_errors=True)
    return PredictResult(tuple(labels_out), tuple(overlays_out),
                         total_ns / 1e6 / max(1, len(labels_out)))


def _staging(dest: Path) -> Path:
    """A new empty folder beside ``dest`` (same file system: the final moves are renames);
    ``dest`` itself is created (empty) if missing."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as e:
        raise PredictError(f"cannot write to {dest}: {e}") from None
