"""The events of an RTSP server connection, and the plan of a SETUP.

Part of :mod:`msm.sdk.rtsp_server` (import from there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias

from msm.sdk.rtsp import Request, TransportSpec
from msm.sdk.rtsp_sessions import S

__all__ = [
    "DescribeRequested",
    "FrameReceived",
    "MulticastGroup",
    "PauseRequested",
    "PlayRequested",
    "Reply",
    "ServerEvent",
    "SetupPlan",
    "SetupRequested",
    "TeardownRequested",
]

@dataclass(frozen=True, slots=True)
class MulticastGroup:
    """Where a stream is multicast: the group, track 0's RTP port (track n: port + 2n), the TTL."""

    address: str
    port: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes the connection produced itself; ``close`` after writing them when set."""

    data: bytes
    close: bool = False


@dataclass(frozen=True, slots=True)
class DescribeRequested:
    request: Request
    stream: str


@dataclass(frozen=True, slots=True)
class SetupRequested(Generic[S]):
    """SETUP of ``track`` (``None``: the URL named the stream) of ``stream``.

    ``session`` is the caller's existing session, already checked to belong to this
    connection.  The application finds the stream, then calls
    :meth:`ServerConnection.plan_setup` for the track and transport.
    """

    request: Request
    stream: str
    track: int | None
    session: S | None


@dataclass(frozen=True, slots=True)
class PlayRequested(Generic[S]):
    request: Request
    session: S


@dataclass(frozen=True, slots=True)
class PauseRequested(Generic[S]):
    request: Request
    session: S


@dataclass(frozen=True, slots=True)
class TeardownRequested(Generic[S]):
    """TEARDOWN of ``session``, or only of its ``track`` when the URL named one of several
    (RFC 2326 10.7); ``None``: the whole session."""

    request: Request
    session: S
    track: int | None = None


@dataclass(frozen=True, slots=True)
class FrameReceived(Generic[S]):
    """An interleaved frame on a set-up channel; ``rtcp`` for the second of the track's pair."""

    session: S
    track: int
    rtcp: bool
    payload: bytes


ServerEvent: TypeAlias = (Reply | DescribeRequested | SetupRequested[S] | PlayRequested[S]
                          | PauseRequested[S] | TeardownRequested[S] | FrameReceived[S])


@dataclass(frozen=True, slots=True)
class SetupPlan:
    """What a SETUP will set up: the track and the transport the server answers."""

    track: int
    transport: TransportSpec
