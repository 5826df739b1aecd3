"""The C reference subscriber (clients/c/segsub) reads the wire format bit-exactly.

segsub is compiled here with ``cc`` (skipped when ``cc`` or the libzmq / libzstd headers
are missing), run as a subprocess against a real :class:`stream.publish.Publisher` on
ipc:// and tcp://127.0.0.1 in every encoding, and its printed shape, seq, class-id
histogram and FNV-1a 64 checksum of each decoded map are compared with the maps Python
published. A raw ZeroMQ PUB feeds it malformed messages (each one also refused by
``stream.wire.decode``) to check that it rejects them with the right reason and goes on,
and a differential check requires it to accept exactly what ``stream.wire.decode``
accepts, with the same content, over 400 randomly corrupted messages.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import zmq
import zstandard

from engines.spec import ClassInfo
from stream.publish import Publisher
from stream.wire import (
    ENCODINGS,
    ClassTable,
    LabelsHeader,
    ModelInfo,
    PayloadEncoder,
    SourceEvent,
    WireError,
    class_table_json,
    decode,
    pack_class_table,
    pack_event,
)

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "c"
SOURCES = ("segsub.c", "segwire.c", "json_scan.c")
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")
RUN_TIMEOUT = 10.0  # seconds one client run may take, publishing included

# Names that exercise the C JSON string decoder: spaces, escapes, \u escapes of 2-, 3-
# and 4-byte UTF-8 (the last one a surrogate pair), since the publisher writes ASCII JSON.
TABLE = ClassTable.build(
    [ClassInfo(0, "sky", (128, 128, 128)), ClassInfo(1, "traffic light", (250, 170, 30)),
     ClassInfo(2, "caf\u00e9", (10, 20, 30)), ClassInfo(3, 'say "hi" \\ / tab\t', (0, 0, 0)),
     ClassInfo(4, "\u9053\u8def", (128, 64, 128)), ClassInfo(5, "\U0001f697car", (0, 0, 142))],
    ModelInfo("c-client-test", "fastscnn", (64, 96)))


@cache
def sample_maps() -> tuple[np.ndarray, ...]:
    """(H, W) uint8 maps of awkward sizes and contents; seq s carries map s % len."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 6, (6, 8), dtype=np.uint8)
    blocky = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:45, :61]  # (45, 61)
    camvid_like = np.repeat(np.repeat(rng.integers(0, 6, (9, 12), dtype=np.uint8), 40, 0),
                            40, 1)  # (360, 480)
    camvid_like[100:140, 200:260] = 255  # not a class id, but not reserved by the format
    return (blocky,
            rng.integers(0, 256, (17, 29), dtype=np.uint8),  # noise: worst case for rle
            np.full((30, 40), 3, np.uint8),  # a single run
            np.array([[3, 3, 3, 1], [1, 1, 0, 0]], np.uint8),  # docs/wire-format.md example
            np.array([[200]], np.uint8),
            np.arange(200, dtype=np.uint8).reshape(200, 1),  # runs of length 1
            camvid_like)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@cache
def map_fingerprint(index: int) -> tuple[str, str]:
    """("H W", "HISTOGRAM FNV1A64") of sample map ``index``, as segsub prints them."""
    labels = sample_maps()[index]
    counts = np.bincount(labels.reshape(-1), minlength=256)
    hist = ",".join(f"{v}:{n}" for v, n in enumerate(counts) if n)
    return f"{labels.shape[0]} {labels.shape[1]}", f"{hist} {fnv1a64(labels.tobytes()):016x}"


def expected_labels_line(camera: str, seq: int, encoding: str) -> str:
    size, digest = map_fingerprint(seq % len(sample_maps()))
    return f"labels {camera} {seq} {size} {encoding} {digest}"


def escaped(text: str, keep_space: bool = False) -> str:
    """A string as segsub prints it: bytes < 0x21, 0x7F and backslash as \\xHH."""
    out = []
    for b in text.encode("utf-8"):
        special = b < 0x20 or b in {0x5C, 0x7F} or (b == 0x20 and not keep_space)
        out.append(f"\\x{b:02x}" if special else chr(b))
    return bytes("".join(out), "latin-1").decode("utf-8")


def ipc_endpoint() -> str:
    return f"ipc:///tmp/segstream-cclient-{uuid.uuid4().hex[:12]}.sock"


@pytest.fixture(scope="module")
def segsub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """segsub compiled with the project's warning flags."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: 'cc' is not on PATH (apt-get install gcc)")
    build = tmp_path_factory.mktemp("segsub")
    probe = build / "probe.c"
    probe.write_text("#include <zmq.h>\n#include <zstd.h>\nint main(void) { return 0; }\n")
    if subprocess.run([cc, "-E", str(probe)], capture_output=True, timeout=30,
                      check=False).returncode:
        pytest.skip("zmq.h / zstd.h not found: apt-get install libzmq3-dev libzstd-dev")
    exe = build / "segsub"
    r = subprocess.run([cc, *CFLAGS, "-o", str(exe), *(str(CLIENT / s) for s in SOURCES),
                        "-lzmq", "-lzstd"], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, f"segsub does not compile:\n{r.stderr}"
    return exe


def run_client(exe: Path, args: Sequence[str], step: Callable[[int], None], out: Path,
               pause: float = 0.002) -> tuple[int, list[str]]:
    """Run segsub while calling ``step(i)`` (publish something) until it exits.

    A SUB joins late, so publishing goes on until segsub has its count. stdout and stderr
    share one file (written line by line), so rejections stay in order with the maps.
    """
    with out.open("wb") as sink:
        proc = subprocess.Popen([str(exe), *args, "--timeout", "5"], stdout=sink,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            i = 0
            while proc.poll() is None and time.monotonic() < deadline:
                step(i)
                i += 1
                time.sleep(pause)
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, out.read_text("utf-8").splitlines()


def output_lines(lines: list[str], kind: str) -> list[str]:
    return [line for line in lines if line.startswith(kind + " ")]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_decodes_every_encoding_bit_exact(segsub, tmp_path, transport, encoding):
    endpoint = ipc_endpoint() if transport == "ipc" else "tcp://127.0.0.1:*"
    maps = sample_maps()
    count = 2 * len(maps)
    with Publisher(endpoint, class_table=TABLE, encoding=encoding, sndhwm=1000) as pub:
        def step(i: int) -> None:
            pub.publish_labels("front", i, maps[i % len(maps)], t_capture_ns=time.time_ns(),
                               t_capture_mono_ns=time.monotonic_ns(), dropped=i // 3)
            if i % 5 == 4:
                pub.publish_event("front", "stalled", f"no frame for 2 s \\ try {i}")

        rc, lines = run_client(segsub, [pub.bound_endpoints[0], "--count", str(count)], step,
                               tmp_path / "out.txt")
    assert rc == 0, "\n".join(lines)
    got = output_lines(lines, "labels")
    assert len(got) == count, "\n".join(lines)
    seqs = [int(line.split()[2]) for line in got]
    assert seqs == list(range(seqs[0], seqs[0] + count))  # nothing lost on a local link
    for seq, line in zip(seqs, got, strict=True):
        assert line == expected_labels_line("front", seq, encoding)
    names = " ".join(escaped(c.name) for c in TABLE.classes)
    assert output_lines(lines, "class_table") == [f"class_table {TABLE.id} 6 {names}"]
    for line in output_lines(lines, "event"):
        detail = f"no frame for 2 s \\ try {int(line.rsplit(' ', 1)[1])}"
        assert line == f"event front stalled {escaped(detail, keep_space=True)}"
    assert not [line for line in lines if "rejected message" in line]
    assert lines[-1].startswith(f"segsub: {count} label maps, ")
    assert lines[-1].endswith(" events, 0 rejected")


def test_camera_filter_is_exact(segsub, tmp_path):
    """--camera cam1 subscribes to seg/cam1, which ZeroMQ also matches for cam10."""
    maps = sample_maps()
    with Publisher(ipc_endpoint(), class_table=TABLE, encoding="zstd", sndhwm=1000) as pub:
        def step(i: int) -> None:
            camera = ("cam1", "cam10")[i % 2]
            pub.publish_labels(camera, i, maps[i % len(maps)], t_capture_ns=time.time_ns(),
                               t_capture_mono_ns=time.monotonic_ns())
            pub.publish_event(camera, "running")

        rc, lines = run_client(segsub, [pub.bound_endpoints[0], "--count", "4", "--camera",
                                        "cam1"], step, tmp_path / "out.txt")
    assert rc == 0, "\n".join(lines)
    got = output_lines(lines, "labels")
    assert len(got) == 4
    for line in got:
        seq = int(line.split()[2])
        assert seq % 2 == 0 and line == expected_labels_line("cam1", seq, "zstd")
    events = output_lines(lines, "event")
    assert events and set(events) == {"event cam1 running "}


def test_ignores_camera_frames_published_to_other_clients(segsub, tmp_path):
    """Wire 1.2: a publisher sending camera frames (img/) to a Python client that asked
    for them; segsub, a 1.1 client, subscribes to seg/, cls/, evt/ and reads on unbothered."""
    from stream.frame_pub import FrameOptions
    from stream.frames import Frame
    from stream.subscribe import FrameMessage, Subscriber

    maps = sample_maps()
    with Publisher(ipc_endpoint(), class_table=TABLE, encoding="zstd", sndhwm=1000,
                   frames=FrameOptions(rate=1000)) as pub, \
            Subscriber(pub.bound_endpoints[0], frames=True, timeout=5) as viewer:
        deadline = time.monotonic() + 5
        while not pub.wants_frames("front") and time.monotonic() < deadline:
            time.sleep(0.01)

        def step(i: int) -> None:
            labels = maps[i % len(maps)]
            image = np.full((*labels.shape, 3), i % 256, np.uint8)  # (H, W, 3) BGR
            pub.send(Frame("front", i, time.monotonic_ns(), time.time_ns(), image), labels,
                     time.time_ns(), 0)

        rc, lines = run_client(segsub, [pub.bound_endpoints[0], "--count", "10"], step,
                               tmp_path / "out.txt")
        frames = 0
        while (msg := viewer.receive(0.2)) is not None:
            frames += isinstance(msg, FrameMessage)
        assert frames > 0 and pub.stats().frames_sent >= frames
    assert rc == 0, "\n".join(lines)
    assert len(output_lines(lines, "labels")) == 10
    assert all(line == expected_labels_line("front", int(line.split()[2]), "zstd")
               for line in output_lines(lines, "labels"))
    assert lines[-1].endswith(" 0 rejected"), lines[-1]


# ------------------------------------------------------------------ malformed messages

SMALL = np.array([[0, 0, 1], [2, 2, 2]], np.uint8)  # (2, 3)
DROP = object()  # header override: remove the key


def with_overrides(doc: dict, override: dict) -> dict:
    """``doc`` with keys replaced from ``override``, and removed where it says DROP."""
    return {k: v for k, v in {**doc, **override}.items() if v is not DROP}


def labels_parts(seq: int = 0, encoding: str = "raw", labels: np.ndarray = SMALL,
                 topic: bytes = b"seg/front", payload: bytes | None = None,
                 **override: object) -> list[bytes]:
    header = LabelsHeader(camera="front", seq=seq, t_capture_ns=1, t_capture_mono_ns=2,
                          t_infer_ns=3, t_publish_ns=4, shape=labels.shape, encoding=encoding,
                          class_table=TABLE.id, dropped=0, publisher="c0ffee00")
    doc = with_overrides(header.to_json(), override)
    if payload is None:
        payload = bytes(PayloadEncoder(encoding).encode(labels))
    return [topic, json.dumps(doc).encode(), payload]


def rle(lengths: Sequence[int], values: Sequence[int], count: int | None = None) -> bytes:
    n = len(lengths) if count is None else count
    return (np.uint32(n).astype("<u4").tobytes() + np.asarray(lengths, "<u4").tobytes()
            + np.asarray(values, np.uint8).tobytes())


def table_parts(payload: bytes = b"", **override: object) -> list[bytes]:
    doc = with_overrides(class_table_json(TABLE), override)
    return [f"cls/{TABLE.id}".encode(), json.dumps(doc).encode(), payload]


def event_parts(**override: object) -> list[bytes]:
    doc = {"v": 1, "type": "source_state", "camera": "front", "state": "eos", "detail": "",
           "t_ns": 5}
    doc = with_overrides(doc, override)
    return [b"evt/front", json.dumps(doc).encode(), b""]


def zstd_frame(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(data)


def _flip_checksum(frame: object) -> bytes:
    b = bytearray(bytes(frame))
    b[-1] ^= 0xFF  # the last 4 bytes are the content checksum
    return bytes(b)


def malformed_cases() -> list[tuple[str, list[bytes], str]]:
    """(what, frames, text segsub's rejection must contain). Topics all match a
    subscription: ZeroMQ itself filters the others before they reach a client."""
    good = labels_parts()
    header = good[1]
    classes = class_table_json(TABLE)["classes"]
    return [
        ("one frame", [b"seg/front"], "got 1"),
        ("four frames", [*good, b"extra"], "got 4"),
        ("header not UTF-8", [good[0], header.replace(b"front", b"fr\xffont"), good[2]],
         "not UTF-8 JSON"),
        ("header not JSON", [good[0], header[:-1], good[2]], "not UTF-8 JSON"),
        ("trailing data", [good[0], header + b" 1", good[2]], "trailing data"),
        ("header an array", [good[0], b"[1, 2]", good[2]], "must be a JSON object"),
        ("version 2", labels_parts(v=2), "wire version 2 is not supported"),
        ("no version", labels_parts(v=DROP), "missing key 'v'"),
        ("boolean version", labels_parts(v=True), "'v' must be an integer, got boolean"),
        ("type of another topic", labels_parts(type="class_table"), "does not match topic"),
        ("topic not the camera", labels_parts(topic=b"seg/rear"), "topic 'seg/rear'"),
        ("camera with a space", labels_parts(topic=b"seg/a b", camera="a b"), "camera id"),
        ("camera not ASCII (1.1)", labels_parts(topic="seg/café".encode(), camera="café"),
         "camera id"),
        ("zstd without checksum in 1.1", labels_parts(
            encoding="zstd", payload=zstandard.ZstdCompressor(write_content_size=True)
            .compress(SMALL.tobytes())), "no content checksum"),
        ("zstd checksum mismatch", labels_parts(
            encoding="zstd", payload=_flip_checksum(PayloadEncoder("zstd").encode(SMALL))),
         "corrupt"),
        ("v_minor negative", labels_parts(v_minor=-1), "'v_minor' must be in 0..2^63-1"),
        ("camera with a lone surrogate", labels_parts(camera="\ud800"), "surrogate"),
        ("no seq", labels_parts(seq=DROP), "missing key 'seq'"),
        ("seq twice", [good[0], header[:-1] + b',"seq":9}', good[2]], "repeats key 'seq'"),
        ("publisher twice", [good[0], header[:-1] + b',"publisher":"x"}', good[2]],
         "repeats key 'publisher'"),
        ("negative seq", labels_parts(seq=-1), "'seq' must be in 0..2^63-1"),
        ("seq 2^63", labels_parts(seq=2**63), "'seq' must be in 0..2^63-1"),
        ("fractional time", labels_parts(t_infer_ns=1.5), "'t_infer_ns' must be an integer"),
        ("string dropped", labels_parts(dropped="0"), "'dropped' must be an integer"),
        ("publisher not a string", labels_parts(publisher=7), "'publisher' must be string"),
        ("no class_table", labels_parts(class_table=DROP), "missing key 'class_table'"),
        ("shape of 3", labels_parts(shape=[2, 3, 1]), "'shape' must be [H, W]"),
        ("zero height", labels_parts(shape=[0, 3]), "must be positive"),
        ("too many pixels", labels_parts(shape=[8193, 8192]), "exceeds the limit"),
        ("dtype uint16", labels_parts(dtype="uint16"), "dtype"),
        ("encoding lz4", labels_parts(encoding="lz4", payload=SMALL.tobytes()),
         "unknown encoding"),
        ("raw one byte short", labels_parts(payload=SMALL.tobytes()[:-1]), "raw payload is 5"),
        ("rle run of 0", labels_parts(encoding="rle", payload=rle([6, 0], [1, 2])),
         "has length 0"),
        ("rle runs short", labels_parts(encoding="rle", payload=rle([2, 3], [1, 2])),
         "runs cover 5"),
        ("rle truncated", labels_parts(encoding="rle", payload=rle([6], [1])[:-1]),
         "runs need 9"),
        ("rle no runs", labels_parts(encoding="rle", payload=rle([], [])), "run count 0"),
        ("zstd without content size",
         labels_parts(encoding="zstd", payload=zstd_frame(SMALL.tobytes(), False)),
         "no content size"),
        ("zstd other size", labels_parts(encoding="zstd", payload=zstd_frame(b"\0" * 7)),
         "declares content size 7"),
        ("zstd trailing bytes",
         labels_parts(encoding="zstd", payload=zstd_frame(SMALL.tobytes()) + b"\0"),
         "1 bytes after its frame"),
        ("zstd truncated",
         labels_parts(encoding="zstd", payload=zstd_frame(SMALL.tobytes())[:-1]), "corrupt"),
        ("zstd not zstd", labels_parts(encoding="zstd", payload=b"\0\1\2"), "corrupt"),
        ("class table with payload", table_parts(b"x"), "empty payload"),
        ("class table empty", table_parts(classes=[]), "1..256 classes"),
        ("class ids out of order", table_parts(classes=classes[1:]), "ids must be 0..K-1"),
        ("colour 256", table_parts(classes=[{"id": 0, "name": "a", "color": [0, 256, 0]}]),
         "color must be"),
        ("class table without model", table_parts(model=DROP), "missing key 'model'"),
        ("event with empty state", event_parts(state=""), "must not be empty"),
        ("event without t_ns", event_parts(t_ns=DROP), "missing key 't_ns'"),
    ]


def test_rejects_malformed_messages_and_carries_on(segsub, tmp_path):
    """Each round: class table, event, every malformed case, one good map. Between two
    maps segsub must report every case, in order, with its reason."""
    cases = malformed_cases()
    for what, parts, _ in cases:
        with pytest.raises(WireError):  # the Python reference refuses them too
            decode(parts)
            pytest.fail(f"stream.wire accepted the malformed case {what!r}")
    event = SourceEvent("front", "reconnecting", "rtsp: connection refused", 7)
    maps = sample_maps()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    endpoint = ipc_endpoint()
    pub.bind(endpoint)
    encoder = PayloadEncoder("rle")
    try:
        def step(i: int) -> None:
            pub.send_multipart(pack_class_table(TABLE))
            pub.send_multipart(pack_event(event))
            for _, parts, _ in cases:
                pub.send_multipart(parts)
            good = labels_parts(seq=i, encoding="rle", labels=maps[i % len(maps)],
                                payload=bytes(encoder.encode(maps[i % len(maps)])))
            decode(good)
            pub.send_multipart(good)

        rc, lines = run_client(segsub, [endpoint, "--count", "3"], step, tmp_path / "out.txt",
                               pause=0.01)
    finally:
        pub.close()
        ctx.term()
    assert rc == 0, "\n".join(lines)
    maps_at = [i for i, line in enumerate(lines) if line.startswith("labels ")]
    assert len(maps_at) == 3, "\n".join(lines)
    for first, second in itertools.pairwise(maps_at):
        # segsub prints a class table once, when first seen: after the first map when the
        # SUB joined in the middle of a round (a slow joiner, more likely on a loaded machine)
        between = [line for line in lines[first + 1:second]
                   if not line.startswith("class_table ")]
        assert between[0] == "event front reconnecting rtsp: connection refused"
        rejected = between[1:]
        assert len(rejected) == len(cases), "\n".join(between)
        for line, (what, _, reason) in zip(rejected, cases, strict=True):
            assert line.startswith("segsub: rejected message #"), line
            assert reason in line, f"{what}: {line!r} does not say {reason!r}"
    for i in maps_at:
        seq = int(lines[i].split()[2])
        assert lines[i] == expected_labels_line("front", seq, "rle")
    tables = output_lines(lines, "class_table")
    assert len(tables) == 1 and tables[0].startswith(f"class_table {TABLE.id} 6 sky "), tables


def corrupt(parts: list[bytes], rng: np.random.Generator) -> list[bytes]:
    """One random corruption of one frame: flipped bits, a truncation, inserted bytes or
    a JSON-significant byte. The topic keeps a subscribed prefix so ZeroMQ delivers it."""
    frames = [bytearray(p) for p in parts]
    frame = frames[int(rng.integers(0, len(frames)))]
    op = int(rng.integers(0, 4))
    at = int(rng.integers(0, len(frame) + 1))
    if op == 0 and frame:
        for _ in range(int(rng.integers(1, 4))):
            frame[int(rng.integers(0, len(frame)))] ^= 1 << int(rng.integers(0, 8))
    elif op == 1:
        del frame[at:]
    elif op == 2:
        frame[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    elif frame:
        frame[min(at, len(frame) - 1)] = int(rng.choice(list(b'"\\{[0,\xff')))
    if frames[0][:4] not in (b"seg/", b"cls/", b"evt/"):
        frames[0][:4] = b"seg/"
    return [bytes(f) for f in frames]


def python_verdict(parts: list[bytes], printed_table: list[str]) -> str | None:
    """The line segsub must print for ``parts`` per ``stream.wire.decode``: "REJECT", the
    decoded message, or "REPEAT" (a class table already printed: no line)."""
    try:
        msg = decode(parts)
    except WireError:
        return "REJECT"
    if isinstance(msg, SourceEvent):
        return f"event {escaped(msg.camera)} {escaped(msg.state)} {escaped(msg.detail, True)}"
    if isinstance(msg, ClassTable):
        if printed_table and printed_table[-1] == msg.id:
            return "REPEAT"
        printed_table.append(msg.id)
        names = " ".join(escaped(c.name) for c in msg.classes)
        return f"class_table {escaped(msg.id)} {len(msg.classes)} {names}"
    h, labels = msg.header, msg.labels
    counts = np.bincount(labels.reshape(-1), minlength=256)
    hist = ",".join(f"{v}:{n}" for v, n in enumerate(counts) if n)
    return (f"labels {escaped(h.camera)} {h.seq} {h.shape[0]} {h.shape[1]} {h.encoding} "
            f"{hist} {fnv1a64(labels.tobytes()):016x}")


def test_agrees_with_the_python_decoder_on_corrupted_messages(segsub, tmp_path):
    """Differential check: 400 messages, most randomly corrupted (fixed seed). segsub must
    accept exactly what stream.wire.decode accepts and print the same decoded content."""
    rng = np.random.default_rng(2026)
    seeds = [parts for _, parts, _ in malformed_cases()] + [table_parts(), event_parts()]
    seeds += [labels_parts(encoding=enc, labels=m, payload=bytes(PayloadEncoder(enc).encode(m)))
              for enc in ENCODINGS for m in sample_maps()[:6]]
    # a 1.0 publisher: no v_minor, zstd frames without checksum (both decoders accept)
    seeds += [labels_parts(encoding="zstd", labels=m, v_minor=DROP,
                           payload=zstandard.ZstdCompressor().compress(m.tobytes()))
              for m in sample_maps()[:3]]
    messages = [corrupt(seed, rng) if rng.random() < 0.7 else seed
                for seed in (seeds[i] for i in rng.integers(0, len(seeds), 400))]
    printed_table: list[str] = []
    sentinel = labels_parts(seq=99, encoding="zstd")  # the last map: segsub then exits
    verdicts = [python_verdict(m, printed_table) for m in [*messages, sentinel]]
    expected = [v for v in verdicts if v != "REPEAT"]

    def tally(prefix: str) -> int:
        return sum(v.startswith(prefix) for v in verdicts)

    count = tally("labels ")
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # an XPUB sees the client's subscriptions: send after them
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.SNDHWM, 0)  # no limit: every message reaches the client in order
    endpoint = ipc_endpoint()
    xpub.bind(endpoint)
    subscribed: set[bytes] = set()
    sent: list[bool] = []
    try:
        def step(_: int) -> None:
            while len(subscribed) < 3 and xpub.poll(0):
                subscribed.add(xpub.recv())
            if len(subscribed) == 3 and not sent:
                for parts in [*messages, sentinel]:
                    xpub.send_multipart(parts)
                sent.append(True)

        rc, lines = run_client(segsub, [endpoint, "--count", str(count)], step,
                               tmp_path / "out.txt")
    finally:
        xpub.close()
        ctx.term()
    assert rc == 0, "\n".join(lines[-20:])
    assert sent and subscribed == {b"\x01cls/", b"\x01seg/", b"\x01evt/"}
    got, summary = lines[:-1], lines[-1]
    assert summary == (f"segsub: {count} label maps, {tally('class_table ') + tally('REPEAT')} "
                       f"class tables, {tally('event ')} events, {tally('REJECT')} rejected")
    assert sum(v == "REJECT" for v in expected) > 200  # most corruptions are caught
    assert len(got) == len(expected)
    for i, (want, line) in enumerate(zip(expected, got, strict=True)):
        if want == "REJECT":
            assert line.startswith("segsub: rejected message #"), f"message {i}: {line!r}"
        else:
            assert line == want, f"message {i}"


# ------------------------------------------------------------------ command line


def test_command_line_errors_and_exit_status(segsub):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(segsub), *args], capture_output=True, text=True, timeout=10,
                              check=False)

    r = run("--help")
    assert r.returncode == 0 and "examples:" in r.stdout
    r = run()
    assert r.returncode == 2 and "no ENDPOINT given" in r.stderr
    r = run("tcp://127.0.0.1:5555", "--camera", "a/b")
    assert r.returncode == 2 and "camera id 'a/b' is invalid" in r.stderr
    r = run("tcp://127.0.0.1:5555", "--count", "-1")
    assert r.returncode == 2 and "--count needs a number >= 0" in r.stderr
    r = run("bogus://x")
    assert r.returncode == 1 and "cannot connect to 'bogus://x'" in r.stderr
    r = run(ipc_endpoint(), "--timeout", "0.3")  # nobody publishes there
    assert r.returncode == 3 and "no label map for 0.3 s" in r.stderr


def test_stops_cleanly_on_sigint(segsub):
    proc = subprocess.Popen([str(segsub), ipc_endpoint()], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0  # --count 0 runs until stopped
    assert "0 label maps" in err
