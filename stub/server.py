"""The stub's RTSP server: what viewer apps talk to.

Every request becomes a typed gRPC request to the control plane; the media
itself never passes through here for UDP viewers (the proxy sends it straight
to them). TCP-interleaved viewers get a :class:`~msm.stub.bridge.UdpPair` that turns
the proxy's datagrams into ``$`` frames on their connection.

This module is the asyncio adapter over the sans-IO
:class:`~msm.sdk.rtsp_server.ServerConnection`, which parses, validates and answers
the RTSP side (and turns every :class:`~msm.sdk.errors.MsmError` into its status);
here are the sockets, the bridges and the control-plane requests.

Faults are answered, never raised: a peer's malformed request gets the status
its :class:`~msm.sdk.errors.RtspError` carries and the connection is closed; a
viewer that vanishes has its session torn down; other sessions never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable

from msm.protos import msm_pb2 as pb
from msm.protos.status import error_of
from msm.sdk.errors import MsmError, SdpError, UpstreamError
from msm.sdk.rtsp import Headers, Response
from msm.sdk.rtsp_server import (
    MAX_SESSIONS_PER_CONNECTION,
    Authenticator,
    DescribeRequested,
    FrameReceived,
    PauseRequested,
    PlayRequested,
    Reply,
    ServerConnection,
    ServerEvent,
    SessionTable,
    SetupRequested,
    TeardownRequested,
    frame_prefix,
    session_tag,
    split_url,
    stream_url,
    strip_userinfo,
)
from msm.sdk.sdp import SessionDescription

from .bridge import UdpPair
from .control import ControlClient
from .sockets import listen_backlog, listening_urls, original_destination, serve, tls_context
from .viewer import Group, StreamInfo, TrackSetup, ViewerSession, announced_group, content_base, detached, rtp_info

log = logging.getLogger(__name__)

SERVER = "msm-stub/0.1"
# Interleaved media queued for one TCP viewer. Past this a viewer is too slow:
# frames are dropped (and counted) rather than buffered; 512 KiB is ~1 s of a
# 4 Mbit/s stream.
MAX_VIEWER_BACKLOG = 512 * 1024
# A connection that sends no request for this long while holding no session is closed:
# players send their first request at once; an idle one holds a slot of the caps below.
IDLE_CONNECTION_TIMEOUT = 60.0
# A request's head (and body) must be complete this long after its first byte. Real
# players send a whole request in one segment; a peer trickling a byte every few
# seconds (slowloris) would otherwise hold its connection for ever. Also the TLS
# handshake deadline of RTSPS.
HEADER_TIMEOUT = 10.0
# Connections from one client address. A player opens one per stream (some two);
# 32 leaves room for a multi-view client or a few players behind one NAT while
# keeping one address from taking the whole server (MAX_CONNECTIONS).
MAX_CONNECTIONS_PER_CLIENT = 32
# All viewer connections of the stub: a bound on its file descriptors and memory.
MAX_CONNECTIONS = 1024
# Replies queued for a connection that does not read them. Past this the stub stops
# reading that connection's requests until the peer reads (pipelining is bounded by
# what the peer consumes, not by what it sends); 64 KiB is asyncio's high-water mark.
REPLY_HIGH_WATER = 64 * 1024
# How long a connection may leave that backlog unread before it is closed.
WRITE_TIMEOUT = 30.0
# RTSPS (RTSP over TLS) port: 322 is rtsps' registered port, 8322 the unprivileged one.
RTSPS_PORT = 8322
# Sessions of one client address that outlive their connection (UDP viewers whose RTSP
# connection closed: their media flows on until TEARDOWN or timeout). A player leaves
# one per stream it plays; past this a closed connection's sessions end with it, so a
# client opening and dropping connections cannot pile up sessions (and proxy legs).
MAX_DETACHED_PER_CLIENT = 16
# The longest pause between two reaper passes; shorter for short session timeouts.
MAX_REAP_INTERVAL = 5.0

__all__ = ["StubServer", "ViewerConnection", "ViewerSession", "original_destination", "split_url", "tls_context"]


class StubServer:
    """The viewer-facing RTSP server (and RTSPS, given a TLS context).

    Every bound is a parameter with a secure default (see the constants above);
    a refusal at a bound is counted in ``limit_hits`` by name: ``connections``,
    ``connections_per_client``, ``sessions_per_connection``, ``header_timeout``,
    ``idle_timeout``, ``write_backlog``, ``write_timeout``, ``detached_sessions`` (a
    closed connection's UDP session ended past ``max_detached_per_client``). ``auth`` (off by
    default) makes every request but OPTIONS need credentials.
    """

    def __init__(self, control: ControlClient, *, host: str = "127.0.0.1", port: int = 8554,
                 media_host: str = "127.0.0.1", session_timeout: int = 60,
                 max_connections: int = MAX_CONNECTIONS, clock: Callable[[], float] = time.monotonic,
                 reap_interval: float | None = None,
                 max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                 max_sessions_per_connection: int = MAX_SESSIONS_PER_CONNECTION,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_CONNECTION_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, auth: Authenticator | None = None,
                 max_detached_per_client: int = MAX_DETACHED_PER_CLIENT,
                 tls: ssl.SSLContext | None = None, tls_host: str | None = None,
                 tls_port: int = RTSPS_PORT) -> None:
        self.control = control
        self.host = host
        self.port = port
        self.media_host = media_host
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.max_sessions_per_connection = max_sessions_per_connection
        self.max_detached_per_client = max_detached_per_client
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.auth = auth
        self.tls = tls
        self.tls_host = tls_host if tls_host is not None else host
        self.tls_port = tls_port
        self.table: SessionTable[ViewerSession] = SessionTable(timeout=session_timeout, clock=clock)
        self.reap_interval = reap_interval or min(MAX_REAP_INTERVAL, session_timeout / 4)
        self.connections: set[ViewerConnection] = set()
        #: Open connections per client address (the per-client cap).
        self.per_client: Counter[str] = Counter()
        #: Refusals and closes at a bound, by the bound's name (see the class docstring).
        self.limit_hits: Counter[str] = Counter()
        self.server: asyncio.Server | None = None
        self.tls_server: asyncio.Server | None = None
        #: The IPv6 listeners beside ``server`` and ``tls_server`` of a wildcard host.
        self.extra_listeners: list[asyncio.Server] = []
        self.frames_dropped = 0
        self.streams_down: set[str] = set()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def sessions(self) -> dict[str, ViewerSession]:
        return self.table.sessions

    @property
    def session_timeout(self) -> int:
        return self.table.timeout

    @property
    def clock(self) -> Callable[[], float]:
        return self.table.clock

    def on_stream_state(self, state: pb.StreamState) -> None:
        """Players send no keep-alives while no media arrives: pause their timeouts."""
        if state.upstream_up:
            self.streams_down.discard(state.stream_id)
            self.table.touch_stream(state.stream_id)
        else:
            self.streams_down.add(state.stream_id)

    def sessions_alive(self, session_ids: Iterable[str]) -> None:
        """These sessions' viewers sent RTCP (RFC 2326 12.37): their timeouts restart."""
        now = self.clock()
        for session_id in session_ids:
            session = self.sessions.get(session_id)
            if session is not None:
                session.last_seen = now

    async def start(self) -> None:
        listeners = await serve(self._accept, self.host, self.port, backlog=listen_backlog())
        self.server, self.extra_listeners = listeners[0], listeners[1:]
        self.port = self.server.sockets[0].getsockname()[1]
        if self.tls is not None:
            await self.start_tls(self.tls)
        self._reaper = asyncio.create_task(self._reap(), name="stub-session-reaper")
        log.info("stub RTSP server on %s", listening_urls("rtsp", listeners))

    async def start_tls(self, context: ssl.SSLContext, port: int | None = None) -> int:
        """Listen for RTSPS on ``tls_host``:``port`` (default ``tls_port``); the port bound."""
        self.tls = context
        listeners = await serve(self._accept_tls, self.tls_host, self.tls_port if port is None else port,
                                ssl=context, backlog=listen_backlog(), ssl_handshake_timeout=self.header_timeout)
        self.tls_server = listeners[0]
        self.extra_listeners += listeners[1:]
        self.tls_port = self.tls_server.sockets[0].getsockname()[1]
        log.info("stub RTSPS server on %s", listening_urls("rtsps", listeners))
        return self.tls_port

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for listener in (self.server, self.tls_server, *self.extra_listeners):
            if listener is not None:
                listener.close()
        for conn in list(self.connections):
            conn.abort()
        for session in list(self.sessions.values()):
            await self.end_session(session, "stub stopping", teardown=True)
        for listener in (self.server, self.tls_server, *self.extra_listeners):
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 2.0)

    async def _accept_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, secure=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      secure: bool = False) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        host: str = peer[0]
        refused = ("connections" if len(self.connections) >= self.max_connections else
                   "connections_per_client" if self.per_client[host] >= self.max_connections_per_client
                   else None)
        if refused is not None:
            self.limit_hits[refused] += 1
            writer.write(bytes(Response(status=503, headers=Headers([("Connection", "close")]))))
            writer.close()
            return
        conn = ViewerConnection(self, reader, writer, secure=secure)
        self.connections.add(conn)
        self.per_client[host] += 1
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.per_client[host] -= 1
            if self.per_client[host] <= 0:
                del self.per_client[host]

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            await self.reap()

    async def reap(self) -> None:
        """End the sessions past their timeout (those of a stream whose upstream is down wait)."""
        for session in self.table.expired(self.streams_down):
            log.info("session %s timed out", session_tag(session.session_id))
            await self.end_session(session, "timeout", teardown=False)

    async def connection_closed(self, session: ViewerSession) -> None:
        """The connection that set ``session`` up closed. A session whose media travels over UDP
        outlives it (RFC 2326: sessions are not connections) until TEARDOWN from another
        connection or its timeout; one with interleaved tracks ends with its connection.
        """
        conn = session.connection
        if conn is None or session.interleaved:
            await self.end_session(session, "connection closed", teardown=False)
        elif detached(self.sessions.values(), session) >= self.max_detached_per_client:
            self.limit_hits["detached_sessions"] += 1
            await self.end_session(session, "connection closed", teardown=False)
        else:
            conn.rtsp.release(session)
            session.connection = None
            log.info("session %s outlives its connection (UDP media flows on until TEARDOWN or timeout)",
                     session_tag(session.session_id))

    async def end_session(self, session: ViewerSession, reason: str, *, teardown: bool) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        session.close_bridges()
        conn = session.connection
        if conn is not None:
            conn.rtsp.release(session)
        if teardown:
            await self.control.request(teardown=pb.SessionRequest(
                stream_id=session.stream_id, session_id=session.session_id))
        else:
            self.control.send(pb.StubMessage(viewer_gone=pb.ViewerGone(
                session_id=session.session_id, reason=reason)))


class ViewerConnection:
    def __init__(self, server: StubServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, secure: bool = False) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.secure = secure
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        self.peer_host: str = peer[0]
        self.rtsp: ServerConnection[ViewerSession] = ServerConnection(
            server.table, server_name=SERVER, peer_host=self.peer_host, auth=server.auth,
            max_sessions=server.max_sessions_per_connection, secure=secure, limit_hits=server.limit_hits)
        local = writer.get_extra_info("sockname") or (server.host, server.port)
        self.local_host: str = local[0]
        self.local_port: int = local[1]
        self.original_dst = original_destination(writer.get_extra_info("socket"), local)
        self.streams: dict[str, StreamInfo] = {}
        self.frames_dropped = 0

    @property
    def sessions(self) -> set[str]:
        return self.rtsp.sessions

    def abort(self) -> None:
        self.writer.transport.abort()

    def _read_deadline(self, now: float, last_request: float, partial_since: float | None) -> tuple[float | None, str]:
        """When the next read must have returned, and the bound that says so."""
        deadlines: list[tuple[float, str]] = []
        if partial_since is not None:
            deadlines.append((partial_since + self.server.header_timeout, "header_timeout"))
        if not self.sessions:
            deadlines.append((last_request + self.server.idle_timeout, "idle_timeout"))
        if not deadlines:
            return None, ""
        when, bound = min(deadlines)
        return max(0.0, when - now), bound

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_request = loop.time()
        partial_since: float | None = None
        bound = ""
        try:
            while not self.rtsp.closed:
                timeout, bound = self._read_deadline(loop.time(), last_request, partial_since)
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                arrived = loop.time()
                self.rtsp.receive_data(data)
                while (event := self.rtsp.next_event()) is not None:
                    last_request = arrived
                    if isinstance(event, Reply):
                        await self._write(event.data)
                    elif isinstance(event, FrameReceived):
                        self._frame_from_viewer(event)
                    else:
                        await self._write(await self.handle(event))
                # The first byte of an incomplete request starts its header deadline.
                partial_since = (partial_since or arrived) if self.rtsp.partial else None
        except TimeoutError:
            self.server.limit_hits[bound] += 1
            log.info("viewer %s: connection closed (%s)", self.peer_host, bound.replace("_", " "))
        except (OSError, ConnectionError) as exc:
            log.info("viewer %s: connection error %s", self.peer_host, exc)
        finally:
            if self.rtsp.closed:
                log.info("viewer %s: broke the protocol, connection closed", self.peer_host)
            for session_id in list(self.sessions):
                session = self.server.sessions.get(session_id)
                if session is not None:
                    await self.server.connection_closed(session)
            self.writer.close()

    async def _write(self, data: bytes) -> None:
        """Write an answer; while the peer leaves answers unread, read nothing more from it.

        Requests are read only after the previous ones are answered, so a peer pipelining
        requests it never reads the answers of costs at most ``REPLY_HIGH_WATER`` and one read.
        """
        self.writer.write(data)
        media = MAX_VIEWER_BACKLOG if self.rtsp.channels else 0   # interleaved media shares the buffer
        if self.writer.transport.get_write_buffer_size() > REPLY_HIGH_WATER + media:
            self.server.limit_hits["write_backlog"] += 1
            try:
                await asyncio.wait_for(self.writer.drain(), self.server.write_timeout)
            except TimeoutError:
                self.server.limit_hits["write_timeout"] += 1
                raise ConnectionError("the viewer left its answers unread") from None

    # -- requests --------------------------------------------------------------------------------
    async def handle(self, event: ServerEvent[ViewerSession]) -> bytes:
        """Carry out a request the RTSP session validated; the bytes of its answer."""
        request = self.rtsp.pending
        try:
            if isinstance(event, DescribeRequested):
                return await self._describe(event)
            if isinstance(event, SetupRequested):
                return await self._setup(event)
            if isinstance(event, PlayRequested):
                reply = await self._reply(play=self._session_request(event.session))
                headers = [("Range", reply.session.range or "npt=now-")]
                if reply.session.rtp_info:
                    headers.append(("RTP-Info", rtp_info(event.session.base_url, reply.session.rtp_info)))
                return self.rtsp.respond(headers=headers)
            if isinstance(event, PauseRequested):
                await self._reply(pause=self._session_request(event.session))
                return self.rtsp.respond()
            if isinstance(event, TeardownRequested):
                if event.track is not None:
                    return await self._teardown_track(event.session, event.track)
                await self.server.end_session(event.session, "teardown", teardown=True)
                return self.rtsp.respond()
            raise AssertionError(f"unexpected event {event!r}")
        except Exception as exc:    # MsmError: its status; anything else is a bug of ours: 500
            if request is not None:
                if isinstance(exc, MsmError):
                    log.info("viewer %s: %s %s -> %d %s", self.peer_host, request.method,
                             strip_userinfo(request.uri), exc.status, exc.reason)
                else:
                    log.exception("viewer %s: %s %s failed", self.peer_host, request.method,
                                  strip_userinfo(request.uri))
            return self.rtsp.fail(exc)

    async def _teardown_track(self, session: ViewerSession, track: int) -> bytes:
        """TEARDOWN of one track of several (RFC 2326 10.7): its leg and bridge go, the session stays."""
        await self._reply(teardown=pb.SessionRequest(stream_id=session.stream_id, session_id=session.session_id,
                                                     track_indexes=[track]))
        setup = session.setups.pop(track, None)
        if setup is not None and setup.bridge is not None:
            setup.bridge.close()
        (session.connection or self).rtsp.release_track(session, track)   # its channels are its owner's
        return self.rtsp.respond(headers=[self.server.table.header(session)])

    @staticmethod
    def _session_request(session: ViewerSession) -> pb.SessionRequest:
        return pb.SessionRequest(stream_id=session.stream_id, session_id=session.session_id)

    async def _reply(self, **kind: object) -> pb.ControlReply:
        """The control plane's answer; a failed one raises the error its status stands for."""
        reply: pb.ControlReply = await self.server.control.request(**kind)
        if reply.status.code != 200:
            raise error_of(pb.Status(code=reply.status.code or 500, reason=reply.status.reason))
        return reply

    def _base_url(self, uri: str, name: str) -> str:
        return content_base(uri, name, secure=self.secure, redirected=bool(self.original_dst),
                            local=(self.local_host, self.local_port))

    async def _stream(self, uri: str, name: str) -> tuple[StreamInfo, SessionDescription, Group]:
        reply = await self._reply(describe=pb.DescribeRequest(url=strip_userinfo(uri), viewer_host=self.peer_host,
                                                              original_dst=self.original_dst))
        try:
            sdp = SessionDescription.parse(reply.describe.sdp)
        except SdpError as exc:
            raise UpstreamError(f"upstream SDP is malformed: {exc}") from exc
        info = StreamInfo(reply.describe.stream_id, len(sdp.media))
        self.streams[name] = info
        return info, sdp, announced_group(reply.describe)

    async def _describe(self, event: DescribeRequested) -> bytes:
        _info, sdp, group = await self._stream(event.request.uri, event.stream)
        return self.rtsp.respond_describe(sdp, self._base_url(event.request.uri, event.stream),
                                          self.local_host, group)

    async def _setup(self, event: SetupRequested[ViewerSession]) -> bytes:
        request = event.request
        info = self.streams.get(event.stream)
        if info is None:   # no DESCRIBE on this connection: the route is the track URL's stream's
            info, _, _ = await self._stream(stream_url(request.uri), event.stream)
        plan = self.rtsp.plan_setup(event, info.stream_id, info.tracks)
        session = event.session or ViewerSession(
            self.server.table.new_id(), info.stream_id, base_url=self._base_url(request.uri, event.stream),
            connection=self)
        spec = plan.transport
        setup = TrackSetup(plan.track, spec)
        if spec.interleaved is not None:
            rtp_channel, rtcp_channel = spec.interleaved
            setup.bridge = await UdpPair.open(
                self.server.media_host,
                lambda data: self._frame_to_viewer(rtp_channel, data),
                lambda data: self._frame_to_viewer(rtcp_channel, data))
        destination = setup.destination(self.peer_host, self.server.media_host)
        try:
            reply = await self._reply(setup=pb.SetupRequest(
                url=strip_userinfo(request.uri), original_dst=self.original_dst, stream_id=info.stream_id,
                track_index=plan.track, session_id=session.session_id, destination=destination,
                viewer_host=self.peer_host, multicast=not spec.unicast))
        except BaseException:
            if setup.bridge is not None:
                setup.bridge.close()
            raise
        answer = setup.answer(reply.setup)
        old = session.setups.get(plan.track)
        if old is not None and old.bridge is not None:
            old.bridge.close()
        session.setups[plan.track] = setup
        if session.connection is None:   # a session whose connection closed, set up further here
            session.connection = self
        return self.rtsp.respond_setup(session, plan, answer)

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
        self.writer.writelines((frame_prefix(channel, len(data)), data))

    def _frame_from_viewer(self, frame: FrameReceived[ViewerSession]) -> None:
        setup = frame.session.setups.get(frame.track)
        if setup is not None and setup.bridge is not None and frame.rtcp:
            setup.bridge.send_rtcp(frame.payload)
