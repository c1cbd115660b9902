"""What the stub keeps per viewer session: its tracks' transports and bridges.

Part of :mod:`msm.stub.server`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msm.protos import msm_pb2 as pb
from msm.sdk.rtsp import TransportSpec
from msm.sdk.rtsp_server import RtspSession

from .bridge import UdpPair

if TYPE_CHECKING:
    from .server import ViewerConnection

__all__ = ["StreamInfo", "TrackSetup", "ViewerSession", "rtp_info"]


def rtp_info(base_url: str, tracks: Iterable[pb.RtpInfo]) -> str:
    """The ``RTP-Info`` value of a PLAY reply (RFC 2326 12.33): each track's URL, first seq and rtptime."""
    return ",".join(f"url={base_url}/track{t.track_index};seq={t.seq};rtptime={t.rtptime}" for t in tracks)


@dataclass
class TrackSetup:
    index: int
    transport: TransportSpec
    bridge: UdpPair | None = None


@dataclass(eq=False)
class ViewerSession(RtspSession):
    """An RTSP session of a viewer, with what the stub opened for it."""

    base_url: str = ""
    connection: ViewerConnection | None = None
    setups: dict[int, TrackSetup] = field(default_factory=dict)

    def close_bridges(self) -> None:
        for track in self.setups.values():
            if track.bridge is not None:
                track.bridge.close()


@dataclass
class StreamInfo:
    stream_id: str
    tracks: int
