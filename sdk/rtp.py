"""RTP and RTCP packets (RFC 3550), sans-IO.

Every packet type is a frozen value with ``parse(data)`` and ``bytes(packet)``.
Peer bytes that break the format raise :class:`~msm.sdk.errors.RtpError` or
:class:`~msm.sdk.errors.RtcpError` (status 400); values built with out-of-range
fields raise the same errors, so a value that exists always serializes.

Proxies that only need to route a datagram use :func:`rtp_header` (one
``struct.unpack_from``, no copy of the payload) and :func:`is_rtcp` (RFC 5761
demultiplexing of RTP and RTCP on one port).

Padding: ``RtpPacket.padding`` is the number of padding octets (the RFC's count,
which includes the count octet itself); parsing discards the padding contents
and serialization writes zeros followed by the count.  RTCP packets parsed with
the P bit lose their padding (it only exists to round a compound packet up for
encryption); serialization never sets P.

RTP packets and NTP time are in :mod:`msm.sdk.rtp_packet`, RTCP in :mod:`msm.sdk.rtcp`;
import from here.
"""

from __future__ import annotations

from msm.sdk.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    parse_rtcp,
    serialize_rtcp,
)
from msm.sdk.rtp_packet import (
    NTP_UNIX_OFFSET as NTP_UNIX_OFFSET,  # public, not in __all__ (as before the split)
)
from msm.sdk.rtp_packet import (
    RTCP_APP,
    RTCP_BYE,
    RTCP_RR,
    RTCP_SDES,
    RTCP_SR,
    SDES_CNAME,
    RtpPacket,
    is_rtcp,
    ntp_from_unix,
    ntp_middle32,
    rtp_header,
    unix_from_ntp,
)
from msm.sdk.rtp_packet import (
    RTP_VERSION as RTP_VERSION,
)

__all__ = [
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Bye",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "RtpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcp",
    "is_rtcp",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_rtcp",
    "rtp_header",
    "serialize_rtcp",
    "unix_from_ntp",
]
