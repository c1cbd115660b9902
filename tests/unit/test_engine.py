"""The native engine (``ext``) against the pure-Python reference, and the bad inputs of issue 5.

The behaviour every engine must have is in test_flows.py (run on both);
here: the C statistics equal ``msm.sdk.stats`` packet for packet, fan-out with
UDP GSO/GRO, a refused GSO send, leg sets changing under traffic, flows
removed with packets in flight, unreachable and unresolvable legs, and the
switch that picks the engine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pylibsrtp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from msm import ext
from msm.rtp_proxy import flows as flows_module
from msm.rtp_proxy.engine import EngineUnavailable
from msm.rtp_proxy.flows import Flow, FlowTable, Leg, choose_engine
from msm.rtp_proxy.metrics import ProxyCollector
from msm.rtp_proxy.native import start_core
from msm.rtp_proxy.service import check_profile, flow_stats, srtp_profiles
from msm.rtp_proxy.srtp import GCM, PROFILE, SrtpKey, SrtpKeyRefused, library_path
from msm.sdk.errors import ConfigError, Unavailable
from msm.sdk.stats import ReceiverStats
from tests.engines import drain, engine, require, table, until

__all__ = ["engine", "table"]   # the fixtures every engine-parametrized test here takes

pytestmark = pytest.mark.timeout(30)

SOL_UDP = 17
UDP_SEGMENT = 103
SO_NO_CHECK = 11

native_only = pytest.mark.skipif(not ext.available(), reason=f"native engine: {ext.unavailable_reason()}")


def rtp(seq: int, ts: int = 0, ssrc: int = 0x1234, size: int = 200) -> bytes:
    header = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + bytes((seq + i) & 0xFF for i in range(size - 12))


def udp(bind: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    return s



def send_gso(sock: socket.socket, segments: list[bytes], addr: tuple[str, int]) -> None:
    """One UDP GSO super-datagram: the receiving socket (with UDP_GRO) gets it as one train."""
    sock.sendmsg([b"".join(segments)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(segments[0])))], 0, addr)


def sent(flow: Flow, leg_id: str) -> int:
    return flow.snapshot().leg(leg_id).packets_sent


async def collect(sinks: list[socket.socket], got: list[list[bytes]], count: int) -> None:
    """Poll until every sink received ``count`` datagrams in all (kept in ``got``)."""
    def done() -> bool:
        for sink, packets in zip(sinks, got, strict=True):
            packets += drain(sink)
        return all(len(packets) >= count for packets in got)
    await until(done, what=f"{count} datagrams at each of {len(sinks)} sinks")


@pytest.fixture
async def native():
    require("native")
    table = FlowTable(host="127.0.0.1", port_range=(44000, 44999), engine="native")
    yield table
    table.close()


# ----------------------------------------------------------------------------- statistics, packet for packet

_steps = st.one_of(
    st.just(1), st.just(1), st.just(1), st.integers(2, 5),   # in order, small gaps
    st.integers(-99, 0),                                        # duplicates and reordering
    st.integers(2990, 3010),                                    # around MAX_DROPOUT
    st.integers(-110, -95),                                     # around MAX_MISORDER
    st.integers(0, 65535),                                      # anything (restarts, wraps)
)


@native_only
@given(first=st.integers(0, 65535), steps=st.lists(st.tuples(_steps, st.integers(0, 5_000_000),
                                                             st.integers(0, 20_000)), max_size=300),
       min_sequential=st.integers(0, 3), clock_rate=st.sampled_from([0, 8000, 90000]))
def test_c_statistics_equal_the_reference(first: int, steps: list[tuple[int, int, int]], min_sequential: int,
                                          clock_rate: int) -> None:
    lib, c = ext.rtpstats(clock_rate, min_sequential)
    py = ReceiverStats(clock_rate=clock_rate or None, min_sequential=min_sequential)
    seq, ts, arrival_ns = first, 1000, 10**12
    for step, gap_ns, ts_step in steps:
        seq = (seq + step) & 0xFFFF
        ts = (ts + ts_step) & 0xFFFFFFFF
        arrival_ns += gap_ns
        assert bool(lib.msm_rtpstats_update(c, seq, ts, arrival_ns)) == py.update(seq, ts, arrival_ns / 1e9)
        assert c.received == py.received
        assert lib.msm_rtpstats_expected(c) == py.expected
        assert (c.duplicates, c.reordered, c.restarts) == (py.duplicates, py.reordered, py.restarts)
        assert c.jitter == pytest.approx(py.jitter, rel=1e-6, abs=1e-6)


# ----------------------------------------------------------------------------- counters read by the service

async def test_service_and_metrics_read_either_engine(table: FlowTable) -> None:
    flow = await table.add_flow("s/0", clock_rate=90000, labels={"stream": "s", "track": "0"})
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    viewer = udp()
    flow.set_leg(Leg("v", viewer.getsockname(), ("127.0.0.1", 9), enabled=True))
    src = udp()
    for seq in range(100):
        if seq % 10 != 3:
            src.sendto(rtp(seq, seq * 3000), flow.ingress)
    got: list[list[bytes]] = [[]]
    await collect([viewer], got, 90)
    await until(lambda: flow.snapshot().packets_received == 90 and sent(flow, "v") == 90)
    block = flow.engine.report_block()
    assert block is not None and block.ssrc == 0x1234
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (10 * 256 // 100, 10, 99)
    again = flow.engine.report_block()
    assert again is not None and again.fraction_lost == 0     # a new interval
    stats = flow_stats(flow, "node")
    assert (stats.packets_received, stats.packets_expected, stats.packets_lost) == (90, 100, 10)
    assert stats.legs[0].packets_sent == 90 and stats.legs[0].bytes_sent == 90 * 200
    assert stats.packets_forwarded == 90 and stats.ssrc == 0x1234
    families = {m.name: m for m in ProxyCollector(table, "node").collect()}
    assert families["msm_ingress_packets"].samples[0].value == 90
    assert families["msm_egress_packets"].samples[0].value == 90
    assert len(got[0]) == 90
    src.close()
    viewer.close()


# ----------------------------------------------------------------------------- fan-out, GSO and GRO

@native_only
async def test_fan_out_to_100_legs_keeps_order_and_bytes(native: FlowTable) -> None:
    flow = await native.add_flow("fan/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    sinks = [udp() for _ in range(100)]
    for i, sink in enumerate(sinks):
        flow.set_leg(Leg(f"v{i}", sink.getsockname(), ("127.0.0.1", 9), enabled=True))
    src = udp()
    # Runs of equal sizes with a shorter last one, as video frames make them.
    packets = [rtp(seq, seq * 90, size=1316 if seq % 7 else 400) for seq in range(300)]
    got: list[list[bytes]] = [[] for _ in sinks]
    for i, packet in enumerate(packets):
        src.sendto(packet, flow.ingress)
        if i % 50 == 49:
            await collect(sinks, got, i + 1)   # stay inside the receivers' socket buffers
    assert flow.snapshot().packets_forwarded == 300 * 100
    for n, sink in enumerate(sinks):
        assert got[n] == packets
        sink.close()
    snap = flow.snapshot()
    assert snap.dropped_backlog == 0 and all(leg.send_errors == 0 for leg in snap.legs)
    src.close()


@native_only
async def test_gro_train_is_split_measured_and_sent_as_gso(native: FlowTable) -> None:
    assert {"gso", "gro"} <= native.engine_features
    flow = await native.add_flow("gso/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    a, b = udp(), udp()
    flow.set_leg(Leg("a", a.getsockname(), ("127.0.0.1", 9), enabled=True))
    flow.set_leg(Leg("b", b.getsockname(), ("127.0.0.1", 9), enabled=True))
    src = udp()
    segments = [rtp(seq, seq * 90, size=1000) for seq in range(10)]
    segments[4] = b"\x00" * 1000                    # not RTP: dropped inside the train, counted
    segments[-1] = segments[-1][:500]               # the last segment of a train may be shorter
    send_gso(src, segments, flow.ingress)
    got: list[list[bytes]] = [[], []]
    await collect([a, b], got, 9)
    want = [s for i, s in enumerate(segments) if i != 4]
    assert got == [want, want]
    snap = flow.snapshot()
    assert snap.packets_forwarded == 18 and snap.packets_received == 9 and snap.dropped_invalid == 1
    assert snap.ssrc is not None and snap.packets_expected == 10 and snap.packets_lost == 1
    for leg_id in flow.legs:
        assert flow.engine.leg_counters(leg_id).gso_sends >= 1    # re-sent as GSO runs, not packet by packet
    src.close()
    a.close()
    b.close()


@native_only
async def test_refused_gso_falls_back_to_single_datagrams() -> None:
    engine = ext.Engine()
    try:
        rx = udp()
        ingress = udp()
        # With UDP checksums off the kernel refuses GSO sends (EINVAL).
        ingress.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        port = ingress.getsockname()[1]
        flow = engine.add_flow(ingress.detach(), clock_rate=90000)
        flow.set_source("127.0.0.1", 0, socket.AF_INET)
        leg = engine.leg("127.0.0.1", rx.getsockname()[1], socket.AF_INET)
        flow.set_legs([leg], [True])
        src = udp()
        segments = [rtp(seq, size=800) for seq in range(8)]
        send_gso(src, segments, ("127.0.0.1", port))
        await until(lambda: leg.stats()["packets_sent"] >= 8)
        stats = leg.stats()
        assert stats["packets_sent"] == 8 and stats["gso_disabled"] == 1 and stats["send_errors"] == 0
        got: list[list[bytes]] = [[]]
        await collect([rx], got, 8)
        assert got == [segments]
        flow.close()
        leg.retire()
        src.close()
        rx.close()
    finally:
        engine.close()


# ----------------------------------------------------------------------------- changes under traffic

class Blaster(threading.Thread):
    """Sends numbered RTP packets to ``addr`` as fast as the socket takes them, until stopped."""

    def __init__(self, addr: tuple[str, int], pace: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.addr = addr
        self.pace = pace
        self.sent = 0
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def run(self) -> None:
        while not self.stop.is_set():
            for _ in range(20):
                try:
                    self.sock.sendto(rtp(self.sent, self.sent * 90), self.addr)
                except OSError:
                    pass
                self.sent += 1
            time.sleep(self.pace)

    def finish(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


@native_only
async def test_leg_changes_do_not_disturb_a_stable_leg(native: FlowTable) -> None:
    flow = await native.add_flow("churn/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    stable = udp()
    stable.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    flow.set_leg(Leg("stable", stable.getsockname(), ("127.0.0.1", 9), enabled=True))
    others = [udp() for _ in range(4)]
    blaster = Blaster(flow.ingress, pace=0.001)   # ~20k packets/s
    blaster.start()
    got: list[bytes] = []
    for i in range(300):                          # ~2000 leg-set swaps while packets flow
        sink = others[i % 4]
        flow.set_leg(Leg(f"o{i % 4}", sink.getsockname(), ("127.0.0.1", 9), enabled=i % 3 == 0))
        flow.enable_leg(f"o{i % 4}", True)
        if i % 5 == 0:
            flow.remove_leg(f"o{(i + 2) % 4}")
        got += drain(stable)
        for other in others:
            drain(other)
        await asyncio.sleep(0.001)   # pacing: the changes are spread over the blaster's traffic
    blaster.finish()
    await until(lambda: flow.snapshot().packets_received == blaster.sent)
    await until(lambda: len(got.extend(drain(stable)) or got) >= blaster.sent)
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in got]
    assert len(seqs) == blaster.sent and seqs == [s & 0xFFFF for s in range(blaster.sent)]
    assert sent(flow, "stable") == blaster.sent
    for s in (stable, *others):
        s.close()


@native_only
async def test_flows_removed_with_packets_in_flight(native: FlowTable) -> None:
    sink = udp()
    for i in range(30):
        flow = await native.add_flow(f"gone/{i}", clock_rate=90000)
        flow.set_source("127.0.0.1")   # the test's sources all send from this host
        flow.set_leg(Leg("v", sink.getsockname(), ("127.0.0.1", 9), enabled=True))
        blaster = Blaster(flow.ingress)
        blaster.start()
        await until(lambda flow=flow: flow.snapshot().packets_received > 0)   # packets are in flight
        port = flow.ingress[1]
        assert native.remove_flow(f"gone/{i}")
        # The engine let go of the socket before remove_flow returned: the port is free.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))
        probe.close()
        blaster.finish()
        counted = flow.snapshot().packets_received       # frozen, still readable
        await asyncio.sleep(0)
        assert flow.snapshot().packets_received == counted and sent(flow, "v") <= counted
        drain(sink)
    assert native._native is not None and native._native.info()["flows"] == 0
    sink.close()


# ----------------------------------------------------------------------------- bad destinations

async def test_bad_destinations_do_not_stall_the_others(table: FlowTable) -> None:
    flow = await table.add_flow("bad/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    good = udp()
    gone = udp()
    gone_addr = gone.getsockname()
    gone.close()                                                   # ICMP port unreachable
    flow.set_leg(Leg("gone", gone_addr, ("127.0.0.1", 9), enabled=True))
    flow.set_leg(Leg("bcast", ("255.255.255.255", 9), ("255.255.255.255", 9), enabled=True))  # EACCES
    flow.set_leg(Leg("good", good.getsockname(), ("127.0.0.1", 9), enabled=True))
    src = udp()
    got: list[list[bytes]] = [[]]
    for seq in range(200):
        src.sendto(rtp(seq), flow.ingress)
        if seq % 20 == 19:
            await collect([good], got, seq + 1)
    assert len(got[0]) == 200 and sent(flow, "good") == 200
    snap = flow.snapshot()
    assert snap.packets_received == 200
    if table.engine == "native":
        # (asyncio hands the Python path's send errors to error_received, without the leg)
        assert snap.leg("bcast").send_errors == 200 and snap.leg("bcast").packets_sent == 0
    src.close()
    good.close()


@native_only
async def test_unresolvable_leg_counts_every_packet_as_a_send_error(native: FlowTable) -> None:
    flow = await native.add_flow("dns/0", clock_rate=90000)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    good = udp()
    flow.set_leg(Leg("nowhere", ("no-such-host.invalid", 5004), ("no-such-host.invalid", 5005), enabled=True))
    flow.set_leg(Leg("good", good.getsockname(), ("127.0.0.1", 9), enabled=True))
    src = udp()
    for seq in range(50):
        src.sendto(rtp(seq), flow.ingress)
    await until(lambda: sent(flow, "good") == 50)
    assert flow.snapshot().leg("nowhere").send_errors == 50
    src.close()
    good.close()


# ----------------------------------------------------------------------------- the switch

def test_engine_switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="engine must be one of"):
        choose_engine("fast")
    assert choose_engine("python") == "python"
    monkeypatch.setenv("MSM_NO_NATIVE", "1")
    assert choose_engine("auto") == "python" and FlowTable().engine == "python"
    with pytest.raises(EngineUnavailable, match="MSM_NO_NATIVE") as info:
        choose_engine("native")
    assert isinstance(info.value, Unavailable) and info.value.grpc_code == "UNAVAILABLE"
    monkeypatch.delenv("MSM_NO_NATIVE")
    if ext.available():
        assert choose_engine("auto") == "native"
    # Not built (no compiler at install time): a warning, then the reference path.
    monkeypatch.setattr(ext, "unavailable_reason", lambda: "msm.ext._engine is not built (test)")
    monkeypatch.setattr(flows_module, "_warned_fallback", False)
    with caplog.at_level(logging.WARNING, logger="msm.rtp_proxy.flows"):
        assert choose_engine("auto") == "python"
    assert "pure-Python" in caplog.text and "not built" in caplog.text
    with pytest.raises(EngineUnavailable):
        choose_engine("native")


_SRTP_PROBE = """
import sys
from msm import ext
print(ext.load_srtp(sys.argv[1] or None)); print(ext.srtp_error()); print(ext.load_srtp(sys.argv[2]))
print(sorted(ext.Engine(srtp_library=sys.argv[2]).features))
"""


def _srtp_probe(first: str, second: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != ext.SRTP_LIBRARY_ENV}
    out = subprocess.run([sys.executable, "-c", _SRTP_PROBE, first, second], capture_output=True, text=True,
                         timeout=20, env=env, check=True)
    return out.stdout.splitlines()


@native_only
def test_srtp_comes_from_pylibsrtp_and_one_library_serves_the_process() -> None:
    core = start_core()
    try:
        if "srtp" not in core.features:
            pytest.skip(f"no SRTP in the native engine: {ext.srtp_error()}")
        # The proxy's engine protects with pylibsrtp's libsrtp (OpenSSL), the copy its RTCP side uses.
        assert core.srtp_library == library_path()
    finally:
        core.close()
    # In a fresh process: pylibsrtp's module first, then another library changes nothing.
    pylib = library_path() or ""
    loaded, error, again, features = _srtp_probe(pylib, "libsrtp2.so.1")
    assert loaded == pylib and error == "None" and again == pylib and "srtp" in features
    # A library that cannot be loaded: the system's libsrtp2, saying why.
    loaded, error, again, _ = _srtp_probe("/nonexistent/libsrtp.so", pylib)
    assert "/nonexistent/libsrtp.so" in error
    assert loaded == again == "libsrtp2.so.1" or loaded == "None"   # None: no system libsrtp2 here


def gcm_key(epoch: int = 1) -> SrtpKey:
    return SrtpKey(master_key=os.urandom(16), master_salt=os.urandom(12), epoch=epoch, profile=GCM)


def gcm_session(key: SrtpKey, inbound: bool) -> pylibsrtp.Session:
    """pylibsrtp's own AEAD_AES_128_GCM session: the reference the engines must agree with."""
    return pylibsrtp.Session(policy=pylibsrtp.Policy(
        key=key.material, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


async def test_gcm_interoperates_with_pylibsrtp_both_ways(table: FlowTable) -> None:
    """RFC 7714 AES-GCM on a leg (equal sizes: GSO trains on the native engine) and on a flow's ingress."""
    if table.engine == "native" and "srtp-gcm" not in table.engine_features:
        pytest.skip(f"the native engine's libsrtp has no AES-GCM: {table.engine_features}")
    out_key, in_key = gcm_key(), gcm_key()
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")
    capture, capture_rtcp, src = udp(), udp(), udp(bind=False)
    flow.set_leg(Leg("relay@b", capture.getsockname(), capture_rtcp.getsockname(), enabled=True, srtp=out_key))
    sent_plain = [rtp(seq, ts=seq * 3000, size=1316) for seq in range(40)]
    for packet in sent_plain:
        src.sendto(packet, flow.ingress)
    got: list[bytes] = []
    await until(lambda: len(got.__iadd__(drain(capture))) >= 40, what="40 protected packets")
    opener = gcm_session(out_key, inbound=True)
    for plain, wire in zip(sent_plain, got, strict=True):
        assert len(wire) == len(plain) + 16 and wire[:12] == plain[:12] and plain[12:60] not in wire
        assert opener.unprotect(wire) == plain
    # pylibsrtp protects, the flow unprotects: the viewer gets the cleartext; a forgery is counted.
    relay = await table.add_flow("s/0@b", clock_rate=90000, srtp=in_key)
    relay.set_source("127.0.0.1")
    viewer, viewer_rtcp = udp(), udp()
    relay.set_leg(Leg("viewer", viewer.getsockname(), viewer_rtcp.getsockname(), enabled=True))
    sealer = gcm_session(in_key, inbound=False)
    wires = [sealer.protect(rtp(seq, ts=seq * 3000, ssrc=0x77)) for seq in range(20)]
    forged = wires[-1][:-1] + bytes([wires[-1][-1] ^ 1])
    for wire in [*wires[:-1], forged]:
        src.sendto(wire, relay.ingress)
    seen: list[bytes] = []
    await until(lambda: len(seen.__iadd__(drain(viewer))) >= 19 and relay.snapshot().srtp_errors == 1,
                what="19 packets at the viewer and one SRTP error")
    assert seen == [rtp(seq, ts=seq * 3000, ssrc=0x77) for seq in range(19)]
    for s in (capture, capture_rtcp, src, viewer, viewer_rtcp):
        s.close()


async def test_legs_of_both_profiles_on_one_flow_each_get_their_own_sizes(table: FlowTable) -> None:
    """One batch, two SRTP legs whose tags differ (10 and 16 bytes): each leg's GSO trains are cut
    at its own protected size, and every datagram opens with that leg's key."""
    if table.engine == "native" and "srtp-gcm" not in table.engine_features:
        pytest.skip(f"the native engine's libsrtp has no AES-GCM: {table.engine_features}")
    keys = {"gcm": gcm_key(), "cm": SrtpKey(master_key=os.urandom(16), master_salt=os.urandom(14), epoch=1)}
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")
    sinks = {name: (udp(), udp()) for name in keys}
    for name, (rtp_sink, rtcp_sink) in sinks.items():
        flow.set_leg(Leg(name, rtp_sink.getsockname(), rtcp_sink.getsockname(), enabled=True, srtp=keys[name]))
    src = udp(bind=False)
    plain = [rtp(seq, ts=seq * 3000, size=1316) for seq in range(48)]
    for packet in plain:
        src.sendto(packet, flow.ingress)
    got: dict[str, list[bytes]] = {name: [] for name in keys}
    await until(lambda: all(len(got[n].__iadd__(drain(sinks[n][0]))) >= 48 for n in keys), what="48 on each leg")
    openers = {"gcm": gcm_session(keys["gcm"], inbound=True), "cm": pylibsrtp.Session(policy=pylibsrtp.Policy(
        key=keys["cm"].material, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))}
    for name, tag in (("gcm", 16), ("cm", 10)):
        assert [len(w) for w in got[name]] == [1316 + tag] * 48
        assert [openers[name].unprotect(w) for w in got[name]] == plain
    for pair in sinks.values():
        for s in pair:
            s.close()
    src.close()


def test_a_profile_the_engine_cannot_do_is_refused_clearly() -> None:
    with pytest.raises(SrtpKeyRefused, match="not supported"):
        SrtpKey(master_key=bytes(16), master_salt=bytes(14), epoch=1, profile="AES_256_CM_HMAC_SHA1_80")
    with pytest.raises(SrtpKeyRefused, match="12-byte salt"):
        SrtpKey(master_key=bytes(16), master_salt=bytes(14), epoch=1, profile=GCM)
    # A native engine whose libsrtp has no AES-GCM (libsrtp's own crypto): its hello says
    # AES-CM only, and a GCM key is refused before any flow or leg is touched.
    no_gcm = SimpleNamespace(engine="native", engine_features=frozenset({"srtp", "gso"}))
    assert srtp_profiles(no_gcm) == (PROFILE,)   # type: ignore[arg-type]
    with pytest.raises(SrtpKeyRefused, match="AEAD_AES_128_GCM refused: this proxy's native engine does "
                                             "AES_CM_128_HMAC_SHA1_80"):
        check_profile(no_gcm, gcm_key())   # type: ignore[arg-type]
    check_profile(no_gcm, SrtpKey(master_key=bytes(16), master_salt=bytes(14), epoch=1))   # type: ignore[arg-type]
    assert srtp_profiles(SimpleNamespace(engine="python")) == (GCM, PROFILE)   # type: ignore[arg-type]


@native_only
def test_the_c_engine_checks_profile_and_key_length() -> None:
    core = start_core()
    try:
        if "srtp" not in core.features:
            pytest.skip(f"no SRTP in the native engine: {ext.srtp_error()}")
        leg = ext.LegHandle(core, "127.0.0.1", 40000, socket.AF_INET)
        with pytest.raises(ValueError, match="unknown to the native engine"):
            leg.set_srtp(bytes(30), profile="AES_256_CM_HMAC_SHA1_80")
        with pytest.raises(ValueError, match="SRTP key refused"):   # a GCM key is 28 bytes, not 30
            leg.set_srtp(bytes(30), profile=GCM)
        assert core.lib.msm_leg_set_srtp(core.ptr, leg.ptr, 3, bytes(30), 30) == -1   # no such profile
        assert core.ffi.errno == errno.EPROTONOSUPPORT
        leg.set_srtp(bytes(30), profile=PROFILE)
        if "srtp-gcm" in core.features:
            leg.set_srtp(bytes(28), profile=GCM)   # a leg may change profile on a rekey
        leg.retire()
    finally:
        core.close()
