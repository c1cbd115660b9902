"""The ingress port pairs of flows: RTP on an even port, RTCP on the next one (RFC 3550 11)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Container

from msm.sdk.errors import ResourceExhausted

__all__ = ["PortRangeExhausted", "bind_listen", "bind_pair", "bind_pairs", "never_fragment", "path_mtu"]


class PortRangeExhausted(ResourceExhausted):
    """No free even/odd port pair is left in the configured range."""

    #: The last bind error (0: none was tried); EADDRINUSE: taken, anything else: the host cannot be bound.
    errno_seen = 0


log = logging.getLogger(__name__)

# Ports free on the flow's host but taken on the other family's one: pairs tried before giving up.
MAX_ALT_TRIES = 16


Pair = tuple[socket.socket, socket.socket]


def bind_pairs(host: str, alt_host: str | None, low: int, high: int, start: int,
               avoid: Container[int] = ()) -> tuple[Pair, Pair | None]:
    """:func:`bind_pair` on ``host``, and on ``alt_host`` (the other IP family) on the same two ports.

    Legs of the other family are sent from the second pair, and viewers answer to the same
    ``server_port`` in either family. Without ``alt_host``, or where it cannot be bound at all
    (no IPv6 here), the second pair is ``None``.
    """
    if alt_host is None:
        return bind_pair(host, low, high, start, avoid), None
    taken: set[int] = set()     # free on host, not on alt_host
    for _ in range(MAX_ALT_TRIES):
        pair = bind_pair(host, low, high, start, _Either(avoid, taken))
        port = pair[0].getsockname()[1]
        try:
            return pair, bind_pair(alt_host, port, port + 1, 0)
        except PortRangeExhausted as exc:
            for sock in pair:
                sock.close()
            if exc.errno_seen not in (0, errno.EADDRINUSE):
                return bind_pair(host, low, high, start, avoid), None
            taken.update((port, port + 1))
    # Ports free on host keep being taken on alt_host: serve host's family rather than nothing.
    log.warning("no RTP/RTCP port pair in %d-%d free on both %s and %s: a flow of %s only", low, high, host,
                alt_host, host)
    return bind_pair(host, low, high, start, avoid), None


# linux/in.h and linux/in6.h (Python's socket module names none of them).
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24


def never_fragment(sock: socket.socket) -> None:
    """Datagrams over the path MTU are refused (EMSGSIZE, counted per leg), never fragmented:
    a fragment lost loses the whole packet, and a leg through a smaller MTU must show."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def path_mtu(addr: tuple[str, int]) -> int:
    """The path MTU towards ``addr`` as the kernel knows it now (its route, and what ICMP
    "packet too big" taught it); 0 when there is no route."""
    v6 = ":" in addr[0]
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(addr)     # a route lookup; nothing is sent
            return int(probe.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, IPV6_MTU if v6 else IP_MTU))
        except OSError:
            return 0


class _Either(Container[int]):
    def __init__(self, *sets: Container[int]) -> None:
        self.sets = sets

    def __contains__(self, item: object) -> bool:
        return any(item in s for s in self.sets)


def bind_pair(host: str, low: int, high: int, start: int,
              avoid: Container[int] = ()) -> tuple[socket.socket, socket.socket]:
    """Bind an RTP/RTCP pair (even, even+1) in ``[low, high]``, starting near ``start``.

    Ports in ``avoid`` (where legs on this host send to) are never taken: a flow
    bound there would receive its own or another flow's output, a loop.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    errno_seen = 0
    span = (high - low + 1) // 2
    if span <= 0:
        raise PortRangeExhausted(f"empty port range {low}-{high}")
    first = (low + 1) & ~1
    for i in range(span):
        port = first + 2 * ((start + i) % span)
        if port + 1 > high or port in avoid or port + 1 in avoid:
            continue
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                for s in (rtp, rtcp):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError as exc:
            errno_seen = exc.errno or errno_seen
            rtp.close()
            rtcp.close()
            continue
        for s in (rtp, rtcp):
            s.setblocking(False)
            never_fragment(s)
            # Room for bursts (an I-frame is dozens of packets at once).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        return rtp, rtcp
    exhausted = PortRangeExhausted(f"no free RTP/RTCP port pair in {low}-{high} on {host}")
    exhausted.errno_seen = errno_seen
    raise exhausted


# linux/in.h: a socket bound to a port receives the groups IT joined only, not every
# group any socket of the host joined on that port (Linux's default, IP_MULTICAST_ALL=1).
IP_MULTICAST_ALL = 49
IP_ADD_SOURCE_MEMBERSHIP = 39   # (typeshed lacks it)


def bind_listen(address: str, port: int, interface: str, source: str = "") -> Pair:
    """The RTP/RTCP pair of a flow whose upstream sends to a fixed ``address``:``port`` (and
    ``port + 1``): an SDP file's stream. A multicast ``address`` is joined on ``interface``
    (its address; loopback or unspecified: the kernel's choice), from ``source`` only when
    given (SSM, RFC 4607) and from any sender otherwise; a unicast one is bound as it is.
    IPv4 only.
    """
    group = ipaddress.IPv4Address(address)
    pair: list[socket.socket] = []
    try:
        for p in (port, port + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            pair.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # other receivers of the group
            sock.bind((address, p))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            never_fragment(sock)
            if group.is_multicast:
                _join(sock, group, interface, source)
        return pair[0], pair[1]
    except (OSError, ValueError):
        for sock in pair:
            sock.close()
        raise


def _join(sock: socket.socket, group: ipaddress.IPv4Address, interface: str, source: str) -> None:
    sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
    local = ipaddress.IPv4Address(interface) if interface else ipaddress.IPv4Address(0)
    if local.is_loopback:
        local = ipaddress.IPv4Address(0)
    if source:   # struct ip_mreq_source: group, interface, source
        mreq = group.packed + local.packed + ipaddress.IPv4Address(source).packed
        sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
    else:        # struct ip_mreq: group, interface
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group.packed + local.packed)
