"""The segstream wire format, version 1.1: encode and validate ZeroMQ messages.

Every message is three ZeroMQ frames (see ``docs/wire-format.md`` for the full spec):

    frame 0  topic    UTF-8, ``seg/<camera>`` | ``cls/<class_table_id>`` | ``evt/<camera>``
    frame 1  header   UTF-8 JSON object with ``"v": 1`` and ``"type"``
    frame 2  payload  label-map bytes for ``seg/``; empty for ``cls/`` and ``evt/``

Label-map payload encodings (the map is (H, W) uint8, C order, row-major):

    raw   H*W bytes.
    rle   uint32 LE run count N, then N uint32 LE run lengths (each >= 1, summing to H*W),
          then N uint8 values. Runs follow the flattened map and may cross rows.
          Total 4 + 5*N bytes.
    zstd  exactly one zstd frame whose header declares Frame_Content_Size = H*W and, from
          version 1.1 on (``"v_minor": 1``), carries a content checksum that decoders verify.

Decoding checks everything a hostile or broken peer could get wrong and raises
:class:`WireError` (never anything else) naming the field and the problem. This module
knows nothing about sockets: frames are any bytes-like objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from engines.spec import ClassInfo, ModelSpec

WIRE_VERSION = 1
WIRE_MINOR = 1  # 1.1: zstd checksums, exact `dropped`, camera-id rule, repeated states
ENCODINGS = ("raw", "rle", "zstd")
TOPIC_LABELS = "seg/"
TOPIC_CLASS_TABLE = "cls/"
TOPIC_EVENT = "evt/"
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_HEADER_BYTES = 1 << 20
MAX_CAMERA_ID_CHARS = 64
MAX_CLASSES = 256
INT64_MAX = 2**63 - 1

Buffer = bytes | bytearray | memoryview


class WireError(ValueError):
    """A message that does not follow the wire format; the text says what is wrong."""


@dataclass(frozen=True)
class ModelInfo:
    """The model behind a class table: registry name, architecture, input (H, W)."""

    name: str
    architecture: str
    input_size: tuple[int, int]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelInfo:
        return cls(spec.name, spec.architecture, tuple(spec.input_size))


@dataclass(frozen=True)
class ClassTable:
    """Class ids -> names and display colours (R, G, B), identified by a short hash."""

    id: str
    classes: tuple[ClassInfo, ...]
    model: ModelInfo

    @classmethod
    def build(cls, classes: Sequence[ClassInfo], model: ModelInfo) -> ClassTable:
        """A table whose ``id`` is :func:`class_table_id` of ``classes``."""
        classes = tuple(classes)
        _check_classes([{"id": c.id, "name": c.name, "color": list(c.color)} for c in classes])
        return cls(class_table_id(classes), classes, model)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ClassTable:
        return cls.build(spec.classes, ModelInfo.from_spec(spec))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 RGB palette indexed by label id; unknown ids are black."""
        pal = np.zeros((256, 3), np.uint8)
        for c in self.classes:
            pal[c.id] = c.color
        return pal


def class_table_id(classes: Sequence[ClassInfo]) -> str:
    """First 12 hex digits of SHA-256 over the compact, key-sorted JSON class list.

    Clients treat the id as an opaque string; it only changes when the classes do.
    """
    doc = [{"color": list(c.color), "id": c.id, "name": c.name} for c in classes]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class LabelsHeader:
    """Header of a ``labels`` message. Times are ns; ``_mono_`` is the publisher host's
    CLOCK_MONOTONIC, the rest are wall clock (Unix epoch)."""

    camera: str
    seq: int
    t_capture_ns: int
    t_capture_mono_ns: int
    t_infer_ns: int
    t_publish_ns: int
    shape: tuple[int, int]  # (H, W)
    encoding: str
    class_table: str
    dropped: int  # frames of this camera with a smaller seq that were never published
    publisher: str = ""  # random id of the publishing process instance
    minor: int = WIRE_MINOR  # wire minor version (absent on the wire: 0)

    def to_json(self) -> dict[str, Any]:
        return {"v": WIRE_VERSION, "v_minor": self.minor, "type": "labels",
                "camera": self.camera, "seq": self.seq,
                "t_capture_ns": self.t_capture_ns, "t_capture_mono_ns": self.t_capture_mono_ns,
                "t_infer_ns": self.t_infer_ns, "t_publish_ns": self.t_publish_ns,
                "shape": list(self.shape), "dtype": "uint8", "encoding": self.encoding,
                "class_table": self.class_table, "dropped": self.dropped,
                "publisher": self.publisher}


@dataclass(frozen=True)
class SourceEvent:
    """A camera changed state (``running``, ``stalled``, ``reconnecting``, ``eos``...)."""

    camera: str
    state: str
    detail: str
    t_ns: int  # wall clock


@dataclass(frozen=True)
class LabelMap:
    """A decoded ``labels`` message: header plus the (H, W) uint8 map (may be read-only)."""

    header: LabelsHeader
    labels: np.ndarray
    payload_bytes: int


Message = LabelMap | ClassTable | SourceEvent
Header = LabelsHeader | ClassTable | SourceEvent


def check_camera_id(camera: object) -> str:
    """Camera ids are 1-64 printable ASCII characters (0x21-0x7E) other than ``/``.

    A decoding rule as well: a message naming any other camera id is rejected, so ids are
    always safe to print, to use in file names and to match byte-wise.
    """
    if (not isinstance(camera, str) or not 0 < len(camera) <= MAX_CAMERA_ID_CHARS
            or any(ch == "/" or not "!" <= ch <= "~" for ch in camera)):
        raise WireError(f"camera id {camera!r:.80} is invalid: use 1-{MAX_CAMERA_ID_CHARS} "
                        "printable ASCII characters without spaces or '/', e.g. 'front-left'")
    return camera


def terminal_safe(text: str, limit: int = 200) -> str:
    """``text`` from the network made safe to print on a terminal: control and other
    non-printable characters (ANSI escapes, carriage returns, bidi overrides) become
    ``\\xNN`` / ``\\uNNNN`` escapes; longer than ``limit`` characters is cut with '...'."""
    out = []
    for ch in text[:limit]:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out) + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------- payloads


def rle_encode(labels: np.ndarray) -> bytes:
    """(H, W) uint8 -> RLE bytes (layout in the module docstring), vectorised."""
    flat = np.ascontiguousarray(labels).reshape(-1)  # (H*W,)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))  # (N,) first index of each run
    lengths = np.diff(np.append(starts, flat.size)).astype("<u4")  # (N,)
    values = flat[starts]  # (N,) uint8
    return b"".join((np.uint32(starts.size).astype("<u4").tobytes(), lengths.tobytes(),
                     values.tobytes()))


def rle_decode(payload: Buffer, size: int) -> np.ndarray:
    """RLE bytes -> flat (size,) uint8; checks the layout and that runs cover ``size``."""
    buf = memoryview(payload).cast("B")
    if len(buf) < 4:
        raise WireError(f"rle payload of {len(buf)} bytes is shorter than its 4-byte run count")
    n = int(np.frombuffer(buf, "<u4", count=1)[0])
    if n < 1 or n > size:
        raise WireError(f"rle run count {n} is impossible for {size} pixels")
    if len(buf) != 4 + 5 * n:
        raise WireError(f"rle payload is {len(buf)} bytes but {n} runs need {4 + 5 * n}")
    lengths = np.frombuffer(buf, "<u4", count=n, offset=4)
    values = np.frombuffer(buf, np.uint8, count=n, offset=4 + 4 * n)
    if int(lengths.min()) == 0:
        raise WireError("rle run of length 0")
    total = int(lengths.sum(dtype=np.uint64))
    if total != size:
        raise WireError(f"rle runs cover {total} pixels, shape needs {size}")
    return np.repeat(values, lengths)


def _zstd_frame_end(buf: memoryview) -> int:
    """Byte length of the single zstd frame at the start of ``buf`` (walks block headers)."""
    pos = zstandard.frame_header_size(buf)
    has_checksum = bool(buf[4] & 0x04)
    while True:
        if pos + 3 > len(buf):
            raise WireError("zstd payload truncated inside a block header")
        bh = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            raise WireError("zstd payload has a reserved block type")
        pos += 3 + (1 if btype == 1 else bsize)
        if last:
            return pos + (4 if has_checksum else 0)


def zstd_decode(payload: Buffer, size: int, dctx: zstandard.ZstdDecompressor, *,
                require_checksum: bool = False) -> np.ndarray:
    """One zstd frame declaring ``size`` bytes -> flat (size,) uint8; bombs are refused.

    A content checksum, when present, is verified (a corrupted payload is an error, not a
    wrong map); ``require_checksum`` (wire 1.1 messages) refuses frames without one.
    """
    buf = memoryview(payload).cast("B")
    try:
        declared = zstandard.frame_content_size(buf)
        end = _zstd_frame_end(buf)
        if declared != size:
            what = "no content size" if declared < 0 else f"content size {declared}"
            raise WireError(f"zstd frame declares {what}; shape needs exactly {size} bytes")
        if end != len(buf):
            raise WireError(f"zstd payload has {len(buf) - end} bytes after its frame")
        if require_checksum and not buf[4] & 0x04:
            raise WireError("zstd frame has no content checksum; wire format 1.1 requires one")
        out = dctx.decompress(buf, max_output_size=size)
    except zstandard.ZstdError as e:
        raise WireError(f"zstd payload is corrupt: {e}") from None
    if len(out) != size:
        raise WireError(f"zstd payload decompressed to {len(out)} bytes, shape needs {size}")
    return np.frombuffer(out, np.uint8)


class PayloadEncoder:
    """(H, W) uint8 label map -> payload buffer in one encoding. Not thread-safe.

    ``raw`` returns a view of the array itself (zero-copy when sent with ``copy=False``),
    so the caller must not modify the map after handing it over.
    """

    def __init__(self, encoding: str = "zstd", *, zstd_level: int = 1) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
        if not 1 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be 1..22 (1-3 are fast), got {zstd_level}")
        self.encoding = encoding
        self._cctx = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True,
                                              write_checksum=True)

    def encode(self, labels: np.ndarray) -> Buffer:
        labels = np.ascontiguousarray(labels)
        if self.encoding == "raw":
            return memoryview(labels).cast("B")
        if self.encoding == "rle":
            return rle_encode(labels)
        return self._cctx.compress(labels)


class PayloadDecoder:
    """Payload bytes + header -> (H, W) uint8 label map, validated. Not thread-safe."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()

    def decode(self, header: LabelsHeader, payload: Buffer) -> np.ndarray:
        h, w = header.shape
        size = h * w
        if header.encoding == "raw":
            n = memoryview(payload).nbytes
            if n != size:
                raise WireError(f"raw payload is {n} bytes, shape {h}x{w} needs {size}")
            flat = np.frombuffer(payload, np.uint8)
        elif header.encoding == "rle":
            flat = rle_decode(payload, size)
        else:
            flat = zstd_decode(payload, size, self._dctx, require_checksum=header.minor >= 1)
        return flat.reshape(h, w)


# ---------------------------------------------------------------------------- packing


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def pack_labels(header: LabelsHeader, payload: Buffer) -> list[Buffer]:
    """The three frames of a labels message (payload passed through untouched)."""
    return [(TOPIC_LABELS + header.camera).encode(), _dumps(header.to_json()), payload]


def class_table_json(table: ClassTable) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "v_minor": WIRE_MINOR, "type": "class_table", "id": table.id,
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)}
                        for c in table.classes],
            "model": {"name": table.model.name, "architecture": table.model.architecture,
                      "input_size": list(table.model.input_size)}}


def pack_class_table(table: ClassTable) -> list[Buffer]:
    return [(TOPIC_CLASS_TABLE + table.id).encode(), _dumps(class_table_json(table)), b""]


def pack_event(event: SourceEvent) -> list[Buffer]:
    doc = {"v": WIRE_VERSION, "v_minor": WIRE_MINOR, "type": "source_state",
           "camera": event.camera,
           "state": event.state, "detail": event.detail, "t_ns": event.t_ns}
    return [(TOPIC_EVENT + event.camera).encode(), _dumps(doc), b""]


# ---------------------------------------------------------------------------- decoding


def _field(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in doc:
        raise WireError(f"{where} header is missing key {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"{where} header key {key!r} must be {kind.__name__}, "
                        f"got {type(value).__name__} {value!r:.40}")
    return value


def _uint(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = _field(doc, key, int, where)
    if not 0 <= value <= INT64_MAX:
        raise WireError(f"{where} header key {key!r} must be in 0..2^63-1, got {value}")
    return value


def _size_pair(value: Any, what: str) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise WireError(f"{what} must be [H, W] integers, got {value!r:.60}")
    h, w = value
    if h < 1 or w < 1:
        raise WireError(f"{what} must be positive, got {h}x{w}")
    return h, w


def topic_kind(topic: Buffer) -> str:
    """``"labels"``, ``"class_table"`` or ``"source_state"`` from frame 0's prefix."""
    head = bytes(memoryview(topic)[:4])
    kinds = {b"seg/": "labels", b"cls/": "class_table", b"evt/": "source_state"}
    if head not in kinds:
        raise WireError(f"unknown topic {bytes(memoryview(topic)[:40])!r}: expected seg/, "
                        "cls/ or evt/")
    return kinds[head]


def parse_header(parts: Sequence[Buffer], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Validate frames 0 and 1 (and frame 2's presence); the payload is not decoded."""
    if len(parts) != 3:
        raise WireError(f"expected 3 message frames (topic, header, payload), got {len(parts)}")
    kind = topic_kind(parts[0])
    try:
        topic = bytes(parts[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("topic frame is not valid UTF-8") from None
    raw = memoryview(parts[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {raw.nbytes} bytes exceeds the {MAX_HEADER_BYTES} limit")
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise WireError(f"header is not UTF-8 JSON: {str(e)[:80]}") from None
    if not isinstance(doc, dict):
        raise WireError(f"header must be a JSON object, got {type(doc).__name__}")
    version = _field(doc, "v", int, kind)
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported: this decoder reads version "
                        f"{WIRE_VERSION}; upgrade the older side")
    mtype = _field(doc, "type", str, kind)
    if mtype != kind:
        raise WireError(f"header type {mtype!r:.40} does not match topic {topic!r:.60}")
    if kind == "labels":
        header: Header = _labels_header(doc, max_pixels)
        expect = TOPIC_LABELS + header.camera
    elif kind == "class_table":
        header = _class_table(doc)
        expect = TOPIC_CLASS_TABLE + header.id
    else:
        header = _event(doc)
        expect = TOPIC_EVENT + header.camera
    if topic != expect:
        raise WireError(f"topic {topic!r:.60} does not match header (expected {expect!r:.60})")
    if kind != "labels" and memoryview(parts[2]).nbytes:
        raise WireError(f"{kind} messages carry an empty payload, got "
                        f"{memoryview(parts[2]).nbytes} bytes")
    return header


def _labels_header(doc: Mapping[str, Any], max_pixels: int) -> LabelsHeader:
    w = "labels"
    camera = check_camera_id(_field(doc, "camera", str, w))
    shape = _size_pair(_field(doc, "shape", list, w), "labels header 'shape'")
    if shape[0] * shape[1] > max_pixels:
        raise WireError(f"label map {shape[0]}x{shape[1]} exceeds the limit of {max_pixels} "
                        "pixels (raise max_pixels if this is intended)")
    dtype = _field(doc, "dtype", str, w)
    if dtype != "uint8":
        raise WireError(f"labels dtype {dtype!r:.40} is not supported (only 'uint8')")
    encoding = _field(doc, "encoding", str, w)
    if encoding not in ENCODINGS:
        raise WireError(f"unknown encoding {encoding!r:.40}; expected one of {list(ENCODINGS)}")
    publisher = doc.get("publisher", "")
    if not isinstance(publisher, str):
        raise WireError("labels header key 'publisher' must be str")
    minor = _uint(doc, "v_minor", w) if "v_minor" in doc else 0
    return LabelsHeader(
        camera=camera, seq=_uint(doc, "seq", w), t_capture_ns=_uint(doc, "t_capture_ns", w),
        t_capture_mono_ns=_uint(doc, "t_capture_mono_ns", w),
        t_infer_ns=_uint(doc, "t_infer_ns", w), t_publish_ns=_uint(doc, "t_publish_ns", w),
        shape=shape, encoding=encoding, class_table=_field(doc, "class_table", str, w),
        dropped=_uint(doc, "dropped", w), publisher=publisher, minor=minor)


def _check_classes(classes: list[Any]) -> tuple[ClassInfo, ...]:
    if not 0 < len(classes) <= MAX_CLASSES:
        raise WireError(f"class table must list 1..{MAX_CLASSES} classes, got {len(classes)}")
    out = []
    for i, c in enumerate(classes):
        where = f"class_table classes[{i}]"
        if not isinstance(c, dict):
            raise WireError(f"{where} must be an object")
        cid, name = _field(c, "id", int, where), _field(c, "name", str, where)
        color = _field(c, "color", list, where)
        if cid != i:
            raise WireError(f"{where} has id {cid}; ids must be 0..K-1 in order")
        if len(color) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color):
            raise WireError(f"{where} color must be [R, G, B] in 0..255, got {color!r:.40}")
        out.append(ClassInfo(cid, name, (color[0], color[1], color[2])))
    return tuple(out)


def _class_table(doc: Mapping[str, Any]) -> ClassTable:
    w = "class_table"
    table_id = _field(doc, "id", str, w)
    if not 0 < len(table_id) <= 64 or "/" in table_id:
        raise WireError(f"class_table id {table_id!r:.70} must be 1-64 characters without '/'")
    classes = _check_classes(_field(doc, "classes", list, w))
    model = _field(doc, "model", dict, w)
    info = ModelInfo(_field(model, "name", str, "class_table model"),
                     _field(model, "architecture", str, "class_table model"),
                     _size_pair(_field(model, "input_size", list, "class_table model"),
                                "class_table model 'input_size'"))
    return ClassTable(table_id, classes, info)


def _event(doc: Mapping[str, Any]) -> SourceEvent:
    w = "source_state"
    state = _field(doc, "state", str, w)
    if not state:
        raise WireError("source_state header key 'state' must not be empty")
    return SourceEvent(check_camera_id(_field(doc, "camera", str, w)), state,
                       _field(doc, "detail", str, w), _uint(doc, "t_ns", w))


def decode(parts: Sequence[Buffer], *, max_pixels: int = DEFAULT_MAX_PIXELS,
           payloads: PayloadDecoder | None = None) -> Message:
    """Validate and decode one message's frames. Raises only :class:`WireError`."""
    header = parse_header(parts, max_pixels=max_pixels)
    if not isinstance(header, LabelsHeader):
        return header
    labels = (payloads or PayloadDecoder()).decode(header, parts[2])
    return LabelMap(header, labels, memoryview(parts[2]).nbytes)
