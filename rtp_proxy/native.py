"""The RTP path in the native engine (``ext``): :class:`NativeEngine`, the C twin of the Python reference.

The engine thread owns the RTP socket: it receives, measures, splices and fans
out in C, with the same rules and the same statistics as
:class:`msm.rtp_proxy.pyengine.PythonEngine`. Python keeps the rest of the
flow (legs' bookkeeping, the RTCP socket, the periodic work) in
:class:`msm.rtp_proxy.flows.Flow`, which reads this engine only through the
:class:`msm.rtp_proxy.engine.FlowEngine` seam: :meth:`NativeEngine.state` is one
consistent ``msm_flow_stats`` read turned into an :class:`RtpState`.

Errors: ``ext`` may import nothing of msm, so its ``NativeUnavailable`` is
translated here, at the proxy's boundary, into
:class:`msm.rtp_proxy.engine.EngineUnavailable` (an ``Unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from msm import ext
from msm.sdk.rtp import ReportBlock
from msm.sdk.stats import reception_report

from .engine import SSRC_TAKEOVER, Address, Endpoint, EngineUnavailable, Leg, LegCounters, RtpState
from .pyengine import OutInfo
from .srtp import REKEY_GRACE, SrtpKey, library_path

log = logging.getLogger(__name__)


def start_core() -> ext.Engine:
    """The engine thread every native flow of a table shares.

    Its SRTP runs on pylibsrtp's libsrtp (OpenSSL), the copy the flows' RTCP
    side already uses; the system's libsrtp2 only if that one cannot be loaded.
    """
    wanted = library_path()
    try:
        core = ext.Engine(srtp_library=wanted)
    except ext.NativeUnavailable as exc:
        raise EngineUnavailable(str(exc)) from exc
    if core.srtp_library is None:
        log.warning("native engine without SRTP: %s", ext.srtp_error())
    elif core.srtp_library != wanted and ext.srtp_error():
        log.warning("native engine SRTP from %s (slower): %s", core.srtp_library, ext.srtp_error())
    return core


def _state(snap: Any) -> RtpState:
    return RtpState(
        packets_received=int(snap.packets_received), bytes_received=int(snap.bytes_received),
        packets_forwarded=int(snap.packets_forwarded), dropped_invalid=int(snap.dropped_invalid),
        dropped_from_viewers=int(snap.dropped_from_viewers), dropped_backlog=int(snap.dropped_backlog),
        socket_errors=int(snap.socket_errors), source_changes=int(snap.source_changes),
        dropped_wrong_source=int(snap.dropped_wrong_source), dropped_wrong_ssrc=int(snap.dropped_wrong_ssrc),
        srtp_errors=int(snap.srtp_errors),
        ssrc=int(snap.ssrc) if snap.has_ssrc else None, out_ssrc=int(snap.out_ssrc) if snap.has_out_ssrc else None,
        seq_offset=int(snap.seq_offset), ts_offset=int(snap.ts_offset),
        lost_before=int(snap.lost_before), expected_before=int(snap.expected_before),
        received=int(snap.received) if snap.has_ssrc else 0, expected=int(snap.expected) if snap.has_ssrc else 0,
        extended_highest_seq=int(snap.extended_highest) if snap.has_ssrc else 0,
        duplicates=int(snap.duplicates) if snap.has_ssrc else 0,
        reordered=int(snap.reordered) if snap.has_ssrc else 0,
        restarts=int(snap.restarts) if snap.has_ssrc else 0,
        jitter=float(snap.jitter) if snap.has_ssrc else 0.0)


class NativeEngine:
    """A flow's RTP socket served by the engine thread (see the module doc)."""

    name = "native"

    def __init__(self, core: ext.Engine, sock: socket.socket, *, clock_rate: int = 0, splice: bool = True,
                 takeover: float = SSRC_TAKEOVER) -> None:
        self._core = core
        self._family = sock.family
        fd = sock.detach()   # the engine owns the RTP socket from here on
        try:
            self._handle = core.add_flow(fd, clock_rate=clock_rate, splice=splice,
                                         takeover_ms=round(takeover * 1000))
        except BaseException:
            os.close(fd)
            raise
        self._legs: dict[str, tuple[Leg, ext.LegHandle]] = {}
        self._priors = [-1, 0, 0]   # gen, expected_prior, received_prior (RFC 3550 A.3)
        self._alt: asyncio.BaseTransport | None = None   # the other family's socket, drained here
        self._alt_dropped = [0, 0]   # what arrived there, dropped: from viewers, from anyone else

    def set_legs(self, legs: Sequence[Leg]) -> None:
        old = self._legs
        self._legs = {}
        for leg in legs:
            known = old.get(leg.leg_id)
            if known is None or known[0] is not leg:
                family = socket.AF_INET6 if ":" in leg.rtp_addr[0] else socket.AF_INET
                known = (leg, ext.LegHandle(self._core, leg.rtp_addr[0], leg.rtp_addr[1], family))
                if leg.srtp is not None:
                    known[1].set_srtp(leg.srtp.material, profile=leg.srtp.profile)   # before any leg set has it
            self._legs[leg.leg_id] = known
        current = list(self._legs.values())
        self._handle.set_legs([handle for _, handle in current], [leg.enabled for leg, _ in current])
        kept = {id(handle) for _, handle in current}
        for _, handle in old.values():
            if id(handle) not in kept:
                handle.retire()   # after the new leg set is published

    async def add_sender(self, sock: socket.socket) -> None:
        """The engine sends from a duplicate of ``sock``; this side drains ``sock`` (only viewers'
        packets arrive there: the flow's source sends to the flow's own socket)."""
        fd = os.dup(sock.fileno())
        try:
            self._handle.set_alt_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Endpoint(self._alt_datagram, lambda exc: None), sock=sock)
        self._alt = transport

    def _alt_datagram(self, data: bytes, addr: Address) -> None:
        viewer = any(leg.rtp_addr == addr for leg, _ in self._legs.values())
        self._alt_dropped[0 if viewer else 1] += 1

    def set_source(self, source: Address | None) -> None:
        if source is None:
            self._handle.set_source(None, 0, self._family)
        else:
            self._handle.set_source(source[0], source[1], self._family)

    def set_ingress_key(self, key: SrtpKey | None) -> None:
        if key is not None:
            self._handle.set_srtp(key.material, grace_ms=round(REKEY_GRACE * 1000), profile=key.profile)

    def set_leg_key(self, leg_id: str, key: SrtpKey) -> None:
        known = self._legs.get(leg_id)
        if known is not None:
            known[1].set_srtp(key.material, profile=key.profile)

    def state(self) -> RtpState:
        state = _state(self._handle.stats())
        viewers, others = self._alt_dropped
        if viewers or others:
            state = replace(state, dropped_from_viewers=state.dropped_from_viewers + viewers,
                            dropped_wrong_source=state.dropped_wrong_source + others)
        return state

    def out_info(self) -> OutInfo | None:
        """The first and the latest packet viewers were sent (after splicing); None before any."""
        snap = self._handle.stats()
        if not snap.has_out_info:
            return None
        return OutInfo(int(snap.first_out_seq), int(snap.first_out_ts), int(snap.last_out_seq),
                       int(snap.last_out_ts))

    def leg_counters(self, leg_id: str) -> LegCounters:
        known = self._legs.get(leg_id)
        if known is None:
            return LegCounters()
        stats = known[1].stats()
        return LegCounters(packets_sent=stats["packets_sent"], bytes_sent=stats["bytes_sent"],
                           send_errors=stats["send_errors"], dropped_backlog=stats["dropped_backlog"],
                           gso_sends=stats["gso_sends"], mtu_exceeded=stats["mtu_exceeded"])

    def report_block(self, *, lsr: int = 0, dlsr: int = 0) -> ReportBlock | None:
        snap = self._handle.stats()
        if not snap.has_ssrc:
            return None
        gen, expected, received = int(snap.gen), int(snap.expected), int(snap.received)
        priors = self._priors
        if priors[0] != gen:   # a new source or sequence space: a new interval
            priors[:] = [gen, 0, 0]
        block = reception_report(int(snap.ssrc), expected=expected, received=received, expected_prior=priors[1],
                                 received_prior=priors[2], extended_highest_seq=int(snap.extended_highest),
                                 jitter=float(snap.jitter), lsr=lsr, dlsr=dlsr)
        priors[1], priors[2] = expected, received
        return block

    def counters(self) -> Mapping[str, int]:
        return {"batches": int(self._handle.stats().batches)}

    def close(self) -> None:
        self._handle.close()   # first: then no leg set is in use
        if self._alt is not None:
            self._alt.close()
        for _, handle in self._legs.values():
            handle.retire()
