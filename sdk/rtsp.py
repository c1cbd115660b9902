"""RTSP/1.0 messages (RFC 2326), sans-IO.

Bytes go into an :class:`RtspReader`, events (:class:`Request`, :class:`Response`,
:class:`InterleavedFrame`) come out; messages turn back into bytes with ``bytes(msg)``.
Nothing here touches a socket or an event loop.

Every fault a peer can cause raises :class:`~msm.sdk.errors.RtspError` carrying the status
to answer with (400 malformed, 413 too large, 414 request line too long, 461
unsupported transport, 505 wrong version).  Values built locally are validated the same
way when the message is built, so a message that exists can always be serialised.

The module also parses the structured headers the mesh needs: ``Transport``
(:func:`parse_transport`), ``Session`` (:func:`parse_session`), ``Public``
(:func:`parse_public`) and ``RTP-Info`` (:func:`parse_rtp_info`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from msm.sdk.errors import RtspError

__all__ = [
    "RTSP_VERSION",
    "STATUS_REASONS",
    "Event",
    "Headers",
    "InterleavedFrame",
    "Request",
    "Response",
    "RtspReader",
    "TransportSpec",
    "format_session",
    "format_transport",
    "parse_public",
    "parse_rtp_info",
    "parse_session",
    "parse_transport",
]

RTSP_VERSION = "RTSP/1.0"

#: Reason phrases of RFC 2326 section 7.1.1.
STATUS_REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    250: "Low on Storage Space",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Time-out",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    451: "Parameter Not Understood",
    452: "Conference Not Found",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    456: "Header Field Not Valid for Resource",
    457: "Invalid Range",
    458: "Parameter Is Read-Only",
    459: "Aggregate Operation Not Allowed",
    460: "Only Aggregate Operation Allowed",
    461: "Unsupported Transport",
    462: "Destination Unreachable",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
    505: "RTSP Version Not Supported",
    551: "Option not supported",
}

# RFC 2616 section 2.2 token: visible ASCII except separators.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A URI on the request line: anything visible, no whitespace or control characters.
_URI = re.compile(r"[^\x00-\x20\x7f]+")
_VERSION = re.compile(r"RTSP/([0-9]{1,3})\.([0-9]{1,3})")
# Something that looks like a protocol version at all (RTSP/2.0, HTTP/1.1): answered 505.
_ANY_VERSION = re.compile(r"[A-Za-z]{1,16}/[0-9]{1,3}\.[0-9]{1,3}")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_REASON_FORBIDDEN = re.compile(r"[\r\n\x00]")
_OWS = " \t"
_CRLF = b"\r\n"
# Content-Length and friends: a decimal of sane length (int() of thousands of digits is slow).
_DIGITS = re.compile(r"[0-9]{1,10}")


def _decode(raw: bytes) -> str:
    """RTSP text is UTF-8 (RFC 2326 section 15); fall back to Latin-1 so any byte decodes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RtspError(f"{what} is not encodable as UTF-8", status=400) from exc


# --------------------------------------------------------------------------- headers


class Headers:
    """Immutable, ordered header fields with case-insensitive lookup.

    Duplicates are kept in order (GStreamer sends two ``User-Agent`` fields).  Iterating
    yields ``(name, value)`` pairs, so ``Headers(other_headers)`` copies.  Values lose
    surrounding spaces and tabs, as on the wire they are not part of the value.
    """

    __slots__ = ("_items", "_lower")

    _items: tuple[tuple[str, str], ...]
    _lower: tuple[str, ...]

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs: Iterable[tuple[str, str]] = items.items() if isinstance(items, Mapping) else items
        checked: list[tuple[str, str]] = []
        for pair in pairs:
            name, value = pair
            checked.append(_check_header(name, value))
        self._items = tuple(checked)
        self._lower = tuple(name.lower() for name, _ in self._items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = name.lower()
        for lower, (_, value) in zip(self._lower, self._items, strict=True):
            if lower == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = name.lower()
        return [
            value
            for lower, (_, value) in zip(self._lower, self._items, strict=True)
            if lower == key
        ]

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def set(self, name: str, value: str) -> Headers:
        """A copy where ``name`` has exactly one value: in place of the first, else at the end."""
        key = name.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for lower, pair in zip(self._lower, self._items, strict=True):
            if lower != key:
                out.append(pair)
            elif not placed:
                out.append((name, value))
                placed = True
        if not placed:
            out.append((name, value))
        return Headers(out)

    def remove(self, name: str) -> Headers:
        """A copy without any field called ``name``."""
        key = name.lower()
        return Headers(
            pair for lower, pair in zip(self._lower, self._items, strict=True) if lower != key
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lower

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _key(self) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self._lower, (v for _, v in self._items), strict=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def _to_bytes(self) -> bytes:
        return b"".join(f"{name}: {value}\r\n".encode() for name, value in self._items)


def _check_header(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(value, str):
        raise RtspError("header names and values must be str", status=400)
    if not _TOKEN.fullmatch(name):
        raise RtspError(f"invalid header name {name!r}", status=400)
    if _FORBIDDEN_IN_VALUE.search(value):
        raise RtspError(f"invalid character in header {name!r}", status=400)
    _check_encodable(value, f"header {name!r}")
    return name, value.strip(_OWS)


def _content_length(headers: Headers) -> int | None:
    values = headers.get_all("Content-Length")
    if not values:
        return None
    if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0]):
        raise RtspError(f"bad Content-Length {values!r}", status=400)
    return int(values[0])


def _cseq(headers: Headers) -> int | None:
    value = headers.get("CSeq")
    return None if value is None else int(value)


def _check_message_headers(headers: Headers, body: bytes) -> Headers:
    """Validate CSeq and Content-Length; add Content-Length for a body that lacks one."""
    for value in headers.get_all("CSeq"):
        if not _DIGITS.fullmatch(value):
            raise RtspError(f"bad CSeq {value!r}", status=400)
    length = _content_length(headers)
    if length is None:
        return headers.set("Content-Length", str(len(body))) if body else headers
    if length != len(body):
        raise RtspError(
            f"Content-Length {length} does not match a body of {len(body)} bytes", status=400
        )
    return headers


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise RtspError(f"{what} must be bytes", status=400)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """An RTSP request.

    A non-empty body without ``Content-Length`` gets one added when the request is
    built, so ``headers`` always shows what goes on the wire.
    """

    method: str
    uri: str
    headers: Headers = Headers()
    body: bytes = b""
    version: str = RTSP_VERSION

    def __post_init__(self) -> None:
        # A leading "$" is a token character but would read back as an interleaved frame.
        if (
            not isinstance(self.method, str)
            or not _TOKEN.fullmatch(self.method)
            or self.method.startswith("$")
        ):
            raise RtspError(f"invalid method {self.method!r}", status=400)
        if not isinstance(self.uri, str) or not _URI.fullmatch(self.uri):
            raise RtspError(f"invalid request URI {self.uri!r}", status=400)
        _check_encodable(self.uri, "request URI")
        _validate_message(self)

    @property
    def cseq(self) -> int | None:
        return _cseq(self.headers)

    def __bytes__(self) -> bytes:
        start = f"{self.method} {self.uri} {self.version}\r\n".encode()
        return start + self.headers._to_bytes() + _CRLF + self.body

    @classmethod
    def parse(cls, data: bytes) -> Request:
        """Parse exactly one whole request."""
        return _parse_one(data, cls)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """An RTSP response; an empty ``reason`` is filled from :data:`STATUS_REASONS`."""

    status: int
    reason: str = ""
    headers: Headers = Headers()
    body: bytes = b""
    version: str = RTSP_VERSION

    def __post_init__(self) -> None:
        if (
            not isinstance(self.status, int)
            or isinstance(self.status, bool)
            or not 100 <= self.status <= 999
        ):
            raise RtspError(f"invalid status code {self.status!r}", status=400)
        if not isinstance(self.reason, str) or _REASON_FORBIDDEN.search(self.reason):
            raise RtspError(f"invalid reason phrase {self.reason!r}", status=400)
        _check_encodable(self.reason, "reason phrase")
        if not self.reason:
            object.__setattr__(self, "reason", STATUS_REASONS.get(self.status, "Unknown"))
        _validate_message(self)

    @property
    def cseq(self) -> int | None:
        return _cseq(self.headers)

    def __bytes__(self) -> bytes:
        start = f"{self.version} {self.status} {self.reason}\r\n".encode()
        return start + self.headers._to_bytes() + _CRLF + self.body

    @classmethod
    def parse(cls, data: bytes) -> Response:
        """Parse exactly one whole response."""
        return _parse_one(data, cls)


def _validate_message(message: Request | Response) -> None:
    """What requests and responses share: version, headers, body and Content-Length."""
    _check_version(message.version)
    if not isinstance(message.headers, Headers):
        raise RtspError("headers must be a Headers", status=400)
    body = _as_bytes(message.body, "body")
    object.__setattr__(message, "body", body)
    object.__setattr__(message, "headers", _check_message_headers(message.headers, body))


def _check_version(version: object) -> None:
    if not isinstance(version, str):
        raise RtspError("version must be str", status=400)
    match = _VERSION.fullmatch(version)
    if match is None:
        if _ANY_VERSION.fullmatch(version):
            raise RtspError(f"unsupported protocol version {version!r}", status=505)
        raise RtspError(f"invalid protocol version {version!r}", status=400)
    if match.group(1) != "1":
        raise RtspError(f"unsupported protocol version {version!r}", status=505)


# '$', channel, 16-bit length (RFC 2326 section 10.12).
_FRAME_HEADER = struct.Struct("!cBH")
_MAX_FRAME_PAYLOAD = 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class InterleavedFrame:
    """An RTP or RTCP packet interleaved on the RTSP connection (RFC 2326 section 10.12)."""

    channel: int
    payload: bytes

    def __post_init__(self) -> None:
        if (
            not isinstance(self.channel, int)
            or isinstance(self.channel, bool)
            or not 0 <= self.channel <= 255
        ):
            raise RtspError(f"invalid interleaved channel {self.channel!r}", status=400)
        payload = _as_bytes(self.payload, "payload")
        if len(payload) > _MAX_FRAME_PAYLOAD:
            raise RtspError(f"interleaved payload of {len(payload)} bytes", status=413)
        object.__setattr__(self, "payload", payload)

    def __bytes__(self) -> bytes:
        return _FRAME_HEADER.pack(b"$", self.channel, len(self.payload)) + self.payload

    @classmethod
    def parse(cls, data: bytes) -> InterleavedFrame:
        """Parse exactly one whole frame."""
        if len(data) < _FRAME_HEADER.size or data[:1] != b"$":
            raise RtspError("not an interleaved frame", status=400)
        _, channel, length = _FRAME_HEADER.unpack_from(data)
        if len(data) != _FRAME_HEADER.size + length:
            raise RtspError(
                f"interleaved frame says {length} bytes, got {len(data) - 4}", status=400
            )
        return cls(channel=channel, payload=bytes(data[_FRAME_HEADER.size :]))


Event = Request | Response | InterleavedFrame


_M = TypeVar("_M", Request, Response)


def _parse_one(data: bytes, kind: type[_M]) -> _M:
    reader = RtspReader()
    reader.feed(data)
    event = reader.next_event()
    if event is None:
        raise RtspError(f"incomplete {kind.__name__.lower()}", status=400)
    if not isinstance(event, kind):
        raise RtspError(f"expected a {kind.__name__.lower()}, got {event!r:.60}", status=400)
    if reader._buffer:
        raise RtspError(f"{len(reader._buffer)} bytes after the message", status=400)
    return event


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True, slots=True)
class _Head:
    """A parsed start line and header block waiting for its body."""

    start: tuple[str, str, str]
    is_response: bool
    headers: Headers
    length: int


class RtspReader:
    """Incremental, bounded RTSP parser for either end of a connection.

    ``feed`` bytes as they arrive, then call ``next_event`` until it returns ``None``
    (more data needed).  A line starting with ``RTSP/`` begins a response, ``$`` an
    interleaved frame, anything else a request.  Bare ``LF`` line ends and empty
    lines between messages (keep-alives) are tolerated.

    Bounds, each a generous multiple of what real peers send (``tests/data/rtsp``):

    * ``max_line`` (4 KiB): one start or header line.  The longest real lines are
      request URIs and ``Transport``/``RTP-Info`` values, around 100-150 bytes; 4 KiB
      leaves room for long query strings and many-track ``RTP-Info``.  A longer
      request line is answered 414, any other line 413.
    * ``max_headers`` (64): fields per message.  Real peers send 2-10 (GStreamer's
      RealPlayer-compatible OPTIONS is the largest); 64 stops a field flood early.
    * ``max_header_bytes`` (16 KiB): the whole head, and so also how much data
      without a blank line is buffered while waiting for the head to end.
    * ``max_body`` (64 KiB): ``Content-Length``.  Bodies are SDP and parameter text;
      GStreamer's one-track SDP is 529 bytes, so 64 KiB fits over a hundred tracks.

    Interleaved frames carry a 16-bit length, so they are bounded by the format.  The
    caller keeps the buffer bounded by draining ``next_event`` after every ``feed``:
    then it holds at most one incomplete event plus one received chunk.

    After an error the reader is broken: every later call raises the same error.
    """

    __slots__ = (
        "_buffer",
        "_error",
        "_head",
        "_max_body",
        "_max_header_bytes",
        "_max_headers",
        "_max_line",
        "_scan",
    )

    def __init__(
        self,
        *,
        max_line: int = 4096,
        max_headers: int = 64,
        max_header_bytes: int = 16384,
        max_body: int = 65536,
    ) -> None:
        self._max_line = max_line
        self._max_headers = max_headers
        self._max_header_bytes = max_header_bytes
        self._max_body = max_body
        self._buffer = bytearray()
        # Where the search for the end of the head resumes, so byte-at-a-time feeding
        # does not rescan the head from its start every time.
        self._scan = 0
        self._head: _Head | None = None
        self._error: RtspError | None = None

    def feed(self, data: bytes) -> None:
        self._raise_if_broken()
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next complete event, or ``None`` if more data is needed."""
        self._raise_if_broken()
        try:
            return self._next_event()
        except RtspError as exc:
            self._error = exc
            raise

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise RtspError(self._error.message, status=self._error.status)

    def _next_event(self) -> Event | None:
        buf = self._buffer
        if self._head is None:
            # Empty lines between messages: CRLF keep-alives and stray line ends.
            skip = 0
            while skip < len(buf):
                if buf[skip] == 0x0A:
                    skip += 1
                elif buf[skip] == 0x0D and buf[skip + 1 : skip + 2] == b"\n":
                    skip += 2
                else:
                    break  # a CR not (yet) followed by LF: wait, or let it fail as a line
            if skip:
                del buf[:skip]
                self._scan = 0
            if not buf or buf == b"\r":
                return None
            if buf[0] == 0x24:  # '$'
                return self._next_frame()
            end = self._find_head_end()
            if end is None:
                return None
            head_bytes = bytes(buf[:end])
            del buf[:end]
            self._scan = 0
            self._head = self._parse_head(head_bytes)
        head = self._head
        if len(buf) < head.length:
            return None
        body = bytes(buf[: head.length])
        del buf[: head.length]
        self._head = None
        return self._build(head, body)

    def _next_frame(self) -> InterleavedFrame | None:
        buf = self._buffer
        if len(buf) < _FRAME_HEADER.size:
            return None
        _, channel, length = _FRAME_HEADER.unpack_from(buf)
        end = _FRAME_HEADER.size + length
        if len(buf) < end:
            return None
        payload = bytes(buf[_FRAME_HEADER.size : end])
        del buf[:end]
        return InterleavedFrame(channel=channel, payload=payload)

    def _too_long(self, first_line: bool) -> RtspError:
        if first_line and not self._buffer.startswith(b"RTSP/"):
            return RtspError("request line too long", status=414)
        return RtspError("header line too long", status=413)

    def _find_head_end(self) -> int | None:
        """Index just past the blank line that ends the head, or None if not yet seen."""
        buf = self._buffer
        pos = self._scan
        while True:
            newline = buf.find(b"\n", pos)
            if newline < 0:
                self._scan = pos
                # +1: the line may yet turn out to end in CR LF, and the CR does not count.
                if len(buf) - pos > self._max_line + 1:
                    raise self._too_long(pos == 0)
                if len(buf) > self._max_header_bytes:
                    raise RtspError("message head too large", status=413)
                return None
            length = newline - pos
            if length and buf[newline - 1] == 0x0D:
                length -= 1
            if length > self._max_line:
                raise self._too_long(pos == 0)
            if newline + 1 > self._max_header_bytes:
                raise RtspError("message head too large", status=413)
            if length == 0 and pos > 0:
                return newline + 1
            pos = newline + 1

    def _parse_head(self, raw: bytes) -> _Head:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]
        # The head ends with a line end and an empty line: two empty strings at the end.
        lines = lines[:-2]
        start_line = _decode(lines[0])
        is_response = lines[0].startswith(b"RTSP/")
        start = _parse_status_line(start_line) if is_response else _parse_request_line(start_line)
        fields: list[tuple[str, str]] = []
        for raw_line in lines[1:]:
            line = _decode(raw_line)
            if line[:1] in (" ", "\t"):
                # Obsolete line folding (RFC 2326 section 4.2 allows LWS continuation).
                if not fields:
                    raise RtspError("continuation line before any header", status=400)
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {line.strip(_OWS)}".strip(_OWS))
                continue
            name, colon, value = line.partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                raise RtspError(f"malformed header line {line[:80]!r}", status=400)
            fields.append((name, value))
            if len(fields) > self._max_headers:
                raise RtspError(f"more than {self._max_headers} header fields", status=413)
        headers = Headers(fields)
        length = _content_length(headers) or 0
        if length > self._max_body:
            raise RtspError(f"body of {length} bytes exceeds {self._max_body}", status=413)
        return _Head(start=start, is_response=is_response, headers=headers, length=length)

    @staticmethod
    def _build(head: _Head, body: bytes) -> Request | Response:
        first, second, third = head.start
        if head.is_response:
            return Response(
                version=first, status=int(second), reason=third, headers=head.headers, body=body
            )
        return Request(method=first, uri=second, version=third, headers=head.headers, body=body)


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _URI.fullmatch(parts[1]):
        raise RtspError(f"malformed request line {line[:80]!r}", status=400)
    _check_version(parts[2])
    return parts[0], parts[1], parts[2]


def _parse_status_line(line: str) -> tuple[str, str, str]:
    version, _, rest = line.partition(" ")
    status, _, reason = rest.partition(" ")
    if not re.fullmatch(r"[0-9]{3}", status):
        raise RtspError(f"malformed status line {line[:80]!r}", status=400)
    _check_version(version)
    return version, status, reason


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
