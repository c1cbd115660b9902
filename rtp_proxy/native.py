"""Flows whose RTP path runs in the native engine (``ext``), behind the same API as :class:`Flow`.

The engine thread owns the RTP socket: it receives, measures, splices and fans
out in C. Python keeps everything else of the flow: the legs' bookkeeping, the
RTCP socket (relay, viewers' reports, the proxy's own receiver reports: low
rate, rich parsing) and the periodic work. The counters that code and tests
read as plain attributes (``flow.packets_received``, ``leg.packets_sent``...)
are read from C when accessed; the few the Python RTCP path also bumps
(``dropped_from_viewers``, ``dropped_backlog``, ``socket_errors``, a leg's
``send_errors`` and ``dropped_backlog``) add the two parts up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from msm.ext import FlowHandle, LegHandle
from msm.sdk.rtp import ReportBlock
from msm.sdk.stats import interval_fraction_lost, reception_report

from .flows import Flow, Leg


class _FlowCounter:
    """A flow counter kept by the engine thread, plus what Python adds to it.

    ``x += 1`` reads (C value c, remembered) then writes (v): the Python part
    becomes ``v - c``, exact whatever the engine thread counted meanwhile.
    """

    def __init__(self, field: str) -> None:
        self.field = field
        self.name = field

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: NativeFlow | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        c = int(getattr(obj._handle.stats(), self.field))
        obj._seen[self.name] = c
        return obj._py.get(self.name, 0) + c

    def __set__(self, obj: NativeFlow, value: int) -> None:
        obj._py[self.name] = value - obj._seen.get(self.name, 0)


_LEG_SLOTS = {name: Leg.__dict__[name] for name in ("packets_sent", "bytes_sent", "send_errors", "dropped_backlog")}


class _LegCounter:
    """Same as :class:`_FlowCounter` for a leg; the Python part lives in :class:`Leg`'s own slot."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slot = _LEG_SLOTS[name]

    def __get__(self, obj: NativeLeg | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        c = obj.handle.counter(self.name)
        obj._seen[self.name] = c
        return self.slot.__get__(obj, owner) + c

    def __set__(self, obj: NativeLeg, value: int) -> None:
        self.slot.__set__(obj, value - obj._seen.get(self.name, 0))


class NativeLeg(Leg):
    """A :class:`Leg` whose RTP counters the engine keeps."""

    __slots__ = ("_seen", "handle")

    packets_sent = _LegCounter("packets_sent")  # type: ignore[assignment]
    bytes_sent = _LegCounter("bytes_sent")  # type: ignore[assignment]
    send_errors = _LegCounter("send_errors")  # type: ignore[assignment]
    dropped_backlog = _LegCounter("dropped_backlog")  # type: ignore[assignment]

    def __init__(self, leg: Leg, handle: LegHandle) -> None:
        self.handle = handle
        self._seen: dict[str, int] = {}
        super().__init__(**{f.name: getattr(leg, f.name) for f in fields(Leg)})


class NativeStats:
    """The engine's RFC 3550 statistics of the current source, as :class:`msm.sdk.stats.ReceiverStats` shows them.

    A snapshot: read ``flow.stats`` again for fresh numbers. The interval
    state of :meth:`report_block` (A.3's priors) lives on the flow.
    """

    __slots__ = ("_clock_rate", "_flow", "_gen", "duplicates", "expected", "extended_highest_seq", "jitter",
                 "received", "reordered", "restarts")

    def __init__(self, snap: Any, flow: NativeFlow) -> None:
        self.received = int(snap.received)
        self.expected = int(snap.expected)
        self.duplicates = int(snap.duplicates)
        self.reordered = int(snap.reordered)
        self.restarts = int(snap.restarts)
        self.jitter = float(snap.jitter)
        self.extended_highest_seq = int(snap.extended_highest)
        self._gen = int(snap.gen)
        self._clock_rate = flow.clock_rate
        self._flow = flow

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float | None:
        if not self._clock_rate:
            return None
        return self.jitter * 1000.0 / self._clock_rate

    def _priors(self) -> list[int]:
        priors = self._flow._priors
        if priors[0] != self._gen:   # a new source or sequence space: a new interval
            priors[:] = [self._gen, 0, 0]
        return priors

    @property
    def fraction_lost(self) -> float:
        _, expected_prior, received_prior = self._priors()
        return interval_fraction_lost(self.expected - expected_prior, self.received - received_prior)

    def report_block(self, ssrc: int, *, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        priors = self._priors()
        expected, received = self.expected, self.received
        block = reception_report(ssrc, expected=expected, received=received, expected_prior=priors[1],
                                 received_prior=priors[2], extended_highest_seq=self.extended_highest_seq,
                                 jitter=self.jitter, lsr=lsr, dlsr=dlsr)
        priors[1], priors[2] = expected, received
        return block


class NativeFlow(Flow):
    """A :class:`Flow` whose RTP socket is served by the engine (see the module doc)."""

    packets_received = _FlowCounter("packets_received")  # type: ignore[assignment]
    bytes_received = _FlowCounter("bytes_received")  # type: ignore[assignment]
    dropped_invalid = _FlowCounter("dropped_invalid")  # type: ignore[assignment]
    dropped_from_viewers = _FlowCounter("dropped_from_viewers")  # type: ignore[assignment]
    dropped_backlog = _FlowCounter("dropped_backlog")  # type: ignore[assignment]
    source_changes = _FlowCounter("source_changes")  # type: ignore[assignment]
    packets_forwarded = _FlowCounter("packets_forwarded")  # type: ignore[assignment]
    socket_errors = _FlowCounter("socket_errors")  # type: ignore[assignment]

    def __init__(self, flow_id: str, *, handle: FlowHandle, family: int, clock_rate: int = 0, splice: bool = True,
                 labels: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._handle = handle
        self._family = family
        self._seen: dict[str, int] = {}
        self._py: dict[str, int] = {}
        self._priors = [-1, 0, 0]   # gen, expected_prior, received_prior (RFC 3550 A.3)
        super().__init__(flow_id, clock_rate=clock_rate, splice=splice, labels=labels, clock=clock)

    def _init_rtp_path(self) -> None:
        """Nothing: the RTP path's state is in C."""

    # -- the RTP path's state, read from the engine ------------------------------
    @property  # type: ignore[override]
    def ssrc(self) -> int | None:
        snap = self._handle.stats()
        return int(snap.ssrc) if snap.has_ssrc else None

    @property
    def out_ssrc(self) -> int | None:
        snap = self._handle.stats()
        return int(snap.out_ssrc) if snap.has_out_ssrc else None

    @property
    def _ts_offset(self) -> int:
        return int(self._handle.stats().ts_offset)

    @property
    def _seq_offset(self) -> int:
        return int(self._handle.stats().seq_offset)

    @property
    def _lost_before(self) -> int:
        return int(self._handle.stats().lost_before)

    @property
    def _expected_before(self) -> int:
        return int(self._handle.stats().expected_before)

    @property  # type: ignore[override]
    def stats(self) -> NativeStats | None:
        snap = self._handle.stats()
        return NativeStats(snap, self) if snap.has_ssrc else None

    def engine_counters(self) -> dict[str, int]:
        snap = self._handle.stats()
        return {"batches": int(snap.batches)}

    # -- legs ------------------------------------------------------------------------
    def set_leg(self, leg: Leg) -> None:
        engine = self._handle.engine
        native = NativeLeg(leg, LegHandle(engine, leg.rtp_addr[0], leg.rtp_addr[1], self._family))
        old = self.legs.get(leg.leg_id)
        self.legs[leg.leg_id] = native
        self._rebuild()
        if isinstance(old, NativeLeg):
            old.handle.retire()   # after the new leg set is published

    def remove_leg(self, leg_id: str) -> Leg | None:
        leg = self.legs.pop(leg_id, None)
        self._rebuild()
        if isinstance(leg, NativeLeg):
            leg.handle.retire()
        return leg

    def _rebuild(self) -> None:
        super()._rebuild()
        legs = [leg for leg in self.legs.values() if isinstance(leg, NativeLeg)]
        self._handle.set_legs([leg.handle for leg in legs], [leg.enabled for leg in legs])

    def on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        raise RuntimeError("the native engine serves this flow's RTP socket")

    def close(self) -> None:
        self._handle.close()   # first: then no leg set is in use
        for leg in self.legs.values():
            if isinstance(leg, NativeLeg):
                leg.handle.retire()
        super().close()
