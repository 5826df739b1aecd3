"""Source specs: ``[ID=]URI`` strings -> a validated :class:`SourceSpec` and its GStreamer
pipeline description.

This module only parses and formats text; it does not import GStreamer, so it works (and
its errors are the same) on machines that fall back to OpenCV capture.

Every pipeline ends in the same tail, so the capture code sees one format whatever the
camera: packed 8-bit BGR from an appsink named ``sink`` that keeps only the newest buffer::

    ... ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink emit-signals=false
          max-buffers=1 drop=true sync=<bool>

``sync=true`` only for files played at their own rate (``realtime=1``, the default); live
sources already arrive at their rate and must never wait on the clock. Files read with
``realtime=0`` use ``drop=false``: the decoder runs as fast as the consumer takes frames
and none is lost (see :attr:`SourceSpec.lossless`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import (
    SplitResult,
    parse_qsl,
    unquote,
    unquote_plus,
    urlencode,
    urlsplit,
    urlunsplit,
)

log = logging.getLogger("segstream.sources")

KINDS = ("file", "v4l2", "rtsp", "csi", "test", "gst")
# gst:// source elements of live network streams and cameras, whose end of stream is a
# loss, not an end (SourceSpec.eos_is_loss), and URI schemes of the same for uridecodebin,
# urisourcebin and playbin. HTTP is left out: a URL there is usually a file, which ends.
NETWORK_ELEMENTS = frozenset({"rtspsrc", "udpsrc", "tcpclientsrc", "srtsrc", "srtclientsrc",
                              "rtmpsrc", "rtmp2src", "ristsrc"})
CAMERA_ELEMENTS = frozenset({"v4l2src", "nvarguscamerasrc", "nvv4l2camerasrc",
                             "libcamerasrc"})
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtspt", "udp", "rtp", "srt", "rtmp", "rist")

VALID_FORMS = """valid sources ([ID=]URI, id defaults to cam0, cam1, ... by position):
  /path/video.mp4 or file:///path/video.mp4   [?loop=1&realtime=0&nvmm=0|1]
  v4l2:///dev/video0 or v4l2://0               [?width=1280&height=720&fps=30&format=raw|mjpeg]
  rtsp://[user:pass@]host[:port]/path          [?transport=tcp|udp&latency=MS&nvmm=0|1]
  csi://0 (Jetson nvarguscamerasrc sensor id)  [?width=1280&height=720&fps=30&flip=0..7]
  test://[pattern]                             [?width=640&height=480&fps=30&frames=N&live=1]
  gst://<pipeline description that stops before the appsink>
(nvmm=1, the default on Jetson, adds nvvidconv after decodebin for hardware decoders)"""

# videotestsrc "pattern" nicks (GStreamer 1.22).
TEST_PATTERNS = (
    "smpte", "snow", "black", "white", "red", "green", "blue", "checkers-1", "checkers-2",
    "checkers-4", "checkers-8", "circular", "blink", "smpte75", "zone-plate", "gamut",
    "chroma-zone-plate", "solid-color", "ball", "smpte100", "bar", "pinwheel", "spokes",
    "gradient", "colors", "smpte-rp-219",
)

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CREDENTIALS_RE = re.compile(r"(://[^:/@\s\"]*:)[^@/\s\"]*@")


def redact(text: str) -> str:
    """Mask the password in any ``scheme://user:password@host`` inside ``text`` (for
    logs, status lines and error messages)."""
    return _CREDENTIALS_RE.sub(r"\1***@", text)


class SourceError(ValueError):
    """A source string that cannot be used; the message names it and lists valid forms."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))  # messages quote URIs: never their passwords


@dataclass(frozen=True)
class SourceSpec:
    """One camera, resolved.

    Attributes:
        id: camera id (``Frame.camera_id``).
        uri: the source string as given (without the ``ID=`` prefix).
        kind: one of :data:`KINDS`.
        pipeline: complete ``gst-launch`` description ending in ``appsink name=sink``.
        live: True for cameras and streams (frames arrive at the sensor's rate and a
            broken stream is rebuilt); False for files.
        loop: files only: replay from the start at end of stream.
        realtime: files only: True plays at the file's frame rate, False decodes as fast
            as the consumer takes frames.
        target: what ``cv2.VideoCapture`` opens in the OpenCV fallback (file path, device
            path or URL); empty when the kind has no OpenCV equivalent.
        width, height, fps: requested capture format; 0 = whatever the source gives.
    """

    id: str
    uri: str
    kind: str
    pipeline: str
    live: bool
    loop: bool = False
    realtime: bool = True
    target: str = ""
    width: int = 0
    height: int = 0
    fps: int = 0

    @property
    def display(self) -> str:
        """The URI with any password masked, for logs and status lines."""
        return redact(self.uri)

    @property
    def elements(self) -> frozenset[str]:
        """GStreamer element names of :attr:`pipeline` (the first word of each link)."""
        return frozenset(re.findall(r"(?:^|!)\s*([A-Za-z_][\w-]*)", self.pipeline))

    @property
    def _gst_network(self) -> bool:
        """A gst:// pipeline reading a live network stream (element or ``uri=`` scheme)."""
        uris = re.findall(r"\buri=\"?([a-z0-9+]+)://", self.pipeline, flags=re.IGNORECASE)
        return self.kind == "gst" and (bool(self.elements & NETWORK_ELEMENTS) or any(
            u.lower() in NETWORK_SCHEMES for u in uris))

    @property
    def _http_stream(self) -> bool:
        """A gst:// HTTP source that is a live stream (an MJPEG IP camera), not a file."""
        return self.kind == "gst" and "souphttpsrc" in self.elements and (
            "multipartdemux" in self.elements
            or re.search(r"\bis-live=(true|1)\b", self.pipeline) is not None)

    @property
    def slow_start(self) -> bool:
        """The first frame may take seconds (an RTSP handshake over a cellular link, a
        long key-frame interval, Argus start-up): RTSP, CSI, and gst:// pipelines with a
        network stream, an HTTP source or a CSI camera."""
        return self.kind in ("rtsp", "csi") or self._gst_network or (
            self.kind == "gst" and bool(self.elements & {"souphttpsrc", "nvarguscamerasrc"}))

    @property
    def eos_is_loss(self) -> bool:
        """An end of stream means the camera or connection was lost (the capture rebuilds
        it), not that the video is done: RTSP, V4L2, CSI, and gst:// pipelines with a live
        network stream or a camera, unless they end themselves (``num-buffers=N``)."""
        if self.kind in ("rtsp", "v4l2", "csi"):
            return True
        if self.kind != "gst" or re.search(r"\bnum-buffers=\s*\d", self.pipeline):
            return False
        return (self._gst_network or self._http_stream
                or bool(self.elements & CAMERA_ELEMENTS))

    @property
    def lossless(self) -> bool:
        """Every frame is delivered (the source waits for the consumer): files at
        ``realtime=0``."""
        return not self.live and not self.realtime


# ---------------------------------------------------------------------------- parsing


def split_source_arg(text: str) -> tuple[str, str]:
    """``[ID=]URI`` -> (id or "", uri). An ``=`` inside the URI (a query) is not an id:
    the id part may not contain ``/``, ``:`` or ``?``; and a file that exists as written
    is that file, even with ``=`` in its name (``take=2.mp4``)."""
    with contextlib.suppress(OSError):  # a name too long for a path, e.g. an RTSP token
        if Path(text).exists():
            return "", text
    head, sep, tail = text.partition("=")
    if sep and head and not any(c in head for c in "/:?"):
        return head, tail
    return "", text


def parse_source_args(texts: Sequence[str]) -> list[SourceSpec]:
    """Several ``--source [ID=]URI`` values; unnamed ones become cam0, cam1, ... by
    position. Ids must be unique."""
    specs = []
    for i, text in enumerate(texts):
        cam_id, uri = split_source_arg(text)
        specs.append(parse_source(uri, cam_id or f"cam{i}"))
    ids = [s.id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SourceError(f"source id {dupes[0]!r} is used twice; give each source its own "
                          f"id with ID=URI, e.g. --source front=rtsp://...")
    return specs


def parse_source(uri: str, camera_id: str = "cam0") -> SourceSpec:
    """Resolve one source string (without ``ID=``) into a :class:`SourceSpec`.

    Raises:
        SourceError: unknown scheme, unknown or bad query option, missing file or
            device; the message names the source and lists the valid forms.
    """
    if not _ID_RE.match(camera_id) or camera_id in (".", ".."):
        raise SourceError(f"camera id {camera_id!r} must be 1-64 characters from "
                          f"A-Z a-z 0-9 _ . -, other than '.' and '..' (ids name files, "
                          f"folders and preview pages)")
    uri = uri.strip()
    if not uri:
        raise SourceError(f"source {camera_id}: empty source\n{VALID_FORMS}")
    scheme, sep, _ = uri.partition("://")
    if not sep:
        builder = _file
    else:
        builder = _BUILDERS.get(scheme.lower())
        if builder is None and "=" in scheme:
            head, _, rest = uri.partition("=")
            if not head:
                raise SourceError(f"source {uri!r}: the camera id before '=' is empty; "
                                  f"write ID=URI (e.g. front={rest}) or the URI alone")
            raise SourceError(f"source {uri!r}: {head!r} before '=' reads as a camera id, "
                              f"which goes apart from the URI: --source {head}={rest} on "
                              f"the command line; in a launch file 'id: {head}' beside "
                              f"'uri: {rest}'")
        if builder is None:
            raise SourceError(f"source {uri!r}: unknown scheme {scheme + '://'!r}\n"
                              f"{VALID_FORMS}")
    return builder(uri, camera_id)


# ----------------------------------------------------------------- query option helpers


class _Options:
    """Query options of one source, checked against the keys its scheme accepts."""

    def __init__(self, uri: str, query: str, allowed: Sequence[str]) -> None:
        self.uri = uri
        pairs = parse_qsl(query, keep_blank_values=True)
        keys = [k for k, _ in pairs]
        for k in keys:
            if k not in allowed:
                raise SourceError(f"source {uri!r}: unknown option {k!r}; valid options for "
                                  f"this kind: {', '.join(allowed) or 'none'}\n{VALID_FORMS}")
            if keys.count(k) > 1:
                raise SourceError(f"source {uri!r}: option {k!r} given twice")
        self.values = dict(pairs)

    def _get(self, key: str, default: object, conv: Callable[[str], object],
             expected: str) -> object:
        if key not in self.values:
            return default
        raw = self.values[key]
        try:
            return conv(raw)
        except ValueError:
            raise SourceError(f"source {self.uri!r}: option {key}={raw!r} is not valid; "
                              f"expected {expected}") from None

    def integer(self, key: str, default: int, lo: int = 1, hi: int = 1 << 16) -> int:
        def conv(s: str) -> int:
            v = int(s)
            if not lo <= v <= hi:
                raise ValueError
            return v
        return int(self._get(key, default, conv, f"an integer in {lo}..{hi}"))  # type: ignore[arg-type]

    def flag(self, key: str, default: bool) -> bool:
        table = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

        def conv(s: str) -> bool:
            if s.lower() not in table:
                raise ValueError
            return table[s.lower()]
        return bool(self._get(key, default, conv, "1 or 0"))

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        def conv(s: str) -> str:
            if s not in choices:
                raise ValueError
            return s
        return str(self._get(key, default, conv, f"one of {', '.join(choices)}"))


def _split(uri: str) -> SplitResult:
    try:
        return urlsplit(uri)
    except ValueError as e:  # e.g. "Invalid IPv6 URL" for an unclosed '['
        raise SourceError(f"source {uri!r}: not a valid URI ({e})\n{VALID_FORMS}") from None


def _quote(value: str) -> str:
    """A property value for ``gst_parse_launch``: double-quoted, ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(sync: bool, drop: bool = True) -> str:
    return ("videoconvert ! video/x-raw,format=BGR ! appsink name=sink emit-signals=false "
            f"max-buffers=1 drop={str(drop).lower()} sync={str(sync).lower()}")


def _is_jetson() -> bool:
    """An NVIDIA Jetson (L4T), where decodebin picks hardware decoders with NVMM output."""
    return Path("/etc/nv_tegra_release").exists()


def _decoded(nvmm: bool) -> str:
    """decodebin, plus on Jetson nvvidconv to bring NVMM (device) frames to system memory:
    videoconvert cannot read ``video/x-raw(memory:NVMM)``."""
    return "decodebin ! nvvidconv ! video/x-raw,format=BGRx" if nvmm else "decodebin"


def _raw_caps(width: int, height: int, fps: int, media: str = "video/x-raw") -> str:
    caps = [media]
    if width:
        caps.append(f"width={width}")
    if height:
        caps.append(f"height={height}")
    if fps:
        caps.append(f"framerate={fps}/1")
    return ",".join(caps)


# ------------------------------------------------------------------------ per scheme


def _file(uri: str, camera_id: str) -> SourceSpec:
    if uri.lower().startswith("file://"):
        parts = _split(uri)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"source {uri!r}: file URIs need an absolute path "
                              f"(file:///path/video.mp4), not host {parts.netloc!r}")
        path_text, query = unquote(parts.path), parts.query
    elif Path(uri).exists():  # a plain path that itself contains '?'
        path_text, query = uri, ""
    else:
        path_text, _, query = uri.partition("?")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise SourceError(f"source {uri!r}: video file {str(path)!r} does not exist "
                          f"(or is not a file); check the path\n{VALID_FORMS}")
    opts = _Options(uri, query, ("loop", "realtime", "nvmm"))
    loop, realtime = opts.flag("loop", False), opts.flag("realtime", True)
    nvmm = opts.flag("nvmm", _is_jetson())
    path = path.resolve()
    pipeline = (f"filesrc location={_quote(str(path))} ! {_decoded(nvmm)} ! "
                f"{_tail(sync=realtime, drop=realtime)}")
    return SourceSpec(camera_id, uri, "file", pipeline, live=False, loop=loop,
                      realtime=realtime, target=str(path))


def _v4l2(uri: str, camera_id: str) -> SourceSpec:
    parts = _split(uri)
    dev = parts.netloc + parts.path
    if dev.isdigit():
        dev = f"/dev/video{dev}"
    if not dev.startswith("/dev/"):
        raise SourceError(f"source {uri!r}: expected a device such as v4l2:///dev/video0 "
                          f"or v4l2://0\n{VALID_FORMS}")
    if not Path(dev).exists():  # may enumerate late (USB at boot): the capture retries
        log.warning("source %r: camera device %s does not exist (yet); it is retried like "
                    "an unplugged camera. List cameras with `v4l2-ctl --list-devices`",
                    uri, dev)
    opts = _Options(uri, parts.query, ("width", "height", "fps", "format"))
    w, h, fps = opts.integer("width", 0), opts.integer("height", 0), opts.integer("fps", 0, hi=1000)
    fmt = opts.choice("format", "raw", ("raw", "mjpeg"))
    if fmt == "mjpeg":  # most USB cameras only reach 720p/1080p at 30 fps as MJPEG
        head = f"v4l2src device={_quote(dev)} ! {_raw_caps(w, h, fps, 'image/jpeg')} ! jpegdec"
    else:
        head = f"v4l2src device={_quote(dev)} ! {_raw_caps(w, h, fps)}"
    return SourceSpec(camera_id, uri, "v4l2", f"{head} ! {_tail(sync=False)}", live=True,
                      target=dev, width=w, height=h, fps=fps)


def _rtsp(uri: str, camera_id: str) -> SourceSpec:
    parts = _split(uri)
    if not parts.hostname:
        raise SourceError(f"source {uri!r}: no host; expected rtsp://host[:port]/path\n"
                          f"{VALID_FORMS}")
    # Our options are taken out; any other query (e.g. ?channel=1&subtype=0 on many IP
    # cameras) belongs to the camera and stays in the URL.
    ours = ("transport", "latency", "nvmm")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    opts = _Options(uri, urlencode([(k, v) for k, v in pairs if k in ours]), ours)
    transport = opts.choice("transport", "tcp", ("tcp", "udp"))
    latency = opts.integer("latency", 0, lo=0, hi=10_000)
    nvmm = opts.flag("nvmm", _is_jetson())
    url = uri
    if any(k in ours for k, _ in pairs):
        # the camera's own pieces stay byte for byte (tokens with '=' or '%2F', bare keys)
        rest = "&".join(piece for piece in parts.query.split("&")
                        if piece and unquote_plus(piece.split("=", 1)[0]) not in ours)
        url = urlunsplit(parts._replace(query=rest))
    # The caps filter picks the video stream: cameras often send audio too, and rtspsrc's
    # first pad (maybe the audio) would otherwise take the only decodebin.
    pipeline = (f"rtspsrc location={_quote(url)} latency={latency} protocols={transport} "
                f"! application/x-rtp,media=video ! {_decoded(nvmm)} ! {_tail(sync=False)}")
    return SourceSpec(camera_id, uri, "rtsp", pipeline, live=True, target=url)


def _csi(uri: str, camera_id: str) -> SourceSpec:
    parts = _split(uri)
    sensor = (parts.netloc + parts.path).strip("/") or "0"
    if not sensor.isdigit():
        raise SourceError(f"source {uri!r}: the CSI sensor id must be a number, e.g. "
                          f"csi://0\n{VALID_FORMS}")
    opts = _Options(uri, parts.query, ("width", "height", "fps", "flip"))
    w, h = opts.integer("width", 1280), opts.integer("height", 720)
    fps, flip = opts.integer("fps", 30, hi=1000), opts.integer("flip", 0, lo=0, hi=7)
    caps = f"video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1"
    pipeline = (f"nvarguscamerasrc sensor-id={int(sensor)} ! {caps} ! nvvidconv "
                f"flip-method={flip} ! video/x-raw,format=BGRx ! {_tail(sync=False)}")
    return SourceSpec(camera_id, uri, "csi", pipeline, live=True, width=w, height=h, fps=fps)


def _test(uri: str, camera_id: str) -> SourceSpec:
    parts = _split(uri)
    pattern = (parts.netloc + parts.path).strip("/") or "smpte"
    if pattern not in TEST_PATTERNS:
        raise SourceError(f"source {uri!r}: unknown test pattern {pattern!r}; valid: "
                          f"{', '.join(TEST_PATTERNS)}")
    opts = _Options(uri, parts.query, ("width", "height", "fps", "frames", "live"))
    w, h = opts.integer("width", 640), opts.integer("height", 480)
    fps, frames = opts.integer("fps", 30, hi=1000), opts.integer("frames", -1, lo=-1, hi=1 << 30)
    live = opts.flag("live", True)
    pipeline = (f"videotestsrc is-live={str(live).lower()} pattern={pattern} "
                f"num-buffers={frames} ! {_raw_caps(w, h, fps)} ! {_tail(sync=False)}")
    return SourceSpec(camera_id, uri, "test", pipeline, live=True, width=w, height=h, fps=fps)


def _gst(uri: str, camera_id: str) -> SourceSpec:
    body = uri.split("://", 1)[1].strip().rstrip("!").strip()
    if not body:
        raise SourceError(f"source {uri!r}: empty pipeline; e.g. "
                          f"gst://videotestsrc pattern=ball ! video/x-raw,width=320,height=240")
    if re.search(r"\bappsink\b", body):
        raise SourceError(f"source {uri!r}: leave out the appsink; segstream appends "
                          f"'! {_tail(sync=False)}'")
    return SourceSpec(camera_id, uri, "gst", f"{body} ! {_tail(sync=False)}", live=True)


_BUILDERS: dict[str, Callable[[str, str], SourceSpec]] = {
    "file": _file, "v4l2": _v4l2, "rtsp": _rtsp, "rtsps": _rtsp, "csi": _csi,
    "test": _test, "gst": _gst,
}
