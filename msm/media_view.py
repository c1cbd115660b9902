"""The media side in the ``msm`` command: ``msm up``'s bridges (config, banner) and ``msm streams``' media table.

``msm streams`` asks the control plane for every node's media at once
(``MediaControl.ListPlacements`` with ``with_stats``: each group's placement, and from
each node's proxy its groups, receivers, fabric links, ST 2110 bridges and app
connections; ``msm up``'s proxy too): :func:`control_media`, :func:`media_rows`,
:func:`render_media`. When the control plane knows no media node (one older than its
MediaControl, or a proxy not yet announced) the table is read from the local proxy's
Prometheus /metrics instead (the ``msm_media_*`` and
``msm_st2110_*`` families of :mod:`msm.rtp_proxy.media.metrics`): :func:`media_table`.
A source that does not answer leaves its table out (the streams table does not depend on it).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .media_config import read_media

if TYPE_CHECKING:
    from .mesh import LocalMesh, MeshConfig

__all__ = ["banner_lines", "configure", "media_table"]

#: Seconds `msm streams` waits for the proxy's /metrics.
SCRAPE_TIMEOUT = 2.0
#: Bytes of a /metrics answer read at most (thousands of series are well under it).
MAX_SCRAPE = 8 << 20


def configure(config: MeshConfig, file_values: dict[str, Any], path: str | None) -> None:
    """The config file's ``media:`` section into the mesh's settings (ConfigError, one line, naming its path)."""
    media = read_media(file_values, path or "config")
    config.media_groups = media.groups
    config.bridges = media.bridges


def banner_lines(mesh: LocalMesh) -> list[str]:
    """What ``msm up`` prints about the bridges it runs."""
    if mesh.bridges is None:
        return []
    lines = []
    for row in mesh.bridges.snapshot():
        where = f"{row['address']}:{row['port']}"
        kind = _transport(row)
        if row["direction"] == "ingress":
            source = f" from {row['source']}" if row["source"] else ""
            lines.append(f"  bridge   {row['name']}: {kind} {where}{source} -> group {row['group']}")
        else:
            lines.append(f"  bridge   {row['name']}: group {row['group']} -> {kind} {where} "
                         f"(pacing {row['pacing']}), SDP {row['sdp']}")
    return lines


def _transport(row: dict[str, Any]) -> str:
    """A bridge's transport as the banner names it: ``st2110-30`` -> ``ST 2110-30`` (video without one)."""
    transport = str(row.get("transport") or "st2110-20")
    return "ST " + transport.removeprefix("st") if transport.startswith("st") else transport


def _scrape(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT) as answer:  # noqa: S310
            return str(answer.read(MAX_SCRAPE).decode("utf-8", errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            if family.name.startswith(("msm_media_", "msm_st2110_")):
                for sample in family.samples:
                    out[sample.name].append((dict(sample.labels), float(sample.value)))
    except ValueError:
        return {}
    return out


def _by(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        totals[tuple(labels.get(k, "") for k in keys)] += value
    return totals


def _printable(cell: str) -> str:
    """A cell as the terminal shows it: names come from users and proxies, and a control character (an
    escape sequence) must not reach the operator's terminal."""
    return cell if cell.isprintable() else "".join(c if c.isprintable() else "?" for c in cell)


def _render(table: list[list[str]]) -> str:
    table = [[_printable(c) for c in row] for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def _groups(s: dict[str, list[tuple[dict[str, str], float]]]) -> list[list[str]]:
    table = [["GROUP / RECEIVER", "SENDER", "FRAMES", "DROPPED", "LATENCY p50", "p99"]]
    frames_in = _by(s, "msm_media_group_frames_total", "group")
    incomplete = _by(s, "msm_media_group_incomplete_frames_total", "group")
    frames = _by(s, "msm_media_frames_total", "group", "receiver")
    drops = _by(s, "msm_media_dropped_frames_total", "group", "receiver")
    latency = _by(s, "msm_media_latency_seconds", "group", "receiver", "quantile")
    for labels, _one in sorted(s.get("msm_media_group_info", []), key=lambda x: x[0].get("group", "")):
        urn = labels.get("group", "")
        bad = incomplete.get((urn,), 0)
        table.append([urn, labels.get("sender") or "-", f"{frames_in.get((urn,), 0):.0f}",
                      f"{bad:.0f} incomplete" if bad else "", "", ""])
        for (group, receiver), count in sorted(frames.items()):
            if group != urn:
                continue
            p50, p99 = latency.get((group, receiver, "0.5")), latency.get((group, receiver, "0.99"))
            table.append([f"  {receiver}", "", f"{count:.0f}", f"{drops.get((group, receiver), 0):.0f}",
                          "-" if p50 is None else f"{p50 * 1e3:.2f} ms", "-" if p99 is None else f"{p99 * 1e3:.2f} ms"])
    return table


def _bridges(s: dict[str, list[tuple[dict[str, str], float]]]) -> list[list[str]]:
    table = [["BRIDGE", "DIR", "GROUP", "ADDRESS", "FRAMES", "LOST PKTS", "INCOMPLETE", "DROPPED", "QUEUE",
              "PACING"]]
    frames = _by(s, "msm_st2110_bridge_frames_total", "bridge")
    lost = _by(s, "msm_st2110_ingress_lost_packets_total", "bridge")
    incomplete = _by(s, "msm_st2110_ingress_incomplete_frames_total", "bridge")
    dropped = _by(s, "msm_st2110_bridge_dropped_frames_total", "bridge")
    depth = _by(s, "msm_st2110_bridge_queue_depth", "bridge")
    klass = {labels["bridge"]: labels["class"] for labels, v in s.get("msm_st2110_egress_pacing", []) if v}
    for labels, _one in sorted(s.get("msm_st2110_bridge_info", []), key=lambda x: x[0].get("bridge", "")):
        name = labels.get("bridge", "")
        key = (name,)
        ingress = labels.get("direction") == "ingress"
        pacing = "" if ingress else f"{labels.get('pacing', '')}: {klass.get(name, '?')}"
        table.append([name, labels.get("direction", ""), labels.get("group", ""), labels.get("address", ""),
                      f"{frames.get(key, 0):.0f}", f"{lost.get(key, 0):.0f}" if ingress else "",
                      f"{incomplete.get(key, 0):.0f}" if ingress else "", f"{dropped.get(key, 0):.0f}",
                      f"{depth.get(key, 0):.0f}", pacing])
    return table


def media_table(metrics_address: str) -> str:
    """The groups and bridges table from the proxy's /metrics at ``metrics_address`` ('' if none answers)."""
    text = _scrape(metrics_address)
    samples = _samples(text) if text else {}
    if not samples.get("msm_media_group_info") and not samples.get("msm_st2110_bridge_info"):
        return ""
    parts = ["", _render(_groups(samples))]
    if samples.get("msm_st2110_bridge_info"):
        parts += ["", _render(_bridges(samples))]
    return "\n".join(parts)


# -- from the control plane: every node's groups, bridges and connections (MediaControl.ListPlacements) --
def control_media(channel: Any, timeout: float = 5.0) -> Any | None:
    """``ListPlacements(with_stats)`` over the operator's channel; None when the control plane has no
    MediaControl or does not answer (the table then falls back to the local proxy's /metrics)."""
    import grpc

    from msm.protos import media_pb2 as mpb
    from msm.protos import media_pb2_grpc as mpb_grpc

    try:
        api = mpb_grpc.MediaControlStub(channel)  # type: ignore[no-untyped-call]
        return api.ListPlacements(mpb.ListPlacementsRequest(with_stats=True), timeout=timeout)
    except grpc.RpcError:
        return None


def _reasons(counts: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


def _latency(has: bool, us: float) -> float | None:
    return round(us / 1e3, 3) if has else None


def _group_rows(reply: Any) -> list[dict[str, Any]]:
    placed = {p.urn: p for p in reply.groups}
    rows: list[dict[str, Any]] = []
    for urn in sorted(placed.keys() | {g.urn for n in reply.nodes for g in n.stats.groups}):
        p = placed.get(urn)
        state = {r.node: ("linked" if r.linked else f"not linked: {r.error or 'pending'}")
                 for r in (p.receivers if p else [])}
        rows.append({"hop": "media-group", "group": urn, "sender_node": p.sender_node if p else "",
                     "sender": p.sender_member if p else "", "receiving_nodes": sorted(state)})
        for n in reply.nodes:
            for g in (g for g in n.stats.groups if g.urn == urn):
                rows.append({"hop": "media-node", "group": urn, "node": n.node, "sender": g.sender,
                             "frames": g.frames_in, "bytes": g.bytes_in, "incomplete": dict(g.incomplete)})
                rows.extend({"hop": "media-receiver", "group": urn, "node": n.node, "receiver": r.name,
                             "frames": r.frames, "bytes": r.bytes, "drops": dict(r.drops),
                             "latency_p50_ms": _latency(r.has_latency, r.latency_p50_us),
                             "latency_p99_ms": _latency(r.has_latency, r.latency_p99_us)} for r in g.receivers)
                rows.extend({"hop": "media-link", "group": urn, "node": n.node, "peer": link.peer_node,
                             "direction": "out" if link.outgoing else "in", "provider": link.provider,
                             "frames": link.frames, "bytes": link.bytes, "in_flight": link.in_flight,
                             "state": state.get(link.peer_node, "") if link.outgoing else "linked"}
                            for link in g.links)
    return rows


def media_rows(reply: Any) -> list[dict[str, Any]]:
    """``msm streams --json``'s media rows: groups (and per node, receivers, links), bridges, connections,
    and nodes that did not answer."""
    rows = _group_rows(reply)
    for n in reply.nodes:
        if n.error:
            rows.append({"hop": "media-unanswered", "node": n.node, "error": n.error})
        rows.extend({"hop": "media-bridge", "node": n.node, "bridge": b.name, "direction": b.direction,
                     "group": b.group, "address": b.address, "frames": b.frames, "bytes": b.bytes,
                     "packets": b.packets, "lost_packets": b.lost_packets, "incomplete": dict(b.incomplete),
                     "dropped": dict(b.dropped), "queue_depth": b.queue_depth, "pacing": b.pacing,
                     "pacing_class": b.pacing_class, "late_packets": b.late_packets} for b in n.stats.bridges)
        rows.extend({"hop": "media-connection", "node": n.node, "connection": c.connection, "app": c.app,
                     "direction": c.direction, "target": c.target, "frames": c.frames, "bytes": c.bytes,
                     "drops": dict(c.drops), "queue_depth": c.queue_depth, "attached": c.attached,
                     "latency_p50_ms": _latency(c.has_latency, c.latency_p50_us),
                     "latency_p99_ms": _latency(c.has_latency, c.latency_p99_us)} for c in n.stats.connections)
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _group_line(r: dict[str, Any]) -> list[str]:
    hop = r["hop"]
    if hop == "media-group":
        sender = f"{r['sender']} on {r['sender_node']}" if r["sender_node"] else "-"
        return [r["group"], "", sender, "", "", "", "", "", ""]
    if hop == "media-node":
        bad = _reasons(r["incomplete"])
        return [f"  {r['node']}", r["node"], r["sender"] or "-", str(r["frames"]), str(r["bytes"]),
                f"incomplete: {bad}" if bad else "", "", "", ""]
    if hop == "media-receiver":
        return [f"    -> {r['receiver']}", r["node"], "", str(r["frames"]), str(r["bytes"]), _reasons(r["drops"]), "",
                _ms(r["latency_p50_ms"]), _ms(r["latency_p99_ms"])]
    arrow = "=>" if r["direction"] == "out" else "<="
    return [f"    {arrow} node {r['peer']} ({r['provider']}, {r['state']})", r["node"], "", str(r["frames"]),
            str(r["bytes"]), "", str(r["in_flight"]) if r["direction"] == "out" else "", "", ""]


def render_media(rows: list[dict[str, Any]]) -> str:
    """The media tables of ``msm streams`` from :func:`media_rows` ('' when there is nothing)."""
    parts = []
    groups = [r for r in rows if r["hop"] in ("media-group", "media-node", "media-receiver", "media-link")]
    if groups:
        table = [["GROUP / NODE / MEMBER", "NODE", "SENDER", "FRAMES", "BYTES", "DROPPED", "IN FLIGHT",
                  "LATENCY p50", "p99"], *(_group_line(r) for r in groups)]
        parts += ["", _render(table)]
    bridges = [r for r in rows if r["hop"] == "media-bridge"]
    if bridges:
        table = [["BRIDGE", "NODE", "DIR", "GROUP", "ADDRESS", "FRAMES", "LOST PKTS", "INCOMPLETE", "DROPPED",
                  "QUEUE", "PACING"]]
        for b in bridges:
            ingress = b["direction"] == "ingress"
            table.append([b["bridge"], b["node"], b["direction"], b["group"], b["address"], str(b["frames"]),
                          str(b["lost_packets"]) if ingress else "", _reasons(b["incomplete"]) if ingress else "",
                          _reasons(b["dropped"]), str(b["queue_depth"]),
                          "" if ingress else f"{b['pacing']}: {b['pacing_class']}"])
        parts += ["", _render(table)]
    conns = [r for r in rows if r["hop"] == "media-connection"]
    if conns:
        table = [["CONNECTION", "NODE", "APP", "DIR", "TARGET", "FRAMES", "DROPPED", "QUEUE", "LATENCY p50", "p99"]]
        table += [[c["connection"], c["node"], c["app"] or "-", c["direction"], c["target"], str(c["frames"]),
                   _reasons(c["drops"]), str(c["queue_depth"]), _ms(c["latency_p50_ms"]), _ms(c["latency_p99_ms"])]
                  for c in conns]
        parts += ["", _render(table)]
    parts += [_printable(f"node {r['node']}: no media counters ({r['error']})") for r in rows
              if r["hop"] == "media-unanswered"]
    return "\n".join(parts)
