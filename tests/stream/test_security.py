"""CURVE: keygen layout, allowed clients receive, unknown and plain clients get nothing."""

from __future__ import annotations

import stat
import time

import numpy as np
import pytest

from engines.spec import CAMVID_CLASSES
from stream.cli import main
from stream.publish import Publisher
from stream.security import (
    CurveClientConfig,
    CurveConfig,
    SecurityError,
    generate_keys,
    load_keypair,
    load_public_key,
)
from stream.subscribe import LabelMessage, Subscriber, SubscribeTimeoutError
from stream.wire import ClassTable, ModelInfo

TABLE = ClassTable.build(CAMVID_CLASSES, ModelInfo("camvid-test", "fastscnn", (360, 480)))


@pytest.fixture
def keys(tmp_path):
    """Server + one allowed client in keys/, one stranger's pair elsewhere."""
    d = tmp_path / "keys"
    assert main(["keygen", str(d)]) == 0
    assert main(["keygen", str(d), "--name", "client-laptop"]) == 0
    generate_keys(tmp_path / "other", "client-stranger")
    return d, tmp_path / "other"


def test_keygen_layout_permissions_and_no_overwrite(keys, capsys):
    d, _ = keys
    assert sorted(p.name for p in d.iterdir()) == [
        "allowed_clients", "client-laptop.key", "client-laptop.key_secret", "server.key",
        "server.key_secret"]
    assert [p.name for p in (d / "allowed_clients").iterdir()] == ["client-laptop.key"]
    for secret in ("server.key_secret", "client-laptop.key_secret"):
        assert stat.S_IMODE((d / secret).stat().st_mode) == 0o600
    pub, sec = load_keypair(d / "server.key_secret")
    assert load_public_key(d / "server.key") == pub and len(sec) == 40
    before = (d / "server.key_secret").read_bytes()
    capsys.readouterr()
    assert main(["keygen", str(d)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (d / "server.key_secret").read_bytes() == before
    assert main(["keygen", str(d), "--force"]) == 0
    assert (d / "server.key_secret").read_bytes() != before
    assert main(["keygen", str(d), "--name", "laptop"]) == 2
    assert "'server' or 'client-NAME'" in capsys.readouterr().err



def test_keygen_never_replaces_an_admitted_key_without_force(keys, tmp_path, capsys):
    """An operator's copy of a client's own key in allowed_clients/ survives a keygen of the
    same name (else that client is locked out); a symlink there is never written through."""
    d, _ = keys
    (d / "client-laptop.key").unlink()
    (d / "client-laptop.key_secret").unlink()
    admitted = d / "allowed_clients" / "client-laptop.key"
    theirs = admitted.read_bytes()
    capsys.readouterr()
    assert main(["keygen", str(d), "--name", "client-laptop"]) == 2
    assert "allowed_clients/client-laptop.key already exists" in capsys.readouterr().err
    assert admitted.read_bytes() == theirs
    target = tmp_path / "elsewhere.txt"
    target.write_text("not a key")
    admitted.unlink()
    admitted.symlink_to(target)
    assert main(["keygen", str(d), "--name", "client-laptop", "--force"]) == 0
    assert target.read_text() == "not a key" and not admitted.is_symlink()
    assert load_public_key(admitted) == load_public_key(d / "client-laptop.key")


def test_keygen_that_cannot_admit_the_client_writes_no_key(tmp_path, capsys):
    """allowed_clients a regular file: the key pair was written, then the admission failed
    with a bare errno text, and the next run refused the half-made pair."""
    d = tmp_path / "keys"
    d.mkdir()
    (d / "allowed_clients").write_text("not a folder")
    assert main(["keygen", str(d), "--name", "client-b"]) == 2
    assert "is a file, not the allowed-clients folder" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["allowed_clients"]


def test_a_key_libzmq_refuses_is_an_error_not_a_hang(keys, tmp_path):
    d, _ = keys
    bad = tmp_path / "bad.key_secret"
    text = (d / "server.key_secret").read_text()
    _, sec = load_keypair(d / "server.key_secret")
    bad.write_text(text.replace(sec.decode(), "~" * 40))  # 40 characters, not Z85
    with pytest.raises(SecurityError, match="malformed key"):
        load_keypair(bad)


def test_key_errors_name_the_file_and_the_fix(keys, tmp_path, caplog):
    d, _ = keys
    with pytest.raises(SecurityError, match="holds only a public key"):
        load_keypair(d / "server.key")
    with caplog.at_level("WARNING", logger="segstream.security"):
        assert load_public_key(d / "server.key_secret") == load_public_key(d / "server.key")
    assert "holds a secret key where only a public key is needed" in caplog.text
    with pytest.raises(SecurityError, match="not found"):
        load_public_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(SecurityError, match="not a ZeroMQ certificate"):
        load_public_key(tmp_path / "junk.key")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SecurityError, match="no client public keys"):
        Publisher("tcp://127.0.0.1:*", class_table=TABLE,
                  curve=CurveConfig(d / "server.key_secret", tmp_path / "empty"))


def _publish_until(pub: Publisher, sub: Subscriber, seconds: float) -> list[LabelMessage]:
    """Publish a map every 20 ms for ``seconds``; return what ``sub`` received."""
    got = []
    labels = np.full((30, 40), 3, np.uint8)
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        pub.publish_labels("front", seq, labels, t_capture_ns=time.time_ns(),
                           t_capture_mono_ns=time.monotonic_ns())
        seq += 1
        msg = sub.receive(0.02)
        if isinstance(msg, LabelMessage):
            got.append(msg)
            if len(got) >= 3:
                break
    return got


def test_only_allowed_clients_receive(keys, caplog):
    d, other = keys
    curve = CurveConfig.from_keys_dir(d)
    with Publisher("tcp://127.0.0.1:*", class_table=TABLE, curve=curve) as pub:
        ep = pub.bound_endpoints[0]
        allowed = CurveClientConfig(d / "server.key", d / "client-laptop.key_secret")
        with Subscriber(ep, curve=allowed) as sub:
            got = _publish_until(pub, sub, 5.0)
            assert len(got) == 3 and got[-1].class_table == TABLE
            assert int(got[0].labels[0, 0]) == 3
        stranger = CurveClientConfig(d / "server.key", other / "client-stranger.key_secret")
        with Subscriber(ep, curve=stranger) as sub:
            assert _publish_until(pub, sub, 1.5) == []
            assert sub.class_tables == {}
            assert sub.stats.handshake_failures >= 1
            assert "refused this client's CURVE key" in caplog.text
        with Subscriber(ep, timeout=1.0) as plain:  # no CURVE at all
            assert _publish_until(pub, plain, 1.0) == []
            with pytest.raises(SubscribeTimeoutError, match="security handshake"):
                next(iter(plain))
        assert pub.stats().auth_failures >= 2


def test_subscribe_cli_with_curve_keys(keys, capsys):
    d, _ = keys
    with Publisher("tcp://127.0.0.1:*", class_table=TABLE,
                   curve=CurveConfig.from_keys_dir(d)) as pub:
        ep = pub.bound_endpoints[0]
        assert main(["subscribe", ep, "--curve-server-key", str(d / "server.key")]) == 2
        assert "needs both" in capsys.readouterr().err
        assert main(["subscribe", ep, "--curve-server-key", str(d / "missing.key"),
                     "--curve-client-key", str(d / "client-laptop.key_secret")]) == 2
        assert "not found" in capsys.readouterr().err


def test_curve_clients_pass_the_hostile_peer_limits(keys):
    """The publisher's inbound message limit applies to handshake commands too: a CURVE
    client (INITIATE ~350 bytes with metadata) and a 64-character camera id subscription
    must fit in it."""
    d, _ = keys
    with Publisher("tcp://127.0.0.1:*", class_table=TABLE,
                   curve=CurveConfig.from_keys_dir(d)) as pub:
        allowed = CurveClientConfig(d / "server.key", d / "client-laptop.key_secret")
        cam = "c" * 64
        with Subscriber(pub.bound_endpoints[0], curve=allowed, cameras=[cam]) as sub:
            t_end = time.monotonic() + 5
            got = None
            while got is None and time.monotonic() < t_end:
                pub.publish_labels(cam, 0, np.zeros((4, 4), np.uint8), t_capture_ns=1,
                                   t_capture_mono_ns=1)
                got = sub.receive(0.1)
            assert got is not None and got.camera == cam
        assert pub.stats().peers_cut == 0


def test_a_key_being_written_is_not_read_as_an_admitted_client(tmp_path):
    """keygen writes an admitted key to a hidden temporary first; a publisher starting at
    that moment (or after a killed keygen) must not load it, nor fail on it."""
    from stream.security import allowed_public_keys

    pub, _ = generate_keys(tmp_path, "client-a")
    folder = tmp_path / "allowed_clients"
    (folder / ".client-b.4242.deadbeef.tmp.key").write_bytes(b"")  # half written
    assert allowed_public_keys(folder) == [load_public_key(pub)]
