"""RTSP behaviour players and proxies rely on, checked against msm AND GStreamer's RTSP server.

Each test states the RFC 2326 section it checks and what GStreamer's server
(gst-rtsp-server 1.22, ``msm/gst_source.py``) does; the ``target`` fixture runs it
against both, so a difference between them is visible as a failure on one side.
GStreamer names its tracks ``stream=N``, msm ``trackN``: each target says its own.

The client is raw sockets (what is sent and answered is exactly what the test
says); a player (GStreamer's rtspsrc) is used where the behaviour is what a player
does with the answer (RTP-Info). One GStreamer server and one mesh serve the whole
module (the mesh also has a route to a port where nothing listens, for 503).
live555 is not used: Debian 12 has no package of it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from msm.sdk.rtp import ReceiverReport, ReportBlock, SdesChunk, SourceDescription, serialize_rtcp
from msm.sdk.rtsp import Response, RtspReader, parse_transport
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import GstRtspServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

# The session timeout both servers announce here: short, so that liveness is tested in seconds.
SESSION_TIMEOUT = 2


@dataclass
class Target:
    name: str            # "msm" or "gst"
    host: str
    port: int
    path: str            # the stream's path, e.g. "/cam"
    track_prefix: str    # "track" (msm) or "stream=" (GStreamer)
    gst: GstRtspServer
    mesh: LocalMesh | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    def track(self, index: int, base: str | None = None) -> str:
        return f"{(base or self.url).rstrip('/')}/{self.track_prefix}{index}"


class Client:
    """One RTSP connection driven by hand: requests as written, responses parsed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = RtspReader(max_body=1 << 20)
        self.cseq = 0

    @classmethod
    async def open(cls, target: Target) -> Client:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def request(self, method: str, url: str, **headers: str) -> Response:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            while True:
                event = self.parser.next_event()
                if isinstance(event, Response):
                    return event
                data = await self.reader.read(65536)
                assert data, f"connection closed without answering {method}"
                self.parser.feed(data)

    def close(self) -> None:
        self.writer.close()


class UdpPair:
    """A player's RTP/RTCP port pair."""

    def __init__(self) -> None:
        for _ in range(50):
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind(("127.0.0.1", 0))
            port = rtp.getsockname()[1]
            if port % 2:
                rtp.close()
                continue
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind(("127.0.0.1", port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            self.rtp, self.rtcp, self.port = rtp, rtcp, port
            self.server: tuple[str, int] = ("127.0.0.1", 0)
            for sock in (rtp, rtcp):
                sock.setblocking(False)
            return
        raise RuntimeError("no free even/odd UDP port pair")

    @property
    def transport(self) -> str:
        return f"RTP/AVP;unicast;client_port={self.port}-{self.port + 1}"

    async def packet(self, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(self.rtp, 65536)

    def drain(self) -> int:
        count = 0
        while True:
            try:
                self.rtp.recv(65536)
                count += 1
            except BlockingIOError:
                return count

    def send_rtcp(self, data: bytes) -> None:
        """Send RTCP from our RTCP port to the server's (set by :func:`play_track0`)."""
        self.rtcp.sendto(data, self.server)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def rtp_info(value: str) -> dict[str, dict[str, str]]:
    """``RTP-Info`` as ``{url: {"seq": .., "rtptime": ..}}``."""
    tracks: dict[str, dict[str, str]] = {}
    for item in value.split(","):
        fields = dict(part.strip().split("=", 1) for part in item.split(";") if "=" in part)
        tracks[fields.pop("url")] = fields
    return tracks


def session_id(response: Response) -> str:
    return (response.headers.get("Session") or "").split(";")[0].strip()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers() -> AsyncIterator[tuple[GstRtspServer, LocalMesh]]:
    _require_peers()
    gst = await GstRtspServer.start(path="/test", extra_args=["--session-timeout", str(SESSION_TIMEOUT)])
    dead = Route(name="dead", url=f"rtsp://127.0.0.1:{free_port()}/nothing")   # nothing listens there
    mesh = LocalMesh(mesh_config(routes=[Route(name="cam", url=gst.url), dead], session_timeout=SESSION_TIMEOUT))
    try:
        await mesh.start()
        yield gst, mesh
    finally:
        await mesh.stop()
        await gst.stop()


def make_target(name: str, servers: tuple[GstRtspServer, LocalMesh]) -> Target:
    gst, mesh = servers
    if name == "gst":
        return Target("gst", "127.0.0.1", gst.port, "/test", "stream=", gst)
    assert mesh.stub is not None
    return Target("msm", "127.0.0.1", mesh.stub.port, "/cam", "track", gst, mesh)


@pytest.fixture(params=["msm", "gst"])
def target(request: pytest.FixtureRequest, servers: tuple[GstRtspServer, LocalMesh]) -> Target:
    return make_target(request.param, servers)


@pytest.fixture
def both(servers: tuple[GstRtspServer, LocalMesh]) -> tuple[Target, Target]:
    """msm and GStreamer together, for behaviours that take seconds: checked side by side."""
    return make_target("msm", servers), make_target("gst", servers)


async def play_track0(target: Target, client: Client, pair: UdpPair) -> tuple[str, Response]:
    """DESCRIBE, SETUP track 0 over UDP to ``pair``, PLAY: the session and the PLAY reply."""
    described = await client.request("DESCRIBE", target.url, Accept="application/sdp")
    assert described.status == 200
    base = described.headers.get("Content-Base") or target.url
    setup = await client.request("SETUP", target.track(0, base), Transport=pair.transport)
    assert setup.status == 200, setup
    session = session_id(setup)
    (spec,) = parse_transport(setup.headers.get("Transport") or "")
    assert spec.server_port is not None, setup
    pair.server = (spec.source or target.host, spec.server_port[1])
    played = await client.request("PLAY", base, Session=session, Range="npt=0-")
    assert played.status == 200, played
    return session, played


def receiver_report(media_ssrc: int, highest_seq: int) -> bytes:
    """A player's compound receiver report (RR and SDES CNAME, RFC 3550 6.1)."""
    me = 0x5EED1234
    return serialize_rtcp([
        ReceiverReport(ssrc=me, reports=(ReportBlock(ssrc=media_ssrc, highest_sequence=highest_seq),)),
        SourceDescription(chunks=(SdesChunk(ssrc=me, items=((1, b"player@127.0.0.1"),)),)),
    ])


# -- RTP-Info (RFC 2326 12.33) ----------------------------------------------------------------------

async def test_play_reply_rtp_info_names_the_first_packet(target: Target) -> None:
    """RFC 2326 12.33: a PLAY reply's RTP-Info gives, per track, the URL, the sequence number
    of the first packet sent and the RTP time of the play point. GStreamer sends
    ``url=...stream=0;seq=N;rtptime=T`` for each track; its first packet has seq N.
    msm: the proxy's spliced sequence and timestamp (the first packet it forwards to this
    viewer is at or just after them)."""
    client, pair = await Client.open(target), UdpPair()
    try:
        _session, played = await play_track0(target, client, pair)
        header = played.headers.get("RTP-Info")
        assert header, f"{target.name}: PLAY reply without RTP-Info: {played}"
        info = rtp_info(header)
        (url, fields), = info.items()
        assert re.search(rf"/{re.escape(target.track_prefix)}0$", url), url
        first = await pair.packet()
        seq, ts = struct.unpack_from("!HI", first, 2)
        # The first packet is the one RTP-Info names, or (a live stream shared with other
        # viewers) one of the next few; its timestamp at most a second later.
        assert (seq - int(fields["seq"])) % 65536 < 50, (seq, fields)
        assert (ts - int(fields["rtptime"])) % (1 << 32) < 90000, (ts, fields)
    finally:
        client.close()
        pair.close()


# -- RTCP keeps a session alive (RFC 2326 12.37) ----------------------------------------------------

# GStreamer reaps a session only 5 s after its timeout (RTSPSession:extra-timeout, 5 by default).
GST_EXTRA_TIMEOUT = 5


async def _rtcp_only_viewer(target: Target) -> tuple[bool, int | None]:
    """A UDP viewer that sends nothing but receiver reports for longer than its session
    could live without them: whether its session is still there (a request naming it gets
    200); then (msm only: GStreamer's extra 5 s would double the test) whether it expires
    once the reports stop (454 after the timeout)."""
    client, pair = await Client.open(target), UdpPair()
    grace = GST_EXTRA_TIMEOUT if target.name == "gst" else 0
    try:
        session, _ = await play_track0(target, client, pair)
        loop = asyncio.get_running_loop()
        end = loop.time() + SESSION_TIMEOUT + grace + 2.0
        while loop.time() < end:
            packet = await pair.packet()
            seq, _ts, ssrc = struct.unpack_from("!HII", packet, 2)
            pair.send_rtcp(receiver_report(ssrc, seq))
            await asyncio.sleep(0.4)
            pair.drain()
        alive = (await client.request("GET_PARAMETER", target.url, Session=session)).status == 200
        if grace:
            return alive, None
        await asyncio.sleep(SESSION_TIMEOUT + 2.5)   # no reports: reaped within a reaper pass or two
        expired = (await client.request("GET_PARAMETER", target.url, Session=session)).status
        return alive, expired
    finally:
        client.close()
        pair.close()


async def test_receiver_reports_keep_a_udp_session_alive(both: tuple[Target, Target]) -> None:
    """RFC 2326 12.37 (Session): "the session ... is kept alive by ... RTCP messages". GStreamer
    refreshes the session on every RTCP packet from the client's port (and reaps it its
    timeout plus 5 s after the last). msm: the proxy counts receiver reports per leg, tells
    the control plane each second which legs heard from their viewer, and the stub holding
    the session restarts its timeout; without reports it is reaped after the timeout."""
    results = await asyncio.gather(*(_rtcp_only_viewer(t) for t in both))
    for target, (alive, expired) in zip(both, results, strict=True):
        assert alive, f"{target.name}: a session kept alive by RTCP alone was cut"
        assert expired in (None, 454), f"{target.name}: the session outlived its timeout without RTCP ({expired})"


# -- SETUP without DESCRIBE (RFC 2326 10.4) --------------------------------------------------------

async def test_setup_without_describe_on_the_connection(target: Target) -> None:
    """RFC 2326 10.4 asks no DESCRIBE before SETUP: a client may hold the description from
    elsewhere (live555's proxy re-SETUPs from the SDP it cached when it reconnects).
    GStreamer answers 200 and plays. msm resolves the route from the track URL's stream."""
    client, pair = await Client.open(target), UdpPair()
    try:
        setup = await client.request("SETUP", target.track(0), Transport=pair.transport)
        assert setup.status == 200, f"{target.name}: {setup.status} {setup.body!r}"
        played = await client.request("PLAY", target.url, Session=session_id(setup))
        assert played.status == 200, played
        assert len(await pair.packet()) > 12
    finally:
        client.close()
        pair.close()


# -- Per-track control (RFC 2326 1.3, 10.5, 10.6, 10.7; 11.3.11 460) -----------------------------

# What a per-track TEARDOWN of one of a session's two tracks gets: GStreamer refuses every
# per-track request of an aggregate session (460); msm removes that track (RFC 2326 10.7).
TRACK_TEARDOWN = {"msm": 200, "gst": 460}


async def test_per_track_play_and_pause_of_an_aggregate_session(target: Target) -> None:
    """RFC 2326 1.3 / 11.3.11 (460): a server that controls a session's streams only together answers
    PLAY or PAUSE on one stream's URL with 460 Only Aggregate Operation Allowed (never acts
    on the whole session silently). GStreamer: 460 for PLAY, PAUSE and TEARDOWN on a track
    URL. msm: 460 for PLAY and PAUSE when the session has several tracks (the URL of a
    session's only track is the session: it acts); TEARDOWN of one track removes that
    track only (its leg), the others keep playing."""
    client, pairs = await Client.open(target), [UdpPair(), UdpPair()]
    try:
        described = await client.request("DESCRIBE", target.url)
        base = described.headers.get("Content-Base") or target.url
        session = ""
        for index, pair in enumerate(pairs):
            extra = {"Session": session} if session else {}
            setup = await client.request("SETUP", target.track(index, base), Transport=pair.transport, **extra)
            assert setup.status == 200, setup
            session = session_id(setup)
        for method in ("PLAY", "PAUSE"):
            answer = await client.request(method, target.track(0, base), Session=session)
            assert answer.status == 460, f"{target.name}: {method} of one track: {answer.status}"
        assert (await client.request("PLAY", base, Session=session)).status == 200
        await pairs[0].packet()
        teardown = await client.request("TEARDOWN", target.track(0, base), Session=session)
        assert teardown.status == TRACK_TEARDOWN[target.name], f"{target.name}: {teardown.status}"
        if teardown.status == 200:
            await asyncio.sleep(0.2)
            pairs[0].drain()
            await pairs[1].packet()   # the other track keeps flowing...
            await asyncio.sleep(0.5)
            assert pairs[0].drain() == 0, "...and the torn-down one stopped"
        assert (await client.request("TEARDOWN", base, Session=session)).status == 200
    finally:
        client.close()
        for pair in pairs:
            pair.close()


# -- Sessions outlive their connection (RFC 2326 1.1, 12.37) ----------------------------------------

# Whether a UDP session's media flows on once the connection that played it closes, and
# what TEARDOWN from a new connection then gets: GStreamer keeps the session object (a new
# connection's GET_PARAMETER naming it gets 200) but stops its media and answers that
# TEARDOWN 404 (the session's media is gone); the session ends at its timeout.
MEDIA_AFTER_CLOSE = {"msm": True, "gst": False}
TEARDOWN_AFTER_CLOSE = {"msm": 200, "gst": 404}


async def _flowing(pair: UdpPair, within: float = 1.5) -> bool:
    try:
        await pair.packet(timeout=within)
    except TimeoutError:
        return False
    return True


async def test_udp_session_outlives_its_connection(target: Target) -> None:
    """RFC 2326 1.1: an RTSP session is not tied to a transport-level connection; a client
    may close it and come back on another (12.37: the session is kept alive by requests or
    RTCP, not by the connection). GStreamer keeps the session but stops its media when the
    connection that played it closes (see TEARDOWN_AFTER_CLOSE). msm: a session whose
    tracks are all UDP lives on and its media flows until TEARDOWN or its timeout; one
    with interleaved tracks ends with its connection (its media has nowhere else to go)."""
    client, pair = await Client.open(target), UdpPair()
    try:
        session, _ = await play_track0(target, client, pair)
        await pair.packet()
        client.close()
        await asyncio.sleep(0.6)
        pair.drain()
        assert await _flowing(pair) == MEDIA_AFTER_CLOSE[target.name], target.name
        client = await Client.open(target)
        assert (await client.request("GET_PARAMETER", target.url, Session=session)).status == 200
        teardown = await client.request("TEARDOWN", target.url, Session=session)
        assert teardown.status == TEARDOWN_AFTER_CLOSE[target.name], (target.name, teardown.status)
        await asyncio.sleep(0.3)
        pair.drain()
        assert not await _flowing(pair, 0.5), f"{target.name}: media kept flowing after TEARDOWN"
        if teardown.status == 200:
            assert (await client.request("GET_PARAMETER", target.url, Session=session)).status == 454
    finally:
        client.close()
        pair.close()


# -- URL handling (RFC 2326 3.2, 11.2; RFC 3986) --------------------------------------------------

# SETUP of "<stream>?x=1/<track>" after DESCRIBE "<stream>?x=1" (a client that appends the
# control to the request URL): msm reads the track after the query.
QUERY_SETUP = {"msm": 200, "gst": 404}


async def test_track_control_after_a_query(target: Target) -> None:
    """RFC 2326 C.1.1: a relative control URL is resolved against the request URL when no
    Content-Base is given; clients that append it textually to ``...stream?x=1`` send
    ``...stream?x=1/track0``. GStreamer answers 404 (it matches the path only). msm takes
    the track from the query's tail (it was 459: the track looked absent)."""
    client, pair = await Client.open(target), UdpPair()
    try:
        assert (await client.request("DESCRIBE", target.url + "?x=1")).status == 200
        setup = await client.request("SETUP", f"{target.url}?x=1/{target.track_prefix}0", Transport=pair.transport)
        assert setup.status == QUERY_SETUP[target.name], (target.name, setup.status, setup.body)
    finally:
        client.close()
        pair.close()


# Bracketed hosts that are no IPv6 address: msm answers 400 to each; GStreamer only to the
# unbalanced one (it ignores the host part otherwise: 200).
BAD_HOSTS = {"[::1": 400, "[zz]": None, "[::1]x": None, "[v1.x]": None, "[::1]]": None, "[::1]:abc": None}


@pytest.mark.parametrize("host", list(BAD_HOSTS))
async def test_malformed_bracketed_host_is_400(target: Target, host: str) -> None:
    """RFC 2326 3.2 (rtsp_URL = "rtsp:" "//" host [":" port] [abs_path]) with RFC 3986 3.2.2:
    brackets hold an IPv6 (or IPvFuture) literal; a request whose URL breaks that is a
    400 Bad Request, never a 500. GStreamer: 400 for the unbalanced bracket, else it
    ignores the host (200). msm: 400 for each, with a one-line reason."""
    client = await Client.open(target)
    try:
        answer = await client.request("DESCRIBE", f"rtsp://{host}{target.path}")
        expected = 400 if target.name == "msm" else (BAD_HOSTS[host] or 200)
        assert answer.status == expected, (target.name, host, answer.status, answer.body)
    finally:
        client.close()


async def test_content_base_never_echoes_userinfo_or_a_foreign_host(target: Target) -> None:
    """RFC 2326 12.11 / C.1.1: Content-Base is the base for the SDP's relative controls;
    clients send their SETUPs there. Echoing the request's ``user:password@`` leaks the
    credentials into logs and caches; echoing a host the client merely wrote sends its
    SETUPs elsewhere. GStreamer drops the userinfo but echoes the host as written. msm
    answers with the address the client connected to."""
    client = await Client.open(target)
    try:
        with_user = await client.request("DESCRIBE", f"rtsp://user:secret@127.0.0.1:{target.port}{target.path}")
        foreign = await client.request("DESCRIBE", f"rtsp://evil.example:554{target.path}")
        bases = [a.headers.get("Content-Base") or "" for a in (with_user, foreign)]
        if target.name == "msm":
            assert bases == [f"rtsp://127.0.0.1:{target.port}{target.path}/"] * 2, bases
        else:
            assert "secret" not in bases[0] and "evil.example" in bases[1], bases
    finally:
        client.close()



# -- Every status msm answers a viewer, beside GStreamer's answer to the same request ---------------

def _req(method: str, url: str, *headers: str, body: str = "") -> Callable[[Target], bytes]:
    """A request with CSeq 1 and ``headers`` (``{url}`` and ``{track0}``/``{track9}`` filled in per target)."""
    def build(target: Target) -> bytes:
        fill = {"url": target.url, "track0": target.track(0), "track9": target.track(9),
                "nope": f"rtsp://{target.host}:{target.port}/nope"}
        lines = [f"{method} {url.format(**fill)} RTSP/1.0", "CSeq: 1", *headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    return build


UDP = "Transport: RTP/AVP;unicast;client_port=40000-40001"
# (case, RFC 2326 section, request, {target: status}). Where the two differ, the docstring
# of test_status_codes says why msm answers as it does.
STATUS_CASES: list[tuple[str, str, Callable[[Target], bytes], dict[str, int]]] = [
    ("options", "10.1", _req("OPTIONS", "*"), {"msm": 200, "gst": 200}),
    ("get-parameter-keepalive", "10.8", _req("GET_PARAMETER", "{url}"), {"msm": 200, "gst": 200}),
    ("missing-cseq", "12.17", lambda t: b"OPTIONS * RTSP/1.0\r\n\r\n", {"msm": 400, "gst": 400}),
    ("garbage", "6.1", lambda t: b"HELLO\r\n\r\n", {"msm": 400, "gst": 400}),
    ("malformed-transport", "12.39", _req("SETUP", "{track0}", "Transport: RTP/AVP;unicast;client_port=abc"),
     {"msm": 400, "gst": 200}),
    ("a-response-from-the-client", "6, 7", lambda t: b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n", {"msm": 400}),
    ("unknown-stream", "7.1.1 (HTTP 404)", _req("DESCRIBE", "{nope}"), {"msm": 404, "gst": 404}),
    ("unknown-track", "7.1.1 (HTTP 404)", _req("SETUP", "{track9}", UDP), {"msm": 404, "gst": 404}),
    ("announce", "11.3.1 (405 + Allow)", _req("ANNOUNCE", "{url}"), {"msm": 405, "gst": 400}),
    ("record", "11.3.1", _req("RECORD", "{url}", "Session: abc"), {"msm": 405, "gst": 454}),
    ("redirect", "11.3.1", _req("REDIRECT", "{url}"), {"msm": 405, "gst": 501}),
    ("accept-no-sdp", "7.1.1 (HTTP 406)", _req("DESCRIBE", "{url}", "Accept: text/html"), {"msm": 406, "gst": 200}),
    ("header-too-large", "7.1.1 (HTTP 413)", _req("OPTIONS", "*", "X-Pad: " + "a" * 20000),
     {"msm": 413, "gst": 200}),
    ("request-line-too-long", "7.1.1 (HTTP 414)", _req("OPTIONS", "rtsp://h/" + "a" * 20000),
     {"msm": 414, "gst": 400}),
    ("set-parameter", "11.3.2 (451)",
     _req("SET_PARAMETER", "{url}", "Content-Type: text/parameters", body="volume: 3\n"), {"msm": 451, "gst": 451}),
    ("unknown-session", "11.3.5 (454)", _req("PLAY", "{url}", "Session: nosuch"), {"msm": 454, "gst": 454}),
    ("no-session", "11.3.5 (454)", _req("PLAY", "{url}"), {"msm": 454, "gst": 454}),
    ("setup-of-aggregate-url", "11.3.10 (459)", _req("SETUP", "{url}", UDP), {"msm": 459, "gst": 404}),
    ("unsupported-transport", "11.3.12 (461)", _req("SETUP", "{track0}", "Transport: RAW/RAW/UDP;unicast"),
     {"msm": 461, "gst": 461}),
    ("no-transport", "11.3.12 (461)", _req("SETUP", "{track0}"), {"msm": 461, "gst": 461}),
    ("multicast", "11.3.12 (461)", _req("SETUP", "{track0}", "Transport: RTP/AVP;multicast"), {"msm": 461, "gst": 461}),
    ("unknown-method", "7.1.1 (HTTP 501)", _req("FROBNICATE", "{url}"), {"msm": 501, "gst": 400}),
    ("rtsp-2.0", "7.1.1 (505)", lambda t: b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", {"msm": 505, "gst": 200}),
    ("require", "11.3.14 (551 + Unsupported)", _req("OPTIONS", "{url}", "Require: com.example.magic"),
     {"msm": 551, "gst": 551}),
]


async def _status(target: Target, data: bytes) -> int | None:
    """The status of the first answer to ``data`` on a new connection (None: closed or silent)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(data)
    head = b""
    try:
        async with asyncio.timeout(1.5):   # both answer at once; silence is an answer too
            while b"\r\n" not in head:
                chunk = await reader.read(65536)
                if not chunk:
                    return None
                head += chunk
    except TimeoutError:
        return None
    finally:
        writer.close()
    match = re.match(rb"RTSP/\d\.\d (\d{3}) ", head)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize(("case", "section", "build", "expected"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
async def test_status_codes(target: Target, case: str, section: str, build: Callable[[Target], bytes],
                            expected: dict[str, int]) -> None:
    """Each request's answer from msm and from GStreamer (RFC 2326 section in STATUS_CASES).

    Where they differ msm is the stricter: it refuses what RFC 2326 says is refused (a
    malformed Transport, ANNOUNCE/RECORD/REDIRECT with 405 and Allow as 11.3.1 asks of
    a method the resource does not allow, an unacceptable Accept with 406, oversized heads
    with 413/414, another protocol version with 505, an unknown method with 501), where
    GStreamer ignores the fault or answers a generic 400. A response sent by a client is
    a protocol error to msm (400, connection closed); GStreamer ignores it (no answer).
    """
    status = await _status(target, build(target))
    assert status == expected.get(target.name), (target.name, case, section, status)


async def test_unreachable_upstream_is_503(servers: tuple[GstRtspServer, LocalMesh]) -> None:
    """RFC 2326 7.1.1 (HTTP 503 Service Unavailable): msm answers a DESCRIBE of a
    route whose upstream does not answer 503 (and 502 for one that answers nonsense, 504
    for one too slow: tests/e2e/test_bad_input.py, test_upstream_auth.py). GStreamer serves
    its own media and has no upstream, so it has no such answer."""
    target = make_target("msm", servers)
    status = await _status(target, _req("DESCRIBE", f"rtsp://{target.host}:{target.port}/dead")(target))
    assert status == 503


# After the connection carrying an interleaved session closed, what a new connection's
# GET_PARAMETER naming the session gets.
INTERLEAVED_AFTER_CLOSE = {"msm": 454, "gst": 200}


async def test_an_interleaved_session_ends_with_its_connection(target: Target) -> None:
    """RFC 2326 10.12: interleaved media travels on the RTSP connection, so it cannot outlive
    it. msm ends such a session (its leg and bridge) with the connection: the session is
    gone (454). GStreamer keeps the session object until its timeout (200), its media
    stopped."""
    client = await Client.open(target)
    try:
        setup = await client.request("SETUP", target.track(0), Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
        assert setup.status == 200, setup
        session = session_id(setup)
        assert (await client.request("PLAY", target.url, Session=session)).status == 200
        client.close()
        await asyncio.sleep(0.5)
        client = await Client.open(target)
        answer = await client.request("GET_PARAMETER", target.url, Session=session)
        assert answer.status == INTERLEAVED_AFTER_CLOSE[target.name], (target.name, answer.status)
    finally:
        client.close()


# -- A player reads RTP-Info --------------------------------------------------------------------------

async def test_gstreamer_rtspsrc_takes_seqnum_and_clock_base_from_rtp_info(target: Target) -> None:
    """What a player does with RTP-Info (RFC 2326 12.33): GStreamer's rtspsrc turns each
    track's ``seq`` and ``rtptime`` into its caps' ``seqnum-base`` and ``clock-base`` (its
    jitter buffer then drops packets from before the play point) and decodes on. From both
    servers it shows the bases and decodes frames."""
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed (run scripts/setup.sh)")
    pipeline = (f"rtspsrc location={target.url} protocols=udp latency=100 ! rtph264depay ! "
                "avdec_h264 ! fakesink name=sink silent=false num-buffers=15 sync=false")
    proc = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-v", *pipeline.split(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert re.search(r"seqnum-base=\(uint\)\d+", text) and re.search(r"clock-base=\(uint\)\d+", text), \
        f"{target.name}: rtspsrc found no RTP-Info\n{text[-1500:]}"
    assert len(re.findall(r"sink: last-message = chain", text)) >= 15, text[-1500:]
