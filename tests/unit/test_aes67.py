"""AES67 / ST 2110-30 L16 and L24: packet sizes, timestamps, loss and bad packets."""

from __future__ import annotations

import pytest

from msm.sdk.aes67 import AudioDepacketizer, AudioFormat, packetize_audio
from msm.sdk.errors import ConfigError


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
