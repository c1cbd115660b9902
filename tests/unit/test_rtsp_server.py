"""The sans-IO RTSP server session: bytes in, events and bytes out."""

from __future__ import annotations

import pytest

from msm.sdk.errors import NotFound, RtspError, Unavailable
from msm.sdk.rtsp import InterleavedFrame, Response, RtspReader, TransportSpec
from msm.sdk.rtsp_server import (
    DescribeRequested,
    FrameReceived,
    PauseRequested,
    PlayRequested,
    Reply,
    RtspSession,
    ServerConnection,
    ServerEvent,
    SessionTable,
    SetupRequested,
    TeardownRequested,
    error_response,
    split_url,
    stream_url,
)
from msm.sdk.rtsp_state import State
from msm.sdk.sdp import SessionDescription

URL = "rtsp://stub.test:8554/cam"
SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=cam\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
       b"m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n"
       b"m=audio 5002 RTP/AVP 97\r\na=rtpmap:97 PCMA/8000\r\na=control:streamid=1\r\n")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(method: str, uri: str = URL, cseq: int | None = 1, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {uri} RTSP/1.0"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse(data: bytes) -> Response:
    return Response.parse(data)


def make(clock: FakeClock | None = None) -> tuple[ServerConnection[RtspSession], SessionTable[RtspSession]]:
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=clock or FakeClock())
    return ServerConnection(table, server_name="test/1", date=lambda: "today"), table


def feed(conn: ServerConnection[RtspSession], data: bytes) -> ServerEvent[RtspSession] | None:
    conn.receive_data(data)
    return conn.next_event()


def reply(event: object) -> Response:
    assert isinstance(event, Reply), event
    return parse(event.data)


def setup(conn: ServerConnection[RtspSession], track: int = 0, cseq: int = 2, tracks: int = 2,
          transport: str = "RTP/AVP;unicast;client_port=5000-5001", **headers: str) -> Response:
    event = feed(conn, request("SETUP", f"{URL}/track{track}", cseq, Transport=transport, **headers))
    assert isinstance(event, SetupRequested), event
    plan = conn.plan_setup(event, "s1", tracks)
    session = event.session or RtspSession(conn.table.new_id(), "s1")
    return parse(conn.respond_setup(session, plan, plan.transport))


def session_id(response: Response) -> str:
    return (response.headers.get("Session") or "").split(";")[0]


# -- answered by the connection itself -------------------------------------------------------


def test_options_echoes_cseq_and_lists_methods() -> None:
    conn, _ = make()
    response = reply(feed(conn, request("OPTIONS", "*", 7)))
    assert response.status == 200 and response.cseq == 7
    assert "DESCRIBE" in (response.headers.get("Public") or "")
    assert response.headers.get("Server") == "test/1" and response.headers.get("Date") == "today"
    assert response.headers.get("Session") is None


def test_get_and_set_parameter() -> None:
    conn, _ = make()
    assert reply(feed(conn, request("GET_PARAMETER", URL, 1))).status == 200
    assert reply(feed(conn, request("SET_PARAMETER", URL, 2, body=b"volume: 3\r\n"))).status == 451
    assert reply(feed(conn, request("SET_PARAMETER", URL, 3))).status == 200


@pytest.mark.parametrize(("method", "status"), [("RECORD", 405), ("ANNOUNCE", 405), ("FROBNICATE", 501)])
def test_unsupported_and_unknown_methods(method: str, status: int) -> None:
    conn, _ = make()
    response = reply(feed(conn, request(method, URL, 4)))
    assert response.status == status and response.cseq == 4
    if status == 405:
        assert "SETUP" in (response.headers.get("Allow") or "")


def test_require_is_551_with_unsupported() -> None:
    conn, _ = make()
    response = reply(feed(conn, request("OPTIONS", URL, 1, Require="com.example.magic")))
    assert response.status == 551 and response.headers.get("Unsupported") == "com.example.magic"


def test_missing_cseq_is_400_and_the_connection_survives() -> None:
    conn, _ = make()
    response = reply(feed(conn, request("OPTIONS", "*", None)))
    assert response.status == 400 and response.cseq == 0
    assert reply(feed(conn, request("OPTIONS", "*", 2))).status == 200


@pytest.mark.parametrize("method", ["PLAY", "PAUSE", "TEARDOWN"])
def test_session_required_and_unknown_is_454(method: str) -> None:
    conn, _ = make()
    assert reply(feed(conn, request(method, URL, 1))).status == 454
    assert reply(feed(conn, request(method, URL, 2, Session="doesnotexist"))).status == 454


def test_garbage_is_400_and_close() -> None:
    conn, _ = make()
    event = feed(conn, b"\x16\x03\x01 this is not RTSP at all\r\n\r\n")
    assert isinstance(event, Reply) and event.close
    assert parse(event.data).status == 400 and parse(event.data).headers.get("Connection") == "close"
    assert conn.closed and feed(conn, request("OPTIONS", "*", 1)) is None


def test_a_response_from_a_viewer_is_400_and_close() -> None:
    conn, _ = make()
    event = feed(conn, b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")
    assert isinstance(event, Reply) and event.close and parse(event.data).status == 400


def test_bad_session_header_is_400_and_the_connection_survives() -> None:
    conn, _ = make()
    assert reply(feed(conn, request("PLAY", URL, 1, Session='"quoted"'))).status == 400
    assert reply(feed(conn, request("OPTIONS", "*", 2))).status == 200


# -- DESCRIBE ----------------------------------------------------------------------------------


def test_describe_event_and_answer() -> None:
    conn, _ = make()
    event = feed(conn, request("DESCRIBE", URL, 3, Accept="application/sdp"))
    assert isinstance(event, DescribeRequested) and event.stream == "cam"
    assert conn.next_event() is None    # nothing more until it is answered
    response = parse(conn.respond_describe(SessionDescription.parse(SDP), URL, "127.0.0.1"))
    assert response.status == 200 and response.cseq == 3
    assert response.headers.get("Content-Base") == URL + "/"
    assert b"a=control:track0" in response.body and b"a=control:track1" in response.body
    assert b"10.0.0.1" not in response.body.split(b"o=")[1].split(b"\r\n", 1)[1]


def test_describe_refusals() -> None:
    conn, _ = make()
    assert reply(feed(conn, request("DESCRIBE", URL, 1, Accept="text/html"))).status == 406
    assert reply(feed(conn, request("DESCRIBE", URL + "/track1", 2))).status == 404


def test_a_failed_describe_answers_the_error_status() -> None:
    conn, _ = make()
    assert isinstance(feed(conn, request("DESCRIBE", URL, 5)), DescribeRequested)
    response = parse(conn.fail(Unavailable("upstream unreachable")))
    assert response.status == 503 and response.cseq == 5 and response.body == b"upstream unreachable\r\n"


# -- SETUP, PLAY, PAUSE, TEARDOWN --------------------------------------------------------------


def test_udp_session_lifecycle() -> None:
    conn, table = make()
    response = setup(conn)
    assert response.status == 200 and response.cseq == 2
    assert "client_port=5000-5001" in (response.headers.get("Transport") or "")
    sid = session_id(response)
    assert response.headers.get("Session") == f"{sid};timeout=30"
    session = table.sessions[sid]
    assert session.state is State.READY and session.owner is conn and sid in conn.sessions

    play = feed(conn, request("PLAY", URL, 3, Session=sid))
    assert isinstance(play, PlayRequested) and play.session is session
    answer = parse(conn.respond(headers=[("Range", "npt=now-")]))
    assert answer.status == 200 and session_id(answer) == sid and session.state is State.PLAYING

    pause = feed(conn, request("PAUSE", URL, 4, Session=sid))
    assert isinstance(pause, PauseRequested)
    assert parse(conn.respond()).status == 200 and session.state is State.READY

    teardown = feed(conn, request("TEARDOWN", URL, 5, Session=sid))
    assert isinstance(teardown, TeardownRequested) and teardown.session is session
    done = parse(conn.respond())
    assert done.status == 200 and done.headers.get("Session") is None


def test_tcp_setup_allocates_free_channels_and_routes_frames() -> None:
    conn, _ = make()
    first = setup(conn, 0, transport="RTP/AVP/TCP;unicast;interleaved=0-1")
    assert "interleaved=0-1" in (first.headers.get("Transport") or "")
    sid = session_id(first)
    # The second track asks for channels already in use: it gets the next free pair.
    second = setup(conn, 1, 3, transport="RTP/AVP/TCP;unicast;interleaved=0-1", Session=sid)
    assert "interleaved=2-3" in (second.headers.get("Transport") or "")
    event = feed(conn, bytes(InterleavedFrame(channel=3, payload=b"rtcp")))
    assert isinstance(event, FrameReceived) and event.track == 1 and event.rtcp and event.payload == b"rtcp"
    event = feed(conn, bytes(InterleavedFrame(channel=0, payload=b"rtp")))
    assert isinstance(event, FrameReceived) and event.track == 0 and not event.rtcp
    # A frame on a channel nothing was set up on is dropped; the next request still parses.
    event = feed(conn, bytes(InterleavedFrame(channel=9, payload=b"x")) + request("OPTIONS", "*", 4))
    assert reply(event).status == 200


def test_released_session_stops_routing_frames() -> None:
    conn, table = make()
    sid = session_id(setup(conn, 0, transport="RTP/AVP/TCP;unicast;interleaved=0-1"))
    conn.release(table.sessions.pop(sid))
    assert conn.channels == {} and sid not in conn.sessions
    assert feed(conn, bytes(InterleavedFrame(channel=0, payload=b"rtp"))) is None


@pytest.mark.parametrize("transport", ["RTP/AVP/TCP;multicast;interleaved=0-1", "RAW/RAW/UDP;unicast", ""])
def test_unsupported_transport_is_461(transport: str) -> None:
    conn, _ = make()
    headers = {"Transport": transport} if transport else {}
    event = feed(conn, request("SETUP", URL + "/track0", 2, **headers))
    assert isinstance(event, SetupRequested)
    with pytest.raises(Exception) as info:
        conn.plan_setup(event, "s1", 2)
    assert parse(conn.fail(info.value)).status == 461


def test_multicast_setup_is_planned_and_the_route_decides() -> None:
    """RTP/AVP;multicast is planned (the control plane refuses it, 461, for a route without multicast);
    the group is the mesh's: a destination the client names is not kept. Over RTSPS: 461."""
    conn, _ = make()
    event = feed(conn, request("SETUP", URL + "/track0", 2,
                               Transport="RTP/AVP;multicast;destination=224.1.2.3;port=5000-5001"))
    assert isinstance(event, SetupRequested)
    plan = conn.plan_setup(event, "s1", 2)
    assert not plan.transport.unicast and plan.transport.destination is None
    secure = ServerConnection(SessionTable(timeout=30, clock=FakeClock()), server_name="test/1",
                              date=lambda: "today", secure=True)
    event = feed(secure, request("SETUP", URL + "/track0", 2, Transport="RTP/AVP;multicast"))
    assert isinstance(event, SetupRequested)
    with pytest.raises(Exception) as info:
        secure.plan_setup(event, "s1", 2)
    assert parse(secure.fail(info.value)).status == 461


def test_setup_refusals_404_and_459() -> None:
    conn, _ = make()
    event = feed(conn, request("SETUP", URL + "/track9", 2, Transport="RTP/AVP;unicast;client_port=5000-5001"))
    assert isinstance(event, SetupRequested)
    with pytest.raises(NotFound):
        conn.plan_setup(event, "s1", 2)
    assert parse(conn.fail(NotFound("no track 9"))).status == 404
    # A track-less URL of a two-track stream.
    event = feed(conn, request("SETUP", URL, 3, Transport="RTP/AVP;unicast;client_port=5000-5001"))
    assert isinstance(event, SetupRequested) and event.track is None
    with pytest.raises(Exception) as info:
        conn.plan_setup(event, "s1", 2)
    assert parse(conn.fail(info.value)).status == 459
    # A session of one stream cannot aggregate another.
    sid = session_id(setup(conn, 0, 4))
    event = feed(conn, request("SETUP", URL + "/track1", 5, Session=sid,
                               Transport="RTP/AVP;unicast;client_port=5002-5003"))
    assert isinstance(event, SetupRequested)
    with pytest.raises(Exception) as info:
        conn.plan_setup(event, "another", 2)
    assert parse(conn.fail(info.value)).status == 459


def test_play_before_setup_is_455_and_pause_in_init_too() -> None:
    conn, table = make()
    session = RtspSession("abc", "s1")
    table.sessions["abc"] = session
    assert reply(feed(conn, request("PLAY", URL, 1, Session="abc"))).status == 455
    assert reply(feed(conn, request("PAUSE", URL, 2, Session="abc"))).status == 455
    assert session.state is State.INIT


def test_a_failed_play_keeps_the_state() -> None:
    conn, table = make()
    sid = session_id(setup(conn))
    assert isinstance(feed(conn, request("PLAY", URL, 3, Session=sid)), PlayRequested)
    assert parse(conn.fail(Unavailable("proxy gone"))).status == 503
    assert table.sessions[sid].state is State.READY


def test_session_mismatch_setup_on_another_connections_session_is_454() -> None:
    conn, table = make()
    sid = session_id(setup(conn))
    other: ServerConnection[RtspSession] = ServerConnection(table)
    response = reply(feed(other, request("SETUP", URL + "/track1", 1, Session=sid,
                                         Transport="RTP/AVP;unicast;client_port=5002-5003")))
    assert response.status == 454
    # ...but other requests may name it (players reconnect for keep-alives).
    assert isinstance(feed(other, request("PLAY", URL, 2, Session=sid)), PlayRequested)


def test_requests_and_frames_touch_the_session() -> None:
    clock = FakeClock()
    conn, table = make(clock)
    sid = session_id(setup(conn, transport="RTP/AVP/TCP;unicast;interleaved=0-1"))
    clock.now += 40
    assert [s.session_id for s in table.expired()] == [sid]
    assert table.expired(["s1"]) == []      # an upstream outage pauses the timeout
    feed(conn, bytes(InterleavedFrame(channel=1, payload=b"rr")))
    assert table.expired() == []
    clock.now += 40
    reply(feed(conn, request("GET_PARAMETER", URL, 9, Session=sid)))
    assert table.expired() == []


# -- framing -----------------------------------------------------------------------------------


def _drain(conn: ServerConnection[RtspSession], data: bytes, *, chunk: int) -> list[int]:
    """Feed ``data`` ``chunk`` bytes at a time, answering DESCRIBEs 503; the CSeqs answered."""
    answered: list[int] = []
    reader = RtspReader()
    for start in range(0, len(data), chunk):
        conn.receive_data(data[start:start + chunk])
        while (event := conn.next_event()) is not None:
            out = event.data if isinstance(event, Reply) else conn.fail(Unavailable("down"))
            reader.feed(out)
            while (response := reader.next_event()) is not None:
                assert isinstance(response, Response) and response.cseq is not None
                answered.append(response.cseq)
    return answered


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_pipelined_requests_are_answered_in_order(chunk: int) -> None:
    conn, _ = make()
    data = (request("OPTIONS", "*", 1) + request("DESCRIBE", URL, 2) + request("OPTIONS", "*", 3)
            + request("DESCRIBE", URL, 4) + b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\n")   # trailing partial
    assert _drain(conn, data, chunk=chunk) == [1, 2, 3, 4]
    assert reply(feed(conn, b"\r\n")).cseq == 5


def test_pending_request_holds_back_the_next_one() -> None:
    conn, _ = make()
    conn.receive_data(request("DESCRIBE", URL, 1) + request("OPTIONS", "*", 2))
    assert isinstance(conn.next_event(), DescribeRequested)
    assert conn.next_event() is None and conn.pending is not None
    assert parse(conn.fail(Unavailable("down"))).cseq == 1
    assert reply(conn.next_event()).cseq == 2
    with pytest.raises(RuntimeError):
        conn.respond()


# -- the error boundary ------------------------------------------------------------------------


def test_error_response_maps_the_tree() -> None:
    from msm.sdk.errors import OptionNotSupported, RtspError

    refused = error_response(OptionNotSupported("nope", headers={"Unsupported": "x"}), [("CSeq", "1")])
    assert refused.status == 551 and refused.headers.get("Unsupported") == "x" and refused.body == b"nope\r\n"
    assert error_response(RtspError("bad", status=414)).status == 414
    bug = error_response(ValueError("secret detail"))
    assert bug.status == 500 and bug.body == b""


def test_split_url() -> None:
    assert split_url("rtsp://h/cam1/track1") == ("cam1", 1)
    assert split_url("rtsp://h/cam1") == ("cam1", None)
    assert split_url("rtsp://h/a/b/track0") == ("a/b", 0)
    assert split_url("rtsp://h/track3") == ("track3", None)
    assert split_url("rtsp://h/cam1?x=1/track2") == ("cam1", 2)
    assert split_url("rtsp://h/cam1?x=track2") == ("cam1", None)
    assert split_url("rtsp://[fe80::1%eth0]:8554/cam1") == ("cam1", None)


@pytest.mark.parametrize("url", ["rtsp://[::1/cam", "rtsp://[zz]/cam", "rtsp://[::1]x/cam", "rtsp://[v1.x]/cam",
                                 "rtsp://[::1]]/cam", "rtsp://[::1]:abc/cam", "rtsp://a]b/cam", "rtsp://h:99999/cam"])
def test_malformed_hosts_and_ports_are_400(url: str) -> None:
    with pytest.raises(RtspError) as caught:
        split_url(url)
    assert caught.value.status == 400
    conn, _ = make()
    assert reply(feed(conn, request("DESCRIBE", url))).status == 400


def test_stream_url_of_a_track_url_drops_the_track_and_userinfo() -> None:
    assert stream_url("rtsp://u:p@h:8554/cam/track0") == "rtsp://h:8554/cam"
    assert stream_url("rtsp://h/a/b/track1/") == "rtsp://h/a/b"
    assert stream_url("rtsp://h/cam") == "rtsp://h/cam"
    assert stream_url("rtsp://h/cam?x=1/track0") == "rtsp://h/cam?x=1"


def test_transport_answer_round_trips() -> None:
    conn, _ = make()
    response = setup(conn, transport="RTP/AVP/TCP;unicast")
    assert TransportSpec(protocol="RTP/AVP/TCP", interleaved=(0, 1)) == TransportSpec(
        protocol="RTP/AVP/TCP", interleaved=(0, 1))
    assert "interleaved=0-1" in (response.headers.get("Transport") or "")


def test_per_track_requests_of_a_session_with_several_tracks() -> None:
    conn, _ = make()
    first = setup(conn, track=0)
    sid = session_id(first)
    setup(conn, track=1, cseq=3, transport="RTP/AVP;unicast;client_port=5002-5003", Session=sid)
    for cseq, method in enumerate(("PLAY", "PAUSE"), start=4):
        assert reply(feed(conn, request(method, f"{URL}/track0", cseq, Session=sid))).status == 460
    assert reply(feed(conn, request("TEARDOWN", f"{URL}/track7", 6, Session=sid))).status == 404
    event = feed(conn, request("TEARDOWN", f"{URL}/track1", 7, Session=sid))
    assert isinstance(event, TeardownRequested) and event.track == 1
    conn.release_track(event.session, 1)
    assert parse(conn.respond()).status == 200
    # One track left: its URL is the session's.
    event = feed(conn, request("PLAY", f"{URL}/track0", 8, Session=sid))
    assert isinstance(event, PlayRequested)
