"""RFC 4585 generic NACK and RFC 4588 RTX: the wire formats against the RFCs' layouts, round trips,
the sender's bounded retransmission buffer, the receiver's NACK decisions against a playout
deadline, and bad input as RtcpError/RtpError (GStreamer's rtpsession and rtprtxsend/receive are
the peers in tests/e2e/test_fec_gst.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.rtp_proxy.repair.rtx import (
    MAX_FCI,
    LossTracker,
    Nack,
    RtxSender,
    build_nack,
    build_rtx,
    nacks_in,
    parse_nack,
    parse_rtx,
)
from msm.sdk.errors import ConfigError, RtcpError, RtpError


def rtp(seq: int, payload: bytes = b"abcd", *, first: int = 0x80, pt: int = 96, ssrc: int = 0x11223344,
        ts: int = 90000, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc) + payload


def test_nack_layout_is_rfc_4585_section_6_2_1() -> None:
    # Lost 1000, 1001 and 1003: PID 1000, BLP bit 0 (1001) and bit 2 (1003); then 2000 alone.
    packet = build_nack(0xAAAA0001, 0xBBBB0002, [1003, 1000, 2000, 1001])
    assert packet == bytes.fromhex("81cd0004" "aaaa0001" "bbbb0002" "03e80005" "07d00000")
    assert parse_nack(packet) == Nack(0xAAAA0001, 0xBBBB0002, (1000, 1001, 1003, 2000))


def test_a_run_across_the_wrap_is_one_fci() -> None:
    packet = build_nack(1, 2, [0, 65535, 1, 15])
    assert packet[12:] == struct.pack("!HH", 65535, 0b1000000000000011)
    assert parse_nack(packet).seqs == (65535, 0, 1, 15)


@settings(max_examples=200)
@given(base=st.integers(0, 65535), offsets=st.sets(st.integers(0, 2000), min_size=1, max_size=300))
def test_nack_round_trip(base: int, offsets: set[int]) -> None:
    seqs = {(base + o) & 0xFFFF for o in offsets}
    packet = build_nack(7, 9, seqs)
    parsed = parse_nack(packet)
    assert sorted(parsed.seqs) == sorted(seqs) and len(parsed.seqs) == len(seqs)
    assert len(packet) <= 12 + 4 * MAX_FCI


def test_bad_nacks_are_rtcp_errors() -> None:
    good = build_nack(1, 2, [5])
    for bad in (b"", good[:11], good[:-1], b"\x81\xc9" + good[2:], b"\x82" + good[1:], b"\x41" + good[1:],
                good[:3] + b"\x05" + good[4:], good[:3] + b"\x02" + good[4:12]):
        with pytest.raises(RtcpError):
            parse_nack(bad)
    with pytest.raises(RtcpError):
        build_nack(1, 2, [])
    with pytest.raises(RtcpError):
        build_nack(1, 2, range(0, 40 * (MAX_FCI + 1), 40))


def test_nacks_in_a_compound_packet() -> None:
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x55)
    sdes = struct.pack("!BBHI", 0x81, 202, 2, 0x55) + b"\x01\x01x\x00"
    compound = rr + build_nack(0x55, 0x66, [10, 12]) + sdes + build_nack(0x55, 0x77, [40000])
    assert nacks_in(compound) == [Nack(0x55, 0x66, (10, 12)), Nack(0x55, 0x77, (40000,))]
    with pytest.raises(RtcpError):
        nacks_in(compound + b"\x80")
    with pytest.raises(RtcpError):
        nacks_in(rr[:4] + b"\x00\x00\x00")


def test_rtx_layout_is_rfc_4588_section_4() -> None:
    # CSRC and a header extension are kept; the OSN comes first in the payload; padding is dropped.
    csrc = struct.pack("!I", 0xCAFE)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\x00\x00"
    original = (struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 0x80 | 96, 4242, 123456, 0x11223344) + csrc + ext
                + b"payload" + b"\x00\x00\x03")
    rtx = build_rtx(original, rtx_ssrc=0x99887766, rtx_payload_type=97, rtx_seq=7)
    assert rtx == (struct.pack("!BBHII", 0x80 | 0x10 | 1, 0x80 | 97, 7, 123456, 0x99887766) + csrc + ext
                   + struct.pack("!H", 4242) + b"payload")
    back = parse_rtx(rtx, media_ssrc=0x11223344, media_payload_type=96)
    assert back == struct.pack("!BBHII", 0x80 | 0x10 | 1, 0x80 | 96, 4242, 123456, 0x11223344) + csrc + ext + b"payload"


def test_bad_rtx_is_an_rtp_error() -> None:
    for bad in (b"", b"\x40" + bytes(20), rtp(1, b"")[:12], struct.pack("!BBHII", 0x90, 97, 1, 2, 3) + b"\x00\x01"):
        with pytest.raises(RtpError):
            parse_rtx(bad, media_ssrc=1, media_payload_type=96)


def test_sender_buffer_is_bounded_by_count_and_age() -> None:
    sender = RtxSender(rtx_ssrc=0x77, rtx_payload_type=97, max_packets=4, max_age=1.0, max_resends=2)
    for seq in range(10):
        sender.store(rtp(seq, bytes([seq])), now=seq * 0.1)
    assert list(sender.sent) == [6, 7, 8, 9]                       # the count bound
    out = sender.answer(Nack(1, 0x11223344, (2, 7, 9)), now=1.0)
    assert [parse_rtx(p, media_ssrc=0x11223344, media_payload_type=96) for p in out] == [rtp(7, b"\x07"),
                                                                                          rtp(9, b"\x09")]
    assert [struct.unpack("!H", p[2:4])[0] for p in out] == [0, 1]                # the RTX stream's own numbers
    assert sender.answer(Nack(1, 0x11223344, (9,)), now=1.05) != []
    assert sender.answer(Nack(1, 0x11223344, (9,)), now=1.1) == []                # resent twice already
    assert sender.answer(Nack(1, 0x11223344, (8,)), now=1.85) == []               # older than a second
    assert sender.counters == {"stored": 10, "nacked": 6, "resent": 3, "expired": 3, "unknown": 2,
                               "resend_limit": 1, "evicted": 6}
    with pytest.raises(RtpError):
        sender.store(b"junk", now=2.0)
    with pytest.raises(ConfigError):
        RtxSender(rtx_ssrc=1, rtx_payload_type=97, max_packets=0)


def test_receiver_asks_after_the_reorder_grace_and_again_after_an_rtt() -> None:
    tracker = LossTracker(rtt=0.02, playout_delay=0.2, reorder=0.005)
    for seq, t in ((100, 0.0), (101, 0.001), (104, 0.004)):
        assert tracker.received(seq, t)
    assert tracker.poll(0.005) == []                   # within the reorder grace
    assert tracker.poll(0.010) == [102, 103]
    assert tracker.poll(0.020) == []                   # an RTT not passed yet
    assert tracker.received(103, 0.021)                # a retransmission answered one
    assert not tracker.received(103, 0.022)            # and a second copy is not news
    assert tracker.poll(0.031) == [102]
    assert tracker.next_due() == pytest.approx(0.051)
    assert tracker.poll(0.052) == [102]
    assert tracker.poll(0.100) == []                   # three NACKs sent: no more
    assert tracker.poll(0.190) == []                   # past the deadline less an RTT: given up
    assert 102 not in tracker.missing
    assert tracker.counters == {"received": 4, "lost": 2, "nacks": 4, "repaired": 1, "too_late": 0, "gave_up": 1,
                                "late": 1}


def test_no_nack_for_what_could_not_come_back_in_time() -> None:
    tracker = LossTracker(rtt=0.3, playout_delay=0.2, reorder=0.0)
    tracker.received(1, 0.0)
    tracker.received(3, 0.01)
    assert tracker.poll(0.01) == []                    # an RTT of 300 ms misses a 200 ms playout delay
    assert tracker.counters["too_late"] == 1 and not tracker.missing


def test_receiver_state_is_bounded() -> None:
    tracker = LossTracker(max_missing=8, reorder=0.0)
    tracker.received(0, 0.0)
    tracker.received(1000, 0.0)                        # a burst of 999: only the last 8 are chased
    assert list(tracker.missing) == list(range(992, 1000))
    assert tracker.counters["lost"] == 999 and tracker.counters["gave_up"] == 991
    assert len(tracker.poll(0.0)) == 8
    assert not tracker.received(500, 0.1)            # given up on: not news any more
    with pytest.raises(ConfigError):
        LossTracker(playout_delay=0)
