"""The stub's RTSP server: what viewer apps talk to.

Every request becomes a typed gRPC request to the control plane; the media
itself never passes through here for UDP viewers (the proxy sends it straight
to them). TCP-interleaved viewers get a :class:`~msm.stub.bridge.UdpPair` that turns
the proxy's datagrams into ``$`` frames on their connection.

Faults are answered, never raised: a peer's malformed request gets the status
its :class:`~msm.sdk.errors.RtspError` carries and the connection is closed; a
viewer that vanishes has its session torn down; other sessions never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import RtspError, SdpError
from msm.sdk.rtsp import (
    Headers,
    InterleavedFrame,
    Request,
    Response,
    RtspReader,
    TransportSpec,
    format_session,
    parse_session,
    parse_transport,
)
from msm.sdk.rtsp_state import State, next_state
from msm.sdk.sdp import Connection, SessionDescription

from .bridge import UdpPair
from .control import ControlClient

log = logging.getLogger(__name__)

SERVER = "msm-stub/0.1"
SUPPORTED = ("OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
             "SET_PARAMETER")
KNOWN_UNSUPPORTED = ("ANNOUNCE", "RECORD", "REDIRECT")
# Interleaved media queued for one TCP viewer. Past this a viewer is too slow:
# frames are dropped (and counted) rather than buffered; 512 KiB is ~1 s of a
# 4 Mbit/s stream.
MAX_VIEWER_BACKLOG = 512 * 1024
# A connection that sends nothing for this long while holding no session is closed.
IDLE_CONNECTION_TIMEOUT = 120.0
_FRAME_HEADER = struct.Struct("!BBH")
_TRACK = re.compile(r"^track(\d+)$")


class Refused(Exception):
    """Answer the current request with ``status`` (and optional headers)."""

    def __init__(self, status: int, reason: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class TrackSetup:
    index: int
    transport: TransportSpec
    bridge: UdpPair | None = None


@dataclass
class ViewerSession:
    session_id: str
    stream_id: str
    base_url: str
    connection: ViewerConnection | None
    state: State = State.INIT
    tracks: dict[int, TrackSetup] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)

    def close_bridges(self) -> None:
        for track in self.tracks.values():
            if track.bridge is not None:
                track.bridge.close()


@dataclass
class StreamInfo:
    stream_id: str
    tracks: int


SO_ORIGINAL_DST = 80   # linux/netfilter_ipv4.h; the same value for IP6T_SO_ORIGINAL_DST


def original_destination(sock: object, local: tuple[str, int]) -> str:
    """Where a connection redirected into the stub (nftables/iptables REDIRECT) was going.

    Returns ``"ip:port"``, or ``""`` when the connection was not redirected.
    """
    getsockopt = getattr(sock, "getsockopt", None)
    if getsockopt is None:
        return ""
    try:
        if ":" in local[0]:
            raw = getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = int.from_bytes(raw[2:4], "big")
            host = socket.inet_ntoa(raw[4:8])
    except OSError:      # no conntrack entry: a direct connection
        return ""
    if (host, port) == (local[0], local[1]):
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_url(uri: str) -> tuple[str, int | None]:
    """``rtsp://h/cam1/track1`` -> (``cam1``, 1); ``rtsp://h/cam1`` -> (``cam1``, None)."""
    path = urlsplit(uri).path.strip("/")
    head, _, last = path.rpartition("/")
    match = _TRACK.match(last)
    if match and head:
        return head, int(match.group(1))
    return path, None


class StubServer:
    def __init__(self, control: ControlClient, *, host: str = "127.0.0.1", port: int = 8554,
                 media_host: str = "127.0.0.1", session_timeout: int = 60,
                 max_connections: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.control = control
        self.host = host
        self.port = port
        self.media_host = media_host
        self.session_timeout = session_timeout
        self.max_connections = max_connections
        self.clock = clock
        self.sessions: dict[str, ViewerSession] = {}
        self.connections: set[ViewerConnection] = set()
        self.server: asyncio.Server | None = None
        self.frames_dropped = 0
        self.streams_down: set[str] = set()
        self._reaper: asyncio.Task[None] | None = None

    def on_stream_state(self, state: pb.StreamState) -> None:
        """Players send no keep-alives while no media arrives: pause their timeouts."""
        if state.upstream_up:
            self.streams_down.discard(state.stream_id)
            now = self.clock()
            for session in self.sessions.values():
                if session.stream_id == state.stream_id:
                    session.last_seen = now
        else:
            self.streams_down.add(state.stream_id)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, self.host, self.port,
                                                 reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self._reaper = asyncio.create_task(self._reap(), name="stub-session-reaper")
        log.info("stub RTSP server on rtsp://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.abort()
        for session in list(self.sessions.values()):
            await self.end_session(session, "stub stopping", teardown=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.max_connections:
            writer.write(bytes(Response(status=503, headers=Headers([("Connection", "close")]))))
            writer.close()
            return
        conn = ViewerConnection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.session_timeout / 4))
            now = self.clock()
            for session in list(self.sessions.values()):
                if session.stream_id in self.streams_down:
                    continue
                if now - session.last_seen > self.session_timeout:
                    log.info("session %s timed out", session.session_id)
                    await self.end_session(session, "timeout", teardown=False)

    async def end_session(self, session: ViewerSession, reason: str, *, teardown: bool) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        session.close_bridges()
        conn = session.connection
        if conn is not None:
            conn.sessions.discard(session.session_id)
            for channel in [c for c, (s, _) in conn.channels.items() if s is session]:
                del conn.channels[channel]
        if teardown:
            await self.control.request(teardown=pb.SessionRequest(
                stream_id=session.stream_id, session_id=session.session_id))
        else:
            self.control.send(pb.StubMessage(viewer_gone=pb.ViewerGone(
                session_id=session.session_id, reason=reason)))


class ViewerConnection:
    def __init__(self, server: StubServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        self.peer_host = peer[0]
        local = writer.get_extra_info("sockname") or (server.host, server.port)
        self.local_host = local[0]
        self.local_port = local[1]
        self.original_dst = original_destination(writer.get_extra_info("socket"), local)
        self.sessions: set[str] = set()
        self.streams: dict[str, StreamInfo] = {}
        self.channels: dict[int, tuple[ViewerSession, TrackSetup]] = {}
        self.frames_dropped = 0

    def abort(self) -> None:
        self.writer.transport.abort()

    async def run(self) -> None:
        parser = RtspReader()
        try:
            while True:
                timeout = None if self.sessions else IDLE_CONNECTION_TIMEOUT
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                parser.feed(data)
                while (event := parser.next_event()) is not None:
                    if isinstance(event, Request):
                        response = await self.handle(event)
                        self.writer.write(bytes(response))
                    elif isinstance(event, InterleavedFrame):
                        self._frame_from_viewer(event)
                    else:
                        raise RtspError("a viewer must not send responses", status=400)
        except RtspError as exc:
            log.info("viewer %s: %s (%d)", self.peer_host, exc, exc.status)
            headers = Headers([("Server", SERVER), ("Connection", "close")])
            with contextlib.suppress(OSError):
                self.writer.write(bytes(Response(status=exc.status, headers=headers)))
        except TimeoutError:
            log.info("viewer %s: idle connection closed", self.peer_host)
        except (OSError, ConnectionError) as exc:
            log.info("viewer %s: connection error %s", self.peer_host, exc)
        finally:
            for session_id in list(self.sessions):
                session = self.server.sessions.get(session_id)
                if session is not None:
                    await self.server.end_session(session, "connection closed", teardown=False)
            self.writer.close()

    # -- dispatch ------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        cseq = request.headers.get("CSeq")
        headers: list[tuple[str, str]] = [("CSeq", cseq or "0"), ("Server", SERVER),
                                          ("Date", email.utils.formatdate(usegmt=True))]
        if cseq is None or not cseq.strip().isdigit():
            return Response(status=400, headers=Headers(headers), body=b"missing or bad CSeq\r\n")
        try:
            if request.headers.get("Require"):
                raise Refused(551, "no options supported", {"Unsupported": request.headers.get("Require") or ""})
            method = request.method
            if method in KNOWN_UNSUPPORTED:
                raise Refused(405, f"{method} is not supported", {"Allow": ", ".join(SUPPORTED)})
            if method not in SUPPORTED:
                raise Refused(501, f"{method} is not implemented")
            handler = getattr(self, f"_on_{method.lower()}")
            status, extra, body = await handler(request)
        except Refused as exc:
            log.info("viewer %s: %s %s -> %d %s", self.peer_host, request.method, request.uri,
                     exc.status, exc.reason)
            headers += list(exc.headers.items())
            body = (exc.reason + "\r\n").encode() if exc.reason else b""
            if body:
                headers.append(("Content-Type", "text/plain"))
            return Response(status=exc.status, headers=Headers(headers), body=body)
        except RtspError as exc:   # a bad header inside an otherwise framed request
            return Response(status=exc.status, headers=Headers(headers), body=(str(exc) + "\r\n").encode())
        except Exception:          # a bug of ours: answer 500, keep the connection and others alive
            log.exception("viewer %s: %s %s failed", self.peer_host, request.method, request.uri)
            return Response(status=500, headers=Headers(headers))
        return Response(status=status, headers=Headers(headers + extra), body=body)

    def _session(self, request: Request, *, required: bool = True) -> ViewerSession | None:
        value = request.headers.get("Session")
        if value is None:
            if required:
                raise Refused(454, "Session header required")
            return None
        session_id, _ = parse_session(value)
        session = self.server.sessions.get(session_id)
        if session is None:
            raise Refused(454, f"unknown session {session_id}")
        session.last_seen = self.server.clock()
        return session

    def _session_header(self, session: ViewerSession) -> tuple[str, str]:
        return ("Session", format_session(session.session_id, self.server.session_timeout))

    async def _reply(self, **kind: object) -> pb.ControlReply:
        reply = await self.server.control.request(**kind)
        if reply.status.code != 200:
            raise Refused(reply.status.code or 500, reply.status.reason)
        return reply

    def _base_url(self, uri: str, name: str) -> str:
        """The stream's URL as the app wrote it (a redirected app keeps ``camera-svc:554``)."""
        parts = urlsplit(uri)
        if parts.scheme in ("rtsp", "rtsps") and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}/{name}"
        host = self.local_host if ":" not in self.local_host else f"[{self.local_host}]"
        return f"rtsp://{host}:{self.local_port}/{name}"

    async def _stream(self, uri: str, name: str) -> tuple[StreamInfo, SessionDescription]:
        reply = await self._reply(describe=pb.DescribeRequest(url=uri, viewer_host=self.peer_host,
                                                              original_dst=self.original_dst))
        try:
            sdp = SessionDescription.parse(reply.describe.sdp)
        except SdpError as exc:
            raise Refused(502, f"upstream SDP is malformed: {exc}") from exc
        info = StreamInfo(reply.describe.stream_id, len(sdp.media))
        self.streams[name] = info
        return info, sdp

    # -- methods -------------------------------------------------------------------------------
    async def _on_options(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        extra = [("Public", ", ".join(SUPPORTED))]
        session = self._session(request, required=False)
        if session is not None:
            extra.append(self._session_header(session))
        return 200, extra, b""

    async def _on_get_parameter(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        session = self._session(request, required=False)
        extra = [self._session_header(session)] if session else []
        return 200, extra, b""

    async def _on_set_parameter(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        session = self._session(request, required=False)
        if request.body.strip():
            raise Refused(451, "no parameters can be set")
        return 200, [self._session_header(session)] if session else [], b""

    async def _on_describe(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        accept = request.headers.get("Accept")
        if accept and "application/sdp" not in accept and "*/*" not in accept:
            raise Refused(406, "only application/sdp descriptions are offered")
        name, track = split_url(request.uri)
        if track is not None or not name:
            raise Refused(404, "DESCRIBE names a stream, not a track")
        _info, sdp = await self._stream(request.uri, name)
        base = self._base_url(request.uri, name)
        media = [m.with_control(f"track{i}").with_connection(None).with_port(0)
                 for i, m in enumerate(sdp.media)]
        addrtype = "IP6" if ":" in self.local_host else "IP4"
        out = (sdp.with_media(media).with_control("*")
               .with_connection(Connection(addrtype=addrtype, address="::" if addrtype == "IP6" else "0.0.0.0")))
        extra = [("Content-Base", base + "/"), ("Content-Type", "application/sdp")]
        return 200, extra, bytes(out)

    async def _on_setup(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        name, track = split_url(request.uri)
        session = self._session(request, required=False)
        if session is not None and session.connection is not None and session.connection is not self:
            raise Refused(454, "session belongs to another connection")
        info = self.streams.get(name)
        if info is None:
            info, _ = await self._stream(request.uri, name)
        if session is not None and session.stream_id != info.stream_id:
            raise Refused(459, "a session aggregates one stream only")
        if track is None:
            if info.tracks != 1:
                raise Refused(459, "SETUP must name a track of this multi-track stream")
            track = 0
        if track >= info.tracks:
            raise Refused(404, f"no track {track} in {name}")
        if session is not None:
            next_state(session.state, "SETUP")
        spec = self._choose_transport(request, session)
        created = session is None
        if session is None:
            session = ViewerSession(secrets.token_hex(8), info.stream_id, self._base_url(request.uri, name), self,
                                    last_seen=self.server.clock())
        setup = TrackSetup(track, spec)
        if spec.lower_transport == "TCP":
            assert spec.interleaved is not None
            setup.bridge = await UdpPair.open(
                self.server.media_host,
                lambda data, ch=spec.interleaved[0]: self._frame_to_viewer(ch, data),
                lambda data, ch=spec.interleaved[1]: self._frame_to_viewer(ch, data))
            rtp_port, rtcp_port = setup.bridge.ports
            destination = pb.Endpoint(host=self.server.media_host, rtp_port=rtp_port, rtcp_port=rtcp_port)
        else:
            assert spec.client_port is not None
            destination = pb.Endpoint(host=self.peer_host, rtp_port=spec.client_port[0],
                                      rtcp_port=spec.client_port[1])
        try:
            reply = await self._reply(setup=pb.SetupRequest(
                url=request.uri, original_dst=self.original_dst, stream_id=info.stream_id, track_index=track,
                session_id=session.session_id, destination=destination, viewer_host=self.peer_host))
        except BaseException:
            if setup.bridge is not None:
                setup.bridge.close()
            raise
        source = reply.setup.source
        if setup.bridge is not None:
            setup.bridge.set_peer(source.host, source.rtp_port, source.rtcp_port)
            assert spec.interleaved is not None
            self.channels[spec.interleaved[0]] = (session, setup)
            self.channels[spec.interleaved[1]] = (session, setup)
            answer = TransportSpec(protocol="RTP/AVP/TCP", interleaved=spec.interleaved)
        else:
            answer = TransportSpec(client_port=spec.client_port, server_port=(source.rtp_port, source.rtcp_port),
                                   source=source.host if source.host not in ("0.0.0.0", "::") else None)
        old = session.tracks.get(track)
        if old is not None and old.bridge is not None:
            old.bridge.close()
        session.tracks[track] = setup
        session.state = next_state(session.state, "SETUP")
        if created:
            self.server.sessions[session.session_id] = session
            self.sessions.add(session.session_id)
        return 200, [("Transport", str(answer)), self._session_header(session)], b""

    def _choose_transport(self, request: Request, session: ViewerSession | None) -> TransportSpec:
        value = request.headers.get("Transport")
        if not value:
            raise Refused(461, "Transport header required")
        used = {ch for (s, t) in self.channels.values() if t.transport.interleaved for ch in t.transport.interleaved}
        for spec in parse_transport(value):
            if not spec.protocol.startswith("RTP/AVP") or not spec.unicast:
                continue
            if spec.lower_transport == "TCP":
                channels = spec.interleaved
                if channels is None or channels[0] in used or channels[1] in used:
                    first = next(c for c in range(0, 254, 2) if c not in used and c + 1 not in used)
                    channels = (first, first + 1)
                return TransportSpec(protocol="RTP/AVP/TCP", interleaved=channels)
            if spec.client_port is not None and spec.client_port[0] > 0:
                return TransportSpec(client_port=spec.client_port)
        raise Refused(461, "only unicast RTP/AVP over UDP (client_port) or TCP (interleaved) is supported")

    async def _on_play(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        session = self._session(request)
        assert session is not None
        new_state = next_state(session.state, "PLAY")
        reply = await self._reply(play=pb.SessionRequest(stream_id=session.stream_id,
                                                         session_id=session.session_id))
        session.state = new_state
        extra = [self._session_header(session), ("Range", reply.session.range or "npt=now-")]
        return 200, extra, b""

    async def _on_pause(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        session = self._session(request)
        assert session is not None
        new_state = next_state(session.state, "PAUSE")
        await self._reply(pause=pb.SessionRequest(stream_id=session.stream_id,
                                                  session_id=session.session_id))
        session.state = new_state
        return 200, [self._session_header(session)], b""

    async def _on_teardown(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        session = self._session(request)
        assert session is not None
        await self.server.end_session(session, "teardown", teardown=True)
        return 200, [], b""

    # -- interleaved media ----------------------------------------------------------------------
    def _frame_to_viewer(self, channel: int, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_VIEWER_BACKLOG:
            self.frames_dropped += 1
            self.server.frames_dropped += 1
            return
        # Hot path: the 4-byte '$' header is packed here rather than through a
        # validated InterleavedFrame object per packet.
        self.writer.writelines((_FRAME_HEADER.pack(0x24, channel, len(data)), data))

    def _frame_from_viewer(self, frame: InterleavedFrame) -> None:
        entry = self.channels.get(frame.channel)
        if entry is None:
            return
        session, setup = entry
        session.last_seen = self.server.clock()
        if setup.bridge is not None and setup.transport.interleaved and frame.channel == setup.transport.interleaved[1]:
            setup.bridge.send_rtcp(frame.payload)
