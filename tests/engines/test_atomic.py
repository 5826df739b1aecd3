"""engines.atomic: files are replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.atomic import staged, write_bytes, write_text


def test_files_are_renamed_only_when_every_write_succeeded(tmp_path: Path) -> None:
    model, side = tmp_path / "m.onnx", tmp_path / "m.json"
    model.write_bytes(b"old model")
    side.write_text("old side")
    with pytest.raises(OSError, match="disk full"), staged(model, side) as (tmp_model, _):
        assert tmp_model.parent == tmp_path and tmp_model.suffix == ".onnx"
        tmp_model.write_bytes(b"new model")
        raise OSError("disk full")  # the sidecar never got written
    assert model.read_bytes() == b"old model" and side.read_text() == "old side"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]  # no temporaries

    with staged(model, side) as (tmp_model, tmp_side):
        tmp_model.write_bytes(b"new model")
        tmp_side.write_text("new side")
        assert model.read_bytes() == b"old model"  # nothing visible before the block ends
    assert model.read_bytes() == b"new model" and side.read_text() == "new side"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


def test_a_symlink_at_the_path_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    link = tmp_path / "key"
    link.symlink_to(target)
    write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert target.read_text() == "precious"


def test_temporaries_are_unique_and_parents_made_on_request(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "engine.plan"
    with pytest.raises(FileNotFoundError):
        write_bytes(deep, b"x")
    assert write_bytes(deep, b"x", mkdir=True).read_bytes() == b"x"
    with staged(deep) as (one,), staged(deep) as (two,):  # two writers of one path
        assert one != two and one.name.startswith(".engine.") and one.name.endswith(".plan")
        one.write_bytes(b"1")
        two.write_bytes(b"2")
    assert deep.read_bytes() == b"1"  # the outer block renamed last
