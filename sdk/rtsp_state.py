"""The RTSP server session state machine (RFC 2326 appendix A.2), as data.

:data:`TRANSITIONS` is the whole machine: ``(state, method) -> next state``.  A pair
that is not in the table is a method not valid in that state (455); a method that is
in no pair at all is not implemented (501).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from msm.sdk.errors import MethodNotValid, NotImplemented_

__all__ = ["TRANSITIONS", "State", "allowed_methods", "next_state"]


class State(enum.Enum):
    INIT = "Init"
    READY = "Ready"
    PLAYING = "Playing"
    RECORDING = "Recording"


INIT, READY, PLAYING, RECORDING = State.INIT, State.READY, State.PLAYING, State.RECORDING

# "OPTIONS, ANNOUNCE, DESCRIBE, GET_PARAMETER, SET_PARAMETER do not have any effect on
# server state" (RFC 2326 appendix A.2): they are allowed in every state and keep it.
_STATE_PRESERVING = ("OPTIONS", "ANNOUNCE", "DESCRIBE", "GET_PARAMETER", "SET_PARAMETER")

_TABLE: dict[tuple[State, str], State] = {
    # Init: no resources yet.
    (INIT, "SETUP"): READY,
    (INIT, "TEARDOWN"): INIT,
    # Ready: transport set up, nothing flowing.
    (READY, "PLAY"): PLAYING,
    (READY, "RECORD"): RECORDING,
    (READY, "PAUSE"): READY,
    (READY, "SETUP"): READY,
    (READY, "TEARDOWN"): INIT,
    # Playing: media flows to the client.
    (PLAYING, "PLAY"): PLAYING,
    (PLAYING, "PAUSE"): READY,
    (PLAYING, "SETUP"): PLAYING,
    (PLAYING, "TEARDOWN"): INIT,
    # Recording: media flows from the client.
    (RECORDING, "RECORD"): RECORDING,
    (RECORDING, "PAUSE"): READY,
    (RECORDING, "SETUP"): RECORDING,
    (RECORDING, "TEARDOWN"): INIT,
}
_TABLE.update({(state, method): state for state in State for method in _STATE_PRESERVING})

#: ``(state, method) -> next state`` for every allowed request.
TRANSITIONS: Mapping[tuple[State, str], State] = MappingProxyType(_TABLE)

_KNOWN_METHODS = frozenset(method for _, method in TRANSITIONS)


def next_state(state: State, method: str) -> State:
    """The state after the server accepts ``method`` in ``state``.

    Raises :class:`~msm.sdk.errors.MethodNotValid` (455) when the method is not valid in
    this state and :class:`~msm.sdk.errors.NotImplemented_` (501) when no state accepts
    it.  Method names are case-sensitive.
    """
    try:
        return TRANSITIONS[(state, method)]
    except KeyError:
        if method not in _KNOWN_METHODS:
            raise NotImplemented_(f"method {method!r} is not implemented") from None
        raise MethodNotValid(f"method {method} is not valid in state {state.value}") from None


def allowed_methods(state: State) -> frozenset[str]:
    """The methods accepted in ``state``, for the ``Allow`` header of a 455 answer."""
    return frozenset(method for (from_state, method) in TRANSITIONS if from_state is state)
