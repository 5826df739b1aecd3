"""Bounds what one network peer can make the publisher hold: a per-connection inbound budget.

libzmq's XPUB keeps every subscription a peer sends in a trie, for as long as the peer stays
connected, in manual mode too (measured with libzmq 4.3.5: ~250 bytes per unique
60-character subscription, linear in their number), and offers no per-peer limit. An honest
subscriber sends a handful of short subscriptions and ZMTP heartbeat replies: a few hundred
bytes, then ~10 bytes a second. So the guard watches how many bytes each accepted TCP
connection has sent us (the kernel's ``TCP_INFO.tcpi_bytes_received``) and shuts down the
connections that exceed ``budget_bytes + budget_bytes_per_s * age``; libzmq then ends the
peer's pipe and frees its subscriptions. It also shuts down connections beyond
``max_connections``. One message can never be large (the XPUB's ``MAXMSGSIZE``), so the
memory a peer can pin is bounded by the budget plus what arrives between two checks.

Connections are learnt from the socket monitor (``EVENT_ACCEPTED`` / ``EVENT_DISCONNECTED``
carry the fd). Each is identified by its (local, peer) address pair, re-checked before a
shutdown, so a reused fd number is never touched. Linux only (``TCP_INFO``); elsewhere, and
for ``ipc://`` peers (local processes behind file permissions), only ``max_connections``
applies.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

log = logging.getLogger("segstream.publish")

_TCPI_BYTES_RECEIVED = 128  # offset of the u64 in Linux's struct tcp_info (since 4.1)


@dataclass(frozen=True)
class PeerLimits:
    """Per-connection limits (see module docstring). ``max_connections`` 0: no cap."""

    budget_bytes: int = 64 * 1024
    budget_bytes_per_s: int = 256
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.budget_bytes < 1024 or self.budget_bytes_per_s < 0 or self.max_connections < 0:
            raise ValueError(f"peer limits out of range: {self}")


@dataclass
class _Conn:
    key: tuple[object, object] | None  # (local address, peer address); None: not TCP
    since: float
    peer: str


def _addresses(fd: int) -> tuple[tuple[object, object] | None, str, bool]:
    """(local, peer) addresses of ``fd``, a printable peer, whether it is TCP."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None, "?", False
    try:
        tcp = s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
        key = (s.getsockname(), s.getpeername())
        peer = f"{key[1][0]}:{key[1][1]}" if tcp else "local"
        return key, peer, tcp
    except OSError:
        return None, "?", False
    finally:
        s.close()


def bytes_received(fd: int) -> int | None:
    """Bytes the peer of TCP socket ``fd`` has sent us (None where TCP_INFO has no count)."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    finally:
        s.close()
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("<Q", info, _TCPI_BYTES_RECEIVED)[0]


def shutdown_fd(fd: int, key: tuple[object, object] | None) -> bool:
    """Shut down the connection on ``fd`` if it still is the one with addresses ``key``."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        if key is not None and (s.getsockname(), s.getpeername()) != key:
            return False  # the fd number was reused for another socket
        s.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        s.close()


class PeerGuard:
    """Tracks accepted connections and cuts the ones over their limits. Not thread-safe:
    the publisher calls it with its lock held."""

    def __init__(self, limits: PeerLimits) -> None:
        self.limits = limits
        self._conns: dict[int, _Conn] = {}
        self.cut = 0  # connections shut down so far

    def __len__(self) -> int:
        return len(self._conns)

    def accepted(self, fd: int) -> None:
        key, peer, tcp = _addresses(fd)
        if self.limits.max_connections and len(self._conns) >= self.limits.max_connections:
            if shutdown_fd(fd, key):
                self._count_cut(f"refused {peer}: {len(self._conns)} subscribers already "
                                f"connected (max_connections {self.limits.max_connections})")
            return
        self._conns[fd] = _Conn(key if tcp else None, time.monotonic(), peer)

    def disconnected(self, fd: int) -> None:
        self._conns.pop(fd, None)

    def check(self) -> None:
        """Shut down every TCP connection that has sent more than its budget."""
        now = time.monotonic()
        for fd, conn in list(self._conns.items()):
            if conn.key is None:
                continue
            got = bytes_received(fd)
            if got is None:
                continue
            allowed = self.limits.budget_bytes + self.limits.budget_bytes_per_s * (now - conn.since)
            if got > allowed and shutdown_fd(fd, conn.key):
                del self._conns[fd]
                self._count_cut(f"disconnected {conn.peer}: it sent {got} bytes in "
                                f"{now - conn.since:.1f} s (budget {allowed:.0f}); an honest "
                                "subscriber sends a few hundred")

    def _count_cut(self, text: str) -> None:
        self.cut += 1
        if self.cut <= 5 or self.cut % 1000 == 0:
            log.warning("%s (%d cut so far)", text, self.cut)
