"""The mesh authenticates to cameras: GStreamer's RTSP server with Digest or Basic users.

The credentials are in the route URL (``rtsp://user:pass@host/path``). Right ones:
viewers decode frames through the mesh, also after the camera restarts. Wrong or
missing ones: the viewer gets 503 with the reason, the log says it once, without
the password and without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from msm.sdk.rtsp import Response, RtspReader
from tests.e2e.conftest import mesh_config
from tests.peers import SYSTEM_PYTHON, _system_python_env, _terminate, ffmpeg_frames, gst_available

USER = "operator"
PASSWORD = "p@ss:w/rd Secret"      # needs percent-encoding in a URL

# GStreamer's RTSP server with one user, Digest or Basic only. Prints READY port=N.
AUTH_SERVER = r'''
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

Gst.init(None)
method, port, user, password = sys.argv[1:5]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 "
                   "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 "
                   "! rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
factory.add_role_from_structure(Gst.Structure.new_from_string(
    "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
auth = GstRtspServer.RTSPAuth()
token = GstRtspServer.RTSPToken()
token.set_string("media.factory.role", "viewer")
if method == "digest":
    auth.add_digest(user, password, token)
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
else:
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
server.set_auth(auth)
server.get_mount_points().add_factory("/test", factory)
if server.attach(None) == 0:
    sys.exit(1)
print(f"READY port={server.get_bound_port()}", flush=True)
GLib.MainLoop().run()
'''


class AuthCamera:
    """GStreamer's RTSP server asking for ``method`` (digest or basic) authentication."""

    def __init__(self, script: Path, method: str) -> None:
        self.script = script
        self.method = method
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        deadline = time.monotonic() + 15
        while True:     # a restart on the same port may wait for the old socket to go
            self.proc = await asyncio.create_subprocess_exec(
                SYSTEM_PYTHON, "-u", str(self.script), self.method, str(self.port), USER, PASSWORD,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=_system_python_env())
            assert self.proc.stdout is not None
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 15)).decode()
            if line.startswith("READY port="):
                self.port = int(line.split("=", 1)[1])
                return
            await self.proc.wait()
            assert time.monotonic() < deadline, "the authenticating GStreamer server did not start"
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.proc is not None:
            await _terminate(self.proc)
            self.proc = None

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        return f"rtsp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/test"


@contextlib.asynccontextmanager
async def camera(tmp_path: Path, method: str) -> AsyncIterator[AuthCamera]:
    reason = gst_available()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "auth_camera.py"
    script.write_text(AUTH_SERVER, encoding="utf-8")
    cam = AuthCamera(script, method)
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


@contextlib.asynccontextmanager
async def mesh_to(url: str) -> AsyncIterator[LocalMesh]:
    local = LocalMesh(mesh_config(routes=[Route(name="cam", url=url)]))
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


async def describe(mesh: LocalMesh) -> Response:
    """A DESCRIBE of the mesh's cam, by hand, as a viewer would send it."""
    assert mesh.stub is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.stub.port)
    try:
        writer.write(f"DESCRIBE {mesh.url('cam')} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
                     .encode())
        parser = RtspReader(max_body=1 << 20)
        async with asyncio.timeout(15):
            while True:
                event = parser.next_event()
                if isinstance(event, Response):
                    return event
                data = await reader.read(65536)
                assert data, "the mesh closed the connection without answering"
                parser.feed(data)
    finally:
        writer.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["digest", "basic"])
async def test_right_credentials_play_through_the_mesh_and_after_a_restart(tmp_path: Path, method: str) -> None:
    """Before: every viewer got 401 with no challenge. After: frames, and again after the camera restarts."""
    async with camera(tmp_path, method) as cam, mesh_to(cam.url()) as mesh:
        result = await ffmpeg_frames(mesh.url("cam"), transport="tcp", frames=10, timeout=30)
        assert result.frames >= 10, result.stderr_tail
        await cam.stop()
        await cam.start()           # same port: the mesh must authenticate again on its reconnect
        result = await ffmpeg_frames(mesh.url("cam"), transport="udp", frames=10, timeout=30)
        assert result.frames >= 10, result.stderr_tail


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("method", "password", "reason"), [
    ("digest", "wrong", "rejected the mesh's credentials"),
    ("basic", "wrong", "rejected the mesh's credentials"),
    ("digest", None, "requires credentials and the route has none"),
])
async def test_refused_credentials_are_503_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, password: str | None, reason: str) -> None:
    """Before: 401 without WWW-Authenticate (a viewer cannot fix the camera's password). After: 503 and why."""
    caplog.set_level(logging.INFO)
    async with camera(tmp_path, method) as cam:
        url = cam.url(password=password) if password else f"rtsp://127.0.0.1:{cam.port}/test"
        async with mesh_to(url) as mesh:
            reply = await describe(mesh)
    assert reply.status == 503, (reply.status, reply.reason)
    assert reason in reply.body.decode() + reply.reason
    assert "WWW-Authenticate" not in reply.headers
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and reason in r.getMessage()]
    assert warnings, [r.getMessage() for r in caplog.records]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert "wrong" not in logged and PASSWORD not in logged and quote(PASSWORD, safe="") not in logged
