"""Attacks on the stub's RTSP server: hijacked sessions, session and connection floods,
slowloris, unread pipelining, reflected userinfo, viewer authentication."""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from msm.mesh import LocalMesh
from msm.protos import msm_pb2 as pb
from tests.e2e.test_bad_input import RawClient
from tests.peers import FfmpegViewer, GstRtspServer, aiortsp_session

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

OTHER_HOST = "127.0.0.2"   # another client address on loopback


async def _eventually(condition: Callable[[], bool], message: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)


async def _open(mesh: LocalMesh, host: str = "127.0.0.1") -> RawClient:
    assert mesh.stub is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.stub.port, local_addr=(host, 0))
    return RawClient(reader, writer)


async def _viewers(mesh: LocalMesh) -> int:
    assert mesh.control is not None
    response = await mesh.control.control.ListStreams(pb.ListStreamsRequest(), None)
    return sum(len(s.viewers) for s in response.streams)


def _legs(mesh: LocalMesh) -> int:
    assert mesh.proxy is not None
    return sum(len(flow.legs) for flow in mesh.proxy.table.flows.values())


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_another_client_cannot_pause_play_or_tear_down_a_session(
        gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.stub is not None
    url = mesh.url("cam")
    async with aiortsp_session(url) as (session, counter):
        await session.play()
        await _eventually(lambda: counter.received > 20, "viewer A got no RTP")
        (victim,) = mesh.stub.server.sessions    # what /api/streams and /metrics used to publish
        thief = await _open(mesh, OTHER_HOST)
        for cseq, method in enumerate(("PAUSE", "TEARDOWN", "PLAY", "GET_PARAMETER"), start=1):
            answer = await thief.request(method, url, cseq, Session=victim)
            assert answer.status == 454, f"{method} with A's session from another client: {answer.status}"
        thief.close()
        before = counter.received
        await _eventually(lambda: counter.received > before + 20, "viewer A stopped receiving")
        assert victim in mesh.stub.server.sessions


async def test_one_connection_cannot_hold_thousands_of_sessions(gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.stub is not None
    server = mesh.stub.server
    url = mesh.url("cam")
    flood = await _open(mesh)
    assert (await flood.request("DESCRIBE", url, 1)).status == 200
    statuses = []
    for n in range(server.max_sessions_per_connection + 5):
        answer = await flood.request("SETUP", url + "/track0", n + 2,
                                     Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
        statuses.append(answer.status)
    cap = server.max_sessions_per_connection
    assert statuses[:cap] == [200] * cap and set(statuses[cap:]) == {453}, statuses
    assert server.limit_hits["sessions_per_connection"] == 5
    assert await _viewers(mesh) == cap
    flood.close()
    await _eventually(lambda: not server.sessions, "the closed connection's sessions remain")
    await _eventually(lambda: _legs(mesh) == 0, "legs of the closed connection remain on the proxy")
    assert await _viewers(mesh) == 0


async def test_idle_connections_from_one_address_do_not_lock_others_out(bare_mesh: LocalMesh) -> None:
    assert bare_mesh.stub is not None
    server = bare_mesh.stub.server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 5000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    idle: list[RawClient] = []
    try:
        for _ in range(2000):
            idle.append(await _open(bare_mesh))
        await _eventually(lambda: server.limit_hits["connections_per_client"] >= 2000 - 32,
                          "connections over the per-address cap are refused")
        assert len(server.connections) <= server.max_connections_per_client
        newcomer = await _open(bare_mesh, OTHER_HOST)
        assert (await newcomer.request("OPTIONS", "*", 1)).status == 200
        newcomer.close()
    finally:
        for client in idle:
            client.writer.transport.abort()


async def test_slowloris_and_idle_connections_are_closed(bare_mesh: LocalMesh) -> None:
    assert bare_mesh.stub is not None
    server = bare_mesh.stub.server
    server.header_timeout, server.idle_timeout = 0.5, 1.5
    idle = await _open(bare_mesh)
    slow = await _open(bare_mesh)
    started = time.monotonic()
    request = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    sent = 0
    while not slow.reader.at_eof() and sent < len(request):    # one byte every 0.2 s
        slow.writer.write(request[sent:sent + 1])
        sent += 1
        await asyncio.sleep(0.2)
    assert sent < len(request), "the trickled request was never cut off"
    assert await slow.closed() and await idle.closed()
    assert time.monotonic() - started < 3.0
    assert server.limit_hits["header_timeout"] >= 1 and server.limit_hits["idle_timeout"] >= 1
    # A normal client is not affected.
    fresh = await _open(bare_mesh)
    assert (await fresh.request("OPTIONS", "*", 1)).status == 200
    fresh.close()


_PIPELINER = """
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.settimeout(3.0)
chunk = b"OPTIONS * RTSP/1.0\\r\\nCSeq: 1\\r\\n\\r\\n" * 2000
sent = 0
try:
    while sent < 20 * 1024 * 1024:
        sent += sock.send(chunk)
except (TimeoutError, OSError):
    pass
print(sent, flush=True)
sys.stdin.read()   # keep the connection open, never read its answers
"""


async def test_unread_pipelined_answers_do_not_grow_memory(bare_mesh: LocalMesh) -> None:
    assert bare_mesh.stub is not None
    server = bare_mesh.stub.server
    before = _rss_kib()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PIPELINER, str(server.port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        sent = int(await asyncio.wait_for(proc.stdout.readline(), 60))
        grown = (_rss_kib() - before) / 1024
        print(f"pipelined {sent / 1e6:.1f} MB of requests, stub memory grew by {grown:.1f} MB")
        assert sent < 20 * 1024 * 1024, "the stub kept reading requests whose answers were not read"
        assert grown < 5, f"memory grew by {grown:.1f} MB"
    finally:
        proc.kill()
        await proc.wait()


async def test_content_base_never_echoes_userinfo_or_a_foreign_host(gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.stub is not None
    client = await _open(mesh)
    port = mesh.stub.port
    answer = await client.request("DESCRIBE", f"rtsp://user:secret@127.0.0.1:{port}/cam", 1)
    assert answer.status == 200
    base = answer.headers.get("Content-Base") or ""
    assert base == f"rtsp://127.0.0.1:{port}/cam/", base
    answer = await client.request("DESCRIBE", "rtsp://evil.example:554/cam", 2)
    assert "evil" not in (answer.headers.get("Content-Base") or "")
    client.close()


async def test_viewer_digest_authentication_with_ffmpeg(gst: GstRtspServer, mesh: LocalMesh) -> None:
    from msm.sdk.rtsp_auth import ServerAuth

    assert mesh.stub is not None
    mesh.stub.server.auth = ServerAuth({"viewer": "s3cret pass"}, "msm-test")
    url = mesh.url("cam")
    authed = url.replace("rtsp://", "rtsp://viewer:s3cret%20pass@")
    async with FfmpegViewer(authed, transport="tcp") as viewer:
        await viewer.wait_frames(25, timeout=30)
    client = await _open(mesh)
    refused = await client.request("DESCRIBE", url, 1)
    assert refused.status == 401
    assert any("MD5" in v for v in refused.headers.get_all("WWW-Authenticate"))
    assert (await client.request("OPTIONS", "*", 2)).status == 200
    client.close()
    wrong = await FfmpegViewer.start(url.replace("rtsp://", "rtsp://viewer:wrong@"), transport="tcp")
    assert await wrong.wait_exit(timeout=20) != 0
    assert "401" in wrong.stderr_tail, wrong.stderr_tail
