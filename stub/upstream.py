"""Upstream sessions: the stub's RTSP client side, one session per stream.

The control plane tells the stub next to a source to open (DESCRIBE), set up
(SETUP every track towards the proxy's ingress ports), play and close. The
session keeps itself alive (GET_PARAMETER/OPTIONS at half the session timeout)
and, when the upstream drops or restarts, reconnects with back-off and restores
the same SETUPs and PLAY, so viewers never have to reconnect.

The route URL may carry the camera's credentials as userinfo: the connection
(:mod:`msm.stub.rtsp_client`) authenticates with them and strips them from every
request; here they are kept out of control URLs, logs and everything reported to
the control plane. Each SETUP reports where the track's RTP/RTCP will come from
(``CommandResult.sources``) so the proxy can drop anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from msm.protos import msm_pb2 as pb
from msm.protos.status import OK, status_of
from msm.runtime.backoff import Backoff
from msm.runtime.redact import redact_url, strip_userinfo
from msm.sdk.errors import (
    MsmError,
    NotImplemented_,
    Refused,
    RtspError,
    SdpError,
    SessionNotFound,
    UpstreamError,
)
from msm.sdk.rtsp import (
    Response,
    TransportSpec,
    parse_public,
    parse_session,
    parse_transport,
)
from msm.sdk.sdp import SessionDescription, resolve_control

from .bridge import UdpPair, UdpRelay
from .rtsp_client import RtspClientConnection

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25   # seconds before the first reconnect attempt
BACKOFF_MAX = 2.0      # cap: an upstream back after a restart is re-played within ~2 s
BACKOFF_JITTER = 0.2   # ±20 %: the sessions of one restarted upstream do not reconnect in step

EventSink = Callable[[pb.UpstreamEvent], None]


@dataclass
class UpstreamTrack:
    index: int
    kind: str
    control: str
    clock_rate: int
    encoding: str

    def to_pb(self) -> pb.Track:
        return pb.Track(index=self.index, kind=self.kind, control=self.control,
                        clock_rate=self.clock_rate, encoding=self.encoding)


def tracks_of(sdp: SessionDescription, base: str) -> list[UpstreamTrack]:
    tracks = []
    for index, media in enumerate(sdp.media):
        pt = int(media.formats[0]) if media.formats and media.formats[0].isdigit() else -1
        rtpmap = media.rtpmap(pt) if pt >= 0 else None
        encoding = f"{rtpmap.encoding}/{rtpmap.clock_rate}" if rtpmap else ""
        tracks.append(UpstreamTrack(index=index, kind=media.kind,
                                    control=strip_userinfo(resolve_control(base, media.control)),
                                    clock_rate=media.clock_rate or 0, encoding=encoding))
    return tracks


class UpstreamSession:
    def __init__(self, stream_id: str, url: str, *, transport: str = "", on_event: EventSink,
                 request_timeout: float = 5.0, keepalive: float | None = None) -> None:
        self.stream_id = stream_id
        self.url = url                      # may hold credentials: give it only to the connection
        self.shown_url = redact_url(url)    # for logs
        self.transport = transport          # "", "udp" or "tcp"
        self.use_tcp = transport == "tcp"
        self.on_event = on_event
        self.request_timeout = request_timeout
        self.keepalive_override = keepalive
        self.conn: RtspClientConnection | None = None
        self.sdp_text = ""
        self.tracks: list[UpstreamTrack] = []
        self.aggregate_url = strip_userinfo(url)
        self.session_id: str | None = None
        self.session_timeout = 60
        self.public: frozenset[str] = frozenset()
        self.destinations: dict[int, pb.Endpoint] = {}
        self.sources: dict[int, pb.SourceFilter] = {}
        self.bridges: dict[int, UdpPair] = {}
        self.relays: dict[int, UdpRelay] = {}
        self.want_play = False
        self.closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None

    # -- commands from the control plane -------------------------------------------------
    async def open(self) -> tuple[str, list[UpstreamTrack]]:
        await self._connect_and_describe()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"upstream-{self.stream_id}")
        return self.sdp_text, self.tracks

    async def setup(self, destinations: dict[int, pb.Endpoint]) -> list[pb.SourceFilter]:
        """SETUP every track towards ``destinations``; where each one's media will come from, in order."""
        self.destinations = dict(destinations)
        await self._setup_all()
        return [self.sources.get(index, pb.SourceFilter()) for index in destinations]

    async def play(self) -> None:
        self.want_play = True
        await self._play()

    async def close(self) -> None:
        self.closing = True
        for task in (self._supervisor, self._keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.conn is not None and self.session_id is not None and not self.conn.closed.is_set():
            with contextlib.suppress(MsmError):
                await self.conn.request("TEARDOWN", self.aggregate_url, {"Session": self.session_id},
                                        timeout=2.0)
        await self._drop_connection()

    # -- RTSP steps ------------------------------------------------------------------------
    async def _connect_and_describe(self) -> None:
        conn = RtspClientConnection(self.url, on_frame=self._on_frame, timeout=self.request_timeout)
        await conn.connect()
        self.conn = conn
        self.session_id = None
        options = await conn.request("OPTIONS", conn.url)
        if options.status == 200:
            with contextlib.suppress(RtspError):
                self.public = parse_public(options.headers.get("Public") or "")
        reply = await conn.request("DESCRIBE", conn.url, {"Accept": "application/sdp"})
        self._check(reply, "DESCRIBE")
        try:
            sdp = SessionDescription.parse(reply.body)
        except SdpError as exc:
            raise UpstreamError(f"upstream SDP is malformed: {exc}") from exc
        if not sdp.media:
            raise UpstreamError("upstream SDP has no media")
        base = strip_userinfo(reply.headers.get("Content-Base") or reply.headers.get("Content-Location")
                              or conn.url)
        self.sdp_text = reply.body.decode("utf-8", "replace")
        self.tracks = tracks_of(sdp, base)
        self.aggregate_url = strip_userinfo(resolve_control(base, sdp.control))

    def _check(self, reply: Response, what: str) -> None:
        if reply.status != 200:
            raise UpstreamError(f"upstream {what}: {reply.status} {reply.reason}", status=reply.status)

    async def _setup_all(self) -> None:
        for index in sorted(self.destinations):
            try:
                await self._setup_track(index)
            except UpstreamError as exc:
                if exc.status != 461 or self.transport or self.use_tcp:
                    raise
                log.info("stream %s: upstream refused UDP (461), switching to TCP", self.stream_id)
                self.use_tcp = True
                await self._setup_track(index)

    async def _setup_track(self, index: int) -> None:
        assert self.conn is not None
        track = self.tracks[index]
        dest = self.destinations[index]
        if self.transport == "multicast":
            # The server's group (RFC 2326 12.39: it chooses): the proxy joins it (multicast in).
            spec = TransportSpec(unicast=False)
        elif self.use_tcp:
            bridge = self.bridges.get(index)
            if bridge is None:
                bridge = await UdpPair.open(
                    self.conn.local_host or "127.0.0.1", _ignore,
                    partial(self._rtcp_to_upstream, 2 * index + 1))
                self.bridges[index] = bridge
            bridge.set_peer(dest.host, dest.rtp_port, dest.rtcp_port)
            spec = TransportSpec(protocol="RTP/AVP/TCP", interleaved=(2 * index, 2 * index + 1))
        elif dest.host in (self.conn.local_host, "") or self._same_host(dest.host):
            spec = TransportSpec(client_port=(dest.rtp_port, dest.rtcp_port))
        else:
            # The proxy is on another host (its node): servers send media only to
            # the client's own address, so receive it here and relay it.
            relay = self.relays.get(index)
            if relay is None:
                relay = await UdpRelay.open(self.conn.local_host, dest.host, dest.rtp_port, dest.rtcp_port,
                                             self.conn.peer_host)
                self.relays[index] = relay
            spec = TransportSpec(client_port=relay.ports)
        headers = {"Transport": str(spec)}
        if self.session_id:
            headers["Session"] = self.session_id
        reply = await self.conn.request("SETUP", track.control, headers)
        self._check(reply, f"SETUP {track.control}")
        session = reply.headers.get("Session")
        if session:
            try:
                self.session_id, timeout = parse_session(session)
            except RtspError as exc:
                raise UpstreamError(f"upstream Session header is malformed: {exc}") from exc
            self.session_timeout = timeout or 60
        chosen: list[TransportSpec] = []
        with contextlib.suppress(RtspError):
            chosen = parse_transport(reply.headers.get("Transport") or "")
        if not self.use_tcp and chosen and chosen[0].lower_transport == "TCP":
            raise UpstreamError("upstream answered a UDP SETUP with TCP", status=461)
        self.sources[index] = self._source_of(index, chosen[0] if chosen else None)

    def _source_of(self, index: int, chosen: TransportSpec | None) -> pb.SourceFilter:
        """Where the proxy will see track ``index``'s RTP and RTCP come from."""
        assert self.conn is not None
        local = self.bridges.get(index) if self.use_tcp else self.relays.get(index)
        if local is not None:     # this stub's own socket pair sends it on
            return pb.SourceFilter(host=self.conn.local_host, rtp_port=local.ports[0], rtcp_port=local.ports[1])
        host = (chosen.source if chosen is not None and chosen.source else None) or self.conn.peer_host
        rtp, rtcp = (chosen.server_port if chosen is not None and chosen.server_port else (0, 0))
        found = pb.SourceFilter(host=host, rtp_port=rtp, rtcp_port=rtcp)
        if self.transport == "multicast":
            if chosen is None or chosen.unicast or not chosen.destination or chosen.port is None:
                raise UpstreamError("upstream answered a multicast SETUP without a group and ports", status=461)
            found.group.CopyFrom(pb.Endpoint(host=chosen.destination, rtp_port=chosen.port[0],
                                             rtcp_port=chosen.port[1]))
        return found

    def _same_host(self, host: str) -> bool:
        """Loopback addresses all reach this host (local mode binds the proxy to 127.0.0.1)."""
        assert self.conn is not None
        return host.startswith("127.") and self.conn.local_host.startswith("127.")

    async def _play(self) -> None:
        assert self.conn is not None
        headers = {"Range": "npt=0.000-"}
        if self.session_id:
            headers["Session"] = self.session_id
        reply = await self.conn.request("PLAY", self.aggregate_url, headers)
        self._check(reply, "PLAY")
        self._emit(pb.UpstreamEvent.PLAYING, pb.UpstreamEvent.STARTED)
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.create_task(self._keep_alive(), name=f"keepalive-{self.stream_id}")

    # -- media over TCP ---------------------------------------------------------------------
    def _on_frame(self, channel: int, payload: bytes) -> None:
        bridge = self.bridges.get(channel // 2)
        if bridge is None:
            return
        if channel % 2 == 0:
            bridge.send_rtp(payload)
        else:
            bridge.send_rtcp(payload)

    def _rtcp_to_upstream(self, channel: int, data: bytes) -> None:
        if self.conn is not None:
            self.conn.send_frame(channel, data)

    # -- liveness -----------------------------------------------------------------------------
    async def _keep_alive(self) -> None:
        while True:
            interval = self.keepalive_override or max(self.session_timeout / 2, 1.0)
            await asyncio.sleep(interval)
            conn = self.conn
            if conn is None or conn.closed.is_set():
                return
            method = "GET_PARAMETER" if "GET_PARAMETER" in self.public else "OPTIONS"
            headers = {"Session": self.session_id} if self.session_id else {}
            try:
                await conn.request(method, self.aggregate_url, headers)
            except MsmError as exc:
                log.warning("stream %s: keep-alive failed (%s); reconnecting", self.stream_id, exc)
                await conn.close()
                return

    async def _supervise(self) -> None:
        while not self.closing:
            conn = self.conn
            if conn is not None:
                await conn.closed.wait()
            if self.closing:
                return
            log.warning("stream %s: upstream %s lost; reconnecting", self.stream_id, self.shown_url)
            self._emit(pb.UpstreamEvent.DOWN, pb.UpstreamEvent.CONNECTION_LOST)
            await self._reconnect()

    async def _reconnect(self) -> None:
        backoff = Backoff(first=BACKOFF_FIRST, maximum=BACKOFF_MAX, jitter=BACKOFF_JITTER)
        while not self.closing:
            attempt = backoff.attempt + 1
            await self._drop_connection(keep_bridges=True)
            self._emit(pb.UpstreamEvent.CONNECTING, pb.UpstreamEvent.RECONNECT_ATTEMPT, f"attempt {attempt}")
            try:
                await self._restore()
                log.info("stream %s: upstream recovered after %d attempt(s)", self.stream_id, attempt)
                self._emit(pb.UpstreamEvent.PLAYING if self.want_play else pb.UpstreamEvent.CONNECTING,
                           pb.UpstreamEvent.RECONNECTED, sources=self.sources)
                return
            except (MsmError, IndexError, KeyError) as exc:
                log.info("stream %s: reconnect attempt %d failed: %s; next in %.2fs",
                         self.stream_id, attempt, exc, backoff.delay)
            await backoff.wait()

    async def _restore(self) -> None:
        """Connect again and replay DESCRIBE, the SETUPs and PLAY as they were."""
        old_tracks = [(t.kind, t.encoding) for t in self.tracks]
        await self._connect_and_describe()
        if [(t.kind, t.encoding) for t in self.tracks] != old_tracks:
            log.warning("stream %s: upstream tracks changed after reconnect", self.stream_id)
        if self.destinations:
            await self._setup_all()
        if self.want_play:
            await self._play()

    async def _drop_connection(self, keep_bridges: bool = False) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
        if not keep_bridges:
            for bridge in self.bridges.values():
                bridge.close()
            self.bridges.clear()
            for relay in self.relays.values():
                relay.close()
            self.relays.clear()

    def _emit(self, state: pb.UpstreamEvent.State, cause: pb.UpstreamEvent.Cause, detail: str = "",
              sources: Mapping[int, pb.SourceFilter] | None = None) -> None:
        self.on_event(pb.UpstreamEvent(stream_id=self.stream_id, state=state, cause=cause, detail=detail,
                                       sources=dict(sources or {})))


class UpstreamManager:
    """Executes the control plane's upstream commands for this stub."""

    def __init__(self, on_event: EventSink, *, request_timeout: float = 5.0) -> None:
        self.sessions: dict[str, UpstreamSession] = {}
        self.on_event = on_event
        self.request_timeout = request_timeout

    async def handle(self, command: pb.ControlCommand) -> pb.CommandResult:
        """Run ``command``; a failure goes back in the result's status as the error tree has it."""
        result = pb.CommandResult(command_id=command.command_id, status=OK)
        kind = command.WhichOneof("kind")
        try:
            if kind == "open":
                await self._open(command.open, result)
            elif kind == "setup":
                session = self._session(command.setup.stream_id)
                result.sources.extend(await session.setup(dict(zip(
                    command.setup.track_indexes, command.setup.destinations, strict=True))))
            elif kind == "play":
                await self._session(command.play.stream_id).play()
            elif kind == "close":
                closing = self.sessions.pop(command.close.stream_id, None)
                if closing is not None:
                    await closing.close()
            else:
                raise NotImplemented_(f"unknown command {kind}")
        except MsmError as exc:
            log.warning("upstream command %s failed: %s", kind, exc)
            result.status.CopyFrom(status_of(exc))
        except ValueError as exc:   # a setup whose track and destination lists differ in length
            result.status.CopyFrom(status_of(Refused(str(exc), status=400)))
        return result

    def _session(self, stream_id: str) -> UpstreamSession:
        session = self.sessions.get(stream_id)
        if session is None:
            raise SessionNotFound(f"no upstream session for {stream_id}")
        return session

    async def _open(self, command: pb.OpenUpstream, result: pb.CommandResult) -> None:
        old = self.sessions.pop(command.stream_id, None)
        if old is not None:
            await old.close()
        session = UpstreamSession(command.stream_id, command.url, transport=command.transport,
                                  on_event=self.on_event, request_timeout=self.request_timeout)
        try:
            sdp, tracks = await session.open()
        except BaseException:
            await session.close()
            raise
        self.sessions[command.stream_id] = session
        result.sdp = sdp
        result.tracks.extend(t.to_pb() for t in tracks)

    async def close(self) -> None:
        for stream_id in list(self.sessions):
            await self.sessions.pop(stream_id).close()


def _ignore(data: bytes) -> None:
    """RTP from the proxy towards an upstream over TCP: there is none to forward."""
