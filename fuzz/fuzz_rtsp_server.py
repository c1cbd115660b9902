"""Fuzz the sans-IO RTSP server session (``msm.sdk.rtsp_server.ServerConnection``).

The first byte of an input picks the chunking (as in ``fuzz_rtsp_reader.py``); the
rest is what a viewer sends.  ``next_event`` is driven until it needs data, and
every request event is answered: when bit 1 of the first byte is set, requests
with an odd ``CSeq`` by the failure path (``fail``); all others by the success path (DESCRIBE with a recorded SDP,
SETUP through ``plan_setup`` and ``respond_setup``, PLAY/PAUSE/TEARDOWN with
``respond``), so the fuzzer can walk sessions through their states and reach the
interleaved channels.  Crashes are any exception out of the connection that is not
an ``MsmError`` the application is meant to catch, a reply that does not parse as
an RTSP response, and a 500 (the connection logs it as a bug of its own).
"""

from __future__ import annotations

import itertools
import logging

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import MsmError, Unavailable
    from msm.sdk.rtsp import Response
    from msm.sdk.rtsp_server import (
        DescribeRequested,
        FrameReceived,
        PauseRequested,
        PlayRequested,
        Reply,
        RtspSession,
        ServerConnection,
        SessionTable,
        SetupRequested,
        TeardownRequested,
    )
    from msm.sdk.sdp import SessionDescription

from fuzz_rtsp_reader import _chunk_sizes

NAME = "rtsp_server"
KNOWN: tuple[fuzzlib.KnownBug, ...] = (
)
SDP = SessionDescription.parse((fuzzlib.DATA_DIR / "sdp" / "ffmpeg_h264_pcmu.sdp").read_bytes())
TRACKS = len(SDP.media)


class _BugLogged(logging.Handler):
    """The connection answers an unexpected exception with 500 and logs it: surface it."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            if record.exc_info and record.exc_info[1] is not None:
                raise record.exc_info[1]
            raise AssertionError(f"server logged an error: {record.getMessage()}")


_server_log = logging.getLogger("msm.sdk.rtsp_server")
_server_log.addHandler(_BugLogged())
_server_log.propagate = False
logging.raiseExceptions = True


def _check_reply(data: bytes) -> None:
    response = Response.parse(data)
    if response.status == 500:
        raise AssertionError(f"the connection answered {response.status}: {data!r:.300}")


def _answer(conn: ServerConnection[RtspSession], event: object, ids: itertools.count[int],
            seed: int) -> bytes:
    request = event.request  # type: ignore[attr-defined]
    if seed & 2 and int(request.headers.get("CSeq", "1").strip()) % 2:
        return conn.fail(Unavailable("upstream unreachable"))
    try:
        if isinstance(event, DescribeRequested):
            return conn.respond_describe(SDP, f"rtsp://127.0.0.1:8554/{event.stream}", "127.0.0.1")
        if isinstance(event, SetupRequested):
            plan = conn.plan_setup(event, event.stream, TRACKS)
            session = event.session or RtspSession(str(next(ids)), event.stream)
            return conn.respond_setup(session, plan, plan.transport)
        if isinstance(event, TeardownRequested):
            conn.table.sessions.pop(event.session.session_id, None)
            conn.release(event.session)
            return conn.respond()
        if isinstance(event, PlayRequested | PauseRequested):
            return conn.respond()
    except MsmError as exc:   # what the application does with a refusal: answer it
        return conn.fail(exc)
    raise AssertionError(f"unexpected event {event!r:.200}")


def serve(stream: bytes, seed: int) -> None:
    table: SessionTable[RtspSession] = SessionTable(clock=lambda: 0.0)
    conn: ServerConnection[RtspSession] = ServerConnection(
        table, date=lambda: "Thu, 01 Jan 1970 00:00:00 GMT")
    ids = itertools.count(12345678)  # the session id the recorded clients use
    pos = 0
    for size in _chunk_sizes(seed, len(stream)) if seed & 1 else [len(stream)]:
        conn.receive_data(stream[pos : pos + size])
        pos += size
        while (event := conn.next_event()) is not None:
            if isinstance(event, Reply):
                _check_reply(event.data)
                if event.close:
                    return
            elif isinstance(event, FrameReceived):
                if event.track not in event.session.tracks:
                    raise AssertionError(f"frame for track {event.track} that is not set up")
            else:
                _check_reply(_answer(conn, event, ids, seed))


def test_one(data: bytes) -> None:
    if not data:
        return
    try:
        serve(data[1:], data[0])
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


def inputs() -> list[bytes]:
    recorded = fuzzlib.seeds(NAME, ["rtsp/ffmpeg_*", "rtsp/gst_rtspsrc_*"])
    return [bytes([seed]) + data for data in recorded for seed in (0, 1, 6, 7)]


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, inputs())
