"""The exception tree of the protocol core.

Every error a peer can cause by sending bad bytes is a :class:`ProtocolError`
carrying the RTSP status code to answer with.  Components translate these once,
at their boundary (an RTSP response, a dropped-and-counted datagram, a gRPC
status); nothing in ``sdk`` raises anything else on peer input.

    MsmError
    └── ProtocolError            (.status: RTSP status code to answer)
        ├── RtspError            malformed/oversized RTSP message or header
        ├── SdpError             malformed session description
        ├── RtpError             malformed RTP packet
        └── RtcpError            malformed RTCP packet
"""

from __future__ import annotations


class MsmError(Exception):
    """Base class of every error raised by msm's own code."""


class ProtocolError(MsmError):
    """A peer sent bytes that break the protocol.

    ``status`` is the RTSP status code that answers the fault (400 by default).
    """

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class RtspError(ProtocolError):
    """A malformed, oversized or unsupported RTSP message."""


class SdpError(ProtocolError):
    """A malformed session description."""


class RtpError(ProtocolError):
    """A malformed RTP packet."""


class RtcpError(ProtocolError):
    """A malformed RTCP packet."""
