"""The operator view of the control plane: what ``msm streams``, the web page and metrics read.

:func:`snapshot` is the stored stream graph (no I/O); :func:`list_streams` adds
every proxy's live flow statistics, as the ``ListStreams`` answer. A proxy that
does not answer is left out; a link this control plane closed is an error
(:class:`~.ports.LinkClosed`), for the caller's boundary to answer.

:func:`list_media` is the media side's: every group's placement and, asked of each
node's proxy over its ``MediaPlane`` (``ListGroups``, the control plane's mutual-TLS
link), that node's groups, receivers, fabric links, bridges and app connections. A
node that does not answer is listed with why; the others are shown all the same.

What leaves here is for display and may reach anyone who can read the page: upstream
URLs lose their credentials (:func:`msm.runtime.redact.redact_url`), and session
ids, which let whoever knows them control a session, become tags
(:func:`msm.runtime.redact.session_tag`): ``ViewerInfo.session_id`` stays empty and
leg ids and labels name the tag instead of the session.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from msm.protos import media_pb2 as mpb
from msm.protos import msm_pb2 as pb
from msm.runtime.redact import redact_url, session_tag
from msm.sdk.errors import MsmError, Unavailable

from .links import PROXY_TIMEOUT
from .media import MediaPlacer
from .planner import Planner
from .ports import LinkClosed
from .resolver import Route
from .store import Store, StreamRecord, ViewerRecord
from .upstream_state import UpstreamState

__all__ = ["StreamView", "list_media", "list_streams", "snapshot"]

# Proxies asked for their media counters at once: each answer is under 1 MB (the proxy bounds
# it), so a listing holds at most a few MB in flight however many nodes the mesh has.
MEDIA_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class StreamView:
    """A stream and its viewers as they were when read."""

    stream: StreamRecord
    viewers: dict[str, ViewerRecord] = field(default_factory=dict)

    @property
    def stream_id(self) -> str:
        return self.stream.stream_id

    @property
    def route(self) -> Route:
        return self.stream.route

    @property
    def upstream_state(self) -> UpstreamState:
        return self.stream.upstream_state

    @property
    def opened(self) -> int:
        return self.stream.opened


def snapshot(store: Store) -> dict[str, StreamView]:
    """Every stream and its viewers, by stream id, as stored now."""
    views: dict[str, StreamView] = {}
    for stream_id in store.stream_ids():
        record = store.get_stream(stream_id)
        if record is not None:
            views[stream_id] = StreamView(record, {v.session_id: v for v in store.viewers(stream_id)})
    return views


async def _flow_stats(planner: Planner) -> dict[str, pb.FlowStats]:
    flows: dict[str, pb.FlowStats] = {}
    for proxy in list(planner.proxies.values()):
        try:
            listed = await proxy.list_flows()
        except LinkClosed:
            raise
        except Unavailable:
            continue
        flows.update((f.flow_id, f) for f in listed)
    return flows


_TAG = re.compile(r"[0-9a-f]{8}(~[0-9]+)?")   # a tag, ~n when two sessions on a flow share one


def _hide(session: str) -> str:
    """The tag for a session id; a relay's name or a tag already (8 hex digits, maybe ~n) stays."""
    return session if session.startswith("relay@") or _TAG.fullmatch(session) else session_tag(session)


def _conceal_leg(leg: pb.LegStats) -> None:
    """A leg's stats with its viewer's session id replaced by the session's tag."""
    session, sep, track = leg.leg_id.rpartition("/")
    if sep:
        leg.leg_id = f"{_hide(session)}/{track}"
    if leg.labels.get("session"):
        leg.labels["session"] = _hide(leg.labels["session"])


def _conceal(flows: dict[str, pb.FlowStats]) -> None:
    for flow in flows.values():
        for leg in flow.legs:
            _conceal_leg(leg)


async def list_streams(planner: Planner) -> pb.ListStreamsResponse:
    """Every stream with its tracks' flows and relays and its viewers' legs, with live stats."""
    flows = await _flow_stats(planner)
    legs = {leg.leg_id: leg for f in flows.values() for leg in f.legs}
    concealed = {leg_id: pb.LegStats() for leg_id in legs}
    for leg_id, leg in legs.items():
        concealed[leg_id].CopyFrom(leg)
        _conceal_leg(concealed[leg_id])
    _conceal(flows)
    response = pb.ListStreamsResponse()
    for view in snapshot(planner.store).values():
        stream = view.stream
        info = response.streams.add(
            stream_id=stream.stream_id, name=stream.route.name, upstream_url=redact_url(stream.route.url),
            upstream_state=stream.upstream_state.value, upstream_sessions_opened=stream.opened)
        for track in stream.tracks:
            ref = stream.flows.get(track.index)
            stats = flows.get(ref.flow_id) if ref else None
            relays = [flows[r.flow_id] for (_, index), r in sorted(stream.relays.items())
                      if index == track.index and r.flow_id in flows]
            info.tracks.add(track=track, flow=stats or pb.FlowStats(), relays=relays)
        for viewer in view.viewers.values():
            info.viewers.add(session_tag=session_tag(viewer.session_id), host=viewer.host,
                             playing=viewer.playing,
                             legs=[concealed[leg.leg_id] for leg in viewer.legs.values()
                                   if leg.leg_id in concealed])
    return response


def _unanswered(node: str, error: str) -> mpb.NodeMediaStats:
    return mpb.NodeMediaStats(node=node, stats=mpb.ListGroupsReply(node=node), error=error)


async def _node_media(placer: MediaPlacer, node: str, slots: asyncio.Semaphore) -> mpb.NodeMediaStats:
    port = placer.port_of(node)
    if port is None:
        return _unanswered(node, "no proxy registered for this node")
    try:
        async with slots, asyncio.timeout(PROXY_TIMEOUT):
            stats = await port.list_groups()
    except MsmError as exc:
        return _unanswered(node, exc.reason)
    except TimeoutError:
        return _unanswered(node, f"no answer within {PROXY_TIMEOUT:g} s")
    for endpoint in stats.endpoints:   # which providers it has is shown; the addresses are of no use to a reader
        endpoint.address = b""
    if stats.node != node:   # a proxy answers for its own node only (its certificate names it)
        return _unanswered(node, f"the proxy answered as node {stats.node!r}")
    return mpb.NodeMediaStats(node=node, stats=stats)


async def list_media(placer: MediaPlacer, *, with_stats: bool = True) -> mpb.ListPlacementsReply:
    """Every group's placement and, ``with_stats``, every known node's counters (``ListPlacements``)."""
    reply = mpb.ListPlacementsReply(groups=placer.placements())
    if with_stats:
        slots = asyncio.Semaphore(MEDIA_CONCURRENCY)
        reply.nodes.extend(await asyncio.gather(*(_node_media(placer, n, slots) for n in placer.nodes())))
    return reply
