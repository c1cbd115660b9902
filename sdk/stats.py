"""Receiver statistics for one RTP source, as RFC 3550 appendix A computes them.

* A.1: sequence number validation and extension.  A new source is on probation
  until ``min_sequential`` packets arrive in sequence; a jump of more than
  ``MAX_DROPOUT`` ahead or ``MAX_MISORDER`` behind is not counted unless the
  next packet follows it, in which case the source is assumed to have
  restarted (a new sequence space; counters of this space start again).
* A.3: the report block: cumulative loss clamped to signed 24 bits, fraction
  lost over the interval since the previous report.
* A.8: interarrival jitter, ``J += (|D| - J) / 16``, in timestamp units.

Sans-IO: the caller passes each packet's sequence number, RTP timestamp and
arrival time (seconds, from whatever clock it injects).
"""

from __future__ import annotations

from msm.sdk.rtp import ReportBlock

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "RTP_SEQ_MOD", "ReceiverStats", "interval_fraction_lost",
           "reception_report"]

#: RFC 3550 A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16

_SEQ_MASK = RTP_SEQ_MOD - 1
_U32 = 0xFFFFFFFF
_LOST_MAX = (1 << 23) - 1
_LOST_MIN = -(1 << 23)

#: Bits kept in the duplicate-detection window: the highest sequence number and
#: the MAX_MISORDER - 1 before it.  A.1 only counts a packet behind the highest
#: when it is fewer than MAX_MISORDER behind (anything further is a "very large
#: jump"), so older sequence numbers can never come back as counted duplicates
#: and remembering them would only cost memory.  One int, no per-packet objects.
_WINDOW = MAX_MISORDER
_WINDOW_MASK = (1 << _WINDOW) - 1


class ReceiverStats:
    """Loss, reordering, duplicates and jitter of one RTP source (one SSRC)."""

    __slots__ = (
        "_base_seq",
        "_bad_seq",
        "_clock_rate",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_last_arrival",
        "_last_timestamp",
        "_max_seq",
        "_min_sequential",
        "_probation",
        "_received_prior",
        "_seen",
        "_started",
        "duplicates",
        "received",
        "reordered",
        "restarts",
    )

    def __init__(self, *, clock_rate: int | None, min_sequential: int = 2) -> None:
        """``clock_rate`` in Hz (``None``: jitter is not computed).

        ``min_sequential`` is A.1's MIN_SEQUENTIAL: packets in sequence before a
        new source counts; 0 and 1 both mean the first packet counts.
        """
        if clock_rate is not None and (
            not isinstance(clock_rate, int) or isinstance(clock_rate, bool) or clock_rate <= 0
        ):
            raise ValueError(f"clock_rate must be a positive integer or None, not {clock_rate!r}")
        if not isinstance(min_sequential, int) or min_sequential < 0:
            raise ValueError(f"min_sequential must be >= 0, not {min_sequential!r}")
        self._clock_rate = clock_rate
        self._min_sequential = max(1, min_sequential)
        #: Packets counted in the current sequence space (A.1 ``received``),
        #: duplicates included; starts again when the source restarts.
        self.received = 0
        #: Counted packets whose sequence number was already seen (cumulative).
        self.duplicates = 0
        #: Counted packets that arrived behind the highest sequence number and
        #: were not duplicates (cumulative).
        self.reordered = 0
        #: Times the source restarted its sequence numbers (A.1 bad_seq rule).
        self.restarts = 0
        self._started = False  # a first packet was seen
        self._probation = 0
        self._base_seq = 0
        self._max_seq = 0
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._seen = 0  # bit i: (highest - i) arrived, for i < _WINDOW
        self._jitter = 0.0
        self._last_arrival: float | None = None
        self._last_timestamp = 0

    # ------------------------------------------------------------------ A.1

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._seen = 1
        # A new sequence space has a new timestamp origin: restart the jitter
        # reference, keep the estimate (the network did not change).
        self._last_arrival = None

    # long function: it is RFC 3550 appendix A.1's update_seq plus the A.8 jitter
    # step, kept in the RFC's order so it can be read against it (and it is the per-packet path).
    def update(self, seq: int, rtp_timestamp: int, arrival: float) -> bool:
        """Account one packet; ``False`` when A.1 does not count it.

        Not counted: packets during probation, and the first packet after a
        jump too large to be loss or misordering.
        """
        if not 0 <= seq <= _SEQ_MASK:
            raise ValueError(f"sequence number {seq} out of range")
        if not 0 <= rtp_timestamp <= _U32:
            raise ValueError(f"RTP timestamp {rtp_timestamp} out of range")
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self._max_seq = (seq - 1) & _SEQ_MASK
            self._probation = self._min_sequential
        udelta = (seq - self._max_seq) & _SEQ_MASK
        duplicate = False
        if self._probation:
            if udelta == 1:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    self._jitter_update(rtp_timestamp, arrival)
                    return True
            else:
                self._probation = self._min_sequential - 1
                self._max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            # In order, with a permissible gap (udelta 0 is the highest again).
            if udelta == 0:
                duplicate = True
            else:
                if seq < self._max_seq:
                    self._cycles += RTP_SEQ_MOD
                self._max_seq = seq
                self._seen = ((self._seen << udelta) | 1) & _WINDOW_MASK
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # A very large jump: count it only if the next packet follows it.
            if seq == self._bad_seq:
                self._init_seq(seq)
                self.restarts += 1
            else:
                self._bad_seq = (seq + 1) & _SEQ_MASK
                return False
        else:
            # Behind the highest by 1..MAX_MISORDER-1: duplicate or reordered.
            bit = 1 << (RTP_SEQ_MOD - udelta)
            if self._seen & bit:
                duplicate = True
            else:
                self._seen |= bit
                self.reordered += 1
        self.received += 1
        if duplicate:
            # A copy carries no new timing: keep it out of the jitter estimate.
            self.duplicates += 1
        else:
            self._jitter_update(rtp_timestamp, arrival)
        return True

    # ------------------------------------------------------------------ A.8

    def _jitter_update(self, rtp_timestamp: int, arrival: float) -> None:
        if self._clock_rate is None:
            return
        last_arrival = self._last_arrival
        if last_arrival is not None:
            # D(i,j) = (Rj - Ri) - (Sj - Si) in timestamp units; the timestamp
            # difference is taken modulo 2**32 as a signed value so a wrap of
            # the 32-bit timestamp is a small step, not a 4-billion jump.
            ts_delta = ((rtp_timestamp - self._last_timestamp + (1 << 31)) & _U32) - (1 << 31)
            d = (arrival - last_arrival) * self._clock_rate - ts_delta
            self._jitter += (abs(d) - self._jitter) / 16.0
        self._last_arrival = arrival
        self._last_timestamp = rtp_timestamp

    # ------------------------------------------------------------------ views

    @property
    def extended_highest_seq(self) -> int:
        """Highest sequence number received, extended with the wrap count (A.1)."""
        if not self.received:
            return 0
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected in the current sequence space (A.3)."""
        if not self.received:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def lost(self) -> int:
        """``expected - received``: negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate (A.8), in RTP timestamp units."""
        return self._jitter

    @property
    def jitter_ms(self) -> float | None:
        """Interarrival jitter in milliseconds; ``None`` without a clock rate."""
        if self._clock_rate is None:
            return None
        return self._jitter * 1000.0 / self._clock_rate

    @property
    def fraction_lost(self) -> float:
        """Fraction (0..1) lost since the last :meth:`report_block`; does not reset it."""
        return interval_fraction_lost(self.expected - self._expected_prior,
                                      self.received - self._received_prior)

    def report_block(self, ssrc: int, *, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        """The reception report for this source (A.3); starts a new interval."""
        expected = self.expected
        block = reception_report(
            ssrc, expected=expected, received=self.received, expected_prior=self._expected_prior,
            received_prior=self._received_prior, extended_highest_seq=self.extended_highest_seq,
            jitter=self._jitter, lsr=lsr, dlsr=dlsr)
        self._expected_prior = expected
        self._received_prior = self.received
        return block


def interval_fraction_lost(expected_interval: int, received_interval: int) -> float:
    """A.3's fraction lost over one interval, as a float 0..1 (0 when nothing was lost)."""
    lost_interval = expected_interval - received_interval
    if expected_interval <= 0 or lost_interval <= 0:
        return 0.0
    return lost_interval / expected_interval


def reception_report(ssrc: int, *, expected: int, received: int, expected_prior: int, received_prior: int,
                     extended_highest_seq: int, jitter: float, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
    """RFC 3550 A.3: the report block from a source's counters and the previous interval's.

    Shared by every keeper of receiver statistics (this module's :class:`ReceiverStats`
    and the native engine's view of its counters), so they report alike.
    """
    expected_interval = expected - expected_prior
    lost_interval = expected_interval - (received - received_prior)
    if expected_interval <= 0 or lost_interval <= 0:
        fraction = 0
    else:
        # 256 when nothing arrived in the interval: clamp to the 8-bit field.
        fraction = min((lost_interval << 8) // expected_interval, 255)
    return ReportBlock(
        ssrc=ssrc,
        fraction_lost=fraction,
        packets_lost=max(_LOST_MIN, min(_LOST_MAX, expected - received)),
        highest_sequence=extended_highest_seq & _U32,
        jitter=min(int(jitter), _U32),
        lsr=lsr,
        dlsr=dlsr,
    )
