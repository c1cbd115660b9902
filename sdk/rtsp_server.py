"""The server side of an RTSP connection, sans-IO: bytes in, events out.

A :class:`ServerConnection` is one viewer's TCP connection.  The application feeds it
what arrives (:meth:`ServerConnection.receive_data`) and takes events out
(:meth:`ServerConnection.next_event`) until ``None``:

* :class:`Reply`: the connection answered a request itself (OPTIONS, GET_PARAMETER,
  SET_PARAMETER, and every refusal: 400, 405, 454, 455, 459, 460, 461, 501, 551...);
  write ``data``, and close the connection when ``close`` is set (a peer that broke
  the protocol);
* :class:`DescribeRequested`, :class:`SetupRequested`, :class:`PlayRequested`,
  :class:`PauseRequested`, :class:`TeardownRequested`: a valid request the
  application must act on; it answers with :meth:`ServerConnection.respond` (or the
  SETUP and DESCRIBE helpers), or :meth:`ServerConnection.fail` with the error, each
  returning the bytes to write.  Until then no further event comes out, so
  pipelined requests are answered in order;
* :class:`FrameReceived`: an interleaved ``$`` frame on a channel of a set-up track.

RTSP sessions outlive connections' requests and are looked up across connections,
so they live in a :class:`SessionTable` that every connection of a server shares.
The per-session state machine is :mod:`msm.sdk.rtsp_state`, the events are in
:mod:`msm.sdk.rtsp_events`.

:func:`error_response` is the RTSP boundary of the exception tree
(:mod:`msm.sdk.errors`): every :class:`~msm.sdk.errors.MsmError` becomes a reply with
its ``status``, its reason as a text body, and (for a refusal) its ``headers``.
Nothing here touches a socket, a clock of its own or an event loop.
"""

from __future__ import annotations

import email.utils
import logging
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Generic

from msm.sdk.errors import (
    MsmError,
    NotFound,
    NotImplemented_,
    OptionNotSupported,
    Refused,
    ResourceExhausted,
    RtspError,
    SessionNotFound,
    Unauthorized,
    UnsupportedTransport,
)
from msm.sdk.rtsp import (
    Headers,
    InterleavedFrame,
    Request,
    Response,
    RtspReader,
    TransportSpec,
    parse_transport,
)
from msm.sdk.rtsp_events import (
    DescribeRequested,
    FrameReceived,
    MulticastGroup,
    PauseRequested,
    PlayRequested,
    Reply,
    ServerEvent,
    SetupPlan,
    SetupRequested,
    TeardownRequested,
)
from msm.sdk.rtsp_fields import split_url, stream_url, strip_userinfo
from msm.sdk.rtsp_sessions import Authenticator, ClientIdentity, RtspSession, S, SessionTable, session_tag
from msm.sdk.rtsp_state import State, next_state
from msm.sdk.sdp import Connection, SessionDescription

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_UNSUPPORTED",
    "MAX_SESSIONS_PER_CONNECTION",
    "MulticastGroup",
    "SUPPORTED",
    "Authenticator",
    "ClientIdentity",
    "DescribeRequested",
    "FrameReceived",
    "PauseRequested",
    "PlayRequested",
    "Reply",
    "RtspSession",
    "ServerConnection",
    "ServerEvent",
    "SessionTable",
    "SetupPlan",
    "SetupRequested",
    "TeardownRequested",
    "error_response",
    "frame_prefix",
    "session_tag",
    "split_url",
    "stream_url",
    "strip_userinfo",
    "viewer_sdp",
]

SUPPORTED = ("OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
             "SET_PARAMETER")
# Methods of RFC 2326 a viewer-facing server has no use for: 405 with Allow, not 501.
KNOWN_UNSUPPORTED = ("ANNOUNCE", "RECORD", "REDIRECT")
# '$', channel, 16-bit length (RFC 2326 section 10.12); packed per packet on the hot path.
_FRAME_HEADER = struct.Struct("!BBH")
# Interleaved channels are one byte; pairs start at even numbers below 254.
_LAST_PAIR = 254
# Sessions one connection may hold. A player needs one per stream it plays (one
# session aggregates all of a stream's tracks); 16 covers a multi-view client,
# while a connection asking for thousands would cost the proxy a leg per track each.
MAX_SESSIONS_PER_CONNECTION = 16


def frame_prefix(channel: int, length: int) -> bytes:
    """The 4-byte header of an interleaved frame of ``length`` bytes on ``channel``."""
    return _FRAME_HEADER.pack(0x24, channel, length)


def error_response(exc: BaseException, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """The RTSP reply to ``exc``: the one place an error becomes an RTSP status.

    An :class:`MsmError` answers with its ``status``, its reason as a plain-text body
    and, for a :class:`Refused`, its extra ``headers``; anything else is a bug of
    ours and answers 500 without detail.
    """
    fields = list(headers)
    if not isinstance(exc, MsmError):
        return Response(status=500, headers=Headers(fields))
    if isinstance(exc, Refused):
        fields += list(exc.headers.items())
    body = (exc.reason + "\r\n").encode() if exc.reason else b""
    if body:
        fields.append(("Content-Type", "text/plain"))
    return Response(status=exc.status, headers=Headers(fields), body=body)


def viewer_sdp(sdp: SessionDescription, local_host: str, group: MulticastGroup | None = None) -> bytes:
    """An upstream's description as viewers get it: ``trackN`` controls, no addresses; with a
    multicast ``group``, its ``c=IN IP4 group/ttl`` and track ``n`` on ``port + 2n`` (RFC 4566 5.7)."""
    media = [m.with_control(f"track{i}").with_connection(None).with_port(group.port + 2 * i if group else 0)
             for i, m in enumerate(sdp.media)]
    if group is not None:
        connection = Connection(addrtype="IP4", address=f"{group.address}/{group.ttl}")
    else:
        ipv6 = ":" in local_host
        connection = Connection(addrtype="IP6" if ipv6 else "IP4", address="::" if ipv6 else "0.0.0.0")
    return bytes(sdp.with_media(media).with_control("*").with_connection(connection))


# --------------------------------------------------------------------------- connection


class ServerConnection(Generic[S]):
    """One RTSP connection to a viewer, as a state machine (see the module docstring)."""

    def __init__(self, table: SessionTable[S], *, server_name: str = "msm-stub/0.1",
                 date: Callable[[], str] = lambda: email.utils.formatdate(usegmt=True),
                 reader: RtspReader | None = None, peer_host: str = "",
                 auth: Authenticator | None = None,
                 max_sessions: int = MAX_SESSIONS_PER_CONNECTION,
                 secure: bool = False, limit_hits: Counter[str] | None = None) -> None:
        """``peer_host`` is the client's address (part of its sessions' owner identity);
        with ``auth`` every request but OPTIONS needs credentials and the user it
        proves is part of the identity too; ``secure`` is a TLS connection (RTSPS),
        which carries media interleaved only; ``limit_hits`` counts refusals at a bound.
        """
        self.table = table
        self.server_name = server_name
        self._date = date
        self._reader = reader or RtspReader()
        self.peer_host = peer_host
        self.auth = auth
        self.max_sessions = max_sessions
        self.secure = secure
        self.limit_hits: Counter[str] = limit_hits if limit_hits is not None else Counter()
        #: The user the latest request proved ("" without authentication).
        self.user = ""
        self._pending: Request | None = None
        self._pending_session: S | None = None
        # The state a 200 to the pending PLAY or PAUSE moves its session to.
        self._next_state: State | None = None
        self._closed = False
        #: Sessions set up on this connection.
        self.sessions: set[str] = set()
        #: Interleaved channel -> (session, track) for the tracks set up over TCP.
        self.channels: dict[int, tuple[S, int]] = {}

    @property
    def client(self) -> ClientIdentity:
        """Who the current request comes from: the owner identity its sessions answer to."""
        return ClientIdentity(self.peer_host, self.user)

    @property
    def partial(self) -> bool:
        """Part of a message has arrived and the rest has not (the header deadline runs)."""
        return self._reader.partial

    # -- input -----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; an empty ``data`` is not special (the adapter sees EOF)."""
        if not self._closed:
            self._reader.feed(data)

    def next_event(self) -> ServerEvent[S] | None:
        """The next event, or ``None`` when more data (or an answer) is needed."""
        while not self._closed and self._pending is None:
            try:
                event = self._reader.next_event()
            except RtspError as exc:
                return self._fatal(exc)
            if event is None:
                return None
            if isinstance(event, InterleavedFrame):
                frame = self._frame(event)
                if frame is None:
                    continue    # a channel nothing was set up on: ignored
                return frame
            if isinstance(event, Response):
                return self._fatal(RtspError("a viewer must not send responses", status=400))
            return self._request(event)
        return None

    def _fatal(self, exc: RtspError) -> Reply:
        self._closed = True
        headers = Headers([("Server", self.server_name), ("Connection", "close")])
        return Reply(bytes(Response(status=exc.status, headers=headers)), close=True)

    def _frame(self, frame: InterleavedFrame) -> FrameReceived[S] | None:
        entry = self.channels.get(frame.channel)
        if entry is None:
            return None
        session, track = entry
        session.last_seen = self.table.clock()
        spec = session.tracks.get(track)
        rtcp = spec is not None and spec.interleaved is not None and frame.channel == spec.interleaved[1]
        return FrameReceived(session, track, rtcp, frame.payload)

    def _request(self, request: Request) -> ServerEvent[S] | None:
        self._pending = request
        self._pending_session = None
        self._next_state = None
        cseq = request.headers.get("CSeq")
        if cseq is None or not cseq.strip().isdigit():
            data = bytes(Response(status=400, headers=Headers(self._base_headers()),
                                  body=b"missing or bad CSeq\r\n"))
            self._pending = None
            return Reply(data)
        try:
            event = self._dispatch(request)
        except Exception as exc:   # MsmError: its status; anything else is a bug of ours: 500
            if not isinstance(exc, MsmError):
                log.exception("%s %s failed", request.method, strip_userinfo(request.uri))
            return Reply(self.fail(exc))
        if event is not None:
            return event
        public = [("Public", ", ".join(SUPPORTED))] if request.method == "OPTIONS" else []
        return Reply(self.respond(headers=public))

    def _dispatch(self, request: Request) -> ServerEvent[S] | None:
        """Validate ``request``; ``None`` when the connection answers it with a plain 200."""
        require = request.headers.get("Require")
        if require:
            raise OptionNotSupported("no options supported", headers={"Unsupported": require})
        method = request.method
        if self.auth is not None and method != "OPTIONS":
            self.user = self.auth.check(method, request.uri, request.headers.get("Authorization"))
        if method in KNOWN_UNSUPPORTED:
            raise Refused(f"{method} is not supported", status=405, headers={"Allow": ", ".join(SUPPORTED)})
        if method not in SUPPORTED:
            raise NotImplemented_(f"{method} is not implemented")
        if method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER"):
            self._pending_session = self._session(request, required=False)
            if method == "SET_PARAMETER" and request.body.strip():
                raise Refused("no parameters can be set", status=451)
            return None
        if method == "DESCRIBE":
            return self._describe(request)
        if method == "SETUP":
            return self._setup(request)
        session = self._session(request, required=True)
        assert session is not None
        self._pending_session = session
        track = self._track_of(request, session)
        if method == "TEARDOWN":
            return TeardownRequested(request, session, track)
        if track is not None:
            raise Refused(f"{method} controls the whole session: use the stream's URL", status=460)
        self._next_state = next_state(session.state, method)   # 455 before anything is asked of anyone
        if method == "PLAY":
            return PlayRequested(request, session)
        return PauseRequested(request, session)

    @staticmethod
    def _track_of(request: Request, session: RtspSession) -> int | None:
        """The track a PLAY, PAUSE or TEARDOWN URL names apart from its session's others; ``None``:
        the whole session (the stream's URL, or the URL of a session's only track).

        A track URL of a session with several tracks is a per-track request (RFC 2326 1.3),
        404 when the session has no such track.
        """
        _stream, track = split_url(request.uri)
        if track is None or set(session.tracks) == {track}:
            return None
        if track not in session.tracks:
            raise NotFound(f"track {track} is not set up in this session")
        return track

    def _session(self, request: Request, *, required: bool) -> S | None:
        value = request.headers.get("Session")
        if value is None:
            if required:
                raise SessionNotFound("Session header required")
            return None
        return self.table.find(value, self.client)

    @staticmethod
    def _describe(request: Request) -> DescribeRequested:
        accept = request.headers.get("Accept")
        if accept and "application/sdp" not in accept and "*/*" not in accept:
            raise Refused("only application/sdp descriptions are offered", status=406)
        stream, track = split_url(request.uri)
        if track is not None or not stream:
            raise NotFound("DESCRIBE names a stream, not a track")
        return DescribeRequested(request, stream)

    def _setup(self, request: Request) -> SetupRequested[S]:
        stream, track = split_url(request.uri)
        session = self._session(request, required=False)
        if session is not None and session.owner is not None and session.owner is not self:
            # Its tracks' channels live on the connection that set it up.
            raise SessionNotFound("unknown session")
        if session is None and len(self.sessions) >= self.max_sessions:
            self.limit_hits["sessions_per_connection"] += 1
            raise ResourceExhausted(f"at most {self.max_sessions} sessions per connection")
        self._pending_session = session
        return SetupRequested(request, stream, track, session)

    # -- SETUP -------------------------------------------------------------------------
    def plan_setup(self, event: SetupRequested[S], stream_id: str, tracks: int) -> SetupPlan:
        """Check a SETUP against its stream (``tracks`` of them) and choose the transport.

        Raises 459 for a session of another stream or a track-less URL of a
        multi-track stream, 404 for a track the stream lacks, 455 for a state that
        allows no SETUP and 461 for a transport the mesh cannot serve.
        """
        session, track = event.session, event.track
        if session is not None and session.stream_id != stream_id:
            raise Refused("a session aggregates one stream only", status=459)
        if track is None:
            if tracks != 1:
                raise Refused("SETUP must name a track of this multi-track stream", status=459)
            track = 0
        if track >= tracks:
            raise NotFound(f"no track {track} in {event.stream}")
        if session is not None:
            next_state(session.state, "SETUP")
        return SetupPlan(track, self._choose_transport(event.request))

    def _choose_transport(self, request: Request) -> TransportSpec:
        value = request.headers.get("Transport")
        if not value:
            raise UnsupportedTransport("Transport header required")
        used = set(self.channels)
        for spec in parse_transport(value):
            if not spec.protocol.startswith("RTP/AVP"):
                continue
            if not spec.unicast:
                if spec.lower_transport == "UDP" and not self.secure:
                    # The group is the mesh's choice (the reply says it); a destination asked is ignored.
                    return TransportSpec(unicast=False)
                continue
            if self.secure and spec.lower_transport != "TCP":
                continue    # media over UDP would leave a TLS connection in clear
            if spec.lower_transport == "TCP":
                channels = spec.interleaved
                if channels is None or channels[0] in used or channels[1] in used:
                    free = next((c for c in range(0, _LAST_PAIR, 2) if c not in used and c + 1 not in used), None)
                    if free is None:
                        raise ResourceExhausted("no interleaved channel pair left on this connection")
                    channels = (free, free + 1)
                return TransportSpec(protocol="RTP/AVP/TCP", interleaved=channels)
            if spec.client_port is not None and spec.client_port[0] > 0:
                return TransportSpec(client_port=spec.client_port)
        if self.secure:
            raise UnsupportedTransport("RTSPS carries media interleaved only (RTP/AVP/TCP): "
                                       "over UDP it would travel in clear")
        raise UnsupportedTransport(
            "only RTP/AVP over UDP (client_port, or multicast) or TCP (interleaved) is supported")

    def respond_setup(self, session: S, plan: SetupPlan, answer: TransportSpec) -> bytes:
        """Answer a SETUP that the application carried out for ``session``.

        A new session (not yet in the table) is added to it and owned by this
        connection; the track's interleaved channels start routing frames.
        """
        created = session.session_id not in self.table.sessions
        previous = session.tracks.get(plan.track)
        if previous is not None and previous.interleaved is not None:
            for channel in previous.interleaved:   # a track set up again frees its old pair
                if self.channels.get(channel) == (session, plan.track):
                    del self.channels[channel]
        session.tracks[plan.track] = plan.transport
        session.state = next_state(session.state, "SETUP")
        if created:
            session.owner = self
            session.client = self.client
            session.last_seen = self.table.clock()
            self.table.sessions[session.session_id] = session
            self.sessions.add(session.session_id)
        elif session.owner is None:   # its connection closed (a UDP session lives on): this one adopts it
            session.owner = self
            self.sessions.add(session.session_id)
        if plan.transport.interleaved is not None:
            for channel in plan.transport.interleaved:
                self.channels[channel] = (session, plan.track)
        self._pending_session = session
        return self.respond(headers=[("Transport", str(answer))])

    # -- answers -----------------------------------------------------------------------
    def respond(self, status: int = 200, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> bytes:
        """Answer the pending request; a 200 to PLAY or PAUSE moves its session's state.

        The reply carries CSeq, Server, Date and (but to TEARDOWN) the session.
        """
        request, session = self._take_pending()
        fields = self._base_headers(request)
        if session is not None and request.method != "TEARDOWN":
            fields.append(self.table.header(session))
        if status == 200 and session is not None and self._next_state is not None:
            session.state = self._next_state
        fields += list(headers)
        return bytes(Response(status=status, headers=Headers(fields), body=body))

    def respond_describe(self, sdp: SessionDescription, base_url: str, local_host: str,
                         group: MulticastGroup | None = None) -> bytes:
        """Answer a DESCRIBE with the viewer's view of ``sdp`` (see :func:`viewer_sdp`)."""
        return self.respond(headers=[("Content-Base", base_url + "/"), ("Content-Type", "application/sdp")],
                            body=viewer_sdp(sdp, local_host, group))

    def fail(self, exc: BaseException) -> bytes:
        """Answer the pending request with the error ``exc`` (see :func:`error_response`).

        A 401 carries every challenge of the authenticator, one ``WWW-Authenticate``
        each (a client picks the strongest it knows).
        """
        request, _ = self._take_pending()
        fields = self._base_headers(request)
        if isinstance(exc, Unauthorized) and self.auth is not None:
            stale = "stale=true" in exc.headers.get("WWW-Authenticate", "").lower()
            fields += [("WWW-Authenticate", value) for value in self.auth.challenges(stale=stale)]
            exc = Unauthorized(exc.message or "credentials required")
        return bytes(error_response(exc, fields))

    def _take_pending(self) -> tuple[Request, S | None]:
        if self._pending is None:
            raise RuntimeError("no request is waiting for an answer")
        request, session = self._pending, self._pending_session
        self._pending = self._pending_session = None
        return request, session

    def _base_headers(self, request: Request | None = None) -> list[tuple[str, str]]:
        request = request or self._pending
        cseq = request.headers.get("CSeq") if request is not None else None
        return [("CSeq", cseq or "0"), ("Server", self.server_name), ("Date", self._date())]

    # -- sessions and frames -------------------------------------------------------------
    def release_track(self, session: RtspSession, track: int) -> None:
        """Forget one track of ``session`` (a per-track TEARDOWN): its channels stop routing frames."""
        session.tracks.pop(track, None)
        for channel in [c for c, (s, t) in self.channels.items() if s is session and t == track]:
            del self.channels[channel]

    def release(self, session: RtspSession) -> None:
        """Forget ``session`` here: its channels stop routing frames; a session this connection
        owned is owned by none (another connection of its client may adopt it)."""
        self.sessions.discard(session.session_id)
        for channel in [c for c, (s, _) in self.channels.items() if s is session]:
            del self.channels[channel]
        if session.owner is self:
            session.owner = None

    @property
    def pending(self) -> Request | None:
        """The request waiting for an answer, if any."""
        return self._pending

    @property
    def closed(self) -> bool:
        """The peer broke the protocol: nothing more is read."""
        return self._closed

