"""Fuzz the RTCP parsers: compound packets (``parse_rtcp``) and each packet type alone.

Only :class:`~msm.sdk.errors.RtcpError` is expected.  Checked besides: a compound
packet that parses serialises and parses back to the same packets, and so does
every single packet its own ``parse`` accepts.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import RtcpError
    from msm.sdk.rtp import (
        Bye,
        ReceiverReport,
        ReportBlock,
        SenderReport,
        SourceDescription,
        UnknownRtcp,
        parse_rtcp,
        serialize_rtcp,
    )

NAME = "rtcp"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
SINGLE = (SenderReport, ReceiverReport, SourceDescription, Bye, UnknownRtcp, ReportBlock)


def _same(before: object, after: object) -> None:
    if before != after:
        raise AssertionError(f"round trip changed {before!r:.300} into {after!r:.300}")


def test_one(data: bytes) -> None:
    try:
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            pass
        else:
            _same(packets, parse_rtcp(serialize_rtcp(packets)))
        for kind in SINGLE:
            try:
                packet = kind.parse(data)
            except RtcpError:
                continue
            _same(packet, kind.parse(bytes(packet)))
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, ["rtp/*_sr*.bin", "rtp/*_rr*.bin"]))
