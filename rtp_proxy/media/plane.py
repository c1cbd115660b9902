"""This proxy's part in multipoint groups across nodes: members, fabric endpoints, links.

:class:`MediaNode` is what the rest of the proxy uses:

- the app-facing side (an app's memif connection, a bridge) joins and leaves groups
  through it (:meth:`~MediaNode.join_sender`, :meth:`~MediaNode.join_receiver`,
  :meth:`~MediaNode.leave`) and a sender hands it frames (:meth:`~MediaNode.publish`).
  Each join is registered in the local group first (local fan-out works at once) and
  then told to the control plane (``MediaControl.Join``), which places the links;
- the control plane programs it through ``MediaPlane`` (:class:`MediaPlaneService`, on
  the proxy's DataPlane port, control plane's role only): ``OpenGroupLink`` makes a
  :class:`~.fabric_peer.FabricPeer` receiver ``node:<peer>`` in the group,
  ``ExpectGroup`` lets frames of one link from one peer in (:class:`~.fabric_peer.InboundLinks`);
- its fabric endpoints (one per provider) are announced to the control plane whenever
  the proxy (re)registers, and every member is joined again then, so a restarted
  control plane learns the groups back.

Threads: libfabric endpoints are driven by one thread at a time, and groups are not
thread-safe, so one lock covers both. A reader thread polls the endpoints (taking the
lock only to poll, never to wait), publishes each received frame into its group and
releases the fabric buffer after (returning the credit to the sender). ``publish`` may
be called from any thread; the MediaPlane calls run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc

from msm.protos import media_pb2 as mpb
from msm.protos import media_pb2_grpc as mpb_grpc
from msm.runtime.backoff import Backoff
from msm.runtime.grpcutil import abort, error_from_rpc
from msm.sdk.errors import MsmError, NotFound, Refused
from msm.security.identity import Role
from msm.security.tls import TlsFiles, secure_channel

from .fabric_link import FabricEndpoint, ReceivedFrame
from .fabric_peer import FabricPeer, Inbound, InboundLinks, decode_info
from .groups import FrameInfo, Group, GroupTable, Receiver

log = logging.getLogger(__name__)

__all__ = ["MediaNode", "MediaPlaneService", "Membership", "add_media_plane", "open_endpoints"]

CONTROL_TIMEOUT = 5.0       # one MediaControl call (the control plane programs links before it answers)
IDLE_WAIT = 0.002           # the reader's wait for fabric activity when none came (lock not held)
REGISTRATION_CHECK = 0.1    # how often the (re)registration of the proxy is looked at
# Receivers listed in one ListGroups reply, all groups together (the rest are counted in left_out):
# 256 groups of 256 receivers would be megabytes, past gRPC's 4 MB message limit; an operator
# reads a few dozen. About 150 bytes each, so a reply stays well under 1 MB.
MAX_LISTED_RECEIVERS = 4096

T = TypeVar("T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True)
class Membership:
    urn: str
    member: str
    sender: bool
    provider: str = ""
    max_frame: int = 0


class MediaNode:
    """Groups on this node and their links to other nodes (see the module's docstring)."""

    def __init__(self, node: str, *, endpoints: Mapping[str, FabricEndpoint] | None = None,
                 control: str | None = None, tls: TlsFiles | None = None, groups: GroupTable | None = None) -> None:
        self.node = node
        self.endpoints = dict(endpoints or {})     # provider -> endpoint (one per provider)
        self.control = control                     # None: no control plane, groups stay local
        self.tls = tls
        self.groups = groups if groups is not None else GroupTable()
        self.inbound = InboundLinks()
        # (urn, peer node) -> the receiver sending to it; bounded by the groups' receivers.
        self.outbound: dict[tuple[str, str], FabricPeer] = {}
        # (urn, member) -> what to join again after a re-registration; bounded by the groups too.
        self.members: dict[tuple[str, str], Membership] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._sync: asyncio.Task[None] | None = None
        self.proxy_id = ""
        # Adds the proxy's bridges and app connections to ListGroups' reply (the proxy's MediaCollector
        # sets it: the same sources its /metrics reads). Called on the event loop, without the lock.
        self.extra_stats: Callable[[mpb.ListGroupsReply], None] | None = None
        self.stats_errors = 0   # ListGroups answered without them because extra_stats failed

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, registered: asyncio.Event | None = None, proxy_id: str = "") -> None:
        """Start reading the endpoints and, with ``registered`` (the proxy's registration with the control
        plane), announce them and join every member each time it is set anew."""
        self.proxy_id = proxy_id
        if self.endpoints and self._reader is None:
            self._reader = threading.Thread(target=self._read_forever, name=f"media-fabric-{self.node}", daemon=True)
            self._reader.start()
        if registered is not None and self.control and self._sync is None:
            self._sync = asyncio.get_running_loop().create_task(self._sync_forever(registered), name="media-sync")

    async def stop(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
            self._sync = None
        self._stop.set()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5.0)
            self._reader = None
        with self.lock:
            for endpoint in self.endpoints.values():
                endpoint.close()

    # -- the app-facing API -----------------------------------------------------------------------------
    async def join_sender(self, urn: str, member: str, *, provider: str = "",
                          max_frame: int = 0) -> mpb.GroupPlacement:
        """``member`` becomes the group's sender (``SenderBusy`` if it has another, here or elsewhere)."""
        _check_member(member)
        with self.lock:
            self.groups.ensure(urn).attach_sender(member)
        return await self._join(Membership(urn, member, True, provider, max_frame))

    async def join_receiver(self, urn: str, receiver: Receiver, *, provider: str = "",
                            max_frame: int = 0) -> mpb.GroupPlacement:
        """``receiver`` gets the group's frames from now on, wherever its sender is."""
        _check_member(receiver.name)
        with self.lock:
            self.groups.ensure(urn).add_receiver(receiver)
        return await self._join(Membership(urn, receiver.name, False, provider, max_frame))

    async def leave(self, urn: str, member: str) -> None:
        """``member`` leaves (as sender or receiver); leaving twice is harmless."""
        membership = self.members.pop((urn, member), None)
        self._drop_local(urn, member)
        if membership is not None and self.control:
            try:
                await self._call(lambda api: api.Leave(mpb.GroupLeave(
                    urn=urn, node=self.node, member=member,
                    role=mpb.GROUP_ROLE_SENDER if membership.sender else mpb.GROUP_ROLE_RECEIVER),
                    timeout=CONTROL_TIMEOUT))
            except MsmError as exc:   # the control plane learns it at the next registration
                log.warning("group %s: leave of %s not told to the control plane: %s", urn, member, exc.reason)

    def publish(self, urn: str, member: str, payload: memoryview, info: FrameInfo) -> int:
        """One frame from ``member``, the group's sender: offered to every receiver; how many took it."""
        with self.lock:
            group = self.groups.get(urn)
            if group is None or group.sender != member:
                raise NotFound(f"{member!r} is not the sender of group {urn!r} on node {self.node}")
            if not info.arrived_ns:
                info = FrameInfo(info.seq, info.timestamp, info.metadata, info.incomplete, time.monotonic_ns())
            return group.publish(payload, info)

    def can_send(self, urn: str) -> bool:
        """Every other node ``urn`` goes to has a credit free now: a frame published now reaches them all
        (a sender that wants no drops paces on this; otherwise frames beyond the credits are dropped)."""
        with self.lock:
            return all(peer.credits() > 0 for (u, _), peer in self.outbound.items() if u == urn)

    def in_flight(self, urn: str) -> int:
        """Frames of ``urn`` sent to other nodes and not yet released by them (shared per peer node)."""
        with self.lock:
            return sum(peer.in_flight() for (u, _), peer in self.outbound.items() if u == urn)

    async def _join(self, membership: Membership) -> mpb.GroupPlacement:
        key = (membership.urn, membership.member)
        self.members[key] = membership
        if not self.control:
            return mpb.GroupPlacement(urn=membership.urn)
        try:
            return await self._tell_join(membership)
        except Refused:   # the control plane says no (a sender elsewhere, an unknown provider): undo
            self.members.pop(key, None)
            self._drop_local(membership.urn, membership.member)
            raise
        except MsmError as exc:   # unreachable: local fan-out works now, links come at the next registration
            log.warning("group %s: join of %s not placed yet: %s", membership.urn, membership.member, exc.reason)
            return mpb.GroupPlacement(urn=membership.urn)

    def _drop_local(self, urn: str, member: str) -> None:
        with self.lock:
            group = self.groups.get(urn)
            if group is None:
                return
            group.detach_sender(member)
            group.remove_receiver(member)
            self.groups.discard_if_empty(urn)

    # -- the control plane, over MediaControl -------------------------------------------------------------
    async def _call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        assert self.control is not None
        try:
            # A channel per call: rotated certificate files are presented at once, and calls are rare.
            async with secure_channel(self.control, self.tls, role=Role.CONTROL_PLANE,
                                      insecure_ok=self.tls is None) as channel:
                return await call(mpb_grpc.MediaControlStub(channel))  # type: ignore[no-untyped-call]
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "control plane") from None

    async def _tell_join(self, m: Membership) -> mpb.GroupPlacement:
        request = mpb.GroupJoin(urn=m.urn, node=self.node, member=m.member, provider=m.provider,
                                max_frame=m.max_frame,
                                role=mpb.GROUP_ROLE_SENDER if m.sender else mpb.GROUP_ROLE_RECEIVER)
        placement: mpb.GroupPlacement = await self._call(lambda api: api.Join(request, timeout=CONTROL_TIMEOUT))
        return placement

    async def announce(self) -> None:
        """Tell the control plane this node's endpoints and members (it drops any other membership it
        holds for us), then join every member again (idempotent there)."""
        with self.lock:
            endpoints = [mpb.FabricAddress(provider=p, address=e.local_address()) for p, e in self.endpoints.items()]
        members = [mpb.GroupJoin(urn=m.urn, node=self.node, member=m.member,
                                 role=mpb.GROUP_ROLE_SENDER if m.sender else mpb.GROUP_ROLE_RECEIVER)
                   for m in self.members.values()]
        request = mpb.FabricAnnouncement(node=self.node, proxy_id=self.proxy_id, endpoints=endpoints,
                                         members=members)
        await self._call(lambda api: api.AnnounceFabric(request, timeout=CONTROL_TIMEOUT))
        for membership in list(self.members.values()):
            try:
                await self._tell_join(membership)
            except Refused as exc:
                log.warning("group %s: %s not joined again: %s", membership.urn, membership.member, exc.reason)

    async def _sync_forever(self, registered: asyncio.Event) -> None:
        backoff = Backoff(first=0.2, maximum=5.0)
        while True:
            await registered.wait()
            try:
                await self.announce()
                backoff.reset()
            except MsmError as exc:
                log.warning("groups not announced to the control plane: %s; retrying in %.1fs", exc.reason,
                            backoff.delay)
                await backoff.wait()
                continue
            while True:   # until the registration drops; then announce again
                await asyncio.sleep(REGISTRATION_CHECK)
                if not registered.is_set():
                    break

    # -- programmed by the control plane (MediaPlane) -----------------------------------------------------
    def _endpoint(self, provider: str) -> FabricEndpoint:
        endpoint = self.endpoints.get(provider)
        if endpoint is None:
            raise NotFound(f"node {self.node} has no {provider!r} fabric endpoint "
                           f"(it has {', '.join(sorted(self.endpoints)) or 'none'})")
        return endpoint

    def open_link(self, urn: str, peer_node: str, provider: str, peer_address: bytes, link_id: int) -> None:
        """Send the group's frames to ``peer_node`` too (replacing a link to it with another id or provider)."""
        if not peer_node or peer_node == self.node or not link_id:
            raise Refused("a peer node other than this one and a link id are required")
        with self.lock:
            endpoint = self._endpoint(provider)
            old = self.outbound.get((urn, peer_node))
            if old is not None and (old.link_id, old.provider, old.endpoint) == (link_id, provider, endpoint) \
                    and old.peer == endpoint.add_peer(peer_address):
                return
            group = self.groups.ensure(urn)
            peer = FabricPeer(peer_node, provider, endpoint, endpoint.add_peer(peer_address), link_id)
            group.remove_receiver(peer.name)
            group.add_receiver(peer)
            self.outbound[(urn, peer_node)] = peer
        log.info("group %s: frames to node %s over %s", urn, peer_node, provider)

    def close_link(self, urn: str, peer_node: str) -> None:
        with self.lock:
            if self.outbound.pop((urn, peer_node), None) is None:
                return
            group = self.groups.get(urn)
            if group is not None:
                group.remove_receiver(f"node:{peer_node}")
                self.groups.discard_if_empty(urn)
        log.info("group %s: no more frames to node %s", urn, peer_node)

    def expect(self, urn: str, peer_node: str, provider: str, peer_address: bytes, link_id: int) -> None:
        """Take the group's frames from ``peer_node`` on link ``link_id`` (and nothing else for it)."""
        if not peer_node or peer_node == self.node or not link_id:
            raise Refused("a peer node other than this one and a link id are required")
        with self.lock:
            endpoint = self._endpoint(provider)
            group = self.groups.ensure(urn)
            sender = f"node:{peer_node}"
            if group.sender is not None and group.sender != sender and not group.sender.startswith("node:"):
                group.attach_sender(sender)   # a local sender: SenderBusy
            link = Inbound(urn, peer_node, provider, endpoint.add_peer(peer_address), link_id)
            group.sender = sender
            self.inbound.expect(link)
        log.info("group %s: frames from node %s over %s", urn, peer_node, provider)

    def forget(self, urn: str, peer_node: str) -> None:
        with self.lock:
            if self.inbound.forget(urn, peer_node) is None:
                return
            group = self.groups.get(urn)
            if group is not None:
                group.detach_sender(f"node:{peer_node}")
                self.groups.discard_if_empty(urn)
        log.info("group %s: no more frames from node %s", urn, peer_node)

    # -- the reader thread -----------------------------------------------------------------------------
    def _read_forever(self) -> None:
        fds = [fd for e in self.endpoints.values() if (fd := e.fileno()) is not None]
        waitable = len(fds) == len(self.endpoints)
        while not self._stop.is_set():
            got = 0
            with self.lock:
                for provider, endpoint in self.endpoints.items():
                    for frame in endpoint.poll(0):
                        got += 1
                        self._arrived(provider, frame)
            if got:
                time.sleep(0)   # let a publishing thread take the lock between rounds
            elif waitable:
                select.select(fds, [], [], IDLE_WAIT)
            else:
                self._stop.wait(IDLE_WAIT / 4)

    def _arrived(self, provider: str, frame: ReceivedFrame) -> None:
        """One received frame (the lock is held): into its group if its link is expected, then released."""
        arrived = time.monotonic_ns()
        try:
            link = self.inbound.accept(provider, frame)
            group = self.groups.get(link.urn) if link is not None else None
            if group is not None:
                group.publish(frame.payload, decode_info(frame, arrived))
        finally:
            frame.release()

    # -- stats (MediaPlane.ListGroups) -----------------------------------------------------------------
    def list_groups(self) -> mpb.ListGroupsReply:
        """Every group's counters, its receivers' (at most :data:`MAX_LISTED_RECEIVERS` in all) and links';
        with :attr:`extra_stats`, the proxy's bridges and app connections too."""
        reply = self.group_stats()
        self.add_extra_stats(reply)
        return reply

    def group_stats(self) -> mpb.ListGroupsReply:
        """The groups' part of :meth:`list_groups`; any thread. The lock is taken one group at a time (a
        group's percentiles sort its receivers' latency samples), so frames keep flowing meanwhile."""
        reply = mpb.ListGroupsReply(node=self.node)
        budget, receivers = [MAX_LISTED_RECEIVERS], 0
        with self.lock:
            groups = list(self.groups)
        for group in groups:
            with self.lock:
                if self.groups.get(group.urn) is group:   # still there
                    reply.groups.append(self._group_stats(group, budget))
                    receivers += len(group.receiver_stats)
        with self.lock:
            reply.dropped.update(self.inbound.dropped)
            for provider, endpoint in self.endpoints.items():
                reply.endpoints.append(mpb.FabricAddress(provider=provider, address=endpoint.local_address()))
                stats = endpoint.stats()
                for name in ("rx_unknown_peer", "ctrl_unknown_peer", "ctrl_bad"):
                    if stats[name]:
                        reply.dropped[f"{provider}:{name}"] = stats[name]
        reply.left_out = receivers - (MAX_LISTED_RECEIVERS - budget[0])
        return reply

    def add_extra_stats(self, reply: mpb.ListGroupsReply) -> None:
        """:attr:`extra_stats` into ``reply`` (on the event loop, where the agent's tables change)."""
        if self.extra_stats is None:
            return
        try:
            self.extra_stats(reply)
        except Exception as exc:   # the groups are still worth answering; the log says what broke
            self.stats_errors += 1
            log.warning("bridges and connections left out of ListGroups: %s: %s", type(exc).__name__, exc)

    def _group_stats(self, group: Group, budget: list[int]) -> mpb.GroupStats:
        out = mpb.GroupStats(urn=group.urn, sender=group.sender or "", frames_in=group.frames_in,
                             bytes_in=group.bytes_in, incomplete=dict(group.incomplete))
        for name, stats in list(group.receiver_stats.items())[:max(0, budget[0])]:
            p50, p99 = stats.latency_us(0.5), stats.latency_us(0.99)
            out.receivers.append(mpb.GroupReceiverStats(
                name=name, frames=stats.frames, bytes=stats.bytes, drops=dict(stats.drops),
                has_latency=p50 is not None, latency_p50_us=p50 or 0.0, latency_p99_us=p99 or 0.0))
        budget[0] -= len(out.receivers)
        for (urn, peer_node), peer in self.outbound.items():
            if urn == group.urn:
                out.links.append(mpb.GroupLinkStats(peer_node=peer_node, provider=peer.provider, outgoing=True,
                                                    frames=peer.frames, bytes=peer.bytes, in_flight=peer.in_flight()))
        inbound = self.inbound.by_group.get(group.urn)
        if inbound is not None:
            out.links.append(mpb.GroupLinkStats(peer_node=inbound.peer_node, provider=inbound.provider,
                                                outgoing=False, frames=inbound.frames, bytes=inbound.bytes))
        return out


def _check_member(name: str) -> None:
    if not name or name.startswith("node:"):
        raise Refused(f"bad member name {name!r}: node:<name> stands for another node's proxy")


class MediaPlaneService(mpb_grpc.MediaPlaneServicer):
    """``MediaPlane``: the control plane programs this node's links (its role only: ``DATAPLANE_RULES``)."""

    def __init__(self, media: MediaNode) -> None:
        self.media = media

    async def _run(self, context: Context, action: Callable[[], None]) -> mpb.MediaAck:
        try:
            action()
        except MsmError as exc:
            log.warning("MediaPlane call refused: %s", exc.reason)
            await abort(context, exc)
        return mpb.MediaAck()

    async def OpenGroupLink(self, request: mpb.OpenGroupLinkRequest, context: Context) -> mpb.MediaAck:
        return await self._run(context, lambda: self.media.open_link(
            request.urn, request.peer_node, request.provider, request.peer_address, request.link_id))

    async def CloseGroupLink(self, request: mpb.CloseGroupLinkRequest, context: Context) -> mpb.MediaAck:
        return await self._run(context, lambda: self.media.close_link(request.urn, request.peer_node))

    async def ExpectGroup(self, request: mpb.ExpectGroupRequest, context: Context) -> mpb.MediaAck:
        return await self._run(context, lambda: self.media.expect(
            request.urn, request.peer_node, request.provider, request.peer_address, request.link_id))

    async def ForgetGroup(self, request: mpb.ForgetGroupRequest, context: Context) -> mpb.MediaAck:
        return await self._run(context, lambda: self.media.forget(request.urn, request.peer_node))

    async def ListGroups(self, request: mpb.ListGroupsRequest, context: Context) -> mpb.ListGroupsReply:
        # The groups' percentiles in a thread (hundreds of receivers take a while); bridges and connections
        # here, on the loop that changes them.
        reply = await asyncio.to_thread(self.media.group_stats)
        self.media.add_extra_stats(reply)
        return reply


_add_media_plane: Callable[[mpb_grpc.MediaPlaneServicer, grpc.aio.Server], None] = (
    mpb_grpc.add_MediaPlaneServicer_to_server)


def add_media_plane(media: MediaNode, server: grpc.aio.Server) -> None:
    """Serve ``MediaPlane`` for ``media`` on ``server`` (the proxy's DataPlane server)."""
    _add_media_plane(MediaPlaneService(media), server)


def open_endpoints(providers: list[str], address: str, port: int = 0, *, max_frame: int,
                   credits: int, max_peers: int) -> dict[str, FabricEndpoint]:
    """One endpoint per provider that can run here (``tcp;ofi_rxm`` bound to ``address``:``port``);
    a provider that cannot is logged and left out, so groups still fan out locally."""
    endpoints: dict[str, FabricEndpoint] = {}
    for provider in providers:
        try:
            endpoints[provider] = FabricEndpoint(provider, address, port if provider != "shm" else None,
                                                 max_frame=max_frame, credits=credits, max_peers=max_peers)
        except MsmError as exc:
            log.warning("no %s fabric endpoint: %s", provider, exc.reason)
            continue
        log.info("fabric endpoint %s ready (frames up to %d bytes, %d credits per peer, %d peers)", provider,
                 max_frame, credits, max_peers)
    return endpoints
