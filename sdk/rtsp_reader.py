"""The incremental, bounded RTSP reader: bytes in, messages and interleaved frames out.

Part of :mod:`msm.sdk.rtsp` (import from there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from msm.sdk.errors import RtspError
from msm.sdk.rtsp_message import (
    _FRAME_HEADER,
    _OWS,
    _TOKEN,
    _URI,
    Event,
    Headers,
    InterleavedFrame,
    Request,
    Response,
    _check_version,
    _content_length,
    _decode,
)

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

    @property
    def partial(self) -> bool:
        """Part of a message or frame is buffered, waiting for the rest.

        A server bounds how long that may last (a peer that sends a request a byte
        at a time holds a connection for as long as it is let).
        """
        return self._head is not None or bool(self._buffer)

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


