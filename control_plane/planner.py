"""The control plane's decisions: one pooled upstream per stream, legs per viewer and node.

One upstream session per stream is shared by every viewer: the first DESCRIBE
opens it (through the stub next to the source), the first SETUP creates the
proxy flows and SETUPs the upstream towards them, each viewer's SETUP adds a
*disabled* leg, PLAY enables it, PAUSE disables only that viewer's legs, and the
last TEARDOWN closes the upstream after a linger. A viewer on another node than
the source is fed by a relay flow on its own node, itself fed by ONE leg from
the source flow; the relay goes when the last viewer there leaves.

Trust: every flow is told where its media comes from (the upstream's sources
the SETUP answered, or the URL's host; a relay's source flow on another node),
a viewer's destination can never be a proxy's own ingress, and a source with
more tracks than a camera has is refused before any port is taken.

Everything outside goes through seams (:mod:`.ports`, :mod:`.store`): the
proxies, the stubs, the durable state and the clock. Nothing here knows gRPC.
Changes to one stream are serialised by a per-stream lock; records are read
from the store, changed, and put back under it.
"""

# long module: every decision of the stream graph (open, set up, relay, play,
# leave, reconnect) and the checks made before each; they share one record and one lock.
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from msm.protos import msm_pb2 as pb
from msm.runtime.hostport import other_family_host
from msm.runtime.redact import redact_url, session_tag
from msm.sdk.errors import (
    ConfigError,
    MethodNotValid,
    MsmError,
    NotFound,
    Refused,
    ResourceExhausted,
    SessionNotFound,
    Unavailable,
    UnsupportedTransport,
)

from .multicast import DEFAULT_POOL, DEFAULT_PORT, DEFAULT_TTL, MAX_GROUPS, Group, MulticastPool, group_leg
from .ports import Clock, DataPlane, LoopClock, StubInfo, StubPort, Timer
from .resolver import Asker, Resolver, Route
from .sdp_source import is_sdp_file, read_sdp_source
from .store import FlowRef, LegRef, MemoryStore, Store, StreamRecord, ViewerRecord
from .upstream_state import Trigger, UpstreamState, next_state, trigger_of_event

log = logging.getLogger("msm.control_plane.server")

__all__ = ["MAX_TRACKS", "Planner", "PlannerSettings"]

# A camera has a handful of tracks (video, audio, metadata, a back channel); an
# SDP with more is broken or hostile, and every track costs a port pair on each
# proxy that carries the stream (a stream's flows per proxy are its tracks, so
# this also bounds its ports: 2 per track per node).
MAX_TRACKS = 8

# Legs one stub may hold across all streams. A stub is authenticated and speaks only
# for its own pod, but a compromised or buggy one could still ask for legs without
# end, each a proxy's copy of a stream. A gateway stub serves at most 1,024 viewer
# connections (its own connection cap) with a couple of tracks each.
MAX_LEGS_PER_STUB = 4096
# Client ports below this are privileged services, never a player's RTP port.
MIN_CLIENT_PORT = 1024
# SRTP on legs between nodes (RFC 3711): the profiles, and how often a relay's
# key is replaced. Both ends of a relay leg are our proxies, so it is AES-GCM
# (RFC 7714: one AES-NI + carry-less multiply pass, cheaper per packet than
# AES-CM then HMAC-SHA1) when both said they can do it, else AES-CM with
# HMAC-SHA1-80, which every proxy does. RFC 3711 9.2 wants a new key before 2^31 SRTCP packets (and
# 2^48 SRTP packets) under one key; an hour stays under 2^31 packets up to about
# 600,000 packets a second, far above any one camera, and bounds how much media
# one leaked key opens. A failed rekey is retried after REKEY_RETRY, inside the
# receiver's grace for the previous key (5 s, rtp_proxy/srtp.py).
SRTP_PROFILE = "AES_CM_128_HMAC_SHA1_80"
SRTP_GCM = "AEAD_AES_128_GCM"
SRTP_SALT_LEN = {SRTP_GCM: 12, SRTP_PROFILE: 14}
REKEY_INTERVAL = 3600.0
REKEY_RETRY = 2.0
# A PLAY that starts a stream waits this long (at most) for each track's first packet,
# polling every RTP_INFO_POLL, to tell the viewer its sequence number and timestamp
# (RTP-Info); an upstream that sends nothing by then costs the viewer only the header.
RTP_INFO_WAIT = 1.0
RTP_INFO_POLL = 0.05


def new_srtp_key(epoch: int, profile: str = SRTP_PROFILE) -> pb.SrtpParams:
    """A fresh SRTP master key and salt (never logged, never stored: only its epoch is kept)."""
    return pb.SrtpParams(profile=profile, master_key=secrets.token_bytes(16),
                         master_salt=secrets.token_bytes(SRTP_SALT_LEN[profile]), epoch=epoch)


def srtp_profiles(proxy: DataPlane) -> tuple[str, ...]:
    """The SRTP profiles a proxy said it can do (its hello; ``ProxyLink.srtp_profiles``).
    Saying nothing (an older proxy, a test double) means AES_CM_128_HMAC_SHA1_80 only."""
    return tuple(getattr(proxy, "srtp_profiles", ()) or (SRTP_PROFILE,))


def relay_profile(preferred: str, sender: DataPlane, receiver: DataPlane) -> str:
    """``preferred`` when both ends of a relay leg can do it, else AES_CM_128_HMAC_SHA1_80."""
    if preferred in srtp_profiles(sender) and preferred in srtp_profiles(receiver):
        return preferred
    return SRTP_PROFILE


@dataclass(frozen=True)
class PlannerSettings:
    """The planner's tunables, with their defaults (the flags of ``msm-control-plane`` and
    ``msm up`` fill one in).

    ``linger``: seconds an upstream stays open after its last viewer left.
    ``max_tracks``: the most tracks a source may have (see MAX_TRACKS).
    ``port_pairs``: client ports must be RTP even, RTCP = RTP + 1 (RFC 3550 11), as every
    player and the stub's own UDP bridges (TCP viewers) bind them.
    ``proxy_port_range``: the proxies' port range; no client port in it on a proxy's
    address. None by default: on one host the stub's bridges take ephemeral ports
    (32768-60999), which overlap the default 30000-39999; exact ingress ports of known
    flows are refused either way, and the proxy refuses legs into its own ports.
    ``max_legs_per_stub``: legs one stub may hold across all streams (see MAX_LEGS_PER_STUB).
    ``srtp``: SRTP on every leg between nodes (the secure default); legs to viewers on
    the same node stay plain RTP. ``srtp_profile``: the profile relay legs use when both
    proxies can do it (AEAD_AES_128_GCM; AES_CM_128_HMAC_SHA1_80 to never use GCM), else
    AES_CM_128_HMAC_SHA1_80. ``rekey_interval``: seconds between a relay's keys.
    ``multicast_pool``, ``multicast_ttl``, ``multicast_port``, ``max_multicast_groups``: where the
    groups of routes that allow multicast come from (see :mod:`.multicast`).
    """

    linger: float = 5.0
    max_tracks: int = MAX_TRACKS
    max_legs_per_stub: int = MAX_LEGS_PER_STUB
    port_pairs: bool = True
    proxy_port_range: tuple[int, int] | None = None
    srtp: bool = True
    srtp_profile: str = SRTP_GCM
    rekey_interval: float = REKEY_INTERVAL
    multicast_pool: str = DEFAULT_POOL
    multicast_ttl: int = DEFAULT_TTL
    multicast_port: int = DEFAULT_PORT
    max_multicast_groups: int = MAX_GROUPS

    def __post_init__(self) -> None:
        if self.linger < 0 or self.rekey_interval <= 0 or self.max_tracks < 1 or self.max_legs_per_stub < 1:
            raise ConfigError("planner settings: linger must be >= 0, rekey_interval > 0, max_tracks >= 1 "
                              "and max_legs_per_stub >= 1")
        if self.srtp_profile not in SRTP_SALT_LEN:
            raise ConfigError(f"planner settings: SRTP profile {self.srtp_profile!r} is not one of "
                              f"{', '.join(SRTP_SALT_LEN)}")
        MulticastPool(self.multicast_pool, ttl=self.multicast_ttl, port=self.multicast_port,
                      max_groups=self.max_multicast_groups)   # ConfigError for an impossible one
        if self.proxy_port_range is not None:
            low, high = self.proxy_port_range
            if not 0 < low <= high <= 65535:
                raise ConfigError(f"planner settings: bad proxy port range {low}-{high}")


class Planner:
    def __init__(self, resolver: Resolver, *, store: Store | None = None, clock: Clock | None = None,
                 settings: PlannerSettings | None = None, **overrides: Any) -> None:
        """``settings``: the tunables (defaults when None); keyword ``overrides`` (``linger=``,
        ``port_pairs=``, ...) replace single fields of it."""
        self.resolver = resolver
        self.settings = replace(settings or PlannerSettings(), **overrides)
        self.srtp = self.settings.srtp
        self.rekey_interval = self.settings.rekey_interval
        # relay flow id -> (its key's epoch, next rekey); and its SRTP profile, kept across rekeys
        self._rekeys: dict[str, tuple[int, Timer]] = {}
        self._profiles: dict[str, str] = {}
        self.max_tracks = self.settings.max_tracks
        self.port_pairs = self.settings.port_pairs
        self.proxy_port_range = self.settings.proxy_port_range
        self.store: Store = store if store is not None else MemoryStore()
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.linger = self.settings.linger
        self.multicast = MulticastPool(self.settings.multicast_pool, ttl=self.settings.multicast_ttl,
                                       port=self.settings.multicast_port,
                                       max_groups=self.settings.max_multicast_groups)
        self.stubs: dict[str, StubPort] = {}
        self.proxies: dict[str, DataPlane] = {}   # node -> its proxy
        self._locks: dict[str, asyncio.Lock] = {}
        self._lingers: dict[str, tuple[object, Timer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- background work ---------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until no background work (linger, departures, restarts) is left."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for _, timer in self._lingers.values():
            timer.cancel()
        self._lingers.clear()
        for _, timer in self._rekeys.values():
            timer.cancel()
        self._rekeys.clear()
        self._profiles.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for proxy in self.proxies.values():
            await proxy.close()

    def _lock(self, stream_id: str) -> asyncio.Lock:
        return self._locks.setdefault(stream_id, asyncio.Lock())

    # -- who is connected ----------------------------------------------------------------
    def stub_connected(self, stub: StubPort) -> StubPort | None:
        """Register ``stub``; answers the link it replaces (same stub id), if any."""
        old = self.stubs.get(stub.info.stub_id)
        self.stubs[stub.info.stub_id] = stub
        return old

    def stub_disconnected(self, stub: StubPort) -> bool:
        """``stub``'s link ended: unless a newer link replaced it, its viewers go and so do the
        upstreams it held. Answers whether it was the current link."""
        stub_id = stub.info.stub_id
        if self.stubs.get(stub_id) is not stub:
            return False
        del self.stubs[stub_id]
        self.spawn(self.stub_gone(stub_id), f"stub-gone-{stub_id}")
        return True

    def proxy_registered(self, proxy: DataPlane) -> None:
        """A proxy said hello. One that restarted (new id on a known node) lost its flows, and
        the streams using them are reset: their viewers dropped, their upstream closed."""
        old = self.proxies.get(proxy.node)
        self.proxies[proxy.node] = proxy
        if old is not None and old.proxy_id != proxy.proxy_id:
            log.warning("proxy on node %s restarted; its streams are reset", proxy.node)
            self.spawn(self.proxy_restarted(old), f"proxy-restart-{proxy.node}")

    def _proxy_for(self, node: str) -> DataPlane:
        proxy = self.proxies.get(node) or next(iter(self.proxies.values()), None)
        if proxy is None:
            raise Unavailable("no RTP proxy registered")
        return proxy

    def _dataplane_of(self, ref: FlowRef) -> DataPlane | None:
        """The proxy a flow lives on; ``None`` when that proxy instance is gone (its flows with it)."""
        proxy = self.proxies.get(ref.node)
        return proxy if proxy is not None and proxy.proxy_id == ref.proxy_id else None

    def _upstream_stub(self, route: Route) -> StubPort:
        candidates = [s for s in self.stubs.values() if s.info.can_open_upstream]
        if route.pod:
            # The stub in the source's own pod reaches it locally (ARCHITECTURE: step 2).
            candidates = [s for s in candidates
                          if (s.info.pod, s.info.namespace) == (route.pod, route.namespace)] or candidates
        if route.node:
            candidates = [s for s in candidates if s.info.node == route.node] or candidates
        if not candidates:
            raise Unavailable("no stub can reach the source")
        return candidates[0]

    def _holder(self, record: StreamRecord) -> StubPort:
        stub = self.stubs.get(record.upstream_stub or "")
        if stub is None:
            raise Unavailable("the stub holding the upstream session is gone")
        return stub

    # -- records ---------------------------------------------------------------------------
    def _stream(self, stream_id: str) -> StreamRecord:
        record = self.store.get_stream(stream_id)
        if record is None:
            raise NotFound(f"unknown stream {stream_id!r}")
        return record

    def _viewer(self, stream_id: str, session_id: str) -> ViewerRecord:
        viewer = self.store.get_viewer(stream_id, session_id)
        if viewer is None:
            raise SessionNotFound(f"session {session_tag(session_id)} is not set up on {stream_id}")
        return viewer

    def _move(self, record: StreamRecord, trigger: Trigger) -> bool:
        """Apply ``trigger`` to the record's upstream state (not put); answers whether it applied."""
        state = next_state(record.upstream_state, trigger)
        if state is None:
            log.debug("stream %s: %s ignored in state %s", record.stream_id, trigger.value,
                      record.upstream_state.value)
            return False
        record.upstream_state = state
        return True

    # -- linger ------------------------------------------------------------------------------
    def _schedule_linger(self, stream_id: str) -> None:
        self._cancel_linger(stream_id)
        token = object()

        def expired() -> None:
            self.spawn(self._linger_expired(stream_id, token), f"linger-{stream_id}")

        self._lingers[stream_id] = (token, self.clock.call_later(self.linger, expired))

    def _cancel_linger(self, stream_id: str) -> None:
        entry = self._lingers.pop(stream_id, None)
        if entry is not None:
            entry[1].cancel()

    async def _linger_expired(self, stream_id: str, token: object) -> None:
        async with self._lock(stream_id):
            entry = self._lingers.get(stream_id)
            if entry is None or entry[0] is not token:
                return   # cancelled, or scheduled again, while this waited for the lock
            del self._lingers[stream_id]
            record = self.store.get_stream(stream_id)
            if record is None or record.sdp is None or self.store.viewers(stream_id):
                return
            await self._close_stream(record, "no viewers")

    # -- the upstream ------------------------------------------------------------------------------
    async def _open(self, record: StreamRecord) -> None:
        if is_sdp_file(record.route.url):
            return self._open_sdp_file(record)
        stub = self._upstream_stub(record.route)
        self._move(record, Trigger.OPEN)
        self.store.put_stream(record)
        try:
            sdp, tracks = await stub.open(record.stream_id, record.route.url, record.route.transport)
        except MsmError:
            self._move(record, Trigger.OPEN_FAILED)
            self.store.put_stream(record)
            raise
        if len(tracks) > self.max_tracks:
            with contextlib.suppress(MsmError):
                await stub.close_upstream(record.stream_id)
            self._move(record, Trigger.OPEN_FAILED)
            self.store.put_stream(record)
            raise ResourceExhausted(f"the source has {len(tracks)} tracks; at most {self.max_tracks} are served")
        record.sdp = sdp
        record.tracks = list(tracks)
        record.upstream_stub = stub.info.stub_id
        record.opened += 1
        record.generation += 1
        self._move(record, Trigger.OPENED)
        self.store.put_stream(record)
        log.info("stream %s: upstream %s opened (%d tracks)", record.stream_id,
                 redact_url(record.route.url), len(record.tracks))

    def _open_sdp_file(self, record: StreamRecord) -> None:
        """An SDP file's stream (see :mod:`.sdp_source`): no stub and no RTSP, the file says it all."""
        try:
            source = read_sdp_source(record.route.url)
            if len(source.tracks) > self.max_tracks:
                raise ResourceExhausted(f"the source has {len(source.tracks)} tracks; at most "
                                        f"{self.max_tracks} are served")
        except MsmError:
            self._move(record, Trigger.OPEN)
            self._move(record, Trigger.OPEN_FAILED)
            self.store.put_stream(record)
            raise
        self._move(record, Trigger.OPEN)
        record.sdp, record.tracks = source.sdp, source.tracks
        record.upstream_stub = None
        record.opened += 1
        record.generation += 1
        self._move(record, Trigger.OPENED)
        self.store.put_stream(record)
        log.info("stream %s: SDP file %s read (%d tracks)", record.stream_id, record.route.url, len(record.tracks))

    async def _listen_upstream(self, record: StreamRecord) -> None:
        """The flows of an SDP file's stream: each receives its track once where the file says
        (a group joined on the proxy of the route's node), from the declared source only."""
        source = read_sdp_source(record.route.url)
        proxy = self._proxy_for(record.route.node)
        flows: dict[int, FlowRef] = {}
        try:
            for track in record.tracks:
                flow_id = f"{record.stream_id}/{track.index}/{record.generation}"
                ingress = await proxy.add_flow(
                    flow_id, track.clock_rate, {"stream": record.stream_id, "track": str(track.index),
                                                "kind": track.kind}, source=source.sources[track.index],
                    listen=source.listen[track.index], ssm=source.ssm[track.index])
                flows[track.index] = FlowRef(proxy.node, proxy.proxy_id, flow_id, ingress)
        except BaseException:
            for ref in flows.values():
                await self._remove_flow(ref)
            raise
        record.flows = flows
        record.sources = dict(enumerate(source.sources))
        self._move(record, Trigger.SET_UP)
        self.store.put_stream(record)

    async def _setup_upstream(self, record: StreamRecord) -> None:
        if is_sdp_file(record.route.url):
            return await self._listen_upstream(record)
        stub = self._holder(record)
        proxy = self._proxy_for(stub.info.node)
        flows: dict[int, FlowRef] = {}
        try:
            bind_host = _ingress_host(record.route.url, proxy)
            for track in record.tracks:
                flow_id = f"{record.stream_id}/{track.index}/{record.generation}"
                labels = {"stream": record.stream_id, "track": str(track.index), "kind": track.kind}
                if bind_host:
                    ingress = await proxy.add_flow(flow_id, track.clock_rate, labels, bind_host=bind_host)
                else:
                    ingress = await proxy.add_flow(flow_id, track.clock_rate, labels)
                flows[track.index] = FlowRef(proxy.node, proxy.proxy_id, flow_id, ingress)
            answered = await stub.setup(record.stream_id, list(flows), [f.ingress for f in flows.values()])
            await self._join_upstream_groups(record, proxy, flows, answered)
            sources = self._upstream_sources(record, list(flows), answered)
            for index, source in sources.items():
                await proxy.set_flow_source(flows[index].flow_id, source)
        except BaseException:
            for ref in flows.values():
                await self._remove_flow(ref)
            raise
        record.flows = flows
        record.sources = sources
        self._move(record, Trigger.SET_UP)
        self.store.put_stream(record)

    async def _join_upstream_groups(self, record: StreamRecord, proxy: DataPlane, flows: dict[int, FlowRef],
                                    answered: list[pb.SourceFilter]) -> None:
        """Tracks the upstream multicasts (its answer names a group): their flows are replaced by
        flows receiving in that group (joined for any sender; the flow accepts the answered one)."""
        for index, source in zip(list(flows), answered, strict=False):
            if not source.HasField("group"):
                continue
            old = flows[index]
            await self._remove_flow(old)
            group = source.group
            check = pb.SourceFilter(host=source.host, rtp_port=source.rtp_port, rtcp_port=source.rtcp_port)
            track = record.tracks[index]
            ingress = await proxy.add_flow(old.flow_id, track.clock_rate, {
                "stream": record.stream_id, "track": str(index), "kind": track.kind}, source=check, listen=group)
            flows[index] = FlowRef(proxy.node, proxy.proxy_id, old.flow_id, ingress)
            log.info("stream %s: track %d received in the upstream's group %s:%d", record.stream_id, index,
                     group.host, group.rtp_port)

    @staticmethod
    def _upstream_sources(record: StreamRecord, indexes: list[int],
                          answered: list[pb.SourceFilter]) -> dict[int, pb.SourceFilter]:
        """Each track's source: what the SETUP answered, else the URL's host with any port (weaker)."""
        if len(answered) == len(indexes) and all(s.host for s in answered):
            return dict(zip(indexes, answered, strict=True))
        host = urlsplit(record.route.url).hostname or ""
        log.warning("stream %s: the upstream's SETUP named no sources; accepting media from %s, any port",
                    record.stream_id, host or "nowhere")
        return {index: pb.SourceFilter(host=host) for index in indexes}

    async def _renew_sources(self, record: StreamRecord, answered: Mapping[int, pb.SourceFilter]) -> None:
        """A reconnected upstream sends from where its new SETUPs said (as the first SETUPs were
        trusted); a track they named no source for accepts any port of the old host instead."""
        for index, ref in record.flows.items():
            source = record.sources.get(index)
            proxy = self._dataplane_of(ref)
            if source is None or proxy is None:
                continue
            new = answered.get(index)
            if new is None or not new.host:
                new = pb.SourceFilter(host=source.host)
            if new == source:
                continue
            with contextlib.suppress(MsmError):
                await proxy.set_flow_source(ref.flow_id, new)
                record.sources[index] = new

    def _check_destination(self, dest: pb.Endpoint) -> None:
        """A viewer's client ports: unicast receiver ports, never a proxy's own ingress (a loop)."""
        if not dest.host:
            raise UnsupportedTransport("a destination address is required")
        for port in (dest.rtp_port, dest.rtcp_port):
            if not MIN_CLIENT_PORT <= port <= 65535:
                raise UnsupportedTransport(f"client_port {port} is outside {MIN_CLIENT_PORT}-65535")
        if dest.rtp_port == dest.rtcp_port or (
                self.port_pairs and (dest.rtp_port % 2 or dest.rtcp_port != dest.rtp_port + 1)):
            raise UnsupportedTransport("client_port must be an even RTP port and the next one for RTCP")
        ports = {dest.rtp_port, dest.rtcp_port}
        if self.proxy_port_range is not None and self._is_proxy_host(dest.host, set()):
            low, high = self.proxy_port_range
            if any(low <= port <= high for port in ports):
                raise Refused(f"client_port {dest.rtp_port}-{dest.rtcp_port} is in the proxies' port range")
        for stream_id in self.store.stream_ids():
            record = self.store.get_stream(stream_id)
            refs = [*record.flows.values(), *record.relays.values()] if record is not None else []
            hosts = {ref.ingress.host for ref in refs}
            for ref in refs:
                if {ref.ingress.rtp_port, ref.ingress.rtcp_port} & ports and self._is_proxy_host(dest.host, hosts):
                    raise Refused(f"client_port {dest.rtp_port}-{dest.rtcp_port} is a proxy's own ingress")

    @staticmethod
    def _is_proxy_host(host: str, proxy_hosts: set[str]) -> bool:
        """Whether ``host`` may reach a proxy: one of its addresses, loopback or unspecified."""
        if host in proxy_hosts:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return ip.is_loopback or ip.is_unspecified or str(ip) in proxy_hosts

    async def _remove_flow(self, ref: FlowRef) -> None:
        self._cancel_rekey(ref.flow_id)
        proxy = self._dataplane_of(ref)
        if proxy is not None:
            with contextlib.suppress(Unavailable):
                await proxy.remove_flow(ref.flow_id)

    async def _close_stream(self, record: StreamRecord, why: str) -> None:
        log.info("stream %s: closing upstream (%s)", record.stream_id, why)
        self._cancel_linger(record.stream_id)
        stub = self.stubs.get(record.upstream_stub or "")
        if stub is not None:
            with contextlib.suppress(MsmError):
                await stub.close_upstream(record.stream_id)
        for ref in [*record.relays.values(), *record.flows.values()]:
            await self._remove_flow(ref)
        record.relays = {}
        for group in self.multicast.of_stream(record.stream_id):
            self.multicast.release(group.stream_id, group.node)
        record.sdp = None
        record.tracks = []
        record.flows = {}
        record.sources = {}
        record.playing = False
        record.upstream_stub = None
        self._move(record, Trigger.CLOSE)
        self.store.put_stream(record)

    # -- requests from a viewer's stub ----------------------------------------------------------
    async def describe(self, stub: StubInfo, request: pb.DescribeRequest) -> pb.DescribeReply:
        route = await self.resolver.resolve(
            request.url, Asker(namespace=stub.namespace, original_dst=request.original_dst))
        async with self._lock(route.name):
            record = self.store.get_stream(route.name)
            if record is not None and record.route != route:
                await self._replace(record)
                record = None
            if record is None:
                record = StreamRecord(route)
                self.store.put_stream(record)
            if record.sdp is None:
                await self._open(record)
            if not self.store.viewers(record.stream_id):
                # A DESCRIBE that is never followed by SETUP must not pin the upstream.
                self._schedule_linger(record.stream_id)
            reply = pb.DescribeReply(stream_id=record.stream_id, sdp=record.sdp or "", tracks=record.tracks)
            if route.multicast:
                # Announced in the SDP (c=IN IP4 group/ttl); released with the stream if nobody joins.
                # With the pool full the SDP stays unicast: unicast viewers must still play.
                try:
                    group = self.multicast.lease(record.stream_id, stub.node)
                except ResourceExhausted as exc:
                    log.warning("stream %s: no multicast group announced: %s", record.stream_id, exc)
                else:
                    reply.multicast_group.CopyFrom(group.endpoint())
                    reply.multicast_ttl = group.ttl
            return reply

    async def _replace(self, record: StreamRecord) -> None:
        """The route of a known stream changed: the old upstream and its viewers go."""
        log.info("stream %s: route changed to %s", record.stream_id, redact_url(record.route.url))
        for viewer in self.store.viewers(record.stream_id):
            await self._drop_viewer(record, viewer, [], reschedule=False)
        if record.sdp is not None:
            await self._close_stream(record, "route changed")
        self.store.delete_stream(record.stream_id)

    async def setup(self, stub: StubInfo, request: pb.SetupRequest) -> pb.SetupReply:
        if not request.multicast:
            self._check_destination(request.destination)   # before any flow or port is taken
        async with self._lock(request.stream_id):
            record = self._stream(request.stream_id)
            if request.multicast and not record.route.multicast:
                raise UnsupportedTransport(f"stream {record.stream_id} is not offered over multicast")
            if record.sdp is None:
                await self._open(record)
            if request.track_index >= len(record.tracks):
                raise NotFound(f"stream {record.stream_id} has no track {request.track_index}")
            self._cancel_linger(record.stream_id)
            try:
                return await self._add_leg(record, stub, request)
            except BaseException:
                if not self.store.viewers(record.stream_id):
                    self._schedule_linger(record.stream_id)
                raise

    async def _add_leg(self, record: StreamRecord, stub: StubInfo, request: pb.SetupRequest) -> pb.SetupReply:
        if not record.flows:
            await self._setup_upstream(record)
        viewer = self.store.get_viewer(record.stream_id, request.session_id) or ViewerRecord(
            record.stream_id, request.session_id, stub.stub_id, request.viewer_host, node=stub.node)
        if request.track_index not in viewer.legs:
            self._check_stub_legs(stub.stub_id)
        ref = await self._flow_for(record, request.track_index, viewer.node)
        proxy = self._dataplane_of(ref)
        if proxy is None:
            raise Unavailable(f"the proxy on node {ref.node} restarted")
        # Legs are named by the session's tag, never its id: proxies publish leg ids and
        # labels in their metrics and ListFlows, and the id lets its holder control the session.
        if request.multicast:
            return await self._join_group(record, viewer, request, ref, proxy)
        await self._leave_group(record, viewer, [request.track_index])   # a multicast track set up again
        tag = self._leg_tag(record.stream_id, request.session_id, request.track_index, ref)
        leg_id = f"{tag}/{request.track_index}"
        await proxy.add_leg(ref.flow_id, leg_id, request.destination, enabled=viewer.playing, labels={
            "session": tag, "viewer": request.viewer_host,
            "namespace": stub.namespace, "pod": stub.pod})
        viewer.legs[request.track_index] = LegRef(leg_id, ref)
        self.store.put_viewer(viewer)
        log.info("stream %s: viewer %s (%s) set up track %d -> %s:%d", record.stream_id,
                 tag, request.viewer_host, request.track_index,
                 request.destination.host, request.destination.rtp_port)
        return pb.SetupReply(stream_id=record.stream_id, track_index=request.track_index,
                             source=_source_for(ref.ingress, request.destination.host))

    async def _join_group(self, record: StreamRecord, viewer: ViewerRecord, request: pb.SetupRequest,
                          ref: FlowRef, proxy: DataPlane) -> pb.SetupReply:
        """The viewer's track comes from its node's group: the group's one leg is added with its
        first member (disabled until a member plays)."""
        index = request.track_index
        group = self.multicast.lease(record.stream_id, viewer.node)
        members = group.members.setdefault(index, set())
        leg_id = group_leg(group.node, index)
        if not members:
            try:
                await proxy.add_leg(ref.flow_id, leg_id, group.endpoint(index), enabled=False, labels={
                    "session": leg_id, "viewer": f"multicast {group.address}"}, multicast_ttl=group.ttl)
            except BaseException:
                if group.empty:
                    self.multicast.release(group.stream_id, group.node)
                raise
        old = viewer.legs.get(index)
        if old is not None and old.leg_id != leg_id:   # a unicast track set up again as multicast
            with contextlib.suppress(Unavailable):
                await proxy.remove_leg(old.flow.flow_id, old.leg_id)
        members.add(viewer.session_id)
        if viewer.playing:
            await self._play_group(group, index, viewer.session_id, True, proxy, ref.flow_id)
        viewer.legs[index] = LegRef(leg_id, ref)
        self.store.put_viewer(viewer)
        log.info("stream %s: viewer %s joined %s:%d (track %d, %d members)", record.stream_id,
                 session_tag(viewer.session_id), group.address, group.endpoint(index).rtp_port, index, len(members))
        return pb.SetupReply(stream_id=record.stream_id, track_index=index, source=ref.ingress,
                             group=group.endpoint(index), ttl=group.ttl)

    async def _play_group(self, group: Group, index: int, session_id: str, playing: bool,
                          proxy: DataPlane, flow_id: str) -> None:
        """A member plays or pauses: the group's leg sends while any member plays."""
        players = group.playing.setdefault(index, set())
        before = bool(players)
        if playing:
            players.add(session_id)
        else:
            players.discard(session_id)
        if bool(players) != before:
            with contextlib.suppress(Unavailable):
                await proxy.update_leg(flow_id, group_leg(group.node, index), enabled=bool(players))

    async def _leave_group(self, record: StreamRecord, viewer: ViewerRecord, tracks: list[int]) -> None:
        """The viewer leaves its group on ``tracks`` (all: []); a track's last member takes its leg,
        the group's last member releases the group."""
        group = self.multicast.find(record.stream_id, viewer.node)
        if group is None:
            return
        left = False
        for index, leg in list(viewer.legs.items()):
            if (tracks and index not in tracks) or leg.leg_id != group_leg(group.node, index):
                continue
            del viewer.legs[index]
            left = True
            members = group.members.get(index, set())
            members.discard(viewer.session_id)
            proxy = self._dataplane_of(leg.flow)
            if proxy is None:
                continue
            if members:
                await self._play_group(group, index, viewer.session_id, False, proxy, leg.flow.flow_id)
            else:
                group.playing.pop(index, None)
                with contextlib.suppress(Unavailable):
                    await proxy.remove_leg(leg.flow.flow_id, leg.leg_id)
        if left and group.empty:
            self.multicast.release(group.stream_id, group.node)
            log.info("stream %s: multicast group %s on node %s released", record.stream_id, group.address,
                     group.node or "-")

    def _leg_tag(self, stream_id: str, session_id: str, index: int, ref: FlowRef) -> str:
        """The session's tag, or when another session's leg on the same flow already has it
        (tags are 32 bits: rare, not impossible) the tag with ``~n`` so leg ids stay unique."""
        mine = self.store.get_viewer(stream_id, session_id)
        if mine is not None and index in mine.legs and mine.legs[index].flow.flow_id == ref.flow_id:
            return mine.legs[index].leg_id.rpartition("/")[0]   # a repeated SETUP keeps its leg
        taken = {leg.leg_id for v in self.store.viewers(stream_id) if v.session_id != session_id
                 for leg in v.legs.values() if leg.flow.flow_id == ref.flow_id}
        tag = base = session_tag(session_id)
        n = 0
        while f"{tag}/{index}" in taken:
            n += 1
            tag = f"{base}~{n}"
        return tag

    def _check_stub_legs(self, stub_id: str) -> None:
        held = sum(len(viewer.legs) for stream_id in self.store.stream_ids()
                   for viewer in self.store.viewers(stream_id) if viewer.stub_id == stub_id)
        if held >= self.settings.max_legs_per_stub:
            log.warning("stub %s holds %d legs, its limit: SETUP refused", stub_id, held)
            raise ResourceExhausted(f"this stub already holds {held} legs, the most one stub may hold")

    async def _flow_for(self, record: StreamRecord, index: int, node: str) -> FlowRef:
        """The flow a viewer on ``node`` is fed from: the source flow on the source's
        node, else a relay flow on the viewer's node (created once per node and track)."""
        source = record.flows[index]
        proxy = self.proxies.get(node)
        if proxy is None or proxy.node == source.node:
            return source
        relay = record.relays.get((node, index))
        if relay is not None:
            return relay
        source_proxy = self._dataplane_of(source)
        if source_proxy is None:
            raise Unavailable(f"the proxy on node {source.node} restarted")
        track = record.tracks[index]
        flow_id = f"{record.stream_id}/{index}/{record.generation}@{node}"
        # Its media comes from the source flow's own ingress socket (legs send from it).
        feed = pb.SourceFilter(host=source.ingress.host, rtp_port=source.ingress.rtp_port,
                               rtcp_port=source.ingress.rtcp_port)
        # One fresh key per relay leg: the source node's leg protects, the relay flow unprotects.
        profile = relay_profile(self.settings.srtp_profile, source_proxy, proxy)
        key = new_srtp_key(epoch=1, profile=profile) if self.srtp else None
        ingress = await proxy.add_flow(flow_id, track.clock_rate, {
            "stream": record.stream_id, "track": str(index), "kind": track.kind, "hop": "relay"}, source=feed,
            srtp=key)
        relay = FlowRef(proxy.node, proxy.proxy_id, flow_id, ingress)
        try:
            await source_proxy.add_leg(source.flow_id, f"relay@{node}", ingress, enabled=True, labels={
                "session": f"relay@{node}", "viewer": f"proxy {node}"}, srtp=key)
        except BaseException:
            await self._remove_flow(relay)
            raise
        if key is not None:
            self._profiles[flow_id] = profile
            self._schedule_rekey(record.stream_id, node, index, flow_id, 1, self.rekey_interval)
        record.relays[(node, index)] = relay
        self.store.put_stream(record)
        log.info("stream %s: track %d relayed %s -> %s", record.stream_id, index, source.node, node)
        return relay

    # -- SRTP key rotation on relay legs ------------------------------------------------------
    def _schedule_rekey(self, stream_id: str, node: str, index: int, flow_id: str, epoch: int,
                        delay: float) -> None:
        def due() -> None:
            self.spawn(self._rekey(stream_id, node, index, flow_id, epoch + 1), name=f"rekey {flow_id}")
        self._cancel_timer(flow_id)
        self._rekeys[flow_id] = (epoch, self.clock.call_later(delay, due))

    def _cancel_timer(self, flow_id: str) -> None:
        entry = self._rekeys.pop(flow_id, None)
        if entry is not None:
            entry[1].cancel()

    def _cancel_rekey(self, flow_id: str) -> None:
        """The relay is gone: its rotation and its profile."""
        self._cancel_timer(flow_id)
        self._profiles.pop(flow_id, None)

    async def _rekey(self, stream_id: str, node: str, index: int, flow_id: str, epoch: int) -> None:
        """A new key for the relay ``flow_id``: its receiving flow first, then the sending leg."""
        async with self._lock(stream_id):
            record = self.store.get_stream(stream_id)
            relay = record.relays.get((node, index)) if record is not None else None
            source = record.flows.get(index) if record is not None else None
            relay_proxy = self._dataplane_of(relay) if relay is not None else None
            source_proxy = self._dataplane_of(source) if source is not None else None
            if (relay is None or relay.flow_id != flow_id or source is None or relay_proxy is None
                    or source_proxy is None):
                self._rekeys.pop(flow_id, None)   # the relay is gone: so is its rotation
                self._profiles.pop(flow_id, None)
                return
            key = new_srtp_key(epoch, self._profiles.get(flow_id, SRTP_PROFILE))
            try:
                # The receiver first: it still accepts the old key for a grace period
                # (rtp_proxy/srtp.py REKEY_GRACE), so nothing in flight is lost while
                # the sender switches.
                await relay_proxy.rekey(flow_id, "", key)
                await source_proxy.rekey(source.flow_id, f"relay@{node}", key)
            except MsmError as exc:
                log.warning("stream %s: rekeying the relay to node %s failed (%s); retrying in %gs",
                            stream_id, node, exc.reason, REKEY_RETRY)
                self._schedule_rekey(stream_id, node, index, flow_id, epoch, REKEY_RETRY)
                return
            log.info("stream %s: track %d relay to node %s rekeyed (%s, epoch %d)", stream_id, index, node,
                     key.profile, epoch)
            self._schedule_rekey(stream_id, node, index, flow_id, epoch, self.rekey_interval)

    async def play(self, stub: StubInfo, request: pb.SessionRequest) -> pb.SessionReply:
        async with self._lock(request.stream_id):
            record = self._stream(request.stream_id)
            viewer = self._viewer(record.stream_id, request.session_id)
            if not record.flows:
                raise MethodNotValid("stream is not set up")
            tracks = list(request.track_indexes)
            # Read before the legs are enabled: what the viewer gets first is after this.
            info, waiting = await self._rtp_positions(viewer, tracks)
            await self._enable(viewer, tracks, True)
            viewer.playing = True
            self.store.put_viewer(viewer)
            if not record.playing:
                if not is_sdp_file(record.route.url):
                    await self._holder(record).play(record.stream_id)
                record.playing = True
                self._move(record, Trigger.PLAY)
                self.store.put_stream(record)
        # Flows that had sent nothing: the viewer gets their first packet (outside the lock).
        info += await self._first_positions(waiting)
        info.sort(key=lambda i: i.track_index)
        return pb.SessionReply(range="npt=now-", rtp_info=info)

    async def _out_positions(self, legs: Mapping[int, LegRef]) -> dict[int, pb.FlowStats]:
        """Each leg's flow statistics (its first and latest packet sent), by track; unreachable: left out."""
        found: dict[int, pb.FlowStats] = {}
        by_proxy: dict[str, list[tuple[int, LegRef]]] = {}
        for index, leg in legs.items():
            by_proxy.setdefault(leg.flow.node, []).append((index, leg))
        for entries in by_proxy.values():
            proxy = self._dataplane_of(entries[0][1].flow)
            if proxy is None:
                continue
            try:
                flows = {f.flow_id: f for f in await proxy.list_flows()}
            except MsmError:
                continue
            for index, leg in entries:
                stats = flows.get(leg.flow.flow_id)
                if stats is not None:
                    found[index] = stats
        return found

    async def _rtp_positions(self, viewer: ViewerRecord, tracks: list[int]
                             ) -> tuple[list[pb.RtpInfo], dict[int, LegRef]]:
        """RTP-Info of the tracks whose flow is sending (the packet after its latest), and the
        legs of those that have sent nothing yet."""
        legs = {i: leg for i, leg in viewer.legs.items() if not tracks or i in tracks}
        info: list[pb.RtpInfo] = []
        waiting: dict[int, LegRef] = {}
        for index, stats in (await self._out_positions(legs)).items():
            if stats.HasField("last_out"):
                last = stats.last_out
                info.append(pb.RtpInfo(track_index=index, seq=(last.seq + 1) & 0xFFFF, rtptime=last.rtptime))
            elif stats.reports_out:   # (a proxy that never reports them is not waited for)
                waiting[index] = legs[index]
        return info, waiting

    async def _first_positions(self, legs: dict[int, LegRef]) -> list[pb.RtpInfo]:
        """RTP-Info from the first packet of flows that had sent nothing, waiting a moment
        (RTP_INFO_WAIT) for it; a track still silent then is left out."""
        info: list[pb.RtpInfo] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RTP_INFO_WAIT
        while legs:
            for index, stats in (await self._out_positions(legs)).items():
                if stats.HasField("first_out"):
                    first = stats.first_out
                    info.append(pb.RtpInfo(track_index=index, seq=first.seq, rtptime=first.rtptime))
                    del legs[index]
            if not legs or loop.time() >= deadline:
                break
            await asyncio.sleep(RTP_INFO_POLL)
        return info

    def sessions_heard(self, node: str, legs: Iterable[pb.LegKey]) -> dict[str, list[str]]:
        """The sessions behind ``legs`` of ``node``'s proxy (those whose viewers sent RTCP),
        by the stub that holds them; legs of other nodes and unknown legs count for nothing."""
        heard = {(leg.flow_id, leg.leg_id) for leg in legs}
        alive: dict[str, list[str]] = {}
        for stream_id in self.store.stream_ids():
            for viewer in self.store.viewers(stream_id):
                if any(leg.flow.node == node and (leg.flow.flow_id, leg.leg_id) in heard
                       for leg in viewer.legs.values()):
                    alive.setdefault(viewer.stub_id, []).append(viewer.session_id)
        return alive

    async def pause(self, stub: StubInfo, request: pb.SessionRequest) -> pb.SessionReply:
        async with self._lock(request.stream_id):
            viewer = self._viewer(self._stream(request.stream_id).stream_id, request.session_id)
            await self._enable(viewer, list(request.track_indexes), False)
            viewer.playing = False
            self.store.put_viewer(viewer)
            return pb.SessionReply()

    async def teardown(self, stub: StubInfo, request: pb.SessionRequest) -> pb.SessionReply:
        async with self._lock(request.stream_id):
            record = self._stream(request.stream_id)
            viewer = self.store.get_viewer(record.stream_id, request.session_id)
            if viewer is not None:
                await self._drop_viewer(record, viewer, list(request.track_indexes))
            return pb.SessionReply()

    async def _enable(self, viewer: ViewerRecord, tracks: list[int], enabled: bool) -> None:
        group = self.multicast.find(viewer.stream_id, viewer.node)
        for index, leg in viewer.legs.items():
            if tracks and index not in tracks:
                continue
            proxy = self._dataplane_of(leg.flow)
            if proxy is None:
                continue
            if group is not None and leg.leg_id == group_leg(group.node, index):
                await self._play_group(group, index, viewer.session_id, enabled, proxy, leg.flow.flow_id)
            else:
                await proxy.update_leg(leg.flow.flow_id, leg.leg_id, enabled=enabled)

    # -- departures -------------------------------------------------------------------------------
    async def _drop_viewer(self, record: StreamRecord, viewer: ViewerRecord, tracks: list[int], *,
                           reschedule: bool = True) -> None:
        """Remove ``viewer``'s legs (of ``tracks``, or all); the viewer goes with its last leg,
        relays nobody uses any more go too, and the last viewer starts the linger."""
        await self._leave_group(record, viewer, tracks)
        for index in list(viewer.legs):
            if tracks and index not in tracks:
                continue
            leg = viewer.legs.pop(index)
            proxy = self._dataplane_of(leg.flow)
            if proxy is not None:
                with contextlib.suppress(Unavailable):
                    await proxy.remove_leg(leg.flow.flow_id, leg.leg_id)
        if viewer.legs:
            self.store.put_viewer(viewer)
        else:
            self.store.delete_viewer(record.stream_id, viewer.session_id)
            log.info("stream %s: viewer %s left (%d remain)", record.stream_id, session_tag(viewer.session_id),
                     len(self.store.viewers(record.stream_id)))
        await self._drop_unused_relays(record)
        if reschedule and not self.store.viewers(record.stream_id):
            self._schedule_linger(record.stream_id)

    async def _drop_unused_relays(self, record: StreamRecord) -> None:
        used = {(v.node, i) for v in self.store.viewers(record.stream_id) for i in v.legs}
        unused = [key for key in record.relays if key not in used]
        for node, index in unused:
            relay = record.relays.pop((node, index))
            source = record.flows.get(index)
            source_proxy = self._dataplane_of(source) if source is not None else None
            if source is not None and source_proxy is not None:
                with contextlib.suppress(Unavailable):
                    await source_proxy.remove_leg(source.flow_id, f"relay@{node}")
            await self._remove_flow(relay)
        if unused:
            self.store.put_stream(record)

    async def viewer_gone(self, session_id: str, reason: str) -> None:
        """A viewer's session ended without TEARDOWN (its stub says so)."""
        for stream_id in self.store.stream_ids():
            async with self._lock(stream_id):
                viewer = self.store.get_viewer(stream_id, session_id)
                record = self.store.get_stream(stream_id)
                if viewer is not None and record is not None:
                    log.info("stream %s: viewer %s gone (%s)", stream_id, session_tag(session_id), reason)
                    await self._drop_viewer(record, viewer, [])

    async def stub_gone(self, stub_id: str) -> None:
        """A stub's link ended: its viewers go, and every upstream it held closes."""
        for stream_id in self.store.stream_ids():
            async with self._lock(stream_id):
                for viewer in self.store.viewers(stream_id):
                    record = self.store.get_stream(stream_id)
                    if viewer.stub_id == stub_id and record is not None:
                        await self._drop_viewer(record, viewer, [])
                record = self.store.get_stream(stream_id)
                if record is not None and record.upstream_stub == stub_id and record.sdp is not None:
                    await self._close_stream(record, f"stub {stub_id} disconnected")

    async def proxy_restarted(self, old: DataPlane) -> None:
        """Reset every stream with a flow on the ``old`` proxy instance: viewers dropped, upstream closed."""
        for stream_id in self.store.stream_ids():
            async with self._lock(stream_id):
                record = self.store.get_stream(stream_id)
                refs = [*record.flows.values(), *record.relays.values()] if record is not None else []
                if record is not None and any((ref.node, ref.proxy_id) == (old.node, old.proxy_id) for ref in refs):
                    for viewer in self.store.viewers(stream_id):
                        self.store.delete_viewer(stream_id, viewer.session_id)
                    await self._close_stream(record, "proxy restarted")
        await old.close()

    # -- what the upstream's stub reports ------------------------------------------------------------
    async def upstream_event(self, event: pb.UpstreamEvent) -> None:
        trigger = trigger_of_event(event)
        if trigger is None:
            return
        async with self._lock(event.stream_id):
            record = self.store.get_stream(event.stream_id)
            if record is None:
                return
            before = record.upstream_state
            if not self._move(record, trigger):
                return
            if trigger is Trigger.RECONNECTED_PLAYING or trigger is Trigger.RECONNECTED_READY:
                record.opened += 1
                await self._renew_sources(record, event.sources)
            self.store.put_stream(record)
            if record.upstream_state != before:
                log.info("stream %s: upstream %s%s", record.stream_id, record.upstream_state.value,
                         f" ({event.detail})" if event.detail else "")
            if record.upstream_state in (UpstreamState.DOWN, UpstreamState.PLAYING):
                self._notify_viewers(record)

    def _notify_viewers(self, record: StreamRecord) -> None:
        up = record.upstream_state is UpstreamState.PLAYING
        for stub_id in {v.stub_id for v in self.store.viewers(record.stream_id)}:
            stub = self.stubs.get(stub_id)
            if stub is not None:
                stub.stream_state(record.stream_id, up)


def _ingress_host(url: str, proxy: DataPlane) -> str:
    """Where the proxy binds a source's flows: its media address of the source's IP family when
    the URL names an address of the other family than the media host's (an IPv6 camera, an IPv4
    media host), else "" (the media host). The upstream sends to the stub's address of its own
    family, on the ports the flow answers; the flow's other-family pair serves viewers."""
    try:
        source = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return ""
    hello = getattr(proxy, "hello", None)
    media = str(getattr(hello, "media_host", "") or "")
    if not media or (source.version == 6) == (":" in media):
        return ""
    return other_family_host(media) or ""


def _source_for(ingress: pb.Endpoint, viewer_host: str) -> pb.Endpoint:
    """Where a viewer's media comes from: the flow's ingress or, for a viewer of the other IP
    family, the flow's pair of that family (the same ports; a wildcard when its address cannot
    be derived, and the viewer then takes the RTSP server's)."""
    if not viewer_host or (":" in viewer_host) == (":" in ingress.host):
        return ingress
    host = other_family_host(ingress.host) or ("::" if ":" in viewer_host else "0.0.0.0")
    return pb.Endpoint(host=host, rtp_port=ingress.rtp_port, rtcp_port=ingress.rtcp_port)
