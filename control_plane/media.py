"""Where a multipoint group's frames travel: the control plane's placement of groups across nodes.

A group (one sender, any number of receivers, named by URN) has members on any nodes;
each node's proxy tells the control plane who of its own joins and leaves
(``MediaControl.Join``/``Leave``) and which libfabric endpoints it has
(``AnnounceFabric``). :class:`MediaPlacer` keeps, per URN, the sender's node and the
receiving nodes with their members, and programs ONE link per receiving node other
than the sender's: ``ExpectGroup`` on the receiving proxy first (so the first frame is
accepted), then ``OpenGroupLink`` on the sender's (a receiver ``node:<peer>`` of the
group there). Receivers on the sender's node need no link: that proxy fans out
locally. When a node's last receiver leaves, or the sender leaves, its link is closed
(``CloseGroupLink`` on the sender first, then ``ForgetGroup``), the same per-node
shape as the RTSP side's relays.

The provider of a link is the one asked for (a receiving member's preference, else
the sender's) when both ends announced it, else ``tcp;ofi_rxm``; an unknown provider
is refused at Join with a clear error. Every change is reconciled (wanted links
against programmed ones) under one lock, so repeating a Join or a Leave is harmless
and a link that failed is tried again at the group's next change. A node whose
proxy goes away (its registration ends, or a new ``proxy_id`` registers) loses its
memberships, and the links to and from it are taken down.

Decisions are made through :class:`MediaPort` (one node's ``MediaPlane``), so unit
tests drive them without gRPC; :mod:`.media_service` is the gRPC side.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from msm.protos import media_pb2 as mpb
from msm.sdk.errors import MsmError, Refused, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PROVIDER", "KNOWN_PROVIDERS", "MediaPlacer", "MediaPort", "NoCommonProvider",
           "SenderBusy", "UnknownProvider"]

DEFAULT_PROVIDER = "tcp;ofi_rxm"     # RDM over TCP: any two nodes that reach each other
KNOWN_PROVIDERS = frozenset({DEFAULT_PROVIDER, "shm"})   # shm: both proxies on one host

# Groups the mesh places at once: each holds a few small records here and, on the proxies,
# counters and registered buffers; a cluster runs a few hundred media pipelines at most.
MAX_GROUPS = 4096
# Nodes with receivers in one group: one link (one copy of every frame leaving the
# sender's node) each; past this the sender's node network could not carry them anyway.
MAX_NODES_PER_GROUP = 256
# Members of one group on one node: what one proxy serves per group (rtp_proxy.media.groups.MAX_RECEIVERS).
MAX_MEMBERS_PER_NODE = 256
# Groups one node takes part in: what one proxy holds (rtp_proxy.media.groups.MAX_GROUPS). With the
# bound above, what one (authenticated) proxy can make the control plane keep is bounded too.
MAX_GROUPS_PER_NODE = 256
MAX_URN = 256                        # characters
MAX_MEMBER = 128                     # characters
MAX_ADDRESS = 256                    # bytes of one fi_getname() blob (tcp: a sockaddr; shm: a name)
DEFAULT_MAX_FRAME = 8 << 20          # a 4K 4:2:2 10-bit frame is about 21 MB: its sender says so
MAX_FRAME = 64 << 20                 # the largest frame a group may carry (one fabric message)
LINK_CREDITS = 4                     # frames in flight per link: a few frame times of buffering


class SenderBusy(Refused):
    """A group already has a sender elsewhere: a second would interleave two streams' frames."""

    status = 409


class UnknownProvider(Refused):
    """A libfabric provider the mesh does not place links on."""

    status = 400


class NoCommonProvider(Unavailable):
    """Two nodes announced no provider in common (or nothing at all): no link between them."""


class MediaPort(Protocol):
    """One node's ``MediaPlane`` (its proxy). Failures are :class:`MsmError` s."""

    async def open_link(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                        max_frame: int, credits: int, link_id: int) -> None: ...
    async def close_link(self, urn: str, peer_node: str) -> None: ...
    async def expect(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                     max_frame: int, link_id: int) -> None: ...
    async def forget(self, urn: str, peer_node: str) -> None: ...
    async def list_groups(self) -> mpb.ListGroupsReply: ...


PortOf = Callable[[str], "MediaPort | None"]   # node -> its proxy's MediaPlane, None while it has none


@dataclass
class NodeFabric:
    proxy_id: str
    endpoints: dict[str, bytes]      # provider -> address


@dataclass(frozen=True)
class Wanted:
    """A link as it should be: everything that, when it changes, means a new link."""

    sender_node: str
    provider: str
    sender_address: bytes
    receiver_address: bytes


@dataclass
class Link:
    wanted: Wanted
    link_id: int
    error: str = ""                  # "" when both ends are programmed


@dataclass
class Placement:
    urn: str
    sender: tuple[str, str] | None = None          # (node, member)
    sender_provider: str = ""
    max_frame: int = 0
    receivers: dict[str, dict[str, str]] = field(default_factory=dict)   # node -> member -> preference
    links: dict[str, Link] = field(default_factory=dict)                 # receiving node -> its link
    errors: dict[str, str] = field(default_factory=dict)                 # receiving node -> why no link

    @property
    def empty(self) -> bool:
        return self.sender is None and not self.receivers and not self.links


def check_provider(provider: str) -> None:
    if provider and provider not in KNOWN_PROVIDERS:
        raise UnknownProvider(f"unknown fabric provider {provider!r} (known: {', '.join(sorted(KNOWN_PROVIDERS))})")


def choose_provider(preference: str, sender: Mapping[str, bytes], receiver: Mapping[str, bytes]) -> str:
    """The preferred provider if both ends have it, else the default; :class:`NoCommonProvider` if neither."""
    if preference and preference in sender and preference in receiver:
        return preference
    if DEFAULT_PROVIDER in sender and DEFAULT_PROVIDER in receiver:
        return DEFAULT_PROVIDER
    raise NoCommonProvider(f"no common fabric provider (sender has {', '.join(sorted(sender)) or 'none'}, "
                           f"receiver has {', '.join(sorted(receiver)) or 'none'})")


class MediaPlacer:
    """Every group's placement, and the links that follow from it."""

    def __init__(self, port_of: PortOf, *, credits: int = LINK_CREDITS, max_groups: int = MAX_GROUPS) -> None:
        self.port_of = port_of
        self.credits = credits
        self.max_groups = max_groups
        self.fabric: dict[str, NodeFabric] = {}    # node -> its announced endpoints (one per proxy)
        self.groups: dict[str, Placement] = {}
        # One lock for every change: placements stay consistent with the links programmed,
        # and a change is a few calls of a few ms (a dead proxy: PROXY_TIMEOUT, once).
        self._lock = asyncio.Lock()

    # -- what proxies tell us ------------------------------------------------------------------------
    async def announce(self, node: str, proxy_id: str, endpoints: Mapping[str, bytes],
                       members: set[tuple[str, str, bool]] | None = None) -> None:
        """``node``'s endpoints (provider -> address); with ``members`` ((urn, member, sender) it has
        now), its other memberships are dropped: Leaves it could not tell us while we were apart."""
        for provider, address in endpoints.items():
            check_provider(provider)
            if not provider or not address or len(address) > MAX_ADDRESS:
                raise Refused(f"fabric endpoint {provider!r}: an address of 1 to {MAX_ADDRESS} bytes is required")
        async with self._lock:
            old = self.fabric.get(node)
            if old is not None and old.proxy_id != proxy_id:
                self._drop_node(node)    # a restarted proxy: its groups and endpoints are gone
            self.fabric[node] = NodeFabric(proxy_id, dict(endpoints))
            for urn in self._groups_of(node):
                if members is not None:
                    _keep_only(self.groups[urn], node, members)
                await self._reconcile(urn)   # an address changed, a member left: its links follow

    async def proxy_registered(self, node: str, proxy_id: str) -> None:
        """A proxy registered: if another one had announced for ``node``, that one's groups are gone."""
        async with self._lock:
            known = self.fabric.get(node)
            if known is None or known.proxy_id == proxy_id:
                return
            for urn in self._drop_node(node):
                await self._reconcile(urn)

    async def join(self, urn: str, node: str, member: str, *, sender: bool, provider: str = "",
                   max_frame: int = 0) -> mpb.GroupPlacement:
        check_join(urn, node, member, provider, max_frame)
        async with self._lock:
            placement = self.groups.get(urn)
            if placement is None or not _has_node(placement, node):
                if len(self._groups_of(node)) >= MAX_GROUPS_PER_NODE:
                    raise ResourceExhausted(f"node {node} already takes part in {MAX_GROUPS_PER_NODE} groups")
            if placement is None:
                if len(self.groups) >= self.max_groups:
                    raise ResourceExhausted(f"the mesh already places {self.max_groups} groups")
                placement = self.groups[urn] = Placement(urn)
            try:
                _add_member(placement, node, member, sender=sender, provider=provider)
            finally:
                if placement.empty:
                    del self.groups[urn]
            placement.max_frame = max(placement.max_frame, max_frame)
            await self._reconcile(urn)
            return self._message(urn)

    async def leave(self, urn: str, node: str, member: str, *, sender: bool) -> mpb.GroupPlacement:
        async with self._lock:
            placement = self.groups.get(urn)
            if placement is None:
                return mpb.GroupPlacement(urn=urn)
            if sender:
                if placement.sender == (node, member):
                    placement.sender = None
                    placement.sender_provider = ""
            else:
                members = placement.receivers.get(node, {})
                members.pop(member, None)
                if not members:
                    placement.receivers.pop(node, None)
            await self._reconcile(urn)
            return self._message(urn)

    async def node_gone(self, node: str, proxy_id: str = "") -> None:
        """``node``'s proxy went away (``proxy_id``: only if it is still the one announced)."""
        async with self._lock:
            known = self.fabric.get(node)
            if proxy_id and known is not None and known.proxy_id != proxy_id:
                return
            urns = self._drop_node(node)
            for urn in urns:
                await self._reconcile(urn)

    # -- the read side ---------------------------------------------------------------------------------
    def placements(self) -> list[mpb.GroupPlacement]:
        return [self._message(urn) for urn in sorted(self.groups)]

    def nodes(self) -> list[str]:
        """Every node that announced its endpoints or has a member placed: those whose counters are asked."""
        nodes = set(self.fabric)
        for placement in self.groups.values():
            nodes.update(placement.receivers)
            if placement.sender is not None:
                nodes.add(placement.sender[0])
        return sorted(nodes)

    def _message(self, urn: str) -> mpb.GroupPlacement:
        placement = self.groups.get(urn)
        if placement is None:
            return mpb.GroupPlacement(urn=urn)
        sender_node, sender_member = placement.sender or ("", "")
        message = mpb.GroupPlacement(urn=urn, sender_node=sender_node, sender_member=sender_member,
                                     max_frame=placement.max_frame or DEFAULT_MAX_FRAME)
        for node, members in sorted(placement.receivers.items()):
            link = placement.links.get(node)
            local = node == sender_node
            message.receivers.append(mpb.NodePlacement(
                node=node, members=len(members), provider=link.wanted.provider if link and not local else "",
                linked=local or (link is not None and not link.error),
                error=(link.error if link else placement.errors.get(node, "")) if not local else ""))
        return message

    # -- keeping links as placed -------------------------------------------------------------------------
    def _groups_of(self, node: str) -> list[str]:
        return [urn for urn, p in self.groups.items()
                if node in p.receivers or node in p.links or (p.sender is not None and p.sender[0] == node)
                or any(link.wanted.sender_node == node for link in p.links.values())]

    def _drop_node(self, node: str) -> list[str]:
        """Forget ``node``'s endpoints and members; answers the groups that changed."""
        self.fabric.pop(node, None)
        urns = self._groups_of(node)
        for urn in urns:
            placement = self.groups[urn]
            placement.receivers.pop(node, None)
            if placement.sender is not None and placement.sender[0] == node:
                placement.sender = None
                placement.sender_provider = ""
        return urns

    def _wanted(self, placement: Placement) -> dict[str, Wanted]:
        """Receiving node -> the link it should have; nodes that cannot have one get an error instead."""
        placement.errors.clear()
        if placement.sender is None:
            return {}
        sender_node = placement.sender[0]
        wanted: dict[str, Wanted] = {}
        for node, members in placement.receivers.items():
            if node == sender_node or not members:
                continue
            preference = next((p for p in members.values() if p), placement.sender_provider)
            sender_fabric, receiver_fabric = self.fabric.get(sender_node), self.fabric.get(node)
            try:
                provider = choose_provider(preference, sender_fabric.endpoints if sender_fabric else {},
                                           receiver_fabric.endpoints if receiver_fabric else {})
            except MsmError as exc:
                placement.errors[node] = exc.reason
                continue
            assert sender_fabric is not None and receiver_fabric is not None
            wanted[node] = Wanted(sender_node, provider, sender_fabric.endpoints[provider],
                                  receiver_fabric.endpoints[provider])
        return wanted

    async def _reconcile(self, urn: str) -> None:
        placement = self.groups.get(urn)
        if placement is None:
            return
        wanted = self._wanted(placement)
        for node, link in list(placement.links.items()):
            if wanted.get(node) != link.wanted:
                await self._close(urn, node, link)
                del placement.links[node]
        for node, want in wanted.items():
            current = placement.links.get(node)
            if current is None or current.error:
                placement.links[node] = await self._open(placement, node, want)
        if placement.empty:
            del self.groups[urn]

    async def _open(self, placement: Placement, node: str, want: Wanted) -> Link:
        """Program both ends: the receiver expects the link before the sender opens it."""
        link = Link(want, secrets.randbits(32) or 1)   # every frame's 32-bit group field carries it
        max_frame = placement.max_frame or DEFAULT_MAX_FRAME
        receiver, sender = self.port_of(node), self.port_of(want.sender_node)
        try:
            if receiver is None or sender is None:
                raise Unavailable(f"no proxy on node {node if receiver is None else want.sender_node}")
            await receiver.expect(placement.urn, want.sender_node, want.provider, want.sender_address,
                                  max_frame=max_frame, link_id=link.link_id)
            try:
                await sender.open_link(placement.urn, node, want.provider, want.receiver_address,
                                       max_frame=max_frame, credits=self.credits, link_id=link.link_id)
            except MsmError:
                await _quietly(receiver.forget(placement.urn, want.sender_node), "forget")
                raise
        except MsmError as exc:
            link.error = exc.reason
            log.warning("group %s: no link %s -> %s: %s", placement.urn, want.sender_node, node, exc.reason)
            return link
        log.info("group %s: link %s -> %s over %s", placement.urn, want.sender_node, node, want.provider)
        return link

    async def _close(self, urn: str, node: str, link: Link) -> None:
        """Take a link down: the sender stops sending before the receiver stops accepting (both
        calls are idempotent, so a half-programmed link is undone the same way)."""
        # A node whose proxy went away (no endpoints any more) is not called: it has no links left.
        sender = self.port_of(link.wanted.sender_node) if link.wanted.sender_node in self.fabric else None
        receiver = self.port_of(node) if node in self.fabric else None
        if sender is not None:
            await _quietly(sender.close_link(urn, node), f"close link to {node}")
        if receiver is not None:
            await _quietly(receiver.forget(urn, link.wanted.sender_node), f"forget link on {node}")
        log.info("group %s: link %s -> %s closed", urn, link.wanted.sender_node, node)


async def _quietly(call: Awaitable[None], what: str) -> None:
    """Run a clean-up call; its failure (a proxy gone) is logged, never raised: the state moves on."""
    try:
        await call
    except MsmError as exc:
        log.info("%s: %s", what, exc.reason)


def check_join(urn: str, node: str, member: str, provider: str, max_frame: int) -> None:
    if not urn or len(urn) > MAX_URN or not urn.isprintable():
        raise Refused(f"a group urn of 1 to {MAX_URN} printable characters is required")
    if not node or not member or len(member) > MAX_MEMBER or not member.isprintable():
        raise Refused(f"a node and a member name of 1 to {MAX_MEMBER} printable characters are required")
    check_provider(provider)
    if not 0 <= max_frame <= MAX_FRAME:
        raise Refused(f"max_frame must be at most {MAX_FRAME} bytes")


def _has_node(placement: Placement, node: str) -> bool:
    return node in placement.receivers or (placement.sender is not None and placement.sender[0] == node)


def _keep_only(placement: Placement, node: str, members: set[tuple[str, str, bool]]) -> None:
    """Drop ``node``'s memberships of ``placement`` that are not in ``members``."""
    if placement.sender is not None and placement.sender[0] == node \
            and (placement.urn, placement.sender[1], True) not in members:
        placement.sender = None
        placement.sender_provider = ""
    kept = {m: p for m, p in placement.receivers.get(node, {}).items() if (placement.urn, m, False) in members}
    if kept:
        placement.receivers[node] = kept
    else:
        placement.receivers.pop(node, None)


def _add_member(placement: Placement, node: str, member: str, *, sender: bool, provider: str) -> None:
    if sender:
        if placement.sender is not None and placement.sender != (node, member):
            raise SenderBusy(f"group {placement.urn!r} already has a sender ({placement.sender[1]} on node "
                             f"{placement.sender[0]})")
        placement.sender = (node, member)
        placement.sender_provider = provider
        return
    members = placement.receivers.get(node)
    if members is None:
        if len(placement.receivers) >= MAX_NODES_PER_GROUP:
            raise ResourceExhausted(f"group {placement.urn!r} has receivers on {MAX_NODES_PER_GROUP} nodes")
        members = placement.receivers[node] = {}
    if member not in members and len(members) >= MAX_MEMBERS_PER_NODE:
        raise ResourceExhausted(f"group {placement.urn!r} has {MAX_MEMBERS_PER_NODE} receivers on node {node}")
    members[member] = provider
