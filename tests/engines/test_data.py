"""Dataset readers (CamVid / Cityscapes / folder layouts), validation errors, and the
determinism and geometric consistency of training augmentation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.data import (
    IGNORE,
    AugmentConfig,
    DatasetError,
    augment,
    detect_format,
    open_split,
    read_class_file,
)
from engines.data.augment import photometric, shift_hue


def _write_pair(img_path: Path, lbl_path: Path, lbl: np.ndarray, seed: int = 0) -> None:
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lbl_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*lbl.shape, 3), dtype=np.uint8)
    assert cv2.imwrite(str(img_path), img)
    assert cv2.imwrite(str(lbl_path), lbl)


def _labels(h: int = 24, w: int = 32, values: tuple[int, ...] = (0, 1, 2, 11)) -> np.ndarray:
    lbl = np.zeros((h, w), np.uint8)
    for i, v in enumerate(values):
        lbl[:, i * w // len(values):(i + 1) * w // len(values)] = v
    return lbl


def make_camvid(root: Path, n: int = 3, split: str = "train") -> Path:
    for i in range(n):
        _write_pair(root / split / f"seq_{i:03d}.png", root / f"{split}annot" / f"seq_{i:03d}.png",
                    _labels(), seed=i)
    return root


def test_camvid_reader_maps_void_to_ignore(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    data = open_split(root, "train")
    assert detect_format(root) == "camvid"
    assert len(data) == 3 and data.num_classes == 11
    assert data.names == ["seq_000", "seq_001", "seq_002"]
    assert data.images[0].shape == (24, 32, 3) and data.images[0].dtype == np.uint8
    lbl = data.labels[0]
    assert set(np.unique(lbl).tolist()) == {0, 1, 2, IGNORE}
    # The stored void id 11 becomes IGNORE; the other ids are unchanged.
    np.testing.assert_array_equal(lbl[_labels() == 11], IGNORE)
    np.testing.assert_array_equal(lbl[_labels() == 2], 2)


def test_image_is_rgb(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    cv2.imwrite(str(root / "train" / "a.png"), bgr)
    cv2.imwrite(str(root / "trainannot" / "a.png"), np.zeros((8, 8), np.uint8))
    img = open_split(root, "train").images[0]
    assert img[0, 0].tolist() == [0, 0, 200]


def test_missing_label_names_the_file(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    (root / "trainannot" / "seq_001.png").unlink()
    with pytest.raises(DatasetError, match=r"seq_001\.png"):
        open_split(root, "train")


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    cv2.imwrite(str(root / "trainannot" / "seq_002.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"size mismatch.*seq_002.png.*seq_002.png"):
        open_split(root, "train")


def test_out_of_range_label_names_file_and_ids(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    cv2.imwrite(str(root / "trainannot" / "seq_000.png"), _labels(values=(0, 17, 40)))
    with pytest.raises(DatasetError, match=r"seq_000.png has ids \[17, 40\]"):
        open_split(root, "train")


def test_missing_split_folder(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "camvid")
    with pytest.raises(DatasetError, match="val"):
        open_split(root, "val")
    with pytest.raises(DatasetError, match="not found"):
        open_split(tmp_path / "nope", "train")


def test_cityscapes_layout(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    for city, n in (("aachen", 2), ("bonn", 1)):
        for i in range(n):
            stem = f"{city}_000000_{i:06d}"
            _write_pair(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png",
                        root / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png",
                        _labels(values=(0, 18, 255)))
    assert detect_format(root) == "cityscapes"
    data = open_split(root, "val")
    assert len(data) == 3 and data.num_classes == 19
    assert data.names[0] == "aachen_000000_000000_leftImg8bit"
    assert set(np.unique(data.labels[2]).tolist()) == {0, 18, IGNORE}
    (root / "gtFine" / "val" / "bonn" / "bonn_000000_000000_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError, match=r"bonn_000000_000000_gtFine_labelTrainIds\.png"):
        open_split(root, "val")


def test_folder_layout_with_classes_txt(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for i in range(2):
        _write_pair(root / "images" / f"f{i}.png", root / "masks" / f"f{i}.png",
                    _labels(values=(0, 1, 2, 255)))
    with pytest.raises(DatasetError, match=r"no class file.*classes.txt"):
        open_split(root)
    (root / "classes.txt").write_text("# my classes\nbackground\nlane\n\ncone\n")
    assert detect_format(root) == "folder"
    data = open_split(root)
    assert [c.name for c in data.classes] == ["background", "lane", "cone"]
    assert len({c.color for c in data.classes}) == 3
    # A mask value equal to K (3) is out of range for 3 classes.
    cv2.imwrite(str(root / "masks" / "f1.png"), _labels(values=(0, 3)))
    with pytest.raises(DatasetError, match=r"f1.png has ids \[3\] outside 0..2"):
        open_split(root)


def test_classes_json_forms(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b"]))
    assert [c.name for c in read_class_file(tmp_path)] == ["a", "b"]
    (tmp_path / "classes.json").write_text(json.dumps(
        [{"name": "road", "color": [1, 2, 3]}, {"id": 1, "name": "car"}]))
    classes = read_class_file(tmp_path)
    assert classes[0].color == (1, 2, 3) and classes[1].name == "car"
    (tmp_path / "classes.json").write_text(json.dumps(  # numpy's tolist() writes floats
        [{"id": 0.0, "name": "road", "color": [128.0, 64.0, 128.0]}]))
    assert read_class_file(tmp_path)[0].color == (128, 64, 128)
    (tmp_path / "classes.json").write_text(json.dumps([{"id": 3, "name": "x"}]))
    with pytest.raises(DatasetError, match=r"ids must be the integers 0\.\.K-1"):
        read_class_file(tmp_path)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_class_file(tmp_path)


@pytest.mark.parametrize("entry, message", [
    ({"id": "0", "name": "road"}, r"id '0'"),
    ({"id": None, "name": "road"}, r"id None"),
    ({"id": True, "name": "road"}, r"id True"),
    ({"name": "road", "color": "red"}, r"colour 'red'"),
    ({"name": "road", "color": [0, 0, 300]}, r"colour \[0, 0, 300\].*0\.\.255"),
    ({"name": "road", "color": [0, 0, 1.5]}, r"colour \[0, 0, 1\.5\]"),
    ({"id": 0.5, "name": "road"}, r"id 0\.5"),
    ({"name": "road", "color": [0, 0]}, r"colour \[0, 0\]"),
])
def test_classes_json_bad_entries_name_the_entry(tmp_path: Path, entry: dict,
                                                 message: str) -> None:
    """Bad ids and colours are a DatasetError naming the file and entry (the CLIs report
    those and exit 2), not a TypeError/ValueError from deep inside int()."""
    (tmp_path / "classes.json").write_text(json.dumps([entry]))
    with pytest.raises(DatasetError, match=f"classes.json: entry 0 has {message}"):
        read_class_file(tmp_path)


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        open_split(tmp_path)


# ---------------------------------------------------------------- augmentation


def _coded_pair(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red channel encodes the label (label * 20), in 10x10 blocks."""
    lbl = (np.add.outer(np.arange(h) // 10, np.arange(w) // 10) % 5).astype(np.uint8)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = lbl * 40 + 20
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :]  # column ramp shows flips
    return img, lbl


def test_augment_is_deterministic_per_seed() -> None:
    img, lbl = _coded_pair()
    cfg = AugmentConfig(crop=(32, 48))
    a = augment(img, lbl, np.random.default_rng(7), cfg)
    b = augment(img, lbl, np.random.default_rng(7), cfg)
    c = augment(img, lbl, np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))
    assert a[0].shape == (32, 48, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (32, 48) and a[1].dtype == np.uint8


@pytest.mark.parametrize("seed", range(12))
def test_augment_keeps_image_and_label_aligned(seed: int) -> None:
    img, lbl = _coded_pair()
    cfg = AugmentConfig(crop=(40, 56), scale=(0.5, 2.0), brightness=0, contrast=0,
                        saturation=0)
    out_img, out_lbl = augment(img, lbl, np.random.default_rng(seed), cfg)
    valid = out_lbl != IGNORE
    assert set(np.unique(out_lbl[valid]).tolist()) <= set(range(5))
    decoded = np.clip(np.rint((out_img[..., 0].astype(int) - 20) / 40), 0, 4)
    # Bilinear blur only touches block borders: away from them (3x3 neighbourhood of one
    # label) the colour-coded image and the label must agree; a shift or a one-sided flip
    # breaks that for a large fraction of pixels.
    kernel = np.ones((3, 3), np.uint8)
    interior = valid & (cv2.dilate(out_lbl, kernel) == cv2.erode(out_lbl, kernel))
    assert interior.sum() > 100
    agree = (decoded[interior] == out_lbl[interior]).mean()
    assert agree > 0.98, agree


def test_augment_pads_with_ignore_when_scaled_down() -> None:
    img, lbl = _coded_pair(20, 20)
    cfg = AugmentConfig(crop=(32, 32), scale=(0.5, 0.5), hflip=0.0, brightness=0, contrast=0,
                        saturation=0)
    out_img, out_lbl = augment(img, lbl, np.random.default_rng(0), cfg)
    assert (out_lbl[10:, :] == IGNORE).all() and (out_lbl[:, 10:] == IGNORE).all()
    assert (out_lbl[:10, :10] != IGNORE).all()
    np.testing.assert_array_equal(out_img[20:, 20:], np.broadcast_to(cfg.pad_rgb, (12, 12, 3)))


def test_flip_happens_with_image_and_label_together() -> None:
    img, lbl = _coded_pair()
    cfg = AugmentConfig(crop=(60, 80), scale=(1.0, 1.0), hflip=1.0, brightness=0,
                        contrast=0, saturation=0)
    out_img, out_lbl = augment(img, lbl, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out_lbl, lbl[:, ::-1])
    np.testing.assert_array_equal(out_img, img[:, ::-1])


def test_train_dataset_is_pure_function_of_seed_epoch_index(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from engines.data.torch_dataset import TrainDataset

    data = open_split(make_camvid(tmp_path / "camvid"), "train")
    ds = TrainDataset(data, AugmentConfig(crop=(16, 16)), (0.5,) * 3, (0.25,) * 3, seed=3)
    x0, y0 = ds[1]
    assert x0.shape == (3, 16, 16) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    ds[0]  # order of access does not matter
    x1, y1 = ds[1]
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    ds.set_epoch(1)
    x2, _ = ds[1]
    assert not torch.equal(x0, x2)


@pytest.mark.camvid
def test_real_camvid_val(camvid: Path) -> None:
    data = open_split(camvid, "val")
    assert len(data) == 101
    assert data.images[0].shape == (360, 480, 3)
    values = set(np.unique(np.stack(data.labels[:10])).tolist())
    assert values <= set(range(11)) | {IGNORE}


@pytest.mark.parametrize("factor", [0.75, 1.25, 0.5, 1.6])
def test_random_scale_keeps_labels_on_the_images_pixel_centres(factor: float) -> None:
    """The image is resized bilinearly on half-pixel centres; each label pixel must come
    from the source pixel nearest that same centre (plain INTER_NEAREST takes floor(x*s):
    up to half a pixel up-left)."""
    from engines.data.augment import random_scale

    cols = np.tile(np.arange(8, dtype=np.uint8), (8, 1))  # label = source column
    img = np.zeros((8, 8, 3), np.uint8)
    _, lbl = random_scale(img, cols, factor)
    out_w = lbl.shape[1]
    centre = (np.arange(out_w) + 0.5) * 8 / out_w - 0.5  # source coordinate of each column
    assert np.all(np.abs(lbl[0].astype(float) - centre) <= 0.5 + 1e-9), (lbl[0], centre)
    assert (lbl == lbl[0]).all()  # every row alike


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only the orientation tag (0x0112)."""
    import struct

    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) \
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_images_are_read_as_stored_whatever_their_exif_orientation(tmp_path: Path) -> None:
    """A phone photo tagged "rotate 180" keeps its shape: rotating the image but not its
    label map (PNG, no tag) would pair every pixel with the wrong label, silently."""
    from engines.data.readers import read_image

    img = np.zeros((8, 8, 3), np.uint8)
    img[:2] = 255  # white top rows (BGR)
    _, jpeg = cv2.imencode(".jpg", img)
    path = tmp_path / "photo.jpg"
    path.write_bytes(_with_exif_orientation(jpeg.tobytes(), 3))
    assert cv2.imread(str(path))[7].mean() > 200  # OpenCV alone honours the tag: bottom
    rgb = read_image(path)
    assert rgb[0].mean() > 200 and rgb[7].mean() < 50  # as stored: top


def test_standard_photometric_is_the_jitter_every_shipped_recipe_used() -> None:
    assert AugmentConfig(**photometric("standard")) == AugmentConfig()
    with pytest.raises(ValueError, match=r"one of \['standard', 'strong'\], got 'loud'"):
        photometric("loud")
    with pytest.raises(ValueError, match="hue must be in"):
        AugmentConfig(hue=0.7)


def test_shift_hue_rotates_the_colour_circle_and_keeps_greys() -> None:
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[:2, ..., 0] = 255  # red
    rgb[2:] = 128  # grey
    out = shift_hue(rgb, 1 / 3)
    np.testing.assert_allclose(out[0, 0], (0, 255, 0), atol=1e-2)  # red -> green
    np.testing.assert_allclose(out[2:], rgb[2:], atol=1e-2)  # no hue to turn
    np.testing.assert_allclose(shift_hue(out, -1 / 3), rgb, atol=1e-2)


def test_strong_photometric_changes_colours_and_blur_only_never_labels() -> None:
    img, lbl = _coded_pair()
    strong = AugmentConfig(crop=(40, 56), **photometric("strong"))
    sharp, blurred = replace(strong, blur=0.0), replace(strong, blur=1.0)
    tv, labels = [], []
    for cfg in (sharp, blurred):  # the blur draws come last: same crop, flip and colours
        out_img, out_lbl = augment(img, lbl, np.random.default_rng(5), cfg)
        tv.append(np.abs(np.diff(out_img.astype(int), axis=1)).sum())
        labels.append(out_lbl)
    np.testing.assert_array_equal(labels[0], labels[1])
    assert tv[1] < tv[0]  # smoother
    only_hue = AugmentConfig(crop=(60, 80), scale=(1.0, 1.0), hflip=0.0, brightness=0,
                             contrast=0, saturation=0, hue=0.05)
    out_img, out_lbl = augment(img, lbl, np.random.default_rng(1), only_hue)
    np.testing.assert_array_equal(out_lbl, lbl)
    assert np.abs(out_img.astype(int) - img).max() > 2  # colours turned
