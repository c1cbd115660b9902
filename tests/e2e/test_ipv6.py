"""IPv4 and IPv6 on every leg, end to end through a local mesh with real peers.

The gateway stub listens on a wildcard host (both families on one port); ffmpeg
plays an IPv4 camera (GStreamer's RTSP server on 127.0.0.1) over IPv6 and an IPv6
camera (on [::1]) over IPv4, with UDP media (the proxy sends each leg from its
socket of the leg's family) and interleaved in the RTSP connection (the stub's
bridge hears the proxy's pair of the bridge's family).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from msm.control_plane.resolver import Route
from msm.mesh import LocalMesh
from msm.rtp_proxy.flows import FlowTable
from msm.rtp_proxy.main import alt_media_host
from msm.sdk.errors import ConfigError, Refused
from msm.stub.main import parse_args, stub_config
from tests.e2e.conftest import _require_peers, mesh_config
from tests.peers import FfmpegViewer, GstRtspServer, ffmpeg_frames

FRAMES = 10


def _ipv6_loopback() -> str | None:
    """Why [::1] cannot be used here, or None."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback: {exc}"
    return None


def _use(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's data path: the Python reference or the native engine (skipped, saying why, without it)."""
    if engine == "python":
        monkeypatch.setenv("MSM_NO_NATIVE", "1")
        return
    from msm import ext
    if (reason := ext.unavailable_reason()):
        print(f"skipping the native engine: {reason}")
        pytest.skip(f"native engine: {reason}")


@contextlib.asynccontextmanager
async def _mesh(camera_url: str) -> AsyncIterator[LocalMesh]:
    local = LocalMesh(mesh_config(routes=[Route(name="cam", url=camera_url)], rtsp_host="::"))
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


def _legs(mesh: LocalMesh) -> dict[str, int]:
    """Packets the proxy sent, per leg destination host."""
    assert mesh.proxy is not None
    sent: dict[str, int] = {}
    for flow in mesh.proxy.table.flows.values():
        for leg in flow.snapshot().legs:
            sent[leg.rtp_addr[0]] = sent.get(leg.rtp_addr[0], 0) + leg.packets_sent
    return sent


def test_a_wildcard_or_ipv6_listen_host_starts_with_a_bracketed_rtsps_default() -> None:
    config = stub_config(parse_args(["--listen", "[::]:8554", "--metrics-listen", "off"]))
    assert (config.listen_host, config.rtsps_host, config.rtsps_port) == ("::", "::", 8322)


# Each direction on one engine (both engines send a leg of the other family than their flow's
# from the flow's second socket; running all four costs twice the time for the same code).
@pytest.mark.parametrize(("engine", "camera_bind", "viewer_host"), [
    ("native", "127.0.0.1", "[::1]"), ("python", "::1", "127.0.0.1")])
async def test_viewers_over_the_other_ip_family_than_the_camera_get_udp_and_interleaved_media(
        engine: str, camera_bind: str, viewer_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_peers()
    _use(engine, monkeypatch)
    if (reason := _ipv6_loopback()):
        print(f"skipping: {reason}")
        pytest.skip(reason)
    camera = await GstRtspServer.start(path="/test", bind=camera_bind, audio=False)
    try:
        url = camera.url if camera_bind == "127.0.0.1" else f"rtsp://[::1]:{camera.port}/test"
        async with _mesh(url) as mesh:
            assert mesh.stub is not None and mesh.proxy is not None
            families = {sock.family for server in (mesh.stub.server.server, *mesh.stub.server.extra_listeners)
                        if server is not None for sock in server.sockets}
            assert families == {socket.AF_INET, socket.AF_INET6}
            viewer_url = f"rtsp://{viewer_host}:{mesh.stub.port}/cam"
            async with FfmpegViewer(viewer_url, transport="udp") as viewer:
                await viewer.wait_frames(FRAMES, timeout=15)
                # The leg is of the viewer's family, sent from the proxy's socket of that family.
                sent = _legs(mesh)
                assert sent.get(viewer_host.strip("[]"), 0) > 0, sent
                # The flows are bound in the camera's family (and the other one, same ports).
                flows = list(mesh.proxy.table.flows.values())
                assert flows and all((":" in f.ingress[0]) == (camera_bind == "::1") and f.alt_host for f in flows)
            result = await ffmpeg_frames(viewer_url, transport="tcp", frames=FRAMES, timeout=15)
            assert result.frames >= FRAMES, (camera_bind, result.stderr_tail)
    finally:
        await camera.stop()


async def test_a_leg_of_a_family_the_proxy_has_no_address_for_is_refused_and_the_alt_flag_is_checked() -> None:
    table = FlowTable(host="127.0.0.1", port_range=(43100, 43199), engine="python", alt_host="")
    try:
        flow = await table.add_flow("v4only/0")
        assert not flow.alt_host
        with pytest.raises(Refused, match="is IPv6 and this proxy has no IPv6 media address"):
            flow.check_family("::1")
        flow.check_family("127.0.0.2")
    finally:
        table.close()
    assert alt_media_host("10.0.0.1", "") is None
    assert alt_media_host("10.0.0.1", "fd00::1") == "fd00::1"
    with pytest.raises(ConfigError, match="other IP family"):
        alt_media_host("10.0.0.1", "10.0.0.2")
