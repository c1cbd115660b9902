"""The stub's listening sockets: where a redirected connection was going, the accept
backlog and the RTSPS context.

Part of :mod:`msm.stub.server` (import from there).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from msm.sdk.errors import ConfigError

__all__ = ["SO_ORIGINAL_DST", "listen_backlog", "original_destination", "tls_context"]

SO_ORIGINAL_DST = 80   # linux/netfilter_ipv4.h; the same value for IP6T_SO_ORIGINAL_DST


def original_destination(sock: object, local: tuple[str, int]) -> str:
    """Where a connection redirected into the stub (nftables/iptables REDIRECT) was going.

    Returns ``"ip:port"``, or ``""`` when the connection was not redirected.
    """
    getsockopt = getattr(sock, "getsockopt", None)
    if getsockopt is None:
        return ""
    try:
        if ":" in local[0]:
            raw = getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntoa(raw[4:8])
    except OSError:      # no conntrack entry: a direct connection
        return ""
    if (host, port) == (local[0], local[1]):
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_backlog(path: str = "/proc/sys/net/core/somaxconn") -> int:
    """The kernel's accept queue bound, so a burst of connections is not refused early."""
    try:
        return max(128, min(int(Path(path).read_text().strip()), 65535))
    except (OSError, ValueError):
        return 4096


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The RTSPS server context: the certificate chain and key from files, TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"RTSPS certificate {cert_file} / key {key_file}: {exc}") from exc
    return context
