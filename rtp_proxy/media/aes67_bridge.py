"""ST 2110-30 / AES67 bridges: L16/L24 audio from the network into blocks of PCM, and back out.

A few thousand packets a second at most (125 us packets: 8000/s), so the
per-packet work stays in Python (``msm.sdk.aes67``). :class:`Aes67Ingress`
owns a UDP socket (unicast or multicast, optionally source-specific) and hands
each packet's PCM to a callback or a bounded queue; :class:`Aes67Egress` is a
group receiver that cuts each block of PCM into packets of the stream's packet
time and sends them at that pace, and writes the stream's SDP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msm.rtp_proxy.media.groups import FrameInfo
from msm.rtp_proxy.media.st2110_bridge import _open_socket
from msm.sdk.aes67 import AudioDepacketizer, AudioFormat, packetize_audio
from msm.sdk.errors import ConfigError
from msm.sdk.st2110_sdp import AudioStream, audio_sdp, parse_st2110

__all__ = ["Aes67Egress", "Aes67Ingress"]

#: Packets' PCM waiting in an ingress queue: one second at 1 ms packets; a
#: consumer further behind loses the newest, counted.
INGRESS_QUEUE = 1000
#: Blocks waiting for the egress: at a group's typical 10-20 ms blocks, well
#: under a second of audio; more only adds latency.
EGRESS_QUEUE = 50
#: The egress wakes once a millisecond at most (125 us packets go 8 at a time).
TICK_NS = 1_000_000


def _format(stream: AudioStream) -> AudioFormat:
    return AudioFormat(stream.encoding, stream.rate, stream.channels, stream.ptime_us)


class Aes67Ingress:
    """An AES67 stream arriving on ``address:port``: ``on_audio(pcm, rtp_timestamp)`` per packet, or :attr:`audio`."""

    def __init__(self, stream: AudioStream, *, on_audio: Callable[[bytes, int], None] | None = None,
                 sender: str | None = None, interface: str = "0.0.0.0", fill_gaps: bool = False) -> None:
        self.stream = stream
        self.on_audio = on_audio
        self.audio: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=INGRESS_QUEUE)
        self.depacketizer = AudioDepacketizer(_format(stream), payload_type=stream.payload_type, fill_gaps=fill_gaps)
        self.counters = {"blocks_dropped_queue_full": 0, "callback_errors": 0, "bad_source": 0}
        self.sock = _open_socket(stream.address, stream.port, source=stream.source, interface=interface)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._only_from = sender or stream.source
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"aes67-in:{self.port}", daemon=True)

    @classmethod
    def from_sdp(cls, path: str | Path, **kwargs: Any) -> Aes67Ingress:
        stream = parse_st2110(Path(path).read_text(encoding="utf-8", errors="replace"))
        if not isinstance(stream, AudioStream):
            raise ConfigError(f"{path}: a video description; the audio ingress takes ST 2110-30 / AES67")
        return cls(stream, **kwargs)

    def start(self) -> Aes67Ingress:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> Aes67Ingress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        return {**self.depacketizer.counters, **self.counters}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if self._only_from and peer[0] != self._only_from:
                self.counters["bad_source"] += 1
                continue
            pcm = self.depacketizer.push(packet)
            if not pcm:
                continue
            timestamp = int.from_bytes(packet[4:8], "big")
            if self.on_audio is not None:
                try:
                    self.on_audio(pcm, timestamp)
                except Exception:  # a consumer's fault must not stop the stream
                    self.counters["callback_errors"] += 1
                continue
            try:
                self.audio.put_nowait((pcm, timestamp))
            except queue.Full:
                self.counters["blocks_dropped_queue_full"] += 1


class Aes67Egress:
    """Blocks of PCM in (:meth:`deliver`, a group receiver) -> AES67 packets to ``stream.address:stream.port``."""

    def __init__(self, stream: AudioStream, *, ssrc: int = 0x3011_0001) -> None:
        self.stream = stream
        self.fmt = _format(stream)
        self.ssrc = ssrc & 0xFFFFFFFF
        ip = ipaddress.ip_address(stream.address)
        self.sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        if ip.is_multicast and ip.version == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, stream.ttl)
        self.sock.connect((stream.address, stream.port))
        self._todo: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=EGRESS_QUEUE)
        self._seq = 0
        self.counters = {"blocks_sent": 0, "packets_sent": 0, "blocks_busy": 0, "blocks_bad_size": 0,
                         "send_errors": 0}
        self._thread = threading.Thread(target=self._run, name=f"aes67-out:{stream.port}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return f"aes67:{self.stream.address}:{self.stream.port}"

    def sdp(self) -> str:
        return audio_sdp(self.stream)

    def write_sdp(self, path: str | Path) -> Path:
        out = Path(path)
        out.write_text(self.sdp(), encoding="utf-8")
        return out

    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        if not len(payload) or len(payload) % self.fmt.packet_bytes:
            self.counters["blocks_bad_size"] += 1
            return "not_whole_packets"
        try:
            self._todo.put_nowait((bytes(payload), info.timestamp))
        except queue.Full:
            self.counters["blocks_busy"] += 1
            return "egress_busy"
        return None

    def send(self, pcm: bytes, timestamp: int) -> str | None:
        """:meth:`deliver` without a group (``timestamp``: the first sample's, on the sample clock)."""
        return self.deliver(memoryview(pcm), FrameInfo(seq=0, timestamp=timestamp))

    def _run(self) -> None:
        due = time.monotonic_ns()
        per_tick = max(1, TICK_NS // (self.fmt.ptime_us * 1000))
        while (item := self._todo.get()) is not None:
            pcm, timestamp = item
            packets = packetize_audio(pcm, self.fmt, seq=self._seq, timestamp=timestamp, ssrc=self.ssrc,
                                      payload_type=self.stream.payload_type)
            self._seq = (self._seq + len(packets)) & 0xFFFF
            due = max(due, time.monotonic_ns())
            for k in range(0, len(packets), per_tick):
                for packet in packets[k:k + per_tick]:
                    try:
                        self.sock.send(packet)
                    except OSError:
                        self.counters["send_errors"] += 1
                due += per_tick * self.fmt.ptime_us * 1000
                time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
            self.counters["blocks_sent"] += 1
            self.counters["packets_sent"] += len(packets)

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._todo.put(None, timeout=1)
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> Aes67Egress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
