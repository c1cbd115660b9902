"""The gRPC side of group placement: the ``MediaControl`` servicer and each proxy's ``MediaPlane``.

:class:`MediaControlService` answers proxies (``AnnounceFabric``, ``Join``, ``Leave``) and
operators (``ListPlacements``, with every node's counters when asked: :func:`~.view.list_media`).
The Authorizer has already checked the caller's role (``msm.security.authz.CONTROL_PLANE_RULES``:
proxies only, operators for the list); here a proxy may speak only for its own node: the ``node``
it names must be its certificate's.

:class:`MediaLink` is one proxy's ``MediaPlane`` (a :class:`~.media.MediaPort`), called over
the same mutual-TLS channel as its ``DataPlane`` (:class:`~.links.ProxyLink`): the proxy's
certificate must name that node, and its server lets only the control plane's role in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from msm.protos import media_pb2 as mpb
from msm.protos import media_pb2_grpc as mpb_grpc
from msm.runtime.grpcutil import abort, error_from_rpc
from msm.sdk.errors import MsmError, Refused
from msm.security.authz import check_name, peer_identity

from .links import PROXY_TIMEOUT, ProxyLink
from .media import KNOWN_PROVIDERS, MAX_GROUPS_PER_NODE, MAX_MEMBERS_PER_NODE, MediaPlacer
from .ports import LinkClosed
from .view import list_media

log = logging.getLogger(__name__)

__all__ = ["MediaControlService", "MediaLink", "PlacementCollector", "add_media_control"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")


class MediaLink:
    """One proxy's ``MediaPlane``, on its :class:`ProxyLink`'s channel (a :class:`~.media.MediaPort`)."""

    def __init__(self, proxy: ProxyLink) -> None:
        self.proxy = proxy

    async def _call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        if self.proxy.closed:
            raise LinkClosed(f"the link to the proxy on node {self.proxy.node} is closed")
        # The generated gRPC module has no annotations. The channel is the ProxyLink's
        # current one (replaced by it when the TLS files rotate).
        api = mpb_grpc.MediaPlaneStub(self.proxy.channel)  # type: ignore[no-untyped-call]
        try:
            return await call(api)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"proxy on node {self.proxy.node}") from None
        except grpc.aio.UsageError as exc:
            raise LinkClosed(f"the link to the proxy on node {self.proxy.node} is broken: {exc}") from None

    async def open_link(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                        max_frame: int, credits: int, link_id: int) -> None:
        request = mpb.OpenGroupLinkRequest(urn=urn, peer_node=peer_node, provider=provider,
                                           peer_address=peer_address, max_frame=max_frame, credits=credits,
                                           link_id=link_id)
        await self._call(lambda api: api.OpenGroupLink(request, timeout=PROXY_TIMEOUT))

    async def close_link(self, urn: str, peer_node: str) -> None:
        request = mpb.CloseGroupLinkRequest(urn=urn, peer_node=peer_node)
        await self._call(lambda api: api.CloseGroupLink(request, timeout=PROXY_TIMEOUT))

    async def expect(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                     max_frame: int, link_id: int) -> None:
        request = mpb.ExpectGroupRequest(urn=urn, peer_node=peer_node, provider=provider,
                                         peer_address=peer_address, max_frame=max_frame, link_id=link_id)
        await self._call(lambda api: api.ExpectGroup(request, timeout=PROXY_TIMEOUT))

    async def forget(self, urn: str, peer_node: str) -> None:
        request = mpb.ForgetGroupRequest(urn=urn, peer_node=peer_node)
        await self._call(lambda api: api.ForgetGroup(request, timeout=PROXY_TIMEOUT))

    async def list_groups(self) -> mpb.ListGroupsReply:
        reply: mpb.ListGroupsReply = await self._call(
            lambda api: api.ListGroups(mpb.ListGroupsRequest(), timeout=PROXY_TIMEOUT))
        return reply


class MediaControlService(mpb_grpc.MediaControlServicer):
    """``MediaControl``: proxies' joins and leaves, answered with the group's placement.

    ``trust_domain`` None: no TLS, no identities (``--insecure``); the node named is believed.
    """

    def __init__(self, placer: MediaPlacer, trust_domain: str | None) -> None:
        self.placer = placer
        self.trust_domain = trust_domain

    async def _own_node(self, context: Context, node: str, what: str) -> None:
        """A proxy speaks only for its own node: the certificate's name must be ``node``."""
        if not node:
            raise Refused("node is required")
        if self.trust_domain is not None:
            check_name(peer_identity(context, self.trust_domain), name=node, what=what)

    async def AnnounceFabric(self, request: mpb.FabricAnnouncement, context: Context) -> mpb.MediaAck:
        try:
            await self._own_node(context, request.node, "announce the fabric endpoints of node")
            if len(request.endpoints) > len(KNOWN_PROVIDERS):
                raise Refused(f"at most one endpoint per provider ({len(KNOWN_PROVIDERS)})")
            if len(request.members) > MAX_GROUPS_PER_NODE * (MAX_MEMBERS_PER_NODE + 1):
                raise Refused("more members than one node may have")
            endpoints = {e.provider: bytes(e.address) for e in request.endpoints}
            members = {(m.urn, m.member, m.role == mpb.GROUP_ROLE_SENDER) for m in request.members}
            await self.placer.announce(request.node, request.proxy_id, endpoints, members)
        except MsmError as exc:
            log.warning("fabric endpoints of node %r refused: %s", request.node, exc.reason)
            await abort(context, exc)
        log.info("node %s: fabric endpoints %s", request.node, ", ".join(sorted(endpoints)) or "none")
        return mpb.MediaAck()

    async def Join(self, request: mpb.GroupJoin, context: Context) -> mpb.GroupPlacement:
        try:
            await self._own_node(context, request.node, "join groups for node")
            if request.role not in (mpb.GROUP_ROLE_SENDER, mpb.GROUP_ROLE_RECEIVER):
                raise Refused("role must be sender or receiver")
            return await self.placer.join(request.urn, request.node, request.member,
                                          sender=request.role == mpb.GROUP_ROLE_SENDER,
                                          provider=request.provider, max_frame=request.max_frame)
        except MsmError as exc:
            log.info("join of %r to group %r on node %r refused: %s", request.member, request.urn, request.node,
                     exc.reason)
            await abort(context, exc)

    async def Leave(self, request: mpb.GroupLeave, context: Context) -> mpb.GroupPlacement:
        try:
            await self._own_node(context, request.node, "leave groups for node")
            return await self.placer.leave(request.urn, request.node, request.member,
                                           sender=request.role == mpb.GROUP_ROLE_SENDER)
        except MsmError as exc:
            await abort(context, exc)

    async def ListPlacements(self, request: mpb.ListPlacementsRequest, context: Context) -> mpb.ListPlacementsReply:
        """Placements; ``with_stats``: each node's counters too, asked of its proxy now (a node that does
        not answer within PROXY_TIMEOUT is listed with the reason)."""
        return await list_media(self.placer, with_stats=request.with_stats)


_add_media_control: Callable[[mpb_grpc.MediaControlServicer, grpc.aio.Server], None] = (
    mpb_grpc.add_MediaControlServicer_to_server)


def add_media_control(service: MediaControlService, server: grpc.aio.Server) -> None:
    _add_media_control(service, server)


class PlacementCollector(Collector):
    """Prometheus families of the placements (read at scrape time; labels are URNs, node and member names,
    as bounded as the placer's tables): where each group's members are and whether each link is up."""

    def __init__(self, placer: MediaPlacer) -> None:
        self.placer = placer

    def collect(self) -> Iterator[Metric]:
        groups = GaugeMetricFamily("msm_media_placed_groups", "Groups the control plane places")
        members = GaugeMetricFamily("msm_media_placement_members", "A group's members on a node, by role",
                                    labels=["group", "node", "role"])
        linked = GaugeMetricFamily("msm_media_placement_linked", "1 while the fabric link from a group's sender "
                                   "node to this receiving node is programmed at both ends, 0 while it is not",
                                   labels=["group", "node", "provider"])
        placements = self.placer.placements()
        groups.add_metric([], len(placements))
        for p in placements:
            if p.sender_node:
                members.add_metric([p.urn, p.sender_node, "sender"], 1)
            for r in p.receivers:
                members.add_metric([p.urn, r.node, "receiver"], r.members)
                if r.node != p.sender_node:
                    linked.add_metric([p.urn, r.node, r.provider], 1.0 if r.linked else 0.0)
        yield from (groups, members, linked)
