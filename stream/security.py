"""CURVE encryption and client authentication for the label stream (see docs/security.md).

Key folder written by ``segstream keygen DIR`` (ZeroMQ certificate files, Z85 keys)::

    DIR/server.key                      server public key: give it to every client
    DIR/server.key_secret               server secret key: stays on the vehicle (mode 0600)
    DIR/client-NAME.key, .key_secret    one client's key pair: hand both to that client
    DIR/allowed_clients/*.key           public keys the server accepts (keygen adds each
                                        client it makes; copy in keys made elsewhere)

The publisher is the CURVE server: it holds the server secret key and a ZAP handler
(:class:`zmq.auth.thread.ThreadAuthenticator`) that admits only public keys found in
``allowed_clients``. A subscriber is a CURVE client: it needs the server public key and
its own key pair. Anyone else, including plain (unencrypted) clients, receives nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from engines.atomic import staged

log = logging.getLogger("segstream.security")

SERVER_NAME = "server"
ALLOWED_DIR = "allowed_clients"
_NAME_RE = re.compile(r"^(server|client-[A-Za-z0-9_.-]{1,48})$")


class SecurityError(ValueError):
    """Missing or unusable key material; the message names the file and the fix."""


@dataclass(frozen=True)
class CurveConfig:
    """Publisher (CURVE server) side.

    Attributes:
        server_secret_file: ``server.key_secret`` from ``segstream keygen``.
        allowed_clients_dir: folder of client public keys (``*.key``) to admit.
    """

    server_secret_file: Path
    allowed_clients_dir: Path

    @classmethod
    def from_keys_dir(cls, keys_dir: str | Path) -> CurveConfig:
        """The standard layout of a ``segstream keygen`` folder."""
        d = Path(keys_dir)
        return cls(d / f"{SERVER_NAME}.key_secret", d / ALLOWED_DIR)


@dataclass(frozen=True)
class CurveClientConfig:
    """Subscriber (CURVE client) side.

    Attributes:
        server_public_file: the publisher's ``server.key``.
        client_secret_file: this client's ``client-NAME.key_secret`` (holds both keys).
    """

    server_public_file: Path
    client_secret_file: Path


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``*.key_secret`` certificate file."""
    public, secret = _load(path)
    if secret is None:
        raise SecurityError(f"{path} holds only a public key; pass the matching "
                            "'.key_secret' file (from `segstream keygen`)")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The Z85 public key from a ``*.key`` (or ``*.key_secret``) certificate file; a file
    that also holds the secret key is used with a warning (it never needs to leave the
    machine it was made on: give the matching ``.key``)."""
    public, secret = _load(path)
    if secret is not None:
        log.warning("%s holds a secret key where only a public key is needed; copy the "
                    "matching .key file instead (secret keys never need to be shared)", path)
    return public


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise SecurityError(f"key file {path} not found (create keys with "
                            "`segstream keygen DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise SecurityError(f"{path} is not a ZeroMQ certificate file: {e}") from None
    for key in (public, secret):
        if key is not None and (len(key) != 40 or not _is_z85(key)):
            raise SecurityError(f"{path} holds a malformed key (expected 40 Z85 characters)")
    return public, secret


def _is_z85(key: bytes) -> bool:
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):  # characters outside Z85
        return False


def allowed_public_keys(folder: str | Path) -> list[bytes]:
    """Public keys of every ``*.key`` file in ``folder``; at least one is required."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SecurityError(f"allowed-clients folder {folder} not found: create client keys "
                            f"with `segstream keygen {folder.parent} --name client-NAME`")
    # Hidden files are not keys: a key being written (keygen's temporary) and what
    # pyzmq's own loader skips as well.
    keys = [load_public_key(p) for p in sorted(folder.glob("*.key"))
            if not p.name.startswith(".")]
    if not keys:
        raise SecurityError(f"no client public keys (*.key) in {folder}: no client could "
                            "connect; add one with `segstream keygen ... --name client-NAME`")
    return keys


def check_server_keys(cfg: CurveConfig) -> list[str]:
    """What :func:`start_server` would refuse in ``cfg`` (the server key pair, the allowed
    client keys), as messages, without starting anything; for ``launch --check``."""
    problems = []
    for load in (lambda: load_keypair(cfg.server_secret_file),
                 lambda: allowed_public_keys(cfg.allowed_clients_dir)):
        try:
            load()
        except SecurityError as e:
            problems.append(str(e))
    return problems


def start_server(ctx: zmq.Context, sock: zmq.Socket, cfg: CurveConfig) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server admitting only the allowed keys; call before bind.

    Returns the running authenticator; stop it after closing the socket.
    """
    public, secret = load_keypair(cfg.server_secret_file)
    keys = allowed_public_keys(cfg.allowed_clients_dir)
    try:  # before the authenticator thread: a key libzmq refuses leaves nothing running
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    except zmq.ZMQError as e:
        raise SecurityError(f"{cfg.server_secret_file}: libzmq refused the key ({e})") from None
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("segstream.auth"))
    auth.start()
    try:
        auth.configure_curve(domain="*", location=str(cfg.allowed_clients_dir))
    except BaseException:
        auth.stop()
        raise
    log.info("CURVE on: %d allowed client key(s) from %s", len(keys), cfg.allowed_clients_dir)
    return auth


def configure_client(sock: zmq.Socket, cfg: CurveClientConfig) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``cfg``."""
    sock.curve_serverkey = load_public_key(cfg.server_public_file)
    public, secret = load_keypair(cfg.client_secret_file)
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def generate_keys(keys_dir: str | Path, name: str = SERVER_NAME, *,
                  force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) into ``keys_dir``.

    Client key pairs (``client-NAME``) are also admitted: their public key is copied to
    ``keys_dir/allowed_clients``. Existing keys are kept unless ``force``.
    Returns (public file, secret file).
    """
    if not _NAME_RE.match(name):
        raise SecurityError(f"key name {name!r} must be 'server' or 'client-NAME' "
                            "(NAME: letters, digits, '_', '.', '-')")
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    public = keys_dir / f"{name}.key"
    secret = keys_dir / f"{name}.key_secret"
    admitted = keys_dir / ALLOWED_DIR / public.name if name != SERVER_NAME else None
    for p in (public, secret, admitted):
        if p is not None and (p.exists() or p.is_symlink()) and not force:
            raise SecurityError(f"{p} already exists; pass --force to replace it (clients or "
                                "servers holding the old key will then be refused)")
    if admitted is not None:  # before any key is written: a failure leaves nothing behind
        try:
            admitted.parent.mkdir(mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise SecurityError(f"{admitted.parent} is a file, not the allowed-clients folder: "
                                "move it away and run keygen again") from None
    # Create inside a private (0700) temporary folder, then move into place, so the
    # secret key is never readable by others, not even briefly.
    tmp = Path(tempfile.mkdtemp(prefix=".keygen-", dir=keys_dir))
    try:
        tmp_pub, tmp_sec = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(tmp_sec, 0o600)
        os.chmod(tmp_pub, 0o644)
        os.replace(tmp_sec, secret)
        os.replace(tmp_pub, public)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if admitted is not None:
        # a new file renamed over the path: a symlink there is replaced, not followed
        with staged(admitted) as (tmp_admit,):
            shutil.copyfile(public, tmp_admit)
            os.chmod(tmp_admit, 0o644)
    return public, secret
