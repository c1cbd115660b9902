"""The proxy under test as a process: ``python -m bench.forwarder CONFIG_JSON``.

A real :class:`msm.rtp_proxy.flows.FlowTable` (the proxy's data plane, the one
``msm up`` runs) with one flow per stream and the given legs, on the chosen
engine. Prints ``{"ingress": [...], "engine": ..., "features": [...]}``, then
answers ``stats`` lines on stdin with the flows' counters until ``quit`` or EOF.
With ``churn`` it keeps adding, enabling and removing an extra leg on every
flow, as the control plane does while viewers come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from msm.rtp_proxy.flows import FlowTable, Leg
from msm.rtp_proxy.srtp import PROFILE, PROFILES, SrtpKey

PORT_RANGE = (20000, 29999)
CHURN_INTERVAL = 0.05   # seconds between leg changes on each flow (20 changes/s/flow)


def totals(table: FlowTable) -> dict[str, Any]:
    out = {"received": 0, "forwarded": 0, "dropped_invalid": 0, "dropped_from_viewers": 0,
           "dropped_backlog": 0, "send_errors": 0, "sent": 0, "lost": 0, "batches": 0}
    for flow in table.flows.values():
        out["batches"] += flow.engine.counters().get("batches", 0)
        snap = flow.snapshot()
        out["received"] += snap.packets_received
        out["forwarded"] += snap.packets_forwarded
        out["dropped_invalid"] += snap.dropped_invalid
        out["dropped_from_viewers"] += snap.dropped_from_viewers
        out["dropped_backlog"] += snap.dropped_backlog
        out["lost"] += snap.packets_lost
        for leg in snap.legs:
            out["sent"] += leg.packets_sent
            out["send_errors"] += leg.send_errors
    return out


async def churn(table: FlowTable, sink_port: int) -> None:
    n = 0
    while True:
        await asyncio.sleep(CHURN_INTERVAL)
        for flow in list(table.flows.values()):
            leg_id = "churn"
            if leg_id in flow.legs:
                flow.remove_leg(leg_id)
            else:
                flow.set_leg(Leg(leg_id, ("127.0.0.1", sink_port), ("127.0.0.1", sink_port + 1), enabled=False))
                flow.enable_leg(leg_id, n % 2 == 0)
        n += 1


def new_key(profile: str, epoch: int) -> SrtpKey:
    return SrtpKey(os.urandom(16), os.urandom(PROFILES[profile].salt_len), epoch=epoch, profile=profile)


def rekey(table: FlowTable) -> None:
    """A new key on every SRTP leg. The harness's sender starts each run at the same
    SSRC and sequence numbers; under one key that would reuse SRTP packet indexes,
    which libsrtp refuses to protect (keystream reuse), so each run gets fresh keys."""
    for flow in table.flows.values():
        for leg in list(flow.legs.values()):
            if leg.srtp is not None:
                flow.rekey_leg(leg.leg_id, new_key(leg.srtp.profile, leg.srtp.epoch + 1))


async def serve(cfg: dict[str, Any]) -> None:
    table = FlowTable(host="127.0.0.1", port_range=PORT_RANGE, engine=cfg.get("engine", "auto"))
    ingress = []
    for i, legs in enumerate(cfg["flows"]):
        flow = await table.add_flow(f"bench/{i}", clock_rate=90000, labels={"stream": f"bench{i}"})
        flow.set_source("127.0.0.1")   # the test's sources all send from this host
        for j, port in enumerate(legs):
            # "srtp": every leg protects with its own key, as a leg to another node's proxy does.
            key = new_key(cfg.get("srtp_profile", PROFILE), 1) if cfg.get("srtp") else None
            flow.set_leg(Leg(f"v{j}", ("127.0.0.1", int(port)), ("127.0.0.1", int(port) + 1), enabled=True,
                             srtp=key))
        ingress.append(flow.ingress[1])
    tasks = []
    if cfg.get("churn"):
        tasks.append(asyncio.create_task(churn(table, int(cfg["churn"]))))
    print(json.dumps({"ingress": ingress, "engine": table.engine, "features": sorted(table.engine_features)}),
          flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            if line == "stats":
                if cfg.get("srtp"):
                    rekey(table)
                table.tick()
                print(json.dumps(totals(table)), flush=True)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        table.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.forwarder CONFIG_JSON", file=sys.stderr)
        return 2
    asyncio.run(serve(json.loads(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
