"""Secrets never leave the mesh: route credentials and viewers' session ids.

A route ``rtsp://admin:SuperSecret@127.0.0.1:PORT/x`` (PORT: a recorder in front of
GStreamer's RTSP server, which keeps every byte the mesh sends upstream) and a viewer
playing it. ``SuperSecret`` must not appear in /api/streams, the control plane's and
the proxy's /metrics, ListStreams, the logs, or any request line the camera gets; the
viewer's session id must not appear in /api/streams, ListStreams or metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable

import pytest
from google.protobuf import text_format

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from msm.protos import msm_pb2 as pb
from msm.runtime.redact import redact_text, redact_url, session_tag, strip_userinfo
from msm.sdk.rtsp import Response, RtspReader
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import GstRtspServer, free_udp_pair

SECRET = "SuperSecret"


class Recorder:
    """A TCP relay to ``port`` that keeps what clients send (the camera's view of the mesh)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while data := await src.read(65536):
                    if keep:
                        self.sent += data
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def request_lines(self) -> list[str]:
        return re.findall(r"^[A-Z_]+ \S+ RTSP/1\.0", self.sent.decode("latin-1"), re.MULTILINE)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class Viewer:
    """A hand-driven RTSP viewer: DESCRIBE, SETUP (UDP), PLAY; keeps its session id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = RtspReader(max_body=1 << 20)
        self.cseq = 0
        self.session = ""

    async def request(self, method: str, url: str, **headers: str) -> Response:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(15):
            while not isinstance(event := self.parser.next_event(), Response):
                data = await self.reader.read(65536)
                assert data, "the mesh closed the connection"
                self.parser.feed(data)
        return event

    async def play(self, url: str) -> None:
        reply = await self.request("DESCRIBE", url, Accept="application/sdp")
        assert reply.status == 200, reply
        base = reply.headers.get("Content-Base") or url + "/"
        assert SECRET not in base
        control = re.search(r"a=control:(\S+)", reply.body.decode().split("m=", 1)[1])
        assert control is not None
        track = control.group(1) if "://" in control.group(1) else base + control.group(1)
        port = free_udp_pair()
        reply = await self.request("SETUP", track, Transport=f"RTP/AVP;unicast;client_port={port}-{port + 1}")
        assert reply.status == 200, reply
        self.session = (reply.headers.get("Session") or "").split(";")[0]
        assert self.session
        reply = await self.request("PLAY", url)
        assert reply.status == 200, reply


async def eventually(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout:.0f}s"
        await asyncio.sleep(0.1)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def test_redact_url_and_tags() -> None:
    assert redact_url("rtsp://admin:Super%40Secret@cam:554/x?token=abc&ch=1&Password=p") == \
        "rtsp://***@cam:554/x?token=***&ch=1&Password=***"
    assert redact_url("rtsp://cam/x") == "rtsp://cam/x"
    assert redact_url("rtsp://u:p@[::1/x") == "rtsp://***@[::1/x"       # not a URL: still masked
    assert redact_text("opened rtsp://a:b@h/x and http://c@d/") == "opened rtsp://***@h/x and http://***@d/"
    assert strip_userinfo("rtsp://a:b@h:1/x?y") == "rtsp://h:1/x?y"
    assert session_tag("abc") == session_tag("abc") and re.fullmatch(r"[0-9a-f]{8}", session_tag("abc"))
    assert session_tag("") == ""


# long function: one mesh, one viewer, then every surface checked in turn
@pytest.mark.timeout(90)
async def test_credentials_and_session_ids_are_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """Before: SuperSecret in /api/streams, metric labels, logs and the camera's request lines;
    session ids in /api/streams and ListStreams. After: none of them."""
    _require_peers()
    caplog.set_level(logging.DEBUG)
    gst = await GstRtspServer.start(path="/x", audio=False)
    recorder = Recorder(gst.port)
    port = await recorder.start()
    route = Route(name="cam", url=f"rtsp://admin:{SECRET}@127.0.0.1:{port}/x")
    mesh = LocalMesh(mesh_config(routes=[route], web_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"))
    viewer: Viewer | None = None
    try:
        await mesh.start()
        assert mesh.stub is not None and mesh.web is not None and mesh.proxy is not None
        assert mesh.proxy.metrics is not None and mesh.control is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.stub.port)
        viewer = Viewer(reader, writer)
        await viewer.play(mesh.url("cam"))
        proxy_metrics = f"http://{mesh.proxy.metrics.address}/metrics"

        async def leg_counted() -> bool:
            text = await asyncio.to_thread(get, proxy_metrics)
            return "msm_egress_packets_total{" in text
        await eventually("the proxy counts the viewer's leg", leg_counted)

        api = await asyncio.to_thread(get, f"{mesh.web.url.rstrip('/')}/api/streams")
        control_metrics = await asyncio.to_thread(get, f"{mesh.web.url.rstrip('/')}/metrics")
        proxy_text = await asyncio.to_thread(get, proxy_metrics)
        listed = text_format.MessageToString(await mesh.control.control.ListStreams(pb.ListStreamsRequest(), None))
        session = viewer.session
        for name, text in (("/api/streams", api), ("control plane /metrics", control_metrics),
                           ("proxy /metrics", proxy_text), ("ListStreams", listed)):
            assert SECRET not in text, name
        for name, text in (("/api/streams", api), ("control plane /metrics", control_metrics),
                           ("ListStreams", listed)):
            assert session not in text, name
        assert session_tag(session) in api and session_tag(session) in listed
        shown = f"rtsp://***@127.0.0.1:{port}/x"
        assert shown in api and f'upstream="{shown}"' in control_metrics

        lines = recorder.request_lines()
        assert any(line.startswith("DESCRIBE ") for line in lines) and any(line.startswith("PLAY ") for line in lines)
        assert all(SECRET not in line and "admin" not in line for line in lines), lines
        assert SECRET not in recorder.sent.decode("latin-1")     # nowhere: GStreamer asked for no auth

        mine = ("msm.stub", "msm.control_plane.view", "msm.control_plane.web", "msm.control_plane.metrics",
                "msm.runtime")
        own = [r.getMessage() for r in caplog.records if r.name.startswith(mine)]
        assert not [m for m in own if SECRET in m]
        elsewhere = sorted({f"{r.name}: {redact_text(r.getMessage())}" for r in caplog.records
                            if SECRET in r.getMessage()})
        in_proxy = session in proxy_text
        session_logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if session in r.getMessage()]
    finally:
        if viewer is not None:
            viewer.writer.close()
        await mesh.stop()
        await recorder.stop()
        await gst.stop()
    assert not elsewhere, f"logs: {elsewhere}"
    assert not in_proxy, "the viewer's session id is in the proxy's metrics"
    assert not session_logged, f"the viewer's session id is logged: {session_logged}"
