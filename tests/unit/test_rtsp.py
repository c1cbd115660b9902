"""RTSP messages, the incremental reader and the structured headers.

Parsers are tested whole, one byte at a time and with trailing data, against real
captures (``tests/data/rtsp``) and with hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.errors import RtspError
from msm.sdk.rtsp import (
    RTSP_VERSION,
    STATUS_REASONS,
    Event,
    Headers,
    InterleavedFrame,
    Request,
    Response,
    RtspReader,
    TransportSpec,
    format_session,
    format_transport,
    parse_public,
    parse_rtp_info,
    parse_session,
    parse_transport,
)
from tests.datafiles import load

# --------------------------------------------------------------------------- helpers


def read_all(reader: RtspReader, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def whole(data: bytes, **bounds: int) -> list[Event]:
    return read_all(RtspReader(**bounds), [data])


def bytewise(data: bytes, **bounds: int) -> list[Event]:
    return read_all(RtspReader(**bounds), [data[i : i + 1] for i in range(len(data))])


def error_status(data: bytes, **bounds: int) -> int:
    """The status of the error the reader raises on ``data``, fed whole and bytewise."""
    statuses = []
    for feed in (whole, bytewise):
        with pytest.raises(RtspError) as info:
            feed(data, **bounds)
        statuses.append(info.value.status)
    assert statuses[0] == statuses[1]
    return statuses[0]


OPTIONS = b"OPTIONS rtsp://example.com/media RTSP/1.0\r\nCSeq: 1\r\n\r\n"
SETUP = (
    b"SETUP rtsp://example.com/media/trackID=0 RTSP/1.0\r\n"
    b"CSeq: 3\r\n"
    b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
    b"\r\n"
)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
DESCRIBE_OK = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
    + f"Content-Length: {len(SDP)}\r\n\r\n".encode()
    + SDP
)
FRAME = b"$\x00\x00\x05hello"


# --------------------------------------------------------------------------- Headers


def test_headers_lookup_is_case_insensitive_and_keeps_duplicates() -> None:
    headers = Headers([("CSeq", "1"), ("User-Agent", "a"), ("user-agent", "b")])
    assert headers.get("cseq") == "1"
    assert headers.get("USER-AGENT") == "a"
    assert headers.get_all("User-Agent") == ["a", "b"]
    assert headers.get("Session") is None
    assert headers.get("Session", "x") == "x"
    assert "cseq" in headers and "Session" not in headers and 3 not in headers
    assert len(headers) == 3
    assert list(headers) == [("CSeq", "1"), ("User-Agent", "a"), ("user-agent", "b")]
    assert headers.items() == (("CSeq", "1"), ("User-Agent", "a"), ("user-agent", "b"))


def test_headers_from_mapping_and_copy() -> None:
    headers = Headers({"CSeq": "1", "Session": "abc"})
    assert headers.items() == (("CSeq", "1"), ("Session", "abc"))
    assert Headers(headers) == headers
    assert hash(Headers(headers)) == hash(headers)
    assert Headers([("cseq", "1"), ("session", "abc")]) == headers
    assert Headers([("Session", "abc"), ("CSeq", "1")]) != headers  # order matters
    assert headers != {"CSeq": "1"}


def test_headers_set_and_remove_return_new_headers() -> None:
    headers = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    replaced = headers.set("a", "9")
    assert replaced.items() == (("a", "9"), ("B", "2"))
    assert headers.items() == (("A", "1"), ("B", "2"), ("a", "3"))
    assert headers.set("C", "4").items()[-1] == ("C", "4")
    assert headers.remove("A").items() == (("B", "2"),)
    assert headers.remove("missing") == headers


def test_headers_strip_surrounding_whitespace() -> None:
    assert Headers([("A", " \t x y \t")]).get("A") == "x y"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Bad Name", "x"),
        ("", "x"),
        ("Colon:", "x"),
        ("A", "line\r\nInjected: 1"),
        ("A", "x\ny"),
        ("A", "nul\x00"),
        ("A", "\ud800"),
    ],
)
def test_headers_reject_bad_names_and_values(name: str, value: str) -> None:
    with pytest.raises(RtspError) as info:
        Headers([(name, value)])
    assert info.value.status == 400


# --------------------------------------------------------------------------- messages


def test_request_bytes() -> None:
    request = Request(method="OPTIONS", uri="*", headers=Headers({"CSeq": "1"}))
    assert bytes(request) == b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    assert request.cseq == 1
    assert request.version == RTSP_VERSION


def test_body_gets_content_length() -> None:
    request = Request(
        method="SET_PARAMETER", uri="rtsp://h/x", headers=Headers({"CSeq": "7"}), body=b"a: b\r\n"
    )
    assert request.headers.get("Content-Length") == "6"
    assert bytes(request).endswith(b"CSeq: 7\r\nContent-Length: 6\r\n\r\na: b\r\n")
    assert Request.parse(bytes(request)) == request


def test_response_bytes_and_reason() -> None:
    response = Response(status=454, headers=Headers({"CSeq": "4"}))
    assert response.reason == "Session Not Found"
    assert bytes(response) == b"RTSP/1.0 454 Session Not Found\r\nCSeq: 4\r\n\r\n"
    assert Response(status=299).reason == "Unknown"
    assert Response(status=200, reason="Fine").reason == "Fine"
    assert response.cseq == 4
    assert Response(status=200).cseq is None


def test_status_reasons_cover_rfc2326() -> None:
    assert STATUS_REASONS[455] == "Method Not Valid in This State"
    assert STATUS_REASONS[461] == "Unsupported Transport"
    assert STATUS_REASONS[505] == "RTSP Version Not Supported"
    assert STATUS_REASONS[551] == "Option not supported"
    assert {
        200,
        400,
        401,
        404,
        405,
        406,
        408,
        413,
        414,
        451,
        454,
        457,
        459,
        460,
        500,
        501,
        503,
    } <= set(STATUS_REASONS)


@pytest.mark.parametrize(
    "message",
    [
        Request(method="OPTIONS", uri="rtsp://h/x", headers=Headers({"CSeq": "1"})),
        Request(method="ANNOUNCE", uri="rtsp://h/x", headers=Headers({"CSeq": "2"}), body=SDP),
        Response(status=200, headers=Headers({"CSeq": "2"}), body=SDP),
        Response(status=461, reason="Unsupported transport", headers=Headers({"CSeq": "3"})),
        Response(status=200, version="RTSP/1.1"),
    ],
)
def test_message_round_trip(message: Request | Response) -> None:
    assert type(message).parse(bytes(message)) == message


@pytest.mark.parametrize(
    ("build", "status"),
    [
        (lambda: Request(method="BAD METHOD", uri="*"), 400),
        (lambda: Request(method="$PLAY", uri="*"), 400),
        (lambda: Request(method="PLAY", uri=""), 400),
        (lambda: Request(method="PLAY", uri="rtsp://h/a b"), 400),
        (lambda: Request(method="PLAY", uri="*", version="RTSP/2.0"), 505),
        (lambda: Request(method="PLAY", uri="*", version="HTTP/1.1"), 505),
        (lambda: Request(method="PLAY", uri="*", version="RTSP"), 400),
        (lambda: Request(method="PLAY", uri="*", headers=Headers({"CSeq": "one"})), 400),
        (lambda: Request(method="PLAY", uri="*", headers=Headers({"Content-Length": "3"})), 400),
        (
            lambda: Request(
                method="PLAY",
                uri="*",
                headers=Headers([("Content-Length", "1"), ("Content-Length", "2")]),
                body=b"x",
            ),
            400,
        ),
        (lambda: Response(status=99), 400),
        (lambda: Response(status=1000), 400),
        (lambda: Response(status=200, reason="O\r\nK"), 400),
        (lambda: InterleavedFrame(channel=256, payload=b""), 400),
        (lambda: InterleavedFrame(channel=-1, payload=b""), 400),
        (lambda: InterleavedFrame(channel=0, payload=bytes(65536)), 413),
    ],
)
def test_messages_are_validated_when_built(build: object, status: int) -> None:
    assert callable(build)
    with pytest.raises(RtspError) as info:
        build()
    assert info.value.status == status


def test_interleaved_frame_round_trip() -> None:
    frame = InterleavedFrame(channel=1, payload=b"\x80\xc9\x00\x01")
    assert bytes(frame) == b"$\x01\x00\x04\x80\xc9\x00\x01"
    assert InterleavedFrame.parse(bytes(frame)) == frame
    biggest = InterleavedFrame(channel=255, payload=bytes(65535))
    assert InterleavedFrame.parse(bytes(biggest)) == biggest


@pytest.mark.parametrize(
    "data", [b"", b"$\x00\x00", b"#\x00\x00\x00", b"$\x00\x00\x02x", FRAME + b"x"]
)
def test_interleaved_frame_parse_needs_exactly_one_frame(data: bytes) -> None:
    with pytest.raises(RtspError) as info:
        InterleavedFrame.parse(data)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "data",
    [OPTIONS[:-2], OPTIONS + b"X", OPTIONS + OPTIONS, DESCRIBE_OK, FRAME],
)
def test_request_parse_needs_exactly_one_request(data: bytes) -> None:
    with pytest.raises(RtspError) as info:
        Request.parse(data)
    assert info.value.status == 400


def test_response_parse_rejects_a_request() -> None:
    with pytest.raises(RtspError):
        Response.parse(OPTIONS)
    assert Response.parse(DESCRIBE_OK).body == SDP


# --------------------------------------------------------------------------- reader

STREAM = OPTIONS + FRAME + SETUP + b"$\x01\x00\x00" + DESCRIBE_OK + FRAME


def expected_stream() -> list[Event]:
    return [
        Request.parse(OPTIONS),
        InterleavedFrame(channel=0, payload=b"hello"),
        Request.parse(SETUP),
        InterleavedFrame(channel=1, payload=b""),
        Response.parse(DESCRIBE_OK),
        InterleavedFrame(channel=0, payload=b"hello"),
    ]


def test_reader_whole_stream() -> None:
    assert whole(STREAM) == expected_stream()


def test_reader_byte_at_a_time() -> None:
    assert bytewise(STREAM) == expected_stream()


def test_reader_keeps_trailing_data_for_the_next_event() -> None:
    reader = RtspReader()
    reader.feed(OPTIONS + SETUP[:20])
    assert reader.next_event() == Request.parse(OPTIONS)
    assert reader.next_event() is None
    reader.feed(SETUP[20:] + FRAME[:3])
    assert reader.next_event() == Request.parse(SETUP)
    assert reader.next_event() is None
    reader.feed(FRAME[3:])
    assert reader.next_event() == InterleavedFrame(channel=0, payload=b"hello")
    assert reader.next_event() is None


def test_reader_waits_for_the_body() -> None:
    reader = RtspReader()
    reader.feed(DESCRIBE_OK[:-1])
    assert reader.next_event() is None
    reader.feed(DESCRIBE_OK[-1:])
    event = reader.next_event()
    assert isinstance(event, Response) and event.body == SDP


def test_reader_tolerates_bare_lf_and_keepalive_blank_lines() -> None:
    bare = OPTIONS.replace(b"\r\n", b"\n")
    data = b"\r\n\r\n" + bare + b"\n\r\n" + OPTIONS + b"\r\n"
    for feed in (whole, bytewise):
        assert feed(data) == [Request.parse(OPTIONS), Request.parse(OPTIONS)]


def test_reader_unfolds_continuation_lines() -> None:
    data = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Long: a\r\n \t b\r\n\r\n"
    [event] = whole(data)
    assert isinstance(event, Request) and event.headers.get("X-Long") == "a b"


def test_reader_mixed_bare_cr_stays_an_error() -> None:
    assert error_status(b"\rOPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n") == 400
    assert error_status(b"OPTIONS * RTSP/1.0\r\nA: b\rc\r\n\r\n") == 400


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"OPTIONS\r\n\r\n", 400),
        (b"OPTIONS  * RTSP/1.0\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0 extra\r\n\r\n", 400),
        (b"OPT(IONS * RTSP/1.0\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nNo colon here\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nBad Name: x\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\n folded: first\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: x\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: -1\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: 1e3\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: 99999999999\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nX: a\x00b\r\n\r\n", 400),
        (b"OPTIONS * RTSP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 505),
        (b"RTSP/2.0 200 OK\r\n\r\n", 505),
        (b"RTSP/1.0 2000 OK\r\n\r\n", 400),
        (b"RTSP/1.0 OK\r\n\r\n", 400),
        (b"RTSP/1.0\r\n\r\n", 400),
        (b"RTSP/x 200 OK\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nContent-Length: 65537\r\n\r\n", 413),
    ],
)
def test_reader_errors(data: bytes, status: int) -> None:
    assert error_status(data) == status


def test_request_line_too_long_is_414() -> None:
    line = b"DESCRIBE rtsp://h/" + b"a" * 5000 + b" RTSP/1.0\r\n\r\n"
    assert error_status(line) == 414
    # Without a line end: the bound still holds for what is buffered.
    assert error_status(line[:4200]) == 414


def test_bounds_on_header_lines_count_and_size() -> None:
    long_header = b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 5000 + b"\r\n\r\n"
    assert error_status(long_header) == 413
    assert error_status(b"RTSP/1.0 200 " + b"K" * 5000 + b"\r\n\r\n") == 413
    many = b"OPTIONS * RTSP/1.0\r\n" + b"X: y\r\n" * 65 + b"\r\n"
    assert error_status(many) == 413
    assert whole(b"OPTIONS * RTSP/1.0\r\n" + b"X: y\r\n" * 64 + b"\r\n")
    big = b"OPTIONS * RTSP/1.0\r\n" + b"X: " + b"a" * 1000 + b"\r\n"
    assert error_status(big * 17 + b"\r\n") == 413
    assert error_status(big * 17) == 413  # incomplete head: buffered data is bounded too
    assert error_status(OPTIONS, max_line=10) == 414
    assert error_status(DESCRIBE_OK, max_body=len(SDP) - 1) == 413
    assert whole(DESCRIBE_OK, max_body=len(SDP))


def test_line_exactly_at_the_bound_is_accepted_in_any_chunking() -> None:
    request = b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 17 + b"\r\n\r\n"  # header line: 20 bytes
    assert whole(request, max_line=20) == bytewise(request, max_line=20)
    assert len(whole(request, max_line=20)) == 1
    assert error_status(request, max_line=19) == 413


def test_broken_reader_keeps_raising() -> None:
    reader = RtspReader()
    reader.feed(b"RTSP/9.0 200 OK\r\n\r\n" + OPTIONS)
    for _ in range(3):
        with pytest.raises(RtspError) as info:
            reader.next_event()
        assert info.value.status == 505
    with pytest.raises(RtspError) as info:
        reader.feed(OPTIONS)
    assert info.value.status == 505


def test_events_before_an_error_are_delivered() -> None:
    reader = RtspReader()
    reader.feed(OPTIONS + b"garbage\r\n\r\n")
    assert reader.next_event() == Request.parse(OPTIONS)
    with pytest.raises(RtspError):
        reader.next_event()


# --------------------------------------------------------------------------- captures

CAPTURES = [
    "rtsp/ffmpeg_describe_setup_tcp.rtsp",
    "rtsp/ffmpeg_describe_setup_udp.rtsp",
    "rtsp/gst_rtspsrc_tcp.rtsp",
    "rtsp/gst_rtspsrc_udp.rtsp",
    "rtsp/gst_server_responses.rtsp",
    "rtsp/gst_server_tcp_interleaved.rtsp",
]


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_parses_whole_bytewise_and_round_trips(name: str) -> None:
    data = load(name)
    assert len(data) < 20_000
    events = whole(data)
    assert events and bytewise(data) == events
    # Real peers' bytes come back out byte for byte.
    assert b"".join(bytes(event) for event in events) == data
    for event in events:
        assert type(event).parse(bytes(event)) == event
        if isinstance(event, Request | Response) and "CSeq" in event.headers:
            assert event.cseq is not None


def requests_of(name: str) -> list[Request]:
    return [event for event in whole(load(name)) if isinstance(event, Request)]


def test_ffmpeg_over_tcp() -> None:
    requests = requests_of("rtsp/ffmpeg_describe_setup_tcp.rtsp")
    assert [r.method for r in requests] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "TEARDOWN"]
    assert [r.cseq for r in requests] == [1, 2, 3, 4, 5]
    assert all(r.headers.get("User-Agent", "").startswith("Lavf") for r in requests)
    [spec] = parse_transport(requests[2].headers.get("Transport") or "")
    assert spec == TransportSpec(protocol="RTP/AVP/TCP", interleaved=(0, 1))
    assert spec.lower_transport == "TCP"
    assert parse_session(requests[3].headers.get("Session") or "") == ("12345678", None)


def test_ffmpeg_over_udp_says_rtp_avp_udp() -> None:
    requests = requests_of("rtsp/ffmpeg_describe_setup_udp.rtsp")
    assert [r.method for r in requests] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]
    setup = requests[2]
    assert (setup.headers.get("Transport") or "").startswith("RTP/AVP/UDP;")
    [spec] = parse_transport(setup.headers.get("Transport") or "")
    assert spec.protocol == "RTP/AVP" and spec.lower_transport == "UDP"
    assert spec.client_port is not None and spec.client_port[1] == spec.client_port[0] + 1
    # ffmpeg does not put CSeq first.
    assert setup.headers.items()[0][0] == "Transport"


def test_gstreamer_rtspsrc_over_tcp_sends_rtcp_interleaved() -> None:
    events = whole(load("rtsp/gst_rtspsrc_tcp.rtsp"))
    kinds = [e.method if isinstance(e, Request) else type(e).__name__ for e in events]
    assert kinds == [
        "OPTIONS",
        "DESCRIBE",
        "SETUP",
        "PLAY",
        "InterleavedFrame",
        "InterleavedFrame",
        "TEARDOWN",
    ]
    options = events[0]
    assert isinstance(options, Request)
    # RealMedia compatibility: a second User-Agent and RealPlayer headers in OPTIONS.
    agents = options.headers.get_all("User-Agent")
    assert agents[0].startswith("GStreamer/") and agents[1].startswith("RealMedia Player")
    assert "ClientChallenge" in options.headers
    for frame in events[4:6]:
        assert isinstance(frame, InterleavedFrame)
        assert frame.channel == 1
        assert frame.payload[0] >> 6 == 2 and frame.payload[1] == 201  # RTCP receiver report


def test_gstreamer_rtspsrc_over_udp() -> None:
    requests = requests_of("rtsp/gst_rtspsrc_udp.rtsp")
    assert [r.method for r in requests] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "TEARDOWN"]
    [spec] = parse_transport(requests[2].headers.get("Transport") or "")
    assert spec.protocol == "RTP/AVP" and spec.client_port is not None
    assert str(spec) == requests[2].headers.get("Transport")


def test_gstreamer_server_responses() -> None:
    responses = whole(load("rtsp/gst_server_responses.rtsp"))
    assert all(isinstance(r, Response) for r in responses)
    statuses = [r.status for r in responses if isinstance(r, Response)]
    assert statuses == [200] * 7 + [404, 454, 461, 400]
    options, describe, setup, play = responses[:4]
    assert isinstance(options, Response) and isinstance(describe, Response)
    assert isinstance(setup, Response) and isinstance(play, Response)
    assert {"OPTIONS", "SETUP", "PLAY", "TEARDOWN"} <= parse_public(
        options.headers.get("Public") or ""
    )
    assert describe.headers.get("Content-Type") == "application/sdp"
    assert describe.body.startswith(b"v=0\r\n")
    assert len(describe.body) == int(describe.headers.get("Content-Length") or 0)
    [spec] = parse_transport(setup.headers.get("Transport") or "")
    assert spec.mode == "PLAY" and spec.client_port == (40000, 40001)
    assert spec.server_port is not None and spec.ssrc is not None
    session_id, timeout = parse_session(setup.headers.get("Session") or "")
    assert timeout is None and len(session_id) == 16
    [info] = parse_rtp_info(play.headers.get("RTP-Info") or "")
    assert info["url"].endswith("/test/stream=0")
    assert int(info["seq"]) < 65536 and int(info["rtptime"]) < 2**32
    assert responses[9] == Response(
        status=461, reason="Unsupported transport", headers=responses[9].headers
    )


def test_gstreamer_server_over_tcp() -> None:
    events = whole(load("rtsp/gst_server_tcp_interleaved.rtsp"))
    responses = [e for e in events if isinstance(e, Response)]
    frames = [e for e in events if isinstance(e, InterleavedFrame)]
    assert events[:3] == responses and len(frames) == len(events) - 3 > 10
    assert all(f.channel == 0 and f.payload[0] >> 6 == 2 for f in frames)  # RTP version 2
    session_id, _ = parse_session(responses[1].headers.get("Session") or "")
    assert "+" in session_id or "." in session_id  # RFC 2326 "safe" characters, used for real
    [spec] = parse_transport(responses[1].headers.get("Transport") or "")
    assert spec.interleaved == (0, 1) and spec.lower_transport == "TCP"


def test_gstreamer_server_answers_rtsp2_with_rtsp2() -> None:
    # GStreamer echoes the request's RTSP/2.0; an RTSP/1.0 peer must refuse it.
    assert error_status(load("rtsp/gst_server_rtsp2_response.rtsp")) == 505


# --------------------------------------------------------------------------- Transport


def test_parse_transport_alternatives() -> None:
    specs = parse_transport(
        "RTP/AVP;multicast;destination=224.2.0.1;port=3456-3457;ttl=16,"
        " RTP/AVP/TCP;unicast;interleaved=4, RTP/AVP;unicast;client_port=5000"
    )
    assert specs == [
        TransportSpec(unicast=False, destination="224.2.0.1", port=(3456, 3457), ttl=16),
        TransportSpec(protocol="RTP/AVP/TCP", interleaved=(4, 5)),
        TransportSpec(client_port=(5000, 5001)),
    ]


def test_parse_transport_keeps_unknown_parameters_in_order() -> None:
    [spec] = parse_transport(
        'rtp/avp/udp ; unicast ; client_port = 5000-5001 ; append ; layers=2 ; x-foo="a,b"'
    )
    assert spec.protocol == "RTP/AVP"
    assert spec.client_port == (5000, 5001)
    assert spec.extra == (("append", None), ("layers", "2"), ("x-foo", '"a,b"'))
    assert str(spec) == 'RTP/AVP;unicast;client_port=5000-5001;append;layers=2;x-foo="a,b"'


def test_transport_str() -> None:
    spec = TransportSpec(
        protocol="RTP/AVP/UDP",
        destination="10.0.0.1",
        source="10.0.0.2",
        client_port=(5000, 5001),
        server_port=(6000, 6001),
        ssrc=0x1234,
        mode="PLAY",
    )
    assert spec.protocol == "RTP/AVP"
    assert str(spec) == (
        "RTP/AVP;unicast;destination=10.0.0.1;source=10.0.0.2;client_port=5000-5001;"
        'server_port=6000-6001;ssrc=00001234;mode="PLAY"'
    )
    assert parse_transport(str(spec)) == [spec]
    tcp = TransportSpec(protocol="RTP/AVP/TCP", interleaved=(0, 1))
    assert format_transport([spec, tcp]) == f"{spec},{tcp}"
    assert parse_transport(format_transport([spec, tcp])) == [spec, tcp]
    with pytest.raises(ValueError):
        format_transport([])


def test_unsupported_alternatives_are_skipped() -> None:
    specs = parse_transport("RTP/SAVP;unicast;client_port=1-2,RTP/AVP;unicast;client_port=3-4")
    assert specs == [TransportSpec(client_port=(3, 4))]


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("RAW/RAW/UDP;unicast;client_port=1-2", 461),
        ("RTP/SAVP;unicast", 461),
        ("RTP/AVP/SCTP", 461),
        ("", 400),
        (" , ", 400),
        ("RTP", 400),
        (";unicast", 400),
        ("RTP/AVP;client_port=abc", 400),
        ("RTP/AVP;client_port=70000", 400),
        ("RTP/AVP;client_port=65535", 400),
        ("RTP/AVP;client_port=1-2-3", 400),
        ("RTP/AVP;interleaved=255", 400),
        ("RTP/AVP;interleaved=0-256", 400),
        ("RTP/AVP;ttl=256", 400),
        ("RTP/AVP;ssrc=xyz", 400),
        ("RTP/AVP;ssrc=123456789", 400),
        ("RTP/AVP;mode=", 400),
        ('RTP/AVP;mode="PLAY', 400),
        ("RTP/AVP;unicast=yes", 400),
        ("RTP/AVP;client_port=1-2;client_port=3-4", 400),
        ("RTP/AVP;unicast;multicast", 400),
        ("RTP/AVP;bad key=1", 400),
        ('RTP/AVP;destination="10.0.0.1"', 400),
    ],
)
def test_parse_transport_errors(value: str, status: int) -> None:
    with pytest.raises(RtspError) as info:
        parse_transport(value)
    assert info.value.status == status


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"protocol": "RTP/SAVP"}, 461),
        ({"client_port": (1, 65536)}, 400),
        ({"interleaved": (0, 256)}, 400),
        ({"port": (1,)}, 400),
        ({"ttl": -1}, 400),
        ({"ssrc": 2**32}, 400),
        ({"mode": 'a"b'}, 400),
        ({"destination": "a;b"}, 400),
        ({"extra": (("client_port", "1-2"),)}, 400),
        ({"extra": (("x", "a;b"),)}, 400),
    ],
)
def test_transport_spec_is_validated(kwargs: dict[str, object], status: int) -> None:
    with pytest.raises(RtspError) as info:
        TransportSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.status == status


# --------------------------------------------------------------------------- other headers


def test_session() -> None:
    assert parse_session("abc123;timeout=60") == ("abc123", 60)
    assert parse_session(" abc123 ; Timeout = 60 ") == ("abc123", 60)
    assert parse_session("u+..yzh2M5gVIldP") == ("u+..yzh2M5gVIldP", None)
    assert parse_session("abc;x-other=1") == ("abc", None)
    assert format_session("abc123", 60) == "abc123;timeout=60"
    assert format_session("abc123") == "abc123"
    assert parse_session(format_session("abc123", 0)) == ("abc123", 0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        ";timeout=60",
        "a b",
        "abc;timeout=",
        "abc;timeout=x",
        "abc;timeout=1;timeout=2",
        "x" * 257,
        "abc;timeout=99999999999",
    ],
)
def test_session_errors(value: str) -> None:
    with pytest.raises(RtspError) as info:
        parse_session(value)
    assert info.value.status == 400


def test_format_session_validates() -> None:
    with pytest.raises(RtspError):
        format_session("a;b")
    with pytest.raises(RtspError):
        format_session("abc", -1)


def test_public() -> None:
    assert parse_public("OPTIONS, DESCRIBE,SETUP ,, TEARDOWN") == {
        "OPTIONS",
        "DESCRIBE",
        "SETUP",
        "TEARDOWN",
    }
    assert parse_public("") == frozenset()
    with pytest.raises(RtspError):
        parse_public("OPTIONS, BAD METHOD")


def test_rtp_info() -> None:
    assert parse_rtp_info(
        "url=rtsp://h/x/trackID=0;seq=1;rtptime=2, URL=rtsp://h/x/trackID=1;seq=3"
    ) == [
        {"url": "rtsp://h/x/trackID=0", "seq": "1", "rtptime": "2"},
        {"url": "rtsp://h/x/trackID=1", "seq": "3"},
    ]
    # A ";" or "," that does not start a parameter or entry belongs to the URL.
    assert parse_rtp_info("url=rtsp://h/a;b=c,d;seq=7;rtptime=8;ssrc=1A") == [
        {"url": "rtsp://h/a;b=c,d", "seq": "7", "rtptime": "8", "ssrc": "1A"}
    ]
    assert parse_rtp_info("url=rtsp://h/a;seq=1;x-ext=2") == [
        {"url": "rtsp://h/a", "seq": "1", "x-ext": "2"}
    ]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "seq=1",
        "url=",
        "url=x;seq=abc",
        "url=x;seq=99999999",
        "url=x;rtptime=-1",
        "url=x;seq=1;seq=2",
        "url=x;seq=1;junk",
    ],
)
def test_rtp_info_errors(value: str) -> None:
    with pytest.raises(RtspError) as info:
        parse_rtp_info(value)
    assert info.value.status == 400


# --------------------------------------------------------------------------- properties

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30
)
header_items = st.lists(
    st.tuples(tokens.filter(lambda n: n.lower() not in ("cseq", "content-length")), values),
    max_size=6,
)
uris = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f").filter(
        lambda c: ord(c) > 0x20
    ),
    min_size=1,
    max_size=30,
)
cseqs = st.integers(0, 9_999_999_999).map(lambda n: [("CSeq", str(n))])
versions = st.sampled_from(["RTSP/1.0", "RTSP/1.1"])

requests = st.builds(
    lambda method, uri, cseq, items, body, version: Request(
        method=method, uri=uri, headers=Headers(cseq + items), body=body, version=version
    ),
    tokens.filter(lambda m: not m.startswith("$")),
    uris,
    cseqs,
    header_items,
    st.binary(max_size=64),
    versions,
)
responses = st.builds(
    lambda status, reason, items, body: Response(
        status=status, reason=reason, headers=Headers(items), body=body
    ),
    st.integers(100, 999),
    values,
    header_items,
    st.binary(max_size=64),
)
frames = st.builds(
    lambda channel, payload: InterleavedFrame(channel=channel, payload=payload),
    st.integers(0, 255),
    st.binary(max_size=64),
)
events = st.one_of(requests, responses, frames)


@settings(max_examples=200)
@given(requests)
def test_request_round_trip_property(request: Request) -> None:
    assert Request.parse(bytes(request)) == request


@settings(max_examples=200)
@given(responses)
def test_response_round_trip_property(response: Response) -> None:
    assert Response.parse(bytes(response)) == response


@settings(max_examples=100)
@given(frames)
def test_frame_round_trip_property(frame: InterleavedFrame) -> None:
    assert InterleavedFrame.parse(bytes(frame)) == frame


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200)
@given(st.lists(events, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_streams_of_events_survive_any_chunking(stream: list[Event], cuts: list[int]) -> None:
    data = b"".join(bytes(event) for event in stream)
    assert read_all(RtspReader(), split_at(data, cuts)) == stream


@settings(max_examples=200)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    OPTIONS,
                    SETUP,
                    DESCRIBE_OK,
                    FRAME,
                    b"\r\n",
                    b"\n",
                    b"\r",
                    b"$",
                    b":",
                    b" ",
                    b"RTSP/1.0 ",
                    b"Content-Length: 5\r\n",
                    b"\x00",
                    b"\xff",
                ]
            ),
            max_size=12,
        ).map(b"".join),
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_reader_on_any_bytes_yields_events_or_rtsp_error(data: bytes, cuts: list[int]) -> None:
    def run(chunks: list[bytes]) -> tuple[list[Event], bool]:
        reader = RtspReader(max_line=64, max_headers=4, max_header_bytes=128, max_body=32)
        got: list[Event] = []
        try:
            for chunk in chunks:
                reader.feed(chunk)
                while (event := reader.next_event()) is not None:
                    got.append(event)
        except RtspError:
            return got, True
        return got, False

    whole_events, whole_failed = run([data])
    chunked_events, chunked_failed = run(split_at(data, cuts))
    assert whole_failed == chunked_failed
    assert whole_events == chunked_events
    for event in whole_events:
        assert type(event).parse(bytes(event)) == event


text = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(
            [
                "RTP/AVP",
                "RTP/AVP/TCP",
                ";",
                ",",
                "=",
                "-",
                '"',
                " ",
                "unicast",
                "client_port",
                "interleaved",
                "ttl",
                "ssrc",
                "mode",
                "timeout",
                "url",
                "seq",
                "0",
                "65535",
                "x",
            ]
        ),
        max_size=16,
    ).map("".join),
)


@settings(max_examples=200)
@given(text)
def test_header_parsers_on_any_text_return_or_raise_rtsp_error(value: str) -> None:
    for parse in (parse_transport, parse_session, parse_public, parse_rtp_info):
        try:
            parse(value)
        except RtspError as exc:
            assert 400 <= exc.status < 600


ports = st.tuples(st.integers(0, 65535), st.integers(0, 65535))
params = st.from_regex(r'"[^"\r\n]*"|[^;,"\s]+', fullmatch=True)
specs = st.builds(
    TransportSpec,
    protocol=st.sampled_from(["RTP/AVP", "RTP/AVP/TCP", "RTP/AVP/UDP"]),
    unicast=st.booleans(),
    destination=st.none() | st.from_regex(r'[^;,"\s]+', fullmatch=True),
    source=st.none() | st.from_regex(r'[^;,"\s]+', fullmatch=True),
    client_port=st.none() | ports,
    server_port=st.none() | ports,
    interleaved=st.none() | st.tuples(st.integers(0, 255), st.integers(0, 255)),
    port=st.none() | ports,
    ttl=st.none() | st.integers(0, 255),
    ssrc=st.none() | st.integers(0, 2**32 - 1),
    mode=st.none() | st.from_regex(r'[^;"\s]+', fullmatch=True),
    extra=st.lists(
        st.tuples(
            tokens.filter(
                lambda k: (
                    k.lower()
                    not in {
                        "unicast",
                        "multicast",
                        "destination",
                        "source",
                        "client_port",
                        "server_port",
                        "interleaved",
                        "port",
                        "ttl",
                        "ssrc",
                        "mode",
                    }
                )
            ),
            st.none() | params,
        ),
        max_size=3,
    ).map(tuple),
)


@settings(max_examples=200)
@given(st.lists(specs, min_size=1, max_size=3))
def test_transport_round_trip_property(alternatives: list[TransportSpec]) -> None:
    assert parse_transport(format_transport(alternatives)) == alternatives
