"""The ST 2110-21 pacer's seam: a thin handle over ``msm.ext._pacer`` (C, cffi API mode).

:func:`load` returns the compiled module or raises :class:`NativeUnavailable`
saying why. :meth:`Pacer.send_frame` blocks for about one frame period in C
with the GIL released, sending each packet at its time on the ST 2110-21 read
schedule (pacer.c says how). Plain numbers only here (``ext`` imports no other
component); ``msm.rtp_proxy.media.pacing`` computes the same schedule exactly.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any

from msm.ext import NativeModule, NativeUnavailable

__all__ = ["FrameStats", "NativeUnavailable", "Pacer", "load"]

#: Packets per sendmmsg at most, per mode: back-to-back bursts stay well under
#: ST 2110-21's CMAX (at least 4 narrow, 16 wide).
MAX_GROUP = {"narrow": 2, "wide": 12, "linear": 2}
#: With UDP GSO, packets per train: a train leaves as one burst when its first packet is
#: due (the others up to a TRS early, so the narrow lead shrinks by one to keep VRX within
#: VRX_FULL); narrow's is half its CMAX, so two trains that jitter together still fit
#: (trains of 4 measured Cinst 7 on loopback). Wide's leave by the bucket (pacer.c's bucket
#: mode), which never holds more than CMAX less one (15 at 1080p): trains of 12 leave it
#: 3 packets (24 us at 1080p30) still draining when the next train goes, more than the
#: ~20 us a train's send takes on loopback (see pacer.c), so sends never wait for one another.
GSO_GROUP = {"narrow": 2, "wide": 12, "linear": 2}
#: Packets sent ahead of the read schedule: VRX then holds that margin (narrow
#: VRX_FULL is at least 8; wide 720, where the first packet must still follow the
#: frame's epoch: at most 80% of TROFFSET ahead).
NARROW_LEAD = 6
WIDE_LEAD = 360
#: When late, a group follows the previous one after at least this share (per mille) of its
#: packets' TRS: faster than the schedule (to catch up) but slower than the network
#: compatibility model's drain (TRS / 1.1), so the bucket does not fill meanwhile.
CATCHUP_PERMILLE = 950
#: Busy-wait this long before a due time rather than trust a timer to wake on time
#: (narrow and linear: their receiver's margin is a few TRS).
SPIN_NS = 20_000
#: Wide (bucket mode): a wait shorter than this is spun, a longer one slept; a sleep ends up
#: to WAKE_EARLY_MAX_NS early (the timer's usual lateness, learnt) and spins the rest.
BUCKET_SPIN_NS = 5_000
WAKE_EARLY_MAX_NS = 100_000
#: Wide (bucket mode): packets a train may run ahead of the read schedule at most: VRX
#: stays under half of VRX_FULL (720 at 1080p), as WIDE_LEAD.
WIDE_AHEAD = 360
#: ... and this long before a frame's first packet: the thread slept through the vertical
#: blanking, and a long sleep wakes later on a busy machine (0.6% of a 30 Hz frame).
FRAME_SPIN_NS = 200_000
#: A frame its sender is behind with goes this many times faster than the model's drain: the frame
#: in under a third of its period, so a queue of frames drains.
HURRY = 4
#: Packets due within this of now leave in the same group.
TOLERANCE_NS = 1_000
#: A frame has at most this many packets (8K 4:4:4 12-bit at 1400 bytes is about 62k).
MAX_PACKETS = 1 << 17
CLOCK_TAI = 11
CLOCK_REALTIME = 0

_native = NativeModule("_pacer", "run python ext/build_pacer.py")


def load() -> ModuleType:
    """The compiled ``msm.ext._pacer`` module, or :class:`NativeUnavailable`."""
    return _native.load()


@dataclass(frozen=True, slots=True)
class FrameStats:
    """How one frame went out (times in ns of the pacer's clock)."""

    frame: int
    rtp_timestamp: int
    packets_sent: int
    send_errors: int
    groups: int
    gso_sends: int
    sleeps: int
    late_packets: int
    first_due_ns: int
    max_late_ns: int
    mean_late_ns: float
    cpu_ns: int
    send_ns: int
    skipped_frames: int


def _lines(height: int, mode: str) -> tuple[int, int, int]:
    """(total, active, TRODEFAULT) lines: 1125-line systems from 1080 up, else 750-line; linear: no gap."""
    total, active, tro = (1125, 1080, 43) if height >= 1080 else (750, 720, 28)
    return total, (total if mode == "linear" else active), tro


def _cmax(mode: str, period: Fraction, packets: int, active: int, total: int) -> int:
    """ST 2110-21's CMAX (as msm.rtp_proxy.media.pacing.limits): wide, else narrow."""
    tframe = period / 10**9
    if mode == "wide":
        return max(16, int(packets / (21600 * tframe)))
    return max(4, int(packets / (43200 * Fraction(active, total) * tframe)))


def _vrx_full(mode: str, period: Fraction, packets: int) -> int:
    tframe = period / 10**9
    return max(720, int(packets / (300 * tframe))) if mode == "wide" else max(8, int(packets / (27000 * tframe)))


def _dest(dest: tuple[str, int]) -> tuple[int, bytes, int]:
    host, port = dest
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, TypeError):
        raise ValueError(f"the pacer's destination must be an IP address and port, not {dest!r}") from None
    fam, _t, _p, _n, sockaddr = infos[0]
    if fam == socket.AF_INET:
        return fam, ipaddress.IPv4Address(sockaddr[0]).packed, 0
    return fam, ipaddress.IPv6Address(str(sockaddr[0]).split("%")[0]).packed, int(sockaddr[-1])


class Pacer:
    """Sends frames of ``packets_per_frame`` RTP packets from ``fd`` to ``dest``, paced per ST 2110-21.

    ``frame_period_ns`` may be a :class:`~fractions.Fraction` (``Fraction(1001 * 10**9, 30000)``
    for 29.97 Hz) so the grid never drifts. ``mode``: ``narrow`` (gapped, type N),
    ``wide`` (gapped, larger bursts and margin, type W) or ``linear`` (type NL).
    ``clock``: ``tai`` (ST 2110's epoch; the same as ``realtime`` where the kernel's
    TAI offset is unset) or ``realtime``. ``gso``: each group leaves as one UDP GSO train
    (cheaper per packet; on loopback a capture sees the train whole, which
    :mod:`msm.rtp_proxy.media.pcap` cuts back into packets).
    """

    def __init__(self, fd: int, dest: tuple[str, int], frame_period_ns: int | Fraction, packets_per_frame: int,
                 mode: str = "narrow", *, height: int = 1080, clock: str = "tai", patch_timestamp: bool = True,
                 lead: int | None = None, max_group: int | None = None, tolerance_ns: int = TOLERANCE_NS,
                 gso: bool = False, bucket: bool | None = None) -> None:
        if mode not in MAX_GROUP:
            raise ValueError(f"pacing mode must be narrow, wide or linear, not {mode!r}")
        if not 0 < packets_per_frame <= MAX_PACKETS:
            raise ValueError(f"packets per frame must be 1..{MAX_PACKETS}, not {packets_per_frame}")
        if clock not in ("tai", "realtime"):
            raise ValueError(f"the pacer's clock must be tai or realtime, not {clock!r}")
        period = Fraction(frame_period_ns)
        if period <= 0:
            raise ValueError(f"the frame period must be positive, not {frame_period_ns}")
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        total, active, tro = _lines(height, mode)
        group = (GSO_GROUP if gso else MAX_GROUP)[mode] if max_group is None else max_group
        default_lead = NARROW_LEAD - (group - 1 if gso else 0) if mode != "wide" else max(
            NARROW_LEAD, min(WIDE_LEAD, 4 * tro * packets_per_frame // (5 * active)))
        cfg = self.ffi.new("msm_pacer_config *")
        cfg.period_num, cfg.period_den = period.numerator, period.denominator
        cfg.packets, cfg.total_lines, cfg.active_lines, cfg.tro_lines = packets_per_frame, total, active, tro
        cfg.lead = default_lead if lead is None else lead
        cfg.max_group = group
        cfg.gso = 1 if gso else 0
        trs = period * active / total / packets_per_frame
        cfg.group_window_ns = int(trs * (group - 1)) + max(0, tolerance_ns) if gso else max(0, tolerance_ns)
        cfg.catchup_permille = CATCHUP_PERMILLE
        bucket = mode == "wide" if bucket is None else bucket
        cfg.spin_ns = BUCKET_SPIN_NS if bucket else SPIN_NS
        cfg.frame_spin_ns, cfg.tolerance_ns = FRAME_SPIN_NS, max(0, tolerance_ns)
        cfg.clock_id = {"tai": CLOCK_TAI, "realtime": CLOCK_REALTIME}[clock]
        cfg.patch_timestamp = 1 if patch_timestamp else 0
        fam, packed, scope = _dest(dest)
        ptr = self.lib.msm_pacer_new(fd, fam, packed, dest[1] & 0xFFFF, scope, cfg)
        if ptr == self.ffi.NULL:
            raise ValueError(f"the pacer refused its settings (errno {self.ffi.errno})")
        self._ptr: Any = self.ffi.gc(ptr, self.lib.msm_pacer_free)
        if bucket:
            cmax = _cmax(mode, period, packets_per_frame, active, total) - 1
            ahead = max(cfg.lead, min(WIDE_AHEAD, _vrx_full(mode, period, packets_per_frame) // 2))
            if self.lib.msm_pacer_set_bucket(self._ptr, cmax, ahead, WAKE_EARLY_MAX_NS):
                raise ValueError(f"the pacer's bucket mode needs groups of at most {cmax} and a lead of at most "
                                 f"{ahead}, not {group} and {cfg.lead}")
        self._out = self.ffi.new("msm_pacer_stats *")
        self.mode, self.packets_per_frame, self.frame_period_ns = mode, packets_per_frame, period
        self.clock_id = cfg.clock_id

    def packet_time(self, frame: int, index: int) -> int:
        return int(self.lib.msm_pacer_packet_time(self._ptr, frame, index))

    def frame_of(self, t_ns: int) -> int:
        return int(self.lib.msm_pacer_frame_of(self._ptr, t_ns))

    def rtp_timestamp(self, frame: int) -> int:
        return int(self.lib.msm_pacer_rtp_timestamp(self._ptr, frame))

    def now(self) -> int:
        return time.clock_gettime_ns(self.clock_id)

    def send_frame(self, buf: Any, lengths: Sequence[int] | None = None, frame: int | None = None) -> FrameStats:
        """Send one frame: ``buf`` holds the packets back to back, ``lengths`` their sizes.

        ``buf`` may also be a sequence of packets (``lengths`` then ``None``): they are
        joined first. ``frame``: the grid frame to send as (``None``: the next one still
        ahead). Each packet's RTP timestamp becomes the frame's (unless
        ``patch_timestamp=False``). A frame of another packet count than the pacer's
        is spread over the same active period (its TRS follows its count).
        """
        parts = getattr(buf, "pacer_parts", None)
        if parts is not None and lengths is None:
            return self._send_parts(parts(), frame)
        if lengths is None:
            packets = list(buf)
            lengths, buf = [len(p) for p in packets], b"".join(packets)
        n = len(lengths)
        if not 0 < n <= MAX_PACKETS:
            raise ValueError(f"a frame has 1..{MAX_PACKETS} packets, not {n}")
        data = self.ffi.from_buffer(buf)
        lens = self.ffi.new("uint32_t[]", list(lengths))
        if self.lib.msm_pacer_send_frame(self._ptr, data, len(data), lens, n, -1 if frame is None else frame,
                                         self._out):
            raise ValueError("the packets' lengths do not fit the buffer (or one is shorter than an RTP header)")
        return self._stats(n)

    def _send_parts(self, parts: tuple[Any, int, Any, Any, Any, Any, int, bool], frame: int | None) -> FrameStats:
        """The frame form (``msm.ext.st2110.FrameSlot``): headers apart, payloads as spans of the frame.

        A slot marked ``hurry`` (its sender is frames behind) goes at once, HURRY times the
        model's rate, and comes back with every packet a frame period late (non-compliant).
        """
        heads, stride, head_lens, data, offs, lens, n, hurry = parts
        if not 0 < n <= MAX_PACKETS:
            raise ValueError(f"a frame has 1..{MAX_PACKETS} packets, not {n}")
        if len(heads) < stride * n or min(len(head_lens), len(offs), len(lens)) < 4 * n:
            raise ValueError(f"the frame form's arrays hold fewer than {n} packets")
        ffi = self.ffi
        if self.lib.msm_pacer_send_parts(
                self._ptr, ffi.from_buffer("unsigned char[]", heads, require_writable=True), stride,
                ffi.from_buffer("uint32_t[]", head_lens), ffi.from_buffer("unsigned char[]", data), len(data),
                ffi.from_buffer("uint32_t[]", offs), ffi.from_buffer("uint32_t[]", lens), n,
                -1 if frame is None else frame, HURRY if hurry else 0, self._out):
            raise ValueError("a packet's header or payload does not fit its buffer")
        return self._stats(n)

    def _stats(self, n: int) -> FrameStats:
        out = self._out
        return FrameStats(frame=int(out.frame), rtp_timestamp=int(out.rtp_timestamp),
                          packets_sent=int(out.packets_sent), send_errors=int(out.send_errors),
                          groups=int(out.groups), gso_sends=int(out.gso_sends), sleeps=int(out.sleeps),
                          late_packets=int(out.late_packets),
                          first_due_ns=int(out.first_due_ns), max_late_ns=int(out.max_late_ns),
                          mean_late_ns=int(out.sum_late_ns) / max(1, n), cpu_ns=int(out.cpu_ns),
                          send_ns=int(out.send_ns),
                          skipped_frames=int(out.skipped_frames))
