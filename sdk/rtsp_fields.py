"""Structured RTSP header values: ``Transport``, ``Session``, ``Public`` and ``RTP-Info``; request URLs.

Part of :mod:`msm.sdk.rtsp` (import from there).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from msm.sdk.errors import RtspError
from msm.sdk.rtsp_message import _DIGITS, _OWS, _TOKEN

# --------------------------------------------------------------------------- Transport

_PROFILES = {"RTP/AVP": "RTP/AVP", "RTP/AVP/UDP": "RTP/AVP", "RTP/AVP/TCP": "RTP/AVP/TCP"}
# transport-protocol/profile[/lower-transport]: well-formed, maybe not one we support.
_PROTOCOL_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9.\-]*(/[A-Za-z][A-Za-z0-9.\-]*){1,2}")
# A parameter value: a quoted string or a run without separators and whitespace.
_PARAM_VALUE = re.compile(r'"[^"\r\n]*"|[^;,"\s]+')
_ADDRESS = re.compile(r'[^;,"\s]+')
_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_SSRC = re.compile(r"[0-9A-Fa-f]{1,8}")
# Parameters TransportSpec models; everything else goes to ``extra``.
_TRANSPORT_PARAMS = frozenset(
    {
        "unicast",
        "multicast",
        "destination",
        "source",
        "client_port",
        "server_port",
        "interleaved",
        "port",
        "ttl",
        "ssrc",
        "mode",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSpec:
    """One alternative of the ``Transport`` header (RFC 2326 section 12.39).

    ``protocol`` is ``"RTP/AVP"`` (UDP) or ``"RTP/AVP/TCP"``; ``"RTP/AVP/UDP"`` is
    normalised to ``"RTP/AVP"``.  Parameters this class does not model are kept, in
    order, in ``extra``.
    """

    protocol: str = "RTP/AVP"
    unicast: bool = True
    destination: str | None = None
    source: str | None = None
    client_port: tuple[int, int] | None = None
    server_port: tuple[int, int] | None = None
    interleaved: tuple[int, int] | None = None
    port: tuple[int, int] | None = None
    ttl: int | None = None
    ssrc: int | None = None
    mode: str | None = None
    extra: tuple[tuple[str, str | None], ...] = field(default=())

    def __post_init__(self) -> None:
        protocol = _PROFILES.get(self.protocol.upper()) if isinstance(self.protocol, str) else None
        if protocol is None:
            raise RtspError(f"unsupported transport {self.protocol!r}", status=461)
        object.__setattr__(self, "protocol", protocol)
        for name in ("destination", "source"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _ADDRESS.fullmatch(value)):
                raise RtspError(f"invalid transport {name} {value!r}", status=400)
        for name in ("client_port", "server_port", "port"):
            _check_pair(name, getattr(self, name), 65535)
        _check_pair("interleaved", self.interleaved, 255)
        if self.ttl is not None and not _is_int_in(self.ttl, 0, 255):
            raise RtspError(f"invalid ttl {self.ttl!r}", status=400)
        if self.ssrc is not None and not _is_int_in(self.ssrc, 0, 0xFFFFFFFF):
            raise RtspError(f"invalid ssrc {self.ssrc!r}", status=400)
        if self.mode is not None and (
            not isinstance(self.mode, str) or not re.fullmatch(r'[^;"\s]+', self.mode)
        ):
            raise RtspError(f"invalid transport mode {self.mode!r}", status=400)
        for pair in self.extra:
            key, value = pair
            if (
                not isinstance(key, str)
                or not _TOKEN.fullmatch(key)
                or key.lower() in _TRANSPORT_PARAMS
            ):
                raise RtspError(f"invalid extra transport parameter {key!r}", status=400)
            if value is not None and (
                not isinstance(value, str) or not _PARAM_VALUE.fullmatch(value)
            ):
                raise RtspError(f"invalid value for transport parameter {key!r}", status=400)

    @property
    def lower_transport(self) -> str:
        return "TCP" if self.protocol == "RTP/AVP/TCP" else "UDP"

    def __str__(self) -> str:
        parts = [self.protocol, "unicast" if self.unicast else "multicast"]
        if self.destination is not None:
            parts.append(f"destination={self.destination}")
        if self.source is not None:
            parts.append(f"source={self.source}")
        for name in ("client_port", "server_port", "interleaved", "port"):
            pair = getattr(self, name)
            if pair is not None:
                parts.append(f"{name}={pair[0]}-{pair[1]}")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.ssrc is not None:
            parts.append(f"ssrc={self.ssrc:08X}")
        if self.mode is not None:
            # RFC 2326 quotes the mode list; GStreamer does, ffmpeg and others accept both.
            parts.append(f'mode="{self.mode}"')
        parts.extend(key if value is None else f"{key}={value}" for key, value in self.extra)
        return ";".join(parts)


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_pair(name: str, pair: object, high: int) -> None:
    if pair is None:
        return
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(_is_int_in(value, 0, high) for value in pair)
    ):
        raise RtspError(f"invalid {name} {pair!r}", status=400)


def _split_quoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    parts: list[str] = []
    quoted = False
    start = 0
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        raise RtspError("unterminated quoted string", status=400)
    parts.append(text[start:])
    return parts


def _parse_range(name: str, value: str | None, high: int) -> tuple[int, int]:
    match = _RANGE.fullmatch(value or "")
    if match is None:
        raise RtspError(f"invalid {name} {value!r}", status=400)
    first = int(match.group(1))
    # A single port or channel x means the pair x, x+1 (RTP and RTCP).
    second = int(match.group(2)) if match.group(2) is not None else first + 1
    if first > high or second > high:
        raise RtspError(f"{name} {value!r} out of range", status=400)
    return first, second


def _parse_spec(text: str) -> TransportSpec:
    params = [part.strip(_OWS) for part in _split_quoted(text, ";")]
    protocol = params[0]
    if not _PROTOCOL_SHAPE.fullmatch(protocol):
        raise RtspError(f"malformed transport {text[:80]!r}", status=400)
    fields: dict[str, object] = {}
    extra: list[tuple[str, str | None]] = []
    parsed: object
    for param in params[1:]:
        if not param:
            continue  # "RTP/AVP;;unicast" and a trailing ";" are harmless
        key, equals, raw = param.partition("=")
        key = key.strip(_OWS)
        value = raw.strip(_OWS) if equals else None
        if not _TOKEN.fullmatch(key) or (value is not None and not _PARAM_VALUE.fullmatch(value)):
            raise RtspError(f"malformed transport parameter {param[:80]!r}", status=400)
        lower = key.lower()
        if lower in ("unicast", "multicast"):
            if value is not None:
                raise RtspError(f"{lower} takes no value", status=400)
            name, parsed = "unicast", lower == "unicast"
        elif lower in ("destination", "source"):
            if value is None:
                continue  # a bare "destination" means the default: the sender's address
            if value.startswith('"'):
                raise RtspError(f"invalid {lower} {value!r}", status=400)
            name, parsed = lower, value
        elif lower in ("client_port", "server_port", "port"):
            name, parsed = lower, _parse_range(lower, value, 65535)
        elif lower == "interleaved":
            name, parsed = lower, _parse_range(lower, value, 255)
        elif lower == "ttl":
            if value is None or not re.fullmatch(r"[0-9]{1,3}", value) or int(value) > 255:
                raise RtspError(f"invalid ttl {value!r}", status=400)
            name, parsed = lower, int(value)
        elif lower == "ssrc":
            if value is None or not _SSRC.fullmatch(value):
                raise RtspError(f"invalid ssrc {value!r}", status=400)
            name, parsed = lower, int(value, 16)
        elif lower == "mode":
            mode = (value or "").strip('"').strip(_OWS)
            if not mode:
                raise RtspError("empty transport mode", status=400)
            name, parsed = lower, mode
        else:
            extra.append((key, value))
            continue
        if name in fields:
            # Two readings of one header are how proxies get confused: refuse them.
            raise RtspError(f"transport parameter {name} given twice", status=400)
        fields[name] = parsed
    upper = protocol.upper()
    if upper not in _PROFILES:
        raise RtspError(f"unsupported transport {protocol!r}", status=461)
    return TransportSpec(protocol=upper, extra=tuple(extra), **fields)  # type: ignore[arg-type]


def parse_transport(value: str) -> list[TransportSpec]:
    """Parse a ``Transport`` header into its alternatives, in the peer's order.

    Alternatives with a profile this module does not support (``RTP/SAVP``,
    ``RAW/RAW/UDP``...) are skipped; if none is left the error is 461.  A header that
    does not parse at all is 400.
    """
    specs: list[TransportSpec] = []
    unsupported: RtspError | None = None
    for text in _split_quoted(value, ","):
        text = text.strip(_OWS)
        if not text:
            continue
        try:
            specs.append(_parse_spec(text))
        except RtspError as exc:
            if exc.status != 461:
                raise
            unsupported = exc
    if not specs:
        if unsupported is not None:
            raise unsupported
        raise RtspError("empty Transport header", status=400)
    return specs


def format_transport(specs: Sequence[TransportSpec]) -> str:
    """The ``Transport`` header value for ``specs``, in order."""
    if not specs:
        raise ValueError("a Transport header needs at least one transport spec")
    return ",".join(str(spec) for spec in specs)


# --------------------------------------------------------------------------- Session & co

# RFC 2326 allows ALPHA / DIGIT / "$-_.+"; real servers also use "/" and "=" (base64),
# so any visible character that cannot end the field or a parameter is accepted.
_SESSION_ID = re.compile(r'[^\x00-\x20\x7f;,"]{1,256}')


def parse_session(value: str) -> tuple[str, int | None]:
    """``"abc123;timeout=60"`` -> ``("abc123", 60)``; unknown parameters are ignored."""
    parts = value.split(";")
    session_id = parts[0].strip(_OWS)
    if not _SESSION_ID.fullmatch(session_id):
        raise RtspError(f"invalid session id {session_id[:80]!r}", status=400)
    timeout: int | None = None
    for param in parts[1:]:
        key, equals, raw = param.partition("=")
        if key.strip(_OWS).lower() != "timeout":
            continue
        raw = raw.strip(_OWS)
        if not equals or not _DIGITS.fullmatch(raw) or timeout is not None:
            raise RtspError(f"invalid session timeout {param[:80]!r}", status=400)
        timeout = int(raw)
    return session_id, timeout


def format_session(session_id: str, timeout: int | None = None) -> str:
    """The ``Session`` header value; the timeout is in seconds."""
    if not _SESSION_ID.fullmatch(session_id):
        raise RtspError(f"invalid session id {session_id[:80]!r}", status=400)
    if timeout is None:
        return session_id
    if not _is_int_in(timeout, 0, 9_999_999_999):
        raise RtspError(f"invalid session timeout {timeout!r}", status=400)
    return f"{session_id};timeout={timeout}"


def parse_public(value: str) -> frozenset[str]:
    """The methods of a ``Public`` (or ``Allow``) header: ``"OPTIONS, DESCRIBE"``."""
    methods = set()
    for item in value.split(","):
        method = item.strip(_OWS)
        if not method:
            continue
        if not _TOKEN.fullmatch(method):
            raise RtspError(f"invalid method {method[:80]!r} in method list", status=400)
        methods.add(method)
    return frozenset(methods)


_RTP_INFO_KEYS = ("url", "seq", "rtptime", "ssrc")
# Entries are split on commas that start a new "url=": a comma inside a URL stays.
_RTP_INFO_ENTRY = re.compile(r",(?=[ \t]*url[ \t]*=)", re.IGNORECASE)


def parse_rtp_info(value: str) -> list[dict[str, str]]:
    """``"url=...;seq=1;rtptime=2, url=..."`` -> one dict per stream, keys lower-cased.

    ``seq`` and ``rtptime`` are checked to be decimal numbers; a ``;`` that does not
    start a known parameter belongs to the URL (``rtsp://host/a;b``).
    """
    entries: list[dict[str, str]] = []
    for text in _RTP_INFO_ENTRY.split(value):
        text = text.strip(_OWS)
        if not text:
            continue
        entry: dict[str, str] = {}
        for part in text.split(";"):
            key, equals, raw = part.partition("=")
            key = key.strip(_OWS).lower()
            if not part.strip(_OWS):
                continue
            if equals and key in _RTP_INFO_KEYS and key not in entry:
                entry[key] = raw.strip(_OWS)
            elif list(entry) == ["url"]:
                entry["url"] += ";" + part  # still inside the URL
            elif equals and entry and _TOKEN.fullmatch(key) and key not in entry:
                entry[key] = raw.strip(_OWS)  # an extension parameter
            else:
                raise RtspError(f"malformed RTP-Info {text[:80]!r}", status=400)
        if not entry.get("url"):
            raise RtspError(f"RTP-Info entry without url: {text[:80]!r}", status=400)
        if "seq" in entry and not re.fullmatch(r"[0-9]{1,5}", entry["seq"]):
            raise RtspError(f"invalid RTP-Info seq {entry['seq'][:20]!r}", status=400)
        if "rtptime" in entry and not _DIGITS.fullmatch(entry["rtptime"]):
            raise RtspError(f"invalid RTP-Info rtptime {entry['rtptime'][:20]!r}", status=400)
        entries.append(entry)
    if not entries:
        raise RtspError("empty RTP-Info header", status=400)
    return entries


# --------------------------------------------------------------------------- request URLs

_TRACK = re.compile(r"^track(\d+)$")


def split_url(uri: str) -> tuple[str, int | None]:
    """``rtsp://h/cam1/track1`` -> (``cam1``, 1); ``rtsp://h/cam1`` -> (``cam1``, None).

    A control appended after a query (a client that joins ``trackN`` to a request URL
    ``rtsp://h/cam1?x=1``) names the track too: ``rtsp://h/cam1?x=1/track0`` -> (``cam1``, 0).
    A URL that does not parse (``rtsp://[::1/cam``), a bracketed host that is no IPv6
    address (``rtsp://[::1]x/cam``, ``rtsp://[zz]/cam``) or a port that is no port is the
    client's fault: 400.
    """
    try:
        parts = urlsplit(uri)
        if parts.netloc:
            _check_host(parts.netloc.rpartition("@")[2])
            parts.port   # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError as exc:
        raise RtspError(f"bad request URL: {exc}", status=400) from exc
    path = parts.path.strip("/")
    head, _, last = path.rpartition("/")
    match = _TRACK.match(last)
    if match and head:
        return head, int(match.group(1))
    if parts.query and path:
        match = _TRACK.match(parts.query.rstrip("/").rpartition("/")[2])
        if match and "/" in parts.query:
            return path, int(match.group(1))
    return path, None


def _check_host(hostport: str) -> None:
    """``ValueError`` unless ``hostport`` is ``host[:port]`` with a bracketed host an IPv6 address."""
    if not hostport.startswith("["):
        if "[" in hostport or "]" in hostport:
            raise ValueError(f"brackets around no IPv6 address in {hostport!r}")
        return
    inside, _, rest = hostport[1:].partition("]")
    if rest and not (rest.startswith(":") and rest[1:].isdigit()) and rest != ":":
        raise ValueError(f"junk after the IPv6 address: {rest!r}")
    ipaddress.IPv6Address(inside.partition("%")[0])


def stream_url(uri: str) -> str:
    """The stream's URL of a track URL (``rtsp://h/cam1/track1`` -> ``rtsp://h/cam1``), without
    userinfo: what a SETUP that came without DESCRIBE (a client holding the SDP from an earlier
    connection) resolves its route by. A stream URL is returned as it is (without userinfo).
    """
    stream, track = split_url(uri)
    if track is None:
        return strip_userinfo(uri)
    parts = urlsplit(strip_userinfo(uri))
    suffix = f"/track{track}"
    if parts.path.rstrip("/").endswith(suffix):
        parts = parts._replace(path=parts.path.rstrip("/")[: -len(suffix)])
    else:   # the control was appended after a query: "cam?x=1/track0"
        parts = parts._replace(query=parts.query.rstrip("/")[: -len(suffix)])
    return parts._replace(fragment="").geturl()


def strip_userinfo(uri: str) -> str:
    """``uri`` without its ``user:password@``: what may be logged, echoed or passed on.

    Never raises: a URL that does not parse is returned without anything after its scheme.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri.partition("://")[0] + "://(unparsable)"
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
