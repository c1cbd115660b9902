"""Sessions answer to their owner; per-connection bounds; viewer authentication; RTSPS transports."""

from __future__ import annotations

from collections import Counter

import pytest

from msm.sdk.errors import Unauthorized
from msm.sdk.rtsp import RtspReader
from msm.sdk.rtsp_server import (
    ClientIdentity,
    PauseRequested,
    PlayRequested,
    RtspSession,
    ServerConnection,
    SessionTable,
    SetupRequested,
    TeardownRequested,
    session_tag,
    strip_userinfo,
)
from tests.unit.test_rtsp_server import URL, FakeClock, feed, reply, request, session_id, setup


def connection(table: SessionTable[RtspSession], host: str, **kwargs: object) -> ServerConnection[RtspSession]:
    return ServerConnection(table, server_name="test/1", date=lambda: "today", peer_host=host,
                            **kwargs)  # type: ignore[arg-type]


def test_session_ids_are_96_bit_and_logged_as_tags() -> None:
    ids = {SessionTable.new_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) >= 16 for i in ids)
    some = next(iter(ids))
    assert some not in session_tag(some) and session_tag(some).startswith(some[:4])


@pytest.mark.parametrize("method", ["PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER"])
def test_another_clients_request_on_a_session_is_454(method: str) -> None:
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    owner, thief = connection(table, "10.0.0.1"), connection(table, "10.0.0.2")
    sid = session_id(setup(owner))
    response = reply(feed(thief, request(method, URL, 3, Session=sid)))
    assert response.status == 454
    assert sid not in response.body.decode(), "the refusal does not echo the session"
    # The owner's other connection (same address) may: RFC 2326 sessions outlive connections.
    same_host = connection(table, "10.0.0.1")
    event = feed(same_host, request(method, URL, 4, Session=sid))
    assert isinstance(event, (PlayRequested, PauseRequested, TeardownRequested)) or \
        reply(event).status == 200


def test_with_auth_the_user_is_part_of_the_identity() -> None:
    class Users:
        def challenges(self, *, stale: bool = False) -> list[str]:
            return ['Digest realm="msm", nonce="n", algorithm=SHA-256', 'Digest realm="msm", nonce="n"']

        def check(self, method: str, uri: str, authorization: str | None) -> str:
            if authorization not in ("alice", "bob"):
                raise Unauthorized("bad credentials")
            return authorization

    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    alice = connection(table, "10.0.0.1", auth=Users())
    assert reply(feed(alice, request("OPTIONS", "*", 1))).status == 200   # OPTIONS needs none
    refused = reply(feed(alice, request("DESCRIBE", URL, 2)))
    assert refused.status == 401
    assert refused.headers.get_all("WWW-Authenticate") == Users().challenges()
    sid = session_id(setup(alice, Authorization="alice"))
    bob = connection(table, "10.0.0.1", auth=Users())
    assert reply(feed(bob, request("PLAY", URL, 3, Session=sid, Authorization="bob"))).status == 454
    assert isinstance(feed(bob, request("PLAY", URL, 4, Session=sid, Authorization="alice")), PlayRequested)


def test_sessions_per_connection_are_bounded_and_counted() -> None:
    hits: Counter[str] = Counter()
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    conn = connection(table, "10.0.0.1", max_sessions=3, limit_hits=hits)
    for cseq in range(3):
        assert setup(conn, cseq=cseq + 10).status == 200
    refused = reply(feed(conn, request("SETUP", f"{URL}/track0", 20,
                                       Transport="RTP/AVP;unicast;client_port=5000-5001")))
    assert refused.status == 453 and hits["sessions_per_connection"] == 1
    # A track of an existing session is no new session.
    sid = next(iter(conn.sessions))
    event = feed(conn, request("SETUP", f"{URL}/track1", 21, Session=sid,
                               Transport="RTP/AVP;unicast;client_port=5002-5003"))
    assert isinstance(event, SetupRequested)


def test_rtsps_connections_refuse_udp_transport() -> None:
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    conn = connection(table, "10.0.0.1", secure=True)
    event = feed(conn, request("SETUP", f"{URL}/track0", 1, Transport="RTP/AVP;unicast;client_port=5000-5001"))
    assert isinstance(event, SetupRequested)
    with pytest.raises(Exception) as raised:
        conn.plan_setup(event, "s1", 2)
    assert getattr(raised.value, "status", None) == 461
    assert b"461" in conn.fail(raised.value)
    assert setup(conn, cseq=2, transport="RTP/AVP;unicast;client_port=5000-5001,"
                 "RTP/AVP/TCP;unicast;interleaved=0-1").status == 200


def test_a_partial_request_is_visible_for_the_header_deadline() -> None:
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    conn = connection(table, "10.0.0.1")
    assert not conn.partial
    assert feed(conn, b"OPTIONS * RTSP/1.0\r\nCSe") is None
    assert conn.partial
    assert reply(feed(conn, b"q: 1\r\n\r\n")).status == 200 and not conn.partial
    reader = RtspReader()
    reader.feed(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 5\r\n\r\nab")
    assert reader.next_event() is None and reader.partial   # a body still on its way


def test_strip_userinfo() -> None:
    assert strip_userinfo("rtsp://user:secret@host:554/cam") == "rtsp://host:554/cam"
    assert strip_userinfo("rtsp://host/cam") == "rtsp://host/cam"
    assert ClientIdentity("h") == ClientIdentity("h", "")


def test_a_released_session_is_adopted_by_its_clients_next_setup_only() -> None:
    table: SessionTable[RtspSession] = SessionTable(timeout=30, clock=FakeClock())
    first = connection(table, "10.0.0.1")
    sid = session_id(setup(first))
    session = table.sessions[sid]
    first.release(session)               # its connection closed; the session lives on
    assert session.owner is None and sid in table.sessions
    thief = connection(table, "10.0.0.2")
    assert reply(feed(thief, request("SETUP", f"{URL}/track1", 3, Session=sid,
                                     Transport="RTP/AVP;unicast;client_port=5002-5003"))).status == 454
    second = connection(table, "10.0.0.1")
    setup(second, track=1, cseq=4, transport="RTP/AVP;unicast;client_port=5002-5003", Session=sid)
    assert session.owner is second and sid in second.sessions
