"""The receiver side of ST 2110-21: how well a video stream keeps its sender's timing.

Fed packets in arrival order (arrival time in ns of the sender's clock, RTP
sequence number, timestamp, marker, length), :class:`Analyser` measures each
complete frame against ST 2110-21's models (:mod:`.pacing` has the formulas):

- ``Cinst`` ("Network Compatibility Model"): the packets in a bucket that every
  arrival fills by one and that drains one packet per ``TDRAIN = TRS / 1.1``
  (whole packets: a drain starts when a packet enters the empty bucket); the
  value after each arrival, at most ``CMAX``;
- ``VRX`` ("Virtual Receiver Buffer Model"): the packets of frame ``N`` received
  and not yet read when packet ``k`` arrives, the reader taking packet ``j`` out
  during ``[TPR0 + j*TRS, TPR0 + (j+1)*TRS)``, ``TPR0 = N*TFRAME + TROFFSET``:
  ``VRX = k + 1 - floor((t - TPR0) / TRS)`` (before TPR0 nothing is read). It
  must stay within ``1..VRX_FULL``: below 1 the packet came after it was to be
  read (underflow);
- ``FPT``, the measured TRoffset: the frame's first packet after its epoch
  ``N * TFRAME``: the frame its RTP timestamp names when that is within a frame
  of the first packet (a sender on the epoch's grid), else ``floor(t_first / TFRAME)``;
- latency: the first packet after the instant its RTP timestamp names (90 kHz,
  from the epoch; meaningful when the sender's clock is this machine's or
  synchronised to it); the RTP offset: the timestamp less the epoch's, in ticks.

A frame is *narrow* if ``Cinst <= CMAX_narrow`` and ``1 <= VRX <= VRX_FULL_narrow``,
*wide* within the wide bounds, else *non-compliant*; the stream takes its worst
frame's class. The first frame seen is skipped (capture may start mid-frame),
and so are frames with lost packets (counted).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from msm.sdk.errors import ConfigError

from .pacing import BETA, MEDIA_CLOCK, NS, Limits, Schedule, schedule

__all__ = ["CLASSES", "Analyser", "FrameResult", "Report", "classify"]

CLASSES = ("narrow", "wide", "non-compliant")
#: Standard frame rates, recognised from the RTP timestamp step (90 kHz ticks per frame).
RATES = (Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(50),
         Fraction(60000, 1001), Fraction(60), Fraction(100), Fraction(120000, 1001), Fraction(120))
#: Packets kept of the frame being received: beyond any real frame (8K 4:4:4 12-bit at
#: 1400 bytes is about 62k), so a stream without markers cannot grow it without end.
MAX_FRAME_PACKETS = 1 << 17
#: Complete frames kept until the frame rate is learnt (from the first 4 timestamp steps).
PENDING_FRAMES = 8
#: Per-frame results kept for the report (the totals count every frame): an hour at 60 Hz.
MAX_FRAME_RESULTS = 216_000


@dataclass
class FrameResult:
    frame: int
    rtp_timestamp: int
    packets: int
    cinst_max: int
    vrx_min: int
    vrx_max: int
    fpt_ns: int
    latency_ns: int
    rtp_offset: int
    klass: str
    reason: str


def classify(cinst_max: int, vrx_min: int, vrx_max: int, lim: Limits) -> tuple[str, str]:
    """A frame's class and why, from its Cinst and VRX extremes (ST 2110-21 compliance definitions)."""
    faults = []
    if cinst_max > lim.cmax_wide:
        faults.append(f"Cinst {cinst_max} > wide CMAX {lim.cmax_wide} (bursts)")
    if vrx_min < 1:
        faults.append(f"VRX underflow ({vrx_min}: packets came after the receiver was to read them)")
    if vrx_max > lim.vrx_full_wide:
        faults.append(f"VRX {vrx_max} > wide VRX_FULL {lim.vrx_full_wide} (too early)")
    if faults:
        return "non-compliant", "; ".join(faults)
    if cinst_max > lim.cmax_narrow:
        faults.append(f"Cinst {cinst_max} > narrow CMAX {lim.cmax_narrow}")
    if vrx_max > lim.vrx_full_narrow:
        faults.append(f"VRX {vrx_max} > narrow VRX_FULL {lim.vrx_full_narrow}")
    if faults:
        return "wide", "; ".join(faults)
    return "narrow", "within the narrow bounds"


@dataclass
class Report:
    rate: str = ""
    packets_per_frame: int = 0
    trs_ns: float = 0.0
    tr_offset_ns: float = 0.0
    limits: dict[str, int] = field(default_factory=dict)
    packets: int = 0
    not_rtp: int = 0
    frames: int = 0
    frames_skipped: int = 0
    lost: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in CLASSES})
    cinst_max: int = 0
    vrx_min: int | None = None
    vrx_max: int | None = None
    fpt_ns: tuple[int, int] | None = None
    latency_ns: tuple[int, int] | None = None
    rtp_offset: tuple[int, int] | None = None
    verdict: str = "unknown"
    reason: str = "no complete frame"
    frame_results: deque[FrameResult] = field(default_factory=lambda: deque(maxlen=MAX_FRAME_RESULTS))

    def as_dict(self, *, frames: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "frame_results"}
        if frames:
            out["frame_results"] = [asdict(r) for r in self.frame_results]
        return out


def _span(old: tuple[int, int] | None, value: int) -> tuple[int, int]:
    return (value, value) if old is None else (min(old[0], value), max(old[1], value))


class Analyser:
    """Measures a stream packet by packet; :attr:`report` is always current.

    ``rate``: the frame rate if known (else recognised from the RTP timestamps);
    ``height`` picks the raster's system (TRODEFAULT, RACTIVE); ``linear``
    judges against the linear read schedule (type NL) instead of the gapped one.
    """

    def __init__(self, *, rate: Fraction | None = None, height: int = 1080, linear: bool = False) -> None:
        self.rate = rate
        self.height = height
        self.linear = linear
        self.report = Report()
        self._frame: list[tuple[int, int, int]] = []   # (arrival, seq, length) of the frame being received
        self._ts: int | None = None
        self._marker_seq: int | None = None            # the last frame's marker: the next frame starts after it
        self._first_seq: int | None = None
        self._prev_ts: int | None = None
        self._steps: list[int] = []
        self._bucket = 0
        self._bucket_ref = 0
        self._schedules: dict[int, Schedule] = {}
        self._pending: list[tuple[list[tuple[int, int, int]], int, int, int]] = []

    # -- input -------------------------------------------------------------------------------------
    def feed(self, arrival_ns: int, seq: int, timestamp: int, marker: bool, length: int) -> None:
        self.report.packets += 1
        if self._ts is not None and timestamp != self._ts:
            self._end_frame(complete=False)
        if self._ts is None:
            self._ts = timestamp
            self._first_seq = seq
        if len(self._frame) < MAX_FRAME_PACKETS:
            self._frame.append((arrival_ns, seq, length))
        if marker:
            self._end_frame(complete=True)

    def feed_rtp(self, arrival_ns: int, data: bytes, length: int | None = None) -> None:
        """``feed`` from a datagram (``length``: its size if ``data`` was cut short by a capture).

        What is not RTP version 2 is counted and left out.
        """
        if len(data) < 12 or data[0] >> 6 != 2:
            self.report.not_rtp += 1
            return
        self.feed(arrival_ns, int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:8], "big"),
                  bool(data[1] & 0x80), len(data) if length is None else length)

    # -- frames ------------------------------------------------------------------------------------
    def _end_frame(self, *, complete: bool) -> None:
        packets, ts, first_seq = self._frame, self._ts, self._first_seq
        self._frame, self._ts = [], None
        if ts is None or first_seq is None or not packets:
            return
        starts_clean = self._marker_seq is not None and first_seq == (self._marker_seq + 1) & 0xFFFF
        last_seq = packets[-1][1]
        if complete:
            self._marker_seq = last_seq
        step = None if self._prev_ts is None else (ts - self._prev_ts) & 0xFFFFFFFF
        self._prev_ts = ts
        expected = ((last_seq - first_seq) & 0xFFFF) + 1
        lost = expected - len(packets)
        if step:
            self._learn_rate(step)
        if not (complete and starts_clean) or lost != 0:
            self.report.frames_skipped += 1
            self.report.lost += max(0, lost) if starts_clean else 0
            if self.rate is not None:
                self._drain_only(packets)
            return
        if self.rate is None:   # judged once the rate is known (a few frames on)
            if len(self._pending) < PENDING_FRAMES:
                self._pending.append((packets, ts, first_seq, expected))
            else:
                self.report.frames_skipped += 1
            return
        for frame in self._pending:
            self._analyse(*frame)
        self._pending.clear()
        self._analyse(packets, ts, first_seq, expected)

    def _learn_rate(self, step: int) -> None:
        if self.rate is not None:
            return
        self._steps.append(step)
        if len(self._steps) < 4:
            return
        # A sender that skips frames makes steps of several frame periods: the rate is the
        # lowest standard one whose period divides every step (within a tick: 59.94 Hz steps
        # alternate 1501 and 1502 ticks).
        for rate in RATES:
            period = MEDIA_CLOCK / rate
            if all(abs(s - max(1, round(s / period)) * period) <= 1 for s in self._steps):
                self.rate = rate
                return
        self.rate = Fraction(MEDIA_CLOCK, min(self._steps))

    def _schedule(self, packets: int) -> Schedule:
        sched = self._schedules.get(packets)
        if sched is None:
            if self.rate is None or self.rate <= 0:
                raise ConfigError("the frame rate is unknown")
            sched = schedule(NS / self.rate, packets, "linear" if self.linear else "narrow", self.height, lead=0)
            if len(self._schedules) < 16:   # a stream has one or two frame sizes; the cache stays small
                self._schedules[packets] = sched
        return sched

    def _drain_only(self, packets: list[tuple[int, int, int]]) -> None:
        """Keeps the Cinst bucket going through frames that are not judged."""
        if self.report.trs_ns:
            tdrain = self.report.trs_ns / float(BETA)
            for arrival, _seq, _len in packets:
                self._cinst(arrival, tdrain)

    def _cinst(self, t: int, tdrain: float) -> int:
        if self._bucket > 0:
            drained = min(self._bucket, int((t - self._bucket_ref) / tdrain))
            self._bucket -= drained
            self._bucket_ref += int(drained * tdrain)
        if self._bucket == 0:
            self._bucket_ref = t
        self._bucket += 1
        return self._bucket

    def _analyse(self, packets: list[tuple[int, int, int]], ts: int, first_seq: int, count: int) -> None:
        sched = self._schedule(count)
        lim = sched.limits
        trs = float(sched.trs_ns)
        tdrain = trs / float(BETA)
        t_first = packets[0][0]
        now_ticks = t_first * MEDIA_CLOCK // NS
        delta = ((ts - now_ticks + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        ts_ns = (now_ticks + delta) * NS // MEDIA_CLOCK       # the instant the RTP timestamp names
        frame = sched.frame_of(t_first)
        by_ts = round(ts_ns / sched.frame_period_ns)
        if abs(by_ts - frame) <= 1:   # a sender on the epoch's grid: its timestamp names the frame
            frame = by_ts
        epoch = frame * sched.frame_period_ns
        tpr0 = float(epoch + sched.tr_offset_ns)
        cinst_max, vrx_min, vrx_max = 0, 1 << 30, -(1 << 30)
        for arrival, seq, _length in packets:
            cinst_max = max(cinst_max, self._cinst(arrival, tdrain))
            read = int((arrival - tpr0) // trs) if arrival >= tpr0 else 0
            vrx = ((seq - first_seq) & 0xFFFF) + 1 - read
            vrx_min, vrx_max = min(vrx_min, vrx), max(vrx_max, vrx)
        fpt = int(t_first - epoch)
        latency = t_first - ts_ns
        rtp_offset = ((ts - sched.rtp_timestamp(frame) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        klass, reason = classify(cinst_max, vrx_min, vrx_max, lim)
        self._record(sched, FrameResult(frame, ts, count, cinst_max, vrx_min, vrx_max, fpt, latency, rtp_offset,
                                        klass, reason))

    def _record(self, sched: Schedule, r: FrameResult) -> None:
        rep = self.report
        if not rep.frames:
            rep.rate = _rate_text(self.rate)
            rep.packets_per_frame = r.packets
            rep.trs_ns, rep.tr_offset_ns = float(sched.trs_ns), float(sched.tr_offset_ns)
            rep.limits = asdict(sched.limits)
        rep.frames += 1
        rep.counts[r.klass] += 1
        rep.cinst_max = max(rep.cinst_max, r.cinst_max)
        rep.vrx_min = r.vrx_min if rep.vrx_min is None else min(rep.vrx_min, r.vrx_min)
        rep.vrx_max = r.vrx_max if rep.vrx_max is None else max(rep.vrx_max, r.vrx_max)
        rep.fpt_ns = _span(rep.fpt_ns, r.fpt_ns)
        rep.latency_ns = _span(rep.latency_ns, r.latency_ns)
        rep.rtp_offset = _span(rep.rtp_offset, r.rtp_offset)
        rep.frame_results.append(r)
        if rep.verdict == "unknown" or CLASSES.index(r.klass) > CLASSES.index(rep.verdict):
            rep.verdict, rep.reason = r.klass, f"frame {r.frame}: {r.reason}"


def _rate_text(rate: Fraction | None) -> str:
    if rate is None:
        return "?"
    return str(rate.numerator) if rate.denominator == 1 else f"{float(rate):.2f}"
