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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from msm.protos import msm_pb2 as pb
from msm.protos.status import error_of
from msm.sdk.errors import MsmError, SdpError, UpstreamError
from msm.sdk.rtsp import Headers, Response, TransportSpec
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
    frame_prefix,
    split_url,
)
from msm.sdk.sdp import SessionDescription

from .bridge import UdpPair
from .control import ControlClient

log = logging.getLogger(__name__)

SERVER = "msm-stub/0.1"
# Interleaved media queued for one TCP viewer. Past this a viewer is too slow:
# frames are dropped (and counted) rather than buffered; 512 KiB is ~1 s of a
# 4 Mbit/s stream.
MAX_VIEWER_BACKLOG = 512 * 1024
# A connection that sends nothing for this long while holding no session is closed.
IDLE_CONNECTION_TIMEOUT = 120.0
# The longest pause between two reaper passes; shorter for short session timeouts.
MAX_REAP_INTERVAL = 5.0

__all__ = ["StubServer", "ViewerConnection", "ViewerSession", "original_destination", "split_url"]


@dataclass
class TrackSetup:
    index: int
    transport: TransportSpec
    bridge: UdpPair | None = None


@dataclass(eq=False)
class ViewerSession(RtspSession):
    """An RTSP session of a viewer, with what the stub opened for it."""

    base_url: str = ""
    connection: ViewerConnection | None = None
    setups: dict[int, TrackSetup] = field(default_factory=dict)

    def close_bridges(self) -> None:
        for track in self.setups.values():
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


class StubServer:
    def __init__(self, control: ControlClient, *, host: str = "127.0.0.1", port: int = 8554,
                 media_host: str = "127.0.0.1", session_timeout: int = 60,
                 max_connections: int = 1024, clock: Callable[[], float] = time.monotonic,
                 reap_interval: float | None = None) -> None:
        self.control = control
        self.host = host
        self.port = port
        self.media_host = media_host
        self.max_connections = max_connections
        self.table: SessionTable[ViewerSession] = SessionTable(timeout=session_timeout, clock=clock)
        self.reap_interval = reap_interval or min(MAX_REAP_INTERVAL, session_timeout / 4)
        self.connections: set[ViewerConnection] = set()
        self.server: asyncio.Server | None = None
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
            await asyncio.sleep(self.reap_interval)
            await self.reap()

    async def reap(self) -> None:
        """End the sessions past their timeout (those of a stream whose upstream is down wait)."""
        for session in self.table.expired(self.streams_down):
            log.info("session %s timed out", session.session_id)
            await self.end_session(session, "timeout", teardown=False)

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
    def __init__(self, server: StubServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.rtsp: ServerConnection[ViewerSession] = ServerConnection(server.table, server_name=SERVER)
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        self.peer_host: str = peer[0]
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

    async def run(self) -> None:
        try:
            while not self.rtsp.closed:
                timeout = None if self.sessions else IDLE_CONNECTION_TIMEOUT
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                self.rtsp.receive_data(data)
                while (event := self.rtsp.next_event()) is not None:
                    if isinstance(event, Reply):
                        self.writer.write(event.data)
                    elif isinstance(event, FrameReceived):
                        self._frame_from_viewer(event)
                    else:
                        self.writer.write(await self.handle(event))
        except TimeoutError:
            log.info("viewer %s: idle connection closed", self.peer_host)
        except (OSError, ConnectionError) as exc:
            log.info("viewer %s: connection error %s", self.peer_host, exc)
        finally:
            if self.rtsp.closed:
                log.info("viewer %s: broke the protocol, connection closed", self.peer_host)
            for session_id in list(self.sessions):
                session = self.server.sessions.get(session_id)
                if session is not None:
                    await self.server.end_session(session, "connection closed", teardown=False)
            self.writer.close()

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
                return self.rtsp.respond(headers=[("Range", reply.session.range or "npt=now-")])
            if isinstance(event, PauseRequested):
                await self._reply(pause=self._session_request(event.session))
                return self.rtsp.respond()
            if isinstance(event, TeardownRequested):
                await self.server.end_session(event.session, "teardown", teardown=True)
                return self.rtsp.respond()
            raise AssertionError(f"unexpected event {event!r}")
        except Exception as exc:    # MsmError: its status; anything else is a bug of ours: 500
            if request is not None:
                if isinstance(exc, MsmError):
                    log.info("viewer %s: %s %s -> %d %s", self.peer_host, request.method, request.uri,
                             exc.status, exc.reason)
                else:
                    log.exception("viewer %s: %s %s failed", self.peer_host, request.method, request.uri)
            return self.rtsp.fail(exc)

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
            raise UpstreamError(f"upstream SDP is malformed: {exc}") from exc
        info = StreamInfo(reply.describe.stream_id, len(sdp.media))
        self.streams[name] = info
        return info, sdp

    async def _describe(self, event: DescribeRequested) -> bytes:
        _info, sdp = await self._stream(event.request.uri, event.stream)
        return self.rtsp.respond_describe(sdp, self._base_url(event.request.uri, event.stream),
                                          self.local_host)

    async def _setup(self, event: SetupRequested[ViewerSession]) -> bytes:
        request = event.request
        info = self.streams.get(event.stream)
        if info is None:
            info, _ = await self._stream(request.uri, event.stream)
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
            rtp_port, rtcp_port = setup.bridge.ports
            destination = pb.Endpoint(host=self.server.media_host, rtp_port=rtp_port, rtcp_port=rtcp_port)
        else:
            assert spec.client_port is not None
            destination = pb.Endpoint(host=self.peer_host, rtp_port=spec.client_port[0],
                                      rtcp_port=spec.client_port[1])
        try:
            reply = await self._reply(setup=pb.SetupRequest(
                url=request.uri, original_dst=self.original_dst, stream_id=info.stream_id,
                track_index=plan.track, session_id=session.session_id, destination=destination,
                viewer_host=self.peer_host))
        except BaseException:
            if setup.bridge is not None:
                setup.bridge.close()
            raise
        source = reply.setup.source
        if setup.bridge is not None:
            setup.bridge.set_peer(source.host, source.rtp_port, source.rtcp_port)
            answer = TransportSpec(protocol="RTP/AVP/TCP", interleaved=spec.interleaved)
        else:
            answer = TransportSpec(client_port=spec.client_port, server_port=(source.rtp_port, source.rtcp_port),
                                   source=source.host if source.host not in ("0.0.0.0", "::") else None)
        old = session.setups.get(plan.track)
        if old is not None and old.bridge is not None:
            old.bridge.close()
        session.setups[plan.track] = setup
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
