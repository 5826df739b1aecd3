"""Refuse to take over an ``ipc://`` path that another live publisher is bound to.

ZeroMQ's ipc transport unlinks whatever socket file is at the path before it binds, so a
second ``segstream run --publish ipc:///same/path`` would silently steal the path and
leave the first publishing to nobody. Before binding, the path is probed: a socket file
that accepts a connection has a live process behind it (refuse); one that refuses the
connection is a stale leftover of a process that died (safe to reuse).
"""

from __future__ import annotations

import stat
import time
from pathlib import Path


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint; None for other transports, the
    wildcard ``ipc://*`` and Linux abstract sockets (``ipc://@name``: the kernel refuses a
    second bind there by itself)."""
    if not endpoint.startswith("ipc://"):
        return None
    rest = endpoint[len("ipc://"):]
    if not rest or rest == "*" or rest.startswith("@"):
        return None
    return Path(rest)


def live_ipc_owner(endpoint: str, timeout: float = 0.5) -> str | None:
    """Why ``endpoint`` must not be bound (a message naming it and the fix), or None.

    None for non-ipc endpoints, paths that do not exist, and stale socket files whose
    owner is gone (connection refused). A path that exists but is not a socket is
    refused too: binding would delete the user's file.
    """
    path = ipc_path(endpoint)
    if path is None:
        return None
    try:
        mode = path.lstat().st_mode  # a symlink there is "not a socket": never followed
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot bind {endpoint}: {e.strerror} ({path})"
    if not stat.S_ISSOCK(mode):
        return (f"cannot bind {endpoint}: {path} exists and is not a socket; binding would "
                "delete it. Choose another path")
    alive = _answers(endpoint, timeout)
    if alive is None:
        return None  # stale file from a process that died: ZeroMQ replaces it
    return (f"cannot bind {endpoint}: another process is publishing there (the socket "
            "accepts connections). Stop it or choose another path; two publishers cannot "
            "share an ipc path")


def _answers(endpoint: str, timeout: float) -> bool | None:
    """True when a peer accepts a ZeroMQ connection on ``endpoint``, None when refused.

    A ZeroMQ socket is used rather than a bare connect so that a live publisher sees an
    ordinary subscriber come and go, not a failed handshake. Waits at most ``timeout``
    s; no answer in that time counts as alive (the safe side: refuse to take over)."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
                                      | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        connected = False
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_CONNECT_RETRIED and not connected:
                return None
            if event == zmq.EVENT_CONNECTED:
                connected = True  # wait for the handshake to end before hanging up
                deadline = min(deadline, time.monotonic() + 0.2)
            elif event != zmq.EVENT_CONNECT_RETRIED:
                return True  # handshake finished (or was refused, e.g. CURVE): alive
        return True
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
