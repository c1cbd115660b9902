"""RTP over QUIC between nodes: the tunnel pair of msm.rtp_proxy.quic on loopback.

tests/rtp_source.py plays the sending engine, two UDP sockets the receiving engine; the ends
authenticate with certificates of a mesh CA (mutual TLS, SPIFFE IDs of proxies).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect

from msm.rtp_proxy.quic import QuicLegReceiver, QuicLegSender
from msm.rtp_proxy.quic import tls as quic_tls
from msm.sdk.rtp import RtpPacket
from msm.security.ca import CertificateAuthority
from msm.security.identity import Role
from msm.security.local import TRUST_DOMAIN, local_identity
from msm.security.tls import TlsFiles
from tests.engines import poll
from tests.rtp_source import RtpSource

Address = tuple[str, int]


class Sink(asyncio.DatagramProtocol):
    """One socket of the receiving engine: what arrived, and from where."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.senders: list[Address] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.packets.append(data)
        self.senders.append(addr)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


async def sink() -> Sink:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    return protocol


@dataclass
class Pki:
    ca: CertificateAuthority
    root: Path
    made: dict[str, TlsFiles] = field(default_factory=dict)

    def files(self, role: Role, name: str, *, ca: CertificateAuthority | None = None) -> TlsFiles:
        """TLS files for ``role``/``name`` issued by ``ca`` (the mesh's by default), trusting the mesh's CA."""
        issued = (ca or self.ca).issue(local_identity(role, name))
        files = TlsFiles(self.root / f"{role.value}-{name}-{len(self.made)}")
        files.write(ca_pem=self.ca.trust_bundle_pem, chain_pem=issued.chain_pem, key_pem=issued.key_pem)
        self.made[str(files.directory)] = files
        return files


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(CertificateAuthority.create(tmp_path / "ca", TRUST_DOMAIN), tmp_path)


@dataclass
class Tunnel:
    receiver: QuicLegReceiver
    rtp: Sink
    rtcp: Sink


@pytest.fixture
async def tunnel(pki: Pki) -> AsyncIterator[Tunnel]:
    rtp, rtcp = await sink(), await sink()
    receiver = QuicLegReceiver(pki.files(Role.PROXY, "n2"), ("127.0.0.1", 0), rtp.address, rtcp.address)
    await receiver.start()
    yield Tunnel(receiver, rtp, rtcp)
    await receiver.stop()
    for s in (rtp, rtcp):
        assert s.transport is not None
        s.transport.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sender_for(pki: Pki, tunnel: Tunnel, files: TlsFiles | None = None, node: str = "n2") -> QuicLegSender:
    return QuicLegSender(files or pki.files(Role.PROXY, "n1"), ("127.0.0.1", tunnel.receiver.port), node, ())


async def test_rtp_and_rtcp_cross_the_tunnel_in_order_both_ways(pki: Pki, tunnel: Tunnel) -> None:
    """1000 RTP packets and the sender reports arrive complete and in order at the receiving
    engine; its receiver report goes back to the source's RTCP socket; a local packet from any
    other address, or too large for a datagram, is counted and dropped."""
    sender = sender_for(pki, tunnel)
    await sender.start()
    try:
        await asyncio.wait_for(sender.connected.wait(), 3)
        async with RtpSource(("127.0.0.1", sender.rtp_port), ("127.0.0.1", sender.rtcp_port), seed=11,
                             rate=2000, sr_interval=0.1) as source:
            assert source._rtp is not None and source._rtcp is not None
            engine = {source._rtp.get_extra_info("sockname")[:2], source._rtcp.get_extra_info("sockname")[:2]}
            sender.sources = set(engine)
            sent = await source.send(1000)
            await poll(lambda: len(tunnel.rtp.packets) >= 1000 and len(tunnel.rtcp.packets) >= source.rtcp_sent, 10)
            assert [RtpPacket.parse(p).sequence_number for p in tunnel.rtp.packets] == [s.seq for s in sent]
            assert len(tunnel.rtcp.packets) == source.rtcp_sent >= 5
            assert tunnel.rtcp.packets[0][1] == 200   # a sender report, unchanged
            # The receiving engine answers to where RTCP came from: it goes back through the tunnel.
            assert tunnel.rtcp.transport is not None
            report = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")
            tunnel.rtcp.transport.sendto(report, tunnel.rtcp.senders[-1])
            await poll(lambda: source.rtcp_received == 1)
            assert source.rtcp_received == 1
            source._rtp.sendto(bytes(2000), ("127.0.0.1", sender.rtp_port))   # larger than one datagram
        stranger = await sink()
        assert stranger.transport is not None
        stranger.transport.sendto(tunnel.rtp.packets[0], ("127.0.0.1", sender.rtp_port))
        await asyncio.sleep(0.1)
        stranger.transport.close()
        assert len(tunnel.rtp.packets) == 1000
        c = sender.counters
        assert (c.foreign, c.too_large, c.down, c.congested) == (1, 1, 0, 0)
        assert c.tunneled == 1000 + source.rtcp_sent
        r = tunnel.receiver.counters
        assert (r.delivered_rtp, r.delivered_rtcp, r.connects, r.garbage, r.refused) == \
            (1000, source.rtcp_sent, 1, 0, 0)
    finally:
        await sender.stop()


async def test_peers_without_a_proxy_certificate_of_the_mesh_are_refused(pki: Pki, tunnel: Tunnel,
                                                                          tmp_path: Path) -> None:
    """The receiving end refuses a client whose certificate a foreign CA signed (though it names a
    proxy) and a stub's certificate from the mesh's own CA; the sender refuses a server that is
    not the node it names. Nothing is delivered."""
    foreign = CertificateAuthority.create(tmp_path / "foreign", TRUST_DOMAIN)
    senders = [sender_for(pki, tunnel, pki.files(Role.PROXY, "n1", ca=foreign)),
               sender_for(pki, tunnel, pki.files(Role.STUB, "pod-1")),
               sender_for(pki, tunnel, node="n3")]
    for sender in senders:
        await sender.start()
    try:
        await poll(lambda: tunnel.receiver.counters.refused >= 2 and all(s.last_error for s in senders))
        assert tunnel.receiver.counters.refused >= 2
        assert tunnel.receiver.counters.connects == 0
        assert "not the mesh's" in senders[0].last_error
        assert "is not a proxy" in senders[1].last_error
        assert "n3.proxy" in senders[2].last_error
        assert tunnel.rtp.packets == []
    finally:
        for sender in senders:
            await sender.stop()


async def test_garbage_datagrams_are_counted_and_dropped(pki: Pki, tunnel: Tunnel) -> None:
    """An authenticated peer that sends datagrams which are no channel byte and RTP/RTCP packet,
    or larger than the leg's datagrams, has each counted and dropped; its good packet still arrives."""
    files = pki.files(Role.PROXY, "n1")
    config = quic_tls.configuration(files, is_client=True, mtu=1500, idle_timeout=5.0, peer_node="n2")
    good = bytes(RtpPacket(payload_type=96, sequence_number=1, timestamp=0, ssrc=7, marker=False, payload=b"x"))
    async with connect("127.0.0.1", tunnel.receiver.port, configuration=config) as proto:
        await poll(lambda: tunnel.receiver.counters.connects == 1)
        for datagram in (b"", b"\x07" + good, b"\x00" + bytes(20), b"\x00\x80", b"\x00" + good + bytes(1440),
                         b"\x00" + good):
            proto._quic.send_datagram_frame(datagram)
            proto.transmit()
        await poll(lambda: len(tunnel.rtp.packets) == 1)
    c = tunnel.receiver.counters
    assert (c.garbage, c.too_large, c.delivered_rtp) == (4, 1, 1)
    assert tunnel.rtp.packets == [good]


async def test_the_sender_reconnects_after_the_receiver_restarts(pki: Pki, tunnel: Tunnel) -> None:
    """Packets sent while the receiving end is away are counted as dropped (no queue); once it is
    back on its port the sender connects again (back-off from 0.2 s) and delivers."""
    sender = sender_for(pki, tunnel)
    await sender.start()
    out = await sink()
    assert out.transport is not None
    sender.sources = {out.address}
    good = bytes(RtpPacket(payload_type=96, sequence_number=1, timestamp=0, ssrc=7, marker=False, payload=b"x"))
    try:
        await asyncio.wait_for(sender.connected.wait(), 3)
        port = tunnel.receiver.port
        await tunnel.receiver.stop()
        await poll(lambda: not sender.connected.is_set())
        out.transport.sendto(good, ("127.0.0.1", sender.rtp_port))
        await poll(lambda: sender.counters.down == 1)
        assert sender.counters.down == 1
        receiver = QuicLegReceiver(tunnel.receiver.files, ("127.0.0.1", port), tunnel.rtp.address,
                                   tunnel.rtcp.address)
        await receiver.start()
        tunnel.receiver = receiver
        await asyncio.wait_for(sender.connected.wait(), 3)
        out.transport.sendto(good, ("127.0.0.1", sender.rtp_port))
        await poll(lambda: len(tunnel.rtp.packets) == 1)
        assert tunnel.rtp.packets == [good] and sender.counters.connects == 2
    finally:
        out.transport.close()
        await sender.stop()


async def test_python_m_runs_both_ends_as_processes(pki: Pki) -> None:
    """``python -m msm.rtp_proxy.quic receive`` and ``send`` carry a packet between two processes
    and log their counters when stopped."""
    rtp, rtcp = await sink(), await sink()
    out = await sink()
    quic_port = free_udp_port()
    entry = [sys.executable, "-m", "msm.rtp_proxy.quic", "--report", "60"]
    recv = await asyncio.create_subprocess_exec(
        *entry, "--tls-dir", str(pki.files(Role.PROXY, "n2").directory), "receive", "--listen",
        f"127.0.0.1:{quic_port}", "--engine-rtp", f"127.0.0.1:{rtp.address[1]}", "--engine-rtcp",
        f"127.0.0.1:{rtcp.address[1]}", stderr=asyncio.subprocess.PIPE)
    send_port = free_udp_port()
    send = await asyncio.create_subprocess_exec(
        *entry, "--tls-dir", str(pki.files(Role.PROXY, "n1").directory), "send", "--peer", f"127.0.0.1:{quic_port}",
        "--peer-node", "n2", "--source", f"127.0.0.1:{out.address[1]}", "--rtp-port", str(send_port),
        "--rtcp-port", "0", stderr=asyncio.subprocess.PIPE)
    good = bytes(RtpPacket(payload_type=96, sequence_number=9, timestamp=0, ssrc=7, marker=False, payload=b"y"))
    assert out.transport is not None
    try:
        async def delivered() -> None:
            while not rtp.packets:
                out.transport.sendto(good, ("127.0.0.1", send_port))   # type: ignore[union-attr]
                await asyncio.sleep(0.1)
        await asyncio.wait_for(delivered(), 8)
        assert rtp.packets[0] == good
    finally:
        for proc in (send, recv):
            if proc.returncode is None:
                proc.terminate()
        logs = [(await p.communicate())[1].decode() for p in (send, recv)]
        for s in (rtp, rtcp, out):
            s.transport.close()  # type: ignore[union-attr]
    assert "'connects': 1" in logs[0] and "'delivered_rtp': " in logs[1]
    assert all(p.returncode == 0 for p in (send, recv)), logs
