"""The control plane's durable state: streams and their viewers, as typed records.

:class:`Store` is the seam a replicated store plugs into: get, put and delete of
whole records, nothing shared. A record read from the store is the reader's own
copy; a change is made by putting the record back. :class:`MemoryStore` keeps
them in this process (copying on the way in and out, so code that forgets to put
a change is caught by the tests rather than saved by aliasing).

Every leg names the flow (node, proxy instance, flow id) it hangs off, so the
legs on one node are those whose ``flow.node`` is that node.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

from msm.protos import msm_pb2 as pb

from .resolver import Route
from .upstream_state import UpstreamState

__all__ = ["FlowRef", "LegRef", "MemoryStore", "Store", "StreamRecord", "ViewerRecord"]


@dataclass(frozen=True, slots=True)
class FlowRef:
    """One flow on one proxy: ``proxy_id`` tells a restarted proxy on the same node apart."""

    node: str
    proxy_id: str
    flow_id: str
    ingress: pb.Endpoint


@dataclass(frozen=True, slots=True)
class LegRef:
    leg_id: str
    flow: FlowRef


@dataclass(slots=True)
class ViewerRecord:
    stream_id: str
    session_id: str
    stub_id: str
    host: str
    node: str = ""
    legs: dict[int, LegRef] = field(default_factory=dict)   # track index -> its leg
    playing: bool = False


@dataclass(slots=True)
class StreamRecord:
    route: Route
    sdp: str | None = None
    tracks: list[pb.Track] = field(default_factory=list)
    upstream_stub: str | None = None
    flows: dict[int, FlowRef] = field(default_factory=dict)   # track index -> flow on the source's node
    # Per other node and track: a flow there fed by ONE leg ("relay@<node>") from
    # the source flow; that node's proxy fans out to its own viewers.
    relays: dict[tuple[str, int], FlowRef] = field(default_factory=dict)
    playing: bool = False
    upstream_state: UpstreamState = UpstreamState.IDLE
    opened: int = 0       # upstream sessions opened: first open and every reconnect
    generation: int = 0   # bumped per open, so flow ids of a reopened stream never collide
    # Track index -> where its upstream RTP/RTCP comes from (programmed on its source flow).
    sources: dict[int, pb.SourceFilter] = field(default_factory=dict)

    @property
    def stream_id(self) -> str:
        return self.route.name


class Store(Protocol):
    def get_stream(self, stream_id: str) -> StreamRecord | None: ...
    def put_stream(self, record: StreamRecord) -> None: ...
    def delete_stream(self, stream_id: str) -> None: ...
    def stream_ids(self) -> list[str]: ...
    def get_viewer(self, stream_id: str, session_id: str) -> ViewerRecord | None: ...
    def put_viewer(self, record: ViewerRecord) -> None: ...
    def delete_viewer(self, stream_id: str, session_id: str) -> None: ...
    def viewers(self, stream_id: str) -> list[ViewerRecord]: ...


class MemoryStore:
    """:class:`Store` in this process's memory (lost on restart, like today's control plane)."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamRecord] = {}
        self._viewers: dict[str, dict[str, ViewerRecord]] = {}   # stream id -> session id -> viewer

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        record = self._streams.get(stream_id)
        return copy.deepcopy(record) if record is not None else None

    def put_stream(self, record: StreamRecord) -> None:
        self._streams[record.stream_id] = copy.deepcopy(record)

    def delete_stream(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)
        self._viewers.pop(stream_id, None)

    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def get_viewer(self, stream_id: str, session_id: str) -> ViewerRecord | None:
        record = self._viewers.get(stream_id, {}).get(session_id)
        return copy.deepcopy(record) if record is not None else None

    def put_viewer(self, record: ViewerRecord) -> None:
        self._viewers.setdefault(record.stream_id, {})[record.session_id] = copy.deepcopy(record)

    def delete_viewer(self, stream_id: str, session_id: str) -> None:
        viewers = self._viewers.get(stream_id, {})
        viewers.pop(session_id, None)
        if not viewers:
            self._viewers.pop(stream_id, None)

    def viewers(self, stream_id: str) -> list[ViewerRecord]:
        return [copy.deepcopy(v) for v in self._viewers.get(stream_id, {}).values()]
