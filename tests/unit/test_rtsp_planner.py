"""What the control plane adds to RTSP answers: RTP-Info on PLAY, and viewers' RTCP as liveness."""

from __future__ import annotations

from msm.protos import msm_pb2 as pb
from tests.unit.test_planner import Mesh, leg


async def test_sessions_heard_are_the_reporting_nodes_legs_sessions_by_stub() -> None:
    mesh = Mesh()
    await mesh.join(mesh.va, "s1")
    await mesh.join(mesh.va, "s2")
    await mesh.join(mesh.vb, "s3")          # on node b: its legs are on b's relay flows
    flow = mesh.stream().flows[0].flow_id
    relay = mesh.stream().relays[("b", 0)].flow_id
    heard = [pb.LegKey(flow_id=flow, leg_id=leg("s1", 0)), pb.LegKey(flow_id=relay, leg_id=leg("s3", 0))]
    assert mesh.planner.sessions_heard("a", heard) == {"va": ["s1"]}
    assert mesh.planner.sessions_heard("b", heard) == {"vb": ["s3"]}
    # A leg id on the wrong flow, or a node's report about another node's legs, counts for nothing.
    assert mesh.planner.sessions_heard("a", [pb.LegKey(flow_id=relay, leg_id=leg("s1", 0))]) == {}
    assert mesh.planner.sessions_heard("c", heard) == {}


async def test_play_answers_rtp_info_after_what_the_flow_last_sent() -> None:
    mesh = Mesh()
    await mesh.join(mesh.va, "s1")
    listed = mesh.pa.list_flows

    async def with_positions() -> list[pb.FlowStats]:
        flows = await listed()
        for stats in flows:
            stats.reports_out = True
            stats.first_out.CopyFrom(pb.RtpPosition(seq=100, rtptime=1000))
            stats.last_out.CopyFrom(pb.RtpPosition(seq=65535, rtptime=9000))
        return flows

    mesh.pa.list_flows = with_positions   # type: ignore[method-assign]
    await mesh.describe(mesh.va)
    await mesh.setup(mesh.va, "s2")
    reply = await mesh.play(mesh.va, "s2")
    # The next packet after the latest (sequence numbers wrap), at the latest's time.
    assert [(i.track_index, i.seq, i.rtptime) for i in reply.rtp_info] == [(0, 0, 9000), (1, 0, 9000)]
    assert reply.range == "npt=now-"


async def test_a_proxy_that_reports_no_positions_is_not_waited_for() -> None:
    mesh = Mesh()
    await mesh.describe(mesh.va)
    await mesh.setup(mesh.va, "s1")
    reply = await mesh.play(mesh.va, "s1")
    assert list(reply.rtp_info) == []
