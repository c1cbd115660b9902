"""Prometheus metrics of the control plane, read from its state at scrape time.

Labels never carry secrets: the ``upstream`` label is the route URL without its
credentials (:func:`msm.runtime.redact.redact_url`), and no label names a session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from msm.runtime.redact import redact_url

if TYPE_CHECKING:
    from .server import ControlPlane


class ControlPlaneCollector(Collector):
    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        control = self.control
        stubs = GaugeMetricFamily("msm_control_stubs", "Stubs connected to the control plane")
        stubs.add_metric([], len(control.stubs))
        proxies = GaugeMetricFamily("msm_control_proxies", "RTP proxies registered", labels=["node"])
        for node in control.proxies:
            proxies.add_metric([node], 1)
        viewers = GaugeMetricFamily("msm_stream_viewers", "Viewer sessions set up on a stream",
                                    labels=["stream"])
        playing = GaugeMetricFamily("msm_stream_playing_viewers", "Viewer sessions playing a stream",
                                    labels=["stream"])
        up = GaugeMetricFamily("msm_upstream_up", "1 while the stream's upstream session is playing",
                               labels=["stream", "upstream"])
        opens = CounterMetricFamily("msm_upstream_opens", "Upstream sessions opened (first open and "
                                    "every reconnect)", labels=["stream", "upstream"])
        for stream in list(control.streams.values()):
            name = stream.stream_id
            upstream = redact_url(stream.route.url)
            viewers.add_metric([name], len(stream.viewers))
            playing.add_metric([name], sum(1 for v in stream.viewers.values() if v.playing))
            up.add_metric([name, upstream], 1.0 if stream.upstream_state == "playing" else 0.0)
            opens.add_metric([name, upstream], stream.opened)
        yield from (stubs, proxies, viewers, playing, up, opens)


def control_registry(control: ControlPlane) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ControlPlaneCollector(control))
    return registry
