"""The loss repair codecs' seam: thin handles over ``msm.ext._fec`` (C, cffi API mode).

SMPTE 2022-1 FEC (row and column XOR, RFC 2733 header with the 2022-1 extension) and
SMPTE 2022-7 de-duplication, for the node-to-node leg. :func:`load` returns the compiled
module or raises :class:`NativeUnavailable` saying why; callers then use the pure-Python
twin (``msm.rtp_proxy.repair``), which behaves identically (same packets out, same
counters). Plain integers and bytes only here (``ext`` imports no other component).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from msm.ext import NativeModule, NativeUnavailable

__all__ = ["DEC_COUNTERS", "DEDUP_COUNTERS", "ENC_COUNTERS", "Dedup", "FecDecoder", "FecEncoder", "NativeUnavailable",
           "PacketBatch", "load"]

MAX_COLUMNS = 20
MAX_ROWS = 20
MAX_PACKET = 9000
FEC_HEADER = 16
ENC_COUNTERS = ("media", "fec_packets", "restarts", "bad_media")
DEC_COUNTERS = ("media", "fec", "recovered", "unrecoverable", "duplicates", "late", "bad_media", "bad_fec", "fec_late",
                "fec_duplicates")
DEDUP_COUNTERS = ("first", "duplicates", "late")

_native = NativeModule("_fec", "run python ext/build_fec.py")


def load() -> ModuleType:
    """The compiled ``msm.ext._fec`` module, or :class:`NativeUnavailable`."""
    return _native.load()


Packet = bytes | bytearray | memoryview


def _check(columns: int, rows: int, max_packet: int) -> None:
    if not 1 <= columns <= MAX_COLUMNS or not 0 <= rows <= MAX_ROWS:
        raise ValueError(f"FEC matrix {columns}x{rows}: columns 1..{MAX_COLUMNS}, rows 0..{MAX_ROWS} (0: rows only)")
    if not 12 <= max_packet <= MAX_PACKET:
        raise ValueError(f"max_packet {max_packet}: 12..{MAX_PACKET}")


class PacketBatch:
    """Packets as a receive loop holds them: one buffer, ``stride`` bytes apart, their lengths
    (and for a decoder, which are FEC). The batch calls take it as it is: one C call per batch."""

    def __init__(self, packets: list[bytes], *, stride: int = 0, is_fec: list[bool] | None = None) -> None:
        mod = load()
        self.ffi: Any = mod.ffi
        self.count = len(packets)
        self.stride = stride or max((len(p) for p in packets), default=1)
        self.buffer: Any = self.ffi.new("uint8_t[]", max(1, self.stride * self.count))
        self.lens: Any = self.ffi.new("uint32_t[]", max(1, self.count))
        self.is_fec: Any = self.ffi.new("uint8_t[]", max(1, self.count))
        raw = self.ffi.buffer(self.buffer)
        for k, p in enumerate(packets):
            if len(p) > self.stride:
                raise ValueError(f"packet of {len(p)} bytes in a batch of stride {self.stride}")
            raw[k * self.stride:k * self.stride + len(p)] = p
            self.lens[k] = len(p)
            self.is_fec[k] = 1 if is_fec and is_fec[k] else 0


class FecEncoder:
    """Media packets in (consecutive sequence numbers), FEC packets out: ``[(kind, packet)]``,
    kind 1 a row packet (2022-1 sends them on port + 4), 0 a column packet (port + 2)."""

    def __init__(self, columns: int, rows: int, *, payload_type: int = 96, ssrc: int = 0,
                 max_packet: int = 1500) -> None:
        _check(columns, rows, max_packet)
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        ptr = self.lib.msm_fec_enc_new(columns, rows, max_packet, payload_type & 0x7F, ssrc & 0xFFFFFFFF)
        if ptr == self.ffi.NULL:
            raise MemoryError("FEC encoder allocation failed")
        self._ptr: Any = self.ffi.gc(ptr, self.lib.msm_fec_enc_free)
        self.slot = max_packet + FEC_HEADER
        self._out: Any = self.ffi.new("uint8_t[]", 2 * self.slot)
        self._lens: Any = self.ffi.new("uint32_t[2]")
        self._kinds: Any = self.ffi.new("uint8_t[2]")
        self._stats: Any = self.ffi.new("msm_fec_enc_stats *")
        self._batch_max = 0
        self._batch_out: Any = None
        self._batch_lens: Any = None
        self._batch_kinds: Any = None

    def _c(self, packet: Packet) -> Any:
        return packet if type(packet) is bytes else self.ffi.from_buffer(packet)

    def push(self, packet: Packet) -> list[tuple[int, bytes]]:
        """Protect one media packet; the FEC packets it completed (none for bad input, counted)."""
        n = self.lib.msm_fec_enc_push(self._ptr, self._c(packet), len(packet), self._out, self.slot, self._lens,
                                      self._kinds)
        if n <= 0:
            return []
        raw = self.ffi.buffer(self._out, 2 * self.slot)
        return [(int(self._kinds[k]), bytes(raw[k * self.slot:k * self.slot + self._lens[k]])) for k in range(n)]

    def push_batch(self, batch: PacketBatch) -> int:
        """Protect a batch in one C call; the number of FEC packets (:meth:`batch_output` gives them)."""
        if batch.count > self._batch_max:
            self._batch_max = batch.count
            self._batch_out = self.ffi.new("uint8_t[]", 2 * batch.count * self.slot)
            self._batch_lens = self.ffi.new("uint32_t[]", 2 * batch.count)
            self._batch_kinds = self.ffi.new("uint8_t[]", 2 * batch.count)
        return int(self.lib.msm_fec_enc_push_batch(self._ptr, batch.buffer, batch.stride, batch.lens, batch.count,
                                                   self._batch_out, self.slot, self._batch_lens, self._batch_kinds,
                                                   2 * self._batch_max))

    def batch_output(self, n: int) -> list[tuple[int, bytes]]:
        """The ``n`` FEC packets of the last :meth:`push_batch`."""
        raw = self.ffi.buffer(self._batch_out, n * self.slot)
        return [(int(self._batch_kinds[k]), bytes(raw[k * self.slot:k * self.slot + self._batch_lens[k]]))
                for k in range(n)]

    def stats(self) -> dict[str, int]:
        self.lib.msm_fec_enc_stats_get(self._ptr, self._stats)
        return {name: int(getattr(self._stats, name)) for name in ENC_COUNTERS}


class FecDecoder:
    """Media and FEC packets in, in any order; recovered media packets out of :meth:`recovered`.

    :meth:`media` says what to do with a media packet: 0 new (forward it), 1 a copy of one
    already forwarded or recovered (drop it), 2 older than the window, -1 bad (counted).
    """

    def __init__(self, columns: int, rows: int, *, max_packet: int = 1500) -> None:
        _check(columns, rows, max_packet)
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        ptr = self.lib.msm_fec_dec_new(columns, rows, max_packet)
        if ptr == self.ffi.NULL:
            raise MemoryError("FEC decoder allocation failed")
        self._ptr: Any = self.ffi.gc(ptr, self.lib.msm_fec_dec_free)
        self.window = int(self.lib.msm_fec_dec_window(self._ptr))
        self.max_packet = max_packet
        self._out: Any = self.ffi.new("uint8_t[]", max_packet)
        self._stats: Any = self.ffi.new("msm_fec_dec_stats *")

    def _c(self, packet: Packet) -> Any:
        return packet if type(packet) is bytes else self.ffi.from_buffer(packet)

    def media(self, packet: Packet) -> int:
        return int(self.lib.msm_fec_dec_media(self._ptr, self._c(packet), len(packet)))

    def fec(self, packet: Packet) -> int:
        """A row or column FEC packet (its D bit tells): 0 taken, 1 a copy, 2 outside the window, -1 bad."""
        return int(self.lib.msm_fec_dec_fec(self._ptr, self._c(packet), len(packet)))

    def push_batch(self, batch: PacketBatch) -> list[int]:
        """Media and FEC packets in one C call (``batch.is_fec`` tells which); each one's code.

        Take :meth:`recovered` after each batch: a recovered packet is held only while it is in the
        window, so a batch longer than the window may recover packets it then pushes out.
        """
        codes = self.ffi.new("int[]", max(1, batch.count))
        self.lib.msm_fec_dec_push_batch(self._ptr, batch.buffer, batch.stride, batch.lens, batch.is_fec, batch.count,
                                        codes)
        return [int(c) for c in self.ffi.unpack(codes, batch.count)]

    def recovered(self) -> list[bytes]:
        """The packets recovered since the last call, in the order they were recovered."""
        out = []
        while (n := int(self.lib.msm_fec_dec_pop(self._ptr, self._out, self.max_packet))) > 0:
            out.append(bytes(self.ffi.buffer(self._out, n)))
        return out

    def stats(self) -> dict[str, int]:
        self.lib.msm_fec_dec_stats_get(self._ptr, self._stats)
        return {name: int(getattr(self._stats, name)) for name in DEC_COUNTERS} | {"window": self.window}


class Dedup:
    """SMPTE 2022-7: the same packets over two paths; :meth:`push` of a sequence number says 0 for
    the first copy (forward it), 1 for a copy and 2 for older than the window (drop both)."""

    def __init__(self, window: int = 1024) -> None:
        if not 16 <= window <= 32768:
            raise ValueError(f"2022-7 window {window}: 16..32768 packets")
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        ptr = self.lib.msm_dedup_new(window)
        if ptr == self.ffi.NULL:
            raise MemoryError("2022-7 de-duplicator allocation failed")
        self._ptr: Any = self.ffi.gc(ptr, self.lib.msm_dedup_free)
        self._stats: Any = self.ffi.new("msm_dedup_stats *")

    def push(self, seq: int) -> int:
        return int(self.lib.msm_dedup_push(self._ptr, seq & 0xFFFF))

    def stats(self) -> dict[str, int]:
        self.lib.msm_dedup_stats_get(self._ptr, self._stats)
        return {name: int(getattr(self._stats, name)) for name in DEDUP_COUNTERS}
