"""The proxy forwards only what it was told to expect, on both engines.

Each test is an attack that got through before flows had sources: packets from a
foreign address, a foreign SSRC from the right address, malformed RTP, RTCP that
is not the source's, and legs pointing back into the proxy.
"""

from __future__ import annotations

import socket
import struct

import grpc
import pytest

from msm import ext
from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.rtp_proxy.flows import Flow, FlowTable, Leg
from msm.rtp_proxy.pyengine import rtp_check
from msm.rtp_proxy.service import DataPlaneService
from msm.sdk.errors import Refused
from tests.engines import drain, engine, poll, table, until

__all__ = ["engine", "table"]

pytestmark = pytest.mark.timeout(30)


def rtp(seq: int, ssrc: int = 0x1111, payload: bytes = b"v" * 100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000 & 0xFFFFFFFF, ssrc) + payload


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


class Viewer:
    def __init__(self, flow: Flow) -> None:
        self.rtp, self.rtcp = udp(), udp()
        self.got: list[bytes] = []
        self.got_rtcp: list[bytes] = []
        flow.set_leg(Leg("v", self.rtp.getsockname(), self.rtcp.getsockname(), enabled=True))

    def pull(self) -> list[bytes]:
        self.got += drain(self.rtp)
        self.got_rtcp += drain(self.rtcp)
        return self.got

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


async def source_flow(table: FlowTable) -> tuple[Flow, socket.socket, socket.socket, Viewer]:
    """A flow whose source is one RTP and one RTCP socket, and a playing viewer."""
    flow = await table.add_flow("cam/0", clock_rate=90000)
    src_rtp, src_rtcp = udp(), udp()
    await table.set_source("cam/0", "127.0.0.1", src_rtp.getsockname()[1], src_rtcp.getsockname()[1])
    return flow, src_rtp, src_rtcp, Viewer(flow)


async def test_nothing_is_forwarded_before_the_source_is_named(table: FlowTable) -> None:
    flow = await table.add_flow("cam/0", clock_rate=90000)
    viewer = Viewer(flow)
    src = udp()
    for seq in range(20):
        src.sendto(rtp(seq), flow.ingress)
    await until(lambda: flow.snapshot().dropped_wrong_source == 20)
    assert viewer.pull() == [] and flow.snapshot().packets_forwarded == 0
    src.close()
    viewer.close()


async def test_rtp_from_a_foreign_address_does_not_reach_viewers(table: FlowTable) -> None:
    flow, src, src_rtcp, viewer = await source_flow(table)
    intruder = udp()
    for seq in range(20):
        intruder.sendto(rtp(seq, ssrc=0x1111), flow.ingress)   # even with the real SSRC
    for seq in range(100, 105):
        src.sendto(rtp(seq), flow.ingress)
    await until(lambda: len(viewer.pull()) == 5, what="the source's 5 packets")
    assert await poll(lambda: flow.snapshot().dropped_wrong_source == 20)
    assert [struct.unpack_from("!H", p, 2)[0] for p in viewer.pull()] == list(range(100, 105))
    snap = flow.snapshot()
    assert snap.packets_received == 5 and snap.packets_forwarded == 5
    for s in (intruder, src, src_rtcp):
        s.close()
    viewer.close()


async def test_a_foreign_ssrc_from_the_source_is_not_forwarded(table: FlowTable) -> None:
    flow, src, src_rtcp, viewer = await source_flow(table)
    src.sendto(rtp(1), flow.ingress)
    await until(lambda: len(viewer.pull()) == 1)
    # A spoofer with the source's address interleaves its own SSRC, in sequence, at a high
    # rate, while the source stays live: it never takes over.
    sent = 0
    for burst in range(20):
        for i in range(100):
            src.sendto(rtp(5000 + burst * 100 + i, ssrc=0x6666), flow.ingress)
            sent += 1
        src.sendto(rtp(2 + burst), flow.ingress)
    await until(lambda: len(viewer.pull()) == 21, what="the source's 21 packets")
    await until(lambda: flow.snapshot().dropped_wrong_ssrc == sent, what=f"{sent} wrong-SSRC drops")
    assert {struct.unpack_from("!I", p, 8)[0] for p in viewer.pull()} == {0x1111}
    snap = flow.snapshot()
    assert snap.ssrc == 0x1111 and snap.source_changes == 0 and snap.packets_forwarded == 21
    for s in (src, src_rtcp):
        s.close()
    viewer.close()


BAD_RTP = {
    "csrc count 15 in 16 bytes": bytes([0x8F, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"abcd",
    "version 1": bytes([0x40, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"x" * 10,
    "extension past the end": bytes([0x90, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"\xbe\xde\x00\x09" + b"x" * 8,
    "padding past the payload": bytes([0xA0, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"xy\xff",
    "padding count 0": bytes([0xA0, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"xy\x00",
    "an RTCP BYE on the RTP port": bytes([0x81, 203]) + struct.pack("!HII", 2, 0x1111, 0x2222),
    "an RTCP SR on the RTP port": bytes([0x80, 200]) + struct.pack("!HII", 6, 0x1111, 0) + b"\x00" * 16,
    "too short": b"\x80\x60\x00\x01",
}
GOOD_RTP = {
    "plain": rtp(1),
    "csrc count 2": bytes([0x82, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"c" * 8 + b"payload",
    "extension": bytes([0x90, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"\xbe\xde\x00\x01abcd" + b"pl",
    "padding": bytes([0xA0, 96]) + struct.pack("!HII", 1, 3000, 0x1111) + b"pl\x00\x03",
}


@pytest.mark.parametrize("name", sorted(BAD_RTP))
def test_rtp_validity_rules(name: str) -> None:
    assert rtp_check(BAD_RTP[name]) is None
    if ext.available():
        assert not ext.rtp_valid(BAD_RTP[name]), "the C engine agrees"


def test_valid_rtp_passes_on_both_engines() -> None:
    for name, packet in GOOD_RTP.items():
        assert rtp_check(packet) is not None, name
        if ext.available():
            assert ext.rtp_valid(packet), name


async def test_invalid_rtp_from_the_source_is_dropped(table: FlowTable) -> None:
    flow, src, src_rtcp, viewer = await source_flow(table)
    for packet in BAD_RTP.values():
        src.sendto(packet, flow.ingress)
    src.sendto(rtp(7), flow.ingress)
    await until(lambda: len(viewer.pull()) == 1)
    await until(lambda: flow.snapshot().dropped_invalid == len(BAD_RTP))
    assert viewer.pull() == [rtp(7)]
    for s in (src, src_rtcp):
        s.close()
    viewer.close()


def sender_report(ssrc: int = 0x1111) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3000, 10, 1000)


def app_packet() -> bytes:
    return struct.pack("!BBHI4s", 0x80, 204, 2, 0x1111, b"EVIL")


async def test_spoofed_rtcp_from_a_foreign_address_is_not_relayed(table: FlowTable) -> None:
    flow, src, src_rtcp, viewer = await source_flow(table)
    rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
    intruder = udp()
    intruder.sendto(sender_report(), rtcp_port)
    intruder.sendto(app_packet(), rtcp_port)
    src.sendto(sender_report(), rtcp_port)     # the source's RTP socket is not its RTCP one
    src_rtcp.sendto(sender_report(), rtcp_port)
    await until(lambda: flow.snapshot().dropped_wrong_source == 3 and flow.snapshot().rtcp_received == 1)
    await until(lambda: bool(viewer.pull() is not None and viewer.got_rtcp), what="the source's SR")
    assert len(viewer.got_rtcp) == 1 and viewer.got_rtcp[0][1] == 200
    assert flow.snapshot().rtcp_received == 1 and flow.upstream_rtcp == src_rtcp.getsockname()
    for s in (intruder, src, src_rtcp):
        s.close()
    viewer.close()


async def test_legs_into_the_proxy_itself_are_refused(table: FlowTable) -> None:
    flow = await table.add_flow("cam/0", clock_rate=90000)
    port = flow.ingress[1]
    for host in ("127.0.0.1", "127.0.0.2", table.host, "::ffff:127.0.0.1"):
        for rtp_port in (port, port + 1):
            with pytest.raises(Refused):
                table.check_destination(host, rtp_port, rtp_port + 1)
    for host, rtp_port in (("0.0.0.0", 5000), ("224.0.0.1", 5000), ("255.255.255.255", 5000),
                           ("10.1.2.3", 53), ("10.1.2.3", 0), ("camera.example", 5000)):
        with pytest.raises(Refused):
            table.check_destination(host, rtp_port, rtp_port + 1)
    assert table.legs_refused == 14
    table.check_destination("127.0.0.1", 5000, 5001)      # a local viewer elsewhere is fine
    table.check_destination("192.0.2.7", port, port + 1)   # another host's same port too


async def test_a_new_flow_never_binds_a_port_a_local_leg_sends_to(table: FlowTable) -> None:
    low = table.port_range[0]
    flow = await table.add_flow("a/0", clock_rate=90000)
    first = flow.ingress[1]
    # A viewer on this host happens to use the next pair in the proxy's range.
    nxt = first + 2
    flow.set_leg(Leg("v", ("127.0.0.1", nxt), ("127.0.0.1", nxt + 1), enabled=True))
    other = await table.add_flow("b/0", clock_rate=90000)
    assert other.ingress[1] not in (nxt, nxt + 1) and other.ingress[1] >= low


async def test_the_dataplane_refuses_a_leg_towards_its_own_ingress(table: FlowTable) -> None:
    server = grpc.aio.server()
    pb_grpc.add_DataPlaneServicer_to_server(DataPlaneService(table, "n"), server)   # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = pb_grpc.DataPlaneStub(channel)   # type: ignore[no-untyped-call]
            reply = await api.AddFlow(pb.AddFlowRequest(flow_id="cam/0", clock_rate=90000))
            ingress = reply.ingress
            for host in ("127.0.0.1", "0.0.0.0"):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await api.AddLeg(pb.AddLegRequest(flow_id="cam/0", leg_id="loop", enabled=True,
                                                      destination=pb.Endpoint(host=host, rtp_port=ingress.rtp_port,
                                                                              rtcp_port=ingress.rtcp_port)))
                assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.AddFlow(pb.AddFlowRequest(flow_id="x/0", bind_host="0.0.0.0"))
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            await api.SetFlowSource(pb.SetFlowSourceRequest(
                flow_id="cam/0", source=pb.SourceFilter(host="127.0.0.1", rtp_port=4000, rtcp_port=4001)))
            stats = (await api.ListFlows(pb.ListFlowsRequest())).flows[0]
            assert stats.dropped_wrong_source == 0 and not stats.legs
        assert table.flows["cam/0"].source == ("127.0.0.1", 4000, 4001)
        assert table.legs_refused == 2
    finally:
        await server.stop(None)
