"""Receiver statistics (RFC 3550 A.1, A.3, A.8) on synthetic streams."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.rtp import ReceiverReport, parse_rtcp
from msm.sdk.stats import MAX_DROPOUT, MAX_MISORDER, ReceiverStats
from tests.datafiles import load

RATE = 8000
STEP_TS = 160  # 20 ms of 8 kHz audio
STEP_S = 0.02


def feed(stats: ReceiverStats, seqs: Iterable[int], *, ts0: int = 0) -> list[bool]:
    """Send packets with the given (unwrapped) sequence numbers, constant network delay."""
    out = []
    for seq in seqs:
        out.append(
            stats.update(seq & 0xFFFF, (ts0 + seq * STEP_TS) & 0xFFFFFFFF, 10.0 + seq * STEP_S)
        )
    return out


# ---------------------------------------------------------------- A.1 sequence and loss


def test_probation_then_clean_stream() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    results = feed(stats, range(100, 200))
    # MIN_SEQUENTIAL = 2: the first packet is on probation, the second starts the count.
    assert results[0] is False and all(results[1:])
    assert stats.received == 99
    assert stats.expected == 99
    assert stats.lost == 0
    assert stats.extended_highest_seq == 199
    assert stats.fraction_lost == 0.0
    assert (stats.duplicates, stats.reordered, stats.restarts) == (0, 0, 0)


def test_nothing_counted_yet() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    assert (stats.expected, stats.lost, stats.extended_highest_seq) == (0, 0, 0)
    assert stats.update(0, 0, 0.0) is False
    assert (stats.received, stats.expected, stats.extended_highest_seq) == (0, 0, 0)
    block = stats.report_block(1)
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (0, 0, 0)


@pytest.mark.parametrize("min_sequential", [0, 1])
def test_no_probation(min_sequential: int) -> None:
    stats = ReceiverStats(clock_rate=RATE, min_sequential=min_sequential)
    assert feed(stats, [0, 1, 2]) == [True, True, True]
    assert (stats.received, stats.expected) == (3, 3)


def test_probation_restarts_on_out_of_sequence() -> None:
    stats = ReceiverStats(clock_rate=RATE, min_sequential=3)
    assert feed(stats, [10, 11, 50, 51, 52, 53]) == [False, False, False, False, True, True]
    assert (stats.received, stats.expected, stats.extended_highest_seq) == (2, 2, 53)


def test_drop_every_tenth_is_ten_percent() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    sent = [seq for seq in range(1, 1001) if seq % 10]  # 1..999 without multiples of 10
    feed(stats, sent)
    # Counting starts at the second packet (seq 2): 2..999 expected, 10, 20.. 990 lost.
    assert stats.expected == 998
    assert stats.lost == 99
    assert stats.received == len(sent) - 1
    assert stats.fraction_lost == pytest.approx(99 / 998)
    block = stats.report_block(0xABCD)
    assert block.ssrc == 0xABCD
    assert block.fraction_lost == (99 << 8) // 998 == 25
    assert block.packets_lost == 99
    assert block.highest_sequence == 999


def test_report_block_intervals() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, range(0, 101))  # counted: 1..100, no loss
    assert stats.report_block(1).fraction_lost == 0
    feed(stats, [seq for seq in range(101, 201) if seq % 2])  # half of the next 100 lost
    assert stats.fraction_lost == pytest.approx(49 / 99)
    assert stats.fraction_lost == pytest.approx(49 / 99)  # reading does not reset
    block = stats.report_block(1)
    assert block.fraction_lost == (49 << 8) // 99
    assert block.packets_lost == 49
    # A new interval without loss: fraction back to 0, cumulative loss stays.
    feed(stats, range(200, 300))
    assert stats.fraction_lost == 0.0
    block = stats.report_block(1, lsr=0x12345678, dlsr=0x10000)
    assert (block.fraction_lost, block.packets_lost) == (0, 49)
    assert (block.lsr, block.dlsr) == (0x12345678, 0x10000)
    # Nothing new since the last report.
    assert stats.report_block(1).fraction_lost == 0


def test_matches_gstreamer_receiver_report() -> None:
    """The stream behind ``rtp/gst_rr_sdes_final.bin``: seq 1000..1399, every 10th dropped.

    GStreamer's rtpbin reported fraction 25 and highest 1398 like A.1; its
    cumulative loss is 38, one less than A.1's 39 because GStreamer counts the
    first probation packet in ``packets_received`` while ``expected`` starts
    at the second.
    """
    rr = parse_rtcp(load("rtp/gst_rr_sdes_final.bin"))[0]
    assert isinstance(rr, ReceiverReport)
    (gst,) = rr.reports
    stats = ReceiverStats(clock_rate=RATE)
    for i in range(400):
        if i % 10 != 9:
            stats.update(1000 + i, 5000 + i * 160, i * STEP_S)
    ours = stats.report_block(gst.ssrc)
    assert ours.highest_sequence == gst.highest_sequence == 1398
    assert ours.fraction_lost == gst.fraction_lost == 25
    assert ours.packets_lost == gst.packets_lost + 1 == 39


def test_reordering() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    order = [0, 1, 2, 4, 3, 5, 7, 6, 8, 12, 9, 10, 11, 13]
    assert all(feed(stats, order)[1:])
    assert stats.reordered == 5  # 3, 6, 9, 10, 11
    assert stats.duplicates == 0
    assert stats.lost == 0
    assert stats.extended_highest_seq == 13
    # Mid-stream the late packets count as lost until they arrive.
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, [0, 1, 2, 5])
    assert stats.lost == 2
    feed(stats, [4, 3])
    assert stats.lost == 0


def test_duplicates_make_loss_negative() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    seqs = []
    for seq in range(0, 51):
        seqs.append(seq)
        if seq % 5 == 0 and seq:
            seqs.append(seq)  # immediate duplicate of the highest
    feed(stats, seqs)
    feed(stats, [45, 30])  # older duplicates within the window
    assert stats.duplicates == 12
    assert stats.reordered == 0
    assert stats.expected == 50
    assert stats.received == 62
    assert stats.lost == -12
    assert stats.report_block(1).packets_lost == -12


def test_duplicate_window_bound() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, range(0, 300))
    # MAX_MISORDER - 1 behind the highest: still in the window, a duplicate.
    assert feed(stats, [299 - (MAX_MISORDER - 1)]) == [True]
    assert stats.duplicates == 1
    # MAX_MISORDER behind: A.1 calls it a very large jump; not counted.
    before = stats.received
    assert feed(stats, [299 - MAX_MISORDER]) == [False]
    assert stats.received == before and stats.duplicates == 1


def test_late_packet_after_gap_is_reordered_not_duplicate() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, [0, 1, 2, 200])  # gap of 197, under MAX_DROPOUT
    assert stats.lost == 197
    feed(stats, [150, 150])
    # The copy counts as received (A.1), so it offsets one loss as well.
    assert (stats.reordered, stats.duplicates, stats.lost) == (1, 1, 195)


def test_sequence_wrap() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, range(65530, 65550))  # 65530..65535 then 0..13
    assert stats.received == 19
    assert stats.expected == 19
    assert stats.lost == 0
    assert stats.extended_highest_seq == 65536 + 13
    assert stats.report_block(1).highest_sequence == 65536 + 13
    # Many wraps.
    feed(stats, range(65550, 65550 + 3 * 65536, 7))  # gaps of 6
    assert stats.extended_highest_seq == 65550 + ((3 * 65536 - 1) // 7) * 7
    assert stats.lost == stats.expected - stats.received > 0


def test_reordered_across_wrap() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, [65533, 65534, 0, 65535, 1])
    assert (stats.reordered, stats.lost, stats.extended_highest_seq) == (1, 0, 65537)


def test_ssrc_restart_large_jump() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, range(0, 101))
    assert stats.received == 100
    # The sender restarts at a far sequence number.
    assert feed(stats, [40000]) == [False]
    assert stats.received == 100 and stats.restarts == 0
    assert feed(stats, [40001, 40002]) == [True, True]
    assert stats.restarts == 1
    assert stats.received == 2
    assert stats.expected == 2
    assert stats.extended_highest_seq == 40002


def test_isolated_stray_jump_is_ignored() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, range(0, 51))
    assert feed(stats, [30000, 51, 52]) == [False, True, True]
    assert (stats.restarts, stats.received, stats.lost) == (0, 52, 0)


def test_gap_just_under_max_dropout_is_loss() -> None:
    stats = ReceiverStats(clock_rate=RATE)
    feed(stats, [0, 1, 1 + MAX_DROPOUT - 1])
    assert stats.lost == MAX_DROPOUT - 2
    assert feed(stats, [1 + MAX_DROPOUT - 1 + MAX_DROPOUT]) == [False]


def test_cumulative_loss_clamped_to_24_bits() -> None:
    # No probation: with it, a stream that is never sequential never validates.
    stats = ReceiverStats(clock_rate=None, min_sequential=1)
    seq = 0
    for _ in range(2900):
        stats.update(seq & 0xFFFF, 0, 0.0)
        seq += MAX_DROPOUT - 1
    assert stats.lost > (1 << 23) - 1
    assert stats.report_block(1).packets_lost == (1 << 23) - 1
    stats.received += 1 << 25  # as if 32 million duplicates arrived
    assert stats.report_block(1).packets_lost == -(1 << 23)


def test_arguments_validated() -> None:
    with pytest.raises(ValueError):
        ReceiverStats(clock_rate=0)
    with pytest.raises(ValueError):
        ReceiverStats(clock_rate=8000, min_sequential=-1)
    stats = ReceiverStats(clock_rate=8000)
    with pytest.raises(ValueError):
        stats.update(65536, 0, 0.0)
    with pytest.raises(ValueError):
        stats.update(0, 1 << 32, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.lists(st.integers(1, 50), min_size=2, max_size=200))
def test_property_in_order_loss_count(start: int, steps: list[int]) -> None:
    """In-order packets with gaps: lost is exactly the number of skipped numbers."""
    stats = ReceiverStats(clock_rate=RATE, min_sequential=1)
    seq = start
    sent = [seq]
    for step in steps:
        seq += step
        sent.append(seq)
    assert all(feed(stats, sent))
    assert stats.received == len(sent)
    assert stats.expected == sent[-1] - sent[0] + 1
    assert stats.lost == sum(step - 1 for step in steps)
    assert stats.extended_highest_seq == sent[-1]  # start < 65536: no wrap before it


# ---------------------------------------------------------------- A.8 jitter


def reference_jitter(packets: Iterable[tuple[int, float]], rate: int) -> float:
    """RFC 3550 6.4.1 written out directly: transit times, |D|, 1/16 gain (floats)."""
    jitter = 0.0
    previous: float | None = None
    for timestamp, arrival in packets:  # timestamps unwrapped
        transit = arrival * rate - timestamp
        if previous is not None:
            jitter += (abs(transit - previous) - jitter) / 16
        previous = transit
    return jitter


def test_constant_delay_has_no_jitter() -> None:
    stats = ReceiverStats(clock_rate=90000, min_sequential=1)
    for i in range(500):
        stats.update(i, 3000 * i, 100.25 + i / 30 + 0.040)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-9)
    assert stats.report_block(1).jitter == 0


def test_alternating_delay_analytic_value() -> None:
    """Delay alternating 0 / 10 ms: every |D| is 10 ms, so J_n = |D| (1 - (15/16)^n)."""
    rate = 90000
    d = 0.010 * rate  # 900 timestamp units
    stats = ReceiverStats(clock_rate=rate, min_sequential=1)
    for i in range(40):
        stats.update(i, 3000 * i, i / 30 + (0.010 if i % 2 else 0.0))
        assert stats.jitter == pytest.approx(d * (1 - (15 / 16) ** i), rel=1e-9, abs=1e-6)
    for i in range(40, 1000):
        stats.update(i, 3000 * i, i / 30 + (0.010 if i % 2 else 0.0))
    assert stats.jitter == pytest.approx(d, rel=1e-9)  # the steady state
    assert stats.jitter_ms == pytest.approx(10.0, rel=1e-9)
    assert stats.report_block(1).jitter in (899, 900)


def test_jitter_survives_timestamp_wrap() -> None:
    rng = random.Random(3550)
    ts0 = 0xFFFFFFFF - 3000 * 20  # wraps after 20 packets
    packets = [(ts0 + 3000 * i, i / 30 + rng.uniform(0, 0.02)) for i in range(60)]
    stats = ReceiverStats(clock_rate=90000, min_sequential=1)
    for i, (timestamp, arrival) in enumerate(packets):
        stats.update(i, timestamp & 0xFFFFFFFF, arrival)
    assert stats.jitter == pytest.approx(reference_jitter(packets, 90000), rel=1e-9, abs=1e-4)
    assert stats.jitter < 2000  # not a 2**32-sized step


def test_jitter_without_clock_rate() -> None:
    stats = ReceiverStats(clock_rate=None)
    feed(stats, range(50))
    assert stats.jitter == 0.0
    assert stats.jitter_ms is None
    assert stats.report_block(1).jitter == 0


def test_duplicates_do_not_move_jitter() -> None:
    stats = ReceiverStats(clock_rate=RATE, min_sequential=1)
    feed(stats, range(20))
    before = stats.jitter
    stats.update(19, 19 * STEP_TS, 99.0)  # a copy arriving very late
    assert stats.jitter == before


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([8000, 48000, 90000]),
    st.lists(
        st.tuples(st.integers(0, 6000), st.floats(0.0, 0.2, allow_nan=False)),
        min_size=2,
        max_size=100,
    ),
)
def test_property_jitter_matches_reference(
    ts0: int, rate: int, steps: list[tuple[int, float]]
) -> None:
    packets = []
    timestamp, arrival = ts0, 1000.0
    for ts_step, arrival_step in steps:
        timestamp += ts_step
        arrival += arrival_step
        packets.append((timestamp, arrival))
    stats = ReceiverStats(clock_rate=rate, min_sequential=1)
    for i, (ts, at) in enumerate(packets):
        assert stats.update(i, ts & 0xFFFFFFFF, at)
    expected = reference_jitter(packets, rate)
    # The reference subtracts ~4e9-sized transit times: ~1e-6 of float noise.
    assert math.isclose(stats.jitter, expected, rel_tol=1e-9, abs_tol=1e-4)
    jitter_ms = stats.jitter_ms
    assert jitter_ms is not None
    assert math.isclose(jitter_ms, expected * 1000 / rate, rel_tol=1e-9, abs_tol=1e-4)
