"""Where a proxy may send: leg destinations that cannot loop back into it or reflect.

A leg pointing at one of the proxy's own ingress ports (on any address of this
host: loopback, the media host, another interface) would feed a flow its own
output, a loop that multiplies every packet; a multicast, broadcast or
privileged-port destination turns the proxy into a reflector. Both are refused
when a leg is added (:func:`check_destination`), and a new flow never binds a
port a leg on this host already sends to (:meth:`FlowTable.add_flow`), so a
loop cannot form later either.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Set

from msm.sdk.errors import Refused

__all__ = ["MIN_LEG_PORT", "LocalAddresses", "check_destination"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Leg destinations below this port are refused: they are privileged services
# (DNS 53, NTP 123, ...), never an RTP receiver, and a reflection target.
MIN_LEG_PORT = 1024
# Answers of "is this address one of this host's?", remembered per address. A
# proxy sends to a handful of viewer and node addresses; past this many the
# memory is simply started again.
LOCAL_CACHE = 1024
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def parse_ip(host: str) -> IpAddress | None:
    """``host`` as an address (IPv4-mapped IPv6 unwrapped, scope dropped); ``None`` for a name."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class LocalAddresses:
    """Whether an address is one of this host's: loopback, the media host, or one it can bind."""

    def __init__(self, media_host: str) -> None:
        self.media_host = media_host
        self._known: dict[str, bool] = {}

    def is_local(self, host: str | IpAddress) -> bool:
        ip = parse_ip(host) if isinstance(host, str) else host
        if ip is None:
            return False
        key = str(ip)
        known = self._known.get(key)
        if known is not None:
            return known
        local = ip.is_loopback or ip.is_unspecified or key == self.media_host or _can_bind(ip)
        if len(self._known) >= LOCAL_CACHE:
            self._known.clear()
        self._known[key] = local
        return local


def _can_bind(ip: IpAddress) -> bool:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def check_destination(host: str, rtp_port: int, rtcp_port: int, own_ports: Set[int],
                      local: LocalAddresses) -> None:
    """``Refused`` for a destination that is not a plain unicast receiver outside this proxy.

    Refused: anything but an IP address; multicast, broadcast and unspecified
    addresses; ports outside 1024-65535; any of ``own_ports`` (the proxy's
    ingress) on an address of this host.
    """
    ip = parse_ip(host)
    if ip is None:
        raise Refused(f"leg destination must be an IP address, not {host!r}")
    if ip.is_multicast or ip.is_unspecified or ip == _BROADCAST:
        raise Refused(f"leg destination {ip} is not a unicast address")
    for port in (rtp_port, rtcp_port):
        if not MIN_LEG_PORT <= port <= 65535:
            raise Refused(f"leg destination port {port} is outside {MIN_LEG_PORT}-65535")
    if own_ports & {rtp_port, rtcp_port} and local.is_local(ip):
        raise Refused(f"leg destination {host}:{rtp_port}-{rtcp_port} is this proxy's own ingress")
