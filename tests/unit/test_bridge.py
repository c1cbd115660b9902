"""The stub's UDP bridges answer to their peer only: anyone else's datagrams never become viewer frames."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from msm.stub.bridge import UdpPair, UdpRelay

pytestmark = pytest.mark.timeout(10)


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def _udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


class _Viewer:
    """What a TCP viewer would receive: (channel, payload) per ``$`` frame."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def on(self, channel: int) -> Callable[[bytes], None]:
        return lambda data: self.frames.append((channel, data))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UdpPair, _Viewer]]:
    viewer = _Viewer()
    bridge = await UdpPair.open("127.0.0.1", viewer.on(0), viewer.on(1))
    try:
        yield bridge, viewer
    finally:
        bridge.close()


async def test_only_the_proxy_reaches_the_viewer(pair: tuple[UdpPair, _Viewer]) -> None:
    bridge, viewer = pair
    proxy_rtp, proxy_rtcp, stranger = _udp(), _udp(), _udp()
    try:
        bridge.set_peer("127.0.0.1", proxy_rtp.getsockname()[1], proxy_rtcp.getsockname()[1])
        rtp_port, rtcp_port = bridge.ports
        stranger.sendto(b"forged-rtp", ("127.0.0.1", rtp_port))
        stranger.sendto(b"forged-rtcp", ("127.0.0.1", rtcp_port))
        proxy_rtcp.sendto(b"rtcp-on-the-rtp-port", ("127.0.0.1", rtp_port))   # right host, wrong port
        await _until(lambda: bridge.foreign == 3)
        proxy_rtp.sendto(b"media", ("127.0.0.1", rtp_port))
        proxy_rtcp.sendto(b"report", ("127.0.0.1", rtcp_port))
        await _until(lambda: len(viewer.frames) == 2)
        assert sorted(viewer.frames) == [(0, b"media"), (1, b"report")]
        assert bridge.foreign == 3
    finally:
        for sock in (proxy_rtp, proxy_rtcp, stranger):
            sock.close()


async def test_nothing_passes_before_the_peer_is_known(pair: tuple[UdpPair, _Viewer]) -> None:
    bridge, viewer = pair
    early = _udp()
    try:
        early.sendto(b"early", ("127.0.0.1", bridge.ports[0]))
        await _until(lambda: bridge.foreign == 1)
        assert viewer.frames == []
    finally:
        early.close()


async def test_a_wildcard_peer_host_is_matched_by_port(pair: tuple[UdpPair, _Viewer]) -> None:
    bridge, viewer = pair
    proxy, stranger = _udp(), _udp()
    try:
        bridge.set_peer("0.0.0.0", proxy.getsockname()[1], proxy.getsockname()[1] + 1)
        stranger.sendto(b"forged", ("127.0.0.1", bridge.ports[0]))
        await _until(lambda: bridge.foreign == 1)
        proxy.sendto(b"media", ("127.0.0.1", bridge.ports[0]))
        await _until(lambda: viewer.frames == [(0, b"media")])
    finally:
        proxy.close()
        stranger.close()


def test_peer_hosts_compare_in_one_spelling() -> None:
    bridge = UdpPair()
    bridge.set_peer("::ffff:127.0.0.1", 5000, 5001)
    assert bridge.from_peer(("127.0.0.1", 5000), rtcp=False)
    assert not bridge.from_peer(("127.0.0.2", 5000), rtcp=False)
    assert bridge.from_peer(("127.0.0.1", 5001), rtcp=True)
    assert not bridge.from_peer(("127.0.0.1", 5001), rtcp=False)
    bridge.set_peer("fd00::1", 5000, 5001)
    assert bridge.from_peer(("fd00:0:0::1", 5000, 0, 0), rtcp=False)   # type: ignore[arg-type]


async def test_a_bridge_is_an_even_odd_port_pair(pair: tuple[UdpPair, _Viewer]) -> None:
    rtp_port, rtcp_port = pair[0].ports
    assert rtp_port % 2 == 0 and rtcp_port == rtp_port + 1


async def test_the_upstream_relay_passes_on_only_what_the_upstream_sends() -> None:
    """A relay (upstream in this pod, proxy on another node) forwards the upstream's datagrams
    to the proxy; a stranger's RTP, or RTCP that would redirect the proxy's reports, is dropped."""
    proxy_rtp, proxy_rtcp = _udp(), _udp()
    relay = await UdpRelay.open("127.0.0.1", "127.0.0.1", proxy_rtp.getsockname()[1],
                                proxy_rtcp.getsockname()[1], upstream_host="127.0.0.2")
    upstream, stranger = _udp("127.0.0.2"), _udp("127.0.0.1")
    try:
        rtp_port, rtcp_port = relay.ports
        stranger.sendto(b"foreign rtp", ("127.0.0.1", rtp_port))
        stranger.sendto(b"foreign rtcp", ("127.0.0.1", rtcp_port))
        upstream.sendto(b"camera rtp", ("127.0.0.1", rtp_port))
        await _until(lambda: relay.relayed == 1 and relay.foreign == 2)
        proxy_rtp.settimeout(1)
        assert proxy_rtp.recv(2048) == b"camera rtp"
        proxy_rtp.setblocking(False)
        with pytest.raises(BlockingIOError):
            proxy_rtp.recv(2048)
        assert relay.upstream_rtcp is None
    finally:
        relay.close()
        for sock in (proxy_rtp, proxy_rtcp, upstream, stranger):
            sock.close()
