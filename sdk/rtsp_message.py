"""RTSP/1.0 messages (RFC 2326): header fields, requests, responses and interleaved frames.

Part of :mod:`msm.sdk.rtsp` (import from there); :mod:`msm.sdk.rtsp_reader` turns bytes
into these, :mod:`msm.sdk.rtsp_fields` parses the structured header values.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from msm.sdk.errors import RtspError

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
    # Imported here: the reader builds these messages, so it imports this module.
    from msm.sdk.rtsp_reader import RtspReader

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


