"""One read of a flow: its counters, its legs' and its RFC 3550 statistics, frozen.

:meth:`msm.rtp_proxy.flows.Flow.snapshot` makes it the same way on either
engine (the engine's RTP side plus the flow's RTCP side); the DataPlane gRPC
``FlowStats`` (:func:`msm.rtp_proxy.service.flow_stats`) and the Prometheus
metrics (:mod:`msm.rtp_proxy.metrics`) are both built from it, so they can
never disagree about what a counter means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .engine import Address


@dataclass(frozen=True, slots=True)
class LegSnapshot:
    """One leg: where it goes, what was sent there, and what its viewer reports."""

    leg_id: str
    rtp_addr: Address
    rtcp_addr: Address
    enabled: bool
    labels: Mapping[str, str]
    packets_sent: int
    bytes_sent: int
    rtcp_sent: int
    send_errors: int          # RTP and RTCP sends the kernel refused
    dropped_backlog: int      # RTP and RTCP packets not sent: the socket's backlog was full
    rtcp_received: int
    has_report: bool
    viewer_fraction_lost: float
    viewer_packets_lost: int
    viewer_jitter_ms: float
    rtt_ms: float | None
    srtp: bool = False        # this leg sends SRTP
    mtu_exceeded: int = 0     # RTP packets over the path MTU: not sent (never fragmented)
    path_mtu: int = 0         # towards the leg's RTP address (0: unknown)


@dataclass(frozen=True, slots=True)
class FlowSnapshot:
    """One flow: ingress counters, the current source's statistics, and every leg."""

    flow_id: str
    engine: str
    ingress: Address
    labels: Mapping[str, str]
    clock_rate: int
    # RTP from the upstream source.
    packets_received: int
    bytes_received: int
    packets_expected: int     # RFC 3550 A.3, over every source the flow has had
    packets_lost: int         # expected - received (negative with duplicates)
    jitter_ms: float          # A.8, the current source; 0 without a clock rate
    ssrc: int | None          # the current source
    out_ssrc: int | None      # what viewers see (splicing)
    reordered: int            # the current source
    duplicates: int           # the current source
    fraction_lost: float      # over the last receiver-report interval
    bitrate_bps: float
    source_changes: int
    packets_forwarded: int
    dropped_invalid: int
    dropped_from_viewers: int
    dropped_wrong_source: int  # RTP or RTCP not from the flow's source
    dropped_wrong_ssrc: int    # RTP from the source with another SSRC than the learned one
    dropped_backlog: int
    socket_errors: int
    # RTCP.
    rtcp_received: int
    rtcp_errors: int
    rtcp_bye_dropped: int
    ssrc_collisions: int
    legs: tuple[LegSnapshot, ...]
    # SRTP: what arrives is SRTP; RTP and RTCP that failed authentication or the replay check.
    srtp: bool = False
    srtp_errors: int = 0

    def leg(self, leg_id: str) -> LegSnapshot:
        """The leg ``leg_id`` (``KeyError`` if the flow has none)."""
        for leg in self.legs:
            if leg.leg_id == leg_id:
                return leg
        raise KeyError(leg_id)
