"""Fuzz the incremental RTSP reader (``msm.sdk.rtsp.RtspReader``).

The first byte of an input picks how the rest is cut into chunks (and whether the
reader gets small bounds, to reach its 413/414 answers); the rest is the byte
stream a peer sends.  The stream is fed whole to one reader and chunk by chunk to
another.  Only :class:`~msm.sdk.errors.RtspError` is expected.  Checked besides:

* both readers give the same events and fail with the same status;
* every message read serialises and parses back to itself.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import RtspError
    from msm.sdk.rtsp import Event, InterleavedFrame, Request, Response, RtspReader

NAME = "rtsp_reader"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
SMALL = {"max_line": 64, "max_headers": 4, "max_header_bytes": 256, "max_body": 128}


def _drain(reader: RtspReader, events: list[Event]) -> int | None:
    """Take every complete event; the status of the error that broke the reader, if any."""
    while True:
        try:
            event = reader.next_event()
        except RtspError as exc:
            return exc.status
        if event is None:
            return None
        events.append(event)


def _chunk_sizes(seed: int, total: int) -> list[int]:
    limit = 1 + (seed >> 1) % 61
    state = seed * 2654435761 + 1
    sizes = []
    while total > 0:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        size = min(total, 1 + (state >> 8) % limit)
        sizes.append(size)
        total -= size
    return sizes


def read(stream: bytes, seed: int, *, whole: bool) -> tuple[list[Event], int | None]:
    reader = RtspReader(**SMALL) if seed & 1 else RtspReader()
    events: list[Event] = []
    if whole:
        reader.feed(stream)
        return events, _drain(reader, events)
    pos = 0
    for size in _chunk_sizes(seed, len(stream)):
        reader.feed(stream[pos : pos + size])
        pos += size
        status = _drain(reader, events)
        if status is not None:
            return events, status
    return events, None


def check_round_trip(event: Event) -> None:
    if isinstance(event, InterleavedFrame):
        again: Event = InterleavedFrame.parse(bytes(event))
    elif isinstance(event, Request):
        again = Request.parse(bytes(event))
    else:
        again = Response.parse(bytes(event))
    if again != event:
        raise AssertionError(f"round trip changed {event!r:.200} into {again!r:.200}")


def test_one(data: bytes) -> None:
    if not data:
        return
    seed, stream = data[0], data[1:]
    try:
        whole = read(stream, seed, whole=True)
        chunked = read(stream, seed, whole=False)
        if whole != chunked:
            raise AssertionError(f"whole {whole!r:.300} != chunked {chunked!r:.300}")
        for event in whole[0]:
            check_round_trip(event)
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


def inputs() -> list[bytes]:
    return [bytes([7]) + data for data in fuzzlib.seeds(NAME, ["rtsp/*", "sdp/*.rtsp"])]


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, inputs())
