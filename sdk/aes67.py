"""ST 2110-30 / AES67 audio over RTP: L16 and L24 (RFC 3190), 1 ms and 125 us packet times.

Samples are big-endian, channels interleaved; a packet carries
``rate * ptime`` samples per channel (48 or 6 at 48 kHz) and its timestamp
advances by that many. :class:`AudioDepacketizer` checks each packet and
counts what it refuses and what went missing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from msm.sdk.errors import ConfigError

__all__ = ["AudioDepacketizer", "AudioFormat", "packetize_audio"]

_RTP = struct.Struct("!BBHII")
_WIDTH = {"L16": 2, "L24": 3}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: str = "L24"
    rate: int = 48000
    channels: int = 2
    ptime_us: int = 1000

    def __post_init__(self) -> None:
        if self.encoding not in _WIDTH:
            raise ConfigError(f"audio encoding {self.encoding!r} (expected L16 or L24)")
        if self.ptime_us not in (1000, 125):
            raise ConfigError(f"packet time {self.ptime_us} us (expected 1000 or 125)")
        if not 1 <= self.channels <= 64 or self.rate not in (44100, 48000, 96000):
            raise ConfigError(f"{self.channels} channels at {self.rate} Hz is not an AES67 format")
        if self.rate * self.ptime_us % 1_000_000:
            raise ConfigError(f"{self.ptime_us} us at {self.rate} Hz is not a whole number of samples")

    @property
    def sample_bytes(self) -> int:
        return _WIDTH[self.encoding] * self.channels

    @property
    def samples_per_packet(self) -> int:
        return self.rate * self.ptime_us // 1_000_000

    @property
    def packet_bytes(self) -> int:
        return self.samples_per_packet * self.sample_bytes


def packetize_audio(pcm: bytes, fmt: AudioFormat, *, seq: int, timestamp: int, ssrc: int,
                    payload_type: int = 97) -> list[bytes]:
    """Interleaved big-endian PCM (a whole number of packets) as RTP packets."""
    if len(pcm) % fmt.packet_bytes:
        raise ConfigError(f"{len(pcm)} bytes of PCM is not a whole number of {fmt.packet_bytes}-byte packets")
    out = []
    for k in range(len(pcm) // fmt.packet_bytes):
        header = _RTP.pack(0x80, payload_type & 0x7F, (seq + k) & 0xFFFF,
                           (timestamp + k * fmt.samples_per_packet) & 0xFFFFFFFF, ssrc)
        out.append(header + pcm[k * fmt.packet_bytes:(k + 1) * fmt.packet_bytes])
    return out


@dataclass
class AudioDepacketizer:
    """Packets in, PCM out (``push`` returns the packet's samples, or ``b""`` when refused).

    Missing packets are counted in ``lost`` (and, with ``fill_gaps``, replaced
    by silence of their length so the timeline holds, up to one second).
    """

    fmt: AudioFormat
    payload_type: int = 97
    ssrc: int | None = None
    fill_gaps: bool = False
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("packets", "bad_rtp", "bad_pt", "bad_ssrc", "bad_length", "late", "lost"), 0))
    last_error: str = ""
    _next_seq: int | None = None

    def push(self, packet: bytes) -> bytes:
        if len(packet) < 12 or packet[0] >> 6 != 2 or packet[0] & 0x30:
            return self._refuse("bad_rtp", "not a plain RTP packet (short, version, padding or extension)")
        start = 12 + 4 * (packet[0] & 0x0F)
        if packet[1] & 0x7F != self.payload_type:
            return self._refuse("bad_pt", f"payload type {packet[1] & 0x7F}, expected {self.payload_type}")
        ssrc = int.from_bytes(packet[8:12], "big")
        if self.ssrc is not None and ssrc != self.ssrc:
            return self._refuse("bad_ssrc", f"SSRC {ssrc:#x}, expected {self.ssrc:#x}")
        body = packet[start:]
        if not body or len(body) % self.fmt.sample_bytes:
            return self._refuse("bad_length", f"{len(body)} payload bytes is not whole {self.fmt.sample_bytes}-byte "
                                              "sample frames")
        self.ssrc = ssrc
        seq = int.from_bytes(packet[2:4], "big")
        gap = 0
        if self._next_seq is not None:
            gap = (seq - self._next_seq) & 0xFFFF
            if gap >= 0x8000:
                return self._refuse("late", f"sequence {seq} is late or repeated")
            self.counters["lost"] += gap
        self._next_seq = (seq + 1) & 0xFFFF
        self.counters["packets"] += 1
        if self.fill_gaps and gap:
            # Bounded: at most one second of silence however large the gap.
            return bytes(min(gap * len(body), self.fmt.rate * self.fmt.sample_bytes)) + body
        return body

    def _refuse(self, reason: str, message: str) -> bytes:
        self.counters[reason] += 1
        self.last_error = message
        return b""
