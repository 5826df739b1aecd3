"""`segstream probe` on real sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import main
from tests.stream._media import encode_video, require_elements

pytestmark = pytest.mark.timeout(60)


def test_probe_reports_pipeline_caps_and_rate(capsys):
    require_elements("videotestsrc")
    rc = main(["probe", "front=test://ball?width=96&height=64&fps=20", "--seconds", "1.2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "source    front = test://ball?width=96&height=64&fps=20 (test, live)" in out
    assert "pipeline  videotestsrc is-live=true pattern=ball" in out
    assert "[front] running: 96x64" in out and "format=(string)BGR" in out
    assert "size      96x64 BGR" in out and "fps (frames 0.." in out


def test_probe_reads_a_file_to_the_end(tmp_path: Path, capsys):
    path = encode_video(tmp_path / "clip.avi", frames=15)
    assert main(["probe", f"{path}?realtime=0", "--seconds", "10"]) == 0
    out = capsys.readouterr().out
    assert "[cam0] eos: end of stream after 15 frames" in out
    assert "frames    15 captured, 0 dropped" in out and "(frames 0..14)" in out


def test_probe_exit_codes_for_bad_and_dead_sources(tmp_path: Path, capsys):
    assert main(["probe", str(tmp_path / "missing.mp4")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    require_elements("videotestsrc")
    assert main(["probe", "gst://no_such_element_abc", "--seconds", "1"]) == 1
    assert "no frames within 1 s (state failed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["probe", "test://", "--seconds", "-1"])
