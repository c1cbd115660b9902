"""RTSP sessions as the server keeps them: one table shared by all connections.

Part of :mod:`msm.sdk.rtsp_server` (import from there).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from msm.sdk.errors import SessionNotFound
from msm.sdk.rtsp import TransportSpec, format_session, parse_session
from msm.sdk.rtsp_state import State

__all__ = ["Authenticator", "ClientIdentity", "RtspSession", "SessionTable", "session_tag"]

# Bytes of randomness in a session id: 96 bits from ``secrets``, so an id can be
# neither guessed nor enumerated (RFC 2326 asks for at least 8 octets).
SESSION_ID_BYTES = 12
# Characters of a session id shown in logs: enough to tell sessions apart, far
# too few to take one over.
_TAG_CHARS = 6


def session_tag(session_id: str) -> str:
    """How a session id appears in logs: its first characters only, never the whole id."""
    return session_id[:_TAG_CHARS] + "..."


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a request comes from: the client's address and, with authentication on, its user.

    A session answers only to the identity that set it up (see
    :meth:`SessionTable.find`); the empty ``user`` means no authentication.
    """

    host: str
    user: str = ""


class Authenticator(Protocol):
    """Viewer authentication as the server connection uses it (``msm.sdk.rtsp_auth.ServerAuth``)."""

    def challenges(self, *, stale: bool = False) -> list[str]:
        """The ``WWW-Authenticate`` values of a 401 (``stale``: the nonce only expired)."""
        ...

    def check(self, method: str, uri: str, authorization: str | None) -> str:
        """The user ``authorization`` proves, or raise ``Unauthorized``."""
        ...


@dataclass(eq=False)
class RtspSession:
    """One RTSP session: an id, the stream it aggregates and its state.

    ``owner`` is the :class:`ServerConnection` that set it up (only that connection
    may add tracks to it; ``None`` once it closed and the session lives on, until
    another connection of its client sets up a track and adopts it) and ``client`` the identity it answers to (``None``
    until the first SETUP is answered); ``tracks`` maps a set-up track to its
    transport.
    """

    session_id: str
    stream_id: str
    owner: object | None = None
    client: ClientIdentity | None = None
    state: State = State.INIT
    tracks: dict[int, TransportSpec] = field(default_factory=dict)
    last_seen: float = 0.0


S = TypeVar("S", bound=RtspSession)


class SessionTable(Generic[S]):
    """The sessions of one server, shared by all its connections.

    ``timeout`` (seconds) is announced in every ``Session`` header and is how long a
    session lives without a request or an RTCP frame; ``clock`` is monotonic seconds.
    """

    def __init__(self, *, timeout: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.sessions: dict[str, S] = {}

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(SESSION_ID_BYTES)

    def find(self, header: str, client: ClientIdentity | None = None) -> S:
        """The session a ``Session`` header names, marked as seen.

        454 when it is unknown or, given ``client``, when it belongs to another
        client identity: the same answer, so that a foreign session's existence
        is not revealed (session ids are published as tags at most, but a
        leaked id must not hand the session over).
        """
        session_id, _ = parse_session(header)
        session = self.sessions.get(session_id)
        if session is None or (client is not None and session.client is not None
                               and session.client != client):
            raise SessionNotFound("unknown session")
        session.last_seen = self.clock()
        return session

    def header(self, session: RtspSession) -> tuple[str, str]:
        return ("Session", format_session(session.session_id, self.timeout))

    def touch_stream(self, stream_id: str) -> None:
        """Restart the timeout of every session of ``stream_id``."""
        now = self.clock()
        for session in self.sessions.values():
            if session.stream_id == stream_id:
                session.last_seen = now

    def expired(self, paused_streams: Iterable[str] = ()) -> list[S]:
        """Sessions past their timeout, except those of ``paused_streams``."""
        paused = set(paused_streams)
        now = self.clock()
        return [s for s in self.sessions.values()
                if s.stream_id not in paused and now - s.last_seen > self.timeout]
