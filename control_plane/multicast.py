"""Multicast out: the groups a node's proxy sends a stream to, one per stream and node.

A viewer that asks ``RTP/AVP;multicast`` for a route that allows it joins its node's
group of the stream: the proxy there has ONE leg per track towards the group, however
many viewers join. The group is leased from the pool (an IPv4 multicast network)
when the first viewer of the node describes or sets up the stream and released when
its last viewer leaves (or the stream closes). Track ``n`` is sent to ``port + 2n``
(RTP) and the next port (RTCP); the groups differ by address, so every group uses the
same ports.

Nothing here talks to a proxy: the planner adds, enables and removes the legs these
records say a group needs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import ConfigError, ResourceExhausted

__all__ = ["DEFAULT_POOL", "DEFAULT_PORT", "DEFAULT_TTL", "MAX_GROUPS", "Group", "MulticastPool", "group_leg"]

# Organisation-local scope (RFC 2365), a /24 of it: never routed off the site.
DEFAULT_POOL = "239.255.77.0/24"
# TTL 1: the node's own link only, unless the operator says the network routes multicast.
DEFAULT_TTL = 1
# The RTP/AVP default port (RFC 3551), RTCP on the next.
DEFAULT_PORT = 5004
# Groups leased at once. Each is one copy of a stream on the node network and one
# membership entry in every switch's IGMP-snooping table, which hold a few hundred to a
# few thousand entries; 64 leaves room for a site's cameras without filling them.
MAX_GROUPS = 64
_LEG_PREFIX = "multicast@"


def group_leg(node: str, index: int) -> str:
    """The leg id of track ``index``'s leg towards ``node``'s group."""
    return f"{_LEG_PREFIX}{node}/{index}"


def is_group_leg(leg_id: str) -> bool:
    return leg_id.startswith(_LEG_PREFIX)


@dataclass(slots=True)
class Group:
    """One stream's group on one node, and who holds which of its tracks."""

    stream_id: str
    node: str
    address: str
    port: int
    ttl: int
    members: dict[int, set[str]] = field(default_factory=dict)   # track -> sessions set up
    playing: dict[int, set[str]] = field(default_factory=dict)   # track -> sessions playing

    def endpoint(self, index: int = 0) -> pb.Endpoint:
        rtp = self.port + 2 * index
        return pb.Endpoint(host=self.address, rtp_port=rtp, rtcp_port=rtp + 1)

    @property
    def empty(self) -> bool:
        return not any(self.members.values())


class MulticastPool:
    """The addresses groups are leased from (see the module doc); ``ResourceExhausted`` past the bound."""

    def __init__(self, network: str = DEFAULT_POOL, *, ttl: int = DEFAULT_TTL, port: int = DEFAULT_PORT,
                 max_groups: int = MAX_GROUPS) -> None:
        try:
            net = ipaddress.IPv4Network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"multicast pool {network!r}: not an IPv4 network ({exc})") from None
        if not net.is_multicast or net.overlaps(ipaddress.IPv4Network("224.0.0.0/24")):
            raise ConfigError(f"multicast pool {net}: must lie in 224.0.1.0-239.255.255.255 (239.0.0.0/8 advised)")
        if not 1 <= ttl <= 255:
            raise ConfigError(f"multicast TTL {ttl}: must be 1-255")
        if not 1024 <= port <= 65500 or port % 2:
            raise ConfigError(f"multicast port {port}: must be even, 1024-65500")
        if max_groups < 1:
            raise ConfigError("max multicast groups must be >= 1")
        self.network = net
        self.ttl = ttl
        self.port = port
        self.max_groups = max_groups
        self.groups: dict[tuple[str, str], Group] = {}   # (stream, node) -> its group
        self.leases = 0      # groups leased since start
        self.refused = 0     # leases refused: the pool or the bound was full

    def _free_address(self) -> str | None:
        taken = {g.address for g in self.groups.values()}
        hosts = self.network.hosts() if self.network.num_addresses > 2 else iter(self.network)
        for address in hosts:
            if str(address) not in taken:
                return str(address)
        return None

    def find(self, stream_id: str, node: str) -> Group | None:
        return self.groups.get((stream_id, node))

    def lease(self, stream_id: str, node: str) -> Group:
        """The stream's group on ``node``, leased now if it has none."""
        group = self.groups.get((stream_id, node))
        if group is not None:
            return group
        address = self._free_address() if len(self.groups) < self.max_groups else None
        if address is None:
            self.refused += 1
            raise ResourceExhausted(f"no multicast group left ({len(self.groups)} in use, pool {self.network}, "
                                    f"at most {self.max_groups})")
        group = Group(stream_id, node, address, self.port, self.ttl)
        self.groups[(stream_id, node)] = group
        self.leases += 1
        return group

    def release(self, stream_id: str, node: str) -> Group | None:
        return self.groups.pop((stream_id, node), None)

    def of_stream(self, stream_id: str) -> list[Group]:
        return [g for (s, _), g in self.groups.items() if s == stream_id]
