"""SMPTE 2022-7 seamless protection: the same RTP stream over two paths, the first copy of each
packet kept. The twin of ``msm.ext.fec.Dedup`` (ext/fec.c), decision for decision.

Bounded: one sequence number per slot of a window of packets (a power of two, 16..32768;
2022-7 receivers size it from the paths' skew: at 10,000 packets/s, 1024 packets is 100 ms).
"""

from __future__ import annotations

from msm.sdk.errors import ConfigError

__all__ = ["Dedup"]


def _extend(near: int, seq: int) -> int:
    delta = (seq - near) & 0xFFFF
    return near + (delta - 0x10000 if delta >= 0x8000 else delta)


class Dedup:
    """:meth:`push` of a sequence number from either path: 0 the first copy (forward it), 1 a copy
    (drop it), 2 older than the window (drop it: the other path delivered it, or it is too late)."""

    def __init__(self, window: int = 1024) -> None:
        if not 16 <= window <= 32768:
            raise ConfigError(f"2022-7 window {window}: 16..32768 packets")
        w = 16
        while w < window:
            w <<= 1
        self.window = w
        self.anchored = False
        self.highest = 0
        self.seen = [-1] * w
        self.counters = {"first": 0, "duplicates": 0, "late": 0}

    def push(self, seq: int) -> int:
        seq &= 0xFFFF
        if not self.anchored:
            self.anchored, self.highest = True, (1 << 32) + seq
        ext = _extend(self.highest, seq)
        if ext <= self.highest - self.window:
            self.counters["late"] += 1
            return 2
        if self.seen[ext % self.window] == ext:
            self.counters["duplicates"] += 1
            return 1
        self.seen[ext % self.window] = ext
        self.highest = max(self.highest, ext)
        self.counters["first"] += 1
        return 0

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
