"""Wire format 1.2: camera frames on topic ``img/<camera>`` (JPEG), beside the label maps.

A ``frame`` message is three ZeroMQ frames like every other (see ``docs/wire-format.md``):

    frame 0  topic    ``img/<camera>``
    frame 1  header   JSON: camera, seq, capture and publish times, ``shape`` [h, w] of the
                      JPEG image, ``source_shape`` [H, W] of the camera frame (= its label
                      map's shape), ``encoding`` "jpeg", ``crc32`` of the payload, publisher
    frame 2  payload  one baseline or progressive JPEG: 8-bit samples, 3 components (colour),
                      h x w pixels, at most :func:`max_jpeg_bytes` (h, w) bytes

A frame and a label map with the same camera, ``seq`` and ``publisher`` come from the same
captured image. Frames are optional and sampled (``segstream run --publish-frames RATE``):
most label maps have none. Clients that do not subscribe to ``img/`` never receive them.

The checks here need no image library: header keys, sizes (``h <= H``, ``w <= W``, the
payload bound), the CRC-32 and the JPEG's own frame header (SOF: size and components) are
verified before a decoder allocates anything; :mod:`stream.sub_frames` then decodes the
pixels. Everything wrong raises :class:`stream.wire.WireError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream.wire import (
    TOPIC_FRAME,
    WIRE_MINOR,
    WIRE_VERSION,
    Buffer,
    WireError,
    _dumps,
    _field,
    _size_pair,
    _uint,
    check_camera_id,
)

FRAME_ENCODINGS = ("jpeg",)
JPEG_SLACK_BYTES = 64 << 10  # markers, tables and comments on top of 4 bytes a pixel
_SOF_DECODABLE = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive (Huffman)
_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_SOS = 0xDA


def max_jpeg_bytes(h: int, w: int) -> int:
    """Largest JPEG payload of an h x w frame: ``4*h*w + 64 KiB``. A colour JPEG of random
    noise at quality 100 takes ~2 bytes a pixel; since ``h*w <= H*W`` of the label map,
    a frame fits the limit :func:`stream.subscribe.max_frame_bytes` sets for maps of that
    size (RLE's worst case ``4 + 5*H*W`` **plus its 64 KiB of slack**: without the
    slack, a small camera's frame can exceed ``4 + 5*H*W``)."""
    return 4 * h * w + JPEG_SLACK_BYTES


@dataclass(frozen=True)
class FrameHeader:
    """Header of a ``frame`` message. Times in ns: ``_mono_`` is the publisher host's
    CLOCK_MONOTONIC, the rest wall clock. ``shape`` (h, w) is the JPEG image's,
    ``source_shape`` (H, W) the camera frame's (and its label map's)."""

    camera: str
    seq: int
    t_capture_ns: int
    t_capture_mono_ns: int
    t_publish_ns: int
    shape: tuple[int, int]  # (h, w)
    source_shape: tuple[int, int]  # (H, W)
    crc32: int  # zlib CRC-32 of the payload
    encoding: str = "jpeg"
    publisher: str = ""
    minor: int = WIRE_MINOR

    def to_json(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "v_minor": self.minor, "type": "frame",
                "camera": self.camera, "seq": self.seq, "t_capture_ns": self.t_capture_ns,
                "t_capture_mono_ns": self.t_capture_mono_ns,
                "t_publish_ns": self.t_publish_ns, "shape": list(self.shape),
                "source_shape": list(self.source_shape), "encoding": self.encoding,
                "crc32": self.crc32, "publisher": self.publisher}


def pack_frame(header: FrameHeader, jpeg: Buffer) -> list[Buffer]:
    """The three ZeroMQ frames of a frame message (payload passed through untouched)."""
    return [(TOPIC_FRAME + header.camera).encode(), _dumps(header.to_json()), jpeg]


def frame_header(doc: Mapping[str, Any], max_pixels: int) -> FrameHeader:
    """A ``frame`` header from its parsed JSON (called by :func:`stream.wire.parse_header`,
    which has checked ``v``, ``type`` and the topic's form)."""
    w = "frame"
    camera = check_camera_id(_field(doc, "camera", str, w))
    shape = _size_pair(_field(doc, "shape", list, w), "frame header 'shape'")
    source = _size_pair(_field(doc, "source_shape", list, w), "frame header 'source_shape'")
    if source[0] * source[1] > max_pixels:
        raise WireError(f"frame source {source[0]}x{source[1]} exceeds the limit of "
                        f"{max_pixels} pixels (raise max_pixels if this is intended)")
    if shape[0] > source[0] or shape[1] > source[1]:
        raise WireError(f"frame image {shape[0]}x{shape[1]} is larger than its source "
                        f"{source[0]}x{source[1]}; frames are scaled down only")
    encoding = _field(doc, "encoding", str, w)
    if encoding not in FRAME_ENCODINGS:
        raise WireError(f"unknown frame encoding {encoding!r:.40}; expected one of "
                        f"{list(FRAME_ENCODINGS)}")
    crc = _uint(doc, "crc32", w)
    if crc > 0xFFFFFFFF:
        raise WireError(f"frame header key 'crc32' must be a 32-bit value, got {crc}")
    publisher = doc.get("publisher", "")
    if not isinstance(publisher, str):
        raise WireError("frame header key 'publisher' must be str")
    return FrameHeader(
        camera=camera, seq=_uint(doc, "seq", w), t_capture_ns=_uint(doc, "t_capture_ns", w),
        t_capture_mono_ns=_uint(doc, "t_capture_mono_ns", w),
        t_publish_ns=_uint(doc, "t_publish_ns", w), shape=shape, source_shape=source,
        crc32=crc, encoding=encoding, publisher=publisher,
        minor=_uint(doc, "v_minor", w) if "v_minor" in doc else 0)


def jpeg_geometry(payload: Buffer) -> tuple[int, int, int, int]:
    """(height, width, components, sample precision) from a JPEG's frame header (SOF),
    walking the marker segments before it; refuses what is not a decodable JPEG."""
    buf = memoryview(payload).cast("B")
    if bytes(buf[:2]) != b"\xff\xd8":
        raise WireError("frame payload is not a JPEG (no SOI marker)")
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            raise WireError(f"frame payload: JPEG marker expected at byte {pos}")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if length < 2 or pos + 2 + length > len(buf):
            raise WireError(f"frame payload: JPEG segment at byte {pos} is cut short")
        if marker in _SOF_DECODABLE:
            if length < 8:
                raise WireError("frame payload: JPEG frame header is too short")
            return ((buf[pos + 5] << 8) | buf[pos + 6], (buf[pos + 7] << 8) | buf[pos + 8],
                    buf[pos + 9], buf[pos + 4])
        if marker in _SOF_OTHER:
            raise WireError(f"frame payload: JPEG process 0x{marker:02X} (lossless or "
                            "arithmetic coding) is not supported")
        if marker == _SOS:
            raise WireError("frame payload: JPEG scan before any frame header")
        pos += 2 + length
    raise WireError("frame payload: no JPEG frame header (SOF) found")


def check_frame_payload(header: FrameHeader, payload: Buffer) -> None:
    """Everything about a frame's payload that can be checked without decoding pixels:
    size bound, CRC-32, SOI/EOI markers, and a SOF declaring ``header.shape``, 3 components
    of 8 bits. Raises :class:`WireError`."""
    h, w = header.shape
    n = memoryview(payload).nbytes
    if n > max_jpeg_bytes(h, w):
        raise WireError(f"frame payload of {n} bytes exceeds the {max_jpeg_bytes(h, w)} "
                        f"allowed for a {h}x{w} JPEG")
    crc = zlib.crc32(payload)
    if crc != header.crc32:
        raise WireError(f"frame payload is corrupt: CRC-32 {crc:08x}, header says "
                        f"{header.crc32:08x}")
    if bytes(memoryview(payload)[-2:]) != b"\xff\xd9":
        raise WireError("frame payload: JPEG is truncated (no EOI marker at the end)")
    jh, jw, components, precision = jpeg_geometry(payload)
    if (jh, jw) != (h, w):
        raise WireError(f"frame JPEG is {jh}x{jw} but its header says {h}x{w}")
    if components != 3 or precision != 8:
        raise WireError(f"frame JPEG has {components} components of {precision} bits; "
                        "expected 3 (colour) of 8")
