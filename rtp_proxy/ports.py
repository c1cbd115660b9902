"""The ingress port pairs of flows: RTP on an even port, RTCP on the next one (RFC 3550 11)."""

from __future__ import annotations

import socket
from collections.abc import Container

from msm.sdk.errors import ResourceExhausted

__all__ = ["PortRangeExhausted", "bind_pair"]


class PortRangeExhausted(ResourceExhausted):
    """No free even/odd port pair is left in the configured range."""


def bind_pair(host: str, low: int, high: int, start: int,
              avoid: Container[int] = ()) -> tuple[socket.socket, socket.socket]:
    """Bind an RTP/RTCP pair (even, even+1) in ``[low, high]``, starting near ``start``.

    Ports in ``avoid`` (where legs on this host send to) are never taken: a flow
    bound there would receive its own or another flow's output, a loop.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    span = (high - low + 1) // 2
    if span <= 0:
        raise PortRangeExhausted(f"empty port range {low}-{high}")
    first = (low + 1) & ~1
    for i in range(span):
        port = first + 2 * ((start + i) % span)
        if port + 1 > high or port in avoid or port + 1 in avoid:
            continue
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        for s in (rtp, rtcp):
            s.setblocking(False)
            # Room for bursts (an I-frame is dozens of packets at once).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        return rtp, rtcp
    raise PortRangeExhausted(f"no free RTP/RTCP port pair in {low}-{high} on {host}")
