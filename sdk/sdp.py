# long module: the SDP value classes share their checks; the parser is sdp_parse.py.
"""Session descriptions (SDP, RFC 8866), as RTSP carries them in DESCRIBE and ANNOUNCE.

Sans-IO: :meth:`SessionDescription.parse` turns a body into frozen values and
``bytes(sdp)`` turns them back into a body with CRLF line endings in the RFC's
order.  The ``with_*`` methods return rewritten copies, which is what a proxy
needs: point ``a=control`` at itself and blank out the origin's addresses.

Parsing is lenient where real peers are sloppy and strict where the text would
be ambiguous:

* CRLF and bare LF line endings are both accepted, empty lines are skipped;
* session-level lines may come in any order after ``v=`` (the RFC order is
  restored on output); a missing ``t=`` line reads as ``t=0 0``;
* line types the parser does not model (``r=``, ``z=``, ``k=``, unknown letters)
  are kept raw in ``extra`` and written back;
* a line that is not ``<letter>=<value>``, a missing ``v=``/``o=``/``s=``, a
  repeated single-valued line or a malformed ``o=``/``c=``/``m=``/``b=``/``t=``
  raises :class:`~msm.sdk.errors.SdpError` (400).

Text is decoded as UTF-8 with ``surrogateescape`` so that bytes in some other
charset (cameras do put Latin-1 in ``s=``) survive a parse/serialize round trip
unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from msm.sdk.errors import SdpError

__all__ = [
    "MAX_SDP_SIZE",
    "STATIC_PAYLOAD_TYPES",
    "Connection",
    "Media",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "resolve_control",
]

#: Largest body :meth:`SessionDescription.parse` accepts (413 beyond).  The same
#: bound as the RTSP reader's ``max_body``: real descriptions are well under
#: 4 KiB even with a dozen tracks and long ``sprop-parameter-sets``.
MAX_SDP_SIZE = 65536

Attribute = tuple[str, str | None]
Bandwidth = tuple[str, int]
RawLine = tuple[str, str]

_UINT32 = 0xFFFFFFFF
_FORBIDDEN_TEXT = re.compile(r"[\r\n\x00]")
_TOKEN = re.compile(r"[^\s\x00]+")
_ATTR_NAME = re.compile(r"[^\s\x00:]+")
_TYPE_LETTER = re.compile(r"[a-z]")
_SCHEME_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

#: Static RTP payload types of RFC 3551 (tables 4 and 5): ``pt -> (encoding,
#: clock rate, channels)``; channels is ``None`` for video and where the RFC
#: leaves it open (MPA).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, None),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, None),
    26: ("JPEG", 90000, None),
    28: ("nv", 90000, None),
    31: ("H261", 90000, None),
    32: ("MPV", 90000, None),
    33: ("MP2T", 90000, None),
    34: ("H263", 90000, None),
}


# --------------------------------------------------------------------------- checks


def _text(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise SdpError(f"{what} must be text, not {type(value).__name__}")
    if _FORBIDDEN_TEXT.search(value):
        raise SdpError(f"{what} contains CR, LF or NUL: {value[:80]!r}")
    if not value.isascii():
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise SdpError(f"{what} cannot be encoded: {value[:80]!r}") from exc


def _token(value: str, what: str) -> None:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise SdpError(f"{what} must be a non-empty token without spaces: {value!r:.80}")


def _int(value: int, what: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SdpError(f"{what} must be an integer in {low}..{high}, not {value!r:.80}")


def _parse_int(text: str, what: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise SdpError(f"{what} is not a decimal number: {text[:80]!r}")
    if len(text) > 20:   # 2**64 - 1 has 20 digits; past Python's int() digit limit it would raise ValueError
        raise SdpError(f"{what} is out of range: {text[:40]}...")
    value = int(text)
    _int(value, what, low, high)
    return value


def _attributes(value: tuple[Attribute, ...], what: str) -> None:
    if not isinstance(value, tuple):
        raise SdpError(f"{what} attributes must be a tuple")
    for item in value:
        if not isinstance(item, tuple) or len(item) != 2:
            raise SdpError(f"{what} attributes must be (name, value) pairs")
        name, attr_value = item
        if not isinstance(name, str) or not _ATTR_NAME.fullmatch(name):
            raise SdpError(f"bad attribute name {name!r:.80}")
        if attr_value is not None:
            _text(attr_value, f"a={name}")


def _bandwidths(value: tuple[Bandwidth, ...]) -> None:
    if not isinstance(value, tuple):
        raise SdpError("bandwidths must be a tuple")
    for item in value:
        if not isinstance(item, tuple) or len(item) != 2:
            raise SdpError("bandwidths must be (type, kbps) pairs")
        bwtype, bandwidth = item
        if not isinstance(bwtype, str) or not _ATTR_NAME.fullmatch(bwtype):
            raise SdpError(f"bad bandwidth type {bwtype!r:.80}")
        _int(bandwidth, f"b={bwtype}", 0, _UINT32)


def _raw_lines(value: tuple[RawLine, ...], forbidden: str) -> None:
    if not isinstance(value, tuple):
        raise SdpError("extra lines must be a tuple")
    for item in value:
        if not isinstance(item, tuple) or len(item) != 2:
            raise SdpError("extra lines must be (letter, value) pairs")
        letter, text = item
        if not isinstance(letter, str) or not _TYPE_LETTER.fullmatch(letter):
            raise SdpError(f"bad SDP line type {letter!r:.20}")
        if letter in forbidden:
            raise SdpError(f"{letter}= cannot be kept as an extra line here")
        _text(text, f"{letter}= line")


def _format_attribute(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _split_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not _ATTR_NAME.fullmatch(name):
        raise SdpError(f"bad attribute line a={value[:80]!r}")
    return (name, rest if colon else None)


def _split_bandwidth(value: str) -> Bandwidth:
    bwtype, colon, rest = value.partition(":")
    if not colon or not _ATTR_NAME.fullmatch(bwtype):
        raise SdpError(f"bad bandwidth line b={value[:80]!r}")
    return (bwtype, _parse_int(rest, f"b={bwtype}", 0, _UINT32))


def _first(attributes: Iterable[Attribute], name: str) -> str | None:
    for attr_name, value in attributes:
        if attr_name == name:
            return value
    return None


def _set_control(attributes: tuple[Attribute, ...], control: str) -> tuple[Attribute, ...]:
    """Replace the first ``a=control`` (dropping any others) or append one."""
    out: list[Attribute] = []
    placed = False
    for attr in attributes:
        if attr[0] == "control":
            if not placed:
                out.append(("control", control))
                placed = True
            continue
        out.append(attr)
    if not placed:
        out.append(("control", control))
    return tuple(out)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """A ``c=`` line: ``IN IP4 192.0.2.1`` (multicast ``/ttl/count`` kept in ``address``)."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str

    def __post_init__(self) -> None:
        _token(self.nettype, "c= nettype")
        _token(self.addrtype, "c= addrtype")
        _token(self.address, "c= address")

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line (without ``c=``)."""
        parts = value.split(" ")
        if len(parts) != 3:
            raise SdpError(f"bad connection line c={value[:80]!r}")
        return cls(nettype=parts[0], addrtype=parts[1], address=parts[2])

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """The ``o=`` line: ``<username> <sess-id> <sess-version> <nettype> <addrtype> <address>``.

    All fields are kept as text: ``sess-id`` is a 64-bit number in GStreamer's
    output and a plain ``0`` in ffmpeg's, and nobody does arithmetic on it.
    """

    username: str = "-"
    sess_id: str = "0"
    sess_version: str = "0"
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        for name in ("username", "sess_id", "sess_version", "nettype", "addrtype", "address"):
            _token(getattr(self, name), f"o= {name}")

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line (without ``o=``)."""
        parts = value.split(" ")
        if len(parts) != 6:
            raise SdpError(f"bad origin line o={value[:80]!r}")
        return cls(
            username=parts[0],
            sess_id=parts[1],
            sess_version=parts[2],
            nettype=parts[3],
            addrtype=parts[4],
            address=parts[5],
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpMap:
    """An ``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` value."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def __post_init__(self) -> None:
        _int(self.payload_type, "rtpmap payload type", 0, 127)
        _token(self.encoding, "rtpmap encoding")
        if "/" in self.encoding:
            raise SdpError(f"rtpmap encoding contains '/': {self.encoding[:80]!r}")
        _int(self.clock_rate, "rtpmap clock rate", 1, _UINT32)
        if self.channels is not None:
            _int(self.channels, "rtpmap channels", 1, 255)

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        """Parse the value of an ``a=rtpmap`` attribute (``96 H264/90000``)."""
        pt_text, _, encoding_text = value.strip().partition(" ")
        parts = encoding_text.strip().split("/")
        if len(parts) not in (2, 3):
            raise SdpError(f"bad rtpmap {value[:80]!r}")
        return cls(
            payload_type=_parse_int(pt_text, "rtpmap payload type", 0, 127),
            encoding=parts[0],
            clock_rate=_parse_int(parts[1], "rtpmap clock rate", 1, _UINT32),
            channels=_parse_int(parts[2], "rtpmap channels", 1, 255) if len(parts) == 3 else None,
        )

    def __str__(self) -> str:
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


class _HasAttributes:
    """``a=`` lookups shared by the session and media levels.

    At media level ``control`` is usually relative (``trackID=1``, ``stream=0``);
    at session level it is often ``*``, meaning the Content-Base itself.
    """

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=<name>`` (``None`` if absent or a flag)."""
        return _first(self.attributes, name)

    def attributes_named(self, name: str) -> list[str | None]:
        """The values of every ``a=<name>``, in order."""
        return [value for attr_name, value in self.attributes if attr_name == name]

    @property
    def control(self) -> str | None:
        """The ``a=control`` URL."""
        return self.attribute("control")


@dataclass(frozen=True, slots=True, kw_only=True)
class Media(_HasAttributes):
    """One media description: the ``m=`` line and the lines under it.

    ``extra`` keeps lines the model does not have a field for (``k=``, a second
    ``c=``, unknown letters), in order, as ``(letter, value)``.
    """

    kind: str
    port: int
    port_count: int | None = None
    proto: str = "RTP/AVP"
    formats: tuple[str, ...] = ()
    title: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    extra: tuple[RawLine, ...] = ()

    def __post_init__(self) -> None:
        _token(self.kind, "m= media")
        _int(self.port, "m= port", 0, 65535)
        if self.port_count is not None:
            _int(self.port_count, "m= port count", 1, 65535)
        _token(self.proto, "m= proto")
        if not isinstance(self.formats, tuple):
            raise SdpError("m= formats must be a tuple")
        for fmt in self.formats:
            _token(fmt, "m= format")
        if self.title is not None:
            _text(self.title, "i=")
        if self.connection is not None and not isinstance(self.connection, Connection):
            raise SdpError("media connection must be a Connection")
        _bandwidths(self.bandwidths)
        _attributes(self.attributes, "media")
        _raw_lines(self.extra, "vosiuepbtrzma")

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The mapping for ``payload_type``: its ``a=rtpmap``, else the RFC 3551 static entry.

        A malformed ``a=rtpmap`` for that type is skipped rather than raised: a
        proxy forwarding the description has no use for failing on it.
        """
        for value in self.attributes_named("rtpmap"):
            if value is None:
                continue
            pt_text = value.lstrip().partition(" ")[0]
            if pt_text != str(payload_type):
                continue
            try:
                return RtpMap.parse(value)
            except SdpError:
                continue
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        if static is None:
            return None
        encoding, clock_rate, channels = static
        return RtpMap(
            payload_type=payload_type, encoding=encoding, clock_rate=clock_rate, channels=channels
        )

    @property
    def clock_rate(self) -> int | None:
        """The RTP clock rate of the first format, when it is a known payload type."""
        if not self.formats:
            return None
        first = self.formats[0]
        if not first.isascii() or not first.isdigit() or int(first) > 127:
            return None
        mapping = self.rtpmap(int(first))
        return None if mapping is None else mapping.clock_rate

    def with_control(self, control: str) -> Media:
        """A copy whose ``a=control`` is ``control`` (replacing any existing one)."""
        return replace(self, attributes=_set_control(self.attributes, control))

    def with_port(self, port: int) -> Media:
        """A copy with ``port`` on the ``m=`` line."""
        return replace(self, port=port)

    def with_connection(self, connection: Connection | None) -> Media:
        """A copy whose ``c=`` line is ``connection`` (``None`` drops every media ``c=``)."""
        extra = tuple(line for line in self.extra if line[0] != "c")
        return replace(self, connection=connection, extra=extra)

    def _lines(self) -> Iterator[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        yield " ".join(("m=" + self.kind, port, self.proto, *self.formats))
        if self.title is not None:
            yield f"i={self.title}"
        if self.connection is not None:
            yield f"c={self.connection}"
        for letter, value in self.extra:
            if letter == "c":
                yield f"c={value}"
        for bwtype, bandwidth in self.bandwidths:
            yield f"b={bwtype}:{bandwidth}"
        for letter, value in self.extra:
            if letter != "c":
                yield f"{letter}={value}"
        for name, attr_value in self.attributes:
            yield _format_attribute(name, attr_value)


def _parse_media_line(value: str) -> Media:
    parts = value.split(" ")
    if len(parts) < 3 or not all(parts):
        raise SdpError(f"bad media line m={value[:80]!r}")
    port_text, slash, count_text = parts[1].partition("/")
    return Media(
        kind=parts[0],
        port=_parse_int(port_text, "m= port", 0, 65535),
        port_count=_parse_int(count_text, "m= port count", 1, 65535) if slash else None,
        proto=parts[2],
        formats=tuple(parts[3:]),
    )


def _parse_times(value: str) -> tuple[int, int]:
    parts = value.split(" ")
    if len(parts) != 2:
        raise SdpError(f"bad timing line t={value[:80]!r}")
    # NTP seconds; 64-bit is generous (RFC 8866 grammar has no upper bound).
    limit = (1 << 64) - 1
    return (_parse_int(parts[0], "t= start", 0, limit), _parse_int(parts[1], "t= stop", 0, limit))


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription(_HasAttributes):
    """A whole session description.

    ``extra`` keeps the session-level lines without a field (``r=``, ``z=``,
    ``k=``, unknown letters) as ``(letter, value)``; they are written after the
    ``t=`` lines, where the RFC puts them.  (With several ``t=`` lines each
    followed by its own ``r=`` lines, the ``r=`` lines are regrouped after the
    last ``t=``; RTSP descriptions carry a single ``t=0 0``.)
    """

    version: int = 0
    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    info: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    times: tuple[tuple[int, int], ...] = ((0, 0),)
    extra: tuple[RawLine, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    media: tuple[Media, ...] = ()

    def __post_init__(self) -> None:
        if self.version != 0 or isinstance(self.version, bool):
            raise SdpError(f"unsupported SDP version v={self.version!r:.20}")
        if not isinstance(self.origin, Origin):
            raise SdpError("origin must be an Origin")
        # RFC 8866 wants a non-empty s= ("s=-" when there is no name), but
        # empty ones occur in the wild and carry no ambiguity: accepted.
        _text(self.name, "s=")
        for optional, what in ((self.info, "i="), (self.uri, "u=")):
            if optional is not None:
                _text(optional, what)
        for contact in (*self.emails, *self.phones):
            _text(contact, "e=/p=")
        if self.connection is not None and not isinstance(self.connection, Connection):
            raise SdpError("session connection must be a Connection")
        _bandwidths(self.bandwidths)
        if not isinstance(self.times, tuple) or not self.times:
            raise SdpError("a session description needs at least one t= line")
        for item in self.times:
            if not isinstance(item, tuple) or len(item) != 2:
                raise SdpError("times must be (start, stop) pairs")
            _int(item[0], "t= start", 0, (1 << 64) - 1)
            _int(item[1], "t= stop", 0, (1 << 64) - 1)
        _raw_lines(self.extra, "vosiuepcbtma")
        _attributes(self.attributes, "session")
        if not isinstance(self.media, tuple) or not all(isinstance(m, Media) for m in self.media):
            raise SdpError("media must be a tuple of Media")

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse a whole description (an RTSP body); raises :class:`SdpError`."""
        if isinstance(data, bytes | bytearray | memoryview):
            if len(data) > MAX_SDP_SIZE:
                raise SdpError(f"session description of {len(data)} bytes", status=413)
            text = bytes(data).decode("utf-8", "surrogateescape")
        elif isinstance(data, str):
            if len(data) > MAX_SDP_SIZE:
                raise SdpError(f"session description of {len(data)} characters", status=413)
            text = data
        else:
            raise SdpError(f"cannot parse {type(data).__name__} as SDP")
        if "\x00" in text:
            raise SdpError("NUL in session description")
        # Imported here: the parser builds these values, so it imports this module.
        from msm.sdk.sdp_parse import parse_lines

        return parse_lines(cls, text)

    # ------------------------------------------------------------------ output

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self._lines())

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")

    def _lines(self) -> Iterator[str]:
        yield f"v={self.version}"
        yield f"o={self.origin}"
        yield f"s={self.name}"
        if self.info is not None:
            yield f"i={self.info}"
        if self.uri is not None:
            yield f"u={self.uri}"
        for email in self.emails:
            yield f"e={email}"
        for phone in self.phones:
            yield f"p={phone}"
        if self.connection is not None:
            yield f"c={self.connection}"
        for bwtype, bandwidth in self.bandwidths:
            yield f"b={bwtype}:{bandwidth}"
        for start, stop in self.times:
            yield f"t={start} {stop}"
        for letter, value in self.extra:
            yield f"{letter}={value}"
        for name, attr_value in self.attributes:
            yield _format_attribute(name, attr_value)
        for media in self.media:
            yield from media._lines()

    # ------------------------------------------------------------------ queries, rewrites

    def with_control(self, control: str) -> SessionDescription:
        """A copy whose session-level ``a=control`` is ``control``."""
        return replace(self, attributes=_set_control(self.attributes, control))

    def with_connection(self, connection: Connection | None) -> SessionDescription:
        """A copy with the session ``c=`` set to ``connection`` and every media ``c=`` removed."""
        media = tuple(m.with_connection(None) for m in self.media)
        return replace(self, connection=connection, media=media)

    def with_media(self, media: Sequence[Media]) -> SessionDescription:
        """A copy with ``media`` as its media descriptions."""
        return replace(self, media=tuple(media))


def resolve_control(base: str, control: str | None) -> str:
    """The URL a client uses for ``control`` under ``base`` (RFC 2326 C.1.1).

    ``base`` is the Content-Base (or Content-Location, or the request URL).
    An absolute ``scheme://`` URL is used as it is; ``None``, ``""`` and ``*``
    mean ``base`` itself; a path starting with ``/`` replaces the path of
    ``base``; anything else is appended after a ``/`` (the way ffmpeg, live555
    and GStreamer join, which differs from RFC 3986 resolution when the base has
    no trailing slash: ``rtsp://h/s`` + ``trackID=1`` is ``rtsp://h/s/trackID=1``).
    """
    if control is None:
        return base
    control = control.strip()
    if not control or control == "*":
        return base
    if _SCHEME_URL.match(control):
        return control
    if control.startswith("/"):
        scheme_end = base.find("://")
        if scheme_end >= 0:
            path_start = base.find("/", scheme_end + 3)
            authority = base if path_start < 0 else base[:path_start]
            return authority + control
        return control
    return base + control if base.endswith("/") else f"{base}/{control}"
