"""What the stub keeps per viewer session: its tracks' transports and bridges.

Part of :mod:`msm.stub.server`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from msm.protos import msm_pb2 as pb
from msm.sdk.rtsp import TransportSpec
from msm.sdk.rtsp_server import MulticastGroup, RtspSession

from .bridge import UdpPair

if TYPE_CHECKING:
    from .server import ViewerConnection

__all__ = ["Group", "StreamInfo", "TrackSetup", "ViewerSession", "announced_group", "content_base", "detached",
           "rtp_info"]


Group = MulticastGroup | None


def announced_group(reply: pb.DescribeReply) -> Group:
    """The multicast group a route that converts to multicast announces in the viewer's SDP."""
    group = reply.multicast_group
    return MulticastGroup(group.host, group.rtp_port, reply.multicast_ttl) if group.host else None


def rtp_info(base_url: str, tracks: Iterable[pb.RtpInfo]) -> str:
    """The ``RTP-Info`` value of a PLAY reply (RFC 2326 12.33): each track's URL, first seq and rtptime."""
    return ",".join(f"url={base_url}/track{t.track_index};seq={t.seq};rtptime={t.rtptime}" for t in tracks)


@dataclass
class TrackSetup:
    index: int
    transport: TransportSpec
    bridge: UdpPair | None = None

    def destination(self, viewer_host: str, media_host: str) -> pb.Endpoint:
        """Where the proxy sends this track: the viewer's ports, or the bridge's for a TCP viewer."""
        if self.bridge is not None:
            rtp_port, rtcp_port = self.bridge.ports
            return pb.Endpoint(host=media_host, rtp_port=rtp_port, rtcp_port=rtcp_port)
        if not self.transport.unicast:
            return pb.Endpoint()    # a multicast viewer: the control plane names the group
        assert self.transport.client_port is not None
        rtp_port, rtcp_port = self.transport.client_port
        return pb.Endpoint(host=viewer_host, rtp_port=rtp_port, rtcp_port=rtcp_port)

    def answer(self, reply: pb.SetupReply) -> TransportSpec:
        """The SETUP reply's transport, given where the proxy sends from (a bridge sends its RTCP there)
        or, for a multicast viewer, the group it joins."""
        source = reply.source
        if not self.transport.unicast:
            group = reply.group
            return TransportSpec(unicast=False, destination=group.host, port=(group.rtp_port, group.rtcp_port),
                                 ttl=reply.ttl)
        if self.bridge is not None:
            self.bridge.set_peer(source.host, source.rtp_port, source.rtcp_port)
            return TransportSpec(protocol="RTP/AVP/TCP", interleaved=self.transport.interleaved)
        return TransportSpec(client_port=self.transport.client_port, server_port=(source.rtp_port, source.rtcp_port),
                             source=source.host if source.host not in ("0.0.0.0", "::") else None)


@dataclass(eq=False)
class ViewerSession(RtspSession):
    """An RTSP session of a viewer, with what the stub opened for it."""

    base_url: str = ""
    connection: ViewerConnection | None = None
    setups: dict[int, TrackSetup] = field(default_factory=dict)

    @property
    def interleaved(self) -> bool:
        """A track's media travels over the RTSP connection (``$`` frames)."""
        return any(setup.bridge is not None for setup in self.setups.values())

    def close_bridges(self) -> None:
        for track in self.setups.values():
            if track.bridge is not None:
                track.bridge.close()


@dataclass
class StreamInfo:
    stream_id: str
    tracks: int


def detached(sessions: Iterable[ViewerSession], session: ViewerSession) -> int:
    """How many ``sessions`` of ``session``'s client live on without a connection."""
    client = session.client.host if session.client is not None else ""
    return sum(1 for s in sessions if s.connection is None and s.client is not None and s.client.host == client)


def content_base(uri: str, name: str, *, secure: bool, redirected: bool, local: tuple[str, int]) -> str:
    """The stream's URL for ``Content-Base``: never the request's userinfo.

    A ``redirected`` app keeps the host it asked for (``camera-svc:554``: the
    redirect is invisible to it); any other viewer gets the address it
    connected to (``local``), never a host it merely wrote in the URL.
    """
    scheme = "rtsps" if secure else "rtsp"
    parts = urlsplit(uri)
    if redirected and parts.scheme in ("rtsp", "rtsps") and parts.hostname:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        with contextlib.suppress(ValueError):    # a port that is no number: none
            if parts.port is not None:
                host += f":{parts.port}"
        return f"{parts.scheme}://{host}/{name}"
    local_host, local_port = local
    host = local_host if ":" not in local_host else f"[{local_host}]"
    return f"{scheme}://{host}:{local_port}/{name}"
