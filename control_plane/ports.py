"""The seams the control plane's decisions (:mod:`.planner`) are made through.

- :class:`DataPlane`: one node's RTP proxy (flows and legs);
- :class:`StubPort`: one connected stub: who it is, the upstream commands it
  runs for the streams whose source it sits next to, and the stream-state
  notices it passes to its viewers;
- :class:`Clock`: timers (linger), so tests advance time instead of sleeping.

The gRPC implementations are in :mod:`.links`; unit tests use fakes. Both raise
only :class:`~msm.sdk.errors.MsmError` s: a proxy that cannot be reached is
:class:`~msm.sdk.errors.Unavailable`, a failed upstream command raises the
error of the status the stub answered (``msm.protos.status.error_of``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import Unavailable

__all__ = ["Clock", "DataPlane", "LinkClosed", "LoopClock", "StubInfo", "StubPort", "Timer"]


class LinkClosed(Unavailable):
    """A link that this control plane itself closed (a restarted proxy's old channel) was used."""


@dataclass(frozen=True, slots=True)
class StubInfo:
    stub_id: str
    node: str = ""
    namespace: str = ""
    pod: str = ""
    can_open_upstream: bool = False


class DataPlane(Protocol):
    """One node's RTP proxy."""

    @property
    def node(self) -> str: ...
    @property
    def proxy_id(self) -> str: ...

    async def add_flow(self, flow_id: str, clock_rate: int, labels: Mapping[str, str],
                       source: pb.SourceFilter | None = None, srtp: pb.SrtpParams | None = None,
                       bind_host: str = "", listen: pb.Endpoint | None = None,
                       ssm: bool = False) -> pb.Endpoint:
        """Create a flow; answers its ingress (where its RTP goes). It forwards nothing until its source is set.

        ``listen``: the flow receives there (an SDP file's stream; a multicast group is joined, for
        ``source`` only when ``ssm``).

        ``srtp`` set: what arrives is SRTP under that key (a relay fed from another node);
        ``bind_host``: the proxy's media address of the other IP family ("" the media host).
        """
        ...

    async def set_flow_source(self, flow_id: str, source: pb.SourceFilter) -> None:
        """Where the flow's RTP and RTCP may come from; everything else is dropped."""
        ...

    async def remove_flow(self, flow_id: str) -> None: ...

    async def add_leg(self, flow_id: str, leg_id: str, destination: pb.Endpoint, *, enabled: bool,
                      labels: Mapping[str, str], srtp: pb.SrtpParams | None = None,
                      multicast_ttl: int = 0) -> None:
        """A destination of the flow; ``srtp`` set: the leg sends SRTP under that key (to another node);
        ``multicast_ttl`` > 0: the destination is a multicast group, sent with that TTL."""
        ...

    async def rekey(self, flow_id: str, leg_id: str, srtp: pb.SrtpParams) -> None:
        """A newer SRTP key (higher epoch) for the flow's ingress (``leg_id`` ``""``) or one of its legs."""
        ...

    async def update_leg(self, flow_id: str, leg_id: str, *, enabled: bool) -> None: ...
    async def remove_leg(self, flow_id: str, leg_id: str) -> None: ...
    async def list_flows(self) -> list[pb.FlowStats]: ...

    async def close(self) -> None:
        """Let go of the link (the proxy itself keeps running)."""
        ...


class StubPort(Protocol):
    """One connected stub."""

    @property
    def info(self) -> StubInfo: ...

    async def open(self, stream_id: str, url: str, transport: str) -> tuple[str, list[pb.Track]]:
        """DESCRIBE the upstream; answers its SDP and tracks."""
        ...

    async def setup(self, stream_id: str, track_indexes: list[int],
                    destinations: list[pb.Endpoint]) -> list[pb.SourceFilter]:
        """SETUP the tracks towards the proxy; answers where each will send from (may be empty: unknown)."""
        ...
    async def play(self, stream_id: str) -> None: ...
    async def close_upstream(self, stream_id: str) -> None: ...

    def stream_state(self, stream_id: str, upstream_up: bool) -> None:
        """Tell the stub whether a stream its viewers watch has its upstream up."""
        ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """:class:`Clock` on the running asyncio loop."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)
