"""RTSP sessions as the server keeps them: one table shared by all connections.

Part of :mod:`msm.sdk.rtsp_server` (import from there).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from msm.sdk.errors import SessionNotFound
from msm.sdk.rtsp import TransportSpec, format_session, parse_session
from msm.sdk.rtsp_state import State

__all__ = ["RtspSession", "SessionTable"]



@dataclass(eq=False)
class RtspSession:
    """One RTSP session: an id, the stream it aggregates and its state.

    ``owner`` is the :class:`ServerConnection` that set it up (only that connection
    may add tracks to it); ``tracks`` maps a set-up track to its transport.
    """

    session_id: str
    stream_id: str
    owner: object | None = None
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
        return secrets.token_hex(8)

    def find(self, header: str) -> S:
        """The session a ``Session`` header names, marked as seen; 454 when unknown."""
        session_id, _ = parse_session(header)
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"unknown session {session_id}")
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
