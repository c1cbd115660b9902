"""RTP over QUIC between nodes (RFC 9221 DATAGRAM frames, aioquic), as a tunnel pair.

A node-to-node leg that must cross NAT or be encrypted without SRTP goes through
:class:`QuicLegSender` on the sending node (the engine sends the leg to its loopback ports)
and :class:`QuicLegReceiver` on the receiving node (it delivers to the engine's leg ports);
the engines are unchanged. ``python -m msm.rtp_proxy.quic`` runs one end.
"""

from .leg import DEFAULT_MTU, Counters, QuicLegReceiver, QuicLegSender
from .tls import ALPN

__all__ = ["ALPN", "DEFAULT_MTU", "Counters", "QuicLegReceiver", "QuicLegSender"]
