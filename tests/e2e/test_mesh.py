"""The local mesh against real peers: GStreamer's RTSP server upstream, ffmpeg and aiortsp viewers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from msm.mesh import LocalMesh
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import FfmpegViewer, GstRtspServer, aiortsp_session, ffmpeg_frames, ffprobe_streams

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def _eventually(condition: Callable[[], bool], message: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def test_five_viewers_share_one_upstream_session(gst: GstRtspServer, mesh: LocalMesh) -> None:
    url = mesh.url("cam")
    transports = ["udp", "udp", "udp", "tcp", "tcp"]
    results = await asyncio.gather(*(ffmpeg_frames(url, transport=t, frames=50, timeout=60)
                                     for t in transports))
    for transport, result in zip(transports, results, strict=True):
        assert result.frames >= 50, f"{transport} viewer decoded {result.frames}\n{result.stderr_tail}"
    # The upstream server saw exactly one RTSP client and one session for all five.
    assert len(gst.clients) == 1, gst.clients
    assert gst.max_sessions == 1


async def test_stream_table_counts_viewers_and_packets(gst: GstRtspServer, mesh: LocalMesh) -> None:
    async with FfmpegViewer(mesh.url("cam"), transport="udp") as viewer:
        await viewer.wait_frames(30, timeout=30)
        assert mesh.control is not None
        from msm.protos import msm_pb2 as pb

        response = await mesh.control.control.ListStreams(pb.ListStreamsRequest(), None)
        (stream,) = response.streams
        assert stream.name == "cam" and stream.upstream_state == "playing"
        assert len(stream.viewers) == 1 and stream.viewers[0].playing
        video = stream.tracks[0]
        assert video.track.kind == "video" and video.track.clock_rate == 90000
        assert video.flow.packets_received > 30
        assert video.flow.legs and video.flow.legs[0].packets_sent > 30


async def test_leaving_pausing_and_crashing_viewers_do_not_disturb_others(
        gst: GstRtspServer, mesh: LocalMesh) -> None:
    url = mesh.url("cam")
    steady_udp = await FfmpegViewer.start(url, transport="udp")
    steady_tcp = await FfmpegViewer.start(url, transport="tcp")
    crasher = await FfmpegViewer.start(url, transport="udp")
    leaver = await FfmpegViewer.start(url, transport="tcp")
    try:
        for viewer in (steady_udp, steady_tcp, crasher, leaver):
            await viewer.wait_frames(25, timeout=30)

        async def others_advance(by: int = 25) -> None:
            await asyncio.gather(steady_udp.wait_frames(steady_udp.frames + by, timeout=15),
                                 steady_tcp.wait_frames(steady_tcp.frames + by, timeout=15))

        crasher.kill()               # no TEARDOWN: the stub notices the closed connection
        await crasher.stop()
        await others_advance()
        await leaver.stop()          # "q" on stdin: ffmpeg sends TEARDOWN
        await others_advance()

        # An aiortsp viewer plays, pauses (its packets stop) and tears down.
        async with aiortsp_session(url) as (session, counter):
            await session.play()
            await _eventually(lambda: counter.received > 20, "aiortsp viewer got no RTP")
            await session.pause()
            await others_advance()       # packets in flight at the PAUSE have landed by now
            paused_at = counter.received
            await others_advance()
            assert counter.received - paused_at <= 5, "packets kept flowing to a paused viewer"
            await session.play()
            await _eventually(lambda: counter.received > paused_at + 10, "no RTP after resuming")
        await others_advance()
        assert len(gst.clients) == 1 and gst.max_sessions == 1
    finally:
        for viewer in (steady_udp, steady_tcp, crasher, leaver):
            await viewer.stop()


async def test_upstream_restart_is_recovered_without_viewer_action(
        gst: GstRtspServer, mesh: LocalMesh) -> None:
    url = mesh.url("cam")
    async with FfmpegViewer(url, transport="udp") as udp, FfmpegViewer(url, transport="tcp") as tcp:
        await asyncio.gather(udp.wait_frames(25, timeout=30), tcp.wait_frames(25, timeout=30))
        await gst.restart()
        restarted = time.monotonic()
        before = (udp.frames, tcp.frames)
        await asyncio.gather(udp.wait_frames(before[0] + 25, timeout=15),
                             tcp.wait_frames(before[1] + 25, timeout=15))
        recovered = time.monotonic() - restarted
        print(f"upstream restart: viewers decoding again {recovered:.2f}s after the server was back")
        assert recovered < 10.0, f"recovered only after {recovered:.1f}s"
        assert udp.running and tcp.running
        # It really was a new upstream session that the proxy spliced over.
        assert gst.starts == 2 and len(gst.clients) == 2, gst.clients
        assert mesh.proxy is not None
        video = next(f for f in mesh.proxy.table.flows.values() if f.labels.get("kind") == "video")
        assert video.source_changes >= 1


async def test_demo_source_decodes_in_ffprobe() -> None:
    _require_peers()
    async with LocalMesh(mesh_config(demo=True)) as mesh:
        streams = await ffprobe_streams(mesh.url("demo"), transport="tcp")
        codecs = sorted(s.get("codec_name", "") for s in streams)
        assert "h264" in codecs, streams
        assert any(s.get("codec_type") == "audio" for s in streams), streams
        result = await ffmpeg_frames(mesh.url("demo"), transport="udp", frames=25, timeout=30)
        assert result.frames >= 25, result.stderr_tail


async def test_sessions_do_not_expire_while_the_upstream_is_down(gst: GstRtspServer) -> None:
    """Players send no keep-alives while no media arrives; an outage longer than the
    session timeout must not cost them their sessions."""
    from msm.control_plane.resolver import Route

    config = mesh_config(routes=[Route(name="cam", url=gst.url)], session_timeout=3)
    async with LocalMesh(config) as mesh, FfmpegViewer(mesh.url("cam"), transport="udp") as viewer:
        await viewer.wait_frames(25, timeout=30)
        assert mesh.stub is not None
        server = mesh.stub.server
        # The stub's session clock runs ahead on demand instead of the test waiting it out.
        real_clock, skew = server.table.clock, 0.0
        server.table.clock = lambda: real_clock() + skew
        gst.kill()
        await _eventually(lambda: bool(server.streams_down), "the stub never heard the upstream is down")
        skew += 2 * server.session_timeout     # two session timeouts without media
        await server.reap()
        assert len(server.sessions) == 1
        await gst.restart()
        await viewer.wait_frames(viewer.frames + 25, timeout=15)
        assert not server.streams_down
        skew += 2 * server.session_timeout     # the restart restarted the timeouts...
        await server.reap()
        assert len(server.sessions) == 0, "...and a session past its timeout is reaped"
