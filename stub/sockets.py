"""The stub's listening sockets: where a redirected connection was going, the accept
backlog and the RTSPS context.

Part of :mod:`msm.stub.server` (import from there).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from msm.runtime.hostport import format_host_port
from msm.sdk.errors import ConfigError

__all__ = ["SO_ORIGINAL_DST", "WILDCARD_HOSTS", "listen_backlog", "listening_urls", "original_destination", "serve",
           "tls_context"]

log = logging.getLogger(__name__)

Accept = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Listen hosts that mean "every address": the stub then serves IPv4 and IPv6 on one port.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
# Errors of binding [::] that mean this host or pod has no IPv6 (the stub serves IPv4 only).
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
# Port 0 with two families: the port the kernel picks for IPv4 may be taken on IPv6; tries.
_PORT_TRIES = 8

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


async def serve(accept: Accept, host: str, port: int, **kwargs: object) -> list[asyncio.Server]:
    """Listen on ``host``:``port``; a wildcard host (:data:`WILDCARD_HOSTS`) on both families.

    A wildcard gets ``0.0.0.0`` and ``[::]`` (``IPV6_V6ONLY``, so the two never collide) on
    one port (port 0: the one the kernel picks for IPv4). Where IPv6 is off, IPv4 only, said
    in one log line. ``kwargs`` go to :func:`asyncio.start_server` (``ssl``, ``backlog``...).
    """
    if host not in WILDCARD_HOSTS:
        return [await asyncio.start_server(accept, host, port, reuse_address=True, **kwargs)]  # type: ignore[arg-type]
    servers: list[asyncio.Server] = []
    socks = _wildcard_sockets(port)
    try:
        for sock in socks:
            servers.append(await asyncio.start_server(accept, sock=sock, **kwargs))  # type: ignore[arg-type]
    except BaseException:
        for server in servers:
            server.close()
        for sock in socks:
            sock.close()
        raise
    return servers


def listening_urls(scheme: str, listeners: list[asyncio.Server]) -> str:
    """``rtsp://0.0.0.0:8554/ and rtsp://[::]:8554/``: where ``listeners`` accept."""
    return " and ".join(f"{scheme}://{format_host_port(*sock.getsockname()[:2])}/"
                        for server in listeners for sock in server.sockets)


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _wildcard_sockets(port: int) -> list[socket.socket]:
    """``0.0.0.0`` and ``[::]`` bound on one port (or ``0.0.0.0`` alone without IPv6)."""
    for attempt in range(_PORT_TRIES):
        v4 = _bound(socket.AF_INET, "0.0.0.0", port)
        try:
            v6 = _bound(socket.AF_INET6, "::", v4.getsockname()[1])
        except OSError as exc:
            if exc.errno in _NO_IPV6:
                log.info("no IPv6 here (%s): listening on 0.0.0.0:%d only", exc.strerror or exc,
                         v4.getsockname()[1])
                return [v4]
            v4.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt + 1 < _PORT_TRIES:
                continue     # the kernel's pick for IPv4 is taken on IPv6: another port
            raise
        return [v4, v6]
    raise AssertionError("unreachable")


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
