"""A synthetic, paced RTP sender for tests (RFC 3550 packets built with ``msm.sdk.rtp``).

Packet ``n`` is due at ``start + n / rate`` on the event loop's clock and
carries the RTP timestamp ``first_timestamp + n * clock_rate / rate``, as an
encoder with a steady capture clock would; so any variation in arrival spacing
that a receiver measures is the network's (and the event loop's), never the
source's timestamps. SSRC, first sequence number, first timestamp and payload
bytes come from ``random.Random(seed)`` unless given, so a run is repeatable.
A sender report goes out on the RTCP port every ``sr_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from msm.sdk.rtp import RtpPacket, SenderReport, ntp_from_unix

Address = tuple[str, int]

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Sent:
    """One RTP packet as sent."""

    seq: int
    timestamp: int
    due_at: float   #: when the pacing schedule wanted it out (event-loop clock)
    sent_at: float  #: when it was handed to the kernel


class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # type: ignore[override]
        self.received += 1

    def error_received(self, exc: Exception) -> None:
        pass


class RtpSource:
    """Sends ``count`` RTP packets to ``rtp_addr`` at ``rate`` packets per second.

    The defaults make a 90 kHz video-like stream at 400 packets/s (a timestamp
    step of 225), so 2000 packets take 5 s. Payload type 34 (H.263) is a static
    type with a 90 kHz clock, so a capture tool knows the clock rate without
    an SDP.
    """

    def __init__(
        self,
        rtp_addr: Address,
        rtcp_addr: Address | None = None,
        *,
        seed: int,
        rate: float = 400.0,
        clock_rate: int = 90_000,
        payload_type: int = 34,
        payload_size: int = 160,
        ssrc: int | None = None,
        first_seq: int | None = None,
        first_timestamp: int | None = None,
        sr_interval: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        if rate <= 0 or clock_rate <= 0:
            raise ValueError("rate and clock_rate must be positive")
        rng = random.Random(seed)
        self.rtp_addr = rtp_addr
        self.rtcp_addr = rtcp_addr
        self.rate = rate
        self.clock_rate = clock_rate
        self.payload_type = payload_type
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        self.first_seq = rng.getrandbits(16) if first_seq is None else first_seq
        self.first_timestamp = rng.getrandbits(32) if first_timestamp is None else first_timestamp
        # One payload, reused: its bytes do not matter, only that they are fixed.
        self.payload = rng.randbytes(payload_size)
        self.sr_interval = sr_interval
        self.host = host
        self.sent: list[Sent] = []
        self.rtcp_sent = 0
        self._octets = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._rtcp_counter = _Counter()

    @property
    def rtcp_received(self) -> int:
        """RTCP datagrams that came back to the source's RTCP socket (receiver reports)."""
        return self._rtcp_counter.received

    def timestamp_of(self, n: int) -> int:
        return (self.first_timestamp + round(n * self.clock_rate / self.rate)) & _U32

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._rtp, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(self.host, 0))
        if self.rtcp_addr is not None:
            self._rtcp, _ = await loop.create_datagram_endpoint(
                lambda: self._rtcp_counter, local_addr=(self.host, 0))

    def close(self) -> None:
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None

    async def __aenter__(self) -> RtpSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def send(self, count: int) -> list[Sent]:
        """Send the next ``count`` packets, paced; returns what was sent in this call."""
        if self._rtp is None:
            raise RuntimeError("start() the source first")
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = len(self.sent)
        next_sr = start
        for i in range(count):
            due = start + i / self.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            n = first + i
            packet = RtpPacket(
                payload_type=self.payload_type,
                sequence_number=(self.first_seq + n) & _U16,
                timestamp=self.timestamp_of(n),
                ssrc=self.ssrc,
                marker=False,
                payload=self.payload,
            )
            self._rtp.sendto(bytes(packet), self.rtp_addr)
            self._octets += len(self.payload)
            self.sent.append(Sent(packet.sequence_number, packet.timestamp, due, loop.time()))
            if self._rtcp is not None and self.rtcp_addr is not None and loop.time() >= next_sr:
                next_sr += self.sr_interval
                report = SenderReport(
                    ssrc=self.ssrc,
                    ntp_timestamp=ntp_from_unix(time.time()),
                    rtp_timestamp=packet.timestamp,
                    packet_count=len(self.sent) & _U32,
                    octet_count=self._octets & _U32,
                )
                self._rtcp.sendto(bytes(report), self.rtcp_addr)
                self.rtcp_sent += 1
        return self.sent[first:]
