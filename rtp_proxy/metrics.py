"""Prometheus metrics of one proxy, read from the flow table at scrape time.

Nothing is counted twice: the data path keeps plain integers, and this
collector turns each flow's :class:`msm.rtp_proxy.snapshot.FlowSnapshot` (the
same one the DataPlane ``FlowStats`` is made from) into metric families only
when Prometheus asks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .flows import FlowTable
from .snapshot import FlowSnapshot, LegSnapshot

log = logging.getLogger(__name__)

FLOW_LABELS = ["node", "stream", "track", "kind", "ssrc"]
LEG_LABELS = ["node", "stream", "track", "kind", "session", "viewer", "namespace", "pod"]


Family = CounterMetricFamily | GaugeMetricFamily


class _Families:
    """The metric families of one scrape, filled from :class:`FlowSnapshot` values."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: list[str] = FLOW_LABELS) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = FLOW_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        self.received = counter("msm_ingress_packets", "RTP packets received from the upstream source")
        self.octets = counter("msm_ingress_bytes", "RTP bytes received from the upstream source")
        self.expected = counter("msm_ingress_packets_expected", "RTP packets expected (RFC 3550 A.3)")
        self.lost = gauge("msm_ingress_packets_lost", "Cumulative packets lost on the hop into this proxy "
                          "(expected - received; negative with duplicates)")
        self.fraction = gauge("msm_ingress_fraction_lost", "Fraction of packets lost over the last "
                              "reporting interval (0..1)")
        self.jitter = gauge("msm_ingress_jitter_seconds", "RFC 3550 interarrival jitter at the proxy ingress")
        self.bitrate = gauge("msm_ingress_bitrate_bits_per_second", "Ingress bitrate over the last second")
        self.reordered = counter("msm_ingress_reordered_packets", "Packets that arrived out of order")
        self.duplicates = counter("msm_ingress_duplicate_packets", "Packets that arrived twice")
        self.dropped = counter("msm_ingress_dropped_packets", "Datagrams dropped at ingress, by reason",
                               FLOW_LABELS + ["reason"])
        self.rtcp = counter("msm_ingress_rtcp_packets", "RTCP packets received from the upstream source")
        self.rtcp_errors = counter("msm_rtcp_errors", "Malformed RTCP packets (from the source or viewers)")
        self.byes = counter("msm_rtcp_bye_dropped", "Upstream RTCP BYEs kept from viewers")
        self.collisions = counter("msm_rtcp_ssrc_collisions", "Viewer reports whose SSRC collides with the "
                                  "media's or another viewer's")
        self.changes = counter("msm_ingress_source_changes", "Upstream SSRC changes spliced over")
        self.sent = counter("msm_egress_packets", "RTP packets sent to a viewer leg", LEG_LABELS)
        self.sent_bytes = counter("msm_egress_bytes", "RTP bytes sent to a viewer leg", LEG_LABELS)
        self.leg_dropped = counter("msm_egress_dropped_packets", "Packets not sent to a leg, by reason",
                                   LEG_LABELS + ["reason"])
        self.enabled = gauge("msm_egress_leg_enabled", "1 while the leg is playing, 0 while paused", LEG_LABELS)
        self.path_mtu = gauge("msm_egress_path_mtu_bytes", "Path MTU towards the leg (packets over it are "
                              "dropped as reason=mtu_exceeded, never fragmented)", LEG_LABELS)
        self.v_reports = counter("msm_viewer_rtcp_reports", "RTCP reports received from the viewer", LEG_LABELS)
        self.v_fraction = gauge("msm_viewer_fraction_lost", "Fraction lost the viewer reports (last RTCP RR)",
                                LEG_LABELS)
        self.v_lost = gauge("msm_viewer_packets_lost", "Cumulative packets lost the viewer reports", LEG_LABELS)
        self.v_jitter = gauge("msm_viewer_jitter_seconds", "Interarrival jitter the viewer reports", LEG_LABELS)
        self.v_rtt = gauge("msm_viewer_rtt_seconds", "Round-trip time proxy <-> viewer (RTCP LSR/DLSR)",
                           LEG_LABELS)

    def all(self) -> tuple[Family, ...]:
        """Every family, in exposition order."""
        return (self.received, self.octets, self.expected, self.lost, self.fraction, self.jitter, self.bitrate,
                self.reordered, self.duplicates, self.dropped, self.rtcp, self.rtcp_errors, self.byes,
                self.collisions, self.changes, self.sent, self.sent_bytes, self.leg_dropped, self.enabled,
                self.path_mtu, self.v_reports, self.v_fraction, self.v_lost, self.v_jitter, self.v_rtt)

    def add_flow(self, node: str, snap: FlowSnapshot) -> None:
        lab = snap.labels
        base = [node, lab.get("stream", snap.flow_id), lab.get("track", ""), lab.get("kind", ""),
                f"{snap.ssrc:08x}" if snap.ssrc is not None else ""]
        self.received.add_metric(base, snap.packets_received)
        self.octets.add_metric(base, snap.bytes_received)
        self.expected.add_metric(base, snap.packets_expected)
        self.lost.add_metric(base, snap.packets_lost)
        self.fraction.add_metric(base, snap.fraction_lost)
        self.jitter.add_metric(base, snap.jitter_ms / 1000.0)
        self.bitrate.add_metric(base, snap.bitrate_bps)
        self.reordered.add_metric(base, snap.reordered)
        self.duplicates.add_metric(base, snap.duplicates)
        for reason, value in (("invalid", snap.dropped_invalid), ("from_viewer", snap.dropped_from_viewers),
                              ("wrong_source", snap.dropped_wrong_source), ("wrong_ssrc", snap.dropped_wrong_ssrc),
                              ("backlog", snap.dropped_backlog)):
            self.dropped.add_metric(base + [reason], value)
        self.rtcp.add_metric(base, snap.rtcp_received)
        self.rtcp_errors.add_metric(base, snap.rtcp_errors)
        self.byes.add_metric(base, snap.rtcp_bye_dropped)
        self.collisions.add_metric(base, snap.ssrc_collisions)
        self.changes.add_metric(base, snap.source_changes)
        for leg in snap.legs:
            self.add_leg(base[:4], leg)

    def add_leg(self, flow_base: list[str], leg: LegSnapshot) -> None:
        ll = leg.labels
        base = flow_base + [ll.get("session", leg.leg_id), ll.get("viewer", leg.rtp_addr[0]),
                            ll.get("namespace", ""), ll.get("pod", "")]
        self.sent.add_metric(base, leg.packets_sent)
        self.sent_bytes.add_metric(base, leg.bytes_sent)
        self.leg_dropped.add_metric(base + ["send_error"], leg.send_errors)
        self.leg_dropped.add_metric(base + ["backlog"], leg.dropped_backlog)
        self.leg_dropped.add_metric(base + ["mtu_exceeded"], leg.mtu_exceeded)
        if leg.path_mtu:
            self.path_mtu.add_metric(base, leg.path_mtu)
        self.enabled.add_metric(base, 1.0 if leg.enabled else 0.0)
        self.v_reports.add_metric(base, leg.rtcp_received)
        if leg.has_report:
            self.v_fraction.add_metric(base, leg.viewer_fraction_lost)
            self.v_lost.add_metric(base, leg.viewer_packets_lost)
            self.v_jitter.add_metric(base, leg.viewer_jitter_ms / 1000.0)
        if leg.rtt_ms is not None:
            self.v_rtt.add_metric(base, leg.rtt_ms / 1000.0)


class ProxyCollector(Collector):
    """Turns one :meth:`Flow.snapshot` per flow into metric families at scrape time."""

    def __init__(self, table: FlowTable, node: str) -> None:
        self.table = table
        self.node = node

    def collect(self) -> Iterator[Family]:
        flows = GaugeMetricFamily("msm_flows", "Flows on this proxy", labels=["node"])
        flows.add_metric([self.node], len(self.table.flows))
        engine = GaugeMetricFamily("msm_dataplane_engine", "1 for the data path this proxy runs (native: the C "
                                   "engine; python: the reference), with the kernel features it uses",
                                   labels=["node", "engine", "features"])
        engine.add_metric([self.node, self.table.engine, ",".join(sorted(self.table.engine_features))], 1.0)
        refused = CounterMetricFamily("msm_legs_refused", "Legs refused: towards this proxy's own ingress "
                                      "(a loop), a multicast/broadcast address or a port below 1024",
                                      labels=["node"])
        refused.add_metric([self.node], self.table.legs_refused)
        families = _Families()
        for flow in list(self.table.flows.values()):
            families.add_flow(self.node, flow.snapshot())
        yield from (flows, engine, refused, *families.all())


def proxy_registry(table: FlowTable, node: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ProxyCollector(table, node))
    return registry
