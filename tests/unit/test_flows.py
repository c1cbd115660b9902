"""The proxy's data path over real UDP sockets on loopback, on both engines.

Every test that takes ``table`` (tests/engines.py) runs twice: on the
pure-Python reference and on the native engine (``ext``), which must behave the
same. Nothing sleeps a fixed time: each test polls for what it expects.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from msm.rtp_proxy.flows import FlowTable, Leg
from msm.rtp_proxy.ports import PortRangeExhausted, bind_pair
from msm.sdk.errors import ResourceExhausted
from tests.engines import drain, engine, table, until

__all__ = ["engine", "table"]   # the fixtures every engine-parametrized test here takes

pytestmark = pytest.mark.timeout(30)


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"x" * 100, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class Sink:
    """A UDP port pair standing in for a viewer; what it received accumulates in ``got``."""

    def __init__(self) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.rtp, self.rtcp):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.got: list[bytes] = []
        self.got_rtcp: list[bytes] = []

    @property
    def addrs(self) -> tuple[tuple[str, int], tuple[str, int]]:
        return self.rtp.getsockname(), self.rtcp.getsockname()

    def pull(self) -> list[bytes]:
        """Everything received on the RTP port so far."""
        self.got += drain(self.rtp)
        return self.got

    def pull_rtcp(self) -> list[bytes]:
        self.got_rtcp += drain(self.rtcp)
        return self.got_rtcp

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()



async def test_fans_out_to_enabled_legs_only(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    a, b, c = Sink(), Sink(), Sink()
    for name, sink, enabled in (("a", a, True), ("b", b, True), ("c", c, False)):
        flow.set_leg(Leg(name, *sink.addrs, enabled=enabled))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(20):
        src.sendto(rtp(seq, seq * 3000, 0x1234), flow.ingress)
    await until(lambda: len(a.pull()) == 20 and len(b.pull()) == 20, what="20 packets at a and b")
    snap = flow.snapshot()
    assert c.pull() == []
    assert snap.packets_received == 20 and snap.packets_lost == 0
    assert snap.leg("a").packets_sent == 20 and snap.leg("c").packets_sent == 0
    flow.enable_leg("c", True)
    flow.remove_leg("a")
    src.sendto(rtp(20, 60000, 0x1234), flow.ingress)
    await until(lambda: len(c.pull()) == 1 and len(b.pull()) == 21, what="the next packet at b and c")
    assert len(a.pull()) == 20
    for s in (a, b, c):
        s.close()
    src.close()


async def test_packets_from_viewers_and_garbage_are_dropped_and_counted(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    # ffmpeg "punches" the server's RTP port from its own RTP port: never forwarded.
    viewer.rtp.sendto(rtp(0, 0, 0xBEEF, b""), flow.ingress)
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.sendto(b"\x00\x01", flow.ingress)                 # too short
    src.sendto(b"\x40" + b"\x00" * 20, flow.ingress)      # RTP version 1
    src.sendto(rtp(1, 90, 0x1234), flow.ingress)
    await until(lambda: flow.snapshot().packets_received == 1 and len(viewer.pull()) == 1)
    await until(lambda: flow.snapshot().dropped_from_viewers == 1 and flow.snapshot().dropped_invalid == 2)
    assert viewer.pull() == [rtp(1, 90, 0x1234)]
    viewer.close()
    src.close()


async def test_loss_is_measured_at_ingress(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(100):
        if seq % 10 != 5:
            src.sendto(rtp(seq, seq * 3000, 0x42), flow.ingress)
    await until(lambda: flow.snapshot().packets_received == 90)
    snap = flow.snapshot()
    assert snap.packets_expected == 100
    assert snap.packets_lost == 10
    src.close()


async def test_upstream_restart_is_spliced_for_viewers(table: FlowTable) -> None:
    table.ssrc_takeover = 0.05   # the silence before a new SSRC may take over, short for the test
    flow = await table.add_flow("s/0", clock_rate=90000, splice=True)
    flow.set_source("127.0.0.1")
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(100, 110):
        src.sendto(rtp(seq, seq * 3000, 0xAAAA), flow.ingress)
    await until(lambda: len(viewer.pull()) == 10)
    # The "restarted" upstream starts over with a new SSRC, sequence and timestamp; it
    # takes over once the old SSRC has been silent and the new one is in sequence.
    restarted = iter(range(5000, 6000))

    def send_restarted() -> bool:
        seq = next(restarted)
        src.sendto(rtp(seq, 777 + seq * 3000, 0xBBBB), flow.ingress)
        return len(viewer.pull()) >= 20

    await until(send_restarted, what="the new SSRC to take over")
    got = [struct.unpack_from("!HII", p, 2) for p in viewer.pull()]
    seqs = [g[0] for g in got]
    assert seqs == list(range(100, 100 + len(got))), "sequence numbers continue across the restart"
    assert {g[2] for g in got} == {0xAAAA}, "viewers keep seeing one SSRC"
    stamps = [g[1] for g in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), "timestamps keep increasing"
    snap = flow.snapshot()
    assert snap.source_changes == 1
    assert snap.packets_lost == 0
    assert snap.dropped_wrong_ssrc >= 1, "the new SSRC's first packet is on probation"
    assert (snap.ssrc, snap.out_ssrc) == (0xBBBB, 0xAAAA)
    viewer.close()
    src.close()


async def test_rtcp_from_source_is_relayed_and_viewer_reports_counted(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src_rtcp.bind(("127.0.0.1", 0))
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 1, 2, 3, 4, 5)
    src_rtcp.sendto(sr, (flow.ingress[0], flow.ingress[1] + 1))
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x9999)
    viewer.rtcp.sendto(rr, (flow.ingress[0], flow.ingress[1] + 1))
    viewer.rtcp.sendto(b"\x80\xc9\xff\xff", (flow.ingress[0], flow.ingress[1] + 1))  # bad length
    await until(lambda: viewer.pull_rtcp() == [sr] and flow.snapshot().leg("v").rtcp_received == 2)
    snap = flow.snapshot()
    assert snap.rtcp_received == 1 and flow.last_sr is not None
    assert snap.rtcp_errors == 1 and snap.leg("v").rtcp_sent == 1
    assert flow.upstream_rtcp == src_rtcp.getsockname()
    src_rtcp.close()
    viewer.close()


async def test_unreachable_leg_does_not_stall_others(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    gone = Sink()
    dead_addrs = gone.addrs
    gone.close()          # ICMP port unreachable for every packet sent there
    alive = Sink()
    flow.set_leg(Leg("dead", *dead_addrs, enabled=True))
    flow.set_leg(Leg("alive", *alive.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(50):
        src.sendto(rtp(seq, seq, 7), flow.ingress)
        await asyncio.sleep(0)    # let the loop take the ICMP errors in between
    await until(lambda: len(alive.pull()) == 50)
    alive.close()
    src.close()


def test_port_pairs_are_even_odd_and_exhaustion_is_reported() -> None:
    a = bind_pair("127.0.0.1", 42000, 42003, 0)
    b = bind_pair("127.0.0.1", 42000, 42003, 0)
    ports = sorted(s.getsockname()[1] for s in (*a, *b))
    assert ports == [42000, 42001, 42002, 42003]
    with pytest.raises(PortRangeExhausted) as info:
        bind_pair("127.0.0.1", 42000, 42003, 0)
    assert isinstance(info.value, ResourceExhausted) and info.value.grpc_code == "RESOURCE_EXHAUSTED"
    for s in (*a, *b):
        s.close()


async def test_upstream_bye_is_not_relayed_to_viewers(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    viewer = Sink()
    flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    bye = struct.pack("!BBHI", 0x81, 203, 1, 0x1234)
    rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
    src.sendto(rr + bye, rtcp_port)     # compound: the RR goes on, the BYE does not
    src.sendto(bye, rtcp_port)          # a lone BYE: nothing goes on
    await until(lambda: flow.snapshot().rtcp_bye_dropped == 2 and len(viewer.pull_rtcp()) == 1)
    assert viewer.pull_rtcp() == [rr]
    viewer.close()
    src.close()


async def test_viewer_reports_give_loss_jitter_rtt_and_collisions_are_counted(table: FlowTable) -> None:
    from msm.sdk.rtp import ReceiverReport, ReportBlock, SenderReport, ntp_middle32, serialize_rtcp

    now = [100.0]
    table.clock = lambda: now[0]
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    a, b = Sink(), Sink()
    flow.set_leg(Leg("a", *a.addrs, enabled=True))
    flow.set_leg(Leg("b", *b.addrs, enabled=True))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.sendto(rtp(1, 0, 0x1234), flow.ingress)
    ntp = (3_900_000_000 << 32) | 0x80000000
    sr = SenderReport(ssrc=0x1234, ntp_timestamp=ntp, rtp_timestamp=0, packet_count=1, octet_count=100)
    rtcp_port = (flow.ingress[0], flow.ingress[1] + 1)
    src.sendto(bytes(sr), rtcp_port)
    await until(lambda: flow.last_sr is not None and flow.snapshot().ssrc == 0x1234)
    now[0] += 0.250                 # the viewer answers 250 ms later, having held the SR for 200 ms
    block = ReportBlock(ssrc=0x1234, fraction_lost=64, packets_lost=12, highest_sequence=1,
                        jitter=900, lsr=ntp_middle32(ntp), dlsr=int(0.200 * 65536))
    a.rtcp.sendto(serialize_rtcp([ReceiverReport(ssrc=0xAAAA, reports=(block,))]), rtcp_port)
    b.rtcp.sendto(serialize_rtcp([ReceiverReport(ssrc=0xAAAA, reports=(block,))]), rtcp_port)  # collides
    await until(lambda: flow.legs["a"].has_report and flow.legs["b"].has_report)
    leg = flow.snapshot().leg("a")
    assert leg.has_report and leg.viewer_fraction_lost == 0.25 and leg.viewer_packets_lost == 12
    assert leg.viewer_jitter_ms == pytest.approx(10.0)
    assert leg.rtt_ms == pytest.approx(50.0, abs=0.1)
    assert flow.snapshot().ssrc_collisions == 1
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
    flow.set_source("::1")   # the test's sources all send from this host
    flow.set_leg(Leg("v", ("::1", rx.getsockname()[1]), ("::1", 9), enabled=True))
    src = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for seq in range(10):
        src.sendto(rtp(seq, seq * 3000, 0x66), ("::1", flow.ingress[1]))
    rx.sendto(rtp(0, 0, 0xBEEF, b""), ("::1", flow.ingress[1]))     # a viewer's punch packet
    got: list[bytes] = []
    await until(lambda: len(got.extend(drain(rx)) or got) >= 10 and flow.snapshot().dropped_from_viewers == 1)
    snap = flow.snapshot()
    assert snap.packets_received == 10 and snap.dropped_from_viewers == 1
    rx.close()
    src.close()


async def _same_traffic(engine: str) -> tuple[int | None, ...]:
    """One flow on ``engine`` given a fixed packet sequence, one packet at a time; its counters."""
    table = FlowTable(host="127.0.0.1", port_range=(40000, 40999), engine=engine)
    viewer = Sink()
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flow = await table.add_flow("same/0", clock_rate=8000, labels={"stream": "same"})
        flow.set_source("127.0.0.1")   # the test's sources all send from this host
        flow.set_leg(Leg("v", *viewer.addrs, enabled=True))
        for n, seq in enumerate((1, 2, 3, 5, 4, 4, 7, 8, 9, 10), start=1):
            src.sendto(rtp(seq, seq * 160, 0x77), flow.ingress)
            await until(lambda n=n: flow.snapshot().packets_received == n and len(viewer.pull()) == n)
        snap = flow.snapshot()
        leg = snap.leg("v")
        return (snap.packets_received, snap.packets_expected, snap.packets_lost, snap.duplicates, snap.reordered,
                snap.bytes_received, leg.packets_sent, leg.bytes_sent, snap.packets_forwarded, snap.ssrc,
                snap.out_ssrc, snap.source_changes)
    finally:
        viewer.close()
        src.close()
        table.close()


async def test_counters_are_the_same_on_both_engines(engine: str) -> None:
    """The same traffic gives the same snapshot on this engine as on the Python reference."""
    reference = await _same_traffic("python")
    assert reference[:5] == (10, 10, 0, 1, 1)
    assert await _same_traffic(engine) == reference
