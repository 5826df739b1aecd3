"""``segstream launch FILE --set KEY=VALUE --publish ENDPOINT``: a shipped launch file
runs without being copied, and overrides go through the file's own validation path."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import main
from stream.config import ConfigError
from stream.launch_file import apply_overrides, parse_override
from stream.validate import check_launch

REPO = Path(__file__).resolve().parents[2]
DASHCAM = REPO / "launch" / "dashcam.yaml"


@pytest.mark.parametrize(("text", "steps", "value"), [
    ("publish.encoding=rle", ("publish", "encoding"), "rle"),
    ("sources[0].uri=test://", ("sources", 0, "uri"), "test://"),
    ("sources[0].uri=test://ball?width=64&height=48", ("sources", 0, "uri"),
     "test://ball?width=64&height=48"),
    ("threads=2", ("threads",), 2),
    ("sources[1].stall_timeout=2.5", ("sources", 1, "stall_timeout"), 2.5),
    ("publish.endpoints=[ipc:///tmp/a, 'tcp://*:5555']", ("publish", "endpoints"),
     ["ipc:///tmp/a", "tcp://*:5555"]),
    ("model=", ("model",), None),
    ("publish.endpoints=*", ("publish", "endpoints"), "*"),  # not a YAML alias
])
def test_parse_override(text: str, steps: tuple, value: object) -> None:
    ov = parse_override(text)
    assert (ov.steps, ov.value, ov.origin) == (steps, value, f"--set {text}")


@pytest.mark.parametrize("text", ["threads", "=2", "sources[x].uri=a", "a..b=1", "0a=1"])
def test_parse_override_rejects_bad_keys(text: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override(text)


def test_apply_overrides_copies_creates_and_appends() -> None:
    doc = {"sources": [{"uri": "v4l2:///dev/video0"}], "publish": {"encoding": "raw"}}
    out, errors = apply_overrides(doc, [parse_override(t) for t in (
        "sources[0].uri=test://", "sources[1].uri=test://ball", "publish.sndhwm=4",
        "metrics_port=9100")])
    assert errors == []
    assert out == {"sources": [{"uri": "test://"}, {"uri": "test://ball"}],
                   "publish": {"encoding": "raw", "sndhwm": 4}, "metrics_port": 9100}
    assert doc["sources"] == [{"uri": "v4l2:///dev/video0"}]  # the original is untouched
    _, errors = apply_overrides(doc, [parse_override("sources[5].uri=x"),
                                      parse_override("publish.encoding.level=3")])
    assert errors[0].startswith("sources[5].uri: sources has 1 entry")
    assert errors[1].startswith("publish.encoding.level: publish.encoding is not a mapping")


def test_shipped_file_runs_with_overrides_checked_like_the_file(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"ipc://{tmp_path}/seg.sock"
    assert main(["launch", str(DASHCAM), "--set", "sources[0].uri=test://ball?width=64&height=48",
                 "--set", f"model={tiny_model}", "--set", "publish.encoding=rle",
                 "--publish", endpoint, "--check"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "source front: test://ball?width=64&height=48" in out
    assert f"publish: {endpoint} [rle]" in out
    assert "publish: ipc:///tmp/segstream-front.sock" not in out


def test_override_errors_name_the_key_path_and_the_option(
        tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", str(DASHCAM), "--set", "publish.encodng=rle",
                 "--set", "sources[0].stall_timeout=fast", "--set", "publish.sndhwm=0",
                 "--set", f"model={tiny_model}", "--check"]) == 2
    err = capsys.readouterr().err
    assert "publish.encodng: unknown key" in err and "(--set publish.encodng=rle)" in err
    assert "sources[0].stall_timeout: expected float, got 'fast'" in err
    assert "publish.sndhwm: must be 1..10000 messages per subscriber, got 0" in err
    # machine checks (a missing file, an endpoint folder) name the option too
    with pytest.raises(ConfigError) as e:
        check_launch(DASHCAM, overrides=[parse_override("sources[0].uri=/no/such.mp4"),
                                         parse_override(f"model={tiny_model}")])
    assert "sources[0].uri: source '/no/such.mp4'" in str(e.value)
    assert "(--set sources[0].uri=/no/such.mp4)" in str(e.value)
    assert main(["launch", str(DASHCAM), "--set", "sources[0].uri=test://",
                 "--set", f"model={tiny_model}", "--publish", "ipc:///no/such/dir/s.sock",
                 "--check"]) == 2
    assert "publish.endpoints[0]: folder /no/such/dir" in capsys.readouterr().err
    assert main(["launch", str(DASHCAM), "--set", "threads"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_launch_runs_the_overridden_pipeline(tiny_model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", str(DASHCAM),
                 "--set", "sources[0].uri=test://ball?width=96&height=64&fps=30",
                 "--set", f"model={tiny_model}", "--set", "threads=1",
                 "--set", "max_frames=5", "--set", "stats_interval=0",
                 "--publish", f"ipc://{tmp_path}/seg.sock"]) == 0, capsys.readouterr().err
