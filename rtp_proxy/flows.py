"""Flows: one ingress RTP/RTCP port pair fanned out to N egress legs.

A :class:`Flow` owns the control side of one ingress port pair: its legs, the
RTCP socket and what arrives there, the receiver reports it sends upstream, and
one RTP engine (:class:`msm.rtp_proxy.engine.FlowEngine`: the Python reference
in :mod:`msm.rtp_proxy.pyengine` or the C engine in :mod:`msm.rtp_proxy.native`,
picked for the whole table by :func:`choose_engine`). RTCP from the source is
relayed to the legs; RTCP from a leg's address (a viewer's receiver report) is
counted and kept; RTCP from anywhere else is dropped and counted. A flow
forwards nothing before :meth:`Flow.set_source` names its source, and a leg
can never point back at the proxy's own ingress ports
(:meth:`FlowTable.check_destination`), so loops and reflection cannot form.
:meth:`Flow.snapshot` reads everything at once for gRPC and Prometheus.

Errors: :class:`PortRangeExhausted` is a ``ResourceExhausted``; a bad engine
name is a ``ConfigError``; ``ext.NativeUnavailable`` is translated here into
:class:`msm.rtp_proxy.engine.EngineUnavailable` (``ext`` imports nothing of msm).
"""

# long module: a flow's RTCP side and its table's bookkeeping (ports, sources,
# destinations, engines) read the same flows; splitting them would split one state.
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import cast

from msm import ext
from msm.runtime.hostport import format_host_port, other_family_host
from msm.sdk.errors import ConfigError, NotFound, Refused, RtcpError
from msm.sdk.rtp import (
    Bye,
    ReceiverReport,
    SdesChunk,
    SenderReport,
    SourceDescription,
    ntp_middle32,
    parse_rtcp,
    serialize_rtcp,
)

from .engine import (
    MAX_SOCKET_BACKLOG,
    SSRC_TAKEOVER,
    Address,
    DatagramSocket,
    Endpoint,
    EngineUnavailable,
    FlowEngine,
    Leg,
    RtpState,
)
from .native import NativeEngine, start_core
from .ports import PortRangeExhausted, bind_listen, bind_pairs, path_mtu
from .pyengine import OutInfo, PythonEngine
from .snapshot import FlowSnapshot, LegSnapshot
from .srtp import Protector, SrtpKey, Unprotector
from .trust import LocalAddresses, check_destination

__all__ = ["ENGINES", "MAX_SOCKET_BACKLOG", "Address", "EngineUnavailable", "Flow", "FlowTable", "Leg",
           "PortRangeExhausted", "choose_engine"]

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
# Sender reports remembered per flow to match viewers' LSR for round-trip time.
# Players answer within one or two report intervals (5 s here); 16 covers a
# minute of SRs at GStreamer's pace.
SR_HISTORY = 16
# How often the proxy sends its own receiver report upstream (RFC 3550 6.2
# suggests 5 s as the minimum interval).
REPORT_INTERVAL = 5.0
# Legs named in one liveness report to the control plane: a report stays a few
# hundred KB at most; legs past it are named in the next one, a second later.
MAX_LEGS_HEARD = 4096


class Flow:
    """An ingress port pair, its legs and its RTP engine. Created by :class:`FlowTable`."""

    #: The other IP family's address the flow is also bound on (same ports; "": none), and its RTCP socket.
    alt_host = ""
    alt_rtcp_transport: DatagramSocket | None = None

    def __init__(
        self,
        flow_id: str,
        engine: FlowEngine,
        *,
        clock_rate: int = 0,
        splice: bool = True,
        labels: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flow_id = flow_id
        self.engine = engine
        self.clock_rate = clock_rate
        self.splice = splice
        self.labels = dict(labels or {})
        self.clock = clock
        self.legs: dict[str, Leg] = {}
        self.rtcp_transport: DatagramSocket | None = None
        self.ingress: Address = ("", 0)
        # The RTP (whichever engine serves it) and RTCP sockets' descriptors: see set_multicast.
        self.fds: tuple[int, ...] = ()
        self.multicast_ttl = 0
        # The RTCP side's view of the legs, rebuilt whenever they change.
        self._rtcp_targets: tuple[Leg, ...] = ()
        self._viewer_rtp: frozenset[Address] = frozenset()
        self._viewer_rtcp: dict[Address, Leg] = {}
        # Counted on the RTCP socket (the engine counts its RTP socket; the snapshot adds up).
        self.rtcp_received = 0
        self.rtcp_errors = 0
        self._rtcp_wrong_source = 0
        # Where RTP (engine) and RTCP (here) may come from: (host, rtp port, rtcp port), 0 = any port.
        self.source: tuple[str, int, int] | None = None
        self.rtcp_bye_dropped = 0
        self.ssrc_collisions = 0
        # SRTP (a flow fed by another node): the ingress key, SRTCP in from the
        # source and out with our receiver reports; per SRTP leg, SRTCP out and
        # its receiver reports in. The engine does the RTP side.
        self.srtp: SrtpKey | None = None
        self._srtcp_in: Unprotector | None = None
        self._srtcp_reply: Protector | None = None
        self._leg_srtcp: dict[str, tuple[Protector, Unprotector]] = {}
        self._srtcp_errors = 0
        self._rtcp_from_viewers = 0
        # Legs whose far end sent RTCP since the control plane was last told (viewer
        # liveness, RFC 2326 12.37); at most one entry per leg of the flow.
        self.heard: set[str] = set()
        self._rtcp_backlog = 0
        self._rtcp_socket_errors = 0
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

    def set_source(self, host: str | None, rtp_port: int = 0, rtcp_port: int = 0) -> None:
        """Accept RTP only from ``host``:``rtp_port`` and RTCP only from ``host``:``rtcp_port`` (0: any port).

        ``host`` is an IP address of the flow's family (:meth:`FlowTable.set_source`
        checks); ``None`` forwards nothing.
        """
        self.source = None if host is None else (host, rtp_port, rtcp_port)
        self.engine.set_source(None if host is None else (host, rtp_port))
        if self.source is not None and self.upstream_rtcp is not None and not self._from_source(self.upstream_rtcp):
            self.upstream_rtcp = None

    def _from_source(self, addr: Address) -> bool:
        source = self.source
        return source is not None and addr[0] == source[0] and (not source[2] or addr[1] == source[2])

    # -- SRTP ---------------------------------------------------------------
    def set_ingress_key(self, key: SrtpKey) -> None:
        """What arrives is SRTP/SRTCP under ``key``; a newer epoch rekeys (the previous key kept a while)."""
        if self._srtcp_in is None or self._srtcp_reply is None:
            self._srtcp_in, self._srtcp_reply = Unprotector(key, self.clock), Protector(key)
        else:
            self._srtcp_in.rekey(key)    # refuses an older epoch before anything changes
            self._srtcp_reply.rekey(key)
        self.engine.set_ingress_key(key)
        self.srtp = self._srtcp_in.key

    def rekey_leg(self, leg_id: str, key: SrtpKey) -> None:
        """The SRTP leg ``leg_id`` sends under ``key`` from now on; ``KeyError`` if there is none."""
        leg = self.legs[leg_id]
        rtcp = self._leg_srtcp.get(leg_id)
        if rtcp is None:
            self._leg_srtcp[leg_id] = (Protector(key), Unprotector(key, self.clock))
        else:
            rtcp[0].rekey(key)
            rtcp[1].rekey(key)
        leg.srtp = key
        self.engine.set_leg_key(leg_id, key)

    # -- legs ---------------------------------------------------------------
    def set_multicast(self, ttl: int) -> None:
        """Multicast legs leave with ``ttl`` from the ingress address's interface, looped back
        to this host's listeners too (a viewer on the proxy's own node).

        The options live on the flow's two sockets (one TTL per flow: every group of a flow
        is the same stream's, configured once in the control plane).
        """
        if ttl == self.multicast_ttl or ":" in self.ingress[0]:
            return
        for fd in self.fds:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0, fileno=fd)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                host = ipaddress.ip_address(self.ingress[0])
                if not host.is_loopback and not host.is_unspecified:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, host.packed)
            finally:
                sock.detach()   # the engine (or the RTCP transport) keeps owning it
        self.multicast_ttl = ttl

    def check_family(self, host: str) -> None:
        """``Refused`` for a leg to an address of the other IP family when the flow has no socket there."""
        if (":" in host) != (":" in self.ingress[0]) and not self.alt_host:
            family = "IPv6" if ":" in host else "IPv4"
            raise Refused(f"leg destination {host} is {family} and this proxy has no {family} media address "
                          f"(its media host is {self.ingress[0]})")

    def set_leg(self, leg: Leg) -> None:
        leg.path_mtu = path_mtu(leg.rtp_addr)
        self.legs[leg.leg_id] = leg
        self._leg_srtcp.pop(leg.leg_id, None)
        if leg.srtp is not None:
            self._leg_srtcp[leg.leg_id] = (Protector(leg.srtp), Unprotector(leg.srtp, self.clock))
        self._rebuild()

    def enable_leg(self, leg_id: str, enabled: bool) -> None:
        self.legs[leg_id].enabled = enabled
        self._rebuild()

    def remove_leg(self, leg_id: str) -> Leg | None:
        leg = self.legs.pop(leg_id, None)
        self._leg_srtcp.pop(leg_id, None)
        self.heard.discard(leg_id)
        self._rebuild()
        return leg

    def _rebuild(self) -> None:
        legs = tuple(self.legs.values())
        self._rtcp_targets = tuple(leg for leg in legs if leg.enabled)
        self._viewer_rtp = frozenset(leg.rtp_addr for leg in legs)
        self._viewer_rtcp = {leg.rtcp_addr: leg for leg in legs}
        self.engine.set_legs(legs)

    # -- reading -----------------------------------------------------------------
    def snapshot(self) -> FlowSnapshot:
        """Every counter and statistic of the flow and its legs, read now (either engine)."""
        rtp = self.engine.state()
        return FlowSnapshot(
            flow_id=self.flow_id, engine=self.engine.name, ingress=self.ingress, labels=dict(self.labels),
            clock_rate=self.clock_rate,
            packets_received=rtp.packets_received, bytes_received=rtp.bytes_received,
            packets_expected=rtp.expected_before + rtp.expected,
            packets_lost=rtp.lost_before + rtp.expected - rtp.received,
            jitter_ms=_jitter_ms(rtp, self.clock_rate), ssrc=rtp.ssrc, out_ssrc=rtp.out_ssrc,
            reordered=rtp.reordered, duplicates=rtp.duplicates, fraction_lost=self.fraction_lost,
            bitrate_bps=self.bitrate_bps, source_changes=rtp.source_changes,
            packets_forwarded=rtp.packets_forwarded, dropped_invalid=rtp.dropped_invalid,
            dropped_from_viewers=rtp.dropped_from_viewers + self._rtcp_from_viewers,
            dropped_wrong_source=rtp.dropped_wrong_source + self._rtcp_wrong_source,
            dropped_wrong_ssrc=rtp.dropped_wrong_ssrc,
            dropped_backlog=rtp.dropped_backlog + self._rtcp_backlog,
            socket_errors=rtp.socket_errors + self._rtcp_socket_errors,
            rtcp_received=self.rtcp_received, rtcp_errors=self.rtcp_errors,
            rtcp_bye_dropped=self.rtcp_bye_dropped, ssrc_collisions=self.ssrc_collisions,
            srtp=self.srtp is not None, srtp_errors=rtp.srtp_errors + self._srtcp_errors,
            legs=tuple(self._leg_snapshot(leg) for leg in list(self.legs.values())))

    def out_info(self) -> OutInfo | None:
        """The first and the latest packet the legs were sent (RTSP RTP-Info); None before any."""
        engine = self.engine
        return engine.out_info() if isinstance(engine, NativeEngine | PythonEngine) else None

    def _leg_snapshot(self, leg: Leg) -> LegSnapshot:
        rtp = self.engine.leg_counters(leg.leg_id)
        return LegSnapshot(
            leg_id=leg.leg_id, rtp_addr=leg.rtp_addr, rtcp_addr=leg.rtcp_addr, enabled=leg.enabled,
            labels=dict(leg.labels), packets_sent=rtp.packets_sent, bytes_sent=rtp.bytes_sent,
            rtcp_sent=leg.rtcp_sent, send_errors=rtp.send_errors + leg.rtcp_send_errors,
            dropped_backlog=rtp.dropped_backlog + leg.rtcp_dropped_backlog, rtcp_received=leg.rtcp_received,
            has_report=leg.has_report, viewer_fraction_lost=leg.viewer_fraction_lost,
            viewer_packets_lost=leg.viewer_packets_lost, viewer_jitter_ms=leg.viewer_jitter_ms,
            rtt_ms=leg.rtt_ms, srtp=leg.srtp is not None, mtu_exceeded=rtp.mtu_exceeded, path_mtu=leg.path_mtu)

    # -- single counters, as the flow had them (each one reads the engine; snapshot() reads all at once)
    @property
    def packets_received(self) -> int:
        return self.engine.state().packets_received

    @property
    def bytes_received(self) -> int:
        return self.engine.state().bytes_received

    @property
    def packets_forwarded(self) -> int:
        return self.engine.state().packets_forwarded

    @property
    def packets_expected(self) -> int:
        rtp = self.engine.state()
        return rtp.expected_before + rtp.expected

    @property
    def packets_lost(self) -> int:
        rtp = self.engine.state()
        return rtp.lost_before + rtp.expected - rtp.received

    @property
    def jitter_ms(self) -> float:
        return _jitter_ms(self.engine.state(), self.clock_rate)

    @property
    def ssrc(self) -> int | None:
        return self.engine.state().ssrc

    @property
    def dropped_invalid(self) -> int:
        return self.engine.state().dropped_invalid

    @property
    def dropped_from_viewers(self) -> int:
        return self.engine.state().dropped_from_viewers + self._rtcp_from_viewers

    @property
    def dropped_backlog(self) -> int:
        return self.engine.state().dropped_backlog + self._rtcp_backlog

    @property
    def source_changes(self) -> int:
        return self.engine.state().source_changes

    # -- RTCP ----------------------------------------------------------------
    def on_rtcp(self, data: bytes, addr: Address) -> None:
        leg = self._viewer_rtcp.get(addr)
        if leg is not None:
            self._from_viewer(leg, data)
            return
        if addr in self._viewer_rtp:
            self._rtcp_from_viewers += 1
            return
        if not self._from_source(addr):
            # A spoofed SR, APP or BYE from a third party (or to the wrong port)
            # never reaches viewers, and never redirects our reports.
            self._rtcp_wrong_source += 1
            return
        if self._srtcp_in is not None:
            plain = self._srtcp_in.unprotect_rtcp(data)
            if plain is None:
                self._srtcp_errors += 1
                return
            data = plain
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
        if self.splice and packets and isinstance(packets[0], SenderReport) and len(data) >= 20:
            data = self._splice_sr(data, self.engine.state())
        self._send_rtcp(data)

    @staticmethod
    def _splice_sr(data: bytes, rtp: RtpState) -> bytes:
        """A sender report as viewers must see it after a splice: their SSRC, their timeline."""
        if rtp.out_ssrc is None or rtp.ssrc is None or rtp.ssrc == rtp.out_ssrc:
            return data
        buf = bytearray(data)
        sr_ts = struct.unpack_from("!I", buf, 16)[0]
        struct.pack_into("!I", buf, 4, rtp.out_ssrc)
        struct.pack_into("!I", buf, 16, (sr_ts + rtp.ts_offset) & _U32)
        return bytes(buf)

    def _from_viewer(self, leg: Leg, data: bytes) -> None:
        srtcp = self._leg_srtcp.get(leg.leg_id)
        if srtcp is not None:   # the next node's receiver reports, as SRTCP
            plain = srtcp[1].unprotect_rtcp(data)
            if plain is None:
                self._srtcp_errors += 1
                return
            data = plain
        leg.rtcp_received += 1
        self.heard.add(leg.leg_id)
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.rtcp_errors += 1
            return
        for packet in packets:
            if isinstance(packet, ReceiverReport | SenderReport):
                self._viewer_report(leg, packet)

    def _remember_sr(self, lsr: int, now: float) -> None:
        self._sr_forwarded[lsr] = now
        while len(self._sr_forwarded) > SR_HISTORY:
            del self._sr_forwarded[next(iter(self._sr_forwarded))]

    def _viewer_report(self, leg: Leg, report: ReceiverReport | SenderReport) -> None:
        if isinstance(report, ReceiverReport):
            leg.last_report = report
        rtp = self.engine.state()
        if report.ssrc and report.ssrc != leg.reporter_ssrc:
            # RFC 3550 8.2: a viewer reporting with the media's SSRC, or with
            # another viewer's, is a collision; counted, reports still used.
            if report.ssrc in (rtp.ssrc, rtp.out_ssrc) or any(
                    other.reporter_ssrc == report.ssrc for other in self.legs.values() if other is not leg):
                self.ssrc_collisions += 1
            leg.reporter_ssrc = report.ssrc
        # The block about what we send: our (spliced) SSRC; else the first one.
        block = next((b for b in report.reports if b.ssrc == rtp.out_ssrc), None)
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
        for leg in list(self.legs.values()):    # the path MTU may have changed (ICMP, routes)
            leg.path_mtu = path_mtu(leg.rtp_addr)
        lsr = dlsr = 0
        if self.last_sr is not None:
            lsr = ntp_middle32(self.last_sr.ntp_timestamp)
            dlsr = min(int((now - self._last_sr_at) * 65536), _U32)
        block = self.engine.report_block(lsr=lsr, dlsr=dlsr)
        if block is None:
            return
        self.fraction_lost = block.fraction_lost / 256
        if self.upstream_rtcp is None or self.rtcp_transport is None:
            return
        # Viewers' own reports are summarised here rather than relayed one by
        # one: the upstream sees one receiver, the mesh.
        report: bytes | None = serialize_rtcp([
            ReceiverReport(ssrc=self.report_ssrc, reports=(block,)),
            SourceDescription(chunks=(SdesChunk(ssrc=self.report_ssrc, items=((1, self.cname),)),)),
        ])
        if self._srtcp_reply is not None and report is not None:
            report = self._srtcp_reply.protect_rtcp(report)
        if report is not None:
            self.rtcp_transport.sendto(report, self.upstream_rtcp)

    def _send_rtcp(self, data: bytes) -> None:
        transport, legs = self.rtcp_transport, self._rtcp_targets
        if transport is None or not legs:
            return
        if transport.get_write_buffer_size() > MAX_SOCKET_BACKLOG:
            self._rtcp_backlog += len(legs)
            for leg in legs:
                leg.rtcp_dropped_backlog += 1
            return
        for leg in legs:
            out = data
            srtcp = self._leg_srtcp.get(leg.leg_id)
            if srtcp is not None:
                protected = srtcp[0].protect_rtcp(data)
                if protected is None:
                    leg.rtcp_send_errors += 1
                    continue
                out = protected
            try:
                self._rtcp_out(leg, transport).sendto(out, leg.rtcp_addr)
                leg.rtcp_sent += 1
            except OSError:
                leg.rtcp_send_errors += 1

    def _rtcp_out(self, leg: Leg, own: DatagramSocket) -> DatagramSocket:
        """The RTCP socket of ``leg``'s family: the flow's own, or the other family's."""
        alt = self.alt_rtcp_transport
        if alt is not None and (":" in leg.rtcp_addr[0]) != (":" in self.ingress[0]):
            return alt
        return own

    def send_to_upstream(self, data: bytes) -> None:
        """Send RTCP (e.g. a receiver report) to the upstream source, if known."""
        if self.rtcp_transport is not None and self.upstream_rtcp is not None:
            out = self._srtcp_reply.protect_rtcp(data) if self._srtcp_reply is not None else data
            if out is not None:
                self.rtcp_transport.sendto(out, self.upstream_rtcp)

    def on_socket_error(self, exc: Exception) -> None:
        self._rtcp_socket_errors += 1
        log.debug("flow %s: socket error %s", self.flow_id, exc)

    def sample_rate(self, now: float) -> None:
        then, bytes_then = self._rate_mark
        if now - then >= 0.2:
            received = self.engine.state().bytes_received
            self.bitrate_bps = (received - bytes_then) * 8 / (now - then)
            self._rate_mark = (now, received)

    def close(self) -> None:
        self.engine.close()
        for transport in (self.rtcp_transport, self.alt_rtcp_transport):
            if transport is not None:
                transport.close()
        self.rtcp_transport = self.alt_rtcp_transport = None


def _jitter_ms(rtp: RtpState, clock_rate: int) -> float:
    """A.8 jitter in milliseconds (0 before any source and without a clock rate)."""
    if rtp.ssrc is None or not clock_rate:
        return 0.0
    return rtp.jitter * 1000.0 / clock_rate


#: The data-path engines a FlowTable can run: "native" is the C engine in
#: ``ext`` (the default where it is built), "python" the reference (pyengine).
ENGINES = ("auto", "native", "python")
_warned_fallback = False


# Link-local control groups (IGMP, OSPF, mDNS...): never a stream's.
LOCAL_CONTROL = ipaddress.ip_network("224.0.0.0/24")


def check_group(host: str, rtp_port: int, rtcp_port: int) -> None:
    """``Refused`` for a multicast leg's destination that is no IPv4 multicast group and ports."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise Refused(f"multicast leg destination must be an IP address, not {host!r}") from None
    if ip.version != 4 or not ip.is_multicast or ip in LOCAL_CONTROL:
        raise Refused(f"multicast leg destination {host} is not an IPv4 multicast group outside 224.0.0.0/24")
    for port in (rtp_port, rtcp_port):
        if not 1024 <= port <= 65535:
            raise Refused(f"multicast leg port {port} is outside 1024-65535")


def choose_engine(requested: str = "auto") -> str:
    """``"native"`` or ``"python"`` for a requested engine.

    ``auto`` (the default) is native unless ``MSM_NO_NATIVE=1`` or the
    extension is not built, which is logged once as a warning. Asking for
    ``native`` where it cannot run raises :class:`EngineUnavailable`; an
    unknown name is a ``ConfigError``.
    """
    global _warned_fallback
    if requested not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested == "python":
        return "python"
    reason = ext.unavailable_reason()
    if reason is None:
        return "native"
    if requested == "native":
        raise EngineUnavailable(reason)
    if not _warned_fallback and os.environ.get("MSM_NO_NATIVE", "") in ("", "0"):
        log.warning("native data plane unavailable: %s; using the pure-Python data path", reason)
        _warned_fallback = True
    return "python"


class FlowTable:
    """Every flow of one proxy, keyed by flow id.

    ``engine`` picks the data path once for the whole table (see
    :func:`choose_engine`); everything above :class:`Flow`'s engine seam is the
    same either way.
    """

    def __init__(self, *, host: str = "127.0.0.1", port_range: tuple[int, int] = (30000, 39999),
                 clock: Callable[[], float] = time.monotonic, engine: str = "auto",
                 ssrc_takeover: float = SSRC_TAKEOVER, alt_host: str | None = None) -> None:
        self.host = host
        # Flows are bound on the other IP family too (same ports), for legs of that family:
        # by default loopback for loopback and any for any (see other_family_host).
        self.alt_host = other_family_host(host) if alt_host is None else alt_host or None
        self.port_range = port_range
        self.clock = clock
        # Default SSRC_TAKEOVER (0.5 s): a spoofer interleaving its SSRC with a
        # live source never takes over; a restarted source does.
        self.ssrc_takeover = ssrc_takeover
        self.legs_refused = 0      # AddLeg destinations refused (loops, reflection)
        self._local = LocalAddresses(host)
        self.flows: dict[str, Flow] = {}
        self._next = 0
        self.engine = choose_engine(engine)
        self._native: ext.Engine | None = None   # the engine thread, shared by the native flows

    @property
    def engine_features(self) -> frozenset[str]:
        """What the native engine uses here (``gso``, ``gro``, ``timestamps``); empty for Python."""
        if self.engine != "native":
            return frozenset()
        return self._core().features

    def _core(self) -> ext.Engine:
        if self._native is None:
            self._native = start_core()
        return self._native

    async def _start_engine(self, flow_id: str, rtp_sock: socket.socket, *, clock_rate: int,
                            splice: bool) -> FlowEngine:
        """The table's engine serving ``rtp_sock`` (which it owns from now on)."""
        if self.engine == "native":
            return NativeEngine(self._core(), rtp_sock, clock_rate=clock_rate, splice=splice,
                                takeover=self.ssrc_takeover)
        engine = PythonEngine(flow_id, clock_rate=clock_rate, splice=splice, clock=self.clock,
                              takeover=self.ssrc_takeover)
        await engine.start(rtp_sock)
        return engine

    def check_srtp(self) -> None:
        """``EngineUnavailable`` if this table's engine cannot do SRTP (a native engine built without libsrtp2)."""
        if self.engine == "native" and "srtp" not in self.engine_features:
            raise EngineUnavailable(
                "SRTP refused: the native engine was built without libsrtp2 (install libsrtp2-dev and "
                "rebuild with python ext/build.py, or run the proxy with --engine python)")

    async def add_flow(self, flow_id: str, *, clock_rate: int = 0, splice: bool = True,
                       labels: Mapping[str, str] | None = None, bind_host: str = "",
                       srtp: SrtpKey | None = None, listen: tuple[str, int, str] | None = None) -> Flow:
        """A flow on a free port pair of ``bind_host`` (default: the media host), or with ``listen``
        (address, port, SSM source or ""), one receiving where an SDP file's stream is sent
        (see :func:`bind_listen`); its ingress still names the media host."""
        existing = self.flows.get(flow_id)
        if existing is not None:
            if srtp is not None:
                existing.set_ingress_key(srtp)
            return existing
        if srtp is not None:
            self.check_srtp()
        host = bind_host or self.host
        low, high = self.port_range
        alt_host = self.alt_host if host == self.host else other_family_host(host) if host == self.alt_host else None
        if listen is not None:
            (rtp_sock, rtcp_sock), alt = bind_listen(listen[0], listen[1], host, listen[2]), None
        else:
            (rtp_sock, rtcp_sock), alt = bind_pairs(host, alt_host, low, high, self._next,
                                                    avoid=self._leg_ports_here())
            self._next = (rtp_sock.getsockname()[1] - ((low + 1) & ~1)) // 2 + 1
        ingress = (host, rtp_sock.getsockname()[1])
        fds = (rtp_sock.fileno(), rtcp_sock.fileno())
        loop = asyncio.get_running_loop()
        engine: FlowEngine | None = None
        try:
            engine = await self._start_engine(flow_id, rtp_sock, clock_rate=clock_rate, splice=splice)
            flow = Flow(flow_id, engine, clock_rate=clock_rate, splice=splice, labels=labels, clock=self.clock)
            rtcp_t, _ = await loop.create_datagram_endpoint(
                lambda: Endpoint(flow.on_rtcp, flow.on_socket_error), sock=rtcp_sock)
            if alt is not None:
                await self._add_alt(flow, alt, alt_host or "")
        except BaseException:
            if engine is not None:
                engine.close()
            for sock in (rtp_sock, rtcp_sock, *(alt or ())):
                sock.close()    # (a no-op once an engine or a transport took it)
            raise
        flow.rtcp_transport = cast(DatagramSocket, rtcp_t)
        flow.ingress = ingress
        flow.fds = fds
        if srtp is not None:
            flow.set_ingress_key(srtp)
        self.flows[flow_id] = flow
        log.info("flow %s: ingress %s-%d%s (%s)", flow_id, format_host_port(host, flow.ingress[1]),
                 flow.ingress[1] + 1, f" and {flow.alt_host}" if flow.alt_host else "", self.engine)
        return flow

    @staticmethod
    async def _add_alt(flow: Flow, alt: tuple[socket.socket, socket.socket], alt_host: str) -> None:
        """The flow's pair of the other family: RTP to the engine, RTCP to the flow."""
        rtp, rtcp = alt
        await flow.engine.add_sender(rtp)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: Endpoint(flow.on_rtcp, flow.on_socket_error), sock=rtcp)
        flow.alt_rtcp_transport = cast(DatagramSocket, transport)
        flow.alt_host = alt_host

    # -- trust: where packets may come from and go to -----------------------------------
    async def set_source(self, flow_id: str, host: str, rtp_port: int = 0, rtcp_port: int = 0) -> Flow:
        """Name the flow's source (``host`` ``""``: none, nothing forwarded); ``Refused`` if it cannot be one.

        A name is resolved once, here, to an address of the flow's family.
        """
        flow = self.flows.get(flow_id)
        if flow is None:
            raise NotFound(f"no flow {flow_id!r}")
        if not host:
            flow.set_source(None)
            return flow
        if not 0 <= rtp_port <= 65535 or not 0 <= rtcp_port <= 65535:
            raise Refused(f"source ports out of range: {rtp_port}, {rtcp_port}")
        family = socket.AF_INET6 if ":" in flow.ingress[0] else socket.AF_INET
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            raise Refused(f"source {host!r} is not an address of the flow's family: {exc}") from None
        address = str(ipaddress.ip_address(str(infos[0][4][0]).split("%")[0]))
        flow.set_source(address, rtp_port, rtcp_port)
        log.info("flow %s: source %s rtp %s rtcp %s", flow_id, address, rtp_port or "any", rtcp_port or "any")
        return flow

    def check_destination(self, host: str, rtp_port: int, rtcp_port: int, *, multicast: bool = False) -> None:
        """``Refused`` (counted) for a leg destination that could loop back into this proxy or reflect.

        Refused: anything but an IP address; multicast, broadcast and unspecified
        addresses; ports below 1024 or above 65535; and any ingress port of this
        proxy on any address of this host (loopback, the media host, ...). A
        ``multicast`` leg is the reverse: an IPv4 multicast group only (no loop: the
        proxy's sockets join no group).
        """
        own = {p for flow in self.flows.values() for p in (flow.ingress[1], flow.ingress[1] + 1)}
        try:
            if multicast:
                check_group(host, rtp_port, rtcp_port)
                return
            check_destination(host, rtp_port, rtcp_port, own, self._local)
        except Refused:
            self.legs_refused += 1
            raise

    def _leg_ports_here(self) -> set[int]:
        """Ports that legs send to on this host: a new flow must never bind them."""
        ports: set[int] = set()
        for flow in self.flows.values():
            for leg in flow.legs.values():
                if self._local.is_local(leg.rtp_addr[0]):
                    ports.update((leg.rtp_addr[1], leg.rtcp_addr[1]))
        return ports

    def remove_flow(self, flow_id: str) -> bool:
        flow = self.flows.pop(flow_id, None)
        if flow is None:
            return False
        flow.close()
        log.info("flow %s removed", flow_id)
        return True

    def take_heard(self, limit: int = MAX_LEGS_HEARD) -> list[tuple[str, str]]:
        """(flow, leg) of up to ``limit`` legs whose far end sent RTCP since the last call
        (the rest wait for the next); each is forgotten once taken."""
        taken: list[tuple[str, str]] = []
        for flow in self.flows.values():
            while flow.heard and len(taken) < limit:
                taken.append((flow.flow_id, flow.heard.pop()))
            if len(taken) >= limit:
                break
        return taken

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
