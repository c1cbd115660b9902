"""Upstream over TCP interleaved (forced, or after a 461), and GStreamer's rtspsrc as a viewer."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import GstRtspServer, ffmpeg_frames

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.mark.parametrize("route_transport", ["", "tcp"])
async def test_tcp_only_upstream(route_transport: str) -> None:
    """A server that refuses UDP (461) is pulled over TCP and still fanned out to UDP viewers."""
    _require_peers()
    async with GstRtspServer(path="/tcp", extra_args=["--protocols", "tcp"]) as gst:
        route = Route(name="cam", url=gst.url, transport=route_transport)
        async with LocalMesh(mesh_config(routes=[route], linger=30.0)) as mesh:
            results = await asyncio.gather(
                ffmpeg_frames(mesh.url("cam"), transport="udp", frames=40, timeout=40),
                ffmpeg_frames(mesh.url("cam"), transport="tcp", frames=40, timeout=40))
            for result in results:
                assert result.frames >= 40, result.stderr_tail
            assert mesh.stub is not None
            (session,) = mesh.stub.upstreams.sessions.values()
            assert session.use_tcp and len(session.bridges) == 2
            assert len(gst.clients) == 1


async def test_gstreamer_rtspsrc_viewer(gst: GstRtspServer, mesh: LocalMesh) -> None:
    """GStreamer's own RTSP client plays through the mesh and decodes frames."""
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed (run scripts/setup.sh)")
    pipeline = (f"rtspsrc location={mesh.url('cam')} protocols=udp latency=100 ! rtph264depay ! "
                "avdec_h264 ! fakesink name=sink silent=false num-buffers=40 sync=false")
    proc = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-v", *pipeline.split(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    decoded = len(re.findall(r"sink: last-message = chain", text))
    assert decoded >= 40, text[-2000:]
