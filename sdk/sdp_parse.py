"""The SDP parser: lines of text into a :class:`~msm.sdk.sdp.SessionDescription`.

Part of :mod:`msm.sdk.sdp` (use ``SessionDescription.parse``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from msm.sdk.errors import SdpError
from msm.sdk.sdp import (
    _TYPE_LETTER,
    Attribute,
    Bandwidth,
    Connection,
    Media,
    Origin,
    RawLine,
    SessionDescription,
    _parse_media_line,
    _parse_times,
    _split_attribute,
    _split_bandwidth,
)


def _lines(text: str) -> Iterator[tuple[str, str]]:
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not _TYPE_LETTER.fullmatch(line[0]):
            raise SdpError(f"malformed SDP line {line[:80]!r}")
        if "\r" in line:
            raise SdpError(f"stray CR in SDP line {line[:80]!r}")
        yield line[0], line[2:]


class _Builder:
    """Collects parsed lines into a :class:`SessionDescription`."""

    _SINGLE = {"o": "o=", "s": "s=", "i": "i=", "u": "u=", "c": "c="}

    def __init__(self, cls: type[SessionDescription]) -> None:
        self.cls = cls
        self.seen: set[str] = set()
        self.origin: Origin | None = None
        self.name: str | None = None
        self.info: str | None = None
        self.uri: str | None = None
        self.emails: list[str] = []
        self.phones: list[str] = []
        self.connection: Connection | None = None
        self.bandwidths: list[Bandwidth] = []
        self.times: list[tuple[int, int]] = []
        self.extra: list[RawLine] = []
        self.attributes: list[Attribute] = []
        self.media: list[Media] = []
        # the media description being collected
        self.m: Media | None = None
        self.m_connection: Connection | None = None
        self.m_title: str | None = None
        self.m_bandwidths: list[Bandwidth] = []
        self.m_attributes: list[Attribute] = []
        self.m_extra: list[RawLine] = []

    def run(self, lines: Iterator[tuple[str, str]]) -> SessionDescription:
        first = next(lines, None)
        if first is None:
            raise SdpError("empty session description")
        if first[0] != "v":
            raise SdpError("session description does not start with v=")
        if first[1] != "0":
            raise SdpError(f"unsupported SDP version v={first[1][:20]!r}")
        for letter, value in lines:
            if letter == "m":
                self._close_media()
                self.m = _parse_media_line(value)
            elif self.m is None:
                self._session_line(letter, value)
            else:
                self._media_line(letter, value)
        self._close_media()
        if self.origin is None:
            raise SdpError("session description has no o= line")
        if self.name is None:
            raise SdpError("session description has no s= line")
        return self.cls(
            origin=self.origin,
            name=self.name,
            info=self.info,
            uri=self.uri,
            emails=tuple(self.emails),
            phones=tuple(self.phones),
            connection=self.connection,
            bandwidths=tuple(self.bandwidths),
            times=tuple(self.times) or ((0, 0),),
            extra=tuple(self.extra),
            attributes=tuple(self.attributes),
            media=tuple(self.media),
        )

    def _session_line(self, letter: str, value: str) -> None:
        if letter in self._SINGLE or letter == "v":
            if letter in self.seen or letter == "v":
                raise SdpError(f"repeated session-level {letter}= line")
            self.seen.add(letter)
        if letter == "o":
            self.origin = Origin.parse(value)
        elif letter == "s":
            self.name = value
        elif letter == "i":
            self.info = value
        elif letter == "u":
            self.uri = value
        elif letter == "e":
            self.emails.append(value)
        elif letter == "p":
            self.phones.append(value)
        elif letter == "c":
            self.connection = Connection.parse(value)
        elif letter == "b":
            self.bandwidths.append(_split_bandwidth(value))
        elif letter == "t":
            self.times.append(_parse_times(value))
        elif letter == "a":
            self.attributes.append(_split_attribute(value))
        else:  # r=, z=, k= and letters this parser does not know
            self.extra.append((letter, value))

    def _media_line(self, letter: str, value: str) -> None:
        if letter in "vos":
            raise SdpError(f"{letter}= inside a media description")
        if letter == "i":
            if self.m_title is not None:
                raise SdpError("repeated i= line in a media description")
            self.m_title = value
        elif letter == "c":
            if self.m_connection is None:
                self.m_connection = Connection.parse(value)
            else:  # layered multicast: more than one c= (RFC 8866 5.7)
                Connection.parse(value)
                self.m_extra.append(("c", value))
        elif letter == "b":
            self.m_bandwidths.append(_split_bandwidth(value))
        elif letter == "a":
            self.m_attributes.append(_split_attribute(value))
        elif letter in "ueptrz":
            # Session-only lines under an m= line: keeping them would re-emit
            # them inside the media section, so the description is refused.
            raise SdpError(f"{letter}= inside a media description")
        else:  # k= and unknown letters
            self.m_extra.append((letter, value))

    def _close_media(self) -> None:
        if self.m is None:
            return
        self.media.append(
            replace(
                self.m,
                title=self.m_title,
                connection=self.m_connection,
                bandwidths=tuple(self.m_bandwidths),
                attributes=tuple(self.m_attributes),
                # Extra c= lines first, in the order bytes(media) writes them (RFC 8866's
                # order: c= before b= and k=), so a description round-trips to an equal value.
                extra=tuple(sorted(self.m_extra, key=lambda line: line[0] != "c")),
            )
        )
        self.m = None
        self.m_connection = None
        self.m_title = None
        self.m_bandwidths = []
        self.m_attributes = []
        self.m_extra = []


def parse_lines(cls: type[SessionDescription], text: str) -> SessionDescription:
    """Parse the text of a whole description (size and NUL already checked)."""
    return _Builder(cls).run(_lines(text))
