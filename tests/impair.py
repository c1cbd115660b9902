"""A test-only impairment relay for RTP over UDP on loopback.

The relay listens on an RTP port and an RTCP port and forwards what arrives to
a target port pair. RTP datagrams go through an :class:`ImpairmentSchedule`
that drops and delays them; RTCP is relayed as is, at once. Datagrams that come
back *from* the target (receiver reports, NAT punches) go back, unimpaired, to
whoever last sent on that port.

The schedule is sans-IO and seeded, so a test can replay it and know in advance
exactly which datagrams will be dropped; the relay also records what it did
(``dropped``, ``forwarded`` with each packet's due and actual send times), so
tests compare a receiver's measurements with the truth, not with a model of it.

Ordering: by default a packet is never scheduled before the one that arrived
ahead of it (its due time is clamped to the previous packet's), so the relay
delays and bunches packets but never reorders them, as a FIFO network queue
does. ``reorder=True`` drops the clamp and lets a packet with a short delay
overtake one with a long delay.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Address = tuple[str, int]

#: Datagrams held for later sending. At 400 packets/s a delay of a few tens of
#: milliseconds keeps a dozen or so in flight; 1024 is over two seconds of such a
#: stream, so hitting the bound means a test set an absurd delay (or the event
#: loop stalled), and the overflow is recorded rather than buffered forever.
DEFAULT_MAX_QUEUE = 1024

# Timer callbacks fire up to one clock resolution early (asyncio runs every
# timer due before ``now + resolution``), so "due" is judged with the same slack.
_CLOCK_SLACK = time.get_clock_info("monotonic").resolution


def rtp_seq(data: bytes) -> int | None:
    """The RTP sequence number of ``data``, or ``None`` if it is not RTP version 2."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    return int(struct.unpack_from("!H", data, 2)[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class Impairment:
    """What to do to RTP datagrams: loss probability and delay (milliseconds).

    Each kept packet is delayed by ``delay_ms`` plus an extra delay drawn per
    packet: uniform on ``[0, jitter_ms]``, or for ``"normal"`` the absolute
    value of a normal variate with standard deviation ``jitter_ms``.
    """

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: Literal["uniform", "normal"] = "uniform"
    reorder: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability, not {self.loss!r}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delays must not be negative")
        if self.distribution not in ("uniform", "normal"):
            raise ValueError(f"unknown distribution {self.distribution!r}")


class ImpairmentSchedule:
    """Seeded per-packet decisions: drop, or the time (seconds) to send at.

    Loss and delay draw from two generators derived from ``seed``, so the drop
    pattern of a seed is the same whatever the delay settings are, and the
    decision for the n-th packet depends only on ``n`` (and, for the send time,
    on the arrival times).
    """

    def __init__(self, impairment: Impairment, seed: int) -> None:
        self.impairment = impairment
        self._loss_rng = random.Random(f"loss/{seed}")
        self._delay_rng = random.Random(f"delay/{seed}")
        self._last_due = float("-inf")

    def decide(self, arrival: float) -> float | None:
        """``None`` to drop the next packet, else when to send it (same clock as ``arrival``)."""
        imp = self.impairment
        # Both draws are made for every packet, dropped or not, so that the
        # n-th decision does not depend on earlier outcomes.
        drop = self._loss_rng.random() < imp.loss
        if imp.distribution == "uniform":
            extra = self._delay_rng.uniform(0.0, imp.jitter_ms)
        else:
            extra = abs(self._delay_rng.gauss(0.0, imp.jitter_ms))
        if drop:
            return None
        due = arrival + (imp.delay_ms + extra) / 1000.0
        if not imp.reorder:
            due = max(due, self._last_due)
        self._last_due = max(due, self._last_due)
        return due

    def drops(self, count: int) -> list[int]:
        """Indices among the next ``count`` packets that will be dropped (consumes them)."""
        return [i for i in range(count) if self.decide(0.0) is None]


@dataclass(frozen=True, slots=True)
class Dropped:
    """An RTP datagram the relay did not forward."""

    index: int          #: position among RTP datagrams received by the relay, from 0
    seq: int | None     #: its RTP sequence number
    received_at: float  #: event-loop time of arrival at the relay


@dataclass(frozen=True, slots=True)
class Forwarded:
    """An RTP datagram the relay forwarded."""

    index: int
    seq: int | None
    received_at: float
    due_at: float   #: when the schedule said to send it
    sent_at: float  #: when it was handed to the kernel


class _Port(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after the target closed: not the relay's business.
        pass


@dataclass(slots=True)
class _Side:
    transport: asyncio.DatagramTransport | None = None
    peer: Address | None = None  # last sender that is not the target


@dataclass(order=True, slots=True)
class _Pending:
    due: float
    index: int
    data: bytes = field(compare=False)
    received_at: float = field(compare=False)
    handle: asyncio.TimerHandle | None = field(default=None, compare=False)


class ImpairRelay:
    """Listens on 127.0.0.1 (two OS-chosen ports), forwards to ``target_rtp``/``target_rtcp``.

    Use ``async with ImpairRelay(...) as relay``, send to ``relay.rtp_addr`` and
    ``relay.rtcp_addr``, then ``await relay.drain()`` before reading the records.
    """

    def __init__(
        self,
        target_rtp: Address,
        target_rtcp: Address,
        impairment: Impairment,
        *,
        seed: int,
        host: str = "127.0.0.1",
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.target_rtp = target_rtp
        self.target_rtcp = target_rtcp
        self.schedule = ImpairmentSchedule(impairment, seed)
        self.host = host
        self.max_queue = max_queue
        self.rtp_addr: Address = (host, 0)
        self.rtcp_addr: Address = (host, 0)
        #: RTP datagrams dropped by the schedule, in arrival order.
        self.dropped: list[Dropped] = []
        #: RTP datagrams forwarded, in sending order.
        self.forwarded: list[Forwarded] = []
        #: RTP datagrams dropped because the queue was full (not by the schedule).
        self.overflowed: list[Dropped] = []
        self.rtcp_forwarded = 0
        #: Datagrams from the target relayed back to the source (both ports).
        self.returned = 0
        self._received = 0
        self._queue: list[_Pending] = []
        self._rtp = _Side()
        self._rtcp = _Side()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def received(self) -> int:
        """RTP datagrams received from the source."""
        return self._received

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for side, on_datagram in ((self._rtp, self._on_rtp), (self._rtcp, self._on_rtcp)):
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda cb=on_datagram: _Port(cb), local_addr=(self.host, 0))
            side.transport = transport
        assert self._rtp.transport is not None and self._rtcp.transport is not None
        self.rtp_addr = self._rtp.transport.get_extra_info("sockname")[:2]
        self.rtcp_addr = self._rtcp.transport.get_extra_info("sockname")[:2]

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every scheduled datagram has been sent."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    def close(self) -> None:
        """Stop; datagrams still queued are discarded (and stay in neither record)."""
        for pending in self._queue:
            if pending.handle is not None:
                pending.handle.cancel()
        self._queue.clear()
        self._idle.set()
        for side in (self._rtp, self._rtcp):
            if side.transport is not None:
                side.transport.close()
                side.transport = None

    async def __aenter__(self) -> ImpairRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- data path ----------------------------------------------------------
    def _on_rtp(self, data: bytes, addr: Address) -> None:
        if addr == self.target_rtp:
            self._return(self._rtp, data)
            return
        assert self._loop is not None
        self._rtp.peer = addr
        now = self._loop.time()
        index = self._received
        self._received += 1
        due = self.schedule.decide(now)
        if due is None:
            self.dropped.append(Dropped(index, rtp_seq(data), now))
            return
        if len(self._queue) >= self.max_queue:
            self.overflowed.append(Dropped(index, rtp_seq(data), now))
            return
        pending = _Pending(due, index, data, now)
        pending.handle = self._loop.call_at(due, self._flush)
        heapq.heappush(self._queue, pending)
        self._idle.clear()

    def _flush(self) -> None:
        # Each queued packet has its own timer; whichever fires sends every
        # packet that is due, in (due, arrival) order, so packets with equal
        # due times keep their arrival order whatever order the timers run in.
        assert self._loop is not None
        transport = self._rtp.transport
        now = self._loop.time()
        while self._queue and self._queue[0].due < now + _CLOCK_SLACK:
            pending = heapq.heappop(self._queue)
            if pending.handle is not None:
                pending.handle.cancel()
            if transport is None:
                continue
            transport.sendto(pending.data, self.target_rtp)
            self.forwarded.append(Forwarded(pending.index, rtp_seq(pending.data),
                                            pending.received_at, pending.due, self._loop.time()))
        if not self._queue:
            self._idle.set()

    def _on_rtcp(self, data: bytes, addr: Address) -> None:
        if addr == self.target_rtcp:
            self._return(self._rtcp, data)
            return
        self._rtcp.peer = addr
        if self._rtcp.transport is not None:
            self._rtcp.transport.sendto(data, self.target_rtcp)
            self.rtcp_forwarded += 1

    def _return(self, side: _Side, data: bytes) -> None:
        if side.transport is not None and side.peer is not None:
            side.transport.sendto(data, side.peer)
            self.returned += 1
