"""The two ends of a QUIC tunnel that carries one node-to-node RTP leg (RFC 9221 DATAGRAM frames).

::

    engine ──UDP──▶ QuicLegSender ══QUIC (mutual TLS, ALPN msm-rtp)══▶ QuicLegReceiver ──UDP──▶ engine
    (node A, loopback: rtp_port/rtcp_port)                  (node B, delivers to the leg's ports)

Each RTP or RTCP packet travels as one DATAGRAM frame: a channel byte (0 RTP, 1 RTCP) and the
packet, unchanged. Datagrams are unreliable and unordered on the wire like UDP, so loss repair
(FEC, RTX) works through the tunnel as it does over UDP; QUIC adds encryption, peer
authentication and one connection that crosses NAT (the receiving end only listens).
RTCP that the receiving node's engine sends back (receiver reports, to the socket it got RTCP
from) travels back the same way to the sending engine's RTCP socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, HandshakeCompleted, QuicEvent

from msm.runtime.backoff import Backoff
from msm.sdk.errors import MsmError, Unauthorized
from msm.security.tls import TlsFiles

from . import tls

log = logging.getLogger(__name__)

Address = tuple[str, int]
RTP, RTCP = 0, 1
_CHANNEL = (b"\x00", b"\x01")
_MIN_SIZE = (12, 8)   # an RTP fixed header; an RTCP header with one SSRC
# UDP payload of the QUIC packets (the path MTU less IP and UDP headers): 1452 fits IPv6 over
# a 1500-byte link. QUIC's short header, AEAD tag and the DATAGRAM frame's type and length take
# OVERHEAD bytes, the channel byte one more: the largest RTP packet carried is mtu - 32.
DEFAULT_MTU = 1452
OVERHEAD = 31
# DATAGRAM frames wait in aioquic's queue only while the congestion window is full. Media older
# than the playout delay is worthless and a queue that grows only adds delay, so past this many
# (about 50 ms at 10k packets/s) a packet is dropped and counted instead.
MAX_PENDING = 512
# Bytes asyncio may hold for a local UDP socket the kernel did not take at once (normally 0 on
# loopback); past this a packet is dropped and counted, the receiving engine is not keeping up.
MAX_WRITE_BUFFER = 256 * 1024
# Connections a receiving end keeps at once: one sending node per leg, a few more so that a
# reconnecting sender is not refused while its old connection waits out its idle timeout.
MAX_PEERS = 4
# Kernel receive buffer of every socket of the tunnel: the engine sends in bursts and an end
# shares its event loop with the QUIC work, so a 100 ms stall at 20k packets/s must fit
# (the kernel caps it at net.core.rmem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
IDLE_TIMEOUT = 5.0   # a silent peer is given up after this; the sender pings at a third of it


@dataclass(slots=True)
class Counters:
    """What one end saw; all packets, none of them bytes."""

    received: int = 0      # packets from the local engine, accepted (sender; reverse RTCP at the receiver)
    foreign: int = 0       # local packets from an address that is not the engine's: dropped
    tunneled: int = 0      # DATAGRAM frames handed to QUIC
    down: int = 0          # dropped: no connection up
    congested: int = 0     # dropped: QUIC's send queue full (MAX_PENDING)
    too_large: int = 0     # dropped: larger than a datagram on this path can carry, either direction
    garbage: int = 0       # dropped: a datagram that is no channel byte and RTP/RTCP packet
    unauthenticated: int = 0   # dropped: a datagram before the peer's identity was checked
    delivered_rtp: int = 0     # to the local engine
    delivered_rtcp: int = 0
    overflow: int = 0      # dropped: the local socket's buffer was full (MAX_WRITE_BUFFER)
    connects: int = 0      # connections up (sender) / peers accepted (receiver)
    refused: int = 0       # peers refused: certificate or identity not a proxy of the mesh, or too many

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def check_datagram(data: bytes, max_packet: int, counters: Counters) -> int | None:
    """The channel of a tunnel datagram, or None (counted) when it must be dropped."""
    if len(data) > max_packet + 1:
        counters.too_large += 1
        return None
    channel = data[0] if data else 255
    if channel > RTCP or len(data) < 1 + _MIN_SIZE[channel] or data[1] >> 6 != 2:
        counters.garbage += 1
        return None
    return channel


class _Local(asyncio.DatagramProtocol):
    """A loopback UDP socket of one channel; hands each packet to ``sink``."""

    def __init__(self, sink: Callable[[int, bytes, Address], None], channel: int) -> None:
        self.sink = sink
        self.channel = channel
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.sink(self.channel, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass   # ICMP port unreachable from a local engine that is not up yet: UDP semantics

    def send(self, data: bytes, addr: Address, counters: Counters) -> bool:
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() > MAX_WRITE_BUFFER:  # type: ignore[attr-defined]
            counters.overflow += 1
            return False
        transport.sendto(data, addr)
        return True


def _grow(transport: asyncio.BaseTransport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)


async def _bind(host: str, port: int, sink: Callable[[int, bytes, Address], None], channel: int) -> _Local:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Local(sink, channel), local_addr=(host, port))
    _grow(transport)
    return protocol


def _send(protocol: QuicConnectionProtocol, frame: bytes, counters: Counters) -> None:
    quic = protocol._quic
    if len(quic._datagrams_pending) >= MAX_PENDING:
        counters.congested += 1
        return
    quic.send_datagram_frame(frame)
    protocol.transmit()
    counters.tunneled += 1


class _ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, end: QuicLegSender, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.end = end
        self.reason = ""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.end._from_peer(event.data)
        elif isinstance(event, ConnectionTerminated):
            self.reason = event.reason_phrase or f"error {event.error_code:#x}"
        super().quic_event_received(event)

    def keepalive(self) -> None:
        self._quic.send_ping(0)
        self.transmit()


class QuicLegSender:
    """The sending node's end: loopback UDP in from the engine, QUIC datagrams out to ``peer``.

    Only packets from ``sources`` (the engine's leg socket addresses) are accepted. The QUIC
    connection is to the proxy of ``peer_node`` (its certificate must say so) and is opened again,
    with back-off, whenever it fails; packets that arrive while it is down are dropped and counted
    (no queue: media that waited for a reconnect is stale).
    """

    def __init__(self, files: TlsFiles, peer: Address, peer_node: str, sources: Iterable[Address], *,
                 host: str = "127.0.0.1", rtp_port: int = 0, rtcp_port: int = 0, mtu: int = DEFAULT_MTU,
                 idle_timeout: float = IDLE_TIMEOUT, backoff: Backoff | None = None) -> None:
        self.files = files
        self.peer = peer
        self.peer_node = peer_node
        self.sources = set(sources)
        self.host = host
        self._ports = (rtp_port, rtcp_port)
        self.mtu = mtu
        self.max_packet = mtu - OVERHEAD - 1
        self.idle_timeout = idle_timeout
        self.backoff = backoff or Backoff(first=0.2, maximum=5.0, jitter=0.2)
        self.counters = Counters()
        self.last_error = ""
        self._local: list[_Local] = []
        self._protocol: _ClientProtocol | None = None
        self._attempt: _ClientProtocol | None = None   # the latest connection, up or not
        self._rtcp_peer: Address | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def rtp_port(self) -> int:
        return int(self._local[RTP].transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]

    @property
    def rtcp_port(self) -> int:
        return int(self._local[RTCP].transport.get_extra_info("sockname")[1])  # type: ignore[union-attr]

    async def start(self) -> None:
        tls.configuration(self.files, is_client=True, mtu=self.mtu, idle_timeout=self.idle_timeout,
                          peer_node=self.peer_node)   # unusable TLS files: one clear error now
        for channel, port in enumerate(self._ports):
            self._local.append(await _bind(self.host, port, self._from_engine, channel))
        self._task = asyncio.create_task(self._run(), name=f"quic-leg-to-{self.peer_node}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for local in self._local:
            if local.transport is not None:
                local.transport.close()
        self._local.clear()

    def _from_engine(self, channel: int, data: bytes, addr: Address) -> None:
        counters = self.counters
        if addr not in self.sources:
            counters.foreign += 1
            return
        counters.received += 1
        if channel == RTCP:
            self._rtcp_peer = addr
        if len(data) > self.max_packet:
            counters.too_large += 1
            return
        protocol = self._protocol
        if protocol is None:
            counters.down += 1
            return
        _send(protocol, _CHANNEL[channel] + data, counters)

    def _from_peer(self, data: bytes) -> None:
        """Reverse RTCP (the receiving engine's reports) to the engine's RTCP socket."""
        channel = check_datagram(data, self.max_packet, self.counters)
        if channel is None:
            return
        if channel != RTCP or self._rtcp_peer is None:
            self.counters.garbage += 1   # RTP never flows back; RTCP before any came from the engine
            return
        if self._local[RTCP].send(data[1:], self._rtcp_peer, self.counters):
            self.counters.delivered_rtcp += 1

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_once()
            except (ConnectionError, OSError, MsmError) as exc:
                # A failed handshake raises a bare ConnectionError: the reason is the close's.
                attempt = self._attempt
                self.last_error = (attempt.reason if attempt is not None else "") or str(exc) or type(exc).__name__
            log.warning("QUIC leg to %s (%s:%d) down: %s; retrying in %.1fs", self.peer_node, *self.peer,
                        self.last_error, self.backoff.delay)
            await self.backoff.wait()

    async def _connect_once(self) -> None:
        config = tls.configuration(self.files, is_client=True, mtu=self.mtu, idle_timeout=self.idle_timeout,
                                   peer_node=self.peer_node)   # read again: a rotated certificate is used

        def create(*args: Any, **kwargs: Any) -> _ClientProtocol:
            self._attempt = _ClientProtocol(*args, end=self, **kwargs)
            return self._attempt

        async with connect(self.peer[0], self.peer[1], configuration=config, create_protocol=create) as proto:
            assert isinstance(proto, _ClientProtocol)
            _grow(proto._transport)
            self._protocol = proto
            self.counters.connects += 1
            self.connected.set()
            try:
                await self._hold(proto)
            finally:
                self._protocol = None
                self.connected.clear()
        self.last_error = proto.reason or "connection closed"

    async def _hold(self, proto: _ClientProtocol) -> None:
        while True:
            try:
                await asyncio.wait_for(proto.wait_closed(), self.idle_timeout / 3)
                return
            except TimeoutError:
                proto.keepalive()
                self.backoff.reset()   # up for a while: the next failure starts from the first delay


class _ServerProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args: Any, end: QuicLegReceiver, **kwargs: Any) -> None:
        super().__init__(quic, *args, **kwargs)
        tls.request_client_certificate(quic)
        self.end = end
        self.authorized = False
        self.told = False

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.end._from_peer(self, event.data)
        elif isinstance(event, HandshakeCompleted):
            self.end._admit(self)
        elif isinstance(event, ConnectionTerminated):
            self.end._forget(self)
        super().quic_event_received(event)


class QuicLegReceiver:
    """The receiving node's end: a QUIC server on ``listen`` delivering to the engine's leg ports.

    RTP goes to ``engine_rtp``, RTCP to ``engine_rtcp``, each from its own loopback socket;
    RTCP the engine sends back to the RTCP socket (from ``engine_rtcp``) goes back to the sender.
    """

    def __init__(self, files: TlsFiles, listen: Address, engine_rtp: Address, engine_rtcp: Address, *,
                 mtu: int = DEFAULT_MTU, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.files = files
        self.listen = listen
        self.engine = (engine_rtp, engine_rtcp)
        self.mtu = mtu
        self.max_packet = mtu - OVERHEAD - 1
        self.idle_timeout = idle_timeout
        self.counters = Counters()
        self._server: QuicServer | None = None
        self._local: list[_Local] = []
        self._peers: list[_ServerProtocol] = []   # oldest first; at most MAX_PEERS
        self._config: Any = None
        self._stamp: object = None
        self._ca_pem = b""
        self._trust_domain = ""

    @property
    def port(self) -> int:
        assert self._server is not None and self._server._transport is not None
        return int(self._server._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        self._ca_pem = self.files.read().ca_pem
        self._trust_domain = self.files.identity().trust_domain
        self._config = tls.configuration(self.files, is_client=False, mtu=self.mtu, idle_timeout=self.idle_timeout)
        self._stamp = self.files.stamp()
        for channel in (RTP, RTCP):   # loopback of the engine's address family
            host = "::1" if ":" in self.engine[channel][0] else "127.0.0.1"
            self._local.append(await _bind(host, 0, self._from_engine, channel))

        def create(quic: QuicConnection, *args: Any, **kwargs: Any) -> _ServerProtocol:
            self._stamp = tls.refresh(self._config, self.files, self._stamp)
            return _ServerProtocol(quic, *args, end=self, **kwargs)

        self._server = await serve(self.listen[0], self.listen[1], configuration=self._config,
                                   create_protocol=create)
        _grow(self._server._transport)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for local in self._local:
            if local.transport is not None:
                local.transport.close()
        self._local.clear()
        self._peers.clear()

    def _admit(self, proto: _ServerProtocol) -> None:
        try:
            identity = tls.check_client(proto._quic, self._ca_pem, self._trust_domain)
            if len(self._peers) >= MAX_PEERS:
                raise Unauthorized(f"already {MAX_PEERS} peers on this leg")
        except Unauthorized as exc:
            self.counters.refused += 1
            log.warning("QUIC leg on port %d refused a peer: %s", self.port, exc)
            proto.close(error_code=0x100 + 42, reason_phrase=f"refused: {exc}"[:200])   # CRYPTO_ERROR bad_certificate
            return
        proto.authorized = True
        self._peers.append(proto)
        self.counters.connects += 1
        log.info("QUIC leg on port %d: %s connected", self.port, identity)

    def _forget(self, proto: _ServerProtocol) -> None:
        if proto in self._peers:
            self._peers.remove(proto)

    def _from_peer(self, proto: _ServerProtocol, data: bytes) -> None:
        counters = self.counters
        if not proto.authorized:
            counters.unauthenticated += 1
            return
        channel = check_datagram(data, self.max_packet, counters)
        if channel is None:
            if not proto.told:
                proto.told = True
                log.warning("QUIC leg on port %d: a peer sent a datagram that is not RTP/RTCP (counted, dropped)",
                            self.port)
            return
        if self._local[channel].send(data[1:], self.engine[channel], counters):
            if channel == RTP:
                counters.delivered_rtp += 1
            else:
                counters.delivered_rtcp += 1

    def _from_engine(self, channel: int, data: bytes, addr: Address) -> None:
        counters = self.counters
        if channel != RTCP or addr != self.engine[RTCP]:
            counters.foreign += 1
            return
        counters.received += 1
        if len(data) > self.max_packet:
            counters.too_large += 1
            return
        if not self._peers:
            counters.down += 1
            return
        _send(self._peers[-1], _CHANNEL[RTCP] + data, counters)   # the newest: a reconnected sender
