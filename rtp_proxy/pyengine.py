"""The pure-Python RTP path: the reference the native engine is held to.

RTP arriving from the upstream source is measured (RFC 3550 receiver
statistics), optionally *spliced* (SSRC, sequence and timestamp kept continuous
across an upstream restart) and sent from the same socket to every enabled leg,
so viewers see the proxy's port pair as the ``server_port`` of their Transport.
Only the flow's source is forwarded (nothing before it is set): packets that
come from a viewer (NAT "punch" packets), from any other address, that fail
RFC 3550 A.1's header checks, or that carry another SSRC than the learned one
(until it takes over, see :data:`msm.rtp_proxy.engine.SSRC_TAKEOVER`) are
dropped and counted by reason, never forwarded. Runs in the event loop;
implements :class:`msm.rtp_proxy.engine.FlowEngine`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, cast

from msm.sdk.rtp import ReportBlock
from msm.sdk.stats import ReceiverStats

from .engine import (
    MAX_SOCKET_BACKLOG,
    SSRC_TAKEOVER,
    TAKEOVER_SEQUENTIAL,
    Address,
    DatagramSocket,
    Endpoint,
    Leg,
    LegCounters,
    RtpState,
)
from .srtp import Protector, SrtpKey, Unprotector

log = logging.getLogger(__name__)

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("!BBHII")


def rtp_check(data: bytes) -> tuple[int, int, int] | None:
    """``(seq, timestamp, ssrc)`` of a packet that passes RFC 3550 A.1's header checks, else ``None``.

    Version 2; the CSRC list, the header extension and the padding (its count
    is the last octet) all inside the packet; and no payload type 64-95, which
    collides with RTCP's 192-223 (RFC 5761 4): players that demultiplex would
    take such a packet for RTCP (an SR, or a BYE that ends their stream).
    """
    size = len(data)
    if size < 12:
        return None
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first & 0xC0 != 0x80 or 64 <= second & 0x7F <= 95:
        return None
    header = 12 + 4 * (first & 0x0F)
    if header > size:
        return None
    if first & 0x10:
        if header + 4 > size:
            return None
        header += 4 + 4 * (data[header + 2] << 8 | data[header + 3])
        if header > size:
            return None
    if first & 0x20:
        pad = data[-1]
        if pad == 0 or header + pad > size:
            return None
    return seq, ts, ssrc


class _Target:
    """One published leg as the hot path sees it, with what was sent to it."""

    __slots__ = ("addr", "bytes_sent", "dropped_backlog", "header", "leg", "mtu_exceeded", "out", "packets_sent",
                 "protector", "send_errors")

    def __init__(self, leg: Leg) -> None:
        self.leg = leg
        self.addr = leg.rtp_addr
        self.out: DatagramSocket | None = None   # the socket of the leg's family when not the flow's own
        self.header = 48 if ":" in leg.rtp_addr[0] else 28   # IP and UDP headers in the path MTU
        self.mtu_exceeded = 0
        self.protector = Protector(leg.srtp) if leg.srtp is not None else None
        self.packets_sent = 0
        self.bytes_sent = 0
        self.send_errors = 0
        self.dropped_backlog = 0


class OutInfo(NamedTuple):
    """What a flow sent its legs, as RTSP's RTP-Info needs it: the first and the latest packet."""

    first_seq: int
    first_ts: int
    last_seq: int
    last_ts: int


class PythonEngine:
    """A flow's RTP socket served in the event loop (see the module doc)."""

    name = "python"

    def __init__(self, flow_id: str, *, clock_rate: int = 0, splice: bool = True,
                 clock: Callable[[], float] = time.monotonic, takeover: float = SSRC_TAKEOVER) -> None:
        self.flow_id = flow_id
        self.clock_rate = clock_rate
        self.splice = splice
        self.clock = clock
        self.takeover = takeover
        # None: nothing is forwarded (the safe default until the control plane names the source).
        self._source: Address | None = None
        self._candidate: tuple[int, int, int] | None = None   # another SSRC on probation: (ssrc, seq, count)
        self._transport: DatagramSocket | None = None
        self._alt: tuple[bool, DatagramSocket] | None = None   # (IPv6?, the socket of the other family)
        # Forwarding state, rebuilt whenever legs change (the hot path reads only these).
        self._legs: dict[str, _Target] = {}
        self._targets: tuple[_Target, ...] = ()
        self._viewer_rtp: frozenset[Address] = frozenset()
        self.packets_received = 0
        self.bytes_received = 0
        self.packets_forwarded = 0
        self.dropped_invalid = 0
        self.dropped_from_viewers = 0
        self.dropped_backlog = 0
        self.socket_errors = 0
        self.source_changes = 0
        self.dropped_wrong_source = 0
        self.dropped_wrong_ssrc = 0
        self.srtp_errors = 0
        self._srtp: Unprotector | None = None    # set: what arrives is SRTP
        # Statistics of the current upstream source.
        self.ssrc: int | None = None
        self.stats: ReceiverStats | None = None
        self._lost_before = 0      # packets lost by earlier sources
        self._expected_before = 0
        # Splicing: what viewers see stays continuous across source changes.
        self.out_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_out_seq: int | None = None
        self._last_out_ts = 0
        self._first_out: tuple[int, int] | None = None   # (seq, ts) of the first packet forwarded
        self._last_arrival = 0.0

    async def start(self, sock: socket.socket) -> None:
        """Serve ``sock`` (a bound non-blocking UDP socket) in the running loop."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Endpoint(self.on_rtp, self.on_socket_error), sock=sock)
        self._transport = cast(DatagramSocket, transport)

    async def add_sender(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Endpoint(self.on_rtp, self.on_socket_error), sock=sock)
        self._alt = (sock.family == socket.AF_INET6, cast(DatagramSocket, transport))
        self._route(self._legs.values())

    def _route(self, targets: Iterable[_Target]) -> None:
        """Each target's socket: the other family's for a leg of that family."""
        alt = self._alt
        for target in targets:
            target.out = alt[1] if alt is not None and (":" in target.addr[0]) == alt[0] else None

    # -- the FlowEngine seam ---------------------------------------------------
    def set_legs(self, legs: Sequence[Leg]) -> None:
        old = self._legs
        self._legs = {}
        for leg in legs:
            target = old.get(leg.leg_id)
            self._legs[leg.leg_id] = target if target is not None and target.leg is leg else _Target(leg)
        self._route(self._legs.values())
        self._targets = tuple(t for t in self._legs.values() if t.leg.enabled)
        self._viewer_rtp = frozenset(leg.rtp_addr for leg in legs)

    def set_source(self, source: Address | None) -> None:
        self._source = source

    def set_ingress_key(self, key: SrtpKey | None) -> None:
        if key is None:
            return
        if self._srtp is None:
            self._srtp = Unprotector(key, self.clock)
        else:
            self._srtp.rekey(key)

    def set_leg_key(self, leg_id: str, key: SrtpKey) -> None:
        target = self._legs.get(leg_id)
        if target is None:
            return
        if target.protector is None:
            target.protector = Protector(key)
        else:
            target.protector.rekey(key)

    def state(self) -> RtpState:
        stats = self.stats
        return RtpState(
            packets_received=self.packets_received, bytes_received=self.bytes_received,
            packets_forwarded=self.packets_forwarded, dropped_invalid=self.dropped_invalid,
            dropped_from_viewers=self.dropped_from_viewers, dropped_backlog=self.dropped_backlog,
            socket_errors=self.socket_errors, source_changes=self.source_changes,
            dropped_wrong_source=self.dropped_wrong_source, dropped_wrong_ssrc=self.dropped_wrong_ssrc,
            srtp_errors=self.srtp_errors, ssrc=self.ssrc, out_ssrc=self.out_ssrc,
            seq_offset=self._seq_offset, ts_offset=self._ts_offset,
            lost_before=self._lost_before, expected_before=self._expected_before,
            received=stats.received if stats else 0, expected=stats.expected if stats else 0,
            extended_highest_seq=stats.extended_highest_seq if stats else 0,
            duplicates=stats.duplicates if stats else 0, reordered=stats.reordered if stats else 0,
            restarts=stats.restarts if stats else 0, jitter=stats.jitter if stats else 0.0)

    def out_info(self) -> OutInfo | None:
        """The first and the latest packet viewers were sent (after splicing); None before any."""
        if self._first_out is None or self._last_out_seq is None:
            return None
        return OutInfo(*self._first_out, self._last_out_seq, self._last_out_ts)

    def leg_counters(self, leg_id: str) -> LegCounters:
        target = self._legs.get(leg_id)
        if target is None:
            return LegCounters()
        return LegCounters(packets_sent=target.packets_sent, bytes_sent=target.bytes_sent,
                           send_errors=target.send_errors, dropped_backlog=target.dropped_backlog,
                           mtu_exceeded=target.mtu_exceeded)

    def report_block(self, *, lsr: int = 0, dlsr: int = 0) -> ReportBlock | None:
        if self.stats is None or self.ssrc is None:
            return None
        return self.stats.report_block(self.ssrc, lsr=lsr, dlsr=dlsr)

    def counters(self) -> Mapping[str, int]:
        return {}

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        if self._alt is not None:
            self._alt[1].close()
        self._alt = None

    # -- data path -----------------------------------------------------------
    def on_rtp(self, data: bytes, addr: Address) -> None:
        if addr in self._viewer_rtp:
            self.dropped_from_viewers += 1
            return
        source = self._source
        if source is None or addr[0] != source[0] or (source[1] and addr[1] != source[1]):
            self.dropped_wrong_source += 1
            return
        if self._srtp is not None:
            # Authenticated (and replay-checked) before anything reads the header.
            plain = self._srtp.unprotect(data)
            if plain is None:
                self.srtp_errors += 1
                return
            data = plain
        header = rtp_check(data)
        if header is None:
            self.dropped_invalid += 1
            return
        seq, ts, ssrc = header
        now = self.clock()
        if ssrc != self.ssrc:
            if self.ssrc is not None and not self._takes_over(ssrc, seq, now):
                self.dropped_wrong_ssrc += 1
                return
            self._new_source(ssrc, seq, ts, now)
        assert self.stats is not None
        self.stats.update(seq, ts, now)
        self.packets_received += 1
        self.bytes_received += len(data)
        self._last_arrival = now
        if self.splice and self.out_ssrc is not None:
            out_seq = (seq + self._seq_offset) & _U16
            out_ts = (ts + self._ts_offset) & _U32
            if self._first_out is None:
                self._first_out = (out_seq, out_ts)
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            if self._seq_offset or self._ts_offset or ssrc != self.out_ssrc:
                buf = bytearray(data)
                struct.pack_into("!HII", buf, 2, out_seq, out_ts, self.out_ssrc)
                data = bytes(buf)
        self._send(data)

    def _takes_over(self, ssrc: int, seq: int, now: float) -> bool:
        """Whether another SSRC from the source replaces the current one now (see the module doc)."""
        if now - self._last_arrival < self.takeover:
            self._candidate = None
            return False
        candidate = self._candidate
        count = 1
        if candidate is not None and candidate[0] == ssrc and (candidate[1] + 1) & _U16 == seq:
            count = candidate[2] + 1
        if count < TAKEOVER_SEQUENTIAL:
            self._candidate = (ssrc, seq, count)
            return False
        self._candidate = None
        return True

    def _new_source(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        if self.stats is not None:
            self._lost_before += self.stats.lost
            self._expected_before += self.stats.expected
            self.source_changes += 1
            log.info("flow %s: upstream source changed %08x -> %08x", self.flow_id,
                     self.ssrc or 0, ssrc)
        self.ssrc = ssrc
        self.stats = ReceiverStats(clock_rate=self.clock_rate or None, min_sequential=1)
        if self.out_ssrc is None:
            self.out_ssrc = ssrc
        elif self.splice and self._last_out_seq is not None:
            # Continue where viewers left off: next sequence number, and a
            # timestamp advanced by the wall time the source was away.
            gap = max(now - self._last_arrival, 0.0)
            advance = int(gap * self.clock_rate) if self.clock_rate else 1
            self._seq_offset = (self._last_out_seq + 1 - seq) & _U16
            self._ts_offset = (self._last_out_ts + max(advance, 1) - ts) & _U32

    def _send(self, data: bytes) -> None:
        transport, targets = self._transport, self._targets
        if transport is None or not targets:
            return
        if transport.get_write_buffer_size() > MAX_SOCKET_BACKLOG:
            self.dropped_backlog += len(targets)
            for target in targets:
                target.dropped_backlog += 1
            return
        for target in targets:
            out = data
            if target.protector is not None:
                protected = target.protector.protect(data)
                if protected is None:    # would not fit a datagram once protected
                    target.send_errors += 1
                    continue
                out = protected
            mtu = target.leg.path_mtu
            if mtu and len(out) + target.header > mtu:
                # The sockets never fragment (ports.bind_pair): the kernel would refuse it too, but
                # asyncio reports that to the socket, not the leg.
                target.mtu_exceeded += 1
                continue
            try:
                (target.out or transport).sendto(out, target.addr)
                target.packets_sent += 1
                target.bytes_sent += len(out)
                self.packets_forwarded += 1
            except OSError:
                target.send_errors += 1

    def on_socket_error(self, exc: Exception) -> None:
        self.socket_errors += 1
        log.debug("flow %s: socket error %s", self.flow_id, exc)
