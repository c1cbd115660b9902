"""SMPTE 2022-1 FEC in pure Python: the twin of ``msm.ext.fec`` (ext/fec.c), packet for packet.

Row and column XOR over an L x D matrix of media packets (RFC 2733 header with the 2022-1
extension: E=1, type 0, offset/NA telling the matrix). What is protected: everything after a
media packet's 12-byte fixed header plus its P, X, CC, M bits, payload type and timestamp; for
packets without CSRCs, header extension or padding this is what GStreamer's rtpst2022-1-fecenc
and fecdec compute, byte for byte. Both twins must stay identical: tests/unit/test_fec.py runs
them on the same random streams and compares every packet and counter.

Bounded state: an encoder holds L + 1 sums of at most ``max_packet`` bytes; a decoder holds
three rings (media, row FEC, column FEC) of W slots, W the power of two at or above 3 * L * D:
the matrix being received, the previous one whose column FEC is still arriving, and one more
for reordering. A recovered packet is queued until :meth:`FecDecoder.recovered` takes it (the
queue is a ring of W: recoveries are distinct packets of the window).
"""

from __future__ import annotations

import struct

from msm.sdk.errors import ConfigError

__all__ = ["FEC_HEADER", "FecDecoder", "FecEncoder", "Packet", "window_for"]

Packet = bytes | bytearray | memoryview

RTP_HEADER = 12
FEC_HEADER = 16
MAX_COLUMNS = 20
MAX_ROWS = 20
MAX_PACKET = 9000


def _xor(a: bytes, b: bytes) -> bytes:
    """``a`` XOR ``b`` over ``len(a)`` bytes, ``b`` zero-extended or cut."""
    n = len(a)
    b = b[:n].ljust(n, b"\0")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def _extend(near: int, seq: int) -> int:
    delta = (seq - near) & 0xFFFF
    return near + (delta - 0x10000 if delta >= 0x8000 else delta)


def window_for(columns: int, rows: int) -> int:
    """The decoder's window in packets (a power of two, at least three matrices)."""
    w = 16
    while w < 3 * columns * max(rows, 1):
        w <<= 1
    return w


def _check(columns: int, rows: int, max_packet: int) -> None:
    if not 1 <= columns <= MAX_COLUMNS or not 0 <= rows <= MAX_ROWS:
        raise ConfigError(f"FEC matrix {columns}x{rows}: columns 1..{MAX_COLUMNS}, rows 0..{MAX_ROWS} (0: rows only)")
    if not RTP_HEADER <= max_packet <= MAX_PACKET:
        raise ConfigError(f"max_packet {max_packet}: {RTP_HEADER}..{MAX_PACKET}")


class _Sum:
    """One row's or column's XOR so far."""

    __slots__ = ("b0", "b1", "length", "n", "snbase", "sum", "ts")

    def __init__(self) -> None:
        self.n = 0
        self.snbase = self.length = self.b0 = self.b1 = self.ts = 0
        self.sum = b""

    def add(self, pkt: bytes) -> None:
        body = pkt[RTP_HEADER:]
        if self.n == 0:
            self.snbase = int.from_bytes(pkt[2:4], "big")
            self.length, self.b0, self.b1 = len(body), pkt[0], pkt[1]
            self.ts = int.from_bytes(pkt[4:8], "big")
            self.sum = bytes(body)
        else:
            if len(body) > len(self.sum):
                self.sum = self.sum.ljust(len(body), b"\0")
            self.length ^= len(body)
            self.b0 ^= pkt[0]
            self.b1 ^= pkt[1]
            self.ts ^= int.from_bytes(pkt[4:8], "big")
            self.sum = _xor(self.sum, body)
        self.n += 1


class FecEncoder:
    """Media packets in (consecutive sequence numbers), FEC packets out: ``[(kind, packet)]``,
    kind 1 a row packet (2022-1 sends them on port + 4), 0 a column packet (port + 2).

    A gap in sequence numbers (or a bad packet) restarts the matrix with the next packet;
    a column packet leaves with the media packet that completes its column (the matrix's
    last row), so the L column packets are spread over that row.
    """

    def __init__(self, columns: int, rows: int, *, payload_type: int = 96, ssrc: int = 0,
                 max_packet: int = 1500) -> None:
        _check(columns, rows, max_packet)
        self.columns, self.rows, self.max_packet = columns, rows, max_packet
        self.payload_type, self.ssrc = payload_type & 0x7F, ssrc & 0xFFFFFFFF
        self.started, self.last_seq, self.pos = False, 0, 0
        self.row_seq = self.col_seq = 0
        self.row = _Sum()
        self.cols = [_Sum() for _ in range(columns)]
        self.counters = dict.fromkeys(("media", "fec_packets", "restarts", "bad_media"), 0)

    def _restart(self) -> None:
        self.pos = 0
        self.row.n = 0
        for col in self.cols:
            col.n = 0

    def _emit(self, acc: _Sum, row: bool, media_ts: int) -> bytes:
        if row:
            seq, self.row_seq = self.row_seq, (self.row_seq + 1) & 0xFFFF
        else:
            seq, self.col_seq = self.col_seq, (self.col_seq + 1) & 0xFFFF
        head = struct.pack("!BBHII", 0x80 | (acc.b0 & 0x3F), (acc.b1 & 0x80) | self.payload_type, seq, media_ts,
                           self.ssrc)
        fec = struct.pack("!HHB3sIBBBB", acc.snbase, acc.length & 0xFFFF, 0x80 | (acc.b1 & 0x7F), b"\0\0\0", acc.ts,
                          0x40 if row else 0, 1 if row else self.columns, self.columns if row else self.rows, 0)
        acc.n = 0
        self.counters["fec_packets"] += 1
        return head + fec + acc.sum

    def push(self, packet: Packet) -> list[tuple[int, bytes]]:
        """Protect one media packet; the FEC packets it completed (none for bad input, counted)."""
        packet = bytes(packet)
        if len(packet) < RTP_HEADER or packet[0] >> 6 != 2 or len(packet) > self.max_packet:
            self.counters["bad_media"] += 1
            self.started = False
            return []
        seq = int.from_bytes(packet[2:4], "big")
        if not self.started or seq != (self.last_seq + 1) & 0xFFFF:
            if self.started:
                self.counters["restarts"] += 1
            self._restart()
        self.started, self.last_seq = True, seq
        self.counters["media"] += 1
        ts = int.from_bytes(packet[4:8], "big")
        out = []
        self.row.add(packet)
        if self.row.n == self.columns:
            out.append((1, self._emit(self.row, True, ts)))
        if self.rows:
            col = self.cols[self.pos % self.columns]
            col.add(packet)
            if col.n == self.rows:
                out.append((0, self._emit(col, False, ts)))
        self.pos = (self.pos + 1) % (self.columns * max(self.rows, 1))
        return out

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


class FecDecoder:
    """Media and FEC packets in, in any order; recovered media packets out of :meth:`recovered`.

    :meth:`media` says what to do with a media packet: 0 new (forward it), 1 a copy of one
    already forwarded or recovered (drop it), 2 older than the window, -1 bad (counted).
    A packet that leaves the window neither received nor recovered counts as unrecoverable.
    """

    def __init__(self, columns: int, rows: int, *, max_packet: int = 1500) -> None:
        _check(columns, rows, max_packet)
        self.columns, self.rows, self.max_packet = columns, rows, max_packet
        self.window = window_for(columns, rows)
        self.anchored = False
        self.highest = self.first = 0
        self.ssrc = 0
        self.pending = 0
        w = self.window
        # Slot lists hold (extended sequence number or SNBase, packet); -1: empty.
        self.media_ring: list[tuple[int, bytes]] = [(-1, b"")] * w
        self.rings: dict[int, list[tuple[int, bytes]]] = {1: [(-1, b"")] * w, 0: [(-1, b"")] * w}
        self.queue: list[int] = []      # recovered, not yet taken (at most `window`)
        self.work: list[int] = []       # recovered, their FEC not yet checked
        self.counters = dict.fromkeys(("media", "fec", "recovered", "unrecoverable", "duplicates", "late", "bad_media",
                                       "bad_fec", "fec_late", "fec_duplicates"), 0)

    def _have(self, seq: int) -> bool:
        return self.media_ring[seq % self.window][0] == seq

    def _drop_fec(self, row: int, base: int) -> None:
        self.rings[row][base % self.window] = (-1, b"")
        self.pending -= 1

    def _advance(self, to: int) -> None:
        lo, hi = self.highest - self.window + 1, to - self.window
        if hi > self.highest:           # a jump past the whole window: the ones skipped never came
            self.counters["unrecoverable"] += hi - self.highest
            hi = self.highest
        for x in range(lo, hi + 1):
            if x >= self.first and not self._have(x):
                self.counters["unrecoverable"] += 1
            for kind in (1, 0) if self.rows else (1,):
                if self.rings[kind][x % self.window][0] == x:
                    self._drop_fec(kind, x)
        self.highest = to

    def _store(self, seq: int, pkt: bytes) -> None:
        if seq > self.highest:
            self._advance(seq)
        self.media_ring[seq % self.window] = (seq, pkt)

    def _recover(self, row: int, base: int, fpkt: bytes, missing: int) -> None:
        offset, count = (1, self.columns) if row else (self.columns, self.rows)
        h = fpkt[RTP_HEADER:]
        length = int.from_bytes(h[2:4], "big")
        b0, b1 = fpkt[0], (fpkt[1] & 0x80) | (h[4] & 0x7F)
        ts = int.from_bytes(h[8:12], "big")
        others = [self.media_ring[s % self.window][1] for s in range(base, base + count * offset, offset)
                  if s != missing]
        for m in others:
            length ^= len(m) - RTP_HEADER
            b0, b1 = b0 ^ m[0], b1 ^ m[1]
            ts ^= int.from_bytes(m[4:8], "big")
        self._drop_fec(row, base)
        if length > len(fpkt) - RTP_HEADER - FEC_HEADER or length + RTP_HEADER > self.max_packet:
            self.counters["bad_fec"] += 1
            return
        body = h[FEC_HEADER:FEC_HEADER + length]
        for m in others:
            body = _xor(body, m[RTP_HEADER:])
        pkt = struct.pack("!BBHII", 0x80 | (b0 & 0x3F), b1, missing & 0xFFFF, ts, self.ssrc) + body
        if missing > self.highest:
            self._advance(missing)
        self.media_ring[missing % self.window] = (missing, pkt)
        self.counters["recovered"] += 1
        if len(self.queue) == self.window:
            self.queue.pop(0)
        self.queue.append(missing)
        if len(self.work) < self.window:
            self.work.append(missing)

    def _try(self, row: int, base: int) -> None:
        offset, count = (1, self.columns) if row else (self.columns, self.rows)
        gaps, missing = 0, -1
        for s in range(base, base + count * offset, offset):
            if not self._have(s):
                gaps, missing = gaps + 1, s
                if gaps == 2:
                    return
        if gaps == 0:
            self._drop_fec(row, base)
        else:
            self._recover(row, base, self.rings[row][base % self.window][1], missing)

    def _run(self) -> None:
        while self.work and self.pending > 0:
            s = self.work.pop()
            for k in range(self.columns):
                if self.rings[1][(s - k) % self.window][0] == s - k:
                    self._try(1, s - k)
            for k in range(self.rows):
                b = s - k * self.columns
                if self.rings[0][b % self.window][0] == b:
                    self._try(0, b)
        self.work.clear()

    def _place(self, seq: int) -> int:
        if not self.anchored:
            self.anchored = True
            self.highest = (1 << 32) + seq - 1
            self.first = self.highest + 1
        return _extend(self.highest, seq)

    def media(self, packet: Packet) -> int:
        packet = bytes(packet)
        if len(packet) < RTP_HEADER or packet[0] >> 6 != 2 or len(packet) > self.max_packet:
            self.counters["bad_media"] += 1
            return -1
        seq = self._place(int.from_bytes(packet[2:4], "big"))
        if seq <= self.highest - self.window:
            self.counters["late"] += 1
            return 2
        if self._have(seq):
            self.counters["duplicates"] += 1
            return 1
        self.counters["media"] += 1
        self.ssrc = int.from_bytes(packet[8:12], "big")
        self._store(seq, bytes(packet))
        self.work = [seq]
        self._run()
        return 0

    def _valid_fec(self, pkt: bytes) -> int:
        """The FEC packet's D bit (1 row, 0 column), or -1 if it is not 2022-1 XOR FEC for this matrix."""
        if (len(pkt) < RTP_HEADER + FEC_HEADER or pkt[0] >> 6 != 2 or len(pkt) > self.max_packet + FEC_HEADER
                or not pkt[16] & 0x80 or pkt[24] & 0x38):
            return -1
        row, offset, na = (pkt[24] >> 6) & 1, pkt[25], pkt[26]
        if row and (offset != 1 or na != self.columns):
            return -1
        if not row and (self.rows == 0 or offset != self.columns or na != self.rows):
            return -1
        return row

    def fec(self, packet: Packet) -> int:
        """A row or column FEC packet (its D bit tells): 0 taken, 1 a copy, 2 outside the window, -1 bad."""
        packet = bytes(packet)
        row = self._valid_fec(packet)
        if row < 0:
            self.counters["bad_fec"] += 1
            return -1
        if not self.anchored:
            self.counters["fec_late"] += 1
            return 2
        offset, na = packet[25], packet[26]
        base = _extend(self.highest, int.from_bytes(packet[12:14], "big"))
        if base <= self.highest - self.window or base + (na - 1) * offset >= self.highest + self.window:
            self.counters["fec_late"] += 1
            return 2
        ring = self.rings[row]
        held = ring[base % self.window][0]
        if held == base:
            self.counters["fec_duplicates"] += 1
            return 1
        if held != -1:
            self.pending -= 1
        self.counters["fec"] += 1
        ring[base % self.window] = (base, bytes(packet))
        self.pending += 1
        self.work = []
        self._try(row, base)
        self._run()
        return 0

    def recovered(self) -> list[bytes]:
        """The packets recovered since the last call, in the order they were recovered."""
        out = []
        for seq in self.queue:
            held, pkt = self.media_ring[seq % self.window]
            if held == seq:
                out.append(pkt)
        self.queue.clear()
        return out

    def stats(self) -> dict[str, int]:
        return dict(self.counters) | {"window": self.window}
