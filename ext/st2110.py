"""The ST 2110-20 packet core's seam: thin handles over ``msm.ext._st2110`` (C, cffi API mode).

:func:`load` returns the compiled module or raises :class:`NativeUnavailable`
saying why; callers then use the pure-Python twin (``msm.sdk.rfc4175``). The
C calls release the GIL, so a receiver or sender thread runs beside Python.
Plain integers only here (``ext`` imports no other component).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from msm.ext import NativeModule, NativeUnavailable, _flag

__all__ = ["FrameInfo", "FrameSlot", "NativeUnavailable", "Packetizer", "Receiver", "equal_share", "load",
           "packetize"]

MAX_PACKET = 9000
RX_COUNTERS = ("packets", "bad_rtp", "bad_pt", "bad_ssrc", "bad_source", "bad_segment", "late", "lost",
               "frames_complete", "frames_incomplete", "recv_errors", "batches", "bytes")
TX_COUNTERS = ("packets_sent", "bytes_sent", "send_errors", "late_ns", "gso_sends", "gso_disabled")

_native = NativeModule("_st2110", "run python ext/build_st2110.py")


def load() -> ModuleType:
    """The compiled ``msm.ext._st2110`` module, or :class:`NativeUnavailable`."""
    return _native.load()


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """How a frame ended: its timestamp, packets, packets lost, bytes written."""

    timestamp: int
    packets: int
    lost: int
    bytes: int
    complete: bool
    no_marker: bool


def _info(done: Any) -> FrameInfo:
    return FrameInfo(int(done.timestamp), int(done.packets), int(done.lost), int(done.bytes),
                     bool(done.complete), bool(done.no_marker))


def _packed(host: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(host)
    return (socket.AF_INET if addr.version == 4 else socket.AF_INET6), addr.packed


class Receiver:
    """Depacketizes what arrives on ``fd`` (not owned) into the buffers :meth:`poll` is given."""

    def __init__(self, fd: int, width: int, height: int, pg_bytes: int, pg_pixels: int, payload_type: int) -> None:
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self.frame_bytes = width // pg_pixels * pg_bytes * height
        ptr = self.lib.msm_st2110_rx_new(fd, width, height, pg_bytes, pg_pixels, payload_type)
        if ptr == self.ffi.NULL:
            raise ValueError(f"receiver refused {width}x{height} pgroup {pg_bytes}/{pg_pixels}")
        self._ptr: Any = self.ffi.gc(ptr, self.lib.msm_st2110_rx_free)
        self._done = self.ffi.new("msm_st2110_frame *")
        self._stats = self.ffi.new("msm_st2110_rx_stats *")

    def set_coalesce(self, us: int) -> None:
        """After a batch that was not full, wait ``us`` microseconds before the next receive (0: never)."""
        self.lib.msm_st2110_rx_set_coalesce(self._ptr, max(0, min(us, 100_000)))

    def set_ssrc(self, ssrc: int | None) -> None:
        self.lib.msm_st2110_rx_set_ssrc(self._ptr, -1 if ssrc is None else ssrc & 0xFFFFFFFF)

    def set_source(self, host: str | None, port: int = 0) -> None:
        """Accept datagrams only from ``host`` (and ``port``, 0: any); ``None``: from anyone."""
        if host is None:
            self.lib.msm_st2110_rx_set_source(self._ptr, 0, self.ffi.NULL, 0)
            return
        family, packed = _packed(host)
        self.lib.msm_st2110_rx_set_source(self._ptr, family, packed, port & 0xFFFF)

    def _buffer(self, frame: bytearray) -> Any:
        if len(frame) < self.frame_bytes:
            raise ValueError(f"frame buffer of {len(frame)} bytes, need {self.frame_bytes}")
        return self.ffi.from_buffer(frame)

    def poll(self, frame: bytearray, timeout_ms: int) -> FrameInfo | None:
        """Receive into ``frame`` until a frame ends (its info) or ``timeout_ms`` passes (``None``).

        After a frame ended, pass the next buffer: the frame in progress is
        written into whatever buffer each call is given.
        """
        rc = self.lib.msm_st2110_rx_poll(self._ptr, self._buffer(frame), timeout_ms, self._done)
        if rc < 0:
            raise OSError(self.ffi.errno, "recvmmsg failed")
        return _info(self._done) if rc == 1 else None

    def push(self, packet: bytes, frame: bytearray) -> tuple[int, FrameInfo | None]:
        """One packet: ``(0, None)`` taken; ``(1, info)`` it ended a frame; ``(2, info)`` the frame
        before it ended and the packet was not taken (push it again with the next buffer)."""
        rc = self.lib.msm_st2110_rx_push(self._ptr, packet, len(packet), self._buffer(frame), self._done)
        return rc, (_info(self._done) if rc else None)

    def flush(self) -> FrameInfo | None:
        """End the frame in progress (no marker came)."""
        return _info(self._done) if self.lib.msm_st2110_rx_flush(self._ptr, self._done) else None

    @property
    def last_error(self) -> str:
        return str(self.ffi.string(self.lib.msm_st2110_rx_last_error(self._ptr)).decode(errors="replace"))

    def stats(self) -> dict[str, int]:
        self.lib.msm_st2110_rx_stats_get(self._ptr, self._stats)
        return {name: int(getattr(self._stats, name)) for name in RX_COUNTERS}


def equal_share(stride: int, pg_bytes: int, mtu: int) -> int:
    """Frame bytes a packet carries in equal packets (mode 3: two segment headers each), 0 where
    lines are too short for them (a packet would span three lines)."""
    share = (mtu - 12 - 2 - 12) // pg_bytes * pg_bytes
    return share if pg_bytes <= share <= stride else 0


def _line_split(stride: int, pg_bytes: int, most: int) -> int:
    """Packets per line in equal slices (as st2110.c's line_split; 0: none)."""
    if most < pg_bytes:
        return 0
    for k in range(-(-stride // most), 65):
        if stride % k == 0 and (stride // k) % pg_bytes == 0:
            return k
    return 0


class Packetizer:
    """Frames -> packets back to back in one buffer plus their lengths.

    The buffer is allocated once for the format (``max_packets`` packets of
    at most ``mtu`` bytes), so a pacer (``msm_pacer_send_frame`` takes the
    same layout) can be handed ``(buffer, lengths, count)`` as it is.
    """

    def __init__(self, width: int, height: int, pg_bytes: int, pg_pixels: int, *, mtu: int, bpm: bool,
                 payload_type: int, ssrc: int, aligned: bool = False, equal: bool = False) -> None:
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self.geometry = (width, height, pg_bytes, pg_pixels)
        self.mtu, self.bpm, self.payload_type, self.ssrc = mtu, bpm, payload_type, ssrc & 0xFFFFFFFF
        stride = width // pg_pixels * pg_bytes
        share = equal_share(stride, pg_bytes, mtu) if equal and not bpm else 0
        self.mode = 1 if bpm else 3 if share else 2 if aligned else 0
        self.frame_bytes = stride * height
        # One slot per packet of the smallest packets the mode can make (bounded by the frame size).
        data = min(mtu - 12 - 2 - 6, 1260 if bpm else mtu) // pg_bytes * pg_bytes
        split = _line_split(stride, pg_bytes, mtu - 12 - 2 - 6) if aligned and not bpm and not share else 0
        # Greedy packing: every packet full but one a line at most; line slices: exactly split a line.
        self.max_packets = (-(-self.frame_bytes // share) if share else split * height if split
                            else max(1, self.frame_bytes // max(1, data) + height + 1))
        self.capacity = self.max_packets * mtu
        self.buffer: Any = self.ffi.new("uint8_t[]", self.capacity)
        self.lengths: Any = self.ffi.new("uint32_t[]", self.max_packets)
        self.tx_stats: Any = self.ffi.new("msm_st2110_tx_stats *")

    def packetize(self, frame: bytes | bytearray | memoryview, seq: int, timestamp: int) -> int:
        """Fill the packet array from ``frame``; the number of packets."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes, expected {self.frame_bytes}")
        count = int(self.lib.msm_st2110_packetize(
            self.ffi.from_buffer(frame), *self.geometry, self.mtu, self.mode, seq & 0xFFFFFFFF,
            timestamp & 0xFFFFFFFF, self.ssrc, self.payload_type, self.buffer, self.capacity, self.lengths,
            self.max_packets))
        if count < 0:
            raise ValueError("packetizer refused the format or mtu")
        return count

    def frame_view(self, count: int) -> tuple[memoryview, list[int]]:
        """The first ``count`` packets as they lie (back to back) and their lengths: what a pacer takes."""
        lengths = [int(n) for n in self.ffi.unpack(self.lengths, count)]
        return memoryview(self.ffi.buffer(self.buffer, sum(lengths))), lengths

    def packets(self, count: int) -> list[bytes]:
        """The first ``count`` packets as bytes (tests, pacers that take a list)."""
        out, at = [], 0
        raw = self.ffi.buffer(self.buffer, self.capacity)
        for k in range(count):
            out.append(bytes(raw[at:at + self.lengths[k]]))
            at += self.lengths[k]
        return out

    def send(self, fd: int, host: str | None, port: int, count: int, spread_ns: int) -> None:
        """Send the first ``count`` packets to ``host:port`` (``None``: ``fd`` is connected), evenly over
        ``spread_ns`` (0: at once)."""
        family, packed = _packed(host) if host is not None else (0, b"\0" * 16)
        rc = self.lib.msm_st2110_send(fd, family, packed, port & 0xFFFF, self.buffer, self.lengths, count,
                                      max(0, spread_ns), 0 if _flag("MSM_NO_GSO") else 1, self.tx_stats)
        if rc < 0:
            raise OSError(self.ffi.errno, "sendmmsg failed")

    def stats(self) -> dict[str, int]:
        return {name: int(getattr(self.tx_stats, name)) for name in TX_COUNTERS}


class FrameSlot:
    """One frame to send in the frame form: the frame itself, each packet's header apart, and each
    packet's payload as a span of the frame (a packet's segments follow each other in it).

    Nothing is packed: a packet leaves as two iovecs, its header then its payload in the frame, so
    the copies a frame takes on its way out are :meth:`fill`'s (a plain copy of the whole frame,
    none when it borrows the frame) and the kernel's. The packets are :class:`Packetizer`'s, byte
    for byte. A pacer takes the slot as it is (``msm.ext.pacer.Pacer.send_frame``; :meth:`pacer_parts`).
    """

    def __init__(self, width: int, height: int, pg_bytes: int, pg_pixels: int, *, mtu: int, bpm: bool,
                 payload_type: int, ssrc: int, aligned: bool = False, equal: bool = False) -> None:
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self.geometry = (width, height, pg_bytes, pg_pixels)
        self.mtu, self.payload_type, self.ssrc = mtu, payload_type, ssrc & 0xFFFFFFFF
        stride = width // pg_pixels * pg_bytes
        self.frame_bytes = stride * height
        share = equal_share(stride, pg_bytes, mtu) if equal and not bpm else 0
        self.mode = 1 if bpm else 3 if share else 2 if aligned else 0
        data = min(mtu - 12 - 2 - 6, 1260 if bpm else mtu) // pg_bytes * pg_bytes
        split = _line_split(stride, pg_bytes, mtu - 12 - 2 - 6) if aligned and not bpm and not share else 0
        self.max_packets = (-(-self.frame_bytes // share) if share else split * height if split
                            else max(1, self.frame_bytes // max(1, data) + height + 1))
        # A header: RTP (12), extended sequence number (2), a segment header (6) per line the packet
        # touches: one with line slices, two equal packets, else at most its data over a line and one
        # more (8-byte aligned).
        segments = 1 if split else 2 if share else min(64, max(1, mtu - 20) // max(1, stride) + 2)
        self.head_stride = (14 + 6 * segments + 7) // 8 * 8
        self.heads: Any = self.ffi.new("uint8_t[]", self.head_stride * self.max_packets)
        self.head_lens: Any = self.ffi.new("uint32_t[]", self.max_packets)
        self.pay_offs: Any = self.ffi.new("uint32_t[]", self.max_packets)
        self.pay_lens: Any = self.ffi.new("uint32_t[]", self.max_packets)
        self._own: bytearray | None = None   # the slot's own copy of a frame, made on first need
        self.frame: Any = memoryview(b"")      # what is sent: the own copy, or a borrowed frame
        self._frame_ptr: Any = self.ffi.NULL
        self.count = 0
        self.hurry = False
        self.tx_stats: Any = self.ffi.new("msm_st2110_tx_stats *")

    def fill(self, frame: bytes | bytearray | memoryview, seq: int, timestamp: int, *, borrow: bool = False) -> int:
        """Copy ``frame`` in (``borrow``: send from ``frame`` itself, which its owner leaves unchanged
        until :meth:`release`) and write its packets' headers; the number of packets."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes, expected {self.frame_bytes}")
        if borrow:
            self.frame = memoryview(frame)
        else:
            if self._own is None:
                self._own = bytearray(self.frame_bytes)
            self._own[:] = frame
            self.frame = memoryview(self._own)
        self._frame_ptr = self.ffi.from_buffer(self.frame)
        count = int(self.lib.msm_st2110_headers(
            *self.geometry, self.mtu, self.mode, seq & 0xFFFFFFFF, timestamp & 0xFFFFFFFF, self.ssrc,
            self.payload_type, self.heads, self.head_stride, self.max_packets, self.head_lens, self.pay_offs,
            self.pay_lens))
        if count < 0:
            raise ValueError("packetizer refused the format or mtu")
        self.count = count
        return count

    def release(self) -> None:
        """Let go of a borrowed frame (after it was sent)."""
        self.frame, self._frame_ptr = memoryview(b""), self.ffi.NULL

    def pacer_parts(self) -> tuple[memoryview, int, memoryview, memoryview, memoryview, memoryview, int, bool]:
        """What ``msm_pacer_send_parts`` takes: headers, their stride and sizes, the frame, the spans, the
        count, and :attr:`hurry` (the sender is frames behind: this one goes at once)."""
        n = self.count
        return (memoryview(self.ffi.buffer(self.heads, self.head_stride * n)), self.head_stride,
                memoryview(self.ffi.buffer(self.head_lens, 4 * n)), self.frame,
                memoryview(self.ffi.buffer(self.pay_offs, 4 * n)), memoryview(self.ffi.buffer(self.pay_lens, 4 * n)),
                n, self.hurry)

    def packets(self) -> list[bytes]:
        """The packets as bytes (tests)."""
        heads = self.ffi.buffer(self.heads, self.head_stride * self.count)
        out = []
        for k in range(self.count):
            at, off = k * self.head_stride, self.pay_offs[k]
            out.append(bytes(heads[at:at + self.head_lens[k]]) + bytes(self.frame[off:off + self.pay_lens[k]]))
        return out

    def send(self, fd: int, host: str | None, port: int, spread_ns: int) -> None:
        """Send the packets to ``host:port`` (``None``: ``fd`` is connected), evenly over ``spread_ns`` (0: at once)."""
        family, packed = _packed(host) if host is not None else (0, b"\0" * 16)
        rc = self.lib.msm_st2110_send_frame(fd, family, packed, port & 0xFFFF, self.heads, self.head_stride,
                                            self.head_lens, self._frame_ptr, self.pay_offs, self.pay_lens,
                                            self.count, max(0, spread_ns), 0 if _flag("MSM_NO_GSO") else 1,
                                            self.tx_stats)
        if rc < 0:
            raise OSError(self.ffi.errno, "sendmmsg failed")

    def stats(self) -> dict[str, int]:
        return {name: int(getattr(self.tx_stats, name)) for name in TX_COUNTERS}


def packetize(frame: bytes, width: int, height: int, pg_bytes: int, pg_pixels: int, *, mtu: int, bpm: bool,
              seq: int, timestamp: int, ssrc: int, payload_type: int, aligned: bool = False) -> list[bytes]:
    """One frame's packets as a list (tests and the twin comparison)."""
    p = Packetizer(width, height, pg_bytes, pg_pixels, mtu=mtu, bpm=bpm, payload_type=payload_type, ssrc=ssrc,
                   aligned=aligned)
    return p.packets(p.packetize(frame, seq, timestamp))

