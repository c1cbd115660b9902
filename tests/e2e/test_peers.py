"""The real peers used by the end-to-end tests, exercised directly (no msm between).

Proves tests/peers.py: the GStreamer demo source serves H.264 + PCMA, ffmpeg
viewers decode over UDP and TCP concurrently, ffprobe sees both tracks, a server
restart on the same port works, and session counting follows the server.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.peers import (  # noqa: E402
    FfmpegViewer,
    GstRtspServer,
    ffmpeg_available,
    ffmpeg_frames,
    ffprobe_streams,
    free_port,
    free_udp_pair,
    gst_available,
)


def _skip_reason() -> str | None:
    reasons = [r for r in (gst_available(), ffmpeg_available()) if r]
    if reasons:
        reason = "real RTSP peers unavailable: " + "; ".join(reasons)
        print(f"SKIP tests/e2e/test_peers.py: {reason}", file=sys.stderr)
        return reason
    return None


_REASON = _skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


def test_free_ports() -> None:
    port = free_port()
    assert 0 < port < 65536
    base = free_udp_pair()
    assert base % 2 == 0 and 1024 <= base < 65535


async def test_server_serves_two_concurrent_viewers_and_probe() -> None:
    async with await GstRtspServer.start(path="/test") as srv:
        assert srv.port > 0
        assert srv.url == f"rtsp://127.0.0.1:{srv.port}/test"

        streams = await ffprobe_streams(srv.url, transport="tcp")
        codecs = {(s.get("codec_type"), s.get("codec_name")) for s in streams}
        assert ("video", "h264") in codecs, streams
        assert ("audio", "pcm_alaw") in codecs, streams
        video = next(s for s in streams if s.get("codec_type") == "video")
        assert (video.get("width"), video.get("height")) == (320, 240)

        udp, tcp = await asyncio.gather(
            ffmpeg_frames(srv.url, transport="udp", frames=50, timeout=25),
            ffmpeg_frames(srv.url, transport="tcp", frames=50, timeout=25),
        )
        for name, res in (("udp", udp), ("tcp", tcp)):
            assert res.frames >= 50 and res.returncode == 0 and not res.timed_out, (
                f"{name} viewer: {res}")

        # ffprobe plus two viewers connected; the viewers overlapped.
        assert len(srv.clients) >= 3, srv.events
        assert all(c.startswith("127.0.0.1:") for c in srv.clients)
        assert srv.max_sessions >= 2, srv.events
        await srv.wait_sessions(0, timeout=5)


async def test_restart_same_port_and_session_tracking() -> None:
    srv = await GstRtspServer.start(path="/cam", audio=False)
    try:
        port = srv.port
        # A graceful stop sends TEARDOWN: the session goes at once.
        async with await FfmpegViewer.start(srv.url, transport="udp") as viewer:
            await viewer.wait_frames(25, timeout=15)
            await srv.wait_sessions(1, timeout=5)
        assert viewer.returncode == 0, viewer.stderr_tail
        await srv.wait_sessions(0, timeout=3)

        # A crashed viewer (no TEARDOWN) leaves its session until the timeout.
        viewer = await FfmpegViewer.start(srv.url, transport="tcp")
        try:
            await viewer.wait_frames(25, timeout=15)
            await srv.wait_sessions(1, timeout=5)
            viewer.kill()
        finally:
            await viewer.stop()
        assert viewer.returncode is not None and viewer.returncode < 0
        await asyncio.sleep(0.5)
        assert srv.sessions == 1 and srv.max_sessions == 1

        await srv.restart()
        assert srv.port == port and srv.starts == 2
        assert srv.sessions == 0

        res = await ffmpeg_frames(srv.url, transport="tcp", frames=30, timeout=20)
        assert res.frames >= 30 and res.returncode == 0, res
        assert srv.max_sessions == 1
        # A graceful viewer tears its session down.
        await srv.wait_sessions(0, timeout=5)
    finally:
        rc = await srv.stop()
    assert rc == 0, srv.stderr_tail
    assert srv.events[-1] == "STOPPED"


async def test_start_failure_is_reported() -> None:
    blocker = await GstRtspServer.start(audio=False)
    try:
        with pytest.raises(RuntimeError, match="GStreamer RTSP server"):
            await GstRtspServer.start(port=blocker.port, audio=False)
    finally:
        await blocker.stop()
