"""ST 2110 bridges on loopback: egress -> ingress -> group -> egress -> ingress, native and twin, and multicast."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from msm.rtp_proxy.media.aes67_bridge import Aes67Egress, Aes67Ingress
from msm.rtp_proxy.media.groups import Group
from msm.rtp_proxy.media.st2110_bridge import (
    LentFrame,
    St2110Egress,
    St2110Ingress,
    _Lender,
    borrowable,
    group_feeder,
    native_reason,
)
from msm.sdk.aes67 import AudioFormat
from msm.sdk.rfc4175 import Depacketizer, VideoFormat, timestamp_for
from msm.sdk.st2110_sdp import AudioStream, VideoStream

FMT = VideoFormat("YCbCr-4:2:2", 10, 320, 240)
FRAMES = 10


def _frames(n: int) -> list[bytes]:
    return [os.urandom(FMT.frame_bytes) for _ in range(n)]


def _chain(native: bool) -> None:
    sent = _frames(FRAMES)
    last = St2110Ingress(VideoStream("127.0.0.1", 0, FMT), native=native, queue_depth=FRAMES).start()
    second = St2110Egress(VideoStream("127.0.0.1", last.port, FMT), native=native)
    group = Group("urn:test:st2110")
    group.add_receiver(second)
    first_in = St2110Ingress(VideoStream("127.0.0.1", 0, FMT), native=native, on_frame=group_feeder(group)).start()
    first_out = St2110Egress(VideoStream("127.0.0.1", first_in.port, FMT), native=native)
    try:
        start = time.monotonic()
        for k, frame in enumerate(sent):   # at the frame rate, as a live source would
            time.sleep(max(0.0, start + k / 30 - time.monotonic()))
            assert first_out.send(frame, timestamp_for(k, 30)) is None
        got = []
        for _ in sent:
            try:
                got.append(last.frames.get(timeout=10))
            except queue.Empty:
                pytest.fail(f"{len(got)} frames at the end; {first_out.stats()} {first_in.stats()} "
                            f"{group.receiver_stats} {second.stats()} {last.stats()}")
    finally:
        for bridge in (first_out, first_in, second, last):
            bridge.close()
    assert [data for data, _f in got] == sent
    assert all(f.complete for _d, f in got) and [f.timestamp for _d, f in got] == [3000 * k for k in range(FRAMES)]
    assert group.frames_in == FRAMES and group.receiver_stats[second.name].frames == FRAMES
    assert first_in.stats()["lost"] == 0 and last.stats()["frames_complete"] == FRAMES


@pytest.mark.skipif(native_reason() is not None, reason=f"C core not built: {native_reason()}")
def test_chain_native() -> None:
    _chain(True)


def test_chain_python_twin() -> None:
    _chain(False)


@pytest.mark.skipif(native_reason() is not None, reason=f"C core not built: {native_reason()}")
def test_frame_form_sends_the_packetizers_packets() -> None:
    """The egress's FrameSlot (headers apart, payloads as spans of the frame) makes msm_st2110_packetize's packets."""
    from msm.ext import st2110

    frame = os.urandom(FMT.frame_bytes)
    for aligned, bpm in ((True, False), (False, False), (False, True)):
        kwargs = {"mtu": 1400, "bpm": bpm, "payload_type": 96, "ssrc": 7, "aligned": aligned}
        packer, slot = st2110.Packetizer(320, 240, 5, 2, **kwargs), st2110.FrameSlot(320, 240, 5, 2, **kwargs)
        count = packer.packetize(frame, 65530, 1234)
        assert slot.fill(frame, 65530, 1234) == count and slot.packets() == packer.packets(count)
        assert slot.fill(memoryview(bytearray(frame)), 65530, 1234, borrow=True) == count
        assert slot.packets() == packer.packets(count)
    with pytest.raises(ValueError, match="expected"):
        slot.fill(frame[:-1], 0, 0)
    # Equal packets (the egress's at 640x480 and up): all one size but the last, two segments each,
    # and what the twin depacketizer rebuilds is the frame.
    fmt = VideoFormat("YCbCr-4:2:2", 10, 640, 480)
    frame = os.urandom(fmt.frame_bytes)
    slot = st2110.FrameSlot(640, 480, 5, 2, mtu=1400, bpm=False, payload_type=96, ssrc=7, aligned=True, equal=True)
    assert slot.mode == 3 and slot.fill(frame, 0, 90) == slot.max_packets == 561
    with St2110Egress(VideoStream("127.0.0.1", 9, fmt)) as big, St2110Egress(VideoStream("127.0.0.1", 9, FMT)) as small:
        assert big.packets_per_frame == 561 and small.packets_per_frame == 240   # 320x240: line slices
    packets = slot.packets()
    assert {len(p) for p in packets[:-1]} == {1396} and len(packets[-1]) <= 1396
    twin = Depacketizer(fmt, payload_type=96)
    done = [f for p in packets for f in twin.push(p)]
    assert len(done) == 1 and done[0].complete and bytes(done[0].data) == frame


def test_an_ingress_lends_its_frames_and_reuses_them_once_released() -> None:
    lender = _Lender(100, 2)
    first, second, spare = lender.take(), lender.take(), lender.take()
    assert isinstance(first, LentFrame) and isinstance(second, LentFrame) and not isinstance(spare, LentFrame)
    assert lender.take() is spare            # all lent: the spare again (receivers copy it)
    view = memoryview(first)
    assert borrowable(view) is first and borrowable(view[1:]) is None and borrowable(memoryview(spare)) is None
    first.hold()                             # an egress keeps it...
    first.release()                          # ...the ingress is done with it...
    assert lender.take() is spare            # ...still held: not reused
    first.release()                          # the egress sent it
    assert lender.take() is first


def test_wrong_size_and_busy_are_refused_not_raised() -> None:
    with St2110Egress(VideoStream("127.0.0.1", 9, FMT)) as egress:
        assert egress.send(b"\0" * 10, 0) == "wrong_size"
        answers = [egress.send(bytes(FMT.frame_bytes), k) for k in range(20)]
        assert "egress_busy" in answers and egress.stats()["frames_busy"] >= 1


def test_incomplete_frames_dropped_when_told() -> None:
    ingress = St2110Ingress(VideoStream("127.0.0.1", 0, FMT), hand_on_incomplete=False).start()
    import socket

    from msm.sdk.rfc4175 import packetize

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        packets = packetize(bytes(FMT.frame_bytes), FMT, seq=0, timestamp=0, ssrc=1)
        for p in packets[:5] + packets[6:]:
            tx.sendto(p, ("127.0.0.1", ingress.port))
        for p in packetize(bytes(FMT.frame_bytes), FMT, seq=len(packets), timestamp=3000, ssrc=1):
            tx.sendto(p, ("127.0.0.1", ingress.port))
        data, frame = ingress.frames.get(timeout=5)
    ingress.close()
    assert frame.timestamp == 3000 and frame.complete
    assert ingress.stats()["frames_dropped_incomplete"] == 1 and ingress.stats()["lost"] == 1
    with pytest.raises(queue.Empty):
        ingress.frames.get_nowait()


MULTICAST = """
import os, sys, time
from msm.rtp_proxy.media.st2110_bridge import St2110Egress, St2110Ingress
from msm.sdk.rfc4175 import VideoFormat
from msm.sdk.st2110_sdp import VideoStream
fmt = VideoFormat("YCbCr-4:2:2", 8, 64, 16)
frame = os.urandom(fmt.frame_bytes)
wrong = St2110Ingress(VideoStream("239.20.1.1", 5004, fmt, source="10.9.9.9")).start()   # another source: nothing
right = St2110Ingress(VideoStream("239.20.1.1", 5004, fmt, source="10.77.0.1")).start()
egress = St2110Egress(VideoStream("239.20.1.1", 5004, fmt, ttl=1))
time.sleep(0.2)
for k in range(3):
    egress.send(frame, k * 3000)
data, f = right.frames.get(timeout=5)
time.sleep(0.3)
assert data == frame and f.complete, f
assert wrong.frames.empty() and wrong.stats()["packets"] == 0
print("ok")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for a netns")
def test_source_specific_multicast_in_a_namespace() -> None:
    ns = f"msm-st2110-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "multicast", "on"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.77.0.1/32", "dev", "lo"], check=True)
        # The sender's source address is this route's src, the one the right ingress joins for.
        subprocess.run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo", "src", "10.77.0.1"], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", MULTICAST], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.parametrize("ptime_us", [1000, 125])
def test_aes67_egress_to_ingress_paced(ptime_us: int) -> None:
    stream = AudioStream("127.0.0.1", 0, "L24", 48000, 2, ptime_us)
    fmt = AudioFormat("L24", 48000, 2, ptime_us)
    pcm = os.urandom(fmt.packet_bytes * int(200_000 / ptime_us))   # 200 ms of audio
    with Aes67Ingress(stream) as ingress:
        egress = Aes67Egress(AudioStream("127.0.0.1", ingress.port, "L24", 48000, 2, ptime_us))
        start = time.monotonic()
        assert egress.send(pcm, 480) is None
        assert egress.send(b"\0" * 5, 0) == "not_whole_packets"
        got = []
        while len(b"".join(got)) < len(pcm):
            got.append(ingress.audio.get(timeout=5)[0])
        took = time.monotonic() - start
        egress.close()
    assert b"".join(got) == pcm and ingress.stats()["lost"] == 0
    assert 0.18 <= took < 2.0   # sent at the packet time's pace, not in one burst


def _pacer_reason() -> str | None:
    try:
        from msm.ext import pacer

        pacer.load()
    except Exception as exc:  # noqa: BLE001 - printed by the skip
        return str(exc)
    return native_reason()


@pytest.mark.skipif(_pacer_reason() is not None, reason=f"C pacer or ST 2110 core not built: {_pacer_reason()}")
def test_egress_through_the_st2110_21_pacer() -> None:
    sent = _frames(5)
    with St2110Ingress(VideoStream("127.0.0.1", 0, FMT), queue_depth=5) as ingress:
        with St2110Egress(VideoStream("127.0.0.1", ingress.port, FMT), pacing="narrow") as egress:
            start = time.monotonic()
            for k, frame in enumerate(sent):
                time.sleep(max(0.0, start + k / 30 - time.monotonic()))
                assert egress.send(frame, 0) is None
            got = [ingress.frames.get(timeout=5) for _ in sent]
    assert [data for data, _f in got] == sent and all(f.complete for _d, f in got)
    stamps = [f.timestamp for _d, f in got]
    # On the pacer's grid: each frame a whole number of frame periods (3000 ticks at 90 kHz) after the
    # one before, in order; one period apart unless the machine held the sender back past a slot.
    steps = [(b - a) % (1 << 32) for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(step > 0 and step % 3000 == 0 for step in steps), steps


@pytest.mark.skipif(native_reason() is not None, reason=f"C core not built: {native_reason()}")
def test_a_paced_egress_behind_catches_up_instead_of_dropping() -> None:
    """A pacer held up (a thread without its CPU for a while) leaves frames waiting: the one that finds
    CATCH_UP waiting behind it goes to the pacer marked ``hurry`` (sent at once, counted non-compliant)."""
    import threading

    class Stalled:   # the egress's pacer, held on its first frame; records each slot's hurry
        def __init__(self) -> None:
            self.entered, self.go, self.hurry = threading.Event(), threading.Event(), []

        def send_frame(self, buf: object, lengths: object = None) -> object:
            self.entered.set()
            self.go.wait(5)
            self.hurry.append(getattr(buf, "hurry", None))
            return None

    sent, pacer = _frames(5), Stalled()
    with St2110Egress(VideoStream("127.0.0.1", 9, FMT), pacer=pacer) as egress:
        assert egress.send(sent[0], 0) is None
        assert pacer.entered.wait(5)
        assert [egress.send(frame, 3000 * k) for k, frame in enumerate(sent[1:4], 1)] == [None] * 3
        assert egress.send(sent[4], 12000) == "egress_busy"   # the bounded queue is full
        pacer.go.set()
        deadline = time.monotonic() + 5
        while len(pacer.hurry) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert pacer.hurry == [False, True, False, False] and egress.counters["frames_catch_up"] == 1


@pytest.mark.skipif(_pacer_reason() is not None, reason=f"C pacer or ST 2110 core not built: {_pacer_reason()}")
def test_a_hurried_frame_goes_at_once_and_says_it_is_outside_the_model() -> None:
    import socket
    from fractions import Fraction

    from msm.ext import pacer as pacer_mod
    from msm.ext import st2110

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    slot = st2110.FrameSlot(640, 480, 5, 2, mtu=1400, bpm=False, payload_type=96, ssrc=7, aligned=True, equal=True)
    n = slot.fill(os.urandom(slot.frame_bytes), 0, 0)
    with rx, tx:
        pacer = pacer_mod.Pacer(tx.fileno(), rx.getsockname(), Fraction(10**9, 30), n, "wide", gso=True)
        slot.hurry = True
        start = time.monotonic()
        stats = pacer.send_frame(slot)
        took = time.monotonic() - start
        rx.settimeout(1)
        got = sum(1 for _ in range(n) if rx.recv(2048))
    assert stats.packets_sent == n == got and stats.late_packets == n and stats.max_late_ns >= 33_333_333
    assert took < 0.03   # at once (the frame's slot may be up to a period ahead): under 8 ms of sending
