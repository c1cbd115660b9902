"""Session descriptions of SMPTE ST 2110-20 video and ST 2110-30 (AES67) audio streams.

:func:`video_sdp` / :func:`audio_sdp` write what ffmpeg, GStreamer's
``sdpdemux`` and ST 2110 receivers read (``a=fmtp`` with sampling, depth,
width, height, exactframerate, colorimetry, PM, SSN, TP; ``a=ptime`` and
``a=mediaclk`` for audio). :func:`parse_st2110` reads one back (the first
media section), through :mod:`msm.sdk.sdp`'s parser; a missing field is an
:class:`SdpError` naming it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from fractions import Fraction

from msm.sdk.errors import ConfigError, SdpError
from msm.sdk.rfc4175 import BPM, GPM, PGROUPS, VideoFormat
from msm.sdk.sdp import Media, SessionDescription

__all__ = ["AudioStream", "VideoStream", "audio_sdp", "parse_fmtp", "parse_st2110", "video_sdp"]

#: What a receiver cannot do without (ffmpeg shows "Video: none" without these).
REQUIRED_VIDEO = ("sampling", "width", "height", "depth")
#: What ST 2110-20 section 7 makes mandatory on top (``strict=True``).
REQUIRED_2110 = ("exactframerate", "colorimetry", "PM", "SSN", "TP")
#: The number of fmtp parameters read; a longer list is refused (bound on peer input).
MAX_FMTP_PARAMS = 64


@dataclass(frozen=True, slots=True)
class VideoStream:
    """An ST 2110-20 stream: where it goes and what its frames are."""

    address: str
    port: int
    fmt: VideoFormat
    rate: Fraction = Fraction(30)
    payload_type: int = 96
    colorimetry: str = "BT709"
    packing: str = GPM
    tp: str = "2110TPN"
    tcs: str = "SDR"
    ttl: int = 64
    source: str | None = None      # source-specific multicast: the sender's address
    origin: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class AudioStream:
    """An ST 2110-30 (AES67) stream: L16 or L24, its rate, channels and packet time."""

    address: str
    port: int
    encoding: str = "L24"
    rate: int = 48000
    channels: int = 2
    ptime_us: int = 1000
    payload_type: int = 97
    ttl: int = 64
    source: str | None = None
    origin: str = "127.0.0.1"


def _family(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError as exc:
        raise ConfigError(f"not an IP address: {address!r:.60}") from exc


def _connection(address: str, ttl: int) -> str:
    multicast = ipaddress.ip_address(address).is_multicast
    suffix = f"/{ttl}" if multicast and _family(address) == "IP4" else ""
    return f"c=IN {_family(address)} {address}{suffix}"


def _head(name: str, origin: str) -> list[str]:
    # The origin is informational (a parsed one may be a host name): not checked.
    return ["v=0", f"o=- 0 0 IN {'IP6' if ':' in origin else 'IP4'} {origin}", f"s={name}", "t=0 0"]


def _rate_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def video_sdp(stream: VideoStream) -> str:
    """The SDP of an ST 2110-20 stream (CRLF lines)."""
    f, pt = stream.fmt, stream.payload_type
    lines = _head("msm ST 2110-20", stream.origin)
    lines += [f"m=video {stream.port} RTP/AVP {pt}", _connection(stream.address, stream.ttl)]
    if stream.source:
        lines.append(f"a=source-filter: incl IN {_family(stream.address)} {stream.address} {stream.source}")
    lines += [f"a=rtpmap:{pt} raw/90000",
              f"a=fmtp:{pt} sampling={f.sampling}; width={f.width}; height={f.height}; "
              f"exactframerate={_rate_text(stream.rate)}; depth={f.depth}; TCS={stream.tcs}; "
              f"colorimetry={stream.colorimetry}; PM={stream.packing}; SSN=ST2110-20:2017; TP={stream.tp}",
              "a=mediaclk:direct=0"]
    return "".join(line + "\r\n" for line in lines)


def audio_sdp(stream: AudioStream) -> str:
    """The SDP of an ST 2110-30 / AES67 stream."""
    pt = stream.payload_type
    lines = _head("msm ST 2110-30", stream.origin)
    lines += [f"m=audio {stream.port} RTP/AVP {pt}", _connection(stream.address, stream.ttl)]
    if stream.source:
        lines.append(f"a=source-filter: incl IN {_family(stream.address)} {stream.address} {stream.source}")
    ptime = "1" if stream.ptime_us == 1000 else f"{stream.ptime_us / 1000:g}"
    lines += [f"a=rtpmap:{pt} {stream.encoding}/{stream.rate}/{stream.channels}", f"a=ptime:{ptime}",
              "a=mediaclk:direct=0"]
    return "".join(line + "\r\n" for line in lines)


def parse_fmtp(value: str) -> tuple[int, dict[str, str]]:
    """``a=fmtp`` value -> ``(payload type, {name: value})``; names keep their case."""
    pt_text, _, params = value.strip().partition(" ")
    if not pt_text.isdigit():
        raise SdpError(f"bad fmtp payload type {pt_text[:20]!r}")
    out: dict[str, str] = {}
    items = [item.strip() for item in params.split(";") if item.strip()]
    if len(items) > MAX_FMTP_PARAMS:
        raise SdpError(f"fmtp has {len(items)} parameters (at most {MAX_FMTP_PARAMS})")
    for item in items:
        name, eq, val = item.partition("=")
        out[name.strip()] = val.strip() if eq else ""
    return int(pt_text), out


def _int_field(params: dict[str, str], name: str, low: int, high: int) -> int:
    text = params[name]
    if not text.isdigit() or not low <= int(text) <= high:
        raise SdpError(f"fmtp {name}={text[:20]!r} is not a number in {low}..{high}")
    return int(text)


def _rate(text: str) -> Fraction:
    try:
        num, _, den = text.partition("/")
        rate = Fraction(int(num), int(den or "1"))
    except (ValueError, ZeroDivisionError) as exc:
        raise SdpError(f"fmtp exactframerate={text[:20]!r} is not a rate") from exc
    if not 0 < rate <= 1000:
        raise SdpError(f"fmtp exactframerate={text[:20]!r} is outside 0..1000")
    return rate


def _where(sdp: SessionDescription, media: Media) -> tuple[str, int, str | None]:
    conn = media.connection or sdp.connection
    if conn is None:
        raise SdpError("no c= line: the stream's address is missing")
    address = conn.address.split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise SdpError(f"c= address {address[:60]!r} is not an IP address") from exc
    source = None
    for value in (*media.attributes_named("source-filter"), *sdp.attributes_named("source-filter")):
        parts = (value or "").split()
        if len(parts) >= 5 and parts[0] == "incl":
            source = parts[4]
    return address, media.port, source


def _video(sdp: SessionDescription, media: Media, pt: int, strict: bool) -> VideoStream:
    fmtps = [parse_fmtp(v or "") for v in media.attributes_named("fmtp")]
    params = next((p for fpt, p in fmtps if fpt == pt), None)
    if params is None:
        raise SdpError(f"no a=fmtp for payload type {pt}: sampling, width, height and depth are missing")
    for name in (*REQUIRED_VIDEO, *(REQUIRED_2110 if strict else ())):
        if name not in params:
            raise SdpError(f"fmtp field {name} is missing")
    depth = _int_field(params, "depth", 1, 16)
    if (params["sampling"], depth) not in PGROUPS:
        raise SdpError(f"unsupported sampling/depth {params['sampling'][:30]}/{depth}")
    try:
        fmt = VideoFormat(params["sampling"], depth, _int_field(params, "width", 1, 32767),
                          _int_field(params, "height", 1, 32767))
    except ConfigError as exc:
        raise SdpError(str(exc)) from exc
    packing = params.get("PM", GPM)
    if packing not in (GPM, BPM):
        raise SdpError(f"fmtp PM={packing[:20]!r} is neither {GPM} nor {BPM}")
    address, port, source = _where(sdp, media)
    return VideoStream(address, port, fmt, _rate(params.get("exactframerate", "30")), pt,
                       params.get("colorimetry", "BT709"), packing, params.get("TP", "2110TPN"),
                       params.get("TCS", "SDR"), source=source, origin=sdp.origin.address)


def _audio(sdp: SessionDescription, media: Media, pt: int, encoding: str, rate: int, channels: int) -> AudioStream:
    ptime = media.attribute("ptime") or sdp.attribute("ptime")
    if ptime is None:
        raise SdpError("a=ptime is missing (1 or 0.125 ms)")
    try:
        ptime_us = round(float(ptime) * 1000)
    except ValueError as exc:
        raise SdpError(f"a=ptime:{ptime[:20]} is not a number") from exc
    if ptime_us not in (1000, 125):
        raise SdpError(f"a=ptime:{ptime[:20]} is neither 1 nor 0.125 ms")
    address, port, source = _where(sdp, media)
    return AudioStream(address, port, encoding, rate, channels, ptime_us, pt, source=source,
                       origin=sdp.origin.address)


def parse_st2110(data: str | bytes, *, strict: bool = False) -> VideoStream | AudioStream:
    """The first media section of an ST 2110-20 or -30 description; :class:`SdpError` says what is missing."""
    sdp = SessionDescription.parse(data)
    if not sdp.media:
        raise SdpError("no m= line")
    media = sdp.media[0]
    if not media.formats or not media.formats[0].isdigit():
        raise SdpError("m= line has no RTP payload type")
    pt = int(media.formats[0])
    rtpmap = media.rtpmap(pt)
    if rtpmap is None:
        raise SdpError(f"no a=rtpmap for payload type {pt}")
    encoding = rtpmap.encoding.upper()
    if media.kind == "video" and encoding == "RAW":
        if rtpmap.clock_rate != 90000:
            raise SdpError(f"raw video at {rtpmap.clock_rate} Hz (ST 2110-20 is 90000)")
        return _video(sdp, media, pt, strict)
    if media.kind == "audio" and encoding in ("L16", "L24"):
        if rtpmap.clock_rate not in (44100, 48000, 96000):
            raise SdpError(f"{encoding} at {rtpmap.clock_rate} Hz (expected 44100, 48000 or 96000)")
        return _audio(sdp, media, pt, encoding, rtpmap.clock_rate, rtpmap.channels or 1)
    raise SdpError(f"m={media.kind} {rtpmap.encoding}/{rtpmap.clock_rate} is neither ST 2110-20 raw nor L16/L24")
