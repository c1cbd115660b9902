"""The control plane's decisions (control_plane.planner) with fake proxies, stubs and clock.

No gRPC, no sockets, no sleeps: each fake records what the planner asked of it,
and linger runs on a clock the test advances.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pytest

from msm.control_plane import planner as planner_module
from msm.control_plane.links import ProxyLink
from msm.control_plane.planner import (
    REKEY_INTERVAL,
    REKEY_RETRY,
    SRTP_GCM,
    SRTP_PROFILE,
    Planner,
    PlannerSettings,
    relay_profile,
)
from msm.control_plane.ports import StubInfo
from msm.control_plane.resolver import Route, StaticResolver
from msm.control_plane.store import MemoryStore, StreamRecord, ViewerRecord
from msm.control_plane.upstream_state import TRANSITIONS, Trigger, UpstreamState, next_state, trigger_of_event
from msm.control_plane.view import list_streams, snapshot
from msm.protos import msm_pb2 as pb
from msm.runtime.redact import session_tag
from msm.sdk.errors import ConfigError, MethodNotValid, MsmError, NotFound, SessionNotFound, Unavailable

LINGER = 5.0
TRACKS = [pb.Track(index=0, kind="video", clock_rate=90000, encoding="H264/90000"),
          pb.Track(index=1, kind="audio", clock_rate=8000, encoding="PCMU/8000")]


def leg(session_id: str, index: int) -> str:
    """A viewer's leg id as the proxy sees it: the session's tag, never the session id."""
    return f"{session_tag(session_id)}/{index}"


# -- fakes -------------------------------------------------------------------------------------------
class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((t for t in self.timers if t.when <= self.now and not t.cancelled), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t not in due and not t.cancelled]
        for timer in due:
            timer.callback()


@dataclass
class FakeFlow:
    clock_rate: int
    labels: dict[str, str]
    legs: dict[str, tuple[pb.Endpoint, bool]] = field(default_factory=dict)   # leg id -> destination, enabled
    source: pb.SourceFilter | None = None
    srtp: pb.SrtpParams | None = None                                         # what arrives is SRTP
    leg_keys: dict[str, pb.SrtpParams] = field(default_factory=dict)          # leg id -> its SRTP key


class FakeProxy:
    _ports = itertools.count(20000, 2)

    def __init__(self, node: str, proxy_id: str = "p1") -> None:
        self._node = node
        self._proxy_id = proxy_id
        self.flows: dict[str, FakeFlow] = {}
        self.closed = False
        self.fail: type[MsmError] | None = None
        self.rekeys: list[tuple[str, str, str, int]] = []   # (node, flow, leg, epoch); shared by a Mesh's proxies

    @property
    def node(self) -> str:
        return self._node

    @property
    def proxy_id(self) -> str:
        return self._proxy_id

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail(f"proxy on {self._node} fails")

    async def add_flow(self, flow_id: str, clock_rate: int, labels: Mapping[str, str],
                       source: pb.SourceFilter | None = None, srtp: pb.SrtpParams | None = None) -> pb.Endpoint:
        self._check()
        assert flow_id not in self.flows
        self.flows[flow_id] = FakeFlow(clock_rate, dict(labels), source=source, srtp=srtp)
        port = next(self._ports)
        return pb.Endpoint(host=f"10.0.0.{len(self._node)}", rtp_port=port, rtcp_port=port + 1)

    async def set_flow_source(self, flow_id: str, source: pb.SourceFilter) -> None:
        self._check()
        self.flows[flow_id].source = source

    async def remove_flow(self, flow_id: str) -> None:
        self._check()
        del self.flows[flow_id]

    async def add_leg(self, flow_id: str, leg_id: str, destination: pb.Endpoint, *, enabled: bool,
                      labels: Mapping[str, str], srtp: pb.SrtpParams | None = None) -> None:
        self._check()
        self.flows[flow_id].legs[leg_id] = (destination, enabled)
        if srtp is not None:
            self.flows[flow_id].leg_keys[leg_id] = srtp

    async def rekey(self, flow_id: str, leg_id: str, srtp: pb.SrtpParams) -> None:
        self._check()
        flow = self.flows[flow_id]
        current = flow.leg_keys[leg_id] if leg_id else flow.srtp
        assert current is not None and srtp.epoch > current.epoch   # as the proxy insists
        if leg_id:
            flow.leg_keys[leg_id] = srtp
        else:
            flow.srtp = srtp
        self.rekeys.append((self._node, flow_id, leg_id, srtp.epoch))

    async def update_leg(self, flow_id: str, leg_id: str, *, enabled: bool) -> None:
        self._check()
        destination, _ = self.flows[flow_id].legs[leg_id]
        self.flows[flow_id].legs[leg_id] = (destination, enabled)

    async def remove_leg(self, flow_id: str, leg_id: str) -> None:
        self._check()
        del self.flows[flow_id].legs[leg_id]

    async def list_flows(self) -> list[pb.FlowStats]:
        self._check()
        return [pb.FlowStats(flow_id=fid, node=self._node,
                             legs=[pb.LegStats(leg_id=lid, flow_id=fid, enabled=en) for lid, (_, en) in f.legs.items()])
                for fid, f in self.flows.items()]

    async def close(self) -> None:
        self.closed = True

    def legs(self) -> dict[str, bool]:
        """Every leg on this proxy: leg id -> enabled."""
        return {leg: enabled for f in self.flows.values() for leg, (_, enabled) in f.legs.items()}


class FakeStub:
    def __init__(self, stub_id: str, node: str, *, source: bool = False) -> None:
        self._info = StubInfo(stub_id=stub_id, node=node, namespace="ns", pod=stub_id, can_open_upstream=source)
        self.commands: list[tuple[str, str]] = []
        self.states: list[tuple[str, bool]] = []
        self.open_error: MsmError | None = None
        self.tracks = list(TRACKS)
        self.sources: list[pb.SourceFilter] = []   # what its SETUP answers (empty: says nothing)

    @property
    def info(self) -> StubInfo:
        return self._info

    async def open(self, stream_id: str, url: str, transport: str) -> tuple[str, list[pb.Track]]:
        self.commands.append(("open", stream_id))
        if self.open_error is not None:
            raise self.open_error
        return "v=0\r\n", list(self.tracks)

    async def setup(self, stream_id: str, track_indexes: list[int],
                    destinations: list[pb.Endpoint]) -> list[pb.SourceFilter]:
        assert len(track_indexes) == len(destinations)
        self.commands.append(("setup", stream_id))
        return list(self.sources)

    async def play(self, stream_id: str) -> None:
        self.commands.append(("play", stream_id))

    async def close_upstream(self, stream_id: str) -> None:
        self.commands.append(("close", stream_id))

    def stream_state(self, stream_id: str, upstream_up: bool) -> None:
        self.states.append((stream_id, upstream_up))

    def sent(self, kind: str) -> int:
        return sum(1 for k, _ in self.commands if k == kind)


class Mesh:
    """A planner with a source stub and proxy on node a, and a viewer stub on nodes a and b."""

    def __init__(self, route: Route | None = None) -> None:
        route = route or Route(name="cam", url="rtsp://192.0.2.1/live", node="a")
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.planner = Planner(StaticResolver({route.name: route}), store=self.store, clock=self.clock,
                               linger=LINGER)
        self.source = FakeStub("src", "a", source=True)
        self.va = FakeStub("va", "a")
        self.vb = FakeStub("vb", "b")
        for stub in (self.source, self.va, self.vb):
            self.planner.stub_connected(stub)
        self.pa = FakeProxy("a")
        self.pb = FakeProxy("b")
        self.planner.proxy_registered(self.pa)
        self.planner.proxy_registered(self.pb)
        self.pb.rekeys = self.pa.rekeys   # one journal: the order across nodes matters

    async def describe(self, stub: FakeStub, name: str = "cam") -> pb.DescribeReply:
        return await self.planner.describe(stub.info, pb.DescribeRequest(url=f"rtsp://mesh/{name}"))

    async def setup(self, stub: FakeStub, session: str, tracks: tuple[int, ...] = (0, 1)) -> list[pb.SetupReply]:
        replies = []
        for index in tracks:
            replies.append(await self.planner.setup(stub.info, pb.SetupRequest(
                stream_id="cam", track_index=index, session_id=session, viewer_host=f"host-{session}",
                destination=pb.Endpoint(host=f"host-{session}", rtp_port=5000 + 2 * index,
                                        rtcp_port=5001 + 2 * index))))
        return replies

    async def join(self, stub: FakeStub, session: str) -> None:
        await self.describe(stub)
        await self.setup(stub, session)
        await self.play(stub, session)

    async def play(self, stub: FakeStub, session: str) -> pb.SessionReply:
        return await self.planner.play(stub.info, pb.SessionRequest(stream_id="cam", session_id=session))

    async def pause(self, stub: FakeStub, session: str) -> pb.SessionReply:
        return await self.planner.pause(stub.info, pb.SessionRequest(stream_id="cam", session_id=session))

    async def teardown(self, stub: FakeStub, session: str) -> pb.SessionReply:
        return await self.planner.teardown(stub.info, pb.SessionRequest(stream_id="cam", session_id=session))

    def stream(self) -> StreamRecord:
        record = self.store.get_stream("cam")
        assert record is not None
        return record

    def viewers(self) -> list[str]:
        return sorted(v.session_id for v in self.store.viewers("cam"))

    async def expire_linger(self) -> None:
        self.clock.advance(LINGER)
        await self.planner.settle()


@pytest.fixture
async def mesh() -> Mesh:
    return Mesh()


# -- one and several viewers on one upstream ---------------------------------------------------------
async def test_one_viewer_setup_play_pause_teardown(mesh: Mesh) -> None:
    described = await mesh.describe(mesh.va)
    assert described.stream_id == "cam" and len(described.tracks) == 2
    assert mesh.stream().upstream_state is UpstreamState.DESCRIBED

    replies = await mesh.setup(mesh.va, "s1")
    assert mesh.source.commands == [("open", "cam"), ("setup", "cam")]
    assert mesh.stream().upstream_state is UpstreamState.READY
    # One flow per track on the source's node, its ingress is what the viewer hears from.
    flows = mesh.stream().flows
    assert set(flows) == {0, 1} and all(f.node == "a" for f in flows.values())
    assert [r.source for r in replies] == [flows[0].ingress, flows[1].ingress]
    assert mesh.pa.legs() == {leg("s1", 0): False, leg("s1", 1): False}   # set up, not playing yet

    await mesh.play(mesh.va, "s1")
    assert mesh.pa.legs() == {leg("s1", 0): True, leg("s1", 1): True}
    assert mesh.source.sent("play") == 1 and mesh.stream().upstream_state is UpstreamState.PLAYING

    await mesh.pause(mesh.va, "s1")
    assert mesh.pa.legs() == {leg("s1", 0): False, leg("s1", 1): False}
    assert mesh.stream().upstream_state is UpstreamState.PLAYING   # the upstream plays on for others

    await mesh.teardown(mesh.va, "s1")
    assert mesh.pa.legs() == {} and mesh.viewers() == []
    assert mesh.source.sent("close") == 0   # not yet: the linger
    await mesh.expire_linger()
    assert mesh.source.sent("close") == 1 and mesh.pa.flows == {}
    record = mesh.stream()
    assert record.upstream_state is UpstreamState.CLOSED and record.sdp is None and record.flows == {}


async def test_viewers_share_one_upstream(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "s1")
    await mesh.join(mesh.va, "s2")
    await mesh.join(mesh.va, "s3")
    assert mesh.source.sent("open") == 1 and mesh.source.sent("setup") == 1 and mesh.source.sent("play") == 1
    assert mesh.stream().opened == 1 and len(mesh.pa.flows) == 2
    assert mesh.viewers() == ["s1", "s2", "s3"]
    assert all(mesh.pa.legs()[leg(s, i)] for s in ("s1", "s2", "s3") for i in (0, 1))

    await mesh.pause(mesh.va, "s2")   # only that viewer's legs
    assert mesh.pa.legs() == {leg("s1", 0): True, leg("s1", 1): True, leg("s2", 0): False, leg("s2", 1): False,
                              leg("s3", 0): True, leg("s3", 1): True}
    await mesh.teardown(mesh.va, "s1")
    await mesh.teardown(mesh.va, "s2")
    mesh.clock.advance(LINGER * 10)
    await mesh.planner.settle()
    assert mesh.source.sent("close") == 0   # s3 still watches: no linger runs
    await mesh.teardown(mesh.va, "s3")
    await mesh.expire_linger()
    assert mesh.source.sent("close") == 1


async def test_teardown_of_one_track_keeps_the_viewer(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "s1")
    await mesh.planner.teardown(mesh.va.info, pb.SessionRequest(stream_id="cam", session_id="s1", track_indexes=[1]))
    assert mesh.pa.legs() == {leg("s1", 0): True} and mesh.viewers() == ["s1"]


# -- linger ----------------------------------------------------------------------------------------------
async def test_linger_closes_only_after_its_time(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "s1")
    await mesh.teardown(mesh.va, "s1")
    mesh.clock.advance(LINGER - 0.1)
    await mesh.planner.settle()
    assert mesh.source.sent("close") == 0
    mesh.clock.advance(0.1)
    await mesh.planner.settle()
    assert mesh.source.sent("close") == 1


async def test_a_viewer_during_linger_cancels_it(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "s1")
    await mesh.teardown(mesh.va, "s1")
    mesh.clock.advance(LINGER / 2)
    await mesh.join(mesh.va, "s2")
    await mesh.expire_linger()
    mesh.clock.advance(LINGER * 10)
    await mesh.planner.settle()
    assert mesh.source.sent("close") == 0 and mesh.source.sent("open") == 1
    assert mesh.pa.legs() == {leg("s2", 0): True, leg("s2", 1): True}


async def test_a_describe_without_setup_does_not_pin_the_upstream(mesh: Mesh) -> None:
    await mesh.describe(mesh.va)
    await mesh.expire_linger()
    assert mesh.source.commands == [("open", "cam"), ("close", "cam")]
    # The next viewer opens it again, with new flow ids.
    await mesh.join(mesh.va, "s1")
    assert mesh.source.sent("open") == 2 and mesh.stream().opened == 2
    assert all(fid.endswith("/2") for fid in mesh.pa.flows)


async def test_a_timer_that_fired_while_a_viewer_arrived_closes_nothing(mesh: Mesh) -> None:
    await mesh.describe(mesh.va)
    mesh.clock.advance(LINGER)   # the linger task is spawned, but has not run yet
    await mesh.setup(mesh.va, "s1")
    await mesh.planner.settle()
    assert mesh.source.sent("close") == 0 and mesh.viewers() == ["s1"]


# -- relays across nodes --------------------------------------------------------------------------------
async def test_a_viewer_on_another_node_gets_one_relay_per_node(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    assert set(record.relays) == {("b", 0), ("b", 1)}
    # node a: the source flows feed a1 and one relay leg per track to node b.
    assert mesh.pa.legs() == {leg("a1", 0): True, leg("a1", 1): True, "relay@b": True}
    assert all("relay@b" in mesh.pa.flows[record.flows[i].flow_id].legs for i in (0, 1))
    relay_ingress = {record.relays[("b", i)].ingress.rtp_port for i in (0, 1)}
    assert {mesh.pa.flows[record.flows[i].flow_id].legs["relay@b"][0].rtp_port for i in (0, 1)} == relay_ingress
    # node b: its relay flows fan out to b1.
    assert set(mesh.pb.flows) == {"cam/0/1@b", "cam/1/1@b"}
    assert mesh.pb.legs() == {leg("b1", 0): True, leg("b1", 1): True}

    await mesh.join(mesh.vb, "b2")   # reuses node b's relays
    assert len(mesh.pb.flows) == 2 and sum(len(f.legs) for f in mesh.pa.flows.values()) == 4
    assert mesh.pb.legs() == {leg("b1", 0): True, leg("b1", 1): True, leg("b2", 0): True, leg("b2", 1): True}

    await mesh.teardown(mesh.vb, "b1")
    assert len(mesh.pb.flows) == 2
    await mesh.teardown(mesh.vb, "b2")   # the last viewer on b: the relay goes
    assert mesh.pb.flows == {} and mesh.stream().relays == {}
    assert mesh.pa.legs() == {leg("a1", 0): True, leg("a1", 1): True}


async def test_relay_legs_get_fresh_srtp_keys_and_local_legs_none(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    keys = []
    for index in (0, 1):
        relay = mesh.pb.flows[record.relays[("b", index)].flow_id]
        leg_key = mesh.pa.flows[record.flows[index].flow_id].leg_keys["relay@b"]
        assert relay.srtp == leg_key   # the sending leg and the receiving flow share the key
        assert leg_key.profile == SRTP_PROFILE and leg_key.epoch == 1
        assert len(leg_key.master_key) == 16 and len(leg_key.master_salt) == 14
        keys.append(leg_key.master_key)
    assert keys[0] != keys[1]    # one key per relay leg
    # Viewers' legs on either node, and the source flows' own ingress, are plain RTP.
    assert set(mesh.pa.flows[record.flows[0].flow_id].leg_keys) == {"relay@b"}
    assert all(f.srtp is None for f in mesh.pa.flows.values())
    assert all(not f.leg_keys for f in mesh.pb.flows.values())


GCM_AND_CM = (SRTP_GCM, SRTP_PROFILE)


@pytest.mark.parametrize(("a_can", "b_can", "preferred", "expected"), [
    (GCM_AND_CM, GCM_AND_CM, SRTP_GCM, SRTP_GCM),          # two current proxies: AES-GCM
    (GCM_AND_CM, (), SRTP_GCM, SRTP_PROFILE),              # b said nothing (an older proxy): AES-CM
    ((SRTP_PROFILE,), GCM_AND_CM, SRTP_GCM, SRTP_PROFILE),  # a's engine cannot do GCM
    (GCM_AND_CM, GCM_AND_CM, SRTP_PROFILE, SRTP_PROFILE),  # the setting says AES-CM
])
async def test_relay_legs_use_gcm_only_when_both_proxies_can(a_can: tuple[str, ...], b_can: tuple[str, ...],
                                                             preferred: str, expected: str) -> None:
    mesh = Mesh()
    mesh.planner.settings = replace(mesh.planner.settings, srtp_profile=preferred)
    mesh.pa.srtp_profiles, mesh.pb.srtp_profiles = a_can, b_can   # what their hellos said
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    relay_id, source_id = record.relays[("b", 0)].flow_id, record.flows[0].flow_id
    key = mesh.pa.flows[source_id].leg_keys["relay@b"]
    assert mesh.pb.flows[relay_id].srtp == key and key.profile == expected
    assert len(key.master_key) == 16 and len(key.master_salt) == (12 if expected == SRTP_GCM else 14)
    mesh.clock.advance(REKEY_INTERVAL)   # a rekey keeps the leg's profile
    await mesh.planner.settle()
    rekeyed = mesh.pb.flows[relay_id].srtp
    assert rekeyed is not None and rekeyed.epoch == 2 and rekeyed.profile == expected
    assert len(rekeyed.master_salt) == len(key.master_salt)


def test_an_unknown_srtp_profile_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="SRTP profile"):
        PlannerSettings(srtp_profile="AES_CM_128_HMAC_SHA1_32")


def test_a_proxy_link_reports_the_profiles_of_its_hello() -> None:
    assert relay_profile(SRTP_GCM, FakeProxy("a"), FakeProxy("b")) == SRTP_PROFILE   # no hello field: AES-CM
    hello = pb.ProxyHello(node="a", dataplane_address="127.0.0.1:1", srtp_profiles=list(GCM_AND_CM))
    assert ProxyLink.srtp_profiles.fget(SimpleNamespace(hello=hello)) == GCM_AND_CM  # type: ignore[attr-defined]


async def test_srtp_keys_rotate_receiver_first_on_the_clock(mesh: Mesh) -> None:
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    relay_id, source_id = record.relays[("b", 0)].flow_id, record.flows[0].flow_id
    first = mesh.pb.flows[relay_id].srtp
    assert first is not None
    mesh.clock.advance(REKEY_INTERVAL - 1)
    await mesh.planner.settle()
    assert mesh.pa.rekeys == []
    mesh.clock.advance(1)
    await mesh.planner.settle()
    assert [r for r in mesh.pa.rekeys if r[1] in (relay_id, source_id)] == [
        ("b", relay_id, "", 2), ("a", source_id, "relay@b", 2)]
    second = mesh.pb.flows[relay_id].srtp
    assert second is not None and second == mesh.pa.flows[source_id].leg_keys["relay@b"]
    assert second.master_key != first.master_key and second.epoch == 2
    mesh.clock.advance(REKEY_INTERVAL)
    await mesh.planner.settle()
    assert mesh.pb.flows[relay_id].srtp.epoch == 3   # type: ignore[union-attr]


async def test_a_failed_rekey_is_retried_soon_and_a_gone_relay_stops_rotating(mesh: Mesh) -> None:
    await mesh.join(mesh.vb, "b1")
    relay_id = mesh.stream().relays[("b", 0)].flow_id
    mesh.pb.fail = Unavailable
    mesh.clock.advance(REKEY_INTERVAL)
    await mesh.planner.settle()
    assert mesh.pa.rekeys == []
    mesh.pb.fail = None
    mesh.clock.advance(REKEY_RETRY)
    await mesh.planner.settle()
    assert ("b", relay_id, "", 3) in mesh.pa.rekeys   # a fresh key, a newer epoch
    await mesh.teardown(mesh.vb, "b1")
    done = len(mesh.pa.rekeys)
    mesh.clock.advance(REKEY_INTERVAL * 2)
    await mesh.planner.settle()
    assert len(mesh.pa.rekeys) == done and not [t for t in mesh.clock.timers if not t.cancelled and t.when > 1e4]


async def test_srtp_off_sends_no_keys() -> None:
    mesh = Mesh()
    mesh.planner.srtp = False
    await mesh.join(mesh.vb, "b1")
    assert all(f.srtp is None for f in mesh.pb.flows.values())
    assert all(not f.leg_keys for f in mesh.pa.flows.values())
    mesh.clock.advance(REKEY_INTERVAL)
    await mesh.planner.settle()
    assert mesh.pa.rekeys == []


async def test_keys_are_never_in_the_store_or_the_operator_view(mesh: Mesh) -> None:
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    key = mesh.pb.flows[record.relays[("b", 0)].flow_id].srtp
    assert key is not None
    wire = (await list_streams(mesh.planner)).SerializeToString()
    for secret in (key.master_key, key.master_salt):
        assert secret not in wire
        assert secret.hex() not in repr(record) and repr(secret) not in repr(record)
        assert repr(secret) not in repr(snapshot(mesh.store))


async def test_the_operator_view_shows_relays_and_legs(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    response = await list_streams(mesh.planner)
    (stream,) = response.streams
    assert stream.upstream_state == "playing" and stream.upstream_sessions_opened == 1
    assert [t.flow.node for t in stream.tracks] == ["a", "a"]
    assert [[r.node for r in t.relays] for t in stream.tracks] == [["b"], ["b"]]
    # Viewers are shown by their session's tag, never by the session id (it controls the session).
    assert all(v.session_id == "" for v in stream.viewers)
    a1, b1 = session_tag("a1"), session_tag("b1")
    assert {v.session_tag: sorted(x.leg_id for x in v.legs) for v in stream.viewers} == {
        a1: [f"{a1}/0", f"{a1}/1"], b1: [f"{b1}/0", f"{b1}/1"]}
    views = snapshot(mesh.store)
    assert views["cam"].upstream_state == "playing" and sorted(views["cam"].viewers) == ["a1", "b1"]


async def test_legs_and_their_labels_name_the_session_tag_never_the_id(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "secret-session-a1")
    await mesh.join(mesh.vb, "secret-session-b1")
    for proxy in (mesh.pa, mesh.pb):
        for flow in proxy.flows.values():
            assert not any("secret-session" in leg_id for leg_id in flow.legs)
    sent = [(proxy.node, leg_id) for proxy in (mesh.pa, mesh.pb) for flow in proxy.flows.values()
            for leg_id in flow.legs]
    assert (("a", leg("secret-session-a1", 0)) in sent and ("b", leg("secret-session-b1", 1)) in sent)
    with pytest.raises(SessionNotFound) as refused:
        await mesh.play(mesh.va, "secret-session-zz")
    assert "secret-session" not in refused.value.reason


async def test_two_sessions_with_one_tag_get_distinct_legs(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags are 32 bits: two sessions on one flow may share one, and their legs must not."""
    monkeypatch.setattr(planner_module, "session_tag", lambda session_id: "0badcafe")
    await mesh.join(mesh.va, "s1")
    await mesh.join(mesh.va, "s2")
    await mesh.setup(mesh.va, "s2")   # a repeated SETUP keeps its leg
    assert mesh.pa.legs() == {"0badcafe/0": True, "0badcafe/1": True, "0badcafe~1/0": True, "0badcafe~1/1": True}
    await mesh.teardown(mesh.va, "s1")
    assert mesh.pa.legs() == {"0badcafe~1/0": True, "0badcafe~1/1": True}
    (stream,) = (await list_streams(mesh.planner)).streams
    assert [sorted(x.leg_id for x in v.legs) for v in stream.viewers] == [["0badcafe~1/0", "0badcafe~1/1"]]


async def test_an_unreachable_proxy_is_left_out_of_the_view(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    mesh.pa.fail = Unavailable
    (stream,) = (await list_streams(mesh.planner)).streams
    assert stream.tracks[0].flow.flow_id == "" and list(stream.viewers[0].legs) == []


# -- proxy restart, stub departure ---------------------------------------------------------------------
async def test_a_restarted_proxy_resets_its_streams(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    restarted = FakeProxy("a", proxy_id="p2")
    mesh.planner.proxy_registered(restarted)
    await mesh.planner.settle()
    assert mesh.pa.closed and mesh.planner.proxies["a"] is restarted
    assert mesh.viewers() == [] and mesh.source.sent("close") == 1
    assert mesh.stream().upstream_state is UpstreamState.CLOSED
    assert mesh.pb.flows == {}   # the relay on the other node is removed
    # Viewers come back to a fresh upstream on the new proxy.
    await mesh.join(mesh.va, "a2")
    assert len(restarted.flows) == 2 and mesh.source.sent("open") == 2


async def test_the_same_proxy_saying_hello_again_changes_nothing(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    mesh.planner.proxy_registered(FakeProxy("a", proxy_id="p1"))
    await mesh.planner.settle()
    assert mesh.viewers() == ["a1"] and mesh.source.sent("close") == 0


async def test_a_vanished_viewer_stub_drops_its_viewers_only(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    assert mesh.planner.stub_disconnected(mesh.vb)
    await mesh.planner.settle()
    assert mesh.viewers() == ["a1"] and mesh.pb.flows == {}
    assert mesh.source.sent("close") == 0 and mesh.stream().upstream_state is UpstreamState.PLAYING


async def test_a_vanished_upstream_stub_closes_the_stream(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    assert mesh.planner.stub_disconnected(mesh.source)
    await mesh.planner.settle()
    record = mesh.stream()
    assert record.upstream_state is UpstreamState.CLOSED and record.upstream_stub is None
    assert mesh.pa.flows == {}
    assert mesh.source.sent("close") == 0   # it is gone: nobody to tell


async def test_a_replaced_stub_link_is_not_a_departure(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    newer = FakeStub("va", "a")
    assert mesh.planner.stub_connected(newer) is mesh.va
    assert not mesh.planner.stub_disconnected(mesh.va)   # the old link ends after the new one came
    await mesh.planner.settle()
    assert mesh.viewers() == ["a1"]


async def test_viewer_gone_drops_that_viewer(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.va, "a2")
    await mesh.planner.viewer_gone("a1", "session timed out")
    assert mesh.viewers() == ["a2"] and set(mesh.pa.legs()) == {leg("a2", 0), leg("a2", 1)}


# -- upstream state ---------------------------------------------------------------------------------------
def event(cause: pb.UpstreamEvent.Cause, state: pb.UpstreamEvent.State) -> pb.UpstreamEvent:
    return pb.UpstreamEvent(stream_id="cam", state=state, cause=cause, detail="free text, never read")


async def test_upstream_events_move_the_state_and_tell_the_viewers_stubs(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.CONNECTION_LOST, pb.UpstreamEvent.DOWN))
    assert mesh.stream().upstream_state is UpstreamState.DOWN
    assert mesh.va.states == [("cam", False)] and mesh.vb.states == [("cam", False)]
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.RECONNECT_ATTEMPT, pb.UpstreamEvent.CONNECTING))
    assert mesh.stream().upstream_state is UpstreamState.CONNECTING and len(mesh.va.states) == 1
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.RECONNECTED, pb.UpstreamEvent.PLAYING))
    assert mesh.stream().upstream_state is UpstreamState.PLAYING and mesh.stream().opened == 2
    assert mesh.va.states[-1] == ("cam", True) and mesh.source.states == []


async def test_an_event_for_a_closed_upstream_is_ignored(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    await mesh.teardown(mesh.va, "a1")
    await mesh.expire_linger()
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.CONNECTION_LOST, pb.UpstreamEvent.DOWN))
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.STARTED, pb.UpstreamEvent.PLAYING))
    assert mesh.stream().upstream_state is UpstreamState.CLOSED


def test_the_transition_table() -> None:
    S, T = UpstreamState, Trigger
    assert next_state(S.IDLE, T.OPEN) is S.CONNECTING
    assert next_state(S.CONNECTING, T.OPEN_FAILED) is S.DOWN
    assert next_state(S.READY, T.STARTED) is S.PLAYING
    assert next_state(S.PLAYING, T.PLAY) is S.PLAYING   # STARTED arrives before PLAY's result
    assert next_state(S.CLOSED, T.CONNECTION_LOST) is None
    assert next_state(S.IDLE, T.PLAY) is None
    assert all(TRANSITIONS[(s, T.CLOSE)] is S.CLOSED for s in S)
    assert trigger_of_event(event(pb.UpstreamEvent.RECONNECTED, pb.UpstreamEvent.CONNECTING)) is T.RECONNECTED_READY
    assert trigger_of_event(event(pb.UpstreamEvent.CAUSE_UNSPECIFIED, pb.UpstreamEvent.DOWN)) is T.CONNECTION_LOST
    assert trigger_of_event(event(pb.UpstreamEvent.CAUSE_UNSPECIFIED, pb.UpstreamEvent.UNKNOWN)) is None


# -- errors -----------------------------------------------------------------------------------------------
async def test_an_upstream_404_reaches_the_viewer_as_404(mesh: Mesh) -> None:
    mesh.source.open_error = NotFound("upstream: 404 Not Found")
    with pytest.raises(NotFound) as caught:
        await mesh.describe(mesh.va)
    assert caught.value.status == 404 and caught.value.reason == "upstream: 404 Not Found"
    assert mesh.stream().upstream_state is UpstreamState.DOWN


async def test_requests_for_unknown_things_are_refused(mesh: Mesh) -> None:
    with pytest.raises(NotFound):
        await mesh.describe(mesh.va, "nope")
    with pytest.raises(NotFound):
        await mesh.play(mesh.va, "s1")   # no stream cam yet
    await mesh.describe(mesh.va)
    with pytest.raises(SessionNotFound):
        await mesh.play(mesh.va, "s1")
    with pytest.raises(NotFound):
        await mesh.setup(mesh.va, "s1", tracks=(7,))
    await mesh.teardown(mesh.va, "never-set-up")   # TEARDOWN of nothing is fine


async def test_play_before_the_stream_is_set_up_is_not_valid(mesh: Mesh) -> None:
    await mesh.describe(mesh.va)
    mesh.store.put_viewer(ViewerRecord("cam", "s1", "va", "h"))
    with pytest.raises(MethodNotValid):
        await mesh.play(mesh.va, "s1")


async def test_no_proxy_or_no_source_stub_is_unavailable() -> None:
    mesh = Mesh()
    mesh.planner.proxies.clear()
    await mesh.describe(mesh.va)
    with pytest.raises(Unavailable, match="no RTP proxy"):
        await mesh.setup(mesh.va, "s1")
    # The failed SETUP left no viewer behind, and the linger still closes the upstream.
    assert mesh.viewers() == []
    await mesh.expire_linger()
    assert mesh.source.sent("close") == 1

    lonely = Mesh()
    lonely.planner.stubs.pop("src")
    with pytest.raises(Unavailable, match="no stub can reach the source"):
        await lonely.describe(lonely.va)


async def test_a_failing_proxy_call_leaves_no_half_made_flows(mesh: Mesh) -> None:
    await mesh.describe(mesh.va)
    mesh.pb.fail = Unavailable
    await mesh.setup(mesh.va, "a1")
    with pytest.raises(Unavailable):
        await mesh.setup(mesh.vb, "b1")
    assert mesh.pb.flows == {} and mesh.stream().relays == {} and mesh.viewers() == ["a1"]


def test_the_memory_store_hands_out_copies() -> None:
    store = MemoryStore()
    record = StreamRecord(Route(name="cam", url="rtsp://192.0.2.1/live"))
    store.put_stream(record)
    record.opened = 7
    got = store.get_stream("cam")
    assert got is not None and got.opened == 0
    got.tracks.append(TRACKS[0])
    assert store.get_stream("cam") == StreamRecord(Route(name="cam", url="rtsp://192.0.2.1/live"))
    store.put_viewer(ViewerRecord("cam", "s1", "va", "h"))
    store.delete_stream("cam")
    assert store.stream_ids() == [] and store.viewers("cam") == []


# -- trust: sources, destinations, bounds ---------------------------------------------------------------
async def test_every_flow_is_told_its_source(mesh: Mesh) -> None:
    mesh.source.sources = [pb.SourceFilter(host="192.0.2.1", rtp_port=6000, rtcp_port=6001),
                           pb.SourceFilter(host="192.0.2.1", rtp_port=6002, rtcp_port=6003)]
    await mesh.join(mesh.va, "a1")
    await mesh.join(mesh.vb, "b1")
    record = mesh.stream()
    # The upstream flows: what the SETUP answered, track by track.
    assert [mesh.pa.flows[record.flows[i].flow_id].source for i in (0, 1)] == mesh.source.sources
    # The relay flows on node b: the source flow's own ingress, which its legs send from.
    for i in (0, 1):
        ingress = record.flows[i].ingress
        assert mesh.pb.flows[record.relays[("b", i)].flow_id].source == pb.SourceFilter(
            host=ingress.host, rtp_port=ingress.rtp_port, rtcp_port=ingress.rtcp_port)
    # A reconnected upstream sends from where its new SETUPs said; a track they named
    # nothing for accepts its host on any port.
    await mesh.planner.upstream_event(event(pb.UpstreamEvent.CONNECTION_LOST, pb.UpstreamEvent.DOWN))
    renewed = event(pb.UpstreamEvent.RECONNECTED, pb.UpstreamEvent.PLAYING)
    renewed.sources[0].CopyFrom(pb.SourceFilter(host="192.0.2.1", rtp_port=7000, rtcp_port=7001))
    await mesh.planner.upstream_event(renewed)
    assert [mesh.pa.flows[record.flows[i].flow_id].source for i in (0, 1)] == [
        pb.SourceFilter(host="192.0.2.1", rtp_port=7000, rtcp_port=7001), pb.SourceFilter(host="192.0.2.1")]


async def test_a_setup_that_names_no_source_falls_back_to_the_url_host(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    record = mesh.stream()
    assert all(mesh.pa.flows[ref.flow_id].source == pb.SourceFilter(host="192.0.2.1")
               for ref in record.flows.values())


@pytest.mark.parametrize(("rtp", "rtcp", "status"), [
    (6000, 6000, 461), (80, 81, 461), (6000, 70000, 461), (0, 0, 461)])
async def test_bad_client_ports_are_refused_before_anything_is_set_up(
        mesh: Mesh, rtp: int, rtcp: int, status: int) -> None:
    await mesh.describe(mesh.va)
    with pytest.raises(MsmError) as raised:
        await mesh.planner.setup(mesh.va.info, pb.SetupRequest(
            stream_id="cam", track_index=0, session_id="x", viewer_host="10.9.9.9",
            destination=pb.Endpoint(host="10.9.9.9", rtp_port=rtp, rtcp_port=rtcp)))
    assert raised.value.status == status
    assert mesh.pa.flows == {} and mesh.source.sent("setup") == 0


async def test_a_client_port_that_is_a_proxy_ingress_is_refused(mesh: Mesh) -> None:
    await mesh.join(mesh.va, "a1")
    ingress = mesh.stream().flows[0].ingress
    for host in (ingress.host, "127.0.0.1", "0.0.0.0"):
        for port in (ingress.rtp_port, ingress.rtcp_port):
            with pytest.raises(MsmError) as raised:
                await mesh.planner.setup(mesh.va.info, pb.SetupRequest(
                    stream_id="cam", track_index=0, session_id="loop", viewer_host=host,
                    destination=pb.Endpoint(host=host, rtp_port=port & ~1, rtcp_port=(port & ~1) + 1)))
            assert raised.value.status == 400, (host, port)
    assert leg("loop", 0) not in mesh.pa.legs()


async def test_pairs_and_the_proxy_range_when_asked_for() -> None:
    planner = Planner(StaticResolver({}), port_pairs=True, proxy_port_range=(30000, 39999))
    for rtp, rtcp in ((5001, 5002), (5000, 5003)):
        with pytest.raises(MsmError) as raised:
            planner._check_destination(pb.Endpoint(host="10.1.1.1", rtp_port=rtp, rtcp_port=rtcp))
        assert raised.value.status == 461
    with pytest.raises(MsmError) as raised:
        planner._check_destination(pb.Endpoint(host="127.0.0.1", rtp_port=30010, rtcp_port=30011))
    assert raised.value.status == 400
    planner._check_destination(pb.Endpoint(host="10.1.1.1", rtp_port=30010, rtcp_port=30011))   # not a proxy


async def test_a_source_with_too_many_tracks_is_refused_and_takes_no_ports(mesh: Mesh) -> None:
    mesh.source.tracks = [pb.Track(index=i, kind="video", clock_rate=90000) for i in range(1500)]
    with pytest.raises(MsmError) as raised:
        await mesh.describe(mesh.va)
    assert raised.value.status == 453
    assert mesh.pa.flows == {} and mesh.source.sent("setup") == 0 and mesh.source.sent("close") == 1
    assert mesh.stream().upstream_state is not UpstreamState.DESCRIBED


async def test_a_stub_holds_at_most_its_legs_and_others_are_unaffected(mesh: Mesh) -> None:
    """Past max_legs_per_stub a new leg is 453; its existing legs, a repeated SETUP and other stubs go on."""
    mesh.planner.settings = replace(mesh.planner.settings, max_legs_per_stub=3)
    await mesh.describe(mesh.va)
    await mesh.setup(mesh.va, "s1")                          # 2 legs
    await mesh.setup(mesh.va, "s2", tracks=(0,))             # 3 legs: the limit
    await mesh.setup(mesh.va, "s2", tracks=(0,))             # the same leg again: not a new one
    with pytest.raises(MsmError) as refused:
        await mesh.setup(mesh.va, "s2", tracks=(1,))
    assert refused.value.status == 453 and "legs" in str(refused.value)
    await mesh.describe(mesh.vb)
    await mesh.setup(mesh.vb, "t1")                          # another stub is not counted against va
    await mesh.teardown(mesh.va, "s1")
    await mesh.setup(mesh.va, "s2", tracks=(1,))             # freed legs can be taken again
    assert sorted(mesh.viewers()) == ["s2", "t1"]
