"""Dataset readers: find (image, label) pairs on disk and load them with validation.

Every reader returns a :class:`SplitData` whose labels use the project convention:
class ids ``0..K-1`` and :data:`IGNORE` (255) for void / unlabelled pixels, whatever the
dataset stores on disk (CamVid's void 11 becomes 255 on load).

Layouts:
    camvid      ``<root>/<split>/*.png`` + ``<root>/<split>annot/*.png`` (same stem).
    cityscapes  ``<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +
                ``<root>/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``.
    folder      ``<root>/images/*`` + ``<root>/masks/*.png`` (same stem) and a class file
                ``<root>/classes.json`` or ``<root>/classes.txt``; or one such folder per
                split: ``<root>/<split>/images`` ... (class file per split or at the root).
"""

from __future__ import annotations

import collections
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.data.classes import CITYSCAPES_CLASSES, default_color
from engines.spec import CAMVID_CLASSES, ClassInfo

IGNORE = 255
"""Label id of void / unlabelled pixels in every loaded label map."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("camvid", "cityscapes", "folder")


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Pair:
    """One sample on disk."""

    image: Path
    label: Path


@dataclass(frozen=True)
class SplitData:
    """A split held in memory.

    Attributes:
        images: list of (H, W, 3) uint8 RGB arrays (sizes may differ between samples).
        labels: list of (H, W) uint8 arrays, ids 0..K-1 or :data:`IGNORE`.
        names: sample stems, same order.
        classes: the class table of the dataset.
        source: human-readable description, e.g. ``"camvid:/data/camvid train (367)"``.
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    classes: tuple[ClassInfo, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------- pair discovery


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder {path} not found")
    return path


def _match_by_stem(images: list[Path], label_dir: Path, label_suffix: str = ".png",
                   strip: str = "", add: str = "") -> list[Pair]:
    pairs, missing = [], []
    for img in images:
        stem = img.stem[: -len(strip)] if strip and img.stem.endswith(strip) else img.stem
        lbl = label_dir / f"{stem}{add}{label_suffix}"
        if lbl.is_file():
            pairs.append(Pair(img, lbl))
        else:
            missing.append(str(lbl))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatasetError(
            f"{len(missing)} image(s) have no label map: expected {', '.join(missing[:3])}{more}"
        )
    return pairs


def camvid_pairs(root: Path, split: str) -> list[Pair]:
    """``<root>/<split>/X.png`` with ``<root>/<split>annot/X.png``."""
    img_dir = _require_dir(root / split, f"CamVid {split!r} image")
    lbl_dir = _require_dir(root / f"{split}annot", f"CamVid {split!r} label")
    images = _images_in(img_dir)
    if not images:
        raise DatasetError(f"no images in {img_dir}")
    return _match_by_stem(images, lbl_dir)


def cityscapes_pairs(root: Path, split: str) -> list[Pair]:
    """``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<x>_gtFine_labelTrainIds.png``."""
    img_root = _require_dir(root / "leftImg8bit" / split, f"Cityscapes {split!r} image")
    lbl_root = _require_dir(root / "gtFine" / split, f"Cityscapes {split!r} label")
    pairs: list[Pair] = []
    for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
        images = sorted(city.glob("*_leftImg8bit.png"))
        pairs += _match_by_stem(images, lbl_root / city.name, strip="_leftImg8bit",
                                add="_gtFine_labelTrainIds")
    if not pairs:
        raise DatasetError(f"no *_leftImg8bit.png images under {img_root}/<city>/")
    return pairs


def folder_pairs(root: Path) -> list[Pair]:
    """``<root>/images/X.<ext>`` with ``<root>/masks/X.png``."""
    img_dir = _require_dir(root / "images", "image")
    lbl_dir = _require_dir(root / "masks", "mask")
    images = _images_in(img_dir)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
    return _match_by_stem(images, lbl_dir)


def _whole(v: object) -> int | None:
    """A JSON whole number (``3`` or ``3.0``, as numpy's ``tolist()`` writes them), else
    None (``"3"``, ``3.5``, ``true``, ``null``, NaN)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, float) and not v.is_integer():
        return None
    return int(v)


def read_class_file(root: Path) -> tuple[ClassInfo, ...]:
    """Classes of a ``folder`` dataset.

    ``classes.json``: a list of names, or of ``{"name": str, "color": [r, g, b]}`` objects
    (optional ``"id"`` must equal the position). ``classes.txt``: one name per line, blank
    lines and ``#`` comments skipped. Ids are the positions 0..K-1.
    """
    jpath, tpath = root / "classes.json", root / "classes.txt"
    if jpath.is_file():
        try:
            raw = json.loads(jpath.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{jpath}: not valid JSON ({e})") from None
        if not isinstance(raw, list) or not raw:
            raise DatasetError(f"{jpath}: expected a non-empty JSON list of class names/objects")
        classes = []
        for i, entry in enumerate(raw):
            if isinstance(entry, str):
                classes.append(ClassInfo(i, entry, default_color(i)))
                continue
            if not isinstance(entry, dict) or "name" not in entry:
                raise DatasetError(f"{jpath}: entry {i} must be a name or an object with 'name'")
            cid = entry.get("id", i)
            if _whole(cid) != i:
                raise DatasetError(f"{jpath}: entry {i} has id {cid!r}; ids must be the "
                                   "integers 0..K-1 in order (or leave 'id' out)")
            color = entry.get("color", default_color(i))
            rgb = tuple(_whole(v) for v in color) \
                if isinstance(color, (list, tuple)) and len(color) == 3 else ()
            if len(rgb) != 3 or any(v is None or not 0 <= v <= 255 for v in rgb):
                raise DatasetError(f"{jpath}: entry {i} has colour {color!r}; write [r, g, b] "
                                   "with integers 0..255")
            classes.append(ClassInfo(i, str(entry["name"]), rgb))
        return tuple(classes)
    if tpath.is_file():
        names = [ln.strip() for ln in tpath.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        if not names:
            raise DatasetError(f"{tpath}: no class names")
        return tuple(ClassInfo(i, n, default_color(i)) for i, n in enumerate(names))
    raise DatasetError(f"no class file in {root}: write classes.json (list of names) or "
                       "classes.txt (one class name per line, in id order)")


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def folder_split_root(root: Path, split: str) -> Path:
    """A ``folder`` dataset is ``root/images`` (one split) or ``root/<split>/images``."""
    if (root / "images").is_dir():
        return root
    if (root / split / "images").is_dir():
        return root / split
    raise DatasetError(f"no images/ folder in {root} or {root / split}: a folder dataset is "
                       "images/ + masks/ + classes.txt, optionally one such folder per split")


def detect_format(root: Path) -> str:
    """Guess the layout of ``root`` (see module docstring)."""
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "images").is_dir() or any((d / "images").is_dir() for d in _subdirs(root)):
        return "folder"
    if any((root / d).is_dir() for d in ("train", "val", "test")):
        return "camvid"
    raise DatasetError(
        f"cannot tell the layout of {root}: expected train/ + trainannot/ (CamVid), "
        "leftImg8bit/ + gtFine/ (Cityscapes) or images/ + masks/ + classes.txt (folder)"
    )


# ---------------------------------------------------------------- loading


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    # As stored: an EXIF orientation tag would rotate the image but not its label map
    # (read IMREAD_UNCHANGED), which keeps the shape for half-turns and mirrors.
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """(H, W) uint8 label map as stored (single-channel 8-bit PNG)."""
    lbl = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lbl is None:
        raise DatasetError(f"cannot read label map {path}")
    if lbl.ndim != 2 or lbl.dtype != np.uint8:
        raise DatasetError(f"label map {path} must be a single-channel 8-bit image of class "
                           f"ids, got shape {lbl.shape} {lbl.dtype}")
    return lbl


def load_pairs(pairs: list[Pair], classes: tuple[ClassInfo, ...], *, void: int | None = None,
               source: str = "", progress: bool = False) -> SplitData:
    """Read every pair into memory, map ``void`` to :data:`IGNORE` and validate.

    Raises:
        DatasetError: unreadable file, image/label size mismatch, or a label id outside
            ``0..K-1`` that is neither ``void`` nor 255 (the file is named).
    """
    k = len(classes)
    lut = np.full(256, -1, np.int16)
    lut[:k] = np.arange(k)
    lut[IGNORE] = IGNORE
    if void is not None:
        lut[void] = IGNORE
    images, labels, names = [], [], []
    it = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc=f"loading {source or 'data'}", unit="img", leave=False)
    for pair in it:
        img, raw = read_image(pair.image), read_label(pair.label)
        if img.shape[:2] != raw.shape:
            raise DatasetError(f"size mismatch: image {pair.image} is {img.shape[1]}x"
                               f"{img.shape[0]} but label {pair.label} is {raw.shape[1]}x"
                               f"{raw.shape[0]} (WxH)")
        mapped = lut[raw]
        if (mapped < 0).any():
            bad = sorted(int(v) for v in np.unique(raw[mapped < 0]))
            raise DatasetError(f"label map {pair.label} has ids {bad} outside 0..{k - 1} "
                               f"(void must be {IGNORE}"
                               + (f" or {void})" if void is not None else ")"))
        images.append(img)
        labels.append(mapped.astype(np.uint8))
        names.append(pair.image.stem)
    return SplitData(images, labels, names, classes, f"{source} ({len(images)})")


def _split_pairs(root: Path, split: str, fmt: str
                 ) -> tuple[list[Pair], tuple[ClassInfo, ...], int | None, str]:
    """One split's pairs (not read yet), its class table, the label id that means void
    (None: only 255) and its description without the frame count."""
    if fmt == "camvid":
        return camvid_pairs(root, split), CAMVID_CLASSES, 11, f"camvid:{root} {split}"
    if fmt == "cityscapes":
        return cityscapes_pairs(root, split), CITYSCAPES_CLASSES, None, \
            f"cityscapes:{root} {split}"
    if fmt == "folder":
        split_root = folder_split_root(root, split)
        class_root = split_root if any((split_root / f"classes.{x}").is_file()
                                       for x in ("json", "txt")) else root
        return folder_pairs(split_root), read_class_file(class_root), None, \
            f"folder:{split_root}"
    raise DatasetError(f"unknown dataset format {fmt!r}; valid: auto, {', '.join(FORMATS)}")


def open_split(root: str | Path, split: str = "train", fmt: str = "auto", *,
               progress: bool = False, limit: int | None = None) -> SplitData:
    """Load split ``split`` of the dataset at ``root`` into memory.

    Args:
        root: dataset root folder.
        split: ``train`` / ``val`` / ``test``, or several joined by ``+`` (``train+val``:
            the standard CamVid protocol for a final model reported on test), optionally
            followed by ``:only=SEQ[,SEQ]`` or ``:except=SEQ[,SEQ]`` to keep or drop whole
            recordings (:mod:`engines.data.sequences`: validation on held-out drives). A
            ``folder`` dataset with ``images/`` at its root has a single split (``split``
            is ignored); else ``<root>/<split>/`` holds the images/ + masks/ of each split
            (class file there or at the root).
        fmt: one of :data:`FORMATS` or ``"auto"``.
        limit: only the first ``limit`` samples (after the sequence filter) are read, the
            description then says ``(first K of N)`` per split, leaving out a joined split
            none came from (``--limit``: a quick trial of a large dataset reads K files,
            not N).
    """
    from engines.data.sequences import kept_indices, parse_split  # imports this module

    split, seq_filter = parse_split(split)
    root = Path(root)
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (looked for {root.absolute()})"
        raise DatasetError(f"dataset folder {root} not found{where}; the examples' "
                           "../shared/camvid is relative to the segstream checkout")
    fmt = detect_format(root) if fmt == "auto" else fmt
    parts = [_split_pairs(root, s, fmt) for s in split.split("+")]
    for _, classes, _, source in parts[1:]:
        if classes != parts[0][1]:
            raise DatasetError(f"cannot join {parts[0][3]} and {source}: class tables differ")
    # (pair, its part) in order; the description counts whole splits, then what is kept
    pairs = [(pair, i) for i, part in enumerate(parts) for pair in part[0]]
    source = " + ".join(f"{src} ({len(ps)})" for ps, _, _, src in parts)
    if seq_filter is not None:
        keep = kept_indices([p.image.stem for p, _ in pairs], seq_filter, source)
        pairs = [pairs[i] for i in keep]
        source = f"{source} {seq_filter.describe()} ({len(pairs)})"
    if limit is not None and limit < len(pairs):
        pairs = pairs[:limit]
        if seq_filter is not None:  # "... only A (first K of N)"
            source = f"{source.rsplit(' (', 1)[0]} (first {limit} of {len(keep)})"
        else:  # each split says what it gave: "train (first K of 367)", or is left out
            taken = collections.Counter(i for _, i in pairs)
            source = " + ".join(
                f"{src} ({len(ps)})" if taken[i] == len(ps)
                else f"{src} (first {taken[i]} of {len(ps)})"
                for i, (ps, _, _, src) in enumerate(parts) if taken[i])
    images, labels, names = [], [], []
    for i, group in itertools.groupby(pairs, key=lambda t: t[1]):
        _, classes, void, part_source = parts[i]
        part = load_pairs([p for p, _ in group], classes, void=void, source=part_source,
                          progress=progress)
        images += part.images
        labels += part.labels
        names += part.names
    return SplitData(images, labels, names, parts[0][1], source)
