"""AES67 / ST 2110-30 L16 and L24: packet sizes, timestamps, loss and bad packets; the bridge's blocks of
PCM (what a group carries), its stream from MCM's fields and its egress's packet clock."""

from __future__ import annotations

import os
import socket
import time

import pytest

from msm.rtp_proxy.media.aes67_bridge import Aes67Egress, Aes67Ingress, AudioBlock, audio_stream
from msm.sdk.aes67 import AudioDepacketizer, AudioFormat, packetize_audio
from msm.sdk.errors import ConfigError
from msm.sdk.mcm_values import AudioPayload, St2110Connection
from msm.sdk.st2110_sdp import AudioStream


@pytest.mark.parametrize(("encoding", "ptime", "size"), [("L24", 1000, 288), ("L24", 125, 36), ("L16", 1000, 192),
                                                         ("L16", 125, 24)])
def test_packet_sizes_and_timestamps(encoding: str, ptime: int, size: int) -> None:
    fmt = AudioFormat(encoding, 48000, 2, ptime)
    pcm = bytes(range(256)) * (fmt.packet_bytes * 10 // 256) + bytes(fmt.packet_bytes * 10 % 256)
    packets = packetize_audio(pcm, fmt, seq=65535, timestamp=0xFFFFFFF0, ssrc=9)
    assert [len(p) - 12 for p in packets] == [size] * 10
    stamps = [int.from_bytes(p[4:8], "big") for p in packets]
    assert stamps[1] == (0xFFFFFFF0 + fmt.samples_per_packet) & 0xFFFFFFFF
    depack = AudioDepacketizer(fmt)
    assert b"".join(depack.push(p) for p in packets) == pcm
    assert depack.counters["packets"] == 10 and depack.counters["lost"] == 0


def test_loss_and_bad_packets_counted() -> None:
    fmt = AudioFormat("L24", 48000, 2, 125)
    packets = packetize_audio(bytes(fmt.packet_bytes * 5), fmt, seq=1, timestamp=0, ssrc=9)
    depack = AudioDepacketizer(fmt, fill_gaps=True)
    assert depack.push(packets[0])
    assert len(depack.push(packets[2])) == 2 * fmt.packet_bytes   # one packet of silence filled in
    assert depack.push(packets[1]) == b"" and depack.counters["late"] == 1
    assert depack.push(packets[3][:13]) == b"" and depack.counters["bad_length"] == 1
    assert depack.push(packets[3][:1] + b"\x21" + packets[3][2:]) == b"" and depack.counters["bad_pt"] == 1
    assert depack.push(b"\x00" * 20) == b"" and depack.counters["bad_rtp"] == 1
    assert depack.counters["lost"] == 1 and depack.last_error


def test_bad_formats() -> None:
    with pytest.raises(ConfigError):
        AudioFormat("L20")
    with pytest.raises(ConfigError):
        AudioFormat(ptime_us=250)
    with pytest.raises(ConfigError):
        packetize_audio(b"\0" * 7, AudioFormat(), seq=0, timestamp=0, ssrc=0)


# -- the bridge's blocks, its stream from MCM's fields, its egress's packet clock ---------------------------
def _ingress_blocks(ptime: int, block_packets: int, packets: list[bytes]) -> tuple[list[tuple[bytes, AudioBlock]],
                                                                                     dict[str, int]]:
    """``packets`` sent to an ingress cutting blocks of ``block_packets``: the blocks, its counters."""
    fmt = AudioFormat("L24", 48000, 2, ptime)
    blocks: list[tuple[bytes, AudioBlock]] = []
    stream = AudioStream("127.0.0.1", 0, "L24", 48000, 2, ptime)
    with Aes67Ingress(stream, on_block=lambda view, b: blocks.append((bytes(view), b)),
                      block_bytes=block_packets * fmt.packet_bytes) as ingress, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for packet in packets:
            sender.sendto(packet, ("127.0.0.1", ingress.port))
        deadline = time.monotonic() + 3
        while ingress.stats()["packets"] + ingress.stats()["late"] < len(packets) and time.monotonic() < deadline:
            time.sleep(0.01)
    return blocks, ingress.stats()


def test_ingress_blocks_carry_the_first_samples_timestamp_and_fill_a_gap() -> None:
    fmt = AudioFormat("L24", 48000, 2, 1000)
    pcm = os.urandom(fmt.packet_bytes * 12)
    packets = packetize_audio(pcm, fmt, seq=100, timestamp=0xFFFFFF00, ssrc=7)
    lost = packets[:4] + packets[5:]   # the fifth packet never comes
    blocks, stats = _ingress_blocks(1000, 4, lost)
    assert stats["lost"] == 1 and len(blocks) == 3
    assert [b.timestamp for _, b in blocks] == [(0xFFFFFF00 + k * 4 * 48) & 0xFFFFFFFF for k in range(3)]
    assert [b.lost for _, b in blocks] == [0, 1, 0]
    silence = bytes(fmt.packet_bytes)
    assert b"".join(data for data, _ in blocks) == pcm[:4 * 288] + silence + pcm[5 * 288:]


def test_ingress_blocks_from_packets_of_any_size_and_a_jump_starts_again() -> None:
    """ffmpeg's RTP L24 packets are not 1 ms long: blocks are cut by samples, not by packets; a sender whose
    timestamps jump (another one) drops the partial block and starts over, counted."""
    fmt = AudioFormat("L24", 48000, 2, 1000)
    pcm = os.urandom(6 * 100 * 5)   # 500 samples in packets of 100
    packets = [p[:12] + pcm[k * 600:(k + 1) * 600] for k, p in enumerate(
        packetize_audio(bytes(fmt.packet_bytes * 5), fmt, seq=0, timestamp=0, ssrc=7))]
    packets = [p[:4] + (k * 100).to_bytes(4, "big") + p[8:] for k, p in enumerate(packets)]
    jump = packetize_audio(bytes(fmt.packet_bytes), fmt, seq=5, timestamp=90_000, ssrc=7)
    blocks, stats = _ingress_blocks(1000, 1, packets + jump)
    assert [len(data) for data, _ in blocks] == [288] * 11
    assert b"".join(data for data, _ in blocks[:10]) == pcm[:10 * 288]   # 480 samples of the 500; 20 left over
    assert [b.timestamp for _, b in blocks] == [k * 48 for k in range(10)] + [90_000]
    assert stats["discontinuities"] == 1


def test_a_block_that_is_not_whole_packets_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a whole number of 288-byte packets"):
        Aes67Ingress(AudioStream("127.0.0.1", 0), block_bytes=300)


def test_egress_keeps_its_packet_clock_with_one_packet_blocks() -> None:
    """Blocks of one 125 us packet go out at 8000 a second, not one a millisecond."""
    fmt = AudioFormat("L24", 48000, 2, 125)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)   # the test may be descheduled a while
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        egress = Aes67Egress(AudioStream("127.0.0.1", receiver.getsockname()[1], "L24", 48000, 2, 125))
        start = time.monotonic()
        for k in range(800):   # 100 ms of audio, handed over as fast as it comes
            assert egress.send(bytes([k % 256]) * fmt.packet_bytes, k * 6) is None
        got = [receiver.recv(2048) for _ in range(800)]
        took = time.monotonic() - start
        egress.close()
    assert [p[12] for p in got] == [k % 256 for k in range(800)]
    assert 0.08 <= took < 0.5, took


@pytest.mark.parametrize(("audio", "stream"), [
    (AudioPayload(channels=2, sample_rate=48000, format="pcm_s24be", packet_time="1ms"),
     AudioStream("239.1.1.1", 5004, "L24", 48000, 2, 1000, 100, source="192.0.2.1")),
    (AudioPayload(channels=8, sample_rate=96000, format="pcm_s16be", packet_time="125us"),
     AudioStream("239.1.1.1", 5004, "L16", 96000, 8, 125, 100, source="192.0.2.1")),
])
def test_mcm_audio_as_the_bridges_stream(audio: AudioPayload, stream: AudioStream) -> None:
    st = St2110Connection(transport="st2110-30", ip_addr="239.1.1.1", port=5004, payload_type=100,
                          multicast_source_ip_addr="192.0.2.1")
    assert audio_stream(st, audio) == stream


def test_mcm_audio_the_bridge_cannot_carry() -> None:
    st = St2110Connection(transport="st2110-30", ip_addr="127.0.0.1", port=5004)
    with pytest.raises(ConfigError, match=r"^payload.audio.packetTime: the ST 2110-30 bridge takes 1ms or 125us"):
        audio_stream(st, AudioPayload(packet_time="4ms"))
    with pytest.raises(ConfigError, match=r"^payload.audio.format: st2110-30 carries pcm_s24be \(L24\)"):
        audio_stream(st, AudioPayload(format="pcm_s8"))
