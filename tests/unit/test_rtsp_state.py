"""The RTSP server state machine (RFC 2326 appendix A.2)."""

from __future__ import annotations

import pytest

from msm.sdk.errors import MethodNotValid, NotImplemented_
from msm.sdk.rtsp_state import TRANSITIONS, State, allowed_methods, next_state

INIT, READY, PLAYING, RECORDING = State.INIT, State.READY, State.PLAYING, State.RECORDING

# The appendix A.2 table, written out independently of the module's own table.
EXPECTED = {
    (INIT, "SETUP"): READY,
    (INIT, "TEARDOWN"): INIT,
    (READY, "PLAY"): PLAYING,
    (READY, "RECORD"): RECORDING,
    (READY, "TEARDOWN"): INIT,
    (READY, "SETUP"): READY,
    (READY, "PAUSE"): READY,
    (PLAYING, "PAUSE"): READY,
    (PLAYING, "TEARDOWN"): INIT,
    (PLAYING, "PLAY"): PLAYING,
    (PLAYING, "SETUP"): PLAYING,
    (RECORDING, "PAUSE"): READY,
    (RECORDING, "TEARDOWN"): INIT,
    (RECORDING, "RECORD"): RECORDING,
    (RECORDING, "SETUP"): RECORDING,
}
NEUTRAL = ["OPTIONS", "ANNOUNCE", "DESCRIBE", "GET_PARAMETER", "SET_PARAMETER"]
CHANGING = ["SETUP", "PLAY", "PAUSE", "RECORD", "TEARDOWN"]


@pytest.mark.parametrize(("state", "method"), list(EXPECTED))
def test_allowed_transitions(state: State, method: str) -> None:
    assert next_state(state, method) is EXPECTED[(state, method)]


@pytest.mark.parametrize(
    ("state", "method"),
    [(s, m) for s in State for m in CHANGING if (s, m) not in EXPECTED],
)
def test_method_not_valid_in_state_is_455(state: State, method: str) -> None:
    with pytest.raises(MethodNotValid) as info:
        next_state(state, method)
    assert info.value.status == 455
    assert method not in allowed_methods(state)


def test_named_invalid_cases() -> None:
    for state, method in [
        (INIT, "PLAY"),
        (INIT, "PAUSE"),
        (INIT, "RECORD"),
        (PLAYING, "RECORD"),
        (RECORDING, "PLAY"),
    ]:
        with pytest.raises(MethodNotValid) as info:
            next_state(state, method)
        assert info.value.status == 455


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("method", NEUTRAL)
def test_state_preserving_methods(state: State, method: str) -> None:
    assert next_state(state, method) is state


@pytest.mark.parametrize("method", ["FOO", "play", "REDIRECT", ""])
def test_unknown_method_is_501(method: str) -> None:
    with pytest.raises(NotImplemented_) as info:
        next_state(READY, method)
    assert info.value.status == 501


def test_table_is_exactly_the_rfc_table() -> None:
    neutral = {(s, m): s for s in State for m in NEUTRAL}
    assert dict(TRANSITIONS) == EXPECTED | neutral
    with pytest.raises(TypeError):
        TRANSITIONS[(INIT, "PLAY")] = PLAYING  # type: ignore[index]


def test_allowed_methods() -> None:
    assert allowed_methods(INIT) == {"SETUP", "TEARDOWN", *NEUTRAL}
    assert allowed_methods(PLAYING) == {"PLAY", "PAUSE", "SETUP", "TEARDOWN", *NEUTRAL}


def test_a_whole_session() -> None:
    state = INIT
    for method, expected in [
        ("OPTIONS", INIT),
        ("DESCRIBE", INIT),
        ("SETUP", READY),
        ("SETUP", READY),
        ("PLAY", PLAYING),
        ("GET_PARAMETER", PLAYING),
        ("PAUSE", READY),
        ("PLAY", PLAYING),
        ("TEARDOWN", INIT),
    ]:
        state = next_state(state, method)
        assert state is expected
