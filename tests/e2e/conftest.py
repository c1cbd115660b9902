"""Fixtures for end-to-end tests: a real GStreamer RTSP server upstream and a local mesh."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh, MeshConfig
from tests.peers import GstRtspServer, gst_available


def _require_peers() -> None:
    reason = gst_available()
    if reason:
        pytest.skip(f"GStreamer RTSP server unavailable: {reason} (run scripts/setup.sh)")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (run scripts/setup.sh)")


@pytest.fixture
async def gst() -> AsyncIterator[GstRtspServer]:
    _require_peers()
    server = await GstRtspServer.start(path="/test")
    try:
        yield server
    finally:
        await server.stop()


# One mesh CA for the session's meshes (created once, like a user's state directory), also
# found by the `msm streams` the tests run (MSM_STATE_DIR).
_STATE = tempfile.TemporaryDirectory(prefix="msm-e2e-state-")
STATE_DIR = Path(_STATE.name)


@pytest.fixture(autouse=True, scope="session")
def _state_dir_env() -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSM_STATE_DIR", str(STATE_DIR))
        yield STATE_DIR


def mesh_config(**overrides: object) -> MeshConfig:
    config = MeshConfig(rtsp_port=0, control_listen="127.0.0.1:0", proxy_listen="127.0.0.1:0",
                        linger=1.0, session_timeout=30, state_dir=STATE_DIR)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
async def mesh(gst: GstRtspServer) -> AsyncIterator[LocalMesh]:
    local = LocalMesh(mesh_config(routes=[Route(name="cam", url=gst.url)]))
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


@pytest.fixture
async def bare_mesh() -> AsyncIterator[LocalMesh]:
    """A mesh with a route to a port where nothing listens (no real peer needed)."""
    from tests.peers import free_port

    dead = Route(name="dead", url=f"rtsp://127.0.0.1:{free_port()}/nothing")
    local = LocalMesh(mesh_config(routes=[dead]))
    await local.start()
    try:
        yield local
    finally:
        await local.stop()
