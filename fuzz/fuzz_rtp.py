"""Fuzz the RTP packet parser (``RtpPacket.parse``) and the forwarding fast path.

Only :class:`~msm.sdk.errors.RtpError` is expected.  Checked besides: a packet that
parses serialises and parses back to itself, ``rtp_header`` agrees with the full
parse, and ``is_rtcp`` never raises.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import RtpError
    from msm.sdk.rtp import RtpPacket, is_rtcp, rtp_header

NAME = "rtp"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()


def test_one(data: bytes) -> None:
    try:
        is_rtcp(data)
        try:
            header = rtp_header(data)
        except RtpError:
            header = None
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            return
        again = RtpPacket.parse(bytes(packet))
        if again != packet:
            raise AssertionError(f"round trip changed {packet!r:.200} into {again!r:.200}")
        fields = (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc,
                  packet.marker)
        if header != fields:
            raise AssertionError(f"rtp_header {header} disagrees with the parse {fields}")
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, ["rtp/*_rtp.bin"]))
