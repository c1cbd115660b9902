"""SRTP on legs between nodes, on both engines, over real UDP on loopback.

A "node" here is a flow table of its own (a leg may never point at its own
table's ingress ports): table ``a`` holds the source's flow with an SRTP leg,
table ``b`` (ports 44100-44199) the relay flow that unprotects and fans out
plain RTP to a viewer. The keys are checked with pylibsrtp, independently of
either engine.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator

import pylibsrtp
import pytest

from msm.rtp_proxy.flows import Flow, FlowTable, Leg
from msm.rtp_proxy.srtp import PROFILE, SrtpKey, SrtpKeyRefused
from msm.sdk.rtp import SenderReport, parse_rtcp, serialize_rtcp
from tests.engines import engine, table, until

__all__ = ["engine", "table"]

pytestmark = pytest.mark.timeout(30)

RELAY_PORTS = (44100, 44199)
SRTP_TAG = 10   # what AES_CM_128_HMAC_SHA1_80 adds to every RTP packet
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104


def rtp(seq: int, ssrc: int = 0x5EC0) -> bytes:
    payload = bytes((seq + i) & 0xFF for i in range(200))
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + payload


def new_key(epoch: int = 1) -> SrtpKey:
    return SrtpKey(master_key=os.urandom(16), master_salt=os.urandom(14), epoch=epoch)


def session(key: SrtpKey, inbound: bool) -> pylibsrtp.Session:
    return pylibsrtp.Session(policy=pylibsrtp.Policy(
        key=key.material, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


class Port:
    """A UDP port pair on loopback (a viewer, or a capture of a leg)."""

    def __init__(self) -> None:
        self.rtp, self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.rtp, self.rtcp):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.got: list[bytes] = []
        self.got_rtcp: list[bytes] = []

    def leg(self, leg_id: str, key: SrtpKey | None = None) -> Leg:
        return Leg(leg_id, self.rtp.getsockname(), self.rtcp.getsockname(), enabled=True, srtp=key)

    def pull(self) -> list[bytes]:
        self.got += _drain(self.rtp)
        return self.got

    def pull_rtcp(self) -> list[bytes]:
        self.got_rtcp += _drain(self.rtcp)
        return self.got_rtcp

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


@pytest.fixture
async def relay_table(engine: str) -> AsyncIterator[FlowTable]:
    t = FlowTable(host="127.0.0.1", port_range=RELAY_PORTS, engine=engine)
    yield t
    t.close()


async def pair(table: FlowTable, relay_table: FlowTable, key: SrtpKey) -> tuple[Flow, Flow, Port]:
    """Source flow --SRTP leg--> relay flow --plain--> a viewer."""
    relay = await relay_table.add_flow("s/0@b", clock_rate=90000, srtp=key)
    relay.set_source("127.0.0.1")
    viewer = Port()
    relay.set_leg(viewer.leg("viewer"))
    source = await table.add_flow("s/0", clock_rate=90000)
    source.set_source("127.0.0.1")
    source.set_leg(Leg("relay@b", relay.ingress, (relay.ingress[0], relay.ingress[1] + 1), enabled=True, srtp=key))
    return source, relay, viewer


async def test_srtp_leg_into_srtp_flow_round_trips(table: FlowTable, relay_table: FlowTable) -> None:
    source, relay, viewer = await pair(table, relay_table, new_key())
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [rtp(seq) for seq in range(30)]
    for packet in sent:
        src.sendto(packet, source.ingress)
    await until(lambda: len(viewer.pull()) == 30, what="30 packets at the viewer")
    assert viewer.got == sent   # exactly the cleartext, after protect and unprotect
    snap = relay.snapshot()
    assert snap.srtp and snap.srtp_errors == 0 and snap.packets_received == 30 and snap.packets_lost == 0
    leg = source.snapshot().leg("relay@b")
    assert leg.srtp and leg.packets_sent == 30 and leg.bytes_sent == sum(len(p) + 10 for p in sent)
    assert not snap.leg("viewer").srtp
    # RTCP goes the same way as SRTCP: the viewer gets the source's sender report in the clear.
    sr = serialize_rtcp([SenderReport(ssrc=0x5EC0, ntp_timestamp=1 << 32, rtp_timestamp=3000,
                                      packet_count=30, octet_count=6000)])
    src.sendto(sr, (source.ingress[0], source.ingress[1] + 1))
    await until(lambda: len(viewer.pull_rtcp()) == 1, what="the sender report at the viewer")
    assert parse_rtcp(viewer.got_rtcp[0])[0] == parse_rtcp(sr)[0]
    src.close()
    viewer.close()


async def test_leg_sends_ciphertext_with_an_auth_tag(table: FlowTable) -> None:
    key = new_key()
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")
    capture = Port()
    flow.set_leg(capture.leg("relay@b", key))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [rtp(seq) for seq in range(10)]
    for packet in sent:
        src.sendto(packet, flow.ingress)
    await until(lambda: len(capture.pull()) == 10, what="10 packets on the leg")
    opener = session(key, inbound=True)
    for plain, wire in zip(sent, capture.got, strict=True):
        assert len(wire) == len(plain) + 10          # the 80-bit HMAC-SHA1 tag
        assert wire[:12] == plain[:12]               # the header stays readable
        assert wire[12:-10] != plain[12:]            # the payload does not
        assert opener.unprotect(wire) == plain
    src.close()
    capture.close()


async def test_a_burst_of_camera_sized_packets_is_protected_one_datagram_each(table: FlowTable) -> None:
    """A burst of 1,400-byte packets with shorter ones between them, read in batches: every datagram
    on the leg is one packet, protected with the leg's key, in order, with no send error."""
    key = new_key()
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")
    capture = Port()
    capture.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    flow.set_leg(capture.leg("relay@b", key))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = [rtp(seq)[:12] + bytes([seq & 0xFF]) * (1388 if seq % 50 else 300) for seq in range(1, 301)]
    for packet in sent:
        src.sendto(packet, flow.ingress)
    await until(lambda: len(capture.pull()) == len(sent), what="300 packets on the leg")
    opener = session(key, inbound=True)
    assert [opener.unprotect(wire) for wire in capture.got] == sent
    assert flow.snapshot().leg("relay@b").send_errors == 0
    src.close()
    capture.close()


async def test_runs_of_equal_sizes_leave_as_gso_trains_of_the_protected_size(table: FlowTable, engine: str) -> None:
    """Native engine: two GRO trains in (camera-sized packets with a shorter last one, then a run
    of another size); on the SRTP leg each run goes as one GSO super-datagram whose segment size
    is its first packet's plus the tag, and every segment opens to its cleartext, in order."""
    if engine != "native" or "gso" not in table.engine_features:
        pytest.skip("UDP GSO is the native engine's")
    key = new_key()
    flow = await table.add_flow("s/0", clock_rate=90000)
    flow.set_source("127.0.0.1")
    capture = Port()
    capture.rtp.setsockopt(SOL_UDP, UDP_GRO, 1)   # a GSO train on loopback arrives whole, with its segment size
    flow.set_leg(capture.leg("relay@b", key))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first = [rtp(seq)[:12] + bytes([seq]) * 1388 for seq in range(1, 8)]
    first[-1] = first[-1][:500]
    second = [rtp(seq)[:12] + bytes([seq]) * 1188 for seq in range(8, 14)]
    for train in (first, second):
        src.sendmsg([b"".join(train)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(train[0])))], 0, flow.ingress)
    sent = first + second
    trains: list[tuple[bytes, int]] = []

    def pull() -> int:
        while True:
            try:
                data, ancillary, _, _ = capture.rtp.recvmsg(65536, socket.CMSG_SPACE(4))
            except BlockingIOError:
                break
            size = next((struct.unpack("=i", d[:4])[0] for lvl, typ, d in ancillary
                         if (lvl, typ) == (SOL_UDP, UDP_GRO)), len(data))
            trains.append((data, size))
        return sum(-(-len(data) // size) for data, size in trains)

    await until(lambda: pull() == len(sent), what=f"{len(sent)} packets on the leg")
    opener = session(key, inbound=True)
    got: list[bytes] = []
    for data, size in trains:
        segments = [data[at:at + size] for at in range(0, len(data), size)]
        assert size == len(sent[len(got)]) + SRTP_TAG   # the first cleartext's size plus the tag
        got += [opener.unprotect(wire) for wire in segments]
    assert got == sent
    assert any(len(data) > size for data, size in trains)   # at least one run left as one send
    leg = flow.engine.leg_counters("relay@b")
    assert leg.gso_sends >= 1 and leg.send_errors == 0
    snap = flow.snapshot().leg("relay@b")
    assert snap.packets_sent == len(sent) and snap.bytes_sent == sum(len(p) + SRTP_TAG for p in sent)
    src.close()
    capture.close()


async def test_wrong_key_replays_and_plain_rtp_are_dropped_and_counted(relay_table: FlowTable) -> None:
    relay = await relay_table.add_flow("s/0@b", clock_rate=90000, srtp=new_key())
    relay.set_source("127.0.0.1")
    viewer = Port()
    relay.set_leg(viewer.leg("viewer"))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wrong = session(new_key(), inbound=False)
    for seq in range(5):
        src.sendto(wrong.protect(rtp(seq)), relay.ingress)    # another key
        src.sendto(rtp(100 + seq), relay.ingress)             # plain RTP
    await until(lambda: relay.snapshot().srtp_errors == 10, what="10 SRTP errors")
    snap = relay.snapshot()
    assert snap.packets_received == 0 and snap.packets_forwarded == 0 and viewer.pull() == []
    # A replayed packet under the right key is refused as well.
    assert relay.srtp is not None
    right = session(relay.srtp, inbound=False)
    packet = right.protect(rtp(7))
    src.sendto(packet, relay.ingress)
    await until(lambda: len(viewer.pull()) == 1, what="the one good packet")
    src.sendto(packet, relay.ingress)
    await until(lambda: relay.snapshot().srtp_errors == 11, what="the replay counted")
    assert len(viewer.pull()) == 1
    src.close()
    viewer.close()


async def test_rekey_receiver_first_then_sender_loses_nothing(table: FlowTable, relay_table: FlowTable) -> None:
    source, relay, viewer = await pair(table, relay_table, new_key(epoch=1))
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = 0

    async def burst(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            src.sendto(rtp(seq), source.ingress)
            seq += 1
        await until(lambda: len(viewer.pull()) == seq, what=f"{seq} packets at the viewer")

    await burst(10)
    key2 = new_key(epoch=2)
    relay.set_ingress_key(key2)          # the receiver first: the old key still opens
    await burst(10)
    source.rekey_leg("relay@b", key2)    # then the sender
    await burst(10)
    assert relay.snapshot().srtp_errors == 0 and relay.snapshot().packets_lost == 0
    assert [struct.unpack_from("!H", p, 2)[0] for p in viewer.got] == list(range(30))
    # An older epoch, or a bad key, is refused and changes nothing.
    with pytest.raises(SrtpKeyRefused):
        relay.set_ingress_key(new_key(epoch=1))
    with pytest.raises(SrtpKeyRefused):
        SrtpKey(master_key=b"short", master_salt=os.urandom(14))
    with pytest.raises(SrtpKeyRefused):
        SrtpKey(master_key=os.urandom(16), master_salt=os.urandom(14), profile="AEAD_AES_256_GCM")
    await burst(5)
    src.close()
    viewer.close()


def test_keys_never_show_in_repr() -> None:
    key = new_key()
    assert key.master_key.hex() not in repr(key) and key.profile == PROFILE
