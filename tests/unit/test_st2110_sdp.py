"""ST 2110-20/-30 session descriptions: written, read back, and refused with the missing field named."""

from __future__ import annotations

from fractions import Fraction

import pytest

from msm.sdk.errors import SdpError
from msm.sdk.rfc4175 import BPM, VideoFormat
from msm.sdk.st2110_sdp import AudioStream, VideoStream, audio_sdp, parse_fmtp, parse_st2110, video_sdp

FMT = VideoFormat("YCbCr-4:2:2", 10, 1920, 1080)


def test_video_round_trip_with_every_2110_field() -> None:
    stream = VideoStream("239.10.20.30", 5004, FMT, Fraction(30000, 1001), packing=BPM, source="192.0.2.7")
    text = video_sdp(stream)
    for field in ("sampling=YCbCr-4:2:2", "width=1920", "height=1080", "exactframerate=30000/1001", "depth=10",
                  "colorimetry=BT709", "PM=2110BPM", "SSN=ST2110-20:2017", "TP=2110TPN", "a=rtpmap:96 raw/90000",
                  "c=IN IP4 239.10.20.30/64", "a=source-filter: incl IN IP4 239.10.20.30 192.0.2.7"):
        assert field in text
    assert parse_st2110(text, strict=True) == stream


def test_audio_round_trip() -> None:
    for ptime in (1000, 125):
        stream = AudioStream("127.0.0.1", 5006, "L16", 48000, 8, ptime)
        text = audio_sdp(stream)
        assert ("a=ptime:1\r\n" if ptime == 1000 else "a=ptime:0.125\r\n") in text
        assert parse_st2110(text) == stream


def test_reads_ffmpegs_description() -> None:
    text = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "a=tool:libavformat\r\nm=video 5999 RTP/AVP 96\r\nb=AS:184320\r\na=rtpmap:96 raw/90000\r\n"
            "a=fmtp:96 sampling=YCbCr-4:2:2; width=640; height=480; depth=10\r\n")
    stream = parse_st2110(text)
    assert isinstance(stream, VideoStream) and stream.fmt == VideoFormat("YCbCr-4:2:2", 10, 640, 480)
    with pytest.raises(SdpError, match="exactframerate is missing"):
        parse_st2110(text, strict=True)


@pytest.mark.parametrize("field", ["sampling", "width", "height", "depth"])
def test_missing_fmtp_field_is_named(field: str) -> None:
    text = video_sdp(VideoStream("127.0.0.1", 5004, FMT))
    params = [p for p in text.split("a=fmtp:96 ")[1].split("\r\n")[0].split("; ") if not p.startswith(field + "=")]
    broken = text.replace(text.split("a=fmtp:96 ")[1].split("\r\n")[0], "; ".join(params))
    with pytest.raises(SdpError, match=f"fmtp field {field} is missing"):
        parse_st2110(broken)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("width=1920", "width=abc", "width"),
    ("depth=10", "depth=9", "unsupported sampling/depth"),
    ("PM=2110GPM", "PM=nope", "PM="),
    ("exactframerate=30", "exactframerate=30/0", "exactframerate"),
    ("a=fmtp:96 ", "a=fmtp:97 ", "no a=fmtp for payload type 96"),
    ("raw/90000", "raw/48000", "90000"),
    ("c=IN IP4 127.0.0.1\r\n", "", "no c= line"),
])
def test_bad_descriptions(old: str, new: str, message: str) -> None:
    text = video_sdp(VideoStream("127.0.0.1", 5004, FMT)).replace(old, new)
    with pytest.raises(SdpError, match=message):
        parse_st2110(text)


def test_audio_needs_ptime() -> None:
    text = audio_sdp(AudioStream("127.0.0.1", 5006)).replace("a=ptime:1\r\n", "")
    with pytest.raises(SdpError, match="ptime is missing"):
        parse_st2110(text)


def test_fmtp_bounded() -> None:
    with pytest.raises(SdpError, match="parameters"):
        parse_fmtp("96 " + "; ".join(f"k{i}=v" for i in range(100)))
