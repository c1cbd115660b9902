"""Bad input gets the right status or a clean close, and other sessions keep streaming."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from msm.mesh import LocalMesh
from msm.sdk.rtsp import Response, RtspReader
from tests.peers import FfmpegViewer, GstRtspServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class RawClient:
    """A hand-driven RTSP connection that can send anything at all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = RtspReader(max_body=1 << 20)

    @classmethod
    async def open(cls, mesh: LocalMesh) -> RawClient:
        assert mesh.stub is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.stub.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 10.0) -> Response:
        async with asyncio.timeout(timeout):
            while True:
                event = self.parser.next_event()
                if isinstance(event, Response):
                    return event
                data = await self.reader.read(65536)
                assert data, "connection closed without a response"
                self.parser.feed(data)

    async def request(self, method: str, url: str, cseq: int = 1, **headers: str) -> Response:
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.response()

    async def closed(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    def close(self) -> None:
        self.writer.close()


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_garbage_gets_400_and_close(bare_mesh: LocalMesh) -> None:
    client = await RawClient.open(bare_mesh)
    await client.send(b"\x16\x03\x01 this is not RTSP at all\r\n\r\n")
    response = await client.response()
    assert response.status == 400
    assert await client.closed()


async def test_oversized_request_gets_413(bare_mesh: LocalMesh) -> None:
    client = await RawClient.open(bare_mesh)
    await client.send(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    response = await client.response()
    assert response.status in (413, 431)
    client.close()


async def test_unknown_and_unsupported_methods(bare_mesh: LocalMesh) -> None:
    client = await RawClient.open(bare_mesh)
    url = bare_mesh.url("dead")
    assert (await client.request("FROBNICATE", url, 1)).status == 501
    record = await client.request("RECORD", url, 2)
    assert record.status == 405 and "SETUP" in (record.headers.get("Allow") or "")
    options = await client.request("OPTIONS", "*", 3)
    assert options.status == 200 and "DESCRIBE" in (options.headers.get("Public") or "")
    assert options.cseq == 3
    # The connection survives all of that.
    assert (await client.request("GET_PARAMETER", url, 4)).status == 200
    client.close()


async def test_unknown_route_404_and_unreachable_upstream_503(bare_mesh: LocalMesh) -> None:
    client = await RawClient.open(bare_mesh)
    assert (await client.request("DESCRIBE", bare_mesh.url("nope"), 1)).status == 404
    assert (await client.request("DESCRIBE", bare_mesh.url("dead"), 2)).status == 503
    client.close()


async def test_session_errors(bare_mesh: LocalMesh) -> None:
    client = await RawClient.open(bare_mesh)
    url = bare_mesh.url("dead")
    assert (await client.request("PLAY", url, 1)).status == 454
    assert (await client.request("PLAY", url, 2, Session="doesnotexist")).status == 454
    assert (await client.request("OPTIONS", url, 3, Require="com.example.magic")).status == 551
    missing_cseq = await client.send(b"OPTIONS * RTSP/1.0\r\n\r\n")
    assert missing_cseq is None and (await client.response()).status == 400
    client.close()


async def test_setup_errors_with_a_real_upstream(gst: GstRtspServer, mesh: LocalMesh) -> None:
    client = await RawClient.open(mesh)
    url = mesh.url("cam")
    described = await client.request("DESCRIBE", url, 1, Accept="application/sdp")
    assert described.status == 200
    assert b"a=control:track0" in described.body and b"a=control:track1" in described.body
    assert (await client.request("SETUP", url + "/track9", 2,
                                 Transport="RTP/AVP;unicast;client_port=5000-5001")).status == 404
    assert (await client.request("SETUP", url + "/track0", 3,
                                 Transport="RTP/AVP;multicast;port=5000-5001")).status == 461
    assert (await client.request("SETUP", url + "/track0", 4, Transport="RAW/RAW/UDP;unicast")).status == 461
    assert (await client.request("SETUP", url + "/track0", 5)).status == 461
    ok = await client.request("SETUP", url + "/track0", 6, Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
    assert ok.status == 200 and "interleaved=0-1" in (ok.headers.get("Transport") or "")
    assert ok.headers.get("Session")
    client.close()


async def test_misbehaving_clients_do_not_disturb_a_playing_viewer(
        gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.stub is not None
    async with FfmpegViewer(mesh.url("cam"), transport="tcp") as viewer:
        await viewer.wait_frames(25, timeout=30)
        # A client that disconnects mid-request, one that stalls half-way (slow
        # loris), one that sends garbage, and one that sets up and vanishes.
        half = await RawClient.open(mesh)
        await half.send(b"DESCRIBE " + mesh.url("cam").encode() + b" RTSP/1.0\r\nCSe")
        half.close()
        slow = await RawClient.open(mesh)
        await slow.send(b"OPTIONS * RTSP/1.0\r\n")
        junk = await RawClient.open(mesh)
        await junk.send(bytes(range(256)) * 16)
        vanisher = await RawClient.open(mesh)
        await vanisher.request("DESCRIBE", mesh.url("cam"), 1)
        setup = await vanisher.request("SETUP", mesh.url("cam") + "/track0", 2,
                                       Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
        session = (setup.headers.get("Session") or "").split(";")[0]
        await vanisher.request("PLAY", mesh.url("cam"), 3, Session=session)
        vanisher.writer.transport.abort()
        await viewer.wait_frames(viewer.frames + 50, timeout=15)
        assert await _eventually(lambda: session not in mesh.stub.server.sessions), \
            "a vanished viewer's session is torn down"
        assert len(mesh.stub.server.sessions) == 1
        slow.close()
        junk.close()
    assert len(gst.clients) == 1
