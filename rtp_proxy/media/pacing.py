"""SMPTE ST 2110-21 sender timing, computed exactly: the twin of the C pacer's schedule.

The C pacer (``msm.ext.pacer``) sends at these times; this module computes the
same numbers in exact rational arithmetic, so tests compare the two and the
analyser (:mod:`msm.rtp_proxy.media.st2110_timing`) judges a stream against the
same model. Nothing here sends.

The model (ST 2110-21, "Virtual Receiver Buffer Model" and "Network
Compatibility Model"; the sender types of "Compliance Definitions"):

- the frame grid: frame ``N`` starts at ``N * TFRAME`` after the (TAI) epoch;
  its RTP timestamp is that instant on the 90 kHz media clock (ST 2110-10);
- the read schedule: packet ``k`` of frame ``N`` is read at
  ``TPR0 + k * TRS``, ``TPR0 = N * TFRAME + TROFFSET``;
- gapped senders (types N and W): ``TRS = TFRAME * RACTIVE / NPACKETS`` with
  ``RACTIVE = 1080/1125`` (1125-line systems, 720/750 for 750-line: both 0.96),
  so no packet is due in the vertical blanking; linear senders (type NL):
  ``TRS = TFRAME / NPACKETS``;
- ``TROFFSET = TRODEFAULT``: 43 lines of 1125 for 1080p (and 2160p, 86 of
  2250), 28 of 750 for 720p;
- the network compatibility model: a bucket drained one packet per
  ``TDRAIN = TRS / BETA`` (``BETA = 1.1``) may hold at most ``CMAX`` packets:
  narrow ``MAX(4, INT(NPACKETS / (43200 * RACTIVE * TFRAME)))``, wide
  ``MAX(16, INT(NPACKETS / (21600 * TFRAME)))`` (TFRAME in seconds);
- the virtual receiver buffer holds at most ``VRX_FULL`` packets and never
  underflows: narrow ``MAX(8, INT(NPACKETS / (27000 * TFRAME)))``, wide
  ``MAX(720, INT(NPACKETS / (300 * TFRAME)))``.

The sender starts ``lead`` packets ahead of the read schedule so that the
virtual receiver buffer holds a few packets of margin (it must never run
empty while being read); ``lead`` stays well under ``VRX_FULL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from msm.sdk.errors import ConfigError

__all__ = ["BETA", "MEDIA_CLOCK", "MODES", "Limits", "Schedule", "default_lead", "frame_period", "limits",
           "raster_lines", "schedule"]

#: ST 2110-21 network compatibility model: the bucket drains BETA times faster than TRS.
BETA = Fraction(11, 10)
#: ST 2110-20 video: a 90 kHz RTP clock.
MEDIA_CLOCK = 90_000
NS = 1_000_000_000
MODES = ("narrow", "wide", "linear")
#: Packets a narrow (or narrow linear) sender runs ahead of the read schedule: VRX
#: then sits at 7 of VRX_FULL's 8 and underflows only when a packet is 6 TRS late.
NARROW_LEAD = 6
#: A wide sender runs up to half of VRX_FULL (720) ahead, but its first packet
#: stays in the first 80% of TROFFSET, after its frame's epoch.
WIDE_LEAD = 360
#: Packets sent back to back at most (one sendmmsg), per mode; Cinst stays within
#: CMAX (4 narrow, 16 wide) with room for the kernel's own jitter.
MAX_GROUP = {"narrow": 2, "wide": 8, "linear": 2}


def raster_lines(height: int) -> tuple[int, int, int]:
    """``(total lines, active lines, TRODEFAULT lines)`` of a progressive raster's system.

    1080p and 2160p (ratios of the 1125-line system), 720p (750-line system);
    other heights use the nearest: 1125-line from 1080 up, 750-line below.
    """
    if height <= 0:
        raise ConfigError(f"a raster's height must be positive, not {height}")
    return (1125, 1080, 43) if height >= 1080 else (750, 720, 28)


@dataclass(frozen=True)
class Limits:
    """ST 2110-21's bounds for one stream (compliance definitions)."""

    cmax_narrow: int
    cmax_wide: int
    vrx_full_narrow: int
    vrx_full_wide: int


def limits(frame_period_ns: Fraction, packets: int, height: int = 1080, *, linear: bool = False) -> Limits:
    total, active, _tro = raster_lines(height)
    r_active = Fraction(1) if linear else Fraction(active, total)
    tframe = Fraction(frame_period_ns) / NS
    return Limits(
        cmax_narrow=max(4, int(packets / (43200 * r_active * tframe))),
        cmax_wide=max(16, int(packets / (21600 * tframe))),
        vrx_full_narrow=max(8, int(packets / (27000 * tframe))),
        vrx_full_wide=max(720, int(packets / (300 * tframe))),
    )


@dataclass(frozen=True)
class Schedule:
    """When each packet of each frame is due, in integer nanoseconds (floored)."""

    frame_period_ns: Fraction
    packets: int
    mode: str
    height: int
    lead: int

    @property
    def lines(self) -> tuple[int, int, int]:
        return raster_lines(self.height)

    @property
    def trs_ns(self) -> Fraction:
        total, active, _tro = self.lines
        if self.mode == "linear":
            return self.frame_period_ns / self.packets
        return self.frame_period_ns * Fraction(active, total) / self.packets

    @property
    def tr_offset_ns(self) -> Fraction:
        total, _active, tro = self.lines
        return self.frame_period_ns * Fraction(tro, total)

    @property
    def tdrain_ns(self) -> Fraction:
        return self.trs_ns / BETA

    @property
    def limits(self) -> Limits:
        return limits(self.frame_period_ns, self.packets, self.height, linear=self.mode == "linear")

    def frame_start_ns(self, frame: int) -> int:
        return int(frame * self.frame_period_ns)   # floor: frame >= 0

    def packet_time_ns(self, frame: int, index: int) -> int:
        """When packet ``index`` (0-based) of frame ``frame`` leaves: the read schedule less ``lead`` packets."""
        exact = frame * self.frame_period_ns + self.tr_offset_ns + (index - self.lead) * self.trs_ns
        return exact.numerator // exact.denominator

    def frame_of(self, t_ns: int) -> int:
        """The frame whose period contains ``t_ns``: ``floor(t / TFRAME)``."""
        q = t_ns / self.frame_period_ns
        return q.numerator // q.denominator

    def rtp_timestamp(self, frame: int) -> int:
        """The frame's RTP timestamp: its start on the 90 kHz clock, modulo 2**32."""
        ticks = frame * self.frame_period_ns * MEDIA_CLOCK / NS
        return (ticks.numerator // ticks.denominator) & 0xFFFFFFFF

    def first_frame_after(self, now_ns: int, margin_ns: int = 0) -> int:
        """The first frame whose first packet is due no earlier than ``now_ns + margin_ns``."""
        frame = self.frame_of(now_ns)
        while self.packet_time_ns(frame, 0) < now_ns + margin_ns:
            frame += 1
        return frame


def default_lead(mode: str, packets: int, height: int = 1080) -> int:
    """Packets the sender runs ahead of the read schedule (see NARROW_LEAD, WIDE_LEAD)."""
    if mode != "wide":
        return NARROW_LEAD
    _total, active, tro = raster_lines(height)
    return max(NARROW_LEAD, min(WIDE_LEAD, 4 * tro * packets // (5 * active)))


def frame_period(value: Fraction | int | float | str) -> Fraction:
    """A frame period in ns from ``30``, ``29.97``, ``30000/1001`` (a rate, fps) — the standard rates exactly."""
    text = str(value).strip()
    exact = {"23.98": Fraction(24000, 1001), "29.97": Fraction(30000, 1001), "59.94": Fraction(60000, 1001),
             "119.88": Fraction(120000, 1001)}
    try:
        rate = exact[text] if text in exact else Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"not a frame rate: {text!r} (try 30, 29.97, 59.94 or 60000/1001)") from None
    if rate <= 0 or rate > 1000:
        raise ConfigError(f"frame rate out of range: {text!r}")
    return NS / rate


def schedule(frame_period_ns: Fraction | int, packets: int, mode: str = "narrow", height: int = 1080,
             lead: int | None = None) -> Schedule:
    if mode not in MODES:
        raise ConfigError(f"pacing mode must be one of {', '.join(MODES)}, not {mode!r}")
    if packets < 1:
        raise ConfigError(f"a frame needs at least one packet, not {packets}")
    period = Fraction(frame_period_ns)
    if period <= 0:
        raise ConfigError(f"the frame period must be positive, not {period}")
    return Schedule(period, packets, mode, height, default_lead(mode, packets, height) if lead is None else lead)
