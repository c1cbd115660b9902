"""A group's frames between nodes: the sending end (:class:`FabricPeer`) and the receiving end (:class:`InboundLinks`).

On the sending node, each other node with receivers is ONE receiver of the group,
``node:<peer>``: a :class:`FabricPeer` that sends every frame it is offered, once, to
that node's fabric endpoint. On the receiving node, :class:`InboundLinks` knows which
links the control plane told it to expect (``ExpectGroup``): a frame is taken only
when its link id (the header's 32-bit ``group`` field, chosen at random by the control
plane) is expected AND it came from the peer that link names; everything else is
dropped and counted by reason. Frames from endpoints never added as peers do not even
get here (``msm.ext`` drops them and counts ``rx_unknown_peer``).

What a frame carries besides its payload: the link id, the sender's sequence number
(32 bits; bits 32-39 of the header's 64-bit ``seq`` say whether, and why, the frame is
incomplete), the media timestamp, and the app's metadata.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .fabric_link import FabricEndpoint, FrameHeader, ReceivedFrame
from .groups import FrameInfo

__all__ = ["FabricPeer", "Inbound", "InboundLinks", "decode_info", "encode_header"]

# Why a frame is incomplete, as a small code in the header (0: complete). A reason not
# listed travels as "incomplete".
INCOMPLETE_CODES = {"missing_packets": 1, "timeout": 2, "too_large": 3, "incomplete": 255}
INCOMPLETE_REASONS = {code: reason for reason, code in INCOMPLETE_CODES.items()}


def encode_header(link_id: int, info: FrameInfo) -> FrameHeader:
    code = INCOMPLETE_CODES.get(info.incomplete, 255) if info.incomplete else 0
    return FrameHeader(link_id, (info.seq & 0xFFFFFFFF) | (code << 32), info.timestamp, info.metadata)


def decode_info(frame: ReceivedFrame, arrived_ns: int) -> FrameInfo:
    code = (frame.seq >> 32) & 0xFF
    return FrameInfo(seq=frame.seq & 0xFFFFFFFF, timestamp=frame.timestamp, metadata=bytes(frame.metadata),
                     incomplete=INCOMPLETE_REASONS.get(code, "incomplete") if code else None,
                     arrived_ns=arrived_ns)


class FabricPeer:
    """A group receiver standing for another node: each frame goes to it once, over libfabric.

    ``deliver`` runs on whichever thread publishes, with the endpoint's lock held (the
    group's owner, :class:`~.plane.MediaNode`, takes it): libfabric endpoints are driven by
    one thread at a time. The payload is copied first: the endpoint sends zero-copy and
    keeps the copy until the send completes, while the sender reuses its buffer as soon as
    ``Group.publish`` returns.
    """

    def __init__(self, peer_node: str, provider: str, endpoint: FabricEndpoint, peer: int, link_id: int) -> None:
        self.peer_node = peer_node
        self.provider = provider
        self.endpoint = endpoint
        self.peer = peer
        self.link_id = link_id
        self.frames = 0
        self.bytes = 0

    @property
    def name(self) -> str:
        return f"node:{self.peer_node}"

    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        if payload.nbytes > self.endpoint.max_frame or len(info.metadata) > self.endpoint.max_meta:
            return "too_large"
        # no_credit: the peer has not released enough frames yet. A send the provider refuses only for
        # the moment is taken and retried (the endpoint counts it as drop_busy if that never works).
        refused = self.endpoint.offer(self.peer, encode_header(self.link_id, info), bytes(payload))
        if refused is not None:
            return refused
        self.frames += 1
        self.bytes += payload.nbytes
        return None

    def in_flight(self) -> int:
        row = self.endpoint.stats()["peers"].get(self.peer, {})
        return max(0, int(row.get("in_flight", 0)))

    def credits(self) -> int:
        """Frames the peer lets us send now (0 before its first grant, or while it holds them all)."""
        row = self.endpoint.stats()["peers"].get(self.peer, {})
        return max(0, int(row.get("credits", 0)))


@dataclass
class Inbound:
    """A link this node expects frames on: for ``urn``, from ``peer_node`` (fabric peer ``peer``)."""

    urn: str
    peer_node: str
    provider: str
    peer: int
    link_id: int
    frames: int = 0
    bytes: int = 0


class InboundLinks:
    """The links this node expects, by link id; bounded by what the groups allow (one per group)."""

    def __init__(self) -> None:
        self.by_id: dict[tuple[str, int], Inbound] = {}      # (provider, link id) -> link
        self.by_group: dict[str, Inbound] = {}              # urn -> its one inbound link
        self.dropped: Counter[str] = Counter()

    def expect(self, link: Inbound) -> Inbound | None:
        """Expect ``link`` for its group; answers the link it replaces (another sender, or a new id).
        The same link again changes nothing (its counters go on)."""
        old = self.by_group.get(link.urn)
        if old is not None:
            if (old.peer_node, old.provider, old.peer, old.link_id) == (link.peer_node, link.provider, link.peer,
                                                                        link.link_id):
                return None
            self.by_id.pop((old.provider, old.link_id), None)
        self.by_group[link.urn] = link
        self.by_id[(link.provider, link.link_id)] = link
        return old

    def forget(self, urn: str, peer_node: str) -> Inbound | None:
        link = self.by_group.get(urn)
        if link is None or link.peer_node != peer_node:
            return None
        del self.by_group[urn]
        self.by_id.pop((link.provider, link.link_id), None)
        return link

    def accept(self, provider: str, frame: ReceivedFrame) -> Inbound | None:
        """The link ``frame`` belongs to, or ``None`` (dropped and counted: unknown link, wrong peer)."""
        link = self.by_id.get((provider, frame.group))
        if link is None:
            self.dropped["unknown_link"] += 1
            return None
        if link.peer != frame.peer:
            self.dropped["wrong_peer"] += 1
            return None
        link.frames += 1
        link.bytes += frame.payload.nbytes
        return link
