"""Bridges between RTP over UDP and RTP interleaved in an RTSP TCP connection.

A :class:`UdpPair` is a pair of UDP sockets (RTP, RTCP) with a peer. The stub
uses one per TCP-interleaved track, in either direction:

* viewer side: the proxy sends the viewer's RTP/RTCP to the pair; each datagram
  becomes a ``$``-frame on the viewer's connection; the viewer's RTCP frames go
  back to the proxy from the pair's RTCP socket;
* upstream side: frames from an upstream server that only speaks TCP become
  datagrams to the proxy's ingress; RTCP the proxy sends back becomes frames.

Only the peer may speak to a pair: a datagram from any other address or port (or
any datagram before :meth:`UdpPair.set_peer`) is dropped unread and counted in
``UdpPair.foreign``, as the proxy's own source filter does. Otherwise anyone who
reaches the pair's ports could inject media into a viewer's TCP connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

Address = tuple[str, int]
OnDatagram = Callable[[bytes], None]


def _host_key(host: str) -> str:
    """``host`` in one spelling (IPv4-mapped IPv6 as IPv4, IPv6 compressed), for comparing senders."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _unspecified(host: str) -> bool:
    return _host_key(host) in ("0.0.0.0", "::", "")


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: OnDatagram, pair: UdpPair, rtcp: bool) -> None:
        self.on_datagram = on_datagram
        self.pair = pair
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.pair.from_peer(addr, rtcp=self.rtcp):
            self.on_datagram(data)
        else:
            self.pair.foreign += 1

    def error_received(self, exc: Exception) -> None:
        self.pair.errors += 1


class UdpPair:
    def __init__(self) -> None:
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.peer_rtp: Address | None = None
        self.peer_rtcp: Address | None = None
        self.errors = 0
        #: Datagrams dropped because they came from anyone but the peer (or before it was set).
        self.foreign = 0

    @classmethod
    async def open(cls, host: str, on_rtp: OnDatagram, on_rtcp: OnDatagram) -> UdpPair:
        """A pair on ``host``: RTP on an even port, RTCP on the next one (RFC 3550 11), as
        players' own client ports are, so the control plane can insist on pairs."""
        pair = cls()
        pair.rtp, pair.rtcp = await _bind_pair(
            host, lambda: _Socket(on_rtp, pair, rtcp=False), lambda: _Socket(on_rtcp, pair, rtcp=True),
            "a TCP viewer's bridge")
        return pair

    @property
    def ports(self) -> tuple[int, int]:
        assert self.rtp is not None and self.rtcp is not None
        return self.rtp.get_extra_info("sockname")[1], self.rtcp.get_extra_info("sockname")[1]

    def set_peer(self, host: str, rtp_port: int, rtcp_port: int) -> None:
        """The one sender (and receiver) of this pair: the proxy's ingress pair."""
        self.peer_rtp = (host, rtp_port)
        self.peer_rtcp = (host, rtcp_port)

    def from_peer(self, addr: Address, *, rtcp: bool) -> bool:
        """Whether ``addr`` is the peer's RTP (or RTCP) address.

        The proxy sends a flow's media and reports from its ingress sockets, so the
        peer's ports are exact. Its host is matched unless it was given as a wildcard
        (a proxy bound to every address), in which case the port alone decides.
        """
        peer = self.peer_rtcp if rtcp else self.peer_rtp
        if peer is None or addr[1] != peer[1]:
            return False
        return _unspecified(peer[0]) or _host_key(addr[0]) == _host_key(peer[0])

    def send_rtp(self, data: bytes) -> None:
        if self.rtp is not None and self.peer_rtp is not None:
            self.rtp.sendto(data, self.peer_rtp)

    def send_rtcp(self, data: bytes) -> None:
        if self.rtcp is not None and self.peer_rtcp is not None:
            self.rtcp.sendto(data, self.peer_rtcp)

    def close(self) -> None:
        for transport in (self.rtp, self.rtcp):
            if transport is not None:
                transport.close()
        self.rtp = self.rtcp = None


# Attempts at an even/odd pair before giving up: an odd ephemeral port or a taken
# port + 1 costs one attempt, and 64 misses in a row means the ports are exhausted.
PAIR_ATTEMPTS = 64


async def _bind_pair(host: str, rtp: Callable[[], asyncio.DatagramProtocol],
                     rtcp: Callable[[], asyncio.DatagramProtocol],
                     what: str) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
    """Two UDP sockets on ``host``: an even port and the odd one after it."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(PAIR_ATTEMPTS):
        rtp_t, _ = await loop.create_datagram_endpoint(rtp, local_addr=(host, 0), family=family)
        port = rtp_t.get_extra_info("sockname")[1]
        if port % 2 == 0 and port < 65535:
            try:
                rtcp_t, _ = await loop.create_datagram_endpoint(rtcp, local_addr=(host, port + 1), family=family)
            except OSError:
                rtp_t.close()
                continue
            return rtp_t, rtcp_t
        rtp_t.close()
    raise OSError(f"no free even/odd UDP port pair for {what}")


class _AddrSocket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


class UdpRelay:
    """RTP/RTCP from an upstream server in this pod, relayed to a proxy elsewhere.

    RTSP servers send media to the RTSP client's own address, so when the
    proxy is on another host (its node), the stub receives the media on this
    pair and passes it on; the proxy's receiver reports travel back the same way.
    """

    def __init__(self) -> None:
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.proxy_rtp: Address = ("", 0)
        self.proxy_rtcp: Address = ("", 0)
        self.upstream_rtcp: Address | None = None
        self.upstream_host = ""   # only the upstream server may feed the relay
        self.relayed = 0
        self.foreign = 0          # datagrams from anyone else, dropped unread

    @classmethod
    async def open(cls, host: str, proxy_host: str, proxy_rtp: int, proxy_rtcp: int,
                   upstream_host: str) -> UdpRelay:
        relay = cls()
        relay.upstream_host = upstream_host
        relay.proxy_rtp = (proxy_host, proxy_rtp)
        relay.proxy_rtcp = (proxy_host, proxy_rtcp)
        # RTP/RTCP on an even/odd pair: some servers send RTCP to client_port + 1 regardless.
        relay.rtp, relay.rtcp = await _bind_pair(
            host, lambda: _AddrSocket(relay._from_upstream_rtp), lambda: _AddrSocket(relay._on_rtcp),
            "the upstream relay")
        return relay

    @property
    def ports(self) -> tuple[int, int]:
        assert self.rtp is not None and self.rtcp is not None
        return self.rtp.get_extra_info("sockname")[1], self.rtcp.get_extra_info("sockname")[1]

    def _from_upstream_rtp(self, data: bytes, addr: Address) -> None:
        if addr[0] != self.upstream_host:
            self.foreign += 1
        elif self.rtp is not None:
            self.rtp.sendto(data, self.proxy_rtp)
            self.relayed += 1

    def _on_rtcp(self, data: bytes, addr: Address) -> None:
        if self.rtcp is None:
            return
        if addr == self.proxy_rtcp:
            if self.upstream_rtcp is not None:
                self.rtcp.sendto(data, self.upstream_rtcp)
        elif addr[0] == self.upstream_host:
            self.upstream_rtcp = addr
            self.rtcp.sendto(data, self.proxy_rtcp)
        else:
            self.foreign += 1

    def close(self) -> None:
        for transport in (self.rtp, self.rtcp):
            if transport is not None:
                transport.close()
        self.rtp = self.rtcp = None
