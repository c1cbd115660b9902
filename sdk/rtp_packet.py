"""RTP packets and NTP time (RFC 3550), and the constants RTP and RTCP share.

Part of :mod:`msm.sdk.rtp` (import from there); RTCP is :mod:`msm.sdk.rtcp`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from msm.sdk.errors import RtpError

RTP_VERSION = 2

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

SDES_CNAME = 1

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
#: 5-bit count fields (CSRC count, RTCP reception report / source count).
_MAX_COUNT = 31
_MAX_CSRC = 15

_RTP_HEADER = struct.Struct("!BBHII")
_RTCP_HEADER = struct.Struct("!BBH")
_EXT_HEADER = struct.Struct("!HH")
_SR_INFO = struct.Struct("!IQIII")
_REPORT_BLOCK = struct.Struct("!IIIIII")

#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET = 2_208_988_800


def _check_int(value: int, what: str, low: int, high: int, error: type[Exception]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise error(f"{what} must be an integer in {low}..{high}, not {value!r:.40}")


def _check_bytes(value: bytes, what: str, error: type[Exception]) -> None:
    if not isinstance(value, bytes):
        raise error(f"{what} must be bytes, not {type(value).__name__}")


# =========================================================================== RTP


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpPacket:
    """An RTP data packet (RFC 3550 section 5.1)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: tuple[int, ...] = ()
    #: ``(profile-defined 16 bits, data)``; ``len(data)`` is a multiple of 4.
    extension: tuple[int, bytes] | None = None
    payload: bytes = b""
    #: Padding octets including the final count octet; 0 means no padding.
    padding: int = 0

    def __post_init__(self) -> None:
        _check_int(self.payload_type, "payload type", 0, 127, RtpError)
        _check_int(self.sequence_number, "sequence number", 0, _U16, RtpError)
        _check_int(self.timestamp, "timestamp", 0, _U32, RtpError)
        _check_int(self.ssrc, "SSRC", 0, _U32, RtpError)
        if not isinstance(self.marker, bool):
            raise RtpError("marker must be a bool")
        if not isinstance(self.csrc, tuple) or len(self.csrc) > _MAX_CSRC:
            raise RtpError(f"at most {_MAX_CSRC} CSRCs fit in an RTP header")
        for csrc in self.csrc:
            _check_int(csrc, "CSRC", 0, _U32, RtpError)
        if self.extension is not None:
            if not isinstance(self.extension, tuple) or len(self.extension) != 2:
                raise RtpError("extension must be (profile, data)")
            profile, data = self.extension
            _check_int(profile, "extension profile", 0, _U16, RtpError)
            _check_bytes(data, "extension data", RtpError)
            if len(data) % 4 or len(data) // 4 > _U16:
                raise RtpError(f"extension data of {len(data)} bytes is not 32-bit words")
        _check_bytes(self.payload, "payload", RtpError)
        _check_int(self.padding, "padding", 0, _U8, RtpError)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet (a whole datagram or interleaved frame)."""
        size = len(data)
        if size < _RTP_HEADER.size:
            raise RtpError(f"RTP packet of {size} bytes is shorter than its header")
        first, second, seq, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        offset = _RTP_HEADER.size
        cc = first & 0x0F
        end = offset + 4 * cc
        if end > size:
            raise RtpError(f"RTP header announces {cc} CSRCs past the end of the packet")
        csrc = struct.unpack_from(f"!{cc}I", data, offset) if cc else ()
        offset = end
        extension: tuple[int, bytes] | None = None
        if first & 0x10:
            if offset + 4 > size:
                raise RtpError("RTP header extension is truncated")
            profile, words = _EXT_HEADER.unpack_from(data, offset)
            end = offset + 4 + 4 * words
            if end > size:
                raise RtpError("RTP header extension runs past the end of the packet")
            extension = (profile, bytes(data[offset + 4 : end]))
            offset = end
        padding = 0
        if first & 0x20:
            if size == offset:
                raise RtpError("RTP padding bit set on a packet with no room for padding")
            padding = data[-1]
            if padding == 0 or offset + padding > size:
                raise RtpError(f"RTP padding count {padding} does not fit the packet")
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            payload=bytes(data[offset : size - padding]),
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        first = (
            RTP_VERSION << 6
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension is not None else 0)
            | len(self.csrc)
        )
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            _RTP_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            parts.append(_EXT_HEADER.pack(profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def rtp_header(data: bytes) -> tuple[int, int, int, int, bool]:
    """``(payload_type, sequence_number, timestamp, ssrc, marker)`` of an RTP packet.

    The fast path for forwarding: checks the length and version only, copies
    nothing.  Raises :class:`RtpError` on a short packet or a version other than 2.
    """
    if len(data) < 12:
        raise RtpError(f"RTP packet of {len(data)} bytes is shorter than its header")
    first, second, seq, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
    if first & 0xC0 != 0x80:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    return (second & 0x7F, seq, timestamp, ssrc, second >= 0x80)


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 section 4).

    RTCP packet types 192..223 occupy the second octet where RTP would carry
    the marker bit and payload types 64..95, which RFC 5761 keeps unused.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


# =========================================================================== NTP time


def ntp_from_unix(t: float) -> int:
    """The 64-bit NTP timestamp (32.32 fixed point, since 1900) of Unix time ``t``.

    Wraps modulo 2**64, i.e. into the next NTP era after 2036 as RFC 5905 does.
    """
    seconds = math.floor(t)
    fraction = min(int((t - seconds) * 4294967296.0), _U32)
    return (((seconds + NTP_UNIX_OFFSET) << 32) | fraction) & _U64


def unix_from_ntp(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp (era 0, i.e. 1900..2036)."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & _U32) / 4294967296.0


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the SR's LSR as echoed in report blocks."""
    return (ntp >> 16) & _U32

