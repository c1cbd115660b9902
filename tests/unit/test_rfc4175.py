"""RFC 4175 / ST 2110-20: the Python twin's packets and frames, the C core's equality with it, bad input."""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest

from msm.sdk.errors import ConfigError, RtpError
from msm.sdk.rfc4175 import (
    BPM,
    BPM_DATA,
    GPM,
    Depacketizer,
    VideoFormat,
    line_split,
    packet_plan,
    packetize,
    parse_payload,
    timestamp_for,
)

try:
    from msm.ext import st2110 as native

    native.load()
    NATIVE_REASON = None
except Exception as exc:  # noqa: BLE001 - the reason is printed by the skip
    NATIVE_REASON = str(exc)

needs_native = pytest.mark.skipif(NATIVE_REASON is not None, reason=f"C core not built: {NATIVE_REASON}")

FORMATS = [VideoFormat("YCbCr-4:2:2", 10, 1920, 1080), VideoFormat("YCbCr-4:2:2", 8, 640, 48),
           VideoFormat("RGB", 8, 320, 24), VideoFormat("RGB", 10, 64, 8), VideoFormat("YCbCr-4:2:2", 10, 8, 400)]


def _frame(fmt: VideoFormat, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(fmt.frame_bytes)


def _push_all(depack: Depacketizer, packets: list[bytes]) -> list:
    out = []
    for p in packets:
        out += depack.push(p)
    return out


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("packing", [GPM, BPM])
def test_round_trip(fmt: VideoFormat, packing: str) -> None:
    frame = _frame(fmt)
    packets = packetize(frame, fmt, seq=0xFFFE, timestamp=9000, ssrc=7, packing=packing)
    assert all(len(p) <= 1400 for p in packets)
    assert [p[1] >> 7 for p in packets] == [0] * (len(packets) - 1) + [1]   # marker on the last only
    assert {p[4:8] for p in packets} == {struct.pack("!I", 9000)}
    # Extended sequence numbers: the high half in the payload header carries past 65535.
    ext = [(int.from_bytes(p[12:14], "big") << 16) | int.from_bytes(p[2:4], "big") for p in packets]
    assert ext == list(range(0xFFFE, 0xFFFE + len(packets)))
    if packing == BPM and fmt.stride >= 180:   # narrower lines: segment headers leave no room for 1260
        assert all(sum(s[2] for s in segs) == BPM_DATA for segs in packet_plan(fmt, 1400, BPM)[:-1])
    frames = _push_all(Depacketizer(fmt), packets)
    assert len(frames) == 1 and frames[0].complete and bytes(frames[0].data) == frame


def test_pgroup_math() -> None:
    assert VideoFormat("YCbCr-4:2:2", 10, 1920, 1080).stride == 4800
    assert VideoFormat("YCbCr-4:2:2", 8, 1920, 1080).stride == 3840
    assert VideoFormat("RGB", 10, 1920, 1080).stride == 7200
    with pytest.raises(ConfigError, match="multiple"):
        VideoFormat("YCbCr-4:2:2", 10, 1919, 1080)
    with pytest.raises(ConfigError, match="unsupported"):
        VideoFormat("YCbCr-4:2:0", 8, 1920, 1080)
    assert timestamp_for(1, 30) == 3000 and timestamp_for(1, 30000, 1001) == 3003


def test_loss_is_counted_and_frame_marked() -> None:
    fmt = FORMATS[1]
    a = packetize(_frame(fmt, 1), fmt, seq=10, timestamp=0, ssrc=1)
    b = packetize(_frame(fmt, 2), fmt, seq=10 + len(a), timestamp=3000, ssrc=1)
    depack = Depacketizer(fmt)
    frames = _push_all(depack, a[:3] + a[4:] + b)
    assert [f.complete for f in frames] == [False, True]
    assert frames[0].reason == "lost 1 packets" and depack.counters["lost"] == 1
    assert depack.counters["frames_incomplete"] == 1 and depack.counters["frames_complete"] == 1
    # The tail (and marker) of a frame lost: it ends when the next frame starts, its loss is its own.
    depack = Depacketizer(fmt, hand_on_incomplete=False)
    frames = _push_all(depack, a[:-2] + b)
    assert [f.timestamp for f in frames] == [3000] and frames[0].complete
    assert depack.counters["frames_dropped"] == 1


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: p[:1] + bytes([p[1] & 0x80 | 33]) + p[2:], "bad_pt"),
    (lambda p: p[:8] + b"\0\0\0\x63" + p[12:], "bad_ssrc"),
    (lambda p: p[:16] + struct.pack("!H", 5000) + p[18:], "bad_segment"),     # line 5000 of 48
    (lambda p: p[:18] + struct.pack("!H", 641) + p[20:], "bad_segment"),      # offset past the width
    (lambda p: p[:14] + struct.pack("!H", 9995) + p[16:], "bad_segment"),     # length past the packet
    (lambda p: p[:13], "bad_rtp"),
    (lambda p: b"\x40" + p[1:], "bad_rtp"),
])
def test_bad_packets_counted_not_raised(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    fmt = FORMATS[1]
    packets = packetize(_frame(fmt), fmt, seq=0, timestamp=0, ssrc=1)
    depack = Depacketizer(fmt, ssrc=1)
    frames = _push_all(depack, [packets[0], mutate(packets[1]), *packets[1:]])
    assert depack.counters[reason] == 1, depack.counters
    assert depack.last_error
    assert len(frames) == 1 and frames[0].complete   # the stream goes on unharmed


def test_parse_payload_errors_name_the_fault() -> None:
    fmt = FORMATS[1]
    packet = packetize(_frame(fmt), fmt, seq=0, timestamp=0, ssrc=1)[0]
    with pytest.raises(RtpError, match="outside"):
        parse_payload(packet[:16] + struct.pack("!H", 48) + packet[18:], fmt)
    with pytest.raises(RtpError, match="past the packet"):
        parse_payload(packet[:200], fmt)


@needs_native
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize(("packing", "aligned"), [(GPM, False), (BPM, False), (GPM, True)])
def test_c_packetizer_equals_twin(fmt: VideoFormat, packing: str, aligned: bool) -> None:
    frame = _frame(fmt, 3)
    mine = packetize(frame, fmt, seq=0x1FFF0, timestamp=123, ssrc=0xABCD, packing=packing, payload_type=98,
                     aligned=aligned)
    theirs = native.packetize(frame, fmt.width, fmt.height, fmt.pgroup_bytes, fmt.pgroup_pixels, mtu=1400,
                              bpm=packing == BPM, seq=0x1FFF0, timestamp=123, ssrc=0xABCD, payload_type=98,
                              aligned=aligned)
    assert theirs == mine


def test_line_slices_are_equal_packets() -> None:
    fmt = FORMATS[0]
    assert line_split(fmt, 1400) == 4
    packets = packetize(_frame(fmt), fmt, seq=0, timestamp=0, ssrc=1, aligned=True)
    assert len(packets) == 4 * 1080 and {len(p) for p in packets} == {12 + 2 + 6 + 1200}
    frames = _push_all(Depacketizer(fmt), packets)
    assert frames[0].complete and bytes(frames[0].data) == _frame(fmt)


def _twin_and_c(fmt: VideoFormat, packets: list[bytes]) -> tuple[list, list, dict, dict]:
    twin = Depacketizer(fmt)
    twin_frames = [(f.timestamp, f.complete, f.lost, bytes(f.data)) for f in _push_all(twin, packets)]
    rx = native.Receiver(-1, fmt.width, fmt.height, fmt.pgroup_bytes, fmt.pgroup_pixels, 96)
    c_frames = []
    buf = bytearray(fmt.frame_bytes)
    for p in packets:
        rc, info = rx.push(p, buf)
        if rc == 2:
            c_frames.append((info.timestamp, info.complete, info.lost, bytes(buf)))
            buf = bytearray(fmt.frame_bytes)
            rc, info = rx.push(p, buf)
        if rc == 1:
            c_frames.append((info.timestamp, info.complete, info.lost, bytes(buf)))
            buf = bytearray(fmt.frame_bytes)
    info = rx.flush()
    if info is not None:
        c_frames.append((info.timestamp, info.complete, info.lost, bytes(buf)))
    twin_frames += [(f.timestamp, f.complete, f.lost, bytes(f.data)) for f in twin.flush()]
    return twin_frames, c_frames, twin.counters, rx.stats()


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_c_depacketizer_equals_twin_under_damage(seed: int) -> None:
    """Loss, duplicates, reordering and garbage: the same frames, flags and counters both ways."""
    fmt = FORMATS[1]
    rng = random.Random(seed)
    packets: list[bytes] = []
    seq = rng.randrange(1 << 32)
    for n in range(4):
        frame = packetize(_frame(fmt, n), fmt, seq=seq, timestamp=n * 3000, ssrc=5)
        seq += len(frame)
        packets += frame
    damaged = []
    for p in packets:
        roll = rng.random()
        if roll < 0.05:
            continue
        if roll < 0.08:
            damaged += [p, p]
        elif roll < 0.1:
            damaged.append(rng.randbytes(rng.randrange(40)) + p[rng.randrange(len(p)):])
        else:
            damaged.append(p)
    if seed % 2:
        i = rng.randrange(len(damaged) - 1)
        damaged[i], damaged[i + 1] = damaged[i + 1], damaged[i]
    twin_frames, c_frames, twin_counts, c_counts = _twin_and_c(fmt, damaged)
    assert c_frames == twin_frames
    for name in ("packets", "bad_rtp", "bad_pt", "bad_ssrc", "bad_segment", "late", "lost", "frames_complete",
                 "frames_incomplete"):
        assert c_counts[name] == twin_counts[name], name


@needs_native
def test_c_receiver_from_socket_checks_source() -> None:
    fmt = FORMATS[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx_sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx_sock.bind(("127.0.0.1", 0))
        rx = native.Receiver(rx_sock.fileno(), fmt.width, fmt.height, fmt.pgroup_bytes, fmt.pgroup_pixels, 96)
        rx.set_source("127.0.0.2")
        frame = _frame(fmt)
        for p in packetize(frame, fmt, seq=0, timestamp=0, ssrc=1):
            tx.sendto(p, rx_sock.getsockname())
        assert rx.poll(bytearray(fmt.frame_bytes), 200) is None
        assert rx.stats()["bad_source"] > 0 and rx.stats()["packets"] == 0
        rx.set_source("127.0.0.1")
        buf = bytearray(fmt.frame_bytes)
        for p in packetize(frame, fmt, seq=100, timestamp=3000, ssrc=1):
            tx.sendto(p, rx_sock.getsockname())
        info = rx.poll(buf, 2000)
        assert info is not None and info.complete and bytes(buf) == frame


@needs_native
def test_c_send_spreads_over_the_period() -> None:
    fmt = VideoFormat("YCbCr-4:2:2", 10, 640, 480)
    p = native.Packetizer(640, 480, 5, 2, mtu=1400, bpm=False, payload_type=96, ssrc=1)
    count = p.packetize(os.urandom(fmt.frame_bytes), 0, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx_sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx_sock.bind(("127.0.0.1", 0))
        start = time.monotonic()
        p.send(tx.fileno(), "127.0.0.1", rx_sock.getsockname()[1], count, 20_000_000)
        took = time.monotonic() - start
    assert p.stats()["packets_sent"] == count
    assert took >= 0.019   # spread over 20 ms, not one burst
