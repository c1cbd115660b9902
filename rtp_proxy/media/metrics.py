"""Prometheus metrics of the proxy's media side: groups, their receivers, ST 2110 bridges, app connections.

Read at scrape time, like :mod:`msm.rtp_proxy.metrics`: groups from the
:class:`~.plane.MediaNode` (under its lock), bridges from
:meth:`~.bridges.BridgeSet.snapshot`, app connections from the media agent's
``snapshot()``. Registered beside the proxy's ``ProxyCollector`` on its /metrics.

Label values come from configuration (group URNs, bridge names) or from the proxy
(receiver names, connection ids); drop and incomplete reasons are a fixed small set.

The same sources answer the control plane: the collector hands :func:`fill_stats` to the
node (:attr:`~.plane.MediaNode.extra_stats`), so ``MediaPlane.ListGroups`` carries the
bridges and app connections beside the groups, and the control plane's page and
``msm streams`` show every node's from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from msm.protos import media_pb2 as mpb

from .bridges import BridgeSet
from .plane import MediaNode
from .st2110_timing import CLASSES

__all__ = ["MediaCollector", "fill_stats", "group_rows"]

QUANTILES = (0.5, 0.99)
EGRESS_CLASSES = (*CLASSES, "unpaced", "unknown")
# App connections listed in one ListGroups reply (the rest counted in left_out): 256 apps may
# open several each; a page or a table reads a few dozen.
MAX_LISTED_CONNECTIONS = 512


def _count(value: Any) -> int:
    """A counter from a snapshot as a non-negative int (a snapshot's shape is never trusted to crash us)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _counts(value: Any) -> dict[str, int]:
    return {str(k): _count(v) for k, v in value.items()} if isinstance(value, dict) else {}


def bridge_stats(row: dict[str, Any]) -> mpb.BridgeStats:
    """One row of :meth:`~.bridges.BridgeSet.snapshot` as the message."""
    egress = row.get("direction") == "egress"
    return mpb.BridgeStats(
        name=str(row.get("name", "")), direction=str(row.get("direction", "")), group=str(row.get("group", "")),
        address=f"{row.get('address', '')}:{row.get('port', '')}", pacing=str(row.get("pacing", "")) if egress else "",
        pacing_class=str(row.get("pacing_class", "unknown")) if egress else "", frames=_count(row.get("frames")),
        bytes=_count(row.get("bytes")), packets=_count(row.get("packets")),
        lost_packets=_count(row.get("lost_packets")), incomplete=_counts(row.get("incomplete")),
        dropped=_counts(row.get("dropped")), queue_depth=_count(row.get("queue_depth")),
        late_packets=_count(row.get("late_packets")))


def connection_stats(conn: dict[str, Any]) -> mpb.ConnectionStats:
    """One connection of the media agent's ``snapshot()`` as the message."""
    p50, p99 = conn.get("latency_p50_us"), conn.get("latency_p99_us")
    return mpb.ConnectionStats(
        connection=str(conn.get("connection", "")), app=str(conn.get("app", "")),
        direction=str(conn.get("direction", "")), target=str(conn.get("target", "")), pid=_count(conn.get("pid")),
        uid=_count(conn.get("uid")), attached=bool(conn.get("attached")), frames=_count(conn.get("frames")),
        bytes=_count(conn.get("bytes")), drops=_counts(conn.get("drops")),
        queue_depth=_count(conn.get("queue_depth")), has_latency=p50 is not None,
        latency_p50_us=float(p50 or 0.0), latency_p99_us=float(p99 or 0.0))


def fill_stats(reply: mpb.ListGroupsReply, bridges: BridgeSet | None,
               agent: Callable[[], dict[str, Any]] | None) -> None:
    """The proxy's bridges and (at most :data:`MAX_LISTED_CONNECTIONS`) app connections into ``reply``."""
    if bridges is not None:
        reply.bridges.extend(bridge_stats(row) for row in bridges.snapshot())
    if agent is not None:
        snap = agent()
        reply.apps = _count(snap.get("apps"))
        connections = [c for c in snap.get("connections", []) if isinstance(c, dict)]
        reply.connections.extend(connection_stats(c) for c in connections[:MAX_LISTED_CONNECTIONS])
        reply.left_out += max(0, len(connections) - MAX_LISTED_CONNECTIONS)


def group_rows(media: MediaNode) -> list[dict[str, Any]]:
    """Each group's counters and its receivers', copied under the node's lock."""
    rows = []
    with media.lock:
        for group in media.groups:
            receivers = []
            for name, stats in group.receiver_stats.items():
                receivers.append({"name": name, "frames": stats.frames, "bytes": stats.bytes,
                                  "drops": dict(stats.drops),
                                  "latency_us": {q: stats.latency_us(q) for q in QUANTILES}})
            links = [{"peer": peer_node, "provider": peer.provider, "direction": "out", "frames": peer.frames,
                      "bytes": peer.bytes, "in_flight": peer.in_flight()}
                     for (urn, peer_node), peer in media.outbound.items() if urn == group.urn]
            inbound = media.inbound.by_group.get(group.urn)
            if inbound is not None:
                links.append({"peer": inbound.peer_node, "provider": inbound.provider, "direction": "in",
                              "frames": inbound.frames, "bytes": inbound.bytes, "in_flight": 0})
            rows.append({"urn": group.urn, "sender": group.sender or "", "frames": group.frames_in,
                         "bytes": group.bytes_in, "incomplete": dict(group.incomplete), "receivers": receivers,
                         "links": links})
    return rows


class _Families:
    def __init__(self) -> None:
        self.items: list[Metric] = []

    def counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        self.items.append(family)
        return family

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=labels)
        self.items.append(family)
        return family


class _LinkFamilies:
    """A group's fabric links to and from other nodes: frames, bytes, frames in flight."""

    def __init__(self, out: _Families) -> None:
        labels = ["node", "group", "peer", "provider", "direction"]
        self.frames = out.counter("msm_media_link_frames", "Frames a group's fabric link to (out) or from (in) "
                                  "another node carried", labels)
        self.bytes = out.counter("msm_media_link_bytes", "Bytes a group's fabric link carried", labels)
        self.in_flight = out.gauge("msm_media_link_in_flight_frames", "Frames sent on a group's fabric link and "
                                   "not yet released by the peer (its queue)", labels)

    def add(self, node: str, row: dict[str, Any]) -> None:
        for link in row["links"]:
            labels = [node, row["urn"], link["peer"], link["provider"], link["direction"]]
            self.frames.add_metric(labels, link["frames"])
            self.bytes.add_metric(labels, link["bytes"])
            self.in_flight.add_metric(labels, link["in_flight"])


class MediaCollector(Collector):
    """The media families of one proxy (``node``)."""

    def __init__(self, media: MediaNode, bridges: BridgeSet | None = None,
                 agent: Callable[[], dict[str, Any]] | None = None) -> None:
        self.media = media
        self.bridges = bridges
        self.agent = agent    # the media agent's snapshot(), when the proxy serves apps
        media.extra_stats = lambda reply: fill_stats(reply, bridges, agent)   # ListGroups: the same sources

    def collect(self) -> Iterator[Metric]:
        out = _Families()
        self._groups(out)
        if self.bridges is not None:
            self._bridges(out)
        if self.agent is not None:
            self._connections(out)
        yield from out.items

    def _groups(self, out: _Families) -> None:
        node = self.media.node
        g = ["node", "group"]
        r = ["node", "group", "receiver"]
        frames_in = out.counter("msm_media_group_frames", "Frames published into a group by its sender here", g)
        bytes_in = out.counter("msm_media_group_bytes", "Bytes published into a group by its sender here", g)
        incomplete = out.counter("msm_media_group_incomplete_frames", "Frames published marked incomplete, "
                                 "by reason", [*g, "reason"])
        members = out.gauge("msm_media_group_receivers", "Receivers of a group on this proxy", g)
        info = out.gauge("msm_media_group_info", "A group on this proxy and its sender ('' for none)",
                         [*g, "sender"])
        frames = out.counter("msm_media_frames", "Frames a group's receiver took", r)
        octets = out.counter("msm_media_bytes", "Bytes a group's receiver took", r)
        drops = out.counter("msm_media_dropped_frames", "Frames a group's receiver could not take, by reason",
                            [*r, "reason"])
        latency = out.gauge("msm_media_latency_seconds", "Arrival at this proxy to hand-over to the receiver, "
                            "over its last 600 frames", [*r, "quantile"])
        links = _LinkFamilies(out)
        for row in group_rows(self.media):
            links.add(node, row)
            frames_in.add_metric([node, row["urn"]], row["frames"])
            bytes_in.add_metric([node, row["urn"]], row["bytes"])
            members.add_metric([node, row["urn"]], len(row["receivers"]))
            info.add_metric([node, row["urn"], row["sender"]], 1.0)
            for reason, count in row["incomplete"].items():
                incomplete.add_metric([node, row["urn"], reason], count)
            for rec in row["receivers"]:
                labels = [node, row["urn"], rec["name"]]
                frames.add_metric(labels, rec["frames"])
                octets.add_metric(labels, rec["bytes"])
                for reason, count in rec["drops"].items():
                    drops.add_metric([*labels, reason], count)
                for q, us in rec["latency_us"].items():
                    if us is not None:
                        latency.add_metric([*labels, str(q)], us / 1e6)

    def _bridges(self, out: _Families) -> None:
        assert self.bridges is not None
        node = self.media.node
        b = ["node", "bridge", "direction", "group"]
        frames = out.counter("msm_st2110_bridge_frames", "Frames an ST 2110 bridge published (ingress) or sent "
                             "(egress)", b)
        octets = out.counter("msm_st2110_bridge_bytes", "Frame bytes an ST 2110 bridge published or sent", b)
        packets = out.counter("msm_st2110_bridge_packets", "RTP packets an ST 2110 bridge received or sent", b)
        lost = out.counter("msm_st2110_ingress_lost_packets", "Packets missing at an ST 2110 ingress "
                           "(sequence gaps)", ["node", "bridge"])
        incomplete = out.counter("msm_st2110_ingress_incomplete_frames", "Incomplete frames at an ST 2110 "
                                 "ingress, by reason", ["node", "bridge", "reason"])
        dropped = out.counter("msm_st2110_bridge_dropped_frames", "Frames an ST 2110 bridge dropped, by reason",
                              ["node", "bridge", "reason"])
        depth = out.gauge("msm_st2110_bridge_queue_depth", "Frames waiting in an ST 2110 bridge", ["node", "bridge"])
        info = out.gauge("msm_st2110_bridge_info", "An ST 2110 bridge: its address, pacing mode and SDP file",
                         [*b, "address", "pacing", "sdp"])
        pacing = out.gauge("msm_st2110_egress_pacing", "1 for an ST 2110 egress's measured ST 2110-21 class over "
                           "its last 300 frames (narrow, wide, non-compliant; unpaced; unknown before a frame)",
                           ["node", "bridge", "class"])
        classed = out.counter("msm_st2110_egress_pacing_frames", "Frames an ST 2110 egress sent, by measured "
                              "ST 2110-21 class", ["node", "bridge", "class"])
        late = out.counter("msm_st2110_egress_late_packets", "Packets the pacer sent after their due time",
                           ["node", "bridge"])
        for row in self.bridges.snapshot():
            labels = [node, row["name"], row["direction"], row["group"]]
            short = [node, row["name"]]
            frames.add_metric(labels, row["frames"])
            octets.add_metric(labels, row["bytes"])
            packets.add_metric(labels, row["packets"])
            depth.add_metric(short, row["queue_depth"])
            pace = row["pacing"] if row["direction"] == "egress" else ""
            info.add_metric([*labels, f"{row['address']}:{row['port']}", pace, row.get("sdp", "")], 1.0)
            for reason, count in row["dropped"].items():
                dropped.add_metric([*short, reason], count)
            if row["direction"] == "ingress":
                lost.add_metric(short, row["lost_packets"])
                for reason, count in row["incomplete"].items():
                    incomplete.add_metric([*short, reason], count)
                continue
            for klass in EGRESS_CLASSES:
                pacing.add_metric([*short, klass], 1.0 if row["pacing_class"] == klass else 0.0)
            for klass, count in row.get("pacing_frames", {}).items():
                classed.add_metric([*short, klass], count)
            if "late_packets" in row:
                late.add_metric(short, row["late_packets"])

    def _connections(self, out: _Families) -> None:
        assert self.agent is not None
        node = self.media.node
        c = ["node", "connection", "direction", "target"]
        frames = out.counter("msm_media_connection_frames", "Frames an app's connection moved", c)
        octets = out.counter("msm_media_connection_bytes", "Bytes an app's connection moved", c)
        drops = out.counter("msm_media_connection_dropped_frames", "Frames an app's connection dropped, by reason",
                            [*c, "reason"])
        depth = out.gauge("msm_media_connection_queue_depth", "Frames waiting in an app's connection", c)
        latency = out.gauge("msm_media_connection_latency_seconds", "Per-frame latency of an app's receiving "
                            "connection", [*c, "quantile"])
        shared = out.counter("msm_media_connection_by_reference_frames", "Frames a receiving connection got as a "
                             "descriptor naming the sender's buffer (no copy)", c)
        copied = out.counter("msm_media_connection_copied_frames", "Frames the proxy copied into a receiving "
                             "connection's buffer (any source)", c)
        why = out.counter("msm_media_connection_local_copies", "Frames of a local sender copied rather than shared, "
                          "by reason", [*c, "reason"])
        copied_bytes = out.counter("msm_media_connection_copied_bytes", "Payload bytes the proxy copied into a "
                                   "receiving connection's buffers", c)
        apps = out.gauge("msm_media_apps", "Apps connected to the media agent", ["node"])
        snap = self.agent()
        apps.add_metric([node], snap.get("apps", 0))
        for conn in snap.get("connections", []):   # .get: a scrape never fails on the agent's shape
            labels = [node, str(conn.get("connection", "")), str(conn.get("direction", "")),
                      str(conn.get("target", ""))]
            frames.add_metric(labels, conn.get("frames", 0))
            octets.add_metric(labels, conn.get("bytes", 0))
            depth.add_metric(labels, conn.get("queue_depth", 0))
            for reason, count in conn.get("drops", {}).items():
                drops.add_metric([*labels, reason], count)
            if "by_reference" in conn:   # receiving memif connections only
                shared.add_metric(labels, conn["by_reference"])
                copied.add_metric(labels, conn.get("copied", 0))
                copied_bytes.add_metric(labels, conn.get("copied_bytes", 0))
                for reason, count in conn.get("copy_reasons", {}).items():
                    why.add_metric([*labels, reason], count)
            for q in QUANTILES:
                value = conn.get(f"latency_p{round(q * 100)}_us")
                if value is not None:
                    latency.add_metric([*labels, str(q)], value / 1e6)
