"""Camera frames on the subscriber side: :class:`FrameMessage` and :class:`FramePairer`.

``Subscriber(..., frames=True)`` subscribes to ``img/`` and yields a :class:`FrameMessage`
(the decoded BGR image and its JPEG bytes) for every frame the publisher sends
(``segstream run --publish-frames``). Frames are sampled: most label maps have none. A
:class:`FramePairer` matches each frame with the label map of the same camera, ``seq``
and publisher, whichever of the two arrives first:

    pairer = FramePairer()
    for msg in sub:
        if isinstance(msg, (LabelMessage, FrameMessage)) and (pair := pairer.add(msg)):
            labels_msg, frame_msg = pair   # same camera and seq
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from stream.wire import Buffer, WireError
from stream.wire_frames import FrameHeader, check_frame_payload

if TYPE_CHECKING:
    from stream.subscribe import LabelMessage


@dataclass(frozen=True)
class FrameMessage:
    """One received camera frame (times in ns, see docs/wire-format.md).

    Attributes:
        seq / publisher: equal to those of the label map made from the same image.
        image: (h, w, 3) uint8 BGR, decoded from ``jpeg``.
        shape: (h, w) of ``image``; ``source_shape``: (H, W) of the camera frame, which
            is also its label map's shape (scale the image up to it to overlay).
        jpeg: the payload as received (a JPEG file's bytes).
        t_receive_ns / t_receive_mono_ns: wall / monotonic clock at decode time here.
    """

    camera: str
    seq: int
    t_capture_ns: int
    t_capture_mono_ns: int
    t_publish_ns: int
    shape: tuple[int, int]
    source_shape: tuple[int, int]
    publisher: str
    image: np.ndarray
    jpeg: bytes
    t_receive_ns: int
    t_receive_mono_ns: int


def decode_frame(header: FrameHeader, payload: Buffer, t_receive_ns: int,
                 t_receive_mono_ns: int) -> FrameMessage:
    """Check (:func:`stream.wire_frames.check_frame_payload`: bound, CRC-32, markers, size
    declared in the JPEG) and decode one frame's JPEG. Raises :class:`WireError`."""
    import cv2

    check_frame_payload(header, payload)
    jpeg = bytes(payload)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # (h, w, 3) BGR
    if image is None or image.shape != (*header.shape, 3):
        got = "nothing" if image is None else "x".join(map(str, image.shape))
        raise WireError(f"frame JPEG of {header.camera} seq {header.seq} is corrupt: decoded "
                        f"to {got}, header says {header.shape[0]}x{header.shape[1]}x3")
    return FrameMessage(
        camera=header.camera, seq=header.seq, t_capture_ns=header.t_capture_ns,
        t_capture_mono_ns=header.t_capture_mono_ns, t_publish_ns=header.t_publish_ns,
        shape=header.shape, source_shape=header.source_shape, publisher=header.publisher,
        image=image, jpeg=jpeg, t_receive_ns=t_receive_ns, t_receive_mono_ns=t_receive_mono_ns)


_T = TypeVar("_T")


class _Recent(Generic[_T]):
    """The newest ``keep`` items by key, oldest evicted first."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.items: OrderedDict[tuple[str, str, int], _T] = OrderedDict()

    def put(self, key: tuple[str, str, int], item: _T) -> None:
        self.items[key] = item
        self.items.move_to_end(key)
        while len(self.items) > self.keep:
            self.items.popitem(last=False)


class FramePairer:
    """Pairs label maps with the frame of the same camera, ``seq`` and publisher.

    Feed it every :class:`LabelMessage` and :class:`FrameMessage` in arrival order;
    :meth:`add` returns ``(label_message, frame_message)`` as soon as both halves of a
    pair are there (usually the map comes first: the publisher encodes frames on another
    thread). Unpaired messages wait, at most ``keep`` maps and ``keep`` frames per camera
    (the oldest go first: a busy camera never pushes out another's), at most
    ``max_waiting`` maps and ``max_waiting`` frames in all (beyond it the camera with the
    most waiting loses its oldest), for the ``max_cameras`` cameras heard from most
    recently, so memory stays bounded when frames are sampled, whatever camera ids a
    publisher sends.
    """

    def __init__(self, keep: int = 16, max_cameras: int = 64, max_waiting: int = 128) -> None:
        if keep < 1 or max_cameras < 1 or max_waiting < 1:
            raise ValueError(f"keep, max_cameras and max_waiting must be >= 1, got {keep}, "
                             f"{max_cameras}, {max_waiting}")
        self.keep, self.max_cameras, self.max_waiting = keep, max_cameras, max_waiting
        # camera -> (waiting maps, waiting frames), least recently heard from first
        self._waiting: OrderedDict[str, tuple[_Recent[LabelMessage], _Recent[FrameMessage]]] \
            = OrderedDict()
        self._last_frame_ns: dict[str, int] = {}  # camera -> monotonic receive time
        self._interval_ns: dict[str, int] = {}  # camera -> time between its last two frames
        self.paired = 0

    def add(self, msg: LabelMessage | FrameMessage
            ) -> tuple[LabelMessage, FrameMessage] | None:
        """Remember ``msg``; the completed pair if its other half is already here."""
        key = (msg.camera, msg.publisher, msg.seq)
        labels_waiting, frames_waiting = self._camera(msg.camera)
        if isinstance(msg, FrameMessage):
            if (last := self._last_frame_ns.get(msg.camera)) is not None:
                self._interval_ns[msg.camera] = msg.t_receive_mono_ns - last
            self._last_frame_ns[msg.camera] = msg.t_receive_mono_ns
            labels = labels_waiting.items.pop(key, None)
            if labels is None:
                frames_waiting.put(key, msg)
                self._bound(1)
                return None
            pair = (labels, msg)
        else:
            frame = frames_waiting.items.pop(key, None)
            if frame is None:
                labels_waiting.put(key, msg)
                self._bound(0)
                return None
            pair = (msg, frame)
        self.paired += 1
        return pair

    def _bound(self, which: int) -> None:
        """Keep at most ``max_waiting`` maps (``which`` 0) or frames (1) over all cameras:
        the camera with the most waiting gives up its oldest."""
        waiting = [pair[which] for pair in self._waiting.values()]
        while sum(len(r.items) for r in waiting) > self.max_waiting:
            max(waiting, key=lambda r: len(r.items)).items.popitem(last=False)

    def _camera(self, camera: str) -> tuple[_Recent[LabelMessage], _Recent[FrameMessage]]:
        if camera not in self._waiting:
            while len(self._waiting) >= self.max_cameras:
                gone, _ = self._waiting.popitem(last=False)
                self._last_frame_ns.pop(gone, None)
                self._interval_ns.pop(gone, None)
            self._waiting[camera] = (_Recent(self.keep), _Recent(self.keep))
        self._waiting.move_to_end(camera)
        return self._waiting[camera]

    def frames_recent(self, camera: str, now_mono_ns: int, within_s: float = 2.0) -> bool:
        """True when a frame of ``camera`` arrived in the last ``within_s`` seconds, or in
        the last three intervals between its frames if longer (monotonic clock here): its
        label maps are worth holding for their frames."""
        last = self._last_frame_ns.get(camera)
        wait = max(within_s * 1e9, 3 * self._interval_ns.get(camera, 0))
        return last is not None and now_mono_ns - last <= wait
