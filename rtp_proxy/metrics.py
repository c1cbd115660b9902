"""Prometheus metrics of one proxy, read from the flow table at scrape time.

Nothing is counted twice: the data path keeps plain integers, and this
collector turns them into metric families only when Prometheus asks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .flows import FlowTable

log = logging.getLogger(__name__)

FLOW_LABELS = ["node", "stream", "track", "kind", "ssrc"]
LEG_LABELS = ["node", "stream", "track", "kind", "session", "viewer", "namespace", "pod"]


class ProxyCollector(Collector):
    def __init__(self, table: FlowTable, node: str) -> None:
        self.table = table
        self.node = node

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        def counter(name: str, doc: str, labels: list[str] = FLOW_LABELS) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = FLOW_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        received = counter("msm_ingress_packets", "RTP packets received from the upstream source")
        octets = counter("msm_ingress_bytes", "RTP bytes received from the upstream source")
        expected = counter("msm_ingress_packets_expected", "RTP packets expected (RFC 3550 A.3)")
        lost = gauge("msm_ingress_packets_lost", "Cumulative packets lost on the hop into this proxy "
                     "(expected - received; negative with duplicates)")
        fraction = gauge("msm_ingress_fraction_lost", "Fraction of packets lost over the last "
                         "reporting interval (0..1)")
        jitter = gauge("msm_ingress_jitter_seconds", "RFC 3550 interarrival jitter at the proxy ingress")
        bitrate = gauge("msm_ingress_bitrate_bits_per_second", "Ingress bitrate over the last second")
        reordered = counter("msm_ingress_reordered_packets", "Packets that arrived out of order")
        duplicates = counter("msm_ingress_duplicate_packets", "Packets that arrived twice")
        dropped = counter("msm_ingress_dropped_packets", "Datagrams dropped at ingress, by reason",
                          FLOW_LABELS + ["reason"])
        rtcp = counter("msm_ingress_rtcp_packets", "RTCP packets received from the upstream source")
        rtcp_errors = counter("msm_rtcp_errors", "Malformed RTCP packets (from the source or viewers)")
        byes = counter("msm_rtcp_bye_dropped", "Upstream RTCP BYEs kept from viewers")
        collisions = counter("msm_rtcp_ssrc_collisions", "Viewer reports whose SSRC collides with the "
                             "media's or another viewer's")
        changes = counter("msm_ingress_source_changes", "Upstream SSRC changes spliced over")
        sent = counter("msm_egress_packets", "RTP packets sent to a viewer leg", LEG_LABELS)
        sent_bytes = counter("msm_egress_bytes", "RTP bytes sent to a viewer leg", LEG_LABELS)
        leg_dropped = counter("msm_egress_dropped_packets", "Packets not sent to a leg, by reason",
                              LEG_LABELS + ["reason"])
        enabled = gauge("msm_egress_leg_enabled", "1 while the leg is playing, 0 while paused", LEG_LABELS)
        v_reports = counter("msm_viewer_rtcp_reports", "RTCP reports received from the viewer", LEG_LABELS)
        v_fraction = gauge("msm_viewer_fraction_lost", "Fraction lost the viewer reports (last RTCP RR)",
                           LEG_LABELS)
        v_lost = gauge("msm_viewer_packets_lost", "Cumulative packets lost the viewer reports", LEG_LABELS)
        v_jitter = gauge("msm_viewer_jitter_seconds", "Interarrival jitter the viewer reports", LEG_LABELS)
        v_rtt = gauge("msm_viewer_rtt_seconds", "Round-trip time proxy <-> viewer (RTCP LSR/DLSR)",
                      LEG_LABELS)
        flows = GaugeMetricFamily("msm_flows", "Flows on this proxy", labels=["node"])
        flows.add_metric([self.node], len(self.table.flows))
        engine = GaugeMetricFamily("msm_dataplane_engine", "1 for the data path this proxy runs (native: the C "
                                   "engine; python: the reference), with the kernel features it uses",
                                   labels=["node", "engine", "features"])
        engine.add_metric([self.node, self.table.engine, ",".join(sorted(self.table.engine_features))], 1.0)

        for flow in list(self.table.flows.values()):
            lab = flow.labels
            base = [self.node, lab.get("stream", flow.flow_id), lab.get("track", ""), lab.get("kind", ""),
                    f"{flow.ssrc:08x}" if flow.ssrc is not None else ""]
            stats = flow.stats
            received.add_metric(base, flow.packets_received)
            octets.add_metric(base, flow.bytes_received)
            expected.add_metric(base, flow.packets_expected)
            lost.add_metric(base, flow.packets_lost)
            fraction.add_metric(base, flow.fraction_lost)
            jitter.add_metric(base, flow.jitter_ms / 1000.0)
            bitrate.add_metric(base, flow.bitrate_bps)
            reordered.add_metric(base, stats.reordered if stats else 0)
            duplicates.add_metric(base, stats.duplicates if stats else 0)
            for reason, value in (("invalid", flow.dropped_invalid), ("from_viewer", flow.dropped_from_viewers),
                                  ("backlog", flow.dropped_backlog)):
                dropped.add_metric(base + [reason], value)
            rtcp.add_metric(base, flow.rtcp_received)
            rtcp_errors.add_metric(base, flow.rtcp_errors)
            byes.add_metric(base, flow.rtcp_bye_dropped)
            collisions.add_metric(base, flow.ssrc_collisions)
            changes.add_metric(base, flow.source_changes)
            for leg in list(flow.legs.values()):
                ll = leg.labels
                leg_base = base[:4] + [ll.get("session", leg.leg_id), ll.get("viewer", leg.rtp_addr[0]),
                                       ll.get("namespace", ""), ll.get("pod", "")]
                sent.add_metric(leg_base, leg.packets_sent)
                sent_bytes.add_metric(leg_base, leg.bytes_sent)
                leg_dropped.add_metric(leg_base + ["send_error"], leg.send_errors)
                leg_dropped.add_metric(leg_base + ["backlog"], leg.dropped_backlog)
                enabled.add_metric(leg_base, 1.0 if leg.enabled else 0.0)
                v_reports.add_metric(leg_base, leg.rtcp_received)
                if leg.has_report:
                    v_fraction.add_metric(leg_base, leg.viewer_fraction_lost)
                    v_lost.add_metric(leg_base, leg.viewer_packets_lost)
                    v_jitter.add_metric(leg_base, leg.viewer_jitter_ms / 1000.0)
                if leg.rtt_ms is not None:
                    v_rtt.add_metric(leg_base, leg.rtt_ms / 1000.0)
        yield from (flows, engine, received, octets, expected, lost, fraction, jitter, bitrate, reordered,
                    duplicates, dropped, rtcp, rtcp_errors, byes, collisions, changes, sent, sent_bytes, leg_dropped,
                    enabled, v_reports, v_fraction, v_lost, v_jitter, v_rtt)


class MetricsServer:
    """``GET /metrics`` (and ``/healthz``) over aiohttp for one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]"), int(port), reuse_address=True)
        await site.start()
        bound = self.runner.addresses[0][1] if self.runner.addresses else int(port)
        self.address = f"{host}:{bound}"
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def proxy_registry(table: FlowTable, node: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ProxyCollector(table, node))
    return registry
