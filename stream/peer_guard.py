"""Bounds what one network peer can make the publisher hold: a per-connection inbound budget.

libzmq's XPUB keeps every subscription a peer sends in a trie, for as long as the peer stays
connected, in manual mode too (measured with libzmq 4.3.5: ~250 bytes per unique
60-character subscription, linear in their number), and offers no per-peer limit. An honest
subscriber sends a handful of short subscriptions, then ZMTP heartbeat replies (~6 bytes a
second in the clear, ~20 with CURVE). So the guard watches how many bytes each accepted TCP
connection has sent us (the kernel's ``TCP_INFO.tcpi_bytes_received``) and shuts down a
connection that exceeds ``budget_bytes + budget_bytes_per_s * min(age, budget_age_s)``;
libzmq then ends the peer's pipe and frees its subscriptions. The allowance has a ceiling
(~180 KB by default), so what one connection can pin is bounded whatever its age; an honest
subscriber reaches it only after hours of heartbeats, is cut once, and ZeroMQ reconnects it
at once. Connections beyond ``max_connections`` are shut down on accept, and so are those
beyond ``max_per_address`` from one remote address (loopback peers are exempt: they are
this machine's own processes), so that one host cannot take every slot and lock new
subscribers out; a connection that has not finished the ZMTP handshake after
``handshake_s`` is dropped by libzmq (``ZMQ_HANDSHAKE_IVL``; its default is 30 s), so
silent connections cannot hold slots either. One message can never be large (the XPUB's
``MAXMSGSIZE``).

Connections are learnt from the socket monitor (``EVENT_ACCEPTED`` / ``EVENT_DISCONNECTED``
carry the fd). Only a connected TCP socket whose local port is one the publisher bound is
ever touched, identified by its (local, peer) address pair and re-checked before a shutdown,
so a reused fd number (another library's socket, a pipe) is never shut down. Linux only
(``TCP_INFO``); elsewhere only the connection cap applies, and ``ipc://`` peers (local
processes behind the socket file's permissions) are not limited.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("segstream.publish")

_TCPI_BYTES_RECEIVED = 128  # offset of the u64 in Linux's struct tcp_info (since 4.1)

Key = tuple[object, object]  # (local address, peer address)


@dataclass(frozen=True)
class PeerLimits:
    """Per-connection limits (see module docstring). ``max_connections`` and
    ``max_per_address`` 0: no cap."""

    budget_bytes: int = 64 * 1024
    budget_bytes_per_s: int = 32
    budget_age_s: float = 3600.0
    max_connections: int = 64
    max_per_address: int = 16
    handshake_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.budget_bytes < 1024 or self.budget_bytes_per_s < 0
                or self.budget_age_s < 0 or self.max_connections < 0
                or self.max_per_address < 0 or not 0.1 <= self.handshake_s <= 3600):
            raise ValueError(f"peer limits out of range: {self}")

    def allowance(self, age_s: float) -> float:
        return self.budget_bytes + self.budget_bytes_per_s * min(age_s, self.budget_age_s)


@dataclass
class _Conn:
    key: Key
    since: float
    peer: str
    host: str | None  # remote host, None for loopback (not counted per address)


@contextmanager
def _opened(fd: int) -> Iterator[socket.socket | None]:
    """A socket object over a duplicate of ``fd`` (closed on exit), or None if ``fd`` is
    none (closed, or not a socket: no duplicate is leaked either way)."""
    try:
        dup = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        yield None
        return
    with s:
        yield s


def _key(s: socket.socket | None, local_ports: Iterable[int]) -> Key | None:
    """(local, peer) addresses of ``s`` when it is a connected TCP socket on one of
    ``local_ports``; None for anything else."""
    if s is None or s.family not in (socket.AF_INET, socket.AF_INET6) \
            or s.type != socket.SOCK_STREAM:
        return None
    try:
        local, peer = s.getsockname(), s.getpeername()
    except OSError:
        return None
    return (local, peer) if local[1] in set(local_ports) else None


def _received(s: socket.socket) -> int | None:
    """Bytes the peer of TCP socket ``s`` has sent us (None where TCP_INFO has no count)."""
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0]


def _host(peer: object) -> str | None:
    """The remote host of a peer address tuple, IPv4-mapped IPv6 unwrapped; None (not
    counted per address) for a loopback peer, i.e. this machine's own processes, or for
    anything that is not an IP address."""
    try:
        ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])  # type: ignore[index]
    except (ValueError, TypeError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if ip.is_loopback else str(ip)


def _shutdown(s: socket.socket) -> bool:
    try:
        s.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False


def tcp_key(fd: int, local_ports: Iterable[int]) -> Key | None:
    """(local, peer) addresses of ``fd`` when it is a connected TCP socket on one of
    ``local_ports``; None for anything else."""
    with _opened(fd) as s:
        return _key(s, local_ports)


def shutdown_fd(fd: int, key: Key) -> bool:
    """Shut down the connection on ``fd`` if it still is the one with addresses ``key``."""
    with _opened(fd) as s:
        if s is None:
            return False
        try:
            if (s.getsockname(), s.getpeername()) != key:
                return False  # the fd number was reused for another socket
        except OSError:
            return False
        return _shutdown(s)


class PeerGuard:
    """Tracks accepted TCP connections on ``local_ports`` and cuts the ones over their
    limits. Not thread-safe: the publisher calls it with its lock held."""

    def __init__(self, limits: PeerLimits, local_ports: Iterable[int] = ()) -> None:
        self.limits = limits
        self.local_ports = set(local_ports)
        self._conns: dict[int, _Conn] = {}
        self.cut = 0  # connections shut down so far

    def __len__(self) -> int:
        return len(self._conns)

    def accepted(self, fd: int) -> None:
        key = tcp_key(fd, self.local_ports)
        if key is None:
            return  # not one of our TCP connections (ipc://, or already gone)
        peer = f"{key[1][0]}:{key[1][1]}"
        host = _host(key[1])
        why = self._refusal(host)
        if why is None:
            self._conns[fd] = _Conn(key, time.monotonic(), peer, host)
        elif shutdown_fd(fd, key):
            self._count_cut(f"refused {peer}: {why}")

    def _refusal(self, host: str | None) -> str | None:
        """Why a new connection from ``host`` (None: loopback) is over a cap, or None."""
        cap, per = self.limits.max_connections, self.limits.max_per_address
        if cap and len(self._conns) >= cap:
            return f"{len(self._conns)} subscribers already connected (max_connections {cap})"
        if host is None or not per:
            return None
        same = sum(1 for c in self._conns.values() if c.host == host)
        return (f"{same} connections from {host} already (max_per_address {per})"
                if same >= per else None)

    def disconnected(self, fd: int) -> None:
        self._conns.pop(fd, None)

    def check(self) -> None:
        """Shut down every connection over its budget; forget ones that are gone."""
        now = time.monotonic()
        for fd, conn in list(self._conns.items()):
            with _opened(fd) as s:  # one look at the fd: identity, count, and the cut
                if _key(s, self.local_ports) != conn.key:
                    del self._conns[fd]  # closed (a missed DISCONNECTED) or the fd reused
                    continue
                got = _received(s)
                if got is None:
                    continue
                allowed = self.limits.allowance(now - conn.since)
                cut = got > allowed and _shutdown(s)
            if cut:
                del self._conns[fd]
                self._count_cut(f"disconnected {conn.peer}: it sent {got} bytes in "
                                f"{now - conn.since:.1f} s (budget {allowed:.0f}); an honest "
                                "subscriber sends a few hundred")

    def _count_cut(self, text: str) -> None:
        self.cut += 1
        if self.cut <= 5 or self.cut % 1000 == 0:
            log.warning("%s (%d cut so far)", text, self.cut)
