"""Per-hop telemetry against real peers: ingress statistics, viewers' RTCP reports and RTT,
Prometheus metrics, and bad RTCP that is counted but never stops forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from msm.protos import msm_pb2 as pb
from tests.e2e.conftest import mesh_config
from tests.peers import FfmpegViewer, GstRtspServer, aiortsp_session

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def aiortsp_viewer(url: str, seconds: float, during: Callable[[], Awaitable[None]]) -> int:
    """Play ``url`` with aiortsp for ``seconds``, then run ``during()`` while still playing."""
    async with aiortsp_session(url) as (session, counter):
        await session.play()
        await asyncio.sleep(seconds)
        await during()
    return counter.received


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_viewer_reports_rtt_and_metrics(gst: GstRtspServer) -> None:
    config = mesh_config(routes=[Route(name="cam", url=gst.url)], metrics_listen="127.0.0.1:0")
    async with LocalMesh(config) as mesh:
        assert mesh.proxy is not None and mesh.proxy.metrics is not None and mesh.control is not None

        async def check() -> None:
            assert mesh.proxy is not None and mesh.proxy.metrics is not None and mesh.control is not None
            response = await mesh.control.control.ListStreams(pb.ListStreamsRequest(), None)
            video = response.streams[0].tracks[0]
            assert video.flow.packets_received > 100 and video.flow.packets_lost == 0
            assert video.flow.clock_rate == 90000 and video.flow.node == "local"
            (leg,) = video.flow.legs
            assert leg.has_report and leg.HasField("rtt_ms")
            text = await asyncio.to_thread(scrape, mesh.proxy.metrics.address)
            assert (sample(text, "msm_ingress_packets_total", stream="cam", track="0", kind="video") or 0) > 100
            assert sample(text, "msm_ingress_packets_lost", stream="cam", track="0") == 0
            jitter = sample(text, "msm_ingress_jitter_seconds", stream="cam", track="0")
            assert jitter is not None and 0 <= jitter < 0.05
            assert (sample(text, "msm_egress_packets_total", stream="cam", track="0") or 0) > 100
            # aiortsp's receiver reports came back to the proxy: loss, jitter and round-trip time.
            reports = sample(text, "msm_viewer_rtcp_reports_total", stream="cam", track="0")
            assert reports is not None and reports >= 1, text
            assert sample(text, "msm_viewer_fraction_lost", stream="cam", track="0") == 0
            rtt = sample(text, "msm_viewer_rtt_seconds", stream="cam", track="0")
            assert rtt is not None and 0 <= rtt < 0.1, "loopback RTT from LSR/DLSR"

        received = await aiortsp_viewer(mesh.url("cam"), 9.0, check)
        assert received > 100


async def test_bad_rtcp_is_counted_and_forwarding_goes_on(gst: GstRtspServer, mesh: LocalMesh) -> None:
    """Junk from anyone but the flow's source is dropped unread and counted; viewers play on.

    (Malformed RTP/RTCP from the source itself is counted as such: tests/unit/test_flows.py.)
    """
    assert mesh.proxy is not None
    async with FfmpegViewer(mesh.url("cam"), transport="udp") as viewer:
        await viewer.wait_frames(20, timeout=30)
        flow = next(f for f in mesh.proxy.table.flows.values() if f.labels.get("kind") == "video")
        rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
        junk = [b"\x80\xc8\x00\x06" + b"\x00" * 8,         # SR claiming 28 bytes, 12 present
                b"\x80\xc9\xff\xff",                          # length past the end
                b"\x40\xcb\x00\x01\x00\x00\x00\x01",          # RTCP version 1
                b"\x80\xd0\x00\x01\x00\x00\x00\x01",          # unknown type 208: kept, not an error
                b"\x00"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in junk * 20:
                s.sendto(data, rtcp_port)
                s.sendto(data, flow.ingress)                 # and garbage on the RTP port too
        await viewer.wait_frames(viewer.frames + 25, timeout=15)
        assert flow.snapshot().dropped_wrong_source >= 2 * len(junk) * 20
        assert flow.rtcp_errors == 0 and flow.dropped_invalid == 0     # never parsed


async def test_msm_streams_json_and_watch(gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.control is not None
    async with FfmpegViewer(mesh.url("cam"), transport="tcp") as viewer:
        await viewer.wait_frames(30, timeout=30)
        await asyncio.sleep(1.2)       # one bitrate sample
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "msm.cli", "streams", "--json", "--control",
                             mesh.control.address], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        video = next(r for r in rows if r["track"] == "0:video")
        assert video["stream"] == "cam" and video["viewers"] == 1 and video["playing"] == 1
        assert video["packets"] > 30 and video["bitrate_bps"] > 10_000 and video["loss_percent"] == 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "msm.cli", "streams", "--watch", "0.5", "--control", mesh.control.address,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out = b""
        assert proc.stdout is not None
        with contextlib.suppress(TimeoutError):      # the table, drawn twice, within 15 s
            async with asyncio.timeout(15):
                while out.count(b"STREAM") < 2 and (chunk := await proc.stdout.read(4096)):
                    out += chunk
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        rest, err = await proc.communicate()
        assert (out + rest).decode().count("STREAM") >= 2, f"the table is redrawn; stderr: {err.decode()[-500:]}"
