"""The seam between a flow and its RTP data path: one Protocol, two engines.

A :class:`msm.rtp_proxy.flows.Flow` owns the control side of a flow (its legs,
the RTCP socket, viewers' reports, the receiver reports it sends upstream) and
one :class:`FlowEngine` that serves the RTP socket: receive, measure (RFC 3550
A.1/A.8), splice and fan out. Two engines implement it, twins held to the same
behaviour and the same numbers by the tests:

- :class:`msm.rtp_proxy.pyengine.PythonEngine`, the pure-Python reference, in
  the event loop;
- :class:`msm.rtp_proxy.native.NativeEngine`, over the C engine in ``ext``
  (its own thread).

An engine is read through two frozen values, :class:`RtpState` (the flow's RTP
counters and the current source's statistics, read at one instant) and
:class:`LegCounters` (what it sent to one leg); the flow adds its RTCP side and
makes the one :class:`msm.rtp_proxy.snapshot.FlowSnapshot` that gRPC and
Prometheus both read.

Errors: :class:`EngineUnavailable` is ``ext.NativeUnavailable`` translated into
msm's error tree (``ext`` imports nothing of msm, so the proxy translates at its
boundary: :func:`msm.rtp_proxy.flows.choose_engine` and the native engine's
start).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from msm.sdk.errors import Unavailable
from msm.sdk.rtp import ReceiverReport, ReportBlock

from .srtp import SrtpKey

__all__ = ["MAX_SOCKET_BACKLOG", "SSRC_TAKEOVER", "TAKEOVER_SEQUENTIAL",
           "Address", "DatagramSocket", "Endpoint", "EngineUnavailable", "FlowEngine", "Leg",
           "LegCounters", "RtpState"]

Address = tuple[str, int]

# A viewer whose socket cannot keep up must not grow the proxy's memory: asyncio
# buffers a datagram only when the kernel says EAGAIN, so past this many bytes
# queued for one flow's socket we drop (and count) instead. 1 MiB is ~0.4 s of
# a 20 Mbit/s stream, far more than a healthy loopback or LAN ever queues.
MAX_SOCKET_BACKLOG = 1 << 20

#: How long (seconds) the current SSRC must have been silent before another SSRC
#: from the same source may take over (the new one must also be in sequence,
#: RFC 3550 A.1 MIN_SEQUENTIAL). A live source sends several packets a second; a
#: restarted one is away far longer than this; a spoofer interleaving its own
#: SSRC with a live source never gets in.
SSRC_TAKEOVER = 0.5
#: RFC 3550 A.1 MIN_SEQUENTIAL, for a new SSRC taking over.
TAKEOVER_SEQUENTIAL = 2


class EngineUnavailable(Unavailable):
    """The native engine was asked for and cannot run here; the message says why."""


@dataclass(slots=True)
class Leg:
    """One egress destination of a flow (a viewer, or the next proxy), and what its RTCP told us.

    What the engine sent to it on the RTP path is the engine's
    (:meth:`FlowEngine.leg_counters`); the snapshot adds both up.
    """

    leg_id: str
    rtp_addr: Address
    rtcp_addr: Address
    enabled: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Set: this leg sends SRTP/SRTCP with this key (a leg to another node's proxy).
    srtp: SrtpKey | None = None
    #: The path MTU towards rtp_addr (the kernel's route and PMTU cache; 0: unknown), see ports.path_mtu.
    path_mtu: int = 0
    # The RTCP side, kept by the flow.
    rtcp_sent: int = 0
    rtcp_send_errors: int = 0
    rtcp_dropped_backlog: int = 0
    rtcp_received: int = 0
    last_report: ReceiverReport | None = None
    # What the viewer reports about the stream (its last report block).
    has_report: bool = False
    viewer_fraction_lost: float = 0.0
    viewer_packets_lost: int = 0
    viewer_jitter_ms: float = 0.0
    rtt_ms: float | None = None
    reporter_ssrc: int | None = None


@dataclass(frozen=True, slots=True)
class RtpState:
    """What a flow's RTP path counted and measured, read at one instant."""

    packets_received: int = 0
    bytes_received: int = 0
    packets_forwarded: int = 0
    dropped_invalid: int = 0
    dropped_from_viewers: int = 0
    dropped_backlog: int = 0
    socket_errors: int = 0
    source_changes: int = 0
    #: Not from the flow's source (address, or port when it names one); not the learned SSRC.
    dropped_wrong_source: int = 0
    dropped_wrong_ssrc: int = 0
    #: SRTP packets that failed authentication or the replay check (dropped).
    srtp_errors: int = 0
    #: The current upstream source, and the SSRC viewers see (splicing).
    ssrc: int | None = None
    out_ssrc: int | None = None
    seq_offset: int = 0
    ts_offset: int = 0
    #: Packets lost by / expected from earlier sources.
    lost_before: int = 0
    expected_before: int = 0
    #: The current source's sequence space (RFC 3550 A.1) and jitter (A.8, timestamp units).
    received: int = 0
    expected: int = 0
    extended_highest_seq: int = 0
    duplicates: int = 0
    reordered: int = 0
    restarts: int = 0
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class LegCounters:
    """What the RTP path sent to one leg."""

    packets_sent: int = 0
    bytes_sent: int = 0
    send_errors: int = 0
    dropped_backlog: int = 0
    gso_sends: int = 0     # sends that carried a run of packets (native engine, UDP GSO)
    mtu_exceeded: int = 0  # packets over the leg's path MTU: refused, never fragmented


class FlowEngine(Protocol):
    """The RTP path of one flow. Both engines implement exactly this."""

    #: ``"python"`` or ``"native"``.
    name: str

    def set_legs(self, legs: Sequence[Leg]) -> None:
        """Publish the flow's legs: the enabled ones are the fan-out, every one's RTP address is a viewer.

        A leg object seen before keeps its counters; a new object (even under
        an old id) starts from zero.
        """

    async def add_sender(self, sock: socket.socket) -> None:
        """Legs of ``sock``'s IP family leave from ``sock`` (the flow's RTP socket of the other
        family, on the same port), which the engine owns from now on; what arrives there is
        treated as on the flow's own socket (a viewer's packets are dropped and counted).
        """

    def set_source(self, source: Address | None) -> None:
        """Forward only RTP from ``source`` (an IP address, port 0 for any port); ``None``: nothing at all.

        The SSRC is learned from the source's first valid packet; another SSRC
        takes over only after the current one was silent for the engine's
        takeover time and the new one is in sequence (RFC 3550 A.1).
        """

    def set_ingress_key(self, key: SrtpKey | None) -> None:
        """What arrives is SRTP under ``key`` (a newer epoch: a rekey, the previous key kept for a grace).

        ``None`` only before any key: a flow's ingress never goes back to plain RTP.
        """

    def set_leg_key(self, leg_id: str, key: SrtpKey) -> None:
        """The published leg ``leg_id`` protects with ``key`` from now on (a newer epoch than its own)."""

    def state(self) -> RtpState:
        """The RTP path's counters and statistics, now."""

    def leg_counters(self, leg_id: str) -> LegCounters:
        """What was sent to the published leg ``leg_id`` (zeros if there is none)."""

    def report_block(self, *, lsr: int = 0, dlsr: int = 0) -> ReportBlock | None:
        """RFC 3550 A.3 report about the current source, starting a new interval; ``None`` before any."""

    def counters(self) -> Mapping[str, int]:
        """The engine's own work counters (the native engine's ``batches``); for the benchmark."""

    def close(self) -> None:
        """Stop serving; counters stay readable, frozen."""


class DatagramSocket(Protocol):
    """What the data paths use of an asyncio datagram transport.

    (Selector transports have ``get_write_buffer_size``; the typeshed stub of
    ``DatagramTransport`` does not say so.)
    """

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def close(self) -> None: ...


class Endpoint(asyncio.DatagramProtocol):
    """Hands each datagram (with a ``(host, port)`` address, IPv6 too) and each socket error on."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None], on_error: Callable[[Exception], None]) -> None:
        self.on_datagram = on_datagram
        self.on_error = on_error

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # IPv6 addresses come as (host, port, flowinfo, scope_id): keep (host, port).
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished viewer lands here; it must not
        # stop the flow, so it is only counted.
        self.on_error(exc)
