"""Multipoint groups: one sender, any number of receivers, named by URN.

A group is the media-transport side's unit of fan-out, the counterpart of an
RTSP flow with its legs. Whatever feeds it (an app's memif TX connection, an
ST 2110 ingress bridge, or another node's proxy over libfabric) calls
:meth:`Group.publish` once per frame; every receiver attached to it (an app's
memif RX connection, an ST 2110 egress bridge, or one libfabric peer per other
node that has receivers) is offered the frame in turn. A receiver that cannot
take a frame right now says why, and the frame is dropped for that receiver
alone and counted: a slow receiver never holds up the sender or its siblings.

Nothing here copies payload: receivers are handed the sender's memoryview and
copy it into their own transport (a receiving app's shared memory, a
registered libfabric buffer, an ST 2110 packet train), so the sender's buffer
can be returned once :meth:`Group.publish` returns.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from msm.sdk.errors import Refused, ResourceExhausted

__all__ = ["MAX_GROUPS", "MAX_RECEIVERS", "FrameInfo", "Group", "GroupTable", "Receiver", "ReceiverStats",
           "SenderBusy"]

#: Groups per proxy: each holds counters and, through its receivers, shared
#: memory or registered buffers; a node runs a few dozen media pipelines at most.
MAX_GROUPS = 256

#: Receivers per group on one proxy: local apps plus one link per other node.
#: Each costs a copy per frame (5 MB at 1080p 10-bit), so a few hundred
#: already exceed any host's memory bandwidth at 30 frames/s.
MAX_RECEIVERS = 256

#: Latency samples kept per receiver for its percentiles (a ring: the last
#: ten seconds at 60 frames/s), so the bound is fixed whatever the run's length.
LATENCY_SAMPLES = 600


class SenderBusy(Refused):
    """A group already has a sender: a second one would interleave two streams' frames."""

    status = 409


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What travels with a frame besides its payload."""

    seq: int                  # the sender's frame counter (wraps at 2**32)
    timestamp: int            # media timestamp (90 kHz for video, the sample rate for audio)
    metadata: bytes = b""     # the app's metadata (bounded by maxMetadataSize)
    incomplete: str | None = None  # set when a bridge lost part of it: the reason, e.g. "missing_packets"
    arrived_ns: int = 0       # time.monotonic_ns() when this proxy got the frame
    # A local memif sender's frame: a handle a receiver that maps the sender's region may take instead of
    # copying (memif_port.SharedFrame); None for frames of every other source. Receivers may ignore it.
    shared: object | None = None


class Receiver(Protocol):
    """Something a group hands frames to."""

    @property
    def name(self) -> str:
        """Unique within its group: ``memif:<connection>``, ``node:<name>``, ``st2110:<addr>:<port>``."""
        ...

    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        """Take one frame (copying it out before returning). ``None`` if taken, else the drop reason."""
        ...


@dataclass
class ReceiverStats:
    frames: int = 0
    bytes: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    _latency_ns: list[int] = field(default_factory=list)
    _next: int = 0

    def record_latency(self, ns: int) -> None:
        if len(self._latency_ns) < LATENCY_SAMPLES:
            self._latency_ns.append(ns)
        else:
            self._latency_ns[self._next] = ns
            self._next = (self._next + 1) % LATENCY_SAMPLES

    def latency_us(self, quantile: float) -> float | None:
        """The given quantile of the recent per-frame latencies (µs), ``None`` before the first frame."""
        if not self._latency_ns:
            return None
        ordered = sorted(self._latency_ns)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] / 1000.0


class Group:
    """One URN's sender and receivers on this proxy."""

    def __init__(self, urn: str) -> None:
        self.urn = urn
        self.sender: str | None = None
        self.frames_in = 0
        self.bytes_in = 0
        self.incomplete: Counter[str] = Counter()
        self._receivers: dict[str, Receiver] = {}
        self.receiver_stats: dict[str, ReceiverStats] = {}

    def attach_sender(self, name: str) -> None:
        if self.sender is not None and self.sender != name:
            raise SenderBusy(f"group {self.urn!r} already has a sender ({self.sender})")
        self.sender = name

    def detach_sender(self, name: str) -> None:
        if self.sender == name:
            self.sender = None

    def add_receiver(self, receiver: Receiver) -> None:
        if receiver.name in self._receivers:
            raise Refused(f"group {self.urn!r} already has a receiver named {receiver.name!r}")
        if len(self._receivers) >= MAX_RECEIVERS:
            raise ResourceExhausted(f"group {self.urn!r} has {MAX_RECEIVERS} receivers, the most one proxy serves")
        self._receivers[receiver.name] = receiver
        self.receiver_stats[receiver.name] = ReceiverStats()

    def remove_receiver(self, name: str) -> Receiver | None:
        self.receiver_stats.pop(name, None)
        return self._receivers.pop(name, None)

    @property
    def receivers(self) -> list[str]:
        return list(self._receivers)

    @property
    def empty(self) -> bool:
        return self.sender is None and not self._receivers

    def publish(self, payload: memoryview, info: FrameInfo) -> int:
        """Offer one frame to every receiver; returns how many took it."""
        self.frames_in += 1
        self.bytes_in += len(payload)
        if info.incomplete:
            self.incomplete[info.incomplete] += 1
        taken = 0
        for name, receiver in list(self._receivers.items()):
            stats = self.receiver_stats[name]
            try:
                reason = receiver.deliver(payload, info)
            except Exception as exc:  # one broken receiver must not stop its siblings
                reason = f"error:{type(exc).__name__}"
            if reason is not None:
                stats.drops[reason] += 1
                continue
            taken += 1
            stats.frames += 1
            stats.bytes += len(payload)
            if info.arrived_ns:
                stats.record_latency(time.monotonic_ns() - info.arrived_ns)
        return taken


class GroupTable:
    """The groups this proxy takes part in, created on first use and removed when empty."""

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self._groups: dict[str, Group] = {}
        self._max = max_groups

    def ensure(self, urn: str) -> Group:
        group = self._groups.get(urn)
        if group is None:
            if len(self._groups) >= self._max:
                raise ResourceExhausted(f"this proxy already takes part in {self._max} groups")
            group = self._groups[urn] = Group(urn)
        return group

    def get(self, urn: str) -> Group | None:
        return self._groups.get(urn)

    def discard_if_empty(self, urn: str) -> None:
        group = self._groups.get(urn)
        if group is not None and group.empty:
            del self._groups[urn]

    def __iter__(self) -> Iterator[Group]:
        return iter(list(self._groups.values()))

    def __len__(self) -> int:
        return len(self._groups)
