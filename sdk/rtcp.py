"""RTCP packets (RFC 3550 section 6): SR, RR, SDES, BYE and compound packets.

Part of :mod:`msm.sdk.rtp` (import from there).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from msm.sdk.errors import RtcpError
from msm.sdk.rtp_packet import (
    _MAX_COUNT,
    _REPORT_BLOCK,
    _RTCP_HEADER,
    _SR_INFO,
    _U8,
    _U16,
    _U32,
    _U64,
    RTCP_BYE,
    RTCP_RR,
    RTCP_SDES,
    RTCP_SR,
    RTP_VERSION,
    _check_bytes,
    _check_int,
)

# =========================================================================== RTCP


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportBlock:
    """A reception report block of an SR or RR (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int = 0
    #: Cumulative packets lost: signed 24 bits, negative when duplicates arrived.
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def __post_init__(self) -> None:
        _check_int(self.ssrc, "report block SSRC", 0, _U32, RtcpError)
        _check_int(self.fraction_lost, "fraction lost", 0, _U8, RtcpError)
        _check_int(self.packets_lost, "packets lost", -(1 << 23), (1 << 23) - 1, RtcpError)
        _check_int(self.highest_sequence, "highest sequence", 0, _U32, RtcpError)
        _check_int(self.jitter, "jitter", 0, _U32, RtcpError)
        _check_int(self.lsr, "LSR", 0, _U32, RtcpError)
        _check_int(self.dlsr, "DLSR", 0, _U32, RtcpError)

    @classmethod
    def parse(cls, data: bytes) -> ReportBlock:
        """Parse exactly one 24-byte report block."""
        if len(data) != _REPORT_BLOCK.size:
            raise RtcpError(f"report block of {len(data)} bytes, expected 24")
        return cls._unpack(data, 0)

    @classmethod
    def _unpack(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        return cls(
            ssrc=ssrc,
            fraction_lost=lost_word >> 24,
            packets_lost=lost - (1 << 24) if lost & 0x800000 else lost,
            highest_sequence=highest,
            jitter=jitter,
            lsr=lsr,
            dlsr=dlsr,
        )

    def __bytes__(self) -> bytes:
        lost_word = self.fraction_lost << 24 | (self.packets_lost & 0xFFFFFF)
        return _REPORT_BLOCK.pack(
            self.ssrc, lost_word, self.highest_sequence, self.jitter, self.lsr, self.dlsr
        )


def _check_reports(reports: tuple[ReportBlock, ...]) -> None:
    if not isinstance(reports, tuple) or len(reports) > _MAX_COUNT:
        raise RtcpError(f"at most {_MAX_COUNT} report blocks fit in one packet")
    if not all(isinstance(block, ReportBlock) for block in reports):
        raise RtcpError("reports must be ReportBlock values")


def _check_words(data: bytes, what: str) -> None:
    _check_bytes(data, what, RtcpError)
    if len(data) % 4:
        raise RtcpError(f"{what} of {len(data)} bytes is not a whole number of 32-bit words")


def _header(count: int, packet_type: int, body_size: int) -> bytes:
    """The 4-byte common header for a body of ``body_size`` bytes (a multiple of 4)."""
    words = body_size // 4
    if words > _U16:
        raise RtcpError(f"RTCP packet of {body_size + 4} bytes is too long for its length field")
    return _RTCP_HEADER.pack(RTP_VERSION << 6 | count, packet_type, words)


def _split(data: bytes, packet_type: int | None) -> tuple[int, int, bytes]:
    """Check one whole RTCP packet; return ``(count, packet type, body without padding)``."""
    if len(data) < 4:
        raise RtcpError(f"RTCP packet of {len(data)} bytes is shorter than its header")
    first, ptype, words = _RTCP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtcpError(f"RTCP version {first >> 6}, expected 2")
    size = 4 * (words + 1)
    if size != len(data):
        raise RtcpError(f"RTCP length field says {size} bytes, packet has {len(data)}")
    if packet_type is not None and ptype != packet_type:
        raise RtcpError(f"RTCP packet type {ptype}, expected {packet_type}")
    end = size
    if first & 0x20:
        pad = data[-1]
        if pad == 0 or pad > size - 4:
            raise RtcpError(f"RTCP padding count {pad} does not fit the packet")
        end -= pad
    return first & 0x1F, ptype, bytes(data[4:end])


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderReport:
    """SR, packet type 200 (RFC 3550 section 6.4.1)."""

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: tuple[ReportBlock, ...] = ()
    #: Profile-specific extension after the report blocks, whole 32-bit words.
    extension: bytes = b""

    def __post_init__(self) -> None:
        _check_int(self.ssrc, "SSRC", 0, _U32, RtcpError)
        _check_int(self.ntp_timestamp, "NTP timestamp", 0, _U64, RtcpError)
        _check_int(self.rtp_timestamp, "RTP timestamp", 0, _U32, RtcpError)
        _check_int(self.packet_count, "packet count", 0, _U32, RtcpError)
        _check_int(self.octet_count, "octet count", 0, _U32, RtcpError)
        _check_reports(self.reports)
        _check_words(self.extension, "SR extension")

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        """Parse exactly one SR packet."""
        count, _, body = _split(data, RTCP_SR)
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> SenderReport:
        need = _SR_INFO.size + 24 * count
        if len(body) < need:
            raise RtcpError(f"SR with {count} report blocks needs {need} bytes, has {len(body)}")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        reports = tuple(
            ReportBlock._unpack(body, _SR_INFO.size + 24 * i) for i in range(count)
        )
        return cls(
            ssrc=ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_ts,
            packet_count=packets,
            octet_count=octets,
            reports=reports,
            extension=_whole_words(body[need:], "SR extension"),
        )

    def __bytes__(self) -> bytes:
        body = b"".join(
            (
                _SR_INFO.pack(
                    self.ssrc,
                    self.ntp_timestamp,
                    self.rtp_timestamp,
                    self.packet_count,
                    self.octet_count,
                ),
                *(bytes(block) for block in self.reports),
                self.extension,
            )
        )
        return _header(len(self.reports), RTCP_SR, len(body)) + body


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverReport:
    """RR, packet type 201 (RFC 3550 section 6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __post_init__(self) -> None:
        _check_int(self.ssrc, "SSRC", 0, _U32, RtcpError)
        _check_reports(self.reports)
        _check_words(self.extension, "RR extension")

    @classmethod
    def parse(cls, data: bytes) -> ReceiverReport:
        """Parse exactly one RR packet."""
        count, _, body = _split(data, RTCP_RR)
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> ReceiverReport:
        need = 4 + 24 * count
        if len(body) < need:
            raise RtcpError(f"RR with {count} report blocks needs {need} bytes, has {len(body)}")
        (ssrc,) = struct.unpack_from("!I", body)
        reports = tuple(ReportBlock._unpack(body, 4 + 24 * i) for i in range(count))
        return cls(
            ssrc=ssrc, reports=reports, extension=_whole_words(body[need:], "RR extension")
        )

    def __bytes__(self) -> bytes:
        body = b"".join(
            (
                struct.pack("!I", self.ssrc),
                *(bytes(block) for block in self.reports),
                self.extension,
            )
        )
        return _header(len(self.reports), RTCP_RR, len(body)) + body


def _whole_words(data: bytes, what: str) -> bytes:
    # Only reachable with padding that is not a multiple of 4 (the RFC says
    # padding keeps the packet 32-bit aligned, so this is the peer's fault).
    if len(data) % 4:
        raise RtcpError(f"{what} of {len(data)} bytes is not whole 32-bit words")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SdesChunk:
    """One SDES chunk: a source and its ``(item type, value)`` items (RFC 3550 6.5)."""

    ssrc: int
    #: Item types 1 (CNAME) .. 8 (PRIV), or later registrations; values <= 255 bytes.
    items: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _check_int(self.ssrc, "SDES SSRC", 0, _U32, RtcpError)
        if not isinstance(self.items, tuple):
            raise RtcpError("SDES items must be a tuple")
        for item in self.items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise RtcpError("SDES items must be (type, value) pairs")
            _check_int(item[0], "SDES item type", 1, _U8, RtcpError)
            _check_bytes(item[1], "SDES item value", RtcpError)
            if len(item[1]) > _U8:
                raise RtcpError(f"SDES item of {len(item[1])} bytes exceeds 255")

    def item(self, item_type: int) -> bytes | None:
        """The value of the first item of ``item_type`` (e.g. ``SDES_CNAME``)."""
        for kind, value in self.items:
            if kind == item_type:
                return value
        return None

    def __bytes__(self) -> bytes:
        parts = [struct.pack("!I", self.ssrc)]
        for kind, value in self.items:
            parts.append(bytes((kind, len(value))))
            parts.append(value)
        size = 4 + sum(2 + len(value) for _, value in self.items)
        # At least one null octet ends the item list, then pad to 32 bits.
        parts.append(bytes(4 - size % 4))
        return b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDescription:
    """SDES, packet type 202."""

    chunks: tuple[SdesChunk, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, tuple) or len(self.chunks) > _MAX_COUNT:
            raise RtcpError(f"at most {_MAX_COUNT} SDES chunks fit in one packet")
        if not all(isinstance(chunk, SdesChunk) for chunk in self.chunks):
            raise RtcpError("chunks must be SdesChunk values")

    @classmethod
    def parse(cls, data: bytes) -> SourceDescription:
        """Parse exactly one SDES packet."""
        count, _, body = _split(data, RTCP_SDES)
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> SourceDescription:
        chunks = []
        offset = 0
        size = len(body)
        for _ in range(count):
            if offset + 4 > size:
                raise RtcpError("SDES chunk truncated before its SSRC")
            (ssrc,) = struct.unpack_from("!I", body, offset)
            offset += 4
            items = []
            while True:
                if offset >= size:
                    raise RtcpError("SDES chunk has no end-of-items null octet")
                kind = body[offset]
                if kind == 0:
                    # Skip the null octet and the padding to the next word.
                    offset = (offset + 4) & ~3
                    break
                if offset + 2 > size or offset + 2 + body[offset + 1] > size:
                    raise RtcpError("SDES item runs past the end of the packet")
                length = body[offset + 1]
                items.append((kind, body[offset + 2 : offset + 2 + length]))
                offset += 2 + length
            chunks.append(SdesChunk(ssrc=ssrc, items=tuple(items)))
        if offset > size or any(body[offset:]):
            raise RtcpError("SDES packet has bytes after its chunks")
        return cls(chunks=tuple(chunks))

    def __bytes__(self) -> bytes:
        body = b"".join(bytes(chunk) for chunk in self.chunks)
        return _header(len(self.chunks), RTCP_SDES, len(body)) + body


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """BYE, packet type 203 (RFC 3550 section 6.6)."""

    sources: tuple[int, ...] = ()
    reason: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.sources, tuple) or len(self.sources) > _MAX_COUNT:
            raise RtcpError(f"at most {_MAX_COUNT} sources fit in one BYE")
        for source in self.sources:
            _check_int(source, "BYE SSRC", 0, _U32, RtcpError)
        _check_bytes(self.reason, "BYE reason", RtcpError)
        if len(self.reason) > _U8:
            raise RtcpError(f"BYE reason of {len(self.reason)} bytes exceeds 255")

    @classmethod
    def parse(cls, data: bytes) -> Bye:
        """Parse exactly one BYE packet."""
        count, _, body = _split(data, RTCP_BYE)
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Bye:
        if len(body) < 4 * count:
            raise RtcpError(f"BYE with {count} sources has only {len(body)} bytes")
        sources = struct.unpack_from(f"!{count}I", body)
        reason = b""
        rest = body[4 * count :]
        if rest:
            length = rest[0]
            if 1 + length > len(rest):
                raise RtcpError("BYE reason runs past the end of the packet")
            reason = rest[1 : 1 + length]
        return cls(sources=tuple(sources), reason=reason)

    def __bytes__(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason:
            text = bytes((len(self.reason),)) + self.reason
            body += text + bytes(-len(text) % 4)
        return _header(len(self.sources), RTCP_BYE, len(body)) + body


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownRtcp:
    """Any other RTCP packet (APP, XR, RTPFB/PSFB feedback...), kept whole for relays."""

    packet_type: int
    #: The 5-bit field after the P bit (count, subtype or FMT, by packet type).
    count: int = 0
    #: Everything after the 4-byte header, whole 32-bit words.
    payload: bytes = b""

    def __post_init__(self) -> None:
        _check_int(self.packet_type, "RTCP packet type", 0, _U8, RtcpError)
        _check_int(self.count, "RTCP count", 0, _MAX_COUNT, RtcpError)
        _check_words(self.payload, "RTCP payload")

    @classmethod
    def parse(cls, data: bytes) -> UnknownRtcp:
        """Parse exactly one RTCP packet of any type, without interpreting its body."""
        count, ptype, body = _split(data, None)
        return cls(packet_type=ptype, count=count, payload=_whole_words(body, "RTCP payload"))

    def __bytes__(self) -> bytes:
        return _header(self.count, self.packet_type, len(self.payload)) + self.payload


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def _parse_one(first: int, ptype: int, body: bytes) -> RtcpPacket:
    count = first & 0x1F
    if ptype == RTCP_SR:
        return SenderReport._from_body(count, body)
    if ptype == RTCP_RR:
        return ReceiverReport._from_body(count, body)
    if ptype == RTCP_SDES:
        return SourceDescription._from_body(count, body)
    if ptype == RTCP_BYE:
        return Bye._from_body(count, body)
    return UnknownRtcp(packet_type=ptype, count=count, payload=_whole_words(body, "RTCP payload"))


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (one datagram or interleaved frame).

    Checks every packet's version and length against the bytes left, and that
    only the last packet carries padding (RFC 3550 section 6.4.1 and A.2).
    A compound packet need not start with SR/RR: reduced-size RTCP (RFC 5506)
    sends feedback alone.
    """
    size = len(data)
    if size == 0:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise RtcpError(f"{size - offset} trailing bytes after the last RTCP packet")
        first, ptype, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6} at offset {offset}, expected 2")
        end = offset + 4 * (words + 1)
        if end > size:
            raise RtcpError(
                f"RTCP length field at offset {offset} says {end - offset} bytes, "
                f"only {size - offset} left"
            )
        body_end = end
        if first & 0x20:
            if end != size:
                raise RtcpError("padding bit set on an RTCP packet that is not the last")
            pad = data[end - 1]
            if pad == 0 or pad > end - offset - 4:
                raise RtcpError(f"RTCP padding count {pad} does not fit the packet")
            body_end -= pad
        packets.append(_parse_one(first, ptype, bytes(data[offset + 4 : body_end])))
        offset = end
    return packets


def serialize_rtcp(packets: Sequence[RtcpPacket]) -> bytes:
    """A compound RTCP packet: the packets' bytes back to back."""
    return b"".join(bytes(packet) for packet in packets)


