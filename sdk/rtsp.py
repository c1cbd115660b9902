"""RTSP/1.0 messages (RFC 2326), sans-IO.

Bytes go into an :class:`RtspReader`, events (:class:`Request`, :class:`Response`,
:class:`InterleavedFrame`) come out; messages turn back into bytes with ``bytes(msg)``.
Nothing here touches a socket or an event loop.

Every fault a peer can cause raises :class:`~msm.sdk.errors.RtspError` carrying the status
to answer with (400 malformed, 413 too large, 414 request line too long, 461
unsupported transport, 505 wrong version).  Values built locally are validated the same
way when the message is built, so a message that exists can always be serialised.

The module also parses the structured headers the mesh needs: ``Transport``
(:func:`parse_transport`), ``Session`` (:func:`parse_session`), ``Public``
(:func:`parse_public`) and ``RTP-Info`` (:func:`parse_rtp_info`).

The implementation is split along its seams: :mod:`msm.sdk.rtsp_message` (headers,
requests, responses, frames), :mod:`msm.sdk.rtsp_reader` (the reader) and
:mod:`msm.sdk.rtsp_fields` (structured header values); import from here.
"""

from __future__ import annotations

from msm.sdk.rtsp_fields import (
    TransportSpec,
    format_session,
    format_transport,
    parse_public,
    parse_rtp_info,
    parse_session,
    parse_transport,
)
from msm.sdk.rtsp_message import (
    RTSP_VERSION,
    STATUS_REASONS,
    Event,
    Headers,
    InterleavedFrame,
    Request,
    Response,
)
from msm.sdk.rtsp_reader import RtspReader

__all__ = [
    "RTSP_VERSION",
    "STATUS_REASONS",
    "Event",
    "Headers",
    "InterleavedFrame",
    "Request",
    "Response",
    "RtspReader",
    "TransportSpec",
    "format_session",
    "format_transport",
    "parse_public",
    "parse_rtp_info",
    "parse_session",
    "parse_transport",
]
