"""Attacks on the mesh's data plane, end to end: a real camera (GStreamer), the local
mesh, ffmpeg viewers decoding, and an attacker on the same host.

- two 12-byte RTCP BYEs sent to a flow's RTP port used to end every ffmpeg viewer;
- SETUPs whose client_port is the proxy's own ingress used to build a forwarding loop
  that starved the other viewers;
- a source whose SDP has 1,500 tracks used to take 3,000 proxy ports in one SETUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import FfmpegViewer, GstRtspServer

pytestmark = pytest.mark.timeout(120)


async def test_rtcp_byes_sent_to_the_rtp_port_do_not_end_a_viewer(gst: GstRtspServer, mesh: LocalMesh) -> None:
    async with FfmpegViewer(mesh.url("cam"), transport="udp") as viewer:
        await viewer.wait_frames(25, timeout=30)
        assert mesh.proxy is not None
        flow = next(f for f in mesh.proxy.table.flows.values() if f.labels.get("kind") == "video")
        ssrc = flow.snapshot().out_ssrc or 0
        bye = struct.pack("!BBHII", 0x81, 203, 2, ssrc, ssrc)   # 12 bytes: V=2, SC=1, BYE
        assert len(bye) == 12
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for _ in range(2):
                attacker.sendto(bye, flow.ingress)
                attacker.sendto(bye, (flow.ingress[0], flow.ingress[1] + 1))
        before = viewer.frames
        await viewer.wait_frames(before + 25, timeout=20)
        assert viewer.running, "the viewer kept playing"
        snap = flow.snapshot()
        assert snap.dropped_invalid + snap.dropped_wrong_source >= 2
        assert snap.rtcp_bye_dropped + snap.dropped_wrong_source >= 2


async def rtsp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str) -> tuple[int, str]:
    writer.write(request.encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split()[1])
    length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                   if line.lower().startswith("content-length:")), 0)
    body = (await reader.readexactly(length)).decode() if length else ""
    return status, body


async def test_setups_towards_the_proxys_own_ports_are_refused_and_no_loop_forms(
        gst: GstRtspServer, mesh: LocalMesh) -> None:
    url = mesh.url("cam")
    async with FfmpegViewer(url, transport="udp") as viewer:
        await viewer.wait_frames(25, timeout=30)
        assert mesh.proxy is not None
        flows = list(mesh.proxy.table.flows.values())
        host, port = url.split("/")[2].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            status, sdp = await rtsp(reader, writer, f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n"
                                                     "Accept: application/sdp\r\n\r\n")
            assert status == 200
            controls = [line.split(":", 1)[1].strip() for line in sdp.splitlines()
                        if line.startswith("a=control:") and line.strip() != "a=control:*"]
            statuses = []
            for cseq, flow in enumerate(flows * 2, start=2):   # four SETUPs, each at a proxy ingress
                control = controls[0] if controls[0].startswith("rtsp:") else f"{url}/{controls[0]}"
                rtp_port = flow.ingress[1]
                status, _ = await rtsp(reader, writer, f"SETUP {control} RTSP/1.0\r\nCSeq: {cseq}\r\n"
                                       f"Transport: RTP/AVP;unicast;client_port={rtp_port}-{rtp_port + 1}\r\n\r\n")
                statuses.append(status)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert all(status in (400, 461) for status in statuses), statuses
        # No loop: the proxy forwards about what it receives, and the viewer plays on.
        before = viewer.frames
        await viewer.wait_frames(before + 25, timeout=20)
        for flow in flows:
            snap = flow.snapshot()
            assert snap.packets_forwarded <= snap.packets_received * len(flow.legs) + 10
            assert all(leg.rtp_addr[1] != f.ingress[1] for f in flows for leg in flow.legs.values())


def huge_sdp(tracks: int) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=hostile", "c=IN IP4 0.0.0.0", "t=0 0"]
    for i in range(tracks):   # compact: 1,500 tracks stay under the stub's 64 KiB SDP limit
        lines += ["m=audio 0 RTP/AVP 0", f"a=control:{i}"]
    return "\r\n".join(lines) + "\r\n"


@contextlib.asynccontextmanager
async def hostile_camera(tracks: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A tiny RTSP server whose DESCRIBE answers ``tracks`` tracks; yields its URL and the methods it saw."""
    seen: list[str] = []
    body = huge_sdp(tracks).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                method = head.split()[0]
                seen.append(method)
                cseq = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                             if line.lower().startswith("cseq:")), "0")
                if method == "DESCRIBE":
                    writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n"
                                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                elif method == "OPTIONS":
                    writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: DESCRIBE, SETUP, PLAY, TEARDOWN"
                                 "\r\n\r\n".encode())
                else:
                    writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 1\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"rtsp://127.0.0.1:{port}/cam", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_a_source_with_1500_tracks_is_refused_and_takes_no_ports() -> None:
    _require_peers()
    async with hostile_camera(1500) as (camera, seen):
        local = LocalMesh(mesh_config(routes=[Route(name="big", url=camera)]))
        await local.start()
        try:
            url = local.url("big")
            host, port = url.split("/")[2].rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                status, _ = await rtsp(reader, writer, f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            finally:
                writer.close()
            assert status == 453
            assert local.proxy is not None and local.proxy.table.flows == {}
            assert "SETUP" not in seen
        finally:
            await local.stop()
