"""The media side in the ``msm`` command: ``msm up``'s bridges (config, banner) and ``msm streams``' media table.

``msm streams`` reads the media table from the proxy's Prometheus /metrics (the
``msm_media_*`` and ``msm_st2110_*`` families of
:mod:`msm.rtp_proxy.media.metrics`): the one place that already has groups,
receivers, bridges and the egress's measured pacing class, so the table shows
exactly what Prometheus scrapes. A proxy whose /metrics does not answer leaves
the table out (the streams table does not depend on it).
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
        if row["direction"] == "ingress":
            source = f" from {row['source']}" if row["source"] else ""
            lines.append(f"  bridge   {row['name']}: ST 2110-20 {where}{source} -> group {row['group']}")
        else:
            lines.append(f"  bridge   {row['name']}: group {row['group']} -> ST 2110-20 {where} "
                         f"(pacing {row['pacing']}), SDP {row['sdp']}")
    return lines


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


def _render(table: list[list[str]]) -> str:
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
