"""Session descriptions: real captures, rewrites for proxying, malformed input, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.errors import SdpError
from msm.sdk.sdp import (
    MAX_SDP_SIZE,
    Connection,
    Media,
    Origin,
    RtpMap,
    SessionDescription,
    resolve_control,
)
from tests.datafiles import load

CAPTURES = [
    "gst_rtsp_server.sdp",
    "ffmpeg_announce.sdp",
    "ffmpeg_h264_pcmu.sdp",
    "ffmpeg_vp8_opus.sdp",
    "ffmpeg_mpeg4_aac.sdp",
    "ffmpeg_mjpeg_pcma_ipv6.sdp",
]


def _body(name: str) -> bytes:
    """The body of a raw RTSP message capture."""
    return load(f"sdp/{name}").split(b"\r\n\r\n", 1)[1]


def _header(name: str, field: str) -> str:
    head = load(f"sdp/{name}").split(b"\r\n\r\n", 1)[0].decode()
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.lower() == field.lower():
            return value.strip()
    raise KeyError(field)


# ---------------------------------------------------------------- real captures


@pytest.mark.parametrize("name", CAPTURES)
def test_captures_round_trip_byte_exact(name: str) -> None:
    data = load(f"sdp/{name}")
    sdp = SessionDescription.parse(data)
    assert bytes(sdp) == data
    assert str(sdp) == data.decode()
    assert SessionDescription.parse(data.decode()) == sdp
    assert SessionDescription.parse(data.replace(b"\r\n", b"\n")) == sdp


def test_captured_bodies_match_rtsp_messages() -> None:
    assert _body("gst_rtsp_server_describe.rtsp") == load("sdp/gst_rtsp_server.sdp")
    assert _body("ffmpeg_announce.rtsp") == load("sdp/ffmpeg_announce.sdp")
    assert int(_header("gst_rtsp_server_describe.rtsp", "Content-Length")) == len(
        load("sdp/gst_rtsp_server.sdp")
    )


def test_gstreamer_describe() -> None:
    sdp = SessionDescription.parse(load("sdp/gst_rtsp_server.sdp"))
    assert sdp.version == 0
    assert sdp.origin == Origin(
        username="-",
        sess_id="2048388949666409870",
        sess_version="1",
        nettype="IN",
        addrtype="IP4",
        address="127.0.0.1",
    )
    assert sdp.name == "Session streamed with GStreamer"
    assert sdp.info == "rtsp-server"
    assert sdp.connection is None
    assert sdp.times == ((0, 0),)
    assert sdp.control == "*"
    assert sdp.attribute("range") == "npt=now-"
    assert sdp.attribute("type") == "broadcast"
    video, audio = sdp.media
    assert (video.kind, video.port, video.port_count, video.proto) == ("video", 0, None, "RTP/AVP")
    assert video.formats == ("96",)
    assert video.connection == Connection(address="0.0.0.0")
    assert video.bandwidths == (("AS", 2097),)
    assert video.control == "stream=0"
    assert video.rtpmap(96) == RtpMap(payload_type=96, encoding="H264", clock_rate=90000)
    assert video.clock_rate == 90000
    fmtp = video.attribute("fmtp")
    assert fmtp is not None and fmtp.startswith("96 packetization-mode=1;sprop-parameter-sets=")
    assert video.attributes_named("ssrc") == ["1008646143 cname:user2290528348@host-28dde9d5"]
    assert audio.formats == ("8",) and audio.control == "stream=1"
    # Explicit rtpmap without channels, although the static table says 1.
    assert audio.rtpmap(8) == RtpMap(payload_type=8, encoding="PCMA", clock_rate=8000)
    assert audio.clock_rate == 8000


def test_gstreamer_controls_resolve_against_content_base() -> None:
    base = _header("gst_rtsp_server_describe.rtsp", "Content-Base")
    assert base.endswith("/test/")
    sdp = SessionDescription.parse(_body("gst_rtsp_server_describe.rtsp"))
    assert resolve_control(base, sdp.control) == base
    assert [resolve_control(base, m.control) for m in sdp.media] == [
        base + "stream=0",
        base + "stream=1",
    ]


def test_ffmpeg_announce() -> None:
    sdp = SessionDescription.parse(load("sdp/ffmpeg_announce.sdp"))
    assert sdp.name == "No Name"
    assert sdp.connection == Connection(address="127.0.0.1")
    assert sdp.attribute("tool") == "libavformat LIBAVFORMAT_VERSION"
    assert sdp.control is None
    video, audio = sdp.media
    assert video.connection is None and audio.connection is None
    assert [video.control, audio.control] == ["streamid=0", "streamid=1"]
    # Static payload type 0 without an rtpmap line.
    assert audio.formats == ("0",) and audio.attributes_named("rtpmap") == []
    assert audio.rtpmap(0) == RtpMap(payload_type=0, encoding="PCMU", clock_rate=8000, channels=1)
    assert audio.clock_rate == 8000
    url = "rtsp://127.0.0.1:56071/live"
    assert resolve_control(url, video.control) == url + "/streamid=0"


def test_ffmpeg_rtp_sdp_files() -> None:
    pcmu = SessionDescription.parse(load("sdp/ffmpeg_h264_pcmu.sdp"))
    audio = pcmu.media[1]
    # PCMU at the sine source's 44.1 kHz: a dynamic type, not static 0.
    assert audio.formats == ("97",)
    assert audio.rtpmap(97) == RtpMap(
        payload_type=97, encoding="PCMU", clock_rate=44100, channels=1
    )
    assert audio.clock_rate == 44100
    assert [m.port for m in pcmu.media] == [45000, 45002]

    opus = SessionDescription.parse(load("sdp/ffmpeg_vp8_opus.sdp")).media[1]
    assert opus.rtpmap(97) == RtpMap(payload_type=97, encoding="opus", clock_rate=48000, channels=2)

    aac = SessionDescription.parse(load("sdp/ffmpeg_mpeg4_aac.sdp")).media[1]
    assert aac.clock_rate == 48000
    assert aac.attribute("fmtp") == (
        "97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;"
        " config=118856E500"
    )

    ipv6 = SessionDescription.parse(load("sdp/ffmpeg_mjpeg_pcma_ipv6.sdp"))
    # The origin still says IP4 while the media are on ::1.
    assert ipv6.origin.addrtype == "IP4"
    assert [m.connection for m in ipv6.media] == [Connection(addrtype="IP6", address="::1")] * 2
    assert [m.clock_rate for m in ipv6.media] == [90000, 8000]
    assert ipv6.media[0].rtpmap(26) == RtpMap(payload_type=26, encoding="JPEG", clock_rate=90000)


# ---------------------------------------------------------------- rewrites


def _proxied(sdp: SessionDescription) -> SessionDescription:
    media = [m.with_control(f"track{i}") for i, m in enumerate(sdp.media)]
    return (
        sdp.with_media(media).with_control("*").with_connection(Connection(address="0.0.0.0"))
    )


@pytest.mark.parametrize("name", CAPTURES)
def test_rewrite_for_proxy(name: str) -> None:
    original = SessionDescription.parse(load(f"sdp/{name}"))
    rewritten = _proxied(original)
    assert rewritten.control == "*"
    assert rewritten.connection == Connection(nettype="IN", addrtype="IP4", address="0.0.0.0")
    assert [m.control for m in rewritten.media] == [f"track{i}" for i in range(len(original.media))]
    assert all(m.connection is None for m in rewritten.media)
    text = str(rewritten)
    assert text.count("a=control:*") == 1
    assert text.count("c=") == 1
    assert all(line for line in text.split("\r\n")[:-1])
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    original_text = str(original)
    for line in original_text.split("\r\n"):
        if line.startswith(("a=rtpmap:", "a=fmtp:", "m=", "b=", "o=", "s=")):
            assert line in text
    assert SessionDescription.parse(bytes(rewritten)) == rewritten
    # The attributes other than control are untouched, in order.
    for before, after in zip(original.media, rewritten.media, strict=True):
        assert [a for a in before.attributes if a[0] != "control"] == [
            a for a in after.attributes if a[0] != "control"
        ]


def test_rewrite_gstreamer_exact_output() -> None:
    sdp = _proxied(SessionDescription.parse(load("sdp/gst_rtsp_server.sdp")))
    sdp = sdp.with_media([m.with_port(0) for m in sdp.media])
    lines = str(sdp).split("\r\n")
    assert lines[:10] == [
        "v=0",
        "o=- 2048388949666409870 1 IN IP4 127.0.0.1",
        "s=Session streamed with GStreamer",
        "i=rtsp-server",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "a=tool:GStreamer",
        "a=type:broadcast",
        "a=control:*",
        "a=range:npt=now-",
    ]
    video = lines[10 : lines.index("m=audio 0 RTP/AVP 8")]
    assert video[:3] == ["m=video 0 RTP/AVP 96", "b=AS:2097", "a=rtpmap:96 H264/90000"]
    assert "a=control:track0" in video and "a=control:stream=0" not in video


def test_with_control_replaces_duplicates_and_appends() -> None:
    media = Media(
        kind="video",
        port=0,
        formats=("96",),
        attributes=(("control", "a"), ("rtpmap", "96 H264/90000"), ("control", "b")),
    )
    assert media.with_control("c").attributes == (
        ("control", "c"),
        ("rtpmap", "96 H264/90000"),
    )
    bare = Media(kind="audio", port=0, formats=("0",))
    assert bare.with_control("track1").attributes == (("control", "track1"),)
    assert bare.with_port(5004).port == 5004
    assert bare.with_connection(Connection(address="10.0.0.1")).connection is not None


def test_with_connection_none_drops_all_connection_lines() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nc=IN IP4 224.2.1.1/127\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\nc=IN IP4 224.2.1.1/127\r\nc=IN IP4 224.2.1.2/127\r\n"
        "a=rtpmap:96 H264/90000\r\n"
    )
    sdp = SessionDescription.parse(text)
    assert sdp.media[0].extra == (("c", "IN IP4 224.2.1.2/127"),)
    assert str(sdp) == text
    cleared = sdp.with_connection(None)
    assert "c=" not in str(cleared)


# ---------------------------------------------------------------- parsing details

MINIMAL = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def test_minimal_and_defaults() -> None:
    sdp = SessionDescription.parse(MINIMAL)
    assert sdp == SessionDescription(origin=Origin())
    assert str(SessionDescription(origin=Origin())) == MINIMAL


def test_missing_t_line_reads_as_zero() -> None:
    sdp = SessionDescription.parse("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=-\n")
    assert sdp.times == ((0, 0),)
    assert str(sdp) == MINIMAL


def test_lenient_session_order_is_restored() -> None:
    text = "v=0\na=control:*\nt=0 0\ns=x\nc=IN IP4 1.1.1.1\no=- 0 0 IN IP4 127.0.0.1\n"
    assert str(SessionDescription.parse(text)) == (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 1.1.1.1\r\nt=0 0\r\na=control:*\r\n"
    )


def test_all_session_fields_round_trip() -> None:
    text = (
        "v=0\r\n"
        "o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\n"
        "s=Call to John Smith\r\n"
        "i=SDP Offer #1\r\n"
        "u=http://www.jdoe.example.com/home.html\r\n"
        "e=Jane Doe <jane@jdoe.example.com>\r\n"
        "p=+1 617 555-6011\r\n"
        "c=IN IP4 198.51.100.1\r\n"
        "b=CT:128\r\n"
        "t=3724394400 3724398000\r\n"
        "t=0 0\r\n"
        "r=604800 3600 0 90000\r\n"
        "z=2882844526 -1h 2898848070 0\r\n"
        "k=clear:secret\r\n"
        "x=unknown line type\r\n"
        "a=recvonly\r\n"
        "a=empty:\r\n"
        "m=audio 49170 RTP/AVP 0\r\n"
        "m=video 51372/2 RTP/AVP 99 100\r\n"
        "i=the video\r\n"
        "c=IN IP6 2001:db8::2\r\n"
        "b=AS:512\r\n"
        "b=TIAS:512000\r\n"
        "k=prompt\r\n"
        "y=unknown in media\r\n"
        "a=rtpmap:99 h263-1998/90000\r\n"
        "a=sendonly\r\n"
    )
    sdp = SessionDescription.parse(text)
    assert str(sdp) == text
    assert sdp.emails == ("Jane Doe <jane@jdoe.example.com>",)
    assert sdp.phones == ("+1 617 555-6011",)
    assert sdp.times == ((3724394400, 3724398000), (0, 0))
    assert sdp.extra == (
        ("r", "604800 3600 0 90000"),
        ("z", "2882844526 -1h 2898848070 0"),
        ("k", "clear:secret"),
        ("x", "unknown line type"),
    )
    assert sdp.attributes == (("recvonly", None), ("empty", ""))
    assert sdp.attribute("recvonly") is None and sdp.attributes_named("recvonly") == [None]
    audio, video = sdp.media
    assert audio.formats == ("0",) and audio.attributes == ()
    assert (video.port, video.port_count, video.formats) == (51372, 2, ("99", "100"))
    assert video.title == "the video"
    assert video.bandwidths == (("AS", 512), ("TIAS", 512000))
    assert video.extra == (("k", "prompt"), ("y", "unknown in media"))
    assert video.rtpmap(100) is None
    assert video.rtpmap(99) == RtpMap(payload_type=99, encoding="h263-1998", clock_rate=90000)


def test_empty_session_name_accepted() -> None:
    sdp = SessionDescription.parse(MINIMAL.replace("s=-", "s="))
    assert sdp.name == ""
    assert str(sdp) == MINIMAL.replace("s=-", "s=")


def test_empty_lines_and_trailing_blank_lines_skipped() -> None:
    assert SessionDescription.parse("\r\n" + MINIMAL + "\r\n\r\n\n") == SessionDescription.parse(
        MINIMAL
    )


def test_non_utf8_text_survives_round_trip() -> None:
    data = MINIMAL.replace("s=-", "s=Cam\xe9ra").encode("latin-1")
    sdp = SessionDescription.parse(data)
    assert bytes(sdp) == data


def test_rtpmap_lookup_edge_cases() -> None:
    media = Media(
        kind="audio",
        port=0,
        formats=("101", "0"),
        attributes=(("rtpmap", "101 broken"), ("rtpmap", None), ("rtpmap", "0 PCMU/16000")),
    )
    assert media.rtpmap(101) is None  # malformed, no static entry
    assert media.clock_rate is None
    assert media.rtpmap(0) == RtpMap(payload_type=0, encoding="PCMU", clock_rate=16000)
    assert Media(kind="x", port=0).clock_rate is None
    assert Media(kind="application", port=0, formats=("text",)).clock_rate is None
    assert Media(kind="video", port=0, formats=("14",)).clock_rate == 90000
    assert Media(kind="audio", port=0, formats=("10",)).rtpmap(10) == RtpMap(
        payload_type=10, encoding="L16", clock_rate=44100, channels=2
    )


def test_rtpmap_values() -> None:
    assert str(RtpMap.parse("97 opus/48000/2")) == "97 opus/48000/2"
    for bad in ("", "96", "96 H264", "x H264/90000", "96 H264/0", "200 H264/90000", "96 a/1/2/3"):
        with pytest.raises(SdpError):
            RtpMap.parse(bad)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("\r\n\r\n", id="blank"),
        pytest.param("hello world", id="garbage"),
        pytest.param("<html><body>404</body></html>", id="html"),
        pytest.param("o=- 0 0 IN IP4 1.1.1.1\r\nv=0\r\ns=-\r\n", id="v-not-first"),
        pytest.param("v=1\r\no=- 0 0 IN IP4 1.1.1.1\r\ns=-\r\n", id="version-1"),
        pytest.param("v=0\r\ns=-\r\nt=0 0\r\n", id="missing-o"),
        pytest.param("v=0\r\no=- 0 0 IN IP4 1.1.1.1\r\nt=0 0\r\n", id="missing-s"),
        pytest.param(MINIMAL + "s=again\r\n", id="repeated-s"),
        pytest.param(MINIMAL + "v=0\r\n", id="repeated-v"),
        pytest.param(MINIMAL.replace("IN IP4 127.0.0.1", "IN IP4"), id="short-origin"),
        pytest.param(MINIMAL + "c=IN IP4\r\n", id="short-connection"),
        pytest.param(MINIMAL + "b=AS\r\n", id="bandwidth-no-colon"),
        pytest.param(MINIMAL + "b=AS:fast\r\n", id="bandwidth-not-number"),
        pytest.param(MINIMAL + "t=now\r\n", id="bad-times"),
        pytest.param(MINIMAL + "m=video\r\n", id="short-media"),
        pytest.param(MINIMAL + "m=video 70000 RTP/AVP 96\r\n", id="media-port-range"),
        pytest.param(MINIMAL + "m=video x RTP/AVP 96\r\n", id="media-port-text"),
        pytest.param(MINIMAL + "m=video 0/0 RTP/AVP 96\r\n", id="media-port-count-zero"),
        pytest.param(MINIMAL + "m=video 0  RTP/AVP 96\r\n", id="media-double-space"),
        pytest.param(MINIMAL + "m=video 0 RTP/AVP 96\r\nt=0 0\r\n", id="t-in-media"),
        pytest.param(MINIMAL + "m=video 0 RTP/AVP 96\r\no=x\r\n", id="o-in-media"),
        pytest.param(MINIMAL + "m=video 0 RTP/AVP 96\r\ni=a\r\ni=b\r\n", id="repeated-media-i"),
        pytest.param(MINIMAL + "a=:value\r\n", id="attribute-no-name"),
        pytest.param(MINIMAL + "a=\r\n", id="attribute-empty"),
        pytest.param(MINIMAL + "A=x\r\n", id="uppercase-type"),
        pytest.param(MINIMAL + "ab=x\r\n", id="two-letter-type"),
        pytest.param(MINIMAL + "a\r\n", id="no-equals"),
        pytest.param(MINIMAL + "a=x\ry\r\n", id="stray-cr"),
        pytest.param(MINIMAL + "a=x\x00\r\n", id="nul"),
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(text.encode())
    assert info.value.status == 400


def test_oversized_is_413() -> None:
    data = MINIMAL.encode() + b"a=x:" + b"y" * MAX_SDP_SIZE + b"\r\n"
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data)
    assert info.value.status == 413
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data.decode())
    assert info.value.status == 413


def test_trailing_data() -> None:
    data = load("sdp/gst_rtsp_server.sdp")
    with pytest.raises(SdpError):
        SessionDescription.parse(data + b"RTSP/1.0 200 OK\r\n")
    with pytest.raises(SdpError):
        SessionDescription.parse(data + data)  # a second description: repeated v=
    extra = SessionDescription.parse(data + b"a=extra:1\r\n")
    assert extra.media[-1].attributes[-1] == ("extra", "1")


def test_every_prefix_parses_or_raises_sdp_error() -> None:
    data = load("sdp/gst_rtsp_server.sdp")
    full = SessionDescription.parse(data)
    ok = 0
    for end in range(len(data) + 1):
        try:
            sdp = SessionDescription.parse(data[:end])
        except SdpError:
            continue
        ok += 1
        assert sdp.origin == full.origin
    assert ok > len(data) // 2  # most prefixes past s= are valid, shorter descriptions


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Connection, {"address": ""}),
        (Connection, {"address": "1.2.3.4 5"}),
        (Connection, {"address": "1.2.3.4", "nettype": "I N"}),
        (Origin, {"username": "a b"}),
        (Origin, {"sess_id": ""}),
        (RtpMap, {"payload_type": 128, "encoding": "x", "clock_rate": 1}),
        (RtpMap, {"payload_type": 96, "encoding": "H264/1", "clock_rate": 1}),
        (RtpMap, {"payload_type": 96, "encoding": "H264", "clock_rate": 0}),
        (RtpMap, {"payload_type": 96, "encoding": "x", "clock_rate": 1, "channels": 0}),
        (Media, {"kind": "video", "port": 65536}),
        (Media, {"kind": "video", "port": True}),
        (Media, {"kind": "", "port": 0}),
        (Media, {"kind": "video", "port": 0, "formats": ["96"]}),
        (Media, {"kind": "video", "port": 0, "formats": ("9 6",)}),
        (Media, {"kind": "video", "port": 0, "title": "a\nb"}),
        (Media, {"kind": "video", "port": 0, "attributes": (("con trol", "x"),)}),
        (Media, {"kind": "video", "port": 0, "attributes": (("control", "x\r\n"),)}),
        (Media, {"kind": "video", "port": 0, "bandwidths": (("AS", -1),)}),
        (Media, {"kind": "video", "port": 0, "extra": (("a", "x"),)}),
        (Media, {"kind": "video", "port": 0, "extra": (("t", "0 0"),)}),
        (SessionDescription, {"name": "a\r\nv=0"}),
        (SessionDescription, {"version": 1}),
        (SessionDescription, {"times": ()}),
        (SessionDescription, {"times": ((-1, 0),)}),
        (SessionDescription, {"extra": (("m", "video 0 RTP/AVP 96"),)}),
        (SessionDescription, {"media": (1,)}),
        (SessionDescription, {"info": "\ud800"}),
    ],
)
def test_invalid_values_rejected(cls: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(SdpError):
        cls(**kwargs)


def test_dataclass_replace_revalidates() -> None:
    from dataclasses import replace

    media = Media(kind="video", port=0)
    with pytest.raises(SdpError):
        replace(media, port=-1)
    with pytest.raises(SdpError):
        media.with_port(99999)


# ---------------------------------------------------------------- resolve_control

BASE = "rtsp://cam.example:8554/live"


@pytest.mark.parametrize(
    ("base", "control", "expected"),
    [
        (BASE, None, BASE),
        (BASE, "*", BASE),
        (BASE, "", BASE),
        (BASE, "trackID=1", BASE + "/trackID=1"),
        (BASE + "/", "trackID=1", BASE + "/trackID=1"),
        (BASE, " stream=0 ", BASE + "/stream=0"),
        (BASE, "rtsp://other:554/x/track2", "rtsp://other:554/x/track2"),
        (BASE, "RTSPS://other/x", "RTSPS://other/x"),
        (BASE, "/abs/track1", "rtsp://cam.example:8554/abs/track1"),
        ("rtsp://h", "/t", "rtsp://h/t"),
        ("rtsp://h", "t", "rtsp://h/t"),
        (BASE + "?token=1", "trackID=1", BASE + "?token=1/trackID=1"),
    ],
)
def test_resolve_control(base: str, control: str | None, expected: str) -> None:
    assert resolve_control(base, control) == expected


# ---------------------------------------------------------------- properties

# Text without the separators the format cannot carry inside a field.
_safe_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00"),
    max_size=20,
)
_token = st.text(
    alphabet=st.characters(
        min_codepoint=33, max_codepoint=0x2FF, exclude_categories=["Cs", "Zs", "Cc"]
    ),
    min_size=1,
    max_size=12,
)
_attr_name = _token.filter(lambda s: ":" not in s)
_attributes = st.lists(st.tuples(_attr_name, st.none() | _safe_text), max_size=5).map(tuple)
_bandwidths = st.lists(st.tuples(_attr_name, st.integers(0, 2**32 - 1)), max_size=2).map(tuple)
_connections = st.none() | st.builds(
    Connection, nettype=_token, addrtype=_token, address=_token
)
_media = st.builds(
    Media,
    kind=_token,
    port=st.integers(0, 65535),
    port_count=st.none() | st.integers(1, 65535),
    proto=_token,
    formats=st.lists(_token, max_size=4).map(tuple),
    title=st.none() | _safe_text,
    connection=_connections,
    bandwidths=_bandwidths,
    attributes=_attributes,
    extra=st.lists(st.tuples(st.sampled_from("kwxy"), _safe_text), max_size=2).map(tuple),
)
_descriptions = st.builds(
    SessionDescription,
    origin=st.builds(
        Origin,
        username=_token,
        sess_id=_token,
        sess_version=_token,
        nettype=_token,
        addrtype=_token,
        address=_token,
    ),
    name=_safe_text,
    info=st.none() | _safe_text,
    uri=st.none() | _safe_text,
    emails=st.lists(_safe_text, max_size=2).map(tuple),
    phones=st.lists(_safe_text, max_size=2).map(tuple),
    connection=_connections,
    bandwidths=_bandwidths,
    times=st.lists(
        st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), min_size=1, max_size=2
    ).map(tuple),
    extra=st.lists(st.tuples(st.sampled_from("rzkx"), _safe_text), max_size=3).map(tuple),
    attributes=_attributes,
    media=st.lists(_media, max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(_descriptions)
def test_property_round_trip(sdp: SessionDescription) -> None:
    data = bytes(sdp)
    assert SessionDescription.parse(data) == sdp
    assert SessionDescription.parse(str(sdp)) == sdp


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_property_any_bytes(data: bytes) -> None:
    try:
        SessionDescription.parse(data)
    except SdpError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("vosiuepcbtrzkamx"), st.text(max_size=30)),
        max_size=12,
    )
)
def test_property_line_soup(lines: list[tuple[str, str]]) -> None:
    """Well-formed lines in any order and with any values: parse or SdpError."""
    text = "v=0\r\n" + "".join(f"{letter}={value}\r\n" for letter, value in lines)
    try:
        sdp = SessionDescription.parse(text)
    except SdpError:
        return
    assert SessionDescription.parse(str(sdp)) == sdp
