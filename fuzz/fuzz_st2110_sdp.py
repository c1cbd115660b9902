"""Fuzz the ST 2110-20/-30 description reader (``parse_st2110``).

Only :class:`~msm.sdk.errors.SdpError` is expected. A description that reads
must write back (``video_sdp`` / ``audio_sdp``) to one that reads to the same
stream.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import SdpError
    from msm.sdk.st2110_sdp import VideoStream, audio_sdp, parse_st2110, video_sdp

NAME = "st2110_sdp"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()


def test_one(data: bytes) -> None:
    try:
        try:
            stream = parse_st2110(data)
        except SdpError:
            return
        text = video_sdp(stream) if isinstance(stream, VideoStream) else audio_sdp(stream)
        again = parse_st2110(text)
        if again != stream:
            raise AssertionError(f"writing back changed {stream!r:.300} into {again!r:.300}")
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, []))
