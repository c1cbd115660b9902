"""Multicast out's group pool and multicast in's SDP files (control_plane/multicast.py, sdp_source.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from msm.control_plane.kubernetes import MULTICAST, KubernetesResolver
from msm.control_plane.multicast import MulticastPool
from msm.control_plane.resolver import Route, RouteError, parse_route
from msm.control_plane.sdp_source import read_sdp_source
from msm.protos import msm_pb2 as pb
from msm.sdk.errors import ConfigError, ResourceExhausted, UnsupportedTransport, UpstreamError
from msm.sdk.rtsp import TransportSpec
from msm.sdk.rtsp_server import MulticastGroup, viewer_sdp
from msm.sdk.sdp import SessionDescription
from msm.stub.viewer import TrackSetup
from tests.fake_kube import FakeKube
from tests.unit.test_k8s_resolver import CAMERA, MEDIA, annotate, kube, resolver  # noqa: F401 - fixtures
from tests.unit.test_planner import FakeProxy, FakeStub, Mesh


def test_pool_leases_one_group_per_stream_and_node_and_is_bounded() -> None:
    pool = MulticastPool("239.1.2.0/30", ttl=4, max_groups=3)
    a = pool.lease("cam", "n1")
    assert pool.lease("cam", "n1") is a and a.ttl == 4 and a.endpoint(1).rtp_port == a.port + 2
    b = pool.lease("cam", "n2")
    assert a.address != b.address
    with pytest.raises(ResourceExhausted):    # a /30 has two host addresses
        pool.lease("other", "n1")
    assert pool.refused == 1
    pool.release("cam", "n1")
    assert pool.lease("other", "n1").address == a.address   # released addresses are reused


@pytest.mark.parametrize("network,ttl", [("10.0.0.0/24", 1), ("224.0.0.0/24", 1), ("239.0.0.0/24", 0),
                                         ("nonsense", 1)])
def test_pool_refuses_what_is_no_multicast_pool(network: str, ttl: int) -> None:
    with pytest.raises(ConfigError):
        MulticastPool(network, ttl=ttl)


def test_route_multicast_switch_and_sdp_file_urls() -> None:
    assert parse_route("cam=rtsp://h/x#transport=tcp&multicast=on").multicast
    assert not parse_route("cam=rtsp://h/x").multicast
    with pytest.raises(RouteError):
        parse_route("cam=rtsp://h/x#multicast=maybe")
    assert Route(name="s", url="file:///srv/s.sdp").url.startswith("file:")
    assert parse_route("cam=rtsp://h/x#transport=multicast").transport == "multicast"
    with pytest.raises(RouteError):
        Route(name="s", url="file:///etc/passwd")


SDP = """v=0
o=- 1 1 IN IP4 192.0.2.9
s=x
c=IN IP4 239.9.9.9/4
t=0 0
{filter}m=video 5000 RTP/AVP 96
a=rtpmap:96 H264/90000
m=audio 5002 RTP/AVP 0
"""


def test_sdp_file_tracks_ports_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "s.sdp"
    path.write_text(SDP.format(filter=""))
    src = read_sdp_source(f"file://{path}")
    assert [t.encoding for t in src.tracks] == ["H264/90000", "PCMU/8000"]
    assert [(e.host, e.rtp_port) for e in src.listen] == [("239.9.9.9", 5000), ("239.9.9.9", 5002)]
    assert [s.host for s in src.sources] == ["192.0.2.9"] * 2 and src.ssm == [False, False]
    path.write_text(SDP.format(filter="a=source-filter: incl IN IP4 239.9.9.9 198.51.100.7\n"))
    src = read_sdp_source(f"file://{path}")
    assert [s.host for s in src.sources] == ["198.51.100.7"] * 2 and src.ssm == [True, True]


@pytest.mark.parametrize("text", [SDP.format(filter="").replace("192.0.2.9", "0.0.0.0"),
                                  SDP.format(filter="").replace("5000", "80"), "not sdp"])
def test_sdp_file_without_a_sender_or_a_usable_port_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.sdp"
    path.write_text(text)
    with pytest.raises(UpstreamError):
        read_sdp_source(f"file://{path}")
    with pytest.raises(UpstreamError):
        read_sdp_source(f"file://{tmp_path}/missing.sdp")


# -- the planner: one group leg per node and track, shared by its members ---------------------------
class MulticastProxy(FakeProxy):
    """The planner tests' fake proxy, also taking multicast legs (their TTL is remembered)."""

    ttls: dict[str, int]

    async def add_leg(self, flow_id: str, leg_id: str, destination: pb.Endpoint, *, enabled: bool,
                      labels: Mapping[str, str], srtp: pb.SrtpParams | None = None,
                      multicast_ttl: int = 0) -> None:
        await super().add_leg(flow_id, leg_id, destination, enabled=enabled, labels=labels, srtp=srtp)
        self.ttls[leg_id] = multicast_ttl


def multicast_mesh(multicast: bool = True) -> Mesh:
    mesh = Mesh(Route(name="cam", url="rtsp://192.0.2.1/live", node="a", multicast=multicast))
    for proxy in (mesh.pa, mesh.pb):
        proxy.__class__ = MulticastProxy
        proxy.ttls = {}   # type: ignore[attr-defined]
    return mesh


async def setup_multicast(mesh: Mesh, stub: FakeStub, session: str) -> list[pb.SetupReply]:
    return [await mesh.planner.setup(stub.info, pb.SetupRequest(
        stream_id="cam", track_index=index, session_id=session, viewer_host=f"host-{session}", multicast=True))
        for index in (0, 1)]


async def test_multicast_viewers_share_one_leg_per_track_and_release_the_group() -> None:
    mesh = multicast_mesh()
    described = await mesh.describe(mesh.va)
    group = described.multicast_group
    assert group.host.startswith("239.255.77.") and described.multicast_ttl == 1
    first = await setup_multicast(mesh, mesh.va, "s1")
    second = await setup_multicast(mesh, mesh.va, "s2")
    assert [r.group.rtp_port for r in first] == [group.rtp_port, group.rtp_port + 2]
    assert [r.group for r in first] == [r.group for r in second]
    assert mesh.pa.legs() == {"multicast@a/0": False, "multicast@a/1": False}   # one per track, not per viewer
    assert set(mesh.pa.ttls.values()) == {1}   # type: ignore[attr-defined]
    await mesh.play(mesh.va, "s1")
    await mesh.play(mesh.va, "s2")
    await mesh.pause(mesh.va, "s1")
    assert mesh.pa.legs() == {"multicast@a/0": True, "multicast@a/1": True}   # s2 still plays
    await mesh.teardown(mesh.va, "s2")
    assert mesh.pa.legs() == {"multicast@a/0": False, "multicast@a/1": False}  # s1 paused: nobody plays
    await mesh.teardown(mesh.va, "s1")
    assert mesh.pa.legs() == {} and mesh.planner.multicast.groups == {}


async def test_multicast_is_refused_461_where_the_route_does_not_allow_it() -> None:
    mesh = multicast_mesh(multicast=False)
    assert not (await mesh.describe(mesh.va)).HasField("multicast_group")
    with pytest.raises(UnsupportedTransport):
        await setup_multicast(mesh, mesh.va, "s1")
    assert mesh.planner.multicast.groups == {}


# -- Kubernetes: the Service annotation ---------------------------------------------------------------
async def test_the_multicast_annotation_allows_multicast_per_service(
        kube: FakeKube, resolver: KubernetesResolver) -> None:  # noqa: F811 - test_k8s_resolver's fixtures
    assert not (await resolver.resolve(CAMERA, MEDIA)).multicast
    annotate(kube, {MULTICAST: "true"})
    for _ in range(100):
        if (await resolver.resolve(CAMERA, MEDIA)).multicast:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the multicast annotation never took effect")
    annotate(kube, {MULTICAST: "sometimes"})    # not a switch: off (logged), the route still resolves
    for _ in range(100):
        if not (await resolver.resolve(CAMERA, MEDIA)).multicast:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("a malformed multicast annotation stayed on")


async def test_each_node_sends_its_own_group_from_its_relay() -> None:
    mesh = multicast_mesh()
    await mesh.describe(mesh.va)
    a = await setup_multicast(mesh, mesh.va, "s1")
    b = await setup_multicast(mesh, mesh.vb, "s2")
    assert a[0].group.host != b[0].group.host   # one group per stream and node
    assert set(mesh.pb.legs()) == {"multicast@b/0", "multicast@b/1"}   # on node b's relay flows
    assert {"multicast@a/0", "multicast@a/1", "relay@b"} <= set(mesh.pa.legs())
    await mesh.teardown(mesh.vb, "s2")
    assert mesh.pb.legs() == {} and set(mesh.planner.multicast.groups) == {("cam", "a")}


def test_the_setup_reply_names_the_group_its_ports_and_ttl() -> None:
    setup = TrackSetup(0, TransportSpec(unicast=False))
    assert setup.destination("192.0.2.5", "127.0.0.1") == pb.Endpoint()   # the control plane chooses
    reply = pb.SetupReply(group=pb.Endpoint(host="239.255.77.1", rtp_port=5004, rtcp_port=5005), ttl=3)
    assert str(setup.answer(reply)) == "RTP/AVP;multicast;destination=239.255.77.1;port=5004-5005;ttl=3"
    sdp = SessionDescription.parse(SDP.format(filter=""))
    text = viewer_sdp(sdp, "10.0.0.1", MulticastGroup("239.255.77.1", 5004, 3)).decode()
    assert "c=IN IP4 239.255.77.1/3" in text and "m=video 5004 " in text and "m=audio 5006 " in text
