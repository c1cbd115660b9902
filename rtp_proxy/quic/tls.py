"""Mutual TLS for the QUIC leg, from the proxy's own TLS files (:class:`msm.security.tls.TlsFiles`).

The sending node's end is the QUIC client: it checks that the server is the proxy of the
node it means (DNS SAN ``<node>.proxy.<trust-domain>``, :func:`msm.security.identity.server_name`)
through aioquic's own host name and chain verification. aioquic's server neither asks for a
client certificate nor verifies one, so the receiving end turns the request on per connection
(:func:`request_client_certificate`) and checks the chain and the SPIFFE ID itself once the
handshake completes (:func:`check_client`): a proxy of its own trust domain, nothing else.
"""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import Alert, verify_certificate

from msm.sdk.errors import ConfigError, Unauthorized
from msm.security.authz import identity_of_certificate
from msm.security.identity import Identity, Role, server_name
from msm.security.tls import TlsFiles

ALPN = "msm-rtp"
# RFC 9221: the largest DATAGRAM frame this end accepts. Each frame carries one RTP or RTCP
# packet; what actually fits is bounded by the path (``mtu``), checked per packet.
MAX_DATAGRAM_FRAME = 65536


def configuration(files: TlsFiles, *, is_client: bool, mtu: int, idle_timeout: float,
                  peer_node: str = "") -> QuicConfiguration:
    """A QUIC configuration presenting ``files``' certificate and trusting their bundle.

    A client names the peer proxy's node (``peer_node``): the server's certificate must carry it.
    Raises :class:`~msm.security.tls.TlsConfigError` for unusable files (read and checked here).
    """
    material = files.read()
    config = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN],
                               max_datagram_frame_size=MAX_DATAGRAM_FRAME,
                               max_datagram_size=mtu, idle_timeout=idle_timeout)
    config.load_cert_chain(files.cert, files.key)
    config.load_verify_locations(cadata=material.ca_pem)
    if is_client:
        config.server_name = server_name(Role.PROXY, files.identity().trust_domain, peer_node)
    return config


def refresh(config: QuicConfiguration, files: TlsFiles, stamp: object) -> object:
    """Reload a server's certificate when its files were replaced (rotation); the new stamp.

    Called before each new connection's handshake; broken or half-written files keep the old.
    """
    now = files.stamp()
    if now == stamp:
        return stamp
    try:
        files.read()
        config.load_cert_chain(files.cert, files.key)
    except (ConfigError, OSError, ValueError):   # mid-rotation or broken: keep serving with what we have
        return stamp
    return now


def request_client_certificate(quic: QuicConnection) -> None:
    """Make a server-side connection ask its client for a certificate (mutual TLS).

    aioquic creates the TLS context when the first Initial packet arrives; the flag is set
    right after, before the ClientHello is answered.
    """
    original = quic._initialize

    def initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        quic.tls._request_client_certificate = True

    setattr(quic, "_initialize", initialize)   # noqa: B010 - an instance override of a method


def check_client(quic: QuicConnection, ca_pem: bytes, trust_domain: str) -> Identity:
    """The verified identity of a server connection's client; :class:`Unauthorized` unless a
    proxy of ``trust_domain`` whose chain leads to ``ca_pem``."""
    tls = quic.tls
    certificate = tls._peer_certificate
    if certificate is None:
        raise Unauthorized("the client presented no certificate")
    try:
        verify_certificate(certificate=certificate, chain=tls._peer_certificate_chain, cadata=ca_pem)
    except Alert as exc:
        raise Unauthorized(f"the client's certificate is not the mesh's: {exc}") from None
    identity = identity_of_certificate(certificate)
    if identity.trust_domain != trust_domain or identity.role is not Role.PROXY:
        raise Unauthorized(f"{identity} is not a proxy of {trust_domain}")
    return identity
