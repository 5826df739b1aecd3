"""Source strings -> SourceSpec and pipeline descriptions (built pipelines are checked by
a real Gst.parse_launch wherever the elements exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.sources import (
    KINDS,
    SourceError,
    parse_source,
    parse_source_args,
    redact,
    split_source_arg,
)
from tests.stream._media import require_elements, require_gst

TAIL = ("videoconvert ! video/x-raw,format=BGR ! appsink name=sink emit-signals=false "
        "max-buffers=1")


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "dir with space" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(b"not decoded by these tests")
    return path


def assert_parses(description: str) -> None:
    """The description is valid gst-launch syntax with an appsink named sink."""
    require_gst()
    from stream.gst import load_gst

    pipeline = load_gst().Gst.parse_launch(description)
    assert pipeline.get_by_name("sink") is not None


def test_split_source_arg_keeps_query_equals_in_uri():
    assert split_source_arg("front=rtsp://h/s?a=1") == ("front", "rtsp://h/s?a=1")
    assert split_source_arg("rtsp://h/s?a=1") == ("", "rtsp://h/s?a=1")
    assert split_source_arg("test://ball?width=64") == ("", "test://ball?width=64")
    assert split_source_arg("/videos/a=b.mp4") == ("", "/videos/a=b.mp4")


def test_an_id_left_in_the_uri_is_explained_in_the_users_words():
    with pytest.raises(SourceError, match=r"id before '=' is empty; write ID=URI "
                                          r"\(e\.g\. front=test://\)"):
        parse_source_args(["=test://"])
    with pytest.raises(SourceError, match="in a launch file 'id: front' beside 'uri: test://'"):
        parse_source("front=test://", "cam0")  # a launch file's uri: key holding an id


def test_ids_default_by_position_and_must_be_unique():
    specs = parse_source_args(["test://", "rear=test://ball", "test://snow"])
    assert [s.id for s in specs] == ["cam0", "rear", "cam2"]
    with pytest.raises(SourceError, match="'a' is used twice"):
        parse_source_args(["a=test://", "a=test://ball"])
    with pytest.raises(SourceError, match="camera id"):
        parse_source("test://", "bad id!")
    for dots in (".", ".."):  # would name this folder or its parent in --save-dir, URLs
        with pytest.raises(SourceError, match=r"other than '\.' and '\.\.'"):
            parse_source("test://", dots)
    assert parse_source("test://", "cam.front").id == "cam.front"


def test_file_plain_path_and_file_uri(video: Path):
    plain = parse_source(str(video))
    uri = parse_source(video.as_uri() + "?loop=1&realtime=0")
    assert plain.kind == uri.kind == "file" and not plain.live
    assert plain.realtime and not plain.loop and not plain.lossless
    assert uri.loop and not uri.realtime and uri.lossless
    assert plain.target == uri.target == str(video.resolve())
    assert f'location="{video.resolve()}"' in plain.pipeline
    assert plain.pipeline.endswith(TAIL + " drop=true sync=true")
    assert uri.pipeline.endswith(TAIL + " drop=false sync=false")  # decode as fast as taken
    require_elements("filesrc", "decodebin")
    assert_parses(plain.pipeline)


def test_nvmm_adds_nvvidconv_after_decodebin(video: Path):
    """Jetson hardware decoders output NVMM memory, which videoconvert cannot read."""
    conv = "decodebin ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert"
    assert conv in parse_source(f"{video}?nvmm=1").pipeline
    assert conv in parse_source("rtsp://h/s?nvmm=1").pipeline
    assert "! nvvidconv" not in parse_source(f"{video}?nvmm=0").pipeline
    assert "nvmm" not in parse_source("rtsp://h/s?nvmm=0").target


def test_missing_file_names_it(tmp_path: Path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"nope\.mp4.*does not exist") as e:
        parse_source(str(missing))
    assert "valid sources" in str(e.value)
    with pytest.raises(SourceError, match="does not exist"):
        parse_source(missing.as_uri())


def test_test_source_options():
    spec = parse_source("test://ball?width=322&height=100&fps=15&frames=7", "t")
    assert (spec.id, spec.kind, spec.width, spec.height, spec.fps) == ("t", "test", 322, 100, 15)
    assert "videotestsrc is-live=true pattern=ball num-buffers=7" in spec.pipeline
    assert "video/x-raw,width=322,height=100,framerate=15/1" in spec.pipeline
    assert spec.pipeline.endswith("sync=false") and spec.target == ""
    assert "pattern=smpte" in parse_source("test://").pipeline
    require_elements("videotestsrc")
    assert_parses(spec.pipeline)


def test_rtsp_keeps_camera_query_and_takes_ours():
    spec = parse_source("rtsp://admin:secret@10.1.2.3:554/cam?channel=1&transport=udp"
                        "&latency=50&subtype=0")
    assert spec.kind == "rtsp" and spec.live
    assert 'location="rtsp://admin:secret@10.1.2.3:554/cam?channel=1&subtype=0"' in spec.pipeline
    assert "latency=50 protocols=udp ! application/x-rtp,media=video ! decodebin" in spec.pipeline
    assert "secret" not in spec.display and "admin:***@10.1.2.3" in spec.display
    # the camera's own query stays byte for byte (tokens, escapes, bare keys)
    token = parse_source("rtsp://10.1.2.3/live?token=ab%2Fc==&ch1&name=a%20b&transport=udp")
    assert token.target == "rtsp://10.1.2.3/live?token=ab%2Fc==&ch1&name=a%20b"
    assert "protocols=udp" in token.pipeline
    plain = parse_source("rtsp://10.1.2.3/stream1")
    assert "latency=0 protocols=tcp" in plain.pipeline and plain.target == "rtsp://10.1.2.3/stream1"
    require_elements("rtspsrc", "decodebin")
    assert_parses(spec.pipeline)


def test_v4l2_device_forms(caplog):
    spec = parse_source("v4l2:///dev/null?width=1280&height=720&fps=30")  # exists everywhere
    assert spec.kind == "v4l2" and spec.target == "/dev/null"
    assert 'v4l2src device="/dev/null" ! video/x-raw,width=1280,height=720,framerate=30/1' \
        in spec.pipeline
    mjpeg = parse_source("v4l2:///dev/null?format=mjpeg")
    assert "image/jpeg ! jpegdec" in mjpeg.pipeline
    # a camera that enumerates late (USB at boot) is retried like an unplugged one, so a
    # missing device must not stop the other cameras at start: a warning, not an error
    with caplog.at_level("WARNING", logger="segstream.sources"):
        late = parse_source("v4l2://987")
    assert late.target == "/dev/video987" and "/dev/video987 does not exist" in caplog.text
    require_elements("v4l2src", "jpegdec")
    assert_parses(spec.pipeline)
    assert_parses(mjpeg.pipeline)


def test_csi_pipeline_for_jetson():
    spec = parse_source("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert spec.pipeline.startswith(
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,"
        "framerate=60/1 ! nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert")
    assert parse_source("csi://0").width == 1280
    with pytest.raises(SourceError, match="flip=9"):
        parse_source("csi://0?flip=9")


def test_gst_raw_pipeline():
    spec = parse_source("gst://videotestsrc pattern=snow ! video/x-raw,width=64,height=48 !")
    assert spec.pipeline.startswith("videotestsrc pattern=snow ! video/x-raw,width=64,height=48 "
                                    "! videoconvert")
    with pytest.raises(SourceError, match="leave out the appsink"):
        parse_source("gst://videotestsrc ! appsink")
    with pytest.raises(SourceError, match="empty pipeline"):
        parse_source("gst://")
    require_elements("videotestsrc")
    assert_parses(spec.pipeline)


@pytest.mark.parametrize(("uri", "message"), [
    ("http://example.com/x.mp4", "unknown scheme 'http://'"),
    ("test://ball?widht=64", "unknown option 'widht'; valid options for this kind: width, "
                             "height, fps, frames, live"),
    ("rtsp://h/s?nvmm=2", "nvmm='2' is not valid; expected 1 or 0"),
    ("test://ball?width=-3", r"width='-3' is not valid; expected an integer in 1\.\.65536"),
    ("test://ball?fps=abc", "fps='abc' is not valid"),
    ("test://ball?width=64&width=32", "'width' given twice"),
    ("test://plaid", "unknown test pattern 'plaid'"),
    ("rtsp://10.0.0.1/s?transport=quic", "transport='quic' is not valid; expected one of tcp, udp"),
    ("rtsp:///nohost", "no host"),
    ("csi://left", "sensor id must be a number"),
    ("v4l2://camera", "expected a device"),
    ("", "empty source"),
])
def test_bad_sources_name_the_problem(uri: str, message: str):
    with pytest.raises(SourceError, match=message) as e:
        parse_source(uri)
    if "scheme" in message:
        for kind in KINDS:
            assert f"{kind}://" in str(e.value)  # lists the valid forms


def test_bad_file_option(video: Path):
    with pytest.raises(SourceError, match=r"loop='maybe' is not valid; expected 1 or 0"):
        parse_source(f"{video}?loop=maybe")


def test_redact():
    assert redact("rtsp://u:p4ss@h/x and rtsp://h2/y") == "rtsp://u:***@h/x and rtsp://h2/y"
    assert redact("rtsp://user@h/x") == "rtsp://user@h/x"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["", "file://", "v4l2://", "rtsp://", "csi://", "test://", "gst://",
                        "http://", "/tmp/", "x="]),
       st.text(alphabet="abc019/:?&=%#@. -_!\"\\[]", max_size=30))
def test_any_source_string_parses_or_raises_source_error(prefix: str, rest: str):
    """No input crashes the parser with anything but a SourceError that names it."""
    try:
        spec = parse_source(prefix + rest)
    except SourceError as e:
        assert str(e)
    else:
        assert spec.kind in KINDS and "appsink name=sink" in spec.pipeline
