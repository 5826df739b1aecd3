"""Launch files: every shipped one validates; bad ones fail with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import ConfigError, parse_source_arg
from stream.launch_file import load_launch

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_launch_files_validate(path):
    cfg = load_launch(path)
    assert cfg.sources and all(s.id for s in cfg.sources)
    assert cfg.publish.endpoints


def test_expected_examples_are_shipped():
    names = {p.name for p in LAUNCH.glob("*.yaml")}
    assert {"dashcam.yaml", "rtsp_fleet.yaml", "uav_downlink.yaml"} <= names
    assert (LAUNCH / "segstream@.service").is_file()


@pytest.mark.parametrize("text,needle", [
    ("sources: [{uri: 'test://', fps: 3}]", "sources[0].fps: unknown key"),
    ("sources: [{uri: 'test://'}]\npublish: {encoding: lz4}", "publish.encoding: must be one of"),
    ("sources: [{uri: 'test://'}]\nthreads: two", "threads: expected int"),
    ("sources: [{uri: 'test://'}]\npublish: {endpoints: ['udp://x']}", "must start with tcp://"),
    ("sources: [{uri: 'a', id: x}, {uri: 'b', id: x}]",
     "sources[1].id: 'x' is already the id of sources[0]"),
    ("model: m.onnx", "missing required key 'sources'"),
    ("sources: [{uri: 'test://'}]\nversion: 2", "version: must be 1"),
    ("- just\n- a list", "expected a mapping"),
    ("sources: [{uri: 'test://'}\n", "not valid YAML"),
])
def test_bad_launch_files_name_file_key_and_reason(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_launch(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_missing_launch_file():
    with pytest.raises(ConfigError, match="not found"):
        load_launch("/nonexistent/launch.yaml")


def test_source_argument_forms():
    assert parse_source_arg("front=rtsp://h/s?a=1").id == "front"
    assert parse_source_arg("rtsp://h/s?a=1").uri == "rtsp://h/s?a=1"
    assert parse_source_arg("/videos/a=b.mp4").uri == "/videos/a=b.mp4"


def test_relative_model_resolves_against_launch_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "l.yaml").write_text("sources: [{uri: 'test://'}]\nmodel: m.onnx\n")
    assert load_launch(tmp_path / "l.yaml").model == str(tmp_path / "m.onnx")
