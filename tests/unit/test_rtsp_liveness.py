"""Viewers' RTCP reaches the proxy's liveness report (RFC 2326 12.37), bounded per report."""

from __future__ import annotations

import asyncio
import socket

from msm.rtp_proxy.flows import FlowTable, Leg
from msm.sdk.rtp import ReceiverReport, serialize_rtcp

RR = serialize_rtcp([ReceiverReport(ssrc=0x1234)])


async def test_rtcp_from_a_legs_viewer_is_reported_once_and_bounded() -> None:
    table = FlowTable(host="127.0.0.1", port_range=(42000, 42999), engine="python")
    viewers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        flow = await table.add_flow("f1", clock_rate=90000)
        for n, sock in enumerate(viewers):
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            flow.set_leg(Leg(f"leg{n}", ("127.0.0.1", port - 1), ("127.0.0.1", port), enabled=True))
        rtcp = ("127.0.0.1", flow.ingress[1] + 1)
        viewers[0].sendto(RR, rtcp)
        viewers[1].sendto(RR, rtcp)
        viewers[1].sendto(RR, rtcp)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.sendto(RR, rtcp)            # from no leg's address: not a viewer's liveness
        stranger.close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(flow.heard) == 2:
                break
        first = table.take_heard(limit=1)     # bounded: the rest waits for the next report
        second = table.take_heard(limit=1)
        assert sorted(first + second) == [("f1", "leg0"), ("f1", "leg1")]
        assert table.take_heard() == []       # each heard leg is reported once
        flow.remove_leg("leg2")
        assert "leg2" not in flow.heard
    finally:
        for sock in viewers:
            sock.close()
        table.close()
