"""Fuzz the structured RTSP header values (``msm.sdk.rtsp_fields``).

The first byte picks the header (``Transport``, ``Session``, ``Public`` or
``RTP-Info``); the rest, decoded the way the reader decodes a header line (UTF-8,
else Latin-1), is its value.  Only :class:`~msm.sdk.errors.RtspError` is expected.
Checked besides: a ``Transport`` or ``Session`` value that parses formats to a value
that parses to the same thing.  (The module has no ``Range`` parser: the mesh passes
``Range`` through untouched.)
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import RtspError
    from msm.sdk.rtsp import (
        format_session,
        format_transport,
        parse_public,
        parse_rtp_info,
        parse_session,
        parse_transport,
    )

NAME = "rtsp_fields"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
HEADERS = ("Transport", "Session", "Public", "RTP-Info")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _same(before: object, after: object) -> None:
    if before != after:
        raise AssertionError(f"format/parse changed {before!r:.300} into {after!r:.300}")


def parse(header: str, value: str) -> None:
    if header == "Transport":
        specs = parse_transport(value)
        _same(specs, parse_transport(format_transport(specs)))
    elif header == "Session":
        session = parse_session(value)
        _same(session, parse_session(format_session(*session)))
    elif header == "Public":
        parse_public(value)
    else:
        parse_rtp_info(value)


def test_one(data: bytes) -> None:
    if not data:
        return
    header, value = HEADERS[data[0] % len(HEADERS)], _decode(data[1:])
    try:
        try:
            parse(header, value)
        except RtspError:
            return
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


def inputs() -> list[bytes]:
    """Every value of these headers in the recorded RTSP exchanges, with its selector byte."""
    found: list[bytes] = []
    for path in fuzzlib.data_files("rtsp/*", "sdp/*.rtsp"):
        for line in path.read_bytes().split(b"\n"):
            name, colon, value = line.partition(b":")
            for index, header in enumerate(HEADERS):
                if colon and name.strip().lower() == header.lower().encode():
                    found.append(bytes([index]) + value.strip())
    return sorted(set(found)) + fuzzlib.seeds(NAME, [])


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, inputs())
