"""engines.data.sequences: split specs that keep or drop whole recordings."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.data.readers import DatasetError, open_split
from engines.data.sequences import SequenceFilter, parse_split, sequence_of
from tests.engines.test_data import _labels, _write_pair


def make_drives(root: Path) -> Path:
    """CamVid layout: train holds drives A (2 frames), B and C; val holds drive A."""
    for split, names in (("train", ["A_001", "A_002", "B_001", "C_001"]), ("val", ["A_010"])):
        for i, name in enumerate(names):
            _write_pair(root / split / f"{name}.png", root / f"{split}annot" / f"{name}.png",
                        _labels(), seed=i)
    return root


def test_sequence_is_the_name_up_to_the_first_underscore() -> None:
    assert sequence_of("0016E5_07959") == "0016E5"
    assert sequence_of("aachen_000000_000019") == "aachen"
    assert sequence_of("frame42") == "frame42"


def test_parse_split() -> None:
    assert parse_split("train+val") == ("train+val", None)
    assert parse_split("train:only=0001TP") == ("train", SequenceFilter(frozenset({"0001TP"}),
                                                                         keep=True))
    assert parse_split("train+val:except=A, B") == ("train+val",
                                                    SequenceFilter(frozenset({"A", "B"}), False))
    for bad, why in (("train:drop=A", "only=SEQ"), ("train:only", "only=SEQ"),
                     ("train:only=", "no sequence"), (":only=A", "name the split")):
        with pytest.raises(DatasetError, match=why):
            parse_split(bad)


def test_only_keeps_the_named_drives_in_order(tmp_path: Path) -> None:
    data = open_split(make_drives(tmp_path / "camvid"), "train:only=C,A")
    assert data.names == ["A_001", "A_002", "C_001"]
    assert len(data.images) == len(data.labels) == 3
    assert data.source.endswith("only A,C (3)")


def test_except_holds_a_drive_out_of_a_union(tmp_path: Path) -> None:
    data = open_split(make_drives(tmp_path / "camvid"), "train+val:except=A")
    assert data.names == ["B_001", "C_001"]


def test_unknown_drive_lists_the_ones_present(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no sequence Z; its sequences: A, B, C"):
        open_split(make_drives(tmp_path / "camvid"), "train:only=A,Z")


def test_a_filter_that_leaves_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no samples left"):
        open_split(make_drives(tmp_path / "camvid"), "val:except=A")


@pytest.mark.camvid
def test_real_camvid_drives(camvid: Path) -> None:
    dusk = open_split(camvid, "train:only=0001TP")
    rest = open_split(camvid, "train+val:except=0001TP")
    assert len(dusk) == 62 and len(rest) == 367 + 101 - 62
    assert not {sequence_of(n) for n in rest.names} & {"0001TP"}


def test_limit_reads_only_the_first_frames_kept(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--limit K reads K frames, not the whole split (a quick trial of a large dataset),
    after joining and filtering, and the description counts what it was cut from."""
    from engines.data import readers

    root = make_drives(tmp_path / "camvid")
    read: list[str] = []
    real = readers.read_image
    monkeypatch.setattr(readers, "read_image", lambda p: read.append(p.stem) or real(p))
    full = open_split(root, "train+val:except=B")
    assert full.names == ["A_001", "A_002", "C_001", "A_010"]
    read.clear()
    data = open_split(root, "train+val:except=B", limit=3)
    assert read == data.names == full.names[:3]
    assert all((a == b).all() for a, b in zip(data.labels, full.labels[:3], strict=False))
    assert data.source == (f"camvid:{root} train (4) + camvid:{root} val (1) except B "
                           "(first 3 of 4)")
    read.clear()
    joined = open_split(root, "train+val", limit=5)  # across the join: val's frame too
    assert read == joined.names == ["A_001", "A_002", "B_001", "C_001", "A_010"]
    assert joined.source == f"camvid:{root} train (4) + camvid:{root} val (1)"  # nothing cut
    # each split says what it gave; one that gave nothing is left out
    assert open_split(root, "train+val", limit=2).source == f"camvid:{root} train (first 2 of 4)"
    assert open_split(root, "val+train", limit=3).source == (
        f"camvid:{root} val (1) + camvid:{root} train (first 2 of 4)")
    assert open_split(root, "val", limit=1).source == f"camvid:{root} val (1)"


def test_joined_splits_must_share_their_class_table(tmp_path: Path) -> None:
    """A folder dataset whose splits name other classes cannot be joined (nothing is read)."""
    for split, names in (("train", "road\ncar\n"), ("val", "road\nbus\n")):
        _write_pair(tmp_path / split / "images" / "a_1.png", tmp_path / split / "masks" /
                    "a_1.png", _labels(values=(0, 1)), seed=0)
        (tmp_path / split / "classes.txt").write_text(names)
    assert len(open_split(tmp_path, "train")) == 1
    with pytest.raises(DatasetError, match=r"cannot join folder:\S+train and folder:\S+val: "
                       "class tables differ"):
        open_split(tmp_path, "train+val")
