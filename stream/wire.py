"""The segstream wire format, version 1.2: encode and validate ZeroMQ messages.

Every message is three ZeroMQ frames (see ``docs/wire-format.md`` for the full spec):

    frame 0  topic    UTF-8, ``seg/<camera>`` | ``cls/<class_table_id>`` | ``evt/<camera>``
                      | ``img/<camera>`` (1.2, optional camera frames: ``stream/wire_frames.py``)
    frame 1  header   UTF-8 JSON object with ``"v": 1`` and ``"type"``
    frame 2  payload  label-map bytes for ``seg/``, a JPEG for ``img/``; empty otherwise

Label-map payload encodings (raw, rle, zstd) live in ``stream/wire_payload.py`` and are
re-exported here.

Decoding checks everything a hostile or broken peer could get wrong and raises
:class:`WireError` (never anything else) naming the field and the problem. This module
knows nothing about sockets: frames are any bytes-like objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.spec import ClassInfo, ModelSpec
from stream.wire_payload import (
    ENCODINGS,
    Buffer,
    PayloadDecoder,
    PayloadEncoder,
    WireError,
    rle_decode,
    rle_encode,
    zstd_decode,
)

if TYPE_CHECKING:
    from stream.wire_frames import FrameHeader

__all__ = [  # the payload codecs are re-exported from stream.wire_payload
    "DEFAULT_MAX_PIXELS", "ENCODINGS", "INT64_MAX", "MAX_CAMERA_ID_CHARS", "MAX_CLASSES",
    "MAX_HEADER_BYTES", "TOPIC_CLASS_TABLE", "TOPIC_EVENT", "TOPIC_FRAME", "TOPIC_LABELS",
    "WIRE_MINOR", "WIRE_VERSION", "Buffer", "ClassTable", "Header", "LabelMap",
    "LabelsHeader", "Message", "ModelInfo", "PayloadDecoder", "PayloadEncoder",
    "SourceEvent", "WireError", "check_camera_id", "class_table_id", "class_table_json",
    "decode", "pack_class_table", "pack_event", "pack_labels", "parse_header",
    "rle_decode", "rle_encode", "terminal_safe", "topic_kind", "zstd_decode"]

WIRE_VERSION = 1
WIRE_MINOR = 2  # 1.1: zstd checksums, exact `dropped`, camera ids...; 1.2: img/ frames
TOPIC_LABELS = "seg/"
TOPIC_CLASS_TABLE = "cls/"
TOPIC_EVENT = "evt/"
TOPIC_FRAME = "img/"
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_HEADER_BYTES = 1 << 20
MAX_CAMERA_ID_CHARS = 64
MAX_CLASSES = 256
INT64_MAX = 2**63 - 1


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
    always safe to print and to match byte-wise, and to use as a file name apart from
    ``.`` and ``..`` (which segstream's own sources refuse).
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


# ---------------------------------------------------------------------------- packing


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _wellformed(text: str) -> str:
    """``text`` without lone surrogates (a non-UTF-8 file name reaches Python as
    ``\\udcXX``; JSON would carry it as an unpaired escape that strict parsers reject):
    each becomes the visible text ``\\udcXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def pack_labels(header: LabelsHeader, payload: Buffer) -> list[Buffer]:
    """The three frames of a labels message (payload passed through untouched)."""
    return [(TOPIC_LABELS + header.camera).encode(), _dumps(header.to_json()), payload]


def class_table_json(table: ClassTable) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "v_minor": WIRE_MINOR, "type": "class_table", "id": table.id,
            "classes": [{"id": c.id, "name": _wellformed(c.name), "color": list(c.color)}
                        for c in table.classes],
            "model": {"name": _wellformed(table.model.name),
                      "architecture": _wellformed(table.model.architecture),
                      "input_size": list(table.model.input_size)}}


def pack_class_table(table: ClassTable) -> list[Buffer]:
    return [(TOPIC_CLASS_TABLE + table.id).encode(), _dumps(class_table_json(table)), b""]


def pack_event(event: SourceEvent) -> list[Buffer]:
    doc = {"v": WIRE_VERSION, "v_minor": WIRE_MINOR, "type": "source_state",
           "camera": event.camera,
           "state": _wellformed(event.state), "detail": _wellformed(event.detail),
           "t_ns": event.t_ns}
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
    """``"labels"``, ``"class_table"``, ``"source_state"`` or ``"frame"`` from frame 0."""
    head = bytes(memoryview(topic)[:4])
    kinds = {b"seg/": "labels", b"cls/": "class_table", b"evt/": "source_state",
             b"img/": "frame"}
    if head not in kinds:
        raise WireError(f"unknown topic {bytes(memoryview(topic)[:40])!r}: expected seg/, "
                        "cls/, evt/ or img/")
    return kinds[head]


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A header object as JSON parsers agree on it: no repeated key (parsers keep the
    first or the last), no unpaired surrogate escape in a key or string value (strict
    parsers refuse them, lenient ones pass them on)."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise WireError(f"header repeats key {key!r:.40}")
        _check_text(key)
        _check_text(value)
        doc[key] = value
    return doc


def _check_text(value: Any) -> None:
    """Refuse an unpaired surrogate in a string, or in the strings of a (nested) array;
    objects inside were checked when they were parsed."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("header holds an unpaired surrogate escape "
                            "(\\ud800-\\udfff)") from None
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


def _no_constant(name: str) -> Any:
    raise WireError(f"header holds {name}, which is not JSON (no segstream peer writes it)")


def parse_header(parts: Sequence[Buffer], *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Header | FrameHeader:
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
        doc = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_strict_object,
                         parse_constant=_no_constant)
    except WireError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise WireError(f"header is not UTF-8 JSON: {str(e)[:80]}") from None
    if not isinstance(doc, dict):
        raise WireError(f"header must be a JSON object, got {type(doc).__name__}")
    version = _field(doc, "v", int, kind)
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported: this decoder reads version "
                        f"{WIRE_VERSION}; upgrade the older side")
    if "v_minor" in doc:
        _uint(doc, "v_minor", kind)  # every message type: an integer >= 0 when present
    mtype = _field(doc, "type", str, kind)
    if mtype != kind:
        raise WireError(f"header type {mtype!r:.40} does not match topic {topic!r:.60}")
    if kind == "labels":
        header: Header = _labels_header(doc, max_pixels)
        expect = TOPIC_LABELS + header.camera
    elif kind == "class_table":
        header = _class_table(doc)
        expect = TOPIC_CLASS_TABLE + header.id
    elif kind == "source_state":
        header = _event(doc)
        expect = TOPIC_EVENT + header.camera
    else:
        from stream.wire_frames import frame_header  # it builds on this module

        header = frame_header(doc, max_pixels)
        expect = TOPIC_FRAME + header.camera
    if topic != expect:
        raise WireError(f"topic {topic!r:.60} does not match header (expected {expect!r:.60})")
    if kind in ("class_table", "source_state") and memoryview(parts[2]).nbytes:
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
        if not isinstance(header, ClassTable | SourceEvent):  # a frame: its JPEG is checked
            from stream.wire_frames import check_frame_payload  # (not decoded: no cv2 here)

            check_frame_payload(header, parts[2])
        return header
    labels = (payloads or PayloadDecoder()).decode(header, parts[2])
    return LabelMap(header, labels, memoryview(parts[2]).nbytes)
