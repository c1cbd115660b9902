"""The proxy's data path over real UDP sockets on loopback, on both engines.

Every test that takes ``table`` runs twice: on the pure-Python reference and
on the native engine (``ext``), which must behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest

from msm import ext
from msm.rtp_proxy.flows import FlowTable, Leg, PortRangeExhausted, _bind_pair

pytestmark = pytest.mark.timeout(30)


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"x" * 100, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class Sink:
    """A UDP port pair standing in for a viewer."""

    def __init__(self) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.rtp, self.rtcp):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

    @property
    def addrs(self) -> tuple[tuple[str, int], tuple[str, int]]:
        return self.rtp.getsockname(), self.rtcp.getsockname()

    def drain(self, sock: socket.socket | None = None) -> list[bytes]:
        out = []
        while True:
            try:
                out.append((sock or self.rtp).recv(65536))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


async def settle() -> None:
    await asyncio.sleep(0.05)


ENGINES = ["python", "native"]


def require_engine(engine: str) -> None:
    if engine == "native" and (reason := ext.unavailable_reason()):
        pytest.skip(f"native engine: {reason}")


@pytest.fixture(params=ENGINES)
async def table(request: pytest.FixtureRequest):
    require_engine(request.param)
    t = FlowTable(host="127.0.0.1", port_range=(41000, 41999), engine=request.param)
    assert t.engine == request.param
    yield t
    t.close()


async def test_fans_out_to_enabled_legs_only(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    a, b, c = Sink(), Sink(), Sink()
    for name, sink, enabled in (("a", a, True), ("b", b, True), ("c", c, False)):
        flow.set_leg(Leg(name, *sink.addrs, enabled=enabled))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(20):
        src.sendto(rtp(seq, seq * 3000, 0x1234), flow.ingress)
    await settle()
    assert len(a.drain()) == 20 and len(b.drain()) == 20 and c.drain() == []
    assert flow.packets_received == 20 and flow.packets_lost == 0
    assert flow.legs["a"].packets_sent == 20 and flow.legs["c"].packets_sent == 0
    flow.enable_leg("c", True)
    flow.remove_leg("a")
    src.sendto(rtp(20, 60000, 0x1234), flow.ingress)
    await settle()
    assert len(c.drain()) == 1 and a.drain() == [] and len(b.drain()) == 1
    for s in (a, b, c):
        s.close()
    src.close()


async def test_packets_from_viewers_and_garbage_are_dropped_and_counted(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    # ffmpeg "punches" the server's RTP port from its own RTP port: never forwarded.
    viewer.rtp.sendto(rtp(0, 0, 0xBEEF, b""), flow.ingress)
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.sendto(b"\x00\x01", flow.ingress)                 # too short
    src.sendto(b"\x40" + b"\x00" * 20, flow.ingress)      # RTP version 1
    src.sendto(rtp(1, 90, 0x1234), flow.ingress)
    await settle()
    assert len(viewer.drain()) == 1
    assert flow.dropped_from_viewers == 1 and flow.dropped_invalid == 2
    viewer.close()
    src.close()


async def test_loss_is_measured_at_ingress(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(100):
        if seq % 10 != 5:
            src.sendto(rtp(seq, seq * 3000, 0x42), flow.ingress)
    await settle()
    assert flow.packets_received == 90
    assert flow.packets_expected == 100
    assert flow.packets_lost == 10
    src.close()


async def test_upstream_restart_is_spliced_for_viewers(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000, splice=True)
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(100, 110):
        src.sendto(rtp(seq, seq * 3000, 0xAAAA), flow.ingress)
    await settle()
    # The "restarted" upstream starts over with a new SSRC, sequence and timestamp.
    for seq in range(5000, 5010):
        src.sendto(rtp(seq, 777 + seq * 3000, 0xBBBB), flow.ingress)
    await settle()
    got = [struct.unpack_from("!HII", p, 2) for p in viewer.drain()]
    assert len(got) == 20
    seqs = [g[0] for g in got]
    assert seqs == list(range(100, 120)), "sequence numbers continue across the restart"
    assert {g[2] for g in got} == {0xAAAA}, "viewers keep seeing one SSRC"
    stamps = [g[1] for g in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), "timestamps keep increasing"
    assert flow.source_changes == 1
    assert flow.packets_lost == 0
    viewer.close()
    src.close()


async def test_rtcp_from_source_is_relayed_and_viewer_reports_counted(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src_rtcp.bind(("127.0.0.1", 0))
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 1, 2, 3, 4, 5)
    src_rtcp.sendto(sr, (flow.ingress[0], flow.ingress[1] + 1))
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x9999)
    viewer.rtcp.sendto(rr, (flow.ingress[0], flow.ingress[1] + 1))
    viewer.rtcp.sendto(b"\x80\xc9\xff\xff", (flow.ingress[0], flow.ingress[1] + 1))  # bad length
    await settle()
    assert viewer.drain(viewer.rtcp) == [sr]
    assert flow.rtcp_received == 1 and flow.last_sr is not None
    assert flow.legs["v"].rtcp_received == 2 and flow.rtcp_errors == 1
    assert flow.upstream_rtcp == src_rtcp.getsockname()
    src_rtcp.close()
    viewer.close()


async def test_unreachable_leg_does_not_stall_others(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    gone = Sink()
    dead_addrs = gone.addrs
    gone.close()          # ICMP port unreachable for every packet sent there
    alive = Sink()
    flow.set_leg(Leg("dead", *dead_addrs, enabled=True))
    flow.set_leg(Leg("alive", *alive.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(50):
        src.sendto(rtp(seq, seq, 7), flow.ingress)
        await asyncio.sleep(0)
    await settle()
    assert len(alive.drain()) == 50
    alive.close()
    src.close()


def test_port_pairs_are_even_odd_and_exhaustion_is_reported() -> None:
    a = _bind_pair("127.0.0.1", 42000, 42003, 0)
    b = _bind_pair("127.0.0.1", 42000, 42003, 0)
    ports = sorted(s.getsockname()[1] for s in (*a, *b))
    assert ports == [42000, 42001, 42002, 42003]
    with pytest.raises(PortRangeExhausted):
        _bind_pair("127.0.0.1", 42000, 42003, 0)
    for s in (*a, *b):
        s.close()


async def test_upstream_bye_is_not_relayed_to_viewers(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    bye = struct.pack("!BBHI", 0x81, 203, 1, 0x1234)
    rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
    src.sendto(rr + bye, rtcp_port)     # compound: the RR goes on, the BYE does not
    src.sendto(bye, rtcp_port)          # a lone BYE: nothing goes on
    await settle()
    assert viewer.drain(viewer.rtcp) == [rr]
    assert flow.rtcp_bye_dropped == 2
    viewer.close()
    src.close()


async def test_viewer_reports_give_loss_jitter_rtt_and_collisions_are_counted(table: FlowTable) -> None:
    from msm.sdk.rtp import ReceiverReport, ReportBlock, SenderReport, ntp_middle32, serialize_rtcp

    now = [100.0]
    table.clock = lambda: now[0]
    flow = await table.add_flow("s/0", clock_rate=90000)
    a, b = Sink(), Sink()
    flow.set_leg(Leg("a", *a.addrs, enabled=True))
    flow.set_leg(Leg("b", *b.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.sendto(rtp(1, 0, 0x1234), flow.ingress)
    ntp = (3_900_000_000 << 32) | 0x80000000
    sr = SenderReport(ssrc=0x1234, ntp_timestamp=ntp, rtp_timestamp=0, packet_count=1, octet_count=100)
    rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
    src.sendto(bytes(sr), rtcp_port)
    await settle()
    now[0] += 0.250                 # the viewer answers 250 ms later, having held the SR for 200 ms
    block = ReportBlock(ssrc=0x1234, fraction_lost=64, packets_lost=12, highest_sequence=1,
                        jitter=900, lsr=ntp_middle32(ntp), dlsr=int(0.200 * 65536))
    a.rtcp.sendto(serialize_rtcp([ReceiverReport(ssrc=0xAAAA, reports=(block,))]), rtcp_port)
    b.rtcp.sendto(serialize_rtcp([ReceiverReport(ssrc=0xAAAA, reports=(block,))]), rtcp_port)  # collides
    await settle()
    leg = flow.legs["a"]
    assert leg.has_report and leg.viewer_fraction_lost == 0.25 and leg.viewer_packets_lost == 12
    assert leg.viewer_jitter_ms == pytest.approx(10.0)
    assert leg.rtt_ms == pytest.approx(50.0, abs=0.1)
    assert flow.ssrc_collisions == 1
    for s in (a, b):
        s.close()
    src.close()


async def test_ipv6_flow_forwards_and_drops_viewer_packets(table: FlowTable) -> None:
    try:
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rx.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    rx.setblocking(False)
    flow = await table.add_flow("s/6", clock_rate=90000, bind_host="::1")
    flow.set_leg(Leg("v", ("::1", rx.getsockname()[1]), ("::1", 9), enabled=True))
    src = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for seq in range(10):
        src.sendto(rtp(seq, seq * 3000, 0x66), ("::1", flow.ingress[1]))
    rx.sendto(rtp(0, 0, 0xBEEF, b""), ("::1", flow.ingress[1]))     # a viewer's punch packet
    await settle()
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(rx.recv(2048))
    assert len(got) == 10 and flow.packets_received == 10 and flow.dropped_from_viewers == 1
    rx.close()
    src.close()
