"""Which Host names the HTTP endpoints (preview, ``/metrics``) answer, tornado-free.

A web page the operator opens could otherwise reach a server bound to this machine through
a DNS name of its own that it points here (DNS rebinding): the browser believes it talks
to the page's own site and lets the page read the answers.
"""

from __future__ import annotations

import functools
import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_name: str, listen_host: str) -> bool:
    """Requests must be addressed to an IP, ``localhost``, the address the server listens
    on, or (bound beyond loopback) this machine's own name (``hostname``, its FQDN,
    ``hostname.local``)."""
    name = host_name.lower().rstrip(".")
    if name in ("localhost", listen_host.lower()):
        return True
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        pass
    return not is_loopback(listen_host) and name in _machine_names()


def host_name_of(header: str) -> str:
    """The name part of an HTTP ``Host`` header: ``a:80`` -> ``a``, ``[::1]:80`` -> ``[::1]``."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@functools.cache
def _machine_names() -> frozenset[str]:
    short = socket.gethostname().lower()
    return frozenset({short, socket.getfqdn().lower(), f"{short.split('.')[0]}.local",
                      short.split(".")[0]})
