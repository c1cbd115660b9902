"""SRTP between nodes, end to end: a GStreamer camera on node a, an ffmpeg viewer on node b.

Two RTP proxies in this process stand for two nodes (``a`` and ``b``, their own port
ranges on loopback), with a real control plane and a stub on each node, all over mutual
TLS from the session's local CA. The viewer on node b is fed by a relay flow on b, itself
fed by ONE leg from a's source flow: that leg is SRTP. ``tshark -i lo`` captures what the
camera sends to node a (cleartext RTP) and what node a sends to node b; every packet on
the node-to-node leg carries the same RTP header, a payload that differs from the
camera's and an authentication tag, while the viewer decodes frames. Both profiles:
AEAD_AES_128_GCM (16-byte tag), what the control plane picks when both proxies can do
it, and AES_CM_128_HMAC_SHA1_80 (10-byte tag) when it is told to. The native
engine sends runs of equal-sized packets on the leg as one UDP GSO super-datagram, which
a capture on loopback records as one frame: such frames are cut back into packets.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msm.control_plane.planner import SRTP_GCM, SRTP_PROFILE, PlannerSettings
from msm.control_plane.resolver import Route, StaticResolver
from msm.control_plane.server import ControlPlaneServer
from msm.rtp_proxy.service import RtpProxy
from msm.security.identity import Role
from msm.security.local import NAMESPACE, LocalPki, local_identity, workload_files
from msm.security.tls import TlsFiles
from msm.stub.app import Stub, StubConfig
from tests.e2e.conftest import STATE_DIR
from tests.peers import FfmpegViewer, GstRtspServer

pytestmark = pytest.mark.timeout(90)

A_PORTS = (46000, 46099)
B_PORTS = (46100, 46199)
TAGS = {SRTP_GCM: 16, SRTP_PROFILE: 10}   # what each profile adds to an RTP packet


async def _tshark(pcap: Path) -> asyncio.subprocess.Process:
    """A capture of UDP to either node's ports on loopback, once tshark says it is capturing."""
    proc = await asyncio.create_subprocess_exec(
        "tshark", "-i", "lo", "-n", "-q", "-f", f"udp and dst portrange {A_PORTS[0]}-{B_PORTS[1]}",
        "-w", str(pcap), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 15)
    while b"Capturing on" not in line:
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        if not line:
            raise AssertionError("tshark ended before capturing")
    return proc


async def _packets(pcap: Path) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, UDP payload) of every captured packet."""
    proc = await asyncio.create_subprocess_exec(
        "tshark", "-r", str(pcap), "-n", "-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport",
        "-e", "udp.payload", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    packets = []
    for line in out.decode().splitlines():
        src, dst, payload = (line.split("\t") + ["", "", ""])[:3]
        if src and dst and payload:
            packets.append((int(src), int(dst), bytes.fromhex(payload.replace(":", ""))))
    return packets


def _segments(wire: bytes, clear: dict[tuple[bytes, bytes], bytes], tag: int) -> list[bytes]:
    """The packets in one captured frame of the leg. A GSO super-datagram is seen on loopback
    before it is cut up: every segment but the last has the first's size, which is its
    cleartext's plus the SRTP tag (a frame whose first packet is not in the capture stays whole)."""
    plain = clear.get((wire[8:12], wire[2:4]))
    if plain is None or len(wire) <= len(plain) + tag:
        return [wire]
    size = len(plain) + tag
    return [wire[at:at + size] for at in range(0, len(wire), size)]


class TwoNodes:
    def __init__(self, camera: GstRtspServer, profile: str) -> None:
        self.pki = LocalPki(STATE_DIR)
        self.pki.prepare()
        self.control = ControlPlaneServer(StaticResolver({"cam": Route(name="cam", url=camera.url, node="a")}),
                                          listen="127.0.0.1:0", linger=1.0, tls=self.pki["control-plane"],
                                          settings=PlannerSettings(srtp_profile=profile))
        self.proxies: dict[str, RtpProxy] = {}
        self.stubs: dict[str, Stub] = {}

    def _identity(self, role: Role, name: str) -> TlsFiles:
        """Certificate and key for one more workload from the session's CA (a node's proxy, a pod's stub)."""
        assert self.pki.rotator is not None
        return self.pki.rotator.add(local_identity(role, name), workload_files(STATE_DIR, f"srtp-{role.value}-{name}"))

    async def start(self) -> None:
        await self.control.start()
        for node, ports in (("a", A_PORTS), ("b", B_PORTS)):
            proxy = RtpProxy(node=node, grpc_listen="127.0.0.1:0", control_address=self.control.address,
                             port_range=ports, tls=self._identity(Role.PROXY, node))
            self.proxies[node] = proxy
            await proxy.start()
            pod = f"pod-{node}"
            stub = Stub(StubConfig(control_address=self.control.address, listen_port=0, node=node,
                                   stub_id=f"stub-{node}", pod=pod, namespace=NAMESPACE,
                                   can_open_upstream=node == "a"))
            stub.control.tls = self._identity(Role.STUB, pod)
            self.stubs[node] = stub
            await stub.start()
        for node in ("a", "b"):
            agent = self.proxies[node].agent
            assert agent is not None
            await asyncio.wait_for(agent.registered.wait(), 10)
            await self.stubs[node].wait_connected()

    async def stop(self) -> None:
        for stub in self.stubs.values():
            await stub.stop()
        for proxy in self.proxies.values():
            await proxy.stop()
        await self.control.stop()


@pytest.fixture(params=[SRTP_GCM, SRTP_PROFILE])
async def nodes(gst: GstRtspServer, request: pytest.FixtureRequest) -> AsyncIterator[TwoNodes]:
    mesh = TwoNodes(gst, request.param)
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.stop()


async def test_the_leg_between_nodes_is_srtp_and_the_viewer_decodes(nodes: TwoNodes) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    with tempfile.TemporaryDirectory(prefix="msm-srtp-") as scratch:
        pcap = Path(scratch) / "lo.pcap"
        capture = await _tshark(pcap)
        url = f"rtsp://127.0.0.1:{nodes.stubs['b'].port}/cam"
        viewer = await FfmpegViewer.start(url, transport="udp")
        try:
            frames = await viewer.wait_frames(25, timeout=30)
            assert frames >= 25, viewer.stderr_tail
            # Read while the viewer plays: its TEARDOWN removes the relay.
            relays = [f.snapshot() for f in nodes.proxies["b"].table.flows.values() if "@b" in f.flow_id]
            sources = [f.snapshot() for f in nodes.proxies["a"].table.flows.values()]
            keys = [f.legs["relay@b"].srtp for f in nodes.proxies["a"].table.flows.values()]
        finally:
            await viewer.stop()
            capture.send_signal(signal.SIGINT)
            await asyncio.wait_for(capture.wait(), 15)
        packets = await _packets(pcap)

    assert relays, "no relay flow on node b"
    for snap in relays:
        assert snap.srtp and snap.srtp_errors == 0 and snap.packets_received > 0
        assert not any(leg.srtp for leg in snap.legs)   # the viewer on b gets plain RTP
    assert sources and all(f.leg("relay@b").srtp for f in sources)
    profile = nodes.control.control.planner.settings.srtp_profile
    tag = TAGS[profile]
    assert all(key is not None and key.profile == profile for key in keys)   # both proxies can do GCM

    a_ingress = {f.ingress[1] for f in sources}
    b_ingress = {f.ingress[1] for f in relays}
    # The camera's cleartext RTP, by (SSRC, sequence number), as it reached node a.
    clear = {(p[8:12], p[2:4]): p for src, dst, p in packets if dst in a_ingress and src not in a_ingress}
    frames = [p for src, dst, p in packets if src in a_ingress and dst in b_ingress]
    leg = [wire for frame in frames for wire in _segments(frame, clear, tag)]
    assert len(clear) >= 50 and len(leg) >= 50, (len(clear), len(leg))
    matched = 0
    for wire in leg:
        plain = clear.get((wire[8:12], wire[2:4]))
        if plain is None:
            continue
        matched += 1
        assert len(wire) == len(plain) + tag, (len(wire), len(plain))   # the GCM or HMAC-SHA1-80 tag
        assert wire[:12] == plain[:12]               # the RTP header is authenticated, not encrypted
        assert wire[12:-tag] != plain[12:]           # the payload is not the cleartext
        assert plain[12:44] not in wire              # nor any stretch of it
    assert matched >= 50, (matched, len(leg))
    example = next(p for p in leg if (p[8:12], p[2:4]) in clear)
    print(f"{profile}: tshark -i lo: {len(clear)} RTP packets camera -> node a, {len(leg)} on the a -> b leg "
          f"in {len(frames)} sends, {matched} matched by SSRC and sequence; "
          f"e.g. seq {int.from_bytes(example[2:4], 'big')}: camera payload "
          f"{clear[(example[8:12], example[2:4])][12:28].hex()}..., on the leg {example[12:28].hex()}... "
          f"tag {example[-tag:].hex()}")
