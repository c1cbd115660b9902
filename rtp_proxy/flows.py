"""Flows: one ingress RTP/RTCP port pair fanned out to N egress legs.

This is the pure-Python data path (the reference the native engine is held to).
A :class:`Flow` owns two UDP sockets. RTP arriving from the upstream source is
measured (RFC 3550 receiver statistics), optionally *spliced* (SSRC, sequence
and timestamp kept continuous across an upstream restart) and sent from the
same socket to every enabled leg, so viewers see the proxy's port pair as the
``server_port`` of their Transport. RTCP from the source is relayed to the legs;
RTCP from a leg's address (a viewer's receiver report) is counted and kept.
Packets on the RTP port that come from a viewer (NAT "punch" packets) are
dropped and counted, never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from msm import ext
from msm.sdk.errors import RtcpError, RtpError
from msm.sdk.rtp import (
    Bye,
    ReceiverReport,
    SdesChunk,
    SenderReport,
    SourceDescription,
    ntp_middle32,
    parse_rtcp,
    rtp_header,
    serialize_rtcp,
)
from msm.sdk.stats import ReceiverStats

log = logging.getLogger(__name__)

Address = tuple[str, int]

# A viewer whose socket cannot keep up must not grow the proxy's memory: asyncio
# buffers a datagram only when the kernel says EAGAIN, so past this many bytes
# queued for one flow's socket we drop (and count) instead. 1 MiB is ~0.4 s of
# a 20 Mbit/s stream, far more than a healthy loopback or LAN ever queues.
MAX_SOCKET_BACKLOG = 1 << 20

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
# Sender reports remembered per flow to match viewers' LSR for round-trip time.
# Players answer within one or two report intervals (5 s here); 16 covers a
# minute of SRs at GStreamer's pace.
SR_HISTORY = 16
# How often the proxy sends its own receiver report upstream (RFC 3550 6.2
# suggests 5 s as the minimum interval).
REPORT_INTERVAL = 5.0


@dataclass(slots=True)
class Leg:
    """One egress destination of a flow (a viewer, or the next proxy)."""

    leg_id: str
    rtp_addr: Address
    rtcp_addr: Address
    enabled: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    packets_sent: int = 0
    bytes_sent: int = 0
    rtcp_sent: int = 0
    send_errors: int = 0
    dropped_backlog: int = 0
    rtcp_received: int = 0
    last_report: ReceiverReport | None = None
    # What the viewer reports about the stream (its last report block).
    has_report: bool = False
    viewer_fraction_lost: float = 0.0
    viewer_packets_lost: int = 0
    viewer_jitter_ms: float = 0.0
    rtt_ms: float | None = None
    reporter_ssrc: int | None = None


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None], on_error: Callable[[Exception], None]) -> None:
        self.on_datagram = on_datagram
        self.on_error = on_error

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished viewer lands here; it must not
        # stop the flow, so it is only counted.
        self.on_error(exc)


class Flow:
    """An ingress port pair and its legs. Created by :class:`FlowTable`."""

    def __init__(
        self,
        flow_id: str,
        *,
        clock_rate: int = 0,
        splice: bool = True,
        labels: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flow_id = flow_id
        self.clock_rate = clock_rate
        self.splice = splice
        self.labels = dict(labels or {})
        self.clock = clock
        self.legs: dict[str, Leg] = {}
        self.rtp_transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.ingress: Address = ("", 0)
        # Forwarding state, rebuilt whenever legs change (the hot path reads only these).
        self._rtp_targets: tuple[Leg, ...] = ()
        self._viewer_rtp: frozenset[Address] = frozenset()
        self._viewer_rtcp: dict[Address, Leg] = {}
        self._init_rtp_path()
        self.packets_received = 0
        self.bytes_received = 0
        self.rtcp_received = 0
        self.dropped_invalid = 0
        self.dropped_from_viewers = 0
        self.dropped_backlog = 0
        self.rtcp_errors = 0
        self.rtcp_bye_dropped = 0
        self.ssrc_collisions = 0
        self.socket_errors = 0
        self.source_changes = 0
        self.packets_forwarded = 0
        self.upstream_rtcp: Address | None = None
        self.last_sr: SenderReport | None = None
        self._last_sr_at = 0.0
        self._sr_forwarded: dict[int, float] = {}   # LSR (middle 32 bits of NTP) -> when relayed
        self.fraction_lost = 0.0                    # over the last REPORT_INTERVAL
        self._next_report = clock() + REPORT_INTERVAL
        # The proxy's own SSRC, for the receiver reports it sends upstream.
        self.report_ssrc = (hash(flow_id) ^ id(self)) & _U32 or 1
        self.cname = f"msm-proxy/{flow_id}".encode()[:255]
        # Bitrate over the last sampling period (see FlowTable.sample_rates).
        self.bitrate_bps = 0.0
        self._rate_mark = (clock(), 0)

    def _init_rtp_path(self) -> None:
        """State of the RTP path; the native engine keeps it in C instead (rtp_proxy.native)."""
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
        self._last_arrival = 0.0

    # -- legs ---------------------------------------------------------------
    def set_leg(self, leg: Leg) -> None:
        self.legs[leg.leg_id] = leg
        self._rebuild()

    def enable_leg(self, leg_id: str, enabled: bool) -> None:
        self.legs[leg_id].enabled = enabled
        self._rebuild()

    def remove_leg(self, leg_id: str) -> Leg | None:
        leg = self.legs.pop(leg_id, None)
        self._rebuild()
        return leg

    def _rebuild(self) -> None:
        self._rtp_targets = tuple(leg for leg in self.legs.values() if leg.enabled)
        self._viewer_rtp = frozenset(leg.rtp_addr for leg in self.legs.values())
        self._viewer_rtcp = {leg.rtcp_addr: leg for leg in self.legs.values()}

    # -- statistics ----------------------------------------------------------
    @property
    def packets_expected(self) -> int:
        return self._expected_before + (self.stats.expected if self.stats else 0)

    @property
    def packets_lost(self) -> int:
        return self._lost_before + (self.stats.lost if self.stats else 0)

    @property
    def jitter_ms(self) -> float:
        if self.stats is None:
            return 0.0
        return self.stats.jitter_ms or 0.0

    # -- data path -----------------------------------------------------------
    def on_rtp(self, data: bytes, addr: Address) -> None:
        if addr in self._viewer_rtp:
            self.dropped_from_viewers += 1
            return
        try:
            _pt, seq, ts, ssrc, _marker = rtp_header(data)
        except RtpError:
            self.dropped_invalid += 1
            return
        now = self.clock()
        if ssrc != self.ssrc:
            self._new_source(ssrc, seq, ts, now)
        assert self.stats is not None
        self.stats.update(seq, ts, now)
        self.packets_received += 1
        self.bytes_received += len(data)
        self._last_arrival = now
        if self.splice and self.out_ssrc is not None:
            out_seq = (seq + self._seq_offset) & _U16
            out_ts = (ts + self._ts_offset) & _U32
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            if self._seq_offset or self._ts_offset or ssrc != self.out_ssrc:
                buf = bytearray(data)
                struct.pack_into("!HII", buf, 2, out_seq, out_ts, self.out_ssrc)
                data = bytes(buf)
        self._send(self.rtp_transport, data, self._rtp_targets, rtcp=False)

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

    def on_rtcp(self, data: bytes, addr: Address) -> None:
        leg = self._viewer_rtcp.get(addr)
        if leg is not None:
            leg.rtcp_received += 1
            try:
                packets = parse_rtcp(data)
            except RtcpError:
                self.rtcp_errors += 1
                return
            for packet in packets:
                if isinstance(packet, ReceiverReport | SenderReport):
                    self._viewer_report(leg, packet)
            return
        if addr in self._viewer_rtp:
            self.dropped_from_viewers += 1
            return
        self.rtcp_received += 1
        self.upstream_rtcp = addr
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            # Relayed anyway: a viewer's stack may understand what we do not;
            # the error is counted so operators see the source misbehaving.
            self.rtcp_errors += 1
            packets = []
        now = self.clock()
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.last_sr = packet
                self._last_sr_at = now
                self._remember_sr(ntp_middle32(packet.ntp_timestamp), now)
        if any(isinstance(p, Bye) for p in packets):
            # The upstream leaving is the mesh's business, not the viewers': a
            # BYE makes players such as ffmpeg end the stream, while the mesh
            # reconnects the upstream behind their back.
            self.rtcp_bye_dropped += 1
            packets = [p for p in packets if not isinstance(p, Bye)]
            if not packets:
                return
            data = serialize_rtcp(packets)
        if (self.splice and self.out_ssrc is not None and self.ssrc is not None
                and self.ssrc != self.out_ssrc and packets
                and isinstance(packets[0], SenderReport) and len(data) >= 20):
            buf = bytearray(data)
            sr_ts = struct.unpack_from("!I", buf, 16)[0]
            struct.pack_into("!I", buf, 4, self.out_ssrc)
            struct.pack_into("!I", buf, 16, (sr_ts + self._ts_offset) & _U32)
            data = bytes(buf)
        self._send(self.rtcp_transport, data, self._rtp_targets, rtcp=True)

    def _remember_sr(self, lsr: int, now: float) -> None:
        self._sr_forwarded[lsr] = now
        while len(self._sr_forwarded) > SR_HISTORY:
            del self._sr_forwarded[next(iter(self._sr_forwarded))]

    def _viewer_report(self, leg: Leg, report: ReceiverReport | SenderReport) -> None:
        if isinstance(report, ReceiverReport):
            leg.last_report = report
        if report.ssrc and report.ssrc != leg.reporter_ssrc:
            # RFC 3550 8.2: a viewer reporting with the media's SSRC, or with
            # another viewer's, is a collision; counted, reports still used.
            if report.ssrc in (self.ssrc, self.out_ssrc) or any(
                    other.reporter_ssrc == report.ssrc for other in self.legs.values() if other is not leg):
                self.ssrc_collisions += 1
            leg.reporter_ssrc = report.ssrc
        # The block about what we send: our (spliced) SSRC; else the first one.
        block = next((b for b in report.reports if b.ssrc == self.out_ssrc), None)
        if block is None:
            block = report.reports[0] if report.reports else None
        if block is None:
            return   # an empty RR (e.g. ffmpeg's NAT "punch")
        leg.has_report = True
        leg.viewer_fraction_lost = block.fraction_lost / 256
        leg.viewer_packets_lost = block.packets_lost
        if self.clock_rate:
            leg.viewer_jitter_ms = block.jitter * 1000.0 / self.clock_rate
        sent_at = self._sr_forwarded.get(block.lsr) if block.lsr else None
        if sent_at is not None:
            # RFC 3550 6.4.1: RTT = A - LSR - DLSR, with A our own clock here.
            rtt = self.clock() - sent_at - block.dlsr / 65536
            leg.rtt_ms = max(rtt, 0.0) * 1000.0

    def tick(self, now: float) -> None:
        """Periodic work: bitrate, and the receiver report sent upstream."""
        self.sample_rate(now)
        if now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL
        if self.stats is None or self.ssrc is None:
            return
        lsr = dlsr = 0
        if self.last_sr is not None:
            lsr = ntp_middle32(self.last_sr.ntp_timestamp)
            dlsr = min(int((now - self._last_sr_at) * 65536), _U32)
        block = self.stats.report_block(self.ssrc, lsr=lsr, dlsr=dlsr)
        self.fraction_lost = block.fraction_lost / 256
        if self.upstream_rtcp is None or self.rtcp_transport is None:
            return
        # Viewers' own reports are summarised here rather than relayed one by
        # one: the upstream sees one receiver, the mesh.
        report = serialize_rtcp([
            ReceiverReport(ssrc=self.report_ssrc, reports=(block,)),
            SourceDescription(chunks=(SdesChunk(ssrc=self.report_ssrc, items=((1, self.cname),)),)),
        ])
        self.rtcp_transport.sendto(report, self.upstream_rtcp)

    def _send(self, transport: asyncio.DatagramTransport | None, data: bytes,
              legs: tuple[Leg, ...], *, rtcp: bool) -> None:
        if transport is None or not legs:
            return
        if transport.get_write_buffer_size() > MAX_SOCKET_BACKLOG:
            self.dropped_backlog += len(legs)
            for leg in legs:
                leg.dropped_backlog += 1
            return
        size = len(data)
        for leg in legs:
            try:
                if rtcp:
                    transport.sendto(data, leg.rtcp_addr)
                    leg.rtcp_sent += 1
                else:
                    transport.sendto(data, leg.rtp_addr)
                    leg.packets_sent += 1
                    leg.bytes_sent += size
                    self.packets_forwarded += 1
            except OSError:
                leg.send_errors += 1

    def send_to_upstream(self, data: bytes) -> None:
        """Send RTCP (e.g. a receiver report) to the upstream source, if known."""
        if self.rtcp_transport is not None and self.upstream_rtcp is not None:
            self.rtcp_transport.sendto(data, self.upstream_rtcp)

    def on_socket_error(self, exc: Exception) -> None:
        self.socket_errors += 1
        log.debug("flow %s: socket error %s", self.flow_id, exc)

    def sample_rate(self, now: float) -> None:
        then, bytes_then = self._rate_mark
        if now - then >= 0.2:
            self.bitrate_bps = (self.bytes_received - bytes_then) * 8 / (now - then)
            self._rate_mark = (now, self.bytes_received)

    def close(self) -> None:
        for transport in (self.rtp_transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
        self.rtp_transport = self.rtcp_transport = None


class PortRangeExhausted(Exception):
    """No free even/odd port pair is left in the configured range."""


def _bind_pair(host: str, low: int, high: int, start: int) -> tuple[socket.socket, socket.socket]:
    """Bind an RTP/RTCP pair (even, even+1) in ``[low, high]``, starting near ``start``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    span = (high - low + 1) // 2
    if span <= 0:
        raise PortRangeExhausted(f"empty port range {low}-{high}")
    first = (low + 1) & ~1
    for i in range(span):
        port = first + 2 * ((start + i) % span)
        if port + 1 > high:
            continue
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        for s in (rtp, rtcp):
            s.setblocking(False)
            # Room for bursts (an I-frame is dozens of packets at once).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        return rtp, rtcp
    raise PortRangeExhausted(f"no free RTP/RTCP port pair in {low}-{high} on {host}")


#: The data-path engines a FlowTable can run: "native" is the C engine in
#: ``ext`` (the default where it is built), "python" the reference above.
ENGINES = ("auto", "native", "python")
_warned_fallback = False


def choose_engine(requested: str = "auto") -> str:
    """``"native"`` or ``"python"`` for a requested engine.

    ``auto`` (the default) is native unless ``MSM_NO_NATIVE=1`` or the
    extension is not built, which is logged once as a warning. Asking for
    ``native`` where it cannot run raises :class:`ext.NativeUnavailable`.
    """
    global _warned_fallback
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested == "python":
        return "python"
    reason = ext.unavailable_reason()
    if reason is None:
        return "native"
    if requested == "native":
        raise ext.NativeUnavailable(reason)
    if not _warned_fallback and os.environ.get("MSM_NO_NATIVE", "") in ("", "0"):
        log.warning("native data plane unavailable: %s; using the pure-Python data path", reason)
        _warned_fallback = True
    return "python"


class FlowTable:
    """Every flow of one proxy, keyed by flow id.

    ``engine`` picks the data path once for the whole table (see
    :func:`choose_engine`); everything above this class is the same either way.
    """

    def __init__(self, *, host: str = "127.0.0.1", port_range: tuple[int, int] = (30000, 39999),
                 clock: Callable[[], float] = time.monotonic, engine: str = "auto") -> None:
        self.host = host
        self.port_range = port_range
        self.clock = clock
        self.flows: dict[str, Flow] = {}
        self._next = 0
        self.engine = choose_engine(engine)
        self._native: ext.Engine | None = None

    @property
    def engine_features(self) -> frozenset[str]:
        """What the native engine uses here (``gso``, ``gro``, ``timestamps``); empty for Python."""
        if self.engine != "native":
            return frozenset()
        if self._native is None:
            self._native = ext.Engine()
        return self._native.features

    async def add_flow(self, flow_id: str, *, clock_rate: int = 0, splice: bool = True,
                       labels: Mapping[str, str] | None = None, bind_host: str = "") -> Flow:
        existing = self.flows.get(flow_id)
        if existing is not None:
            return existing
        host = bind_host or self.host
        low, high = self.port_range
        rtp_sock, rtcp_sock = _bind_pair(host, low, high, self._next)
        self._next = (rtp_sock.getsockname()[1] - ((low + 1) & ~1)) // 2 + 1
        ingress = (host, rtp_sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        flow: Flow | None = None
        try:
            if self.engine == "native":
                flow = self._native_flow(flow_id, rtp_sock, clock_rate=clock_rate, splice=splice, labels=labels)
            else:
                flow = Flow(flow_id, clock_rate=clock_rate, splice=splice, labels=labels, clock=self.clock)
                rtp_t, _ = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(flow.on_rtp, flow.on_socket_error), sock=rtp_sock)
                flow.rtp_transport = rtp_t
            rtcp_t, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(flow.on_rtcp, flow.on_socket_error), sock=rtcp_sock)
        except BaseException:
            if flow is not None:
                flow.close()
            rtp_sock.close()
            rtcp_sock.close()
            raise
        flow.rtcp_transport = rtcp_t
        flow.ingress = ingress
        self.flows[flow_id] = flow
        log.info("flow %s: ingress %s:%d-%d (%s)", flow_id, host, flow.ingress[1], flow.ingress[1] + 1, self.engine)
        return flow

    def _native_flow(self, flow_id: str, rtp_sock: socket.socket, *, clock_rate: int, splice: bool,
                     labels: Mapping[str, str] | None) -> Flow:
        from .native import NativeFlow

        if self._native is None:
            self._native = ext.Engine()
        family = rtp_sock.family
        fd = rtp_sock.detach()   # the engine owns the RTP socket from here on
        try:
            handle = self._native.add_flow(fd, clock_rate=clock_rate, splice=splice)
        except BaseException:
            os.close(fd)
            raise
        return NativeFlow(flow_id, handle=handle, family=family, clock_rate=clock_rate, splice=splice,
                          labels=labels, clock=self.clock)

    def remove_flow(self, flow_id: str) -> bool:
        flow = self.flows.pop(flow_id, None)
        if flow is None:
            return False
        flow.close()
        log.info("flow %s removed", flow_id)
        return True

    def sample_rates(self) -> None:
        now = self.clock()
        for flow in self.flows.values():
            flow.sample_rate(now)

    def tick(self) -> None:
        now = self.clock()
        for flow in list(self.flows.values()):
            flow.tick(now)

    def close(self) -> None:
        for flow_id in list(self.flows):
            self.remove_flow(flow_id)
        if self._native is not None:
            self._native.close()
            self._native = None
