"""Publisher and Subscriber over real ZeroMQ sockets (tcp loopback and ipc)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

from engines.spec import CAMVID_CLASSES
from stream.publish import Publisher, PublishError
from stream.sub_pump import LABEL
from stream.subscribe import LabelMessage, SubscribeError, Subscriber, SubscribeTimeoutError
from stream.wire import (
    ENCODINGS,
    ClassTable,
    LabelsHeader,
    ModelInfo,
    PayloadEncoder,
    SourceEvent,
    pack_class_table,
    pack_labels,
)

TABLE = ClassTable.build(CAMVID_CLASSES, ModelInfo("camvid-test", "fastscnn", (360, 480)))


def ipc_endpoint() -> str:
    return f"ipc:///tmp/segstream-test-{uuid.uuid4().hex[:12]}.sock"


def endpoint_for(transport: str) -> str:
    return "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint()


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def wait_subscribed(pub: Publisher, n: int = 3) -> None:
    """A subscriber sends 3 subscriptions (cls/, seg/, evt/); once seen, it is attached."""
    wait_until(lambda: pub.stats().subscriptions >= n)


def make_labels(seq: int, shape=(45, 60)) -> np.ndarray:
    rng = np.random.default_rng(seq)
    labels = np.repeat(rng.integers(0, 11, (shape[0], 1), dtype=np.uint8), shape[1], axis=1)
    labels[5:20, 10:40] = seq % 11
    return labels


def publish(pub: Publisher, camera: str, seq: int, labels: np.ndarray, dropped: int = 0) -> None:
    pub.publish_labels(camera, seq, labels, t_capture_ns=time.time_ns(),
                       t_capture_mono_ns=time.monotonic_ns(), dropped=dropped)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_label_maps_arrive_bit_exact_with_metadata(transport, encoding):
    with Publisher(endpoint_for(transport), class_table=TABLE, encoding=encoding) as pub, \
            Subscriber(pub.bound_endpoints[0], timeout=5) as sub:
        wait_subscribed(pub)
        sent = {}
        for seq in range(5):
            labels = make_labels(seq)
            mono, wall = time.monotonic_ns(), time.time_ns()
            pub.publish_labels("front", seq, labels, t_capture_ns=wall, t_capture_mono_ns=mono,
                               t_infer_ns=wall + 5, dropped=seq // 2)
            sent[seq] = (labels, mono, wall)
            time.sleep(0.005)
        for seq in range(5):
            msg = sub.receive()
            assert isinstance(msg, LabelMessage)
            labels, mono, wall = sent[seq]
            assert (msg.camera, msg.seq, msg.shape, msg.encoding) == (
                "front", seq, labels.shape, encoding)
            np.testing.assert_array_equal(msg.labels, labels)
            assert msg.labels.dtype == np.uint8
            assert (msg.t_capture_ns, msg.t_capture_mono_ns, msg.t_infer_ns) == (
                wall, mono, wall + 5)
            assert msg.t_publish_ns >= wall and msg.t_receive_ns >= msg.t_publish_ns
            assert msg.dropped == seq // 2 and msg.lost == 0
            assert msg.publisher == pub.publisher_id
            assert msg.class_table == TABLE and msg.class_table_id == TABLE.id
            assert 0 <= msg.latency_ns(same_host=True) < 5e9
        assert sub.stats.received == 5 and sub.stats.rejected == 0
        assert pub.stats().sent == 5


def test_events_and_camera_filter_is_exact():
    with Publisher(ipc_endpoint(), class_table=TABLE, encoding="rle") as pub, \
            Subscriber(pub.bound_endpoints[0], cameras=["cam1"], timeout=2) as sub:
        wait_subscribed(pub)
        for seq in range(3):  # "cam10" shares the "seg/cam1" prefix but must not pass
            for cam in ("cam1", "cam10", "cam2"):
                publish(pub, cam, seq, make_labels(seq))
            time.sleep(0.005)
        pub.publish_event("cam10", "stalled", "no frames")
        pub.publish_event("cam1", "reconnecting", "rtsp timeout")
        got = [sub.receive() for _ in range(4)]
        assert [m.seq for m in got[:3]] == [0, 1, 2]
        assert all(m.camera == "cam1" for m in got[:3])
        assert isinstance(got[3], SourceEvent)
        assert (got[3].camera, got[3].state, got[3].detail) == (
            "cam1", "reconnecting", "rtsp timeout")
        assert sub.receive(0.3) is None


def test_late_joiner_gets_the_class_table_on_subscription():
    # Periodic re-sends are off: the table must come from the subscription itself.
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0) as pub:
        for seq in range(10):  # publishing before anybody listens
            publish(pub, "front", seq, make_labels(seq))
        time.sleep(0.2)
        with Subscriber(pub.bound_endpoints[0], timeout=5) as late:
            wait_subscribed(pub)
            wait_until(lambda: TABLE.id in late.class_tables or late.receive(0.05) is not None)
            publish(pub, "front", 10, make_labels(10))
            msg = late.receive()
            assert msg.seq == 10 and msg.class_table == TABLE
        assert pub.stats().class_tables >= 1


def test_class_table_is_resent_periodically():
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0.1) as pub:
        wait_until(lambda: pub.stats().class_tables >= 3)
        t0, sent0 = time.monotonic(), pub.stats().class_tables
        wait_until(lambda: pub.stats().class_tables >= sent0 + 3)
        assert time.monotonic() - t0 >= 0.2  # at the interval, not as fast as it can


def test_slow_subscriber_never_stalls_the_publisher():
    ctx = zmq.Context()
    with Publisher("tcp://127.0.0.1:*", class_table=TABLE, encoding="raw") as pub:
        ep = pub.bound_endpoints[0]
        stuck = ctx.socket(zmq.SUB)  # subscribes, then never reads
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.subscribe(b"")
        stuck.connect(ep)
        with Subscriber(ep, timeout=10) as fast:
            wait_subscribed(pub, n=4)
            seqs: list[int] = []
            done = threading.Event()

            def reader() -> None:
                while not done.is_set() or len(seqs) < 1:
                    msg = fast.receive(0.2)
                    if msg is not None:
                        seqs.append(msg.seq)
                    elif done.is_set():
                        return

            t = threading.Thread(target=reader)
            t.start()
            labels = make_labels(0, (120, 160))  # 19 kB raw
            t0 = time.monotonic()
            for seq in range(2000):
                publish(pub, "front", seq, labels)
            burst_s = time.monotonic() - t0
            for seq in range(2000, 2010):  # paced tail: the fast reader must keep up
                publish(pub, "front", seq, labels)
                time.sleep(0.02)
            time.sleep(0.3)
            done.set()
            t.join(10)
        t0 = time.monotonic()
        pub.close()  # queued maps for the stuck subscriber must not hold close() up
        close_s = time.monotonic() - t0
        stuck.close(linger=0)
    ctx.term()
    assert close_s < 5, close_s  # linger is 200 ms; a liveness bound, not a speed
    # A blocking publisher would hang here for good; 30 s is a liveness bound, not a speed.
    assert burst_s < 30
    assert pub.stats().sent == 2010 and pub.stats().errors == 0
    assert any(s >= 2000 for s in seqs), seqs[-10:]
    assert seqs == sorted(seqs)


def test_latest_only_subscriber_gets_only_recent_maps():
    """A consumer that reads once per burst of 12 maps (more than the latest-only queue's
    LATEST_PER_CAMERA): each read gets a recent map, the older ones are dropped here."""
    with Publisher(ipc_endpoint(), class_table=TABLE, encoding="raw",
                   sndhwm=100_000) as pub, \
            Subscriber(pub.bound_endpoints[0], latest_only=True, timeout=5) as sub:
        wait_subscribed(pub)
        labels = make_labels(0, (120, 160))
        lags, sent = [], 0
        for _ in range(20):
            for _ in range(12):  # a burst; bursts rather than a pace, whatever the load
                publish(pub, "front", sent, labels)
                sent += 1
            time.sleep(0.02)  # the consumer is busy meanwhile
            lags.append(sent - 1 - sub.receive().seq)
    # A plain subscriber would lag by ~11 more maps per read (its queue of 100 filling:
    # ~200 by the last reads); latest-only stays within two bursts of the producer.
    assert sorted(lags[-10:])[5] <= 24, lags
    # The older maps were dropped by the subscriber itself (its per-camera queue of
    # LATEST_PER_CAMERA, kept full by the reader thread) or skipped when a read found
    # several; neither is a loss.
    assert sub.stats.skipped + sub.stats.overflow > 50
    assert sub.stats.overflow > 0 and sub.stats.lost == 0, sub.stats


def wait_subscriptions(sock: zmq.Socket, timeout_ms: int = 5000) -> None:
    """Wait until a subscriber's subscriptions reached the XPUB ``sock`` (no slow-joiner
    loss), and read them all."""
    assert sock.poll(timeout_ms), "subscriber never subscribed"
    while sock.poll(200):
        sock.recv()


class RawPublisher:
    """A bare XPUB that sends arbitrary frames (to inject malformed messages)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.endpoint = ipc_endpoint()
        self.sock.bind(self.endpoint)

    def wait_subscribed(self) -> None:
        wait_subscriptions(self.sock)

    def send(self, parts) -> None:
        self.sock.send_multipart([bytes(p) for p in parts])
        time.sleep(0.002)

    def labels(self, seq: int, *, dropped: int = 0, publisher: str = "p1",
               camera: str = "front") -> list:
        labels = make_labels(seq, (8, 10))
        h = LabelsHeader(camera, seq, 1, 2, 3, 4, labels.shape, "zstd", TABLE.id, dropped,
                         publisher)
        return pack_labels(h, PayloadEncoder("zstd").encode(labels))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw_pub():
    p = RawPublisher()
    yield p
    p.close()


def test_malformed_messages_are_rejected_and_good_ones_still_arrive(raw_pub, caplog):
    with Subscriber(raw_pub.endpoint, timeout=5) as sub:
        raw_pub.wait_subscribed()
        good = raw_pub.labels(1)
        header = json.loads(good[1])
        bad = [
            good[:2],  # wrong part count
            [good[0], b"{oops", good[2]],  # bad JSON
            [good[0], json.dumps({**header, "v": 2}).encode(), good[2]],  # wrong version
            [good[0], json.dumps({**header, "shape": [9, 10]}).encode(), good[2]],  # size
            [good[0], json.dumps({**header, "encoding": "rle"}).encode(), good[2]],
            [b"seg/front", json.dumps({k: v for k, v in header.items() if k != "seq"})
             .encode(), good[2]],  # missing key
        ]
        raw_pub.send(pack_class_table(TABLE))
        raw_pub.send(raw_pub.labels(0))
        for parts in bad:
            raw_pub.send(parts)
        raw_pub.send(good)
        raw_pub.send(raw_pub.labels(2))
        got = [sub.receive() for _ in range(3)]
        assert [m.seq for m in got] == [0, 1, 2]
        assert got[2].class_table == TABLE
        np.testing.assert_array_equal(got[1].labels, make_labels(1, (8, 10)))
        assert sub.stats.rejected == len(bad)
        assert "missing key 'seq'" in sub.stats.last_error
    assert "wire version 2 is not supported" in caplog.text


def test_sequence_gaps_count_as_lost_unless_the_source_dropped_them(raw_pub):
    with Subscriber(raw_pub.endpoint, timeout=5) as sub:
        raw_pub.wait_subscribed()
        # seq 2..4 missing: 1 of them dropped at the source (dropped 0 -> 1), 2 lost.
        for seq, dropped in [(0, 0), (1, 0), (5, 1), (6, 1)]:
            raw_pub.send(raw_pub.labels(seq, dropped=dropped))
        lost = [sub.receive().lost for _ in range(4)]
        assert lost == [0, 0, 2, 0]
        raw_pub.send(raw_pub.labels(0, publisher="p2"))  # publisher restart: no loss
        assert sub.receive().lost == 0
        assert (sub.stats.lost, sub.stats.restarts) == (2, 1)
        assert sub.stats.lost_by_camera == {"front": 2}


def test_a_map_received_twice_is_a_duplicate_not_a_restart(raw_pub):
    """A client connected to two endpoints of one publisher (ipc and tcp) gets every map
    twice: the second copy is dropped and counted, not taken for a restarted stream."""
    with Subscriber(raw_pub.endpoint, timeout=5) as sub:
        raw_pub.wait_subscribed()
        for seq in (0, 0, 1, 1, 2, 3, 2, 3, 4):  # back to back, then one connection behind
            raw_pub.send(raw_pub.labels(seq))
        assert [sub.receive().seq for _ in range(5)] == [0, 1, 2, 3, 4]
        assert (sub.stats.duplicates, sub.stats.restarts, sub.stats.lost) == (4, 0, 0)
        raw_pub.send(raw_pub.labels(2, publisher="p2"))  # same seq, new process: a map
        assert sub.receive().seq == 2 and sub.stats.restarts == 1


def test_latest_only_keeps_a_map_that_arrived_twice(raw_pub):
    """Both copies wait at once: the newest-map choice must not fall on the duplicate and
    drop the map itself."""
    with Subscriber(raw_pub.endpoint, timeout=5, latest_only=True) as sub:
        raw_pub.wait_subscribed()
        raw_pub.send(raw_pub.labels(0))
        assert sub.receive().seq == 0
        for _ in range(2):
            raw_pub.send(raw_pub.labels(1))
        wait_until(lambda: sub._pump.waiting(LABEL) == 2)  # both copies wait in the inbox
        assert sub.receive().seq == 1
        assert (sub.stats.duplicates, sub.stats.skipped, sub.stats.restarts) == (1, 0, 0)


def test_subscriber_times_out_cleanly():
    with Subscriber(ipc_endpoint(), timeout=0.2) as sub:
        assert sub.receive() is None
        with pytest.raises(SubscribeTimeoutError, match="no message from ipc://"):
            next(iter(sub))


def test_camera_filter_timeout_says_the_publisher_is_up():
    """A mistyped camera id (`--camera front` against `cam0`) was told to check whether
    the publisher runs: its class table arrived, so the id is what to check."""
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0.05) as pub, \
            Subscriber(pub.bound_endpoints[0], cameras=["front"], timeout=0.3) as sub:
        wait_subscribed(pub)
        publish(pub, "cam0", 0, make_labels(0))
        wait_until(lambda: TABLE.id in sub.class_tables or sub.receive(0.05) is not None)
        with pytest.raises(SubscribeTimeoutError,
                           match=r"camera 'front' .* the publisher is up .* camera id"):
            next(iter(sub))
    # a camera that delivered and then went quiet is a gap, not a wrong id
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0.05) as pub, \
            Subscriber(pub.bound_endpoints[0], cameras=["cam0"], timeout=0.3) as sub:
        wait_subscribed(pub)
        publish(pub, "cam0", 0, make_labels(0))
        assert sub.receive(2.0) is not None
        with pytest.raises(SubscribeTimeoutError, match="no message from ipc://"):
            next(iter(sub))


def test_publisher_rejects_bad_input_and_reports_bind_errors():
    with Publisher("tcp://127.0.0.1:*", class_table=TABLE) as pub:
        with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
            publish(pub, "front", 0, np.zeros((4, 4), np.int64))
        with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
            publish(pub, "front", 0, np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(ValueError, match="camera id"):
            publish(pub, "front/left", 0, np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match="seq must be in"):
            publish(pub, "front", -1, np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match="seq must be an integer"):
            publish(pub, "front", 1.5, np.zeros((4, 4), np.uint8))
        assert pub.publish_labels("front", np.int64(3), np.zeros((4, 4), np.uint8),
                                  t_capture_ns=np.int64(1), t_capture_mono_ns=2)
        with pytest.raises(PublishError, match="cannot bind"):
            Publisher(pub.bound_endpoints[0], class_table=TABLE)
    with pytest.raises(PublishError, match="closed"):
        publish(pub, "front", 0, np.zeros((4, 4), np.uint8))
    with pytest.raises(PublishError, match="cannot bind"):
        Publisher("udp://nowhere", class_table=TABLE)


def test_inproc_with_a_shared_context():
    ctx = zmq.Context()
    with Publisher("inproc://labels", class_table=TABLE, context=ctx) as pub, \
            Subscriber("inproc://labels", context=ctx, timeout=5) as sub:
        wait_subscribed(pub)
        publish(pub, "front", 0, make_labels(0))
        msg = sub.receive()
        np.testing.assert_array_equal(msg.labels, make_labels(0))
    assert not ctx.closed
    ctx.term()


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_subscriber_survives_a_publisher_restart(transport):
    pub = Publisher(endpoint_for(transport), class_table=TABLE)
    ep = pub.bound_endpoints[0]
    with Subscriber(ep, timeout=5) as sub:
        wait_subscribed(pub)
        for seq in range(3):
            publish(pub, "front", seq, make_labels(seq))
        assert [sub.receive().seq for _ in range(3)] == [0, 1, 2]
        pub.close()
        with Publisher(ep, class_table=TABLE) as again:  # same address, seq from 0 again
            # ZeroMQ reconnects by itself; the new connection is attached (and the
            # subscriptions re-sent) while the subscriber is being read, as in real use.
            wait_until(lambda: sub.receive(0.02) is None and again.stats().subscriptions >= 3)
            publish(again, "front", 0, make_labels(0))
            msg = sub.receive()
            assert msg.seq == 0 and msg.publisher == again.publisher_id and msg.lost == 0
        assert sub.stats.restarts == 1 and sub.stats.lost == 0


def _slow_reader(endpoint: str, seconds: float, out) -> None:
    """Subscriber process that sleeps 0.2 s per message (a small queue, fast keepalive)."""
    n = 0
    with Subscriber(endpoint, timeout=0.2, heartbeat_ms=50, rcvhwm=4) as sub:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if isinstance(sub.receive(0.2), LabelMessage):
                n += 1
                time.sleep(0.2)
    out.put(n)


def test_slow_reader_with_a_full_queue_survives():
    """A reader slower than the stream. Reading the SUB socket directly, libzmq's input
    stopped for long stretches, the ZMTP heartbeat timed the live publisher out and the
    reconnect aborted the reader's process within ~1 s (libzmq 4.3.5, ``_input_stopped``
    assertion); the reader thread and TCP keepalive avoid both. The reader lives in its
    own process so that an abort fails this test."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    endpoint, got = ipc_endpoint(), ctx.Queue()
    reader = ctx.Process(target=_slow_reader, args=(endpoint, 4.0, got), daemon=True)
    labels = np.random.default_rng(0).integers(0, 11, (360, 480), dtype=np.uint8)
    with Publisher(endpoint, class_table=TABLE) as pub:
        reader.start()
        seq = 0
        while reader.is_alive() and seq < 3000:
            publish(pub, "cam", seq, labels)
            seq += 1
            time.sleep(0.01)
        reader.join(30)
    assert reader.exitcode == 0, f"slow reader died with exit code {reader.exitcode}"
    assert got.get(timeout=5) >= 5


def test_reader_thread_bounds_the_backlog_and_keeps_events():
    """Nobody reads: the pump keeps the newest ``max_labels`` maps, every event, in order,
    and says how many maps of which camera it dropped."""
    with _pump_on_inproc(max_labels=5) as (pub, pump):
        for i in range(50):
            pub.send_multipart([b"seg/front", b"%d" % i])
            if i == 20:
                pub.send_multipart([b"evt/front", b"down"])
        wait_until(lambda: pump.overflow == 45)
        got, dropped = pump.take(1.0, everything=True)
        assert [bytes(f[1].buffer) for f in got] == [b"down"] + [b"%d" % i for i in range(45, 50)]
        assert dropped == {b"seg/front": 45}
        assert pump.take(0.05, everything=True) == ([], {})


@contextlib.contextmanager
def _pump_on_inproc(**pump_args):
    """A PUB socket and a SocketPump draining a SUB connected to it over inproc."""
    from stream.sub_pump import SocketPump

    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    endpoint = f"inproc://pump-{uuid.uuid4().hex[:8]}"
    pub.bind(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    pump = SocketPump(sub, None, label_topic=b"seg/", **pump_args)
    try:
        time.sleep(0.1)  # subscription reaches the publisher
        yield pub, pump
    finally:
        pump.close()
        sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()


def test_a_burst_of_one_camera_never_pushes_out_another_cameras_map():
    """per_topic (what latest_only uses): four cameras' maps arrive back to back, then a
    burst of one camera: every camera's newest maps still wait, only the bursting
    camera's older ones went."""
    with _pump_on_inproc(max_labels=128, per_topic=2) as (pub, pump):
        for i in range(3):
            for cam in (b"cam0", b"cam1", b"cam2", b"cam3"):
                pub.send_multipart([b"seg/" + cam, b"%d" % i])
        for i in range(3, 10):
            pub.send_multipart([b"seg/cam3", b"%d" % i])
        wait_until(lambda: pump.overflow == 4 + 7)
        got, dropped = pump.take(1.0, everything=True)
        seen = [(bytes(f[0].buffer)[4:], bytes(f[1].buffer)) for f in got]
        assert seen == [(b"cam0", b"1"), (b"cam1", b"1"), (b"cam2", b"1"), (b"cam0", b"2"),
                        (b"cam1", b"2"), (b"cam2", b"2"), (b"cam3", b"8"), (b"cam3", b"9")]
        assert dropped == {b"seg/cam0": 1, b"seg/cam1": 1, b"seg/cam2": 1, b"seg/cam3": 8}

def test_slow_reader_counts_its_own_drops_as_overflow_not_lost():
    """Maps the subscriber's queue dropped are not transport losses, also when the read
    that follows the drops returns a class table (re-sent here every 50 ms). The publisher's
    queue holds every map of the test, so a reader thread starved for a while on a loaded
    machine cannot make ZeroMQ drop one (a real transport loss, which ``lost`` would then
    rightly count)."""
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0.05,
                   sndhwm=100_000) as pub, \
            Subscriber(pub.bound_endpoints[0], rcvhwm=5, timeout=2) as sub:
        wait_subscribed(pub)
        stop = threading.Event()

        def produce() -> None:
            seq = 0
            while not stop.is_set():
                publish(pub, "front", seq, make_labels(seq))
                seq += 1
                time.sleep(0.002)

        t = threading.Thread(target=produce)
        t.start()
        try:
            seqs = []
            for _ in range(30):  # ~25x slower than the producer
                seqs.append(sub.receive().seq)
                time.sleep(0.05)
        finally:
            stop.set()
            t.join()
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > 3 * len(seqs)
    assert sub.stats.overflow > 100
    assert sub.stats.lost == pub.stats().dropped, (sub.stats, pub.stats())


def test_receive_after_close_is_an_error_not_a_hang():
    sub = Subscriber(ipc_endpoint())
    sub.close()
    with pytest.raises(SubscribeError, match="closed"):
        sub.receive(timeout=None)


def test_late_joiner_learns_every_camera_state_once():
    """Wire 1.1: the publisher repeats each camera's current state to new subscribers (and
    with the periodic class table); the Subscriber yields a repeated state only once."""
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=0.2) as pub:
        pub.publish_event("front", "running", "since boot")
        pub.publish_event("rear", "reconnecting", "rtsp: refused")
        with Subscriber(pub.endpoints[0], timeout=2.0) as sub:
            got = []
            t_end = time.monotonic() + 1.5  # several periodic repeats
            while time.monotonic() < t_end:
                msg = sub.receive(0.1)
                if msg is not None:
                    got.append((msg.camera, msg.state))
            assert sorted(got) == [("front", "running"), ("rear", "reconnecting")]
            pub.publish_event("rear", "running")
            msg = sub.receive(2.0)
            assert (msg.camera, msg.state) == ("rear", "running")


def test_a_map_that_fails_to_decode_does_not_move_sequence_tracking(raw_pub):
    """A corrupt payload under a header with a bogus seq and publisher id: rejected, and
    neither a 'restart' nor hundreds of 'lost' maps follow from it."""
    with Subscriber(raw_pub.endpoint, timeout=5) as sub:
        raw_pub.wait_subscribed()
        raw_pub.send(raw_pub.labels(0))
        bad = raw_pub.labels(500, publisher="bogus")
        raw_pub.send([bad[0], bad[1], bad[2][:-1]])  # raw payload one byte short
        raw_pub.send(raw_pub.labels(1))
        raw_pub.send(raw_pub.labels(2))
        got = [sub.receive() for _ in range(3)]
        assert [m.seq for m in got] == [0, 1, 2]
        assert (sub.stats.rejected, sub.stats.restarts, sub.stats.lost) == (1, 0, 0)


def test_a_periodic_class_table_does_not_hold_back_a_new_subscribers(monkeypatch):
    """A subscriber that joins just after a periodic table gets its own at once, not at
    the next period (the periodic send used to start the anti-loop gap between tables
    sent for subscriptions; the gap is made an hour long here to show it)."""
    from stream import publish as publish_module

    monkeypatch.setattr(publish_module, "_RESEND_GAP_S", 3600.0)
    with Publisher(ipc_endpoint(), class_table=TABLE, class_table_interval=1.0) as pub:
        wait_until(lambda: pub.stats().class_tables >= 1)  # the first periodic table
        with Subscriber(pub.bound_endpoints[0], timeout=5) as sub:
            wait_subscribed(pub)
            t_end, seq = time.monotonic() + 0.5, 0  # the next period is ~1 s away
            while TABLE.id not in sub.class_tables and time.monotonic() < t_end:
                publish(pub, "front", seq, make_labels(seq))
                seq += 1
                sub.receive(0.01)
            assert TABLE.id in sub.class_tables
