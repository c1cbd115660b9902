"""RFC 4175 / SMPTE ST 2110-20 uncompressed video over RTP: the pure-Python reference.

A frame is the pgroup-packed raster: ``height`` lines of ``stride`` bytes, each
line ``width / pgroup_pixels`` pgroups of ``pgroup_bytes`` (4:2:2 10-bit: 5 bytes
per 2 pixels, GStreamer's ``UYVP``). :func:`packetize` cuts it into RTP packets
(GPM: any whole number of pgroups, segments may cross lines; BPM: 1260 bytes of
data, seven 180-octet blocks, per packet), with extended sequence numbers in the
payload header, the marker on the last packet and one 90 kHz timestamp per
frame. :class:`Depacketizer` puts packets back into a frame and says whether
the frame is complete, and if not, why.

The C core (``msm.ext.st2110``) does the same packet for packet (the tests
compare them); this twin is the fallback and the reference, good for about
30k packets/s (enough for 720p30 8-bit, not for 1080p30 10-bit at 112k/s).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from msm.sdk.errors import ConfigError, RtpError

__all__ = ["BPM", "BPM_DATA", "CLOCK_RATE", "GPM", "PGROUPS", "Depacketizer", "Frame", "VideoFormat",
           "line_split", "packet_plan", "packetize", "parse_payload", "timestamp_for"]

CLOCK_RATE = 90_000
GPM = "2110GPM"
BPM = "2110BPM"
#: ST 2110-20 block packing: the data of every packet but a frame's last is
#: 1260 octets, seven 180-octet blocks (180 is a whole number of pgroups for
#: every sampling below).
BPM_DATA = 1260

#: (sampling, depth) -> (bytes, pixels) of one pgroup (RFC 4175 section 4.3,
#: ST 2110-20 table 1). 4:2:0 is left out: its pgroups span two lines.
PGROUPS: dict[tuple[str, int], tuple[int, int]] = {
    ("YCbCr-4:2:2", 8): (4, 2), ("YCbCr-4:2:2", 10): (5, 2), ("YCbCr-4:2:2", 12): (6, 2),
    ("YCbCr-4:4:4", 8): (3, 1), ("YCbCr-4:4:4", 10): (15, 4),
    ("RGB", 8): (3, 1), ("RGB", 10): (15, 4),
}

_RTP = struct.Struct("!BBHII")
_SRD = struct.Struct("!HHH")
#: Lines and offsets are 15-bit fields.
_MAX_DIM = 0x7FFF
#: The largest RTP packet either side builds or accepts (jumbo frames included).
MAX_PACKET = 9000
_RTP_HEADER = 12
#: Segments per packet either side builds (the C core's bound too); more are refused on receipt.
_MAX_SEGMENTS = 64
_EXT_SEQ = 2


@dataclass(frozen=True, slots=True)
class VideoFormat:
    """What a stream's frames are: sampling, depth and size."""

    sampling: str
    depth: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if (self.sampling, self.depth) not in PGROUPS:
            known = ", ".join(f"{s}/{d}" for s, d in PGROUPS)
            raise ConfigError(f"unsupported sampling/depth {self.sampling}/{self.depth} (known: {known})")
        if not (0 < self.width <= _MAX_DIM and 0 < self.height <= _MAX_DIM):
            raise ConfigError(f"frame size {self.width}x{self.height} outside 1..{_MAX_DIM}")
        if self.width % self.pgroup_pixels:
            raise ConfigError(f"width {self.width} is not a multiple of the pgroup's {self.pgroup_pixels} pixels")

    @property
    def pgroup_bytes(self) -> int:
        return PGROUPS[(self.sampling, self.depth)][0]

    @property
    def pgroup_pixels(self) -> int:
        return PGROUPS[(self.sampling, self.depth)][1]

    @property
    def stride(self) -> int:
        """Bytes per line."""
        return self.width // self.pgroup_pixels * self.pgroup_bytes

    @property
    def frame_bytes(self) -> int:
        return self.stride * self.height


def timestamp_for(frame_index: int, rate_num: int, rate_den: int = 1, base: int = 0) -> int:
    """The 90 kHz RTP timestamp of frame ``frame_index`` at ``rate_num/rate_den`` frames/s."""
    return (base + frame_index * CLOCK_RATE * rate_den // rate_num) & 0xFFFFFFFF


def line_split(fmt: VideoFormat, mtu: int) -> int:
    """Packets per line when every packet is one equal slice of a line (0: no such split).

    The fewest ``k`` with ``stride / k`` a whole number of pgroups that fits
    one packet, at most 64: 4 packets of 1200 bytes for 1080p 10-bit at mtu
    1400. All packets of a frame are then the same size, so a sender can hand
    runs of them to the kernel at once (UDP GSO); a GPM plan still.
    """
    most = mtu - _RTP_HEADER - _EXT_SEQ - _SRD.size
    if most < fmt.pgroup_bytes:
        return 0
    for k in range(-(-fmt.stride // most), _MAX_SEGMENTS + 1):
        if fmt.stride % k == 0 and (fmt.stride // k) % fmt.pgroup_bytes == 0:
            return k
    return 0


def packet_plan(fmt: VideoFormat, mtu: int, packing: str = GPM, *,
                aligned: bool = False) -> list[list[tuple[int, int, int]]]:
    """Each packet's segments as ``(line, pixel offset, bytes)``, in order.

    ``mtu`` is the largest RTP packet (header included, like GStreamer's
    ``mtu``). A packet takes whole pgroups until it is full (GPM) or holds
    :data:`BPM_DATA` bytes (BPM); a segment ends at its line's end.
    ``aligned`` (GPM): equal slices of each line, one per packet (see
    :func:`line_split`), where the line allows it.
    """
    if packing not in (GPM, BPM):
        raise ConfigError(f"unknown packing mode {packing!r} (expected {GPM} or {BPM})")
    pg, px = fmt.pgroup_bytes, fmt.pgroup_pixels
    room = mtu - _RTP_HEADER - _EXT_SEQ
    limit = BPM_DATA if packing == BPM else room
    if mtu > MAX_PACKET or room - _SRD.size < (BPM_DATA if packing == BPM else pg):
        raise ConfigError(f"mtu {mtu} cannot carry a {packing} packet (at most {MAX_PACKET})")
    split = line_split(fmt, mtu) if aligned and packing == GPM else 0
    if split:
        size = fmt.stride // split
        return [[(line, k * size // pg * px, size)] for line in range(fmt.height) for k in range(split)]
    packets: list[list[tuple[int, int, int]]] = []
    line, offset_bytes = 0, 0
    while line < fmt.height:
        segments: list[tuple[int, int, int]] = []
        used, data = 0, 0
        while line < fmt.height and len(segments) < _MAX_SEGMENTS:
            take = min((room - used - _SRD.size) // pg * pg, (limit - data) // pg * pg, fmt.stride - offset_bytes)
            if take <= 0:
                break
            segments.append((line, offset_bytes // pg * px, take))
            used += _SRD.size + take
            data += take
            offset_bytes += take
            if offset_bytes == fmt.stride:
                line, offset_bytes = line + 1, 0
        packets.append(segments)
    return packets


def packetize(frame: bytes | bytearray | memoryview, fmt: VideoFormat, *, seq: int, timestamp: int, ssrc: int,
              payload_type: int = 96, mtu: int = 1400, packing: str = GPM, aligned: bool = False) -> list[bytes]:
    """One frame as RTP packets; ``seq`` is the 32-bit extended sequence number of the first."""
    view = memoryview(frame).cast("B")
    if len(view) != fmt.frame_bytes:
        raise ConfigError(f"frame of {len(view)} bytes, expected {fmt.frame_bytes} for {fmt}")
    plan = packet_plan(fmt, mtu, packing, aligned=aligned)
    out = []
    for index, segments in enumerate(plan):
        ext = (seq + index) & 0xFFFFFFFF
        marker = 0x80 if index == len(plan) - 1 else 0
        parts = [_RTP.pack(0x80, marker | payload_type, ext & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc),
                 struct.pack("!H", ext >> 16)]
        for n, (line, px_offset, length) in enumerate(segments):
            cont = 0x8000 if n < len(segments) - 1 else 0
            parts.append(_SRD.pack(length, line, cont | px_offset))
        for line, px_offset, length in segments:
            start = line * fmt.stride + px_offset // fmt.pgroup_pixels * fmt.pgroup_bytes
            parts.append(bytes(view[start:start + length]))
        out.append(b"".join(parts))
    return out


@dataclass(frozen=True, slots=True)
class Payload:
    """One parsed RFC 4175 packet: RTP fields and ``(line, pixel offset, data start, length)`` segments."""

    ext_seq: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    segments: tuple[tuple[int, int, int, int], ...]


def _rtp_payload_start(packet: bytes | memoryview) -> tuple[int, int]:
    """``(start, end)`` of the RTP payload: CSRCs, header extension and padding skipped."""
    if len(packet) < _RTP_HEADER + _EXT_SEQ or packet[0] >> 6 != 2:
        raise RtpError("not an RTP packet (too short or version is not 2)")
    start = _RTP_HEADER + 4 * (packet[0] & 0x0F)
    end = len(packet)
    if packet[0] & 0x10:
        if start + 4 > end:
            raise RtpError("RTP header extension runs past the packet")
        start += 4 + 4 * int.from_bytes(packet[start + 2:start + 4], "big")
    if packet[0] & 0x20:
        end -= packet[-1]
    if start + _EXT_SEQ > end:
        raise RtpError("RTP packet has no room for the RFC 4175 payload header")
    return start, end


def parse_payload(packet: bytes | memoryview, fmt: VideoFormat) -> Payload:
    """Parse and check one packet against ``fmt``; :class:`RtpError` says what is wrong."""
    start, end = _rtp_payload_start(packet)
    b1, seq, ts, ssrc = packet[1], int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big"), \
        int.from_bytes(packet[8:12], "big")
    ext = (int.from_bytes(packet[start:start + 2], "big") << 16) | seq
    pos = start + _EXT_SEQ
    heads = []
    while True:
        if pos + _SRD.size > end:
            raise RtpError("RFC 4175 segment headers run past the packet")
        length, line, offset = _SRD.unpack_from(packet, pos)
        pos += _SRD.size
        heads.append((length, line & _MAX_DIM, offset & _MAX_DIM))
        if not offset & 0x8000 or len(heads) > _MAX_SEGMENTS:
            break
    segments = []
    for length, line, px_offset in heads:
        if line >= fmt.height or px_offset >= fmt.width or px_offset % fmt.pgroup_pixels \
                or length % fmt.pgroup_bytes or length == 0:
            raise RtpError(f"segment line {line} offset {px_offset} length {length} is outside the "
                           f"{fmt.width}x{fmt.height} frame or not whole pgroups")
        if px_offset // fmt.pgroup_pixels * fmt.pgroup_bytes + length > fmt.stride:
            raise RtpError(f"segment line {line} offset {px_offset} length {length} runs past the line")
        if pos + length > end:
            raise RtpError("RFC 4175 segment data runs past the packet")
        segments.append((line, px_offset, pos, length))
        pos += length
    return Payload(ext, ts, ssrc, b1 & 0x7F, bool(b1 & 0x80), tuple(segments))


@dataclass(slots=True)
class Frame:
    """A frame put back together; ``reason`` says why it is not complete."""

    timestamp: int
    data: bytearray
    complete: bool = True
    reason: str = ""
    packets: int = 0
    lost: int = 0
    bytes: int = 0


#: Counter names shared with the C core (msm_st2110_rx_stats).
COUNTERS = ("packets", "bad_rtp", "bad_pt", "bad_ssrc", "bad_source", "bad_segment", "late", "lost",
            "frames_complete", "frames_incomplete", "frames_dropped")


@dataclass
class Depacketizer:
    """Packets in, frames out: ``push`` returns the frames a packet finishes.

    A frame is complete when its marker arrived, no sequence number was missed
    and every byte of the frame was written. Otherwise it is counted in
    ``frames_incomplete`` and handed on with ``complete=False`` and a reason,
    or dropped (``frames_dropped``) when ``hand_on_incomplete`` is false.
    A packet that fails a check is counted by reason, remembered in
    ``last_error`` and ignored; the stream goes on.
    """

    fmt: VideoFormat
    payload_type: int = 96
    ssrc: int | None = None
    hand_on_incomplete: bool = True
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last_error: str = ""
    _frame: Frame | None = None
    _next_seq: int | None = None
    _gap: int = 0
    _done_ts: int | None = None

    def push(self, packet: bytes | memoryview) -> list[Frame]:
        out: list[Frame] = []
        try:
            _rtp_payload_start(packet)
        except RtpError as exc:
            self._count("bad_rtp", str(exc))
            return out
        if packet[1] & 0x7F != self.payload_type:
            self._count("bad_pt", f"payload type {packet[1] & 0x7F}, expected {self.payload_type}")
            return out
        ssrc = int.from_bytes(packet[8:12], "big")
        if self.ssrc is not None and ssrc != self.ssrc:
            self._count("bad_ssrc", f"SSRC {ssrc:#x}, expected {self.ssrc:#x}")
            return out
        try:
            payload = parse_payload(packet, self.fmt)
        except RtpError as exc:
            self._count("bad_segment", str(exc))
            return out
        self.ssrc = ssrc
        # Continuity on the 16-bit RTP sequence number: GStreamer's rtpvrawpay
        # leaves the extended field at 0, so its high half cannot be trusted.
        seq = payload.ext_seq & 0xFFFF
        if self._next_seq is not None:
            ahead = (seq - self._next_seq) & 0xFFFF
            if ahead >= 0x8000:
                self._count("late", f"sequence {seq} is late or repeated")
                return out
            self.counters["lost"] += ahead
            self._gap += ahead
        self._next_seq = (seq + 1) & 0xFFFF
        if payload.timestamp == self._done_ts:
            self._count("late", "packet of a frame already finished")
            return out
        if self._frame is not None and self._frame.timestamp != payload.timestamp:
            # A gap before a new frame's first packet, in a frame that never
            # saw its marker, is that frame's loss (its tail went missing).
            self._frame.lost += self._gap
            self._gap = 0
            self._finish(out, "no marker")
        self._write(payload, packet)
        if payload.marker:
            self._finish(out, "")
        return out

    def _write(self, payload: Payload, packet: bytes | memoryview) -> None:
        self.counters["packets"] += 1
        frame = self._frame
        if frame is None:
            frame = self._frame = Frame(payload.timestamp, bytearray(self.fmt.frame_bytes))
        frame.lost += self._gap
        self._gap = 0
        frame.packets += 1
        for line, px_offset, start, length in payload.segments:
            at = line * self.fmt.stride + px_offset // self.fmt.pgroup_pixels * self.fmt.pgroup_bytes
            frame.data[at:at + length] = packet[start:start + length]
            frame.bytes += length

    def flush(self) -> list[Frame]:
        """End the frame in progress (its marker never came)."""
        out: list[Frame] = []
        if self._frame is not None:
            self._finish(out, "no marker")
        return out

    def _finish(self, out: list[Frame], reason: str) -> None:
        frame, self._frame = self._frame, None
        assert frame is not None
        self._done_ts = frame.timestamp
        if frame.lost:
            reason = f"lost {frame.lost} packets"
        elif not reason and frame.bytes != self.fmt.frame_bytes:
            reason = f"got {frame.bytes} of {self.fmt.frame_bytes} bytes"
        frame.complete, frame.reason = not reason, reason
        if frame.complete:
            self.counters["frames_complete"] += 1
            out.append(frame)
            return
        self.counters["frames_incomplete"] += 1
        if self.hand_on_incomplete:
            out.append(frame)
        else:
            self.counters["frames_dropped"] += 1

    def _count(self, reason: str, message: str) -> None:
        self.counters[reason] += 1
        self.last_error = message
