"""Camera frames on the wire (1.2, topic ``img/``): messages, bounds, publisher, subscriber.

Real parts only: Publisher and Subscriber over ipc://, and a bare XPUB injecting hand-made
(and corrupted) frame messages. The commands (``segstream run --publish-frames``,
``segstream view`` overlays) are in ``test_frame_commands.py``.
"""

from __future__ import annotations

import json
import logging
import re
import zlib

import cv2
import numpy as np
import pytest
import zmq

from stream.frame_pub import FrameOptions, encode_jpeg, scaled_shape
from stream.publish import Publisher
from stream.sub_pump import FRAME, LABEL
from stream.subscribe import (
    FrameMessage,
    FramePairer,
    LabelMessage,
    Subscriber,
    max_frame_bytes,
)
from stream.wire import LabelsHeader, PayloadEncoder, WireError, decode, pack_labels
from stream.wire_frames import FrameHeader, jpeg_geometry, max_jpeg_bytes
from tests.stream import test_pubsub as pubsub_tests
from tests.stream._frames import (
    TABLE,
    camera_image,
    drain,
    ipc,
    scene,
    send_frames,
    wait_until,
)


def frame_parts(seq: int, image: np.ndarray, *, camera: str = "front", scale: float = 1.0,
                jpeg: bytes | None = None, publisher: str = "p1",
                header: dict | None = None) -> list[bytes]:
    """A frame message made by hand (optionally with a given payload or header keys)."""
    shape = scaled_shape(*image.shape[:2], scale)
    if jpeg is None:
        jpeg = encode_jpeg(image, shape, 90).tobytes()
    doc = FrameHeader(camera, seq, 1, 2, 3, shape, image.shape[:2], zlib.crc32(jpeg),
                      publisher=publisher).to_json()
    doc.update(header or {})
    return [f"img/{camera}".encode(), json.dumps(doc).encode(), jpeg]


def labels_parts(seq: int, camera: str = "front", publisher: str = "p1") -> list:
    h = LabelsHeader(camera, seq, 1, 2, 3, 4, (48, 64), "zstd", TABLE.id, 0, publisher)
    return pack_labels(h, PayloadEncoder("zstd").encode(scene()))


class RawPublisher(pubsub_tests.RawPublisher):
    """A bare XPUB sending whatever it is given (to inject malformed frames)."""

    def wait_subscriptions(self, n: int) -> list[bytes]:
        """Wait for ``n`` subscriptions (unsubscriptions, when a subscriber went, skipped)."""
        subs: list[bytes] = []
        while len(subs) < n:
            assert self.sock.poll(5000), f"only {subs} subscribed"
            if (msg := self.sock.recv())[:1] == b"\x01":
                subs.append(msg)
        return subs


@pytest.fixture
def raw_pub():
    p = RawPublisher()
    yield p
    p.close()


# ------------------------------------------------------------------ wire level


def test_frame_message_round_trip_and_pairing_keys():
    parts = frame_parts(7, camera_image(), scale=0.5)
    header = decode(parts)
    assert isinstance(header, FrameHeader)
    assert (header.camera, header.seq, header.shape, header.source_shape) == (
        "front", 7, (24, 32), (48, 64))
    assert header.minor == 2 and header.encoding == "jpeg"
    assert jpeg_geometry(parts[2]) == (24, 32, 3, 8)
    assert json.loads(parts[1])["type"] == "frame"


@pytest.mark.parametrize(("change", "needle"), [
    ({"shape": [50, 64]}, "larger than its source"),
    ({"source_shape": [9000, 9000]}, "exceeds the limit"),
    ({"encoding": "png"}, "unknown frame encoding"),
    ({"crc32": 2**40}, "32-bit"),
    ({"camera": "rear"}, "does not match header"),
    ({"type": "labels"}, "does not match topic"),
    ({"crc32": 12345}, "CRC-32"),
])
def test_bad_frame_headers_are_refused(change, needle):
    with pytest.raises(WireError, match=re.escape(needle)):
        decode(frame_parts(1, camera_image(), header=change))


def test_bad_frame_payloads_are_refused_before_decoding():
    img = camera_image()
    good = encode_jpeg(img, (48, 64), 90).tobytes()
    gray = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[1].tobytes()
    cases = {
        "truncated (no EOI marker": good[: len(good) // 2],
        "not a JPEG (no SOI": b"GIF89a" + good[6:],
        "JPEG is 48x32 but its header says 48x64": encode_jpeg(img[:, :32], (48, 32),
                                                               90).tobytes(),
        "1 components of 8 bits": gray,
        "exceeds the": good[:-2] + b"\0" * max_jpeg_bytes(48, 64) + b"\xff\xd9",
    }
    for needle, jpeg in cases.items():
        with pytest.raises(WireError, match=re.escape(needle)):
            decode(frame_parts(1, img, jpeg=jpeg))


def test_the_size_bound_holds_for_the_worst_jpeg_our_encoder_makes():
    """Random noise at quality 100 is the largest JPEG OpenCV writes for a size; the bound
    must hold for it, and stay under a subscriber's frame limit for the map's size."""
    rng = np.random.default_rng(3)
    for h, w in [(1, 1), (8, 8), (17, 29), (120, 160), (360, 480)]:
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        jpeg = encode_jpeg(noise, (h, w), 100)
        assert jpeg.nbytes <= max_jpeg_bytes(h, w), (h, w, jpeg.nbytes)
        assert max_jpeg_bytes(h, w) <= 4 + 5 * h * w + (64 << 10)


# ------------------------------------------------------------------ publisher


def test_frames_are_encoded_only_while_someone_subscribes_and_old_clients_never_see_them():
    ctx = zmq.Context()
    # An old-style client: explicit seg/, cls/, evt/ prefixes (the doc's minimal client,
    # the C client); and a Subscriber without frames.
    old = ctx.socket(zmq.SUB)
    try:
        with Publisher(ipc(), class_table=TABLE, frames=FrameOptions(rate=1000),
                       context=ctx, sndhwm=1000) as pub:  # no loss to a starved I/O thread
            ep = pub.bound_endpoints[0]
            for prefix in (b"seg/", b"cls/", b"evt/"):
                old.setsockopt(zmq.SUBSCRIBE, prefix)
            old.connect(ep)
            with Subscriber(ep, timeout=2, context=ctx) as plain:
                wait_until(lambda: pub.stats().subscriptions >= 6)
                send_frames(pub, 10)
                assert pub.stats().frames_sent == 0 and not pub.wants_frames("front")
                with Subscriber(ep, frames=True, timeout=2, context=ctx) as viewer:
                    wait_until(lambda: pub.wants_frames("front"))
                    send_frames(pub, 10, start=10)
                    # the encoder keeps the newest frame a camera: one replaced before it
                    # was encoded (a loaded machine) is skipped, never queued
                    wait_until(lambda: pub.stats().frames_sent + pub.stats().frames_skipped
                               == 10)
                    sent = pub.stats().frames_sent
                    got = drain(viewer)
                    assert sent >= 1
                    assert len([m for m in got if isinstance(m, FrameMessage)]) == sent
                wait_until(lambda: not pub.wants_frames("front"))  # libzmq's unsubscription
                send_frames(pub, 10, start=20)
                assert pub.stats().frames_sent == sent
                got = drain(plain)
                assert [m.seq for m in got if isinstance(m, LabelMessage)] == list(range(30))
                assert not any(isinstance(m, FrameMessage) for m in got)
                assert plain.stats.rejected == 0 and plain.stats.frames == 0
            topics = set()
            while old.poll(200):
                topics.add(bytes(old.recv_multipart()[0][:4]))
            assert topics == {b"seg/", b"cls/"}
    finally:
        old.close(linger=0)
        ctx.term()


def test_frames_follow_the_rate_and_pair_with_their_label_maps():
    """A 30 fps camera sampled at 10/s: a frame every third map, each at least 0.75 of a
    period after the previous one (by capture time), its image the camera's, scaled."""
    image = cv2.resize(camera_image(), (160, 120), interpolation=cv2.INTER_NEAREST)
    with Publisher(ipc(), class_table=TABLE, frames=FrameOptions(10, 0.5, 90)) as pub, \
            Subscriber(pub.bound_endpoints[0], frames=True, timeout=2) as sub:
        wait_until(lambda: pub.wants_frames("front"))
        send_frames(pub, 45, image=image)
        pairer, pairs = FramePairer(), []
        for msg in drain(sub):
            if isinstance(msg, LabelMessage | FrameMessage) and (pair := pairer.add(msg)):
                pairs.append(pair)
        stats = pub.stats()
    # seqs 0, 3, ..., 42 are due; one replaced by the next before it was encoded (a very
    # loaded machine) is counted as skipped, never queued
    assert stats.frames_sent + stats.frames_skipped == 15 and stats.frames_sent >= 12
    assert len(pairs) == stats.frames_sent == sub.stats.frames
    gaps = np.diff([f.t_capture_mono_ns for _, f in pairs]) / 1e9
    assert gaps.min() >= 0.075 and abs(np.median(gaps) - 0.1) < 0.01
    expected = cv2.resize(image, (80, 60), interpolation=cv2.INTER_AREA)
    for labels, frame in pairs:
        assert (labels.camera, labels.seq, labels.publisher) == (
            frame.camera, frame.seq, frame.publisher)
        assert labels.t_capture_mono_ns == frame.t_capture_mono_ns
        assert frame.shape == (60, 80) and frame.source_shape == labels.shape == (120, 160)
        assert frame.image.shape == (60, 80, 3) and frame.jpeg[:2] == b"\xff\xd8"
        assert np.abs(frame.image.astype(int) - expected).mean() < 4


def test_the_encoder_is_off_the_senders_path_and_keeps_only_the_newest_frame():
    """Frames handed over faster than they can be encoded replace each other (counted),
    and ``send`` returns without waiting for the encoder."""
    big = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    with Publisher(ipc(), class_table=TABLE, frames=FrameOptions(1000, 1.0, 100)) as pub, \
            Subscriber(pub.bound_endpoints[0], frames=True, timeout=2) as sub:
        wait_until(lambda: pub.wants_frames("front"))
        send_frames(pub, 20, image=big, pause=0, fps=1000)
        wait_until(lambda: (s := pub.stats()).frames_sent + s.frames_skipped == 20, 20)
        stats = pub.stats()
        assert stats.frames_skipped > 0 and stats.frames_sent >= 1
        assert stats.sent == 20 and stats.frame_errors == 0
        frames = [m for m in drain(sub, 1.0) if isinstance(m, FrameMessage)]
        assert frames[-1].seq == 19  # the newest one always gets through


# ------------------------------------------------------------------ subscriber


def test_corrupt_frames_are_counted_logged_once_and_skipped(raw_pub, caplog):
    img = camera_image()
    good = encode_jpeg(img, (48, 64), 90).tobytes()
    mangled = bytearray(good)
    mangled[len(good) // 2: len(good) // 2 + 40] = b"\x13" * 40
    with Subscriber(raw_pub.endpoint, frames=True, timeout=2) as sub:
        raw_pub.wait_subscriptions(4)
        caplog.set_level(logging.WARNING, logger="segstream.subscribe")
        bad = [frame_parts(1, img, header={"crc32": zlib.crc32(good) ^ 1}),  # corrupt in transit
               frame_parts(2, img, jpeg=good[:-100] + b"\xff\xd9"),  # cut, EOI kept
               frame_parts(3, img, jpeg=good[:300] + b"\xff\xd9"),
               frame_parts(4, img, jpeg=bytes(mangled))]  # CRC fine, data not
        for seq in range(6):
            raw_pub.send(labels_parts(seq))
            if 1 <= seq <= 4:
                raw_pub.send(bad[seq - 1])
            elif seq == 5:
                raw_pub.send(frame_parts(5, img))
        got = drain(sub)
    assert [m.seq for m in got if isinstance(m, LabelMessage)] == list(range(6))
    frames = [m for m in got if isinstance(m, FrameMessage)]
    # seq 4 (valid markers and CRC, corrupt entropy data) may decode to a damaged image:
    # that is all a JPEG decoder can tell; the others are refused before decoding.
    assert [f.seq for f in frames] in ([5], [4, 5])
    assert sub.stats.frames_bad == 5 - len(frames) and sub.stats.rejected == 0
    warnings = [r.getMessage() for r in caplog.records if "camera frame" in r.getMessage()]
    assert len(warnings) == 1 and "CRC-32" in warnings[0]


def test_oversize_frames_are_refused_and_the_stream_goes_on(raw_pub):
    img = camera_image()
    with Subscriber(raw_pub.endpoint, frames=True, timeout=2, max_pixels=48 * 64) as sub:
        raw_pub.wait_subscriptions(4)
        raw_pub.send(labels_parts(0))
        # a JPEG over its bound; a frame of a source larger than this client accepts
        raw_pub.send(frame_parts(0, img, jpeg=b"\xff\xd8" + bytes(max_jpeg_bytes(48, 64))))
        raw_pub.send(frame_parts(1, cv2.resize(img, (128, 96))))
        raw_pub.send(labels_parts(1))
        raw_pub.send(frame_parts(1, img))
        got = drain(sub)
        assert sub.stats.frames_bad == 1 and sub.stats.rejected == 1
        assert "exceeds the limit of 3072 pixels" in sub.stats.last_error
    assert [m.seq for m in got if isinstance(m, LabelMessage)] == [0, 1]
    assert [m.seq for m in got if isinstance(m, FrameMessage)] == [1]


def test_a_conforming_frame_always_fits_a_subscribers_frame_limit():
    """libzmq refuses a ZeroMQ frame over ZMQ_MAXMSGSIZE by ending the connection (4.3.5:
    for good, as a protocol error), so a frame message must never be larger than what a
    subscriber accepts for the label maps of the same camera."""
    for max_pixels in (48 * 64, 640 * 480, 8192 * 8192):
        for h, w in [(1, 1), (48, 64), (480, 640), (8192, 8192)]:
            if h * w <= max_pixels:
                assert max_jpeg_bytes(h, w) <= max_frame_bytes(max_pixels)


def test_waiting_frames_are_bounded_apart_from_label_maps(raw_pub):
    with Subscriber(raw_pub.endpoint, frames=True, timeout=2, rcvhwm=5) as sub:
        raw_pub.wait_subscriptions(4)
        for seq in range(20):
            raw_pub.send(frame_parts(seq, camera_image()))
        for seq in range(3):
            raw_pub.send(labels_parts(seq))
        wait_until(lambda: sub._pump.waiting(LABEL) == 3)
        assert sub._pump.waiting(FRAME) == 5
        got = drain(sub)
    assert [m.seq for m in got if isinstance(m, FrameMessage)] == list(range(15, 20))
    assert [m.seq for m in got if isinstance(m, LabelMessage)] == [0, 1, 2]
    assert sub.stats.frames_overflow == 15 and sub.stats.overflow == 0


def test_latest_only_keeps_the_newest_frame_and_its_label_map(raw_pub):
    with Subscriber(raw_pub.endpoint, frames=True, latest_only=True, rcvhwm=50,
                    timeout=2) as sub:
        raw_pub.wait_subscriptions(4)
        for seq in range(10):
            raw_pub.send(labels_parts(seq))
            if seq in (3, 5):
                raw_pub.send(frame_parts(seq, camera_image()))
        wait_until(lambda: sub._pump.waiting(LABEL) + sub._pump.waiting(FRAME) == 12)
        got = drain(sub)
    assert [m.seq for m in got if isinstance(m, LabelMessage)] == [5, 9]
    assert [m.seq for m in got if isinstance(m, FrameMessage)] == [5]
    assert sub.stats.skipped == 8 and sub.stats.frames_overflow == 1 and sub.stats.lost == 0


def test_pairer_matches_either_order_and_forgets_the_oldest():
    def lab(seq: int, publisher: str = "p") -> LabelMessage:
        return LabelMessage("front", seq, 0, 0, 0, 0, (2, 2), "raw", "t", 0, publisher,
                            np.zeros((2, 2), np.uint8), None, 0, 0, 4)

    def frm(seq: int, publisher: str = "p", t: int = 0) -> FrameMessage:
        return FrameMessage("front", seq, 0, 0, 0, (1, 1), (2, 2), publisher,
                            np.zeros((1, 1, 3), np.uint8), b"", 0, t)

    pairer = FramePairer(keep=2)
    assert pairer.add(lab(1)) is None and pairer.add(frm(1))[0].seq == 1  # map first
    assert pairer.add(frm(2, t=10)) is None and pairer.add(lab(2))[1].seq == 2  # frame first
    assert pairer.add(lab(3, "other")) is None and pairer.add(frm(3)) is None  # restart
    for seq in (4, 5, 6):
        pairer.add(lab(seq))
    assert pairer.add(frm(4)) is None and pairer.add(frm(6)) is not None  # 4 was evicted
    assert pairer.paired == 3
    assert pairer.frames_recent("front", 10 + 1_000_000_000)
    assert not pairer.frames_recent("front", 10 + 3_000_000_000)
    assert not pairer.frames_recent("rear", 0)


def test_pairer_keeps_maps_per_camera_and_bounds_the_cameras():
    """A busy camera's unpaired maps never push out another camera's; a publisher
    spraying camera ids cannot grow the pairer beyond max_cameras."""
    def lab(cam: str, seq: int) -> LabelMessage:
        return LabelMessage(cam, seq, 0, 0, 0, 0, (2, 2), "raw", "t", 0, "p",
                            np.zeros((2, 2), np.uint8), None, 0, 0, 4)

    def frm(cam: str, seq: int) -> FrameMessage:
        return FrameMessage(cam, seq, 0, 0, 0, (1, 1), (2, 2), "p",
                            np.zeros((1, 1, 3), np.uint8), b"", 0, 0)

    pairer = FramePairer(keep=4, max_cameras=3)
    pairer.add(lab("slow", 1))
    for seq in range(100):  # eight cameras' worth of maps from one busy camera
        pairer.add(lab("busy", seq))
    assert pairer.add(frm("slow", 1)) is not None  # still waiting for its frame
    assert pairer.add(frm("busy", 99)) is not None and pairer.add(frm("busy", 90)) is None
    pairer.add(lab("slow", 2))
    for cam in ("a", "b"):  # two new cameras: "busy", heard from least recently, goes
        pairer.add(lab(cam, 1))
    assert pairer.add(frm("slow", 2)) is not None and pairer.add(frm("busy", 98)) is None

    capped = FramePairer(keep=10, max_waiting=12)  # three cameras, 12 maps in all
    for seq in range(10):
        capped.add(lab("busy", seq))
    for cam in ("x", "y"):
        for seq in range(3):
            capped.add(lab(cam, seq))
    # the busy camera gave up its oldest four; the quiet ones kept all of theirs
    assert capped.add(frm("busy", 3)) is None and capped.add(frm("busy", 4)) is not None
    assert all(capped.add(frm(cam, 0)) is not None for cam in ("x", "y"))
