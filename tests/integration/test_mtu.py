"""A leg whose path MTU is smaller than the source's packets: counted and reported, never fragmented.

A veth pair with MTU 1200 leads into a network namespace; the proxy's flow (bound on
the host end) has a leg to the namespace end. 1316-byte RTP packets (7 MPEG-TS cells,
what cameras and encoders send) do not fit: each is refused and counted as the leg's
``mtu_exceeded``, with the leg's path MTU (1200) in its stats, gRPC and metrics; 1000-byte
packets fit and are sent. Both engines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from msm import ext
from msm.rtp_proxy.engine import Leg
from msm.rtp_proxy.flows import FlowTable
from msm.rtp_proxy.metrics import ProxyCollector
from msm.rtp_proxy.service import DataPlaneService

NS = f"msm-mtu-{os.getpid()}"
HOST_IF, NS_IF = f"mtu{os.getpid() % 100000}a", f"mtu{os.getpid() % 100000}b"
HOST_IP, NS_IP = "10.213.0.1", "10.213.0.2"
MTU = 1200
PORTS = (43000, 43099)


def _ip(*args: str, ns: bool = False) -> None:
    cmd = ["ip", *(["-n", NS] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def small_mtu_link() -> Iterator[None]:
    """veth HOST_IF (here, HOST_IP) <-> NS_IF (in namespace NS, NS_IP), both at MTU 1200."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "needs root and iproute2 to create a network namespace and a veth pair"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    try:
        _ip("netns", "add", NS)
        _ip("link", "add", HOST_IF, "mtu", str(MTU), "type", "veth", "peer", "name", NS_IF, "mtu", str(MTU),
            "netns", NS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("addr", "add", f"{NS_IP}/30", "dev", NS_IF, ns=True)
        _ip("link", "set", NS_IF, "up", ns=True)
    except subprocess.CalledProcessError as exc:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
        reason = f"cannot create the namespace and veth pair: {exc.stderr.decode(errors='replace').strip()}"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def _rtp(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0x1234) + bytes(size - 12)


@pytest.mark.parametrize("engine", ["python", "native"])
async def test_packets_over_a_legs_path_mtu_are_counted_not_fragmented(small_mtu_link: None, engine: str) -> None:
    if engine == "native" and (reason := ext.unavailable_reason()):
        print(f"skipping the native engine: {reason}")
        pytest.skip(f"native engine: {reason}")
    table = FlowTable(host=HOST_IP, port_range=PORTS, engine=engine)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flow = await table.add_flow("mtu/0", clock_rate=90000)
        flow.set_source("127.0.0.1")
        flow.set_leg(Leg("small", (NS_IP, 40000), (NS_IP, 40001), enabled=True))
        flow.set_leg(Leg("loop", ("127.0.0.1", 40002), ("127.0.0.1", 40003), enabled=True))
        sender.bind(("127.0.0.1", 0))
        big, small = 20, 10
        for seq in range(big + small):
            sender.sendto(_rtp(seq, 1316 if seq < big else 1000), flow.ingress)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            legs = {leg.leg_id: leg for leg in flow.snapshot().legs}
            if legs["loop"].packets_sent == big + small and legs["small"].packets_sent + legs["small"].mtu_exceeded \
                    == big + small:
                break
            await asyncio.sleep(0.02)
        legs = {leg.leg_id: leg for leg in flow.snapshot().legs}
        assert legs["small"].path_mtu == MTU
        assert (legs["small"].mtu_exceeded, legs["small"].packets_sent) == (big, small), legs["small"]
        assert legs["small"].send_errors == 0
        assert (legs["loop"].mtu_exceeded, legs["loop"].packets_sent) == (0, big + small)
        samples = {(m.name, s.labels.get("session"), s.labels.get("reason")): s.value
                   for m in ProxyCollector(table, "node").collect() for s in m.samples}
        assert samples[("msm_egress_dropped_packets", "small", "mtu_exceeded")] == big
        assert samples[("msm_egress_path_mtu_bytes", "small", None)] == MTU
        grpc_legs = {leg.leg_id: leg for f in DataPlaneService(table, "node").snapshot().flows for leg in f.legs}
        assert (grpc_legs["small"].mtu_exceeded, grpc_legs["small"].path_mtu) == (big, MTU)
    finally:
        sender.close()
        table.close()
