"""The state of a stream's one upstream session, as data.

:data:`TRANSITIONS` is the whole machine: ``(state, trigger) -> next state``.
Triggers are what the control plane did (``OPEN``, ``SET_UP``, ``PLAY``, ``CLOSE``
and their outcomes) and what the stub holding the session reported, by its typed
``UpstreamEvent.cause`` (never its free-text ``detail``). A pair that is not in
the table changes nothing: :func:`next_state` answers ``None`` and the caller
keeps the state (an event for a session that was already closed, say).

The state's value is what ``ListStreams`` shows as ``upstream_state``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from msm.protos import msm_pb2 as pb

__all__ = ["TRANSITIONS", "Trigger", "UpstreamState", "next_state", "trigger_of_event"]


class UpstreamState(enum.StrEnum):
    IDLE = "idle"               # known stream, never opened
    CONNECTING = "connecting"   # DESCRIBE under way, or the stub is reconnecting
    DESCRIBED = "described"     # opened; no proxy flows yet
    READY = "ready"             # flows on the proxy, upstream SETUP towards them
    PLAYING = "playing"
    DOWN = "down"               # open failed, or the connection dropped
    CLOSED = "closed"           # closed after the last viewer (or its stub/proxy went away)


class Trigger(enum.Enum):
    # The control plane's own steps.
    OPEN = "open"
    OPENED = "opened"
    OPEN_FAILED = "open failed"
    SET_UP = "set up"
    PLAY = "play"
    CLOSE = "close"
    # UpstreamEvent causes, from the stub holding the session.
    STARTED = "started"
    CONNECTION_LOST = "connection lost"
    RECONNECT_ATTEMPT = "reconnect attempt"
    RECONNECTED_PLAYING = "reconnected, playing"
    RECONNECTED_READY = "reconnected, not playing yet"


S, T = UpstreamState, Trigger
_ACTIVE = (S.DESCRIBED, S.READY, S.PLAYING, S.DOWN, S.CONNECTING)
_RECONNECTING = (S.DOWN, S.CONNECTING, S.READY, S.PLAYING)

_TABLE: dict[tuple[UpstreamState, Trigger], UpstreamState] = {
    # Opening: a stream with no session (new, closed, or whose last open failed).
    **{(state, T.OPEN): S.CONNECTING for state in (S.IDLE, S.CLOSED, S.DOWN, S.CONNECTING)},
    (S.CONNECTING, T.OPENED): S.DESCRIBED,
    (S.CONNECTING, T.OPEN_FAILED): S.DOWN,
    (S.DESCRIBED, T.SET_UP): S.READY,
    # The first viewer's PLAY. The stub reports STARTED before it answers the PLAY
    # command, and the upstream may already have dropped again: PLAY wins.
    **{(state, T.PLAY): S.PLAYING for state in (S.READY, S.PLAYING, S.DOWN, S.CONNECTING)},
    **{(state, T.CLOSE): S.CLOSED for state in UpstreamState},
    # What the stub reports.
    **{(state, T.STARTED): S.PLAYING for state in (S.DESCRIBED, S.READY, S.PLAYING)},
    **{(state, T.CONNECTION_LOST): S.DOWN for state in _ACTIVE},
    **{(state, T.RECONNECT_ATTEMPT): S.CONNECTING for state in _RECONNECTING},
    **{(state, T.RECONNECTED_PLAYING): S.PLAYING for state in _RECONNECTING},
    **{(state, T.RECONNECTED_READY): S.READY for state in _RECONNECTING},
}

#: ``(state, trigger) -> next state`` for every transition that changes or keeps a state.
TRANSITIONS: Mapping[tuple[UpstreamState, Trigger], UpstreamState] = MappingProxyType(_TABLE)

_BY_CAUSE: dict[int, Trigger] = {
    pb.UpstreamEvent.STARTED: T.STARTED,
    pb.UpstreamEvent.CONNECTION_LOST: T.CONNECTION_LOST,
    pb.UpstreamEvent.RECONNECT_ATTEMPT: T.RECONNECT_ATTEMPT,
}
# A stub that sets no cause: its state alone says what happened.
_BY_STATE: dict[int, Trigger] = {
    pb.UpstreamEvent.PLAYING: T.STARTED,
    pb.UpstreamEvent.DOWN: T.CONNECTION_LOST,
    pb.UpstreamEvent.CONNECTING: T.RECONNECT_ATTEMPT,
}


def next_state(state: UpstreamState, trigger: Trigger) -> UpstreamState | None:
    """The state after ``trigger`` in ``state``; ``None`` when the pair is not in the table."""
    return TRANSITIONS.get((state, trigger))


def trigger_of_event(event: pb.UpstreamEvent) -> Trigger | None:
    """The trigger an ``UpstreamEvent`` stands for, by its cause (``None``: nothing to act on)."""
    if event.cause == pb.UpstreamEvent.RECONNECTED:
        playing = event.state == pb.UpstreamEvent.PLAYING
        return T.RECONNECTED_PLAYING if playing else T.RECONNECTED_READY
    if event.cause == pb.UpstreamEvent.CAUSE_UNSPECIFIED:
        return _BY_STATE.get(event.state)
    return _BY_CAUSE.get(event.cause)
