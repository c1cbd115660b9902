"""ST 2110-30 / AES67 bridges: L16/L24 audio from the network into blocks of PCM, and back out.

A few thousand packets a second at most (125 us packets: 8000/s), so the
per-packet work stays in Python (``msm.sdk.aes67``). :class:`Aes67Ingress`
owns a UDP socket (unicast or multicast, optionally source-specific) and hands
each packet's PCM to a callback or a bounded queue, or (``on_block``) blocks of
``block_bytes`` of PCM, whole packets of the stream's packet time, with the
first sample's RTP timestamp and the packets missing in them (filled with
silence so the timeline holds); :class:`Aes67Egress` is a group receiver that
cuts each block of PCM into packets of the stream's packet time and sends them
at that pace, and writes the stream's SDP.

A block is what a group carries as one frame: an ingress bridge publishes
blocks, an egress bridge takes any whole number of packets per frame.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msm.rtp_proxy.media.groups import FrameInfo
from msm.rtp_proxy.media.st2110_bridge import _open_socket
from msm.sdk.aes67 import AudioDepacketizer, AudioFormat, packetize_audio
from msm.sdk.errors import ConfigError
from msm.sdk.mcm_values import AudioPayload, St2110Connection
from msm.sdk.st2110_sdp import AudioStream, audio_sdp, parse_st2110

__all__ = ["Aes67Egress", "Aes67Ingress", "AudioBlock", "audio_format", "audio_stream"]

#: Packets' PCM waiting in an ingress queue: one second at 1 ms packets; a
#: consumer further behind loses the newest, counted.
INGRESS_QUEUE = 1000
#: Blocks waiting for the egress: 4000 one-packet blocks is EGRESS_SECONDS at 125 us packets (1000,
#: 125 ms, overflowed at load 8 on two cores); besides the count the audio waiting is bounded by
#: EGRESS_SECONDS. More only adds latency.
EGRESS_QUEUE = 4000
#: Seconds of audio that may wait for the egress (a bigger block is taken only into an empty queue):
#: rides out a stall of the node's frames of half a second (measured: 250 ms was not enough on a 2-core
#: host at load 8, frames from another node coming in bursts).
EGRESS_SECONDS = 0.5
#: The egress wakes once a millisecond at most (125 us packets go 8 at a time).
TICK_NS = 1_000_000
#: Behind its packet clock with blocks waiting (a stalled thread, a burst from another node), the egress
#: catches up by sending without sleeping, so the latency it adds comes back down; after a pause in the
#: blocks (none waiting) more than this behind, or ever more than MAX_CATCH_UP_NS, it starts its clock
#: again from now.
CATCH_UP_NS = 20_000_000
MAX_CATCH_UP_NS = 1_000_000_000
#: Largest block: 100 ms of the largest stream (64 channels of L24 at 96 kHz is 1.8 MB); a group frame
#: of audio is normally 1 ms or less.
MAX_BLOCK_BYTES = 2 << 20
#: MCM's audio formats and packet times the bridge carries, as RTP's encodings and microseconds.
_ENCODINGS = {"pcm_s24be": "L24", "pcm_s16be": "L16"}
_PTIMES = {"1ms": 1000, "125us": 125}


def audio_format(stream: AudioStream) -> AudioFormat:
    """The stream's sample format (``ConfigError`` for a packet time other than 1 ms or 125 us)."""
    return AudioFormat(stream.encoding, stream.rate, stream.channels, stream.ptime_us)


def audio_stream(st: St2110Connection, audio: AudioPayload, where: str = "payload.audio") -> AudioStream:
    """MCM's st2110-30 connection as the AES67 bridge's stream (``where``: the audio payload's path in errors)."""
    if audio.packet_time not in _PTIMES:
        raise ConfigError(f"{where}.packetTime: the ST 2110-30 bridge takes {' or '.join(_PTIMES)}, "
                          f"got {audio.packet_time!r}")
    if audio.format not in _ENCODINGS:
        raise ConfigError(f"{where}.format: st2110-30 carries pcm_s24be (L24) or pcm_s16be (L16), "
                          f"got {audio.format!r}")
    stream = AudioStream(st.ip_addr, st.port, _ENCODINGS[audio.format], audio.sample_rate, audio.channels,
                         _PTIMES[audio.packet_time], st.payload_type, source=st.multicast_source_ip_addr or None)
    try:
        audio_format(stream)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return stream


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """A block out of the ingress: its first sample's RTP timestamp, the packets missing in it."""

    timestamp: int
    lost: int
    arrived_ns: int


class _Blocks:
    """Cuts the ingress's PCM into blocks of ``size`` bytes (bounded: never more than a block and one
    packet's PCM, or a second of filled silence, held)."""

    def __init__(self, fmt: AudioFormat, size: int, emit: Callable[[memoryview, AudioBlock], None]) -> None:
        self.fmt, self.size, self.emit = fmt, size, emit
        self.buf = bytearray()
        self.start = 0          # the RTP timestamp of buf's first sample
        self.lost = 0           # packets filled with silence in buf
        self.discontinuities = 0

    def push(self, pcm: bytes, timestamp: int, lost: int) -> None:
        if self.buf:
            expected = (self.start + len(self.buf) // self.fmt.sample_bytes) & 0xFFFFFFFF
            if timestamp != expected:   # the sender jumped (restarted, or another one): a partial block goes
                self.discontinuities += 1
                self.buf.clear()
                self.lost = 0
        if not self.buf:
            self.start = timestamp
        self.buf += pcm
        self.lost += lost
        while len(self.buf) >= self.size:
            # New buffers rather than resizing this one: a view a consumer kept cannot stop the stream.
            block, self.buf = self.buf[:self.size], self.buf[self.size:]
            self.emit(memoryview(block), AudioBlock(self.start, self.lost, time.monotonic_ns()))
            self.start = (self.start + self.size // self.fmt.sample_bytes) & 0xFFFFFFFF
            self.lost = 0


class Aes67Ingress:
    """An AES67 stream arriving on ``address:port``: ``on_audio(pcm, rtp_timestamp)`` per packet, or :attr:`audio`;
    or, with ``on_block``, blocks of ``block_bytes`` (a whole number of packets; default one packet), gaps
    filled with silence.

    ``on_block``'s view is only valid during the call. The timestamp handed on is the first sample's (a
    packet's own, or less the silence put before it)."""

    def __init__(self, stream: AudioStream, *, on_audio: Callable[[bytes, int], None] | None = None,
                 on_block: Callable[[memoryview, AudioBlock], None] | None = None, block_bytes: int = 0,
                 sender: str | None = None, interface: str = "0.0.0.0", fill_gaps: bool = False) -> None:
        self.stream = stream
        self.fmt = fmt = audio_format(stream)
        block_bytes = block_bytes or fmt.packet_bytes
        if block_bytes % fmt.packet_bytes or not 0 < block_bytes <= MAX_BLOCK_BYTES:
            raise ConfigError(f"a block of {block_bytes} bytes is not a whole number of {fmt.packet_bytes}-byte "
                              f"packets up to {MAX_BLOCK_BYTES} bytes")
        self.block_bytes = block_bytes
        self.blocks = _Blocks(fmt, block_bytes, on_block) if on_block is not None else None
        self.on_audio = on_audio
        self.audio: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=INGRESS_QUEUE)
        self.depacketizer = AudioDepacketizer(fmt, payload_type=stream.payload_type,
                                              fill_gaps=fill_gaps or on_block is not None)
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
        extra = {"discontinuities": self.blocks.discontinuities} if self.blocks is not None else {}
        return {**self.depacketizer.counters, **self.counters, **extra}

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
            lost = self.depacketizer.counters["lost"]
            pcm = self.depacketizer.push(packet)
            if not pcm:
                continue
            lost = self.depacketizer.counters["lost"] - lost
            body = len(packet) - 12 - 4 * (packet[0] & 0x0F)
            # The first sample's: with gaps filled, the silence comes before this packet's own samples.
            timestamp = (int.from_bytes(packet[4:8], "big") - (len(pcm) - body) // self.fmt.sample_bytes) \
                & 0xFFFFFFFF
            if self.blocks is not None:
                try:
                    self.blocks.push(pcm, timestamp, lost)
                except Exception:  # a consumer's fault must not stop the stream
                    self.counters["callback_errors"] += 1
                continue
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
        self.fmt = audio_format(stream)
        self.ssrc = ssrc & 0xFFFFFFFF
        ip = ipaddress.ip_address(stream.address)
        self.sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        if ip.is_multicast and ip.version == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, stream.ttl)
        self.sock.connect((stream.address, stream.port))
        self._todo: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=EGRESS_QUEUE)
        # Bytes put into and taken out of _todo, each written by one thread only: in less out waits,
        # bounded by _max_queued.
        self._in_bytes = self._out_bytes = 0
        self._max_queued = int(self.fmt.rate * self.fmt.sample_bytes * EGRESS_SECONDS)
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
        if not len(payload) or len(payload) % self.fmt.packet_bytes or len(payload) > MAX_BLOCK_BYTES:
            self.counters["blocks_bad_size"] += 1
            return "not_whole_packets"
        queued = self._in_bytes - self._out_bytes
        if queued and queued + len(payload) > self._max_queued:
            self.counters["blocks_busy"] += 1
            return "egress_busy"
        try:
            self._todo.put_nowait((bytes(payload), info.timestamp))
        except queue.Full:
            self.counters["blocks_busy"] += 1
            return "egress_busy"
        self._in_bytes += len(payload)
        return None

    def send(self, pcm: bytes, timestamp: int) -> str | None:
        """:meth:`deliver` without a group (``timestamp``: the first sample's, on the sample clock)."""
        return self.deliver(memoryview(pcm), FrameInfo(seq=0, timestamp=timestamp))

    def _run(self) -> None:
        # ``due``: when the next packet goes on the packet clock. A little behind it (a late block, a slow
        # wake-up) the egress catches up by not sleeping; far behind, or after a pause, it starts again.
        due = time.monotonic_ns()
        ptime_ns = self.fmt.ptime_us * 1000
        per_tick = max(1, TICK_NS // ptime_ns)
        while (item := self._todo.get()) is not None:
            pcm, timestamp = item
            self._out_bytes += len(pcm)
            waiting = self._in_bytes - self._out_bytes
            packets = packetize_audio(pcm, self.fmt, seq=self._seq, timestamp=timestamp, ssrc=self.ssrc,
                                      payload_type=self.stream.payload_type)
            self._seq = (self._seq + len(packets)) & 0xFFFF
            behind = time.monotonic_ns() - due
            if behind > MAX_CATCH_UP_NS or (behind > CATCH_UP_NS and not waiting):
                due += behind
            for k in range(0, len(packets), per_tick):
                # Packets may leave up to half a tick early: fed live (a block a packet time), the egress
                # then sends as blocks come instead of sleeping a few microseconds 8000 times a second.
                wait = due - time.monotonic_ns()
                if wait > TICK_NS // 2:
                    time.sleep(wait / 1e9)
                chunk = packets[k:k + per_tick]
                for packet in chunk:
                    try:
                        self.sock.send(packet)
                    except OSError:
                        self.counters["send_errors"] += 1
                due += len(chunk) * ptime_ns
            self.counters["blocks_sent"] += 1
            self.counters["packets_sent"] += len(packets)

    @property
    def queued_bytes(self) -> int:
        return max(0, self._in_bytes - self._out_bytes)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._todo.put(None, timeout=1)
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> Aes67Egress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
