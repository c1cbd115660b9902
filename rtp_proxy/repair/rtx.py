"""NACK/RTX loss repair for the node-to-node leg: RFC 4585 generic NACK and RFC 4588 retransmission.

Four pieces, none doing I/O (the engine sends and receives):

* :func:`build_nack` / :func:`parse_nack` / :func:`nacks_in`: RTCP transport-layer feedback,
  PT 205 FMT 1, one FCI per run of up to 17 lost packets (PID and a bitmask of the 16 after it).
* :func:`build_rtx` / :func:`parse_rtx`: a retransmission packet carries the original's
  sequence number (OSN) in front of its payload, on its own SSRC and payload type (session
  multiplexing, RFC 4588 section 4); the receiver gives the original back.
* :class:`RtxSender`: the sender's bounded buffer of what it sent, answering NACKs with RTX.
* :class:`LossTracker`: the receiver's view of what is missing and which NACKs are worth
  sending: none for a packet whose retransmission could not arrive before it must be played
  out (now + RTT past its deadline), a repeat only after an RTT without an answer.

Python only: NACK traffic is a few packets per loss, far below the media's rate.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from msm.sdk.errors import ConfigError, RtcpError, RtpError

__all__ = ["LossTracker", "Nack", "RtxSender", "build_nack", "build_rtx", "nacks_in", "parse_nack", "parse_rtx"]

RTCP_RTPFB = 205
FMT_NACK = 1
#: FCI entries one NACK carries at most: 12 + 4 * 256 bytes stays under a 1200-byte MTU budget.
MAX_FCI = 256
_NACK_HEAD = struct.Struct("!BBHII")
_FCI = struct.Struct("!HH")


def _ahead(a: int, b: int) -> int:
    """How far sequence number ``b`` is past ``a`` (negative: before it), modulo 2**16."""
    d = (b - a) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


@dataclass(frozen=True, slots=True)
class Nack:
    """One generic NACK: who asks, for which stream, which sequence numbers (in FCI order)."""

    sender_ssrc: int
    media_ssrc: int
    seqs: tuple[int, ...]


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """A generic NACK for ``seqs`` (any order; wrap-aware: they should lie within 32768 of each other).

    At most :data:`MAX_FCI` FCI entries (up to 17 packets each); raises :class:`RtcpError` past that.
    """
    todo = sorted({s & 0xFFFF for s in seqs})
    if not todo:
        raise RtcpError("a NACK for no packet")
    # Start after the widest gap of the circle, so a run across 65535 -> 0 stays in order.
    gaps = [((todo[(i + 1) % len(todo)] - s) & 0xFFFF) or 0x10000 for i, s in enumerate(todo)]
    start = (gaps.index(max(gaps)) + 1) % len(todo)
    ordered = todo[start:] + todo[:start]
    fci: list[bytes] = []
    pid, blp = ordered[0], 0
    for s in ordered[1:]:
        d = (s - pid) & 0xFFFF
        if d <= 16:
            blp |= 1 << (d - 1)
            continue
        fci.append(_FCI.pack(pid, blp))
        pid, blp = s, 0
    fci.append(_FCI.pack(pid, blp))
    if len(fci) > MAX_FCI:
        raise RtcpError(f"a NACK of {len(fci)} FCI entries, {MAX_FCI} at most")
    return _NACK_HEAD.pack(0x80 | FMT_NACK, RTCP_RTPFB, 2 + len(fci), sender_ssrc & 0xFFFFFFFF,
                           media_ssrc & 0xFFFFFFFF) + b"".join(fci)


def parse_nack(packet: bytes) -> Nack:
    """One RTCP packet that must be a generic NACK; :class:`RtcpError` otherwise."""
    if len(packet) < 12:
        raise RtcpError(f"NACK of {len(packet)} bytes, 16 at least")
    first, ptype, words, sender, media = _NACK_HEAD.unpack_from(packet)
    if first >> 6 != 2 or ptype != RTCP_RTPFB or first & 0x1F != FMT_NACK:
        raise RtcpError(f"not a generic NACK (version {first >> 6}, PT {ptype}, FMT {first & 0x1F})")
    size = 4 * (words + 1)
    end = size - (packet[size - 1] if first & 0x20 and size == len(packet) else 0)
    if size != len(packet) or end < 16 or (end - 12) % 4:
        raise RtcpError(f"NACK length field says {size} bytes, packet has {len(packet)}")
    seqs = []
    for at in range(12, end, 4):
        pid, blp = _FCI.unpack_from(packet, at)
        seqs.append(pid)
        seqs += [(pid + k + 1) & 0xFFFF for k in range(16) if blp >> k & 1]
    return Nack(sender, media, tuple(seqs))


def nacks_in(compound: bytes) -> list[Nack]:
    """The generic NACKs of a compound RTCP packet (other packets skipped); :class:`RtcpError` if
    the compound does not split into whole packets."""
    out, at = [], 0
    while at < len(compound):
        if len(compound) - at < 4:
            raise RtcpError(f"{len(compound) - at} stray bytes after the last RTCP packet")
        size = 4 * (struct.unpack_from("!H", compound, at + 2)[0] + 1)
        if at + size > len(compound):
            raise RtcpError(f"RTCP packet of {size} bytes, {len(compound) - at} left")
        if compound[at + 1] == RTCP_RTPFB and compound[at] & 0x1F == FMT_NACK:
            out.append(parse_nack(compound[at:at + size]))
        at += size
    return out


def _rtp_parts(packet: bytes) -> tuple[int, int]:
    """(header length including CSRCs and extension, payload end without padding) of an RTP packet."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise RtpError(f"not RTP ({len(packet)} bytes)")
    head = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < head + 4:
            raise RtpError("RTP header extension cut short")
        head += 4 + 4 * struct.unpack_from("!H", packet, head + 2)[0]
    end = len(packet) - (packet[-1] if packet[0] & 0x20 and len(packet) > head else 0)
    if head > len(packet) or end < head:
        raise RtpError("RTP header or padding longer than the packet")
    return head, end


def build_rtx(original: bytes, *, rtx_ssrc: int, rtx_payload_type: int, rtx_seq: int) -> bytes:
    """RFC 4588 section 4: the original's header (CSRCs, extension, marker, timestamp kept) with the
    RTX stream's payload type, sequence number and SSRC; then the OSN; then the original payload,
    its padding removed (section 4: padding is not retransmitted)."""
    head, end = _rtp_parts(original)
    first = original[0] & ~0x20 & 0xFF
    second = (original[1] & 0x80) | (rtx_payload_type & 0x7F)
    return (struct.pack("!BBHI", first, second, rtx_seq & 0xFFFF, struct.unpack_from("!I", original, 4)[0])
            + struct.pack("!I", rtx_ssrc & 0xFFFFFFFF) + original[12:head] + original[2:4] + original[head:end])


def parse_rtx(rtx: bytes, *, media_ssrc: int, media_payload_type: int) -> bytes:
    """The original packet back from an RTX packet (the ``apt`` payload type and the paired SSRC)."""
    head, end = _rtp_parts(rtx)
    if end - head < 2:
        raise RtpError("RTX packet without an original sequence number")
    first = rtx[0] & ~0x20 & 0xFF
    second = (rtx[1] & 0x80) | (media_payload_type & 0x7F)
    return (bytes((first, second)) + rtx[head:head + 2] + rtx[4:8] + struct.pack("!I", media_ssrc & 0xFFFFFFFF)
            + rtx[12:head] + rtx[head + 2:end])


@dataclass
class RtxSender:
    """The sender's side: what was sent, kept for NACKs, answered with RTX packets.

    Bounded twice: by count (``max_packets``: memory at high packet rates, 1024 packets of
    1500 bytes is 1.5 MB) and by age (``max_age``: a retransmission later than the receiver's
    playout delay is useless, so an older packet is not worth keeping). Each packet is resent at
    most ``max_resends`` times (a receiver repeating a NACK must not turn the leg into a loop).
    """

    rtx_ssrc: int
    rtx_payload_type: int
    max_packets: int = 1024
    max_age: float = 1.0
    max_resends: int = 3
    rtx_seq: int = 0
    sent: OrderedDict[int, tuple[float, bytes, int]] = field(default_factory=OrderedDict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("stored", "nacked", "resent", "expired", "unknown", "resend_limit", "evicted"), 0))

    def __post_init__(self) -> None:
        if not 1 <= self.max_packets <= 65536 or not 0 < self.max_age <= 10 or not 1 <= self.max_resends <= 10:
            raise ConfigError("RTX buffer: 1..65536 packets, 0..10 s, 1..10 resends")

    def _expire(self, now: float) -> None:
        while self.sent:
            seq, (when, _, _) = next(iter(self.sent.items()))
            if len(self.sent) <= self.max_packets and now - when <= self.max_age:
                break
            self.counters["evicted" if len(self.sent) > self.max_packets else "expired"] += 1
            del self.sent[seq]

    def store(self, packet: bytes, now: float) -> None:
        """Remember a media packet as it leaves (bad RTP is not stored: :class:`RtpError`)."""
        _rtp_parts(packet)
        seq = struct.unpack_from("!H", packet, 2)[0]
        self.sent.pop(seq, None)
        self.sent[seq] = (now, bytes(packet), 0)
        self.counters["stored"] += 1
        self._expire(now)

    def answer(self, nack: Nack, now: float) -> list[bytes]:
        """The RTX packets answering ``nack`` (those still held, within their resend budget)."""
        self._expire(now)
        out = []
        for seq in nack.seqs:
            self.counters["nacked"] += 1
            held = self.sent.get(seq)
            if held is None:
                self.counters["unknown"] += 1
                continue
            when, packet, resends = held
            if resends >= self.max_resends:
                self.counters["resend_limit"] += 1
                continue
            self.sent[seq] = (when, packet, resends + 1)
            out.append(build_rtx(packet, rtx_ssrc=self.rtx_ssrc, rtx_payload_type=self.rtx_payload_type,
                                 rtx_seq=self.rtx_seq))
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            self.counters["resent"] += 1
        return out


@dataclass
class _Missing:
    deadline: float      # when the packet must be here to be played out
    due: float           # when to (re)send its NACK
    asked: int = 0


@dataclass
class LossTracker:
    """The receiver's side: which packets are missing and which NACKs to send now.

    A gap opens when a packet arrives past the next expected one; each missing packet gets a
    deadline (its successor's arrival plus ``playout_delay``: it had to be played before that
    one). A NACK goes out after ``reorder`` (a packet merely reordered arrives within it), only if
    ``now + rtt`` is before the deadline, and again after each ``rtt`` without the packet, at most
    ``max_nacks`` times. At most ``max_missing`` packets are tracked (the oldest are given up):
    a burst longer than that cannot be repaired by NACK in time anyway.
    """

    rtt: float = 0.02
    playout_delay: float = 0.2
    reorder: float = 0.005
    max_nacks: int = 3
    max_missing: int = 512
    highest: int | None = None
    missing: OrderedDict[int, _Missing] = field(default_factory=OrderedDict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("received", "lost", "nacks", "repaired", "too_late", "gave_up", "late"), 0))

    def __post_init__(self) -> None:
        if not 0 < self.playout_delay <= 10 or not 0 <= self.rtt <= 10 or not 1 <= self.max_missing <= 32768:
            raise ConfigError("loss tracker: playout delay 0..10 s, RTT 0..10 s, 1..32768 missing packets")

    def received(self, seq: int, now: float) -> bool:
        """A media packet (original or from RTX) arrived; ``False`` if it was a copy or out of reach."""
        seq &= 0xFFFF
        if self.highest is None:
            self.highest = seq
            self.counters["received"] += 1
            return True
        ahead = _ahead(self.highest, seq)
        if ahead <= 0:
            if self.missing.pop(seq, None) is None:
                self.counters["late"] += 1
                return False
            self.counters["repaired"] += 1
            self.counters["received"] += 1
            return True
        skipped = max(0, ahead - 1 - self.max_missing)     # a burst longer than the bound: its start is given up
        for k in range(1 + skipped, ahead):
            self.missing[(self.highest + k) & 0xFFFF] = _Missing(now + self.playout_delay, now + self.reorder)
        self.counters["lost"] += ahead - 1
        self.counters["gave_up"] += skipped
        while len(self.missing) > self.max_missing:
            self.missing.popitem(last=False)
            self.counters["gave_up"] += 1
        self.highest = seq
        self.counters["received"] += 1
        return True

    def poll(self, now: float) -> list[int]:
        """The sequence numbers to NACK now (build one packet of them with :func:`build_nack`)."""
        out: list[int] = []
        for seq, m in list(self.missing.items()):
            if now + self.rtt > m.deadline:        # an answer could not come in time: stop asking
                del self.missing[seq]
                self.counters["gave_up" if m.asked else "too_late"] += 1
            elif m.asked < self.max_nacks and now >= m.due and len(out) < MAX_FCI:
                m.asked += 1
                m.due = now + max(self.rtt, 0.001)
                out.append(seq)
        self.counters["nacks"] += len(out)
        return out

    def next_due(self) -> float | None:
        """When :meth:`poll` may next have something to say (for the caller's timer), or ``None``."""
        return min((m.due for m in self.missing.values() if m.asked < self.max_nacks), default=None)
