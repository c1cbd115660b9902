"""Multicast in: a route whose upstream is an SDP file (``file:///path/stream.sdp``).

The file describes RTP sent to a multicast group (or to this node, unicast) by a source
no RTSP server stands in front of: a camera, an encoder, ``ffmpeg -f rtp``, GStreamer's
udpsink. The control plane reads it when the stream opens; the proxy on the route's node
(or the control plane's first) receives each track ONCE where the file says it is sent
(a group is joined) and fans it out to viewers as unicast legs, like any other stream.

Source check: every packet's source is checked by the flow, against the track's
``a=source-filter: incl IN IP4 <group> <source>`` (RFC 4570; the group is then joined for
that source only, SSM, RFC 4607), else the ``o=`` line's address when it is a unicast
IP; a file naming neither is refused (a group anyone on the network can send to must not
feed viewers).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import SdpError, UpstreamError
from msm.sdk.sdp import Media, SessionDescription

__all__ = ["MAX_SDP_FILE", "SdpSource", "is_sdp_file", "read_sdp_source"]

# An SDP describes a handful of tracks in a few hundred bytes; a bigger file is no stream's.
MAX_SDP_FILE = 64 * 1024


def is_sdp_file(url: str) -> bool:
    return urlsplit(url).scheme == "file"


@dataclass(frozen=True, slots=True)
class SdpSource:
    sdp: str
    tracks: list[pb.Track]
    listen: list[pb.Endpoint]          # per track: where its RTP arrives (RTCP on the next port)
    sources: list[pb.SourceFilter]     # per track: the one sender accepted
    ssm: list[bool]                    # per track: the sender came from a source-filter (join it alone)


def read_sdp_source(url: str) -> SdpSource:
    """The stream a ``file://`` route describes; ``UpstreamError`` (502) for a file that is
    missing, too big, not SDP, or names no address, port or source for a track."""
    path = Path(unquote(urlsplit(url).path))
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SDP_FILE + 1)
    except OSError as exc:
        raise UpstreamError(f"SDP file {path}: {exc.strerror}") from None
    if len(data) > MAX_SDP_FILE:
        raise UpstreamError(f"SDP file {path}: over {MAX_SDP_FILE} bytes")
    try:
        text = data.decode("utf-8")
        sdp = SessionDescription.parse(text)
    except (UnicodeDecodeError, SdpError) as exc:
        raise UpstreamError(f"SDP file {path}: {exc}") from None
    tracks, listen, sources, ssm = [], [], [], []
    for index, media in enumerate(sdp.media):
        tracks.append(_track(index, media))
        address = _address(media, sdp, path)
        if not 1024 <= media.port < 65535:
            raise UpstreamError(f"SDP file {path}: track {index} port {media.port} is outside 1024-65534")
        listen.append(pb.Endpoint(host=address, rtp_port=media.port, rtcp_port=media.port + 1))
        sender, filtered = _source(media, sdp, address, path)
        sources.append(pb.SourceFilter(host=sender))
        ssm.append(filtered and ipaddress.IPv4Address(address).is_multicast)
    return SdpSource(text, tracks, listen, sources, ssm)


def _track(index: int, media: Media) -> pb.Track:
    pt = int(media.formats[0]) if media.formats and media.formats[0].isdigit() else -1
    rtpmap = media.rtpmap(pt) if pt >= 0 else None
    return pb.Track(index=index, kind=media.kind, control=f"track{index}", clock_rate=media.clock_rate or 0,
                    encoding=f"{rtpmap.encoding}/{rtpmap.clock_rate}" if rtpmap else "")


def _address(media: Media, sdp: SessionDescription, path: Path) -> str:
    connection = media.connection or sdp.connection
    if connection is None or connection.addrtype != "IP4":
        raise UpstreamError(f"SDP file {path}: a track without an IPv4 c= line")
    address = connection.address.split("/")[0]
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise UpstreamError(f"SDP file {path}: c= address {address[:64]!r} is not an IPv4 address") from None
    return address


def _source(media: Media, sdp: SessionDescription, address: str, path: Path) -> tuple[str, bool]:
    """The sender to accept, and whether a source-filter named it."""
    for value in [*media.attributes_named("source-filter"), *sdp.attributes_named("source-filter")]:
        parts = (value or "").split()
        # incl IN IP4 <dest> <src>...: one source (the flow checks one)
        if len(parts) >= 5 and parts[0] == "incl" and parts[3] in (address, "*"):
            return _unicast(parts[4], path), True
    origin = sdp.origin.address
    try:
        ip = ipaddress.ip_address(origin)
    except ValueError:
        ip = None
    if ip is None or ip.is_multicast or ip.is_unspecified:
        raise UpstreamError(f"SDP file {path}: no sender to accept (give a=source-filter: incl IN IP4 "
                            f"{address} <source> or an o= line with the sender's address)")
    return str(ip), False


def _unicast(text: str, path: Path) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise UpstreamError(f"SDP file {path}: source-filter source {text[:64]!r} is not an IPv4 address") from None
    if ip.is_multicast or ip.is_unspecified:
        raise UpstreamError(f"SDP file {path}: source-filter source {ip} is not a unicast address")
    return str(ip)
