"""One libfabric endpoint as a process, driven by JSON lines on stdin (for tests/integration/test_fabric.py).

``python fabric_peer.py PROVIDER ADDRESS MAX_FRAME CREDITS MAX_PEERS`` prints
``{"address": HEX}``, then answers one line per command:

- ``{"add": HEX}`` -> ``{"peer": ID}``
- ``{"send": PEER, "count": N, "size": BYTES, "first": SEQ, "timeout": S}``: frames whose payload is
  :func:`payload` of their sequence number, retried while there is no credit -> ``{"sent": N}``
- ``{"recv": N, "timeout": S, "hold": BOOL}``: up to N frames, each as its header and the SHA-256 of its
  payload; held frames stay unreleased (their credits stay with us) -> ``{"frames": [...]}``
- ``{"tick": S}``: just progresses the endpoint (grants, hellos) for S seconds -> ``{"ticked": S}``
- ``{"release": true}``: releases the held frames -> ``{"released": N}``
- ``{"stats": true}`` -> the endpoint's stats; ``{"quit": true}`` ends.

SIGTERM (handled by Python, installed before libfabric is loaded) prints ``{"signal": 15}`` and goes on,
as a proxy's graceful stop would begin.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from typing import Any

from msm.rtp_proxy.media.fabric_link import FabricEndpoint, FrameHeader, ReceivedFrame


def payload(seq: int, size: int) -> bytes:
    """The test payload of frame ``seq``: a repeated 32-byte digest, so every frame differs everywhere."""
    block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (block * (size // 32 + 1))[:size]


def _send(ep: FabricEndpoint, cmd: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + cmd.get("timeout", 10)
    sent = 0
    for seq in range(cmd["first"], cmd["first"] + cmd["count"]):
        data = payload(seq, cmd["size"])
        while not ep.send(cmd["send"], FrameHeader(5, seq, seq * 1000, f"meta-{seq}".encode()), data):
            if time.monotonic() > deadline:
                return {"sent": sent}
            ep.poll(0.001)
        sent += 1
    while ep.stats()["peers"][cmd["send"]]["tx_pending"] and time.monotonic() < deadline:
        ep.poll(0.001)
    return {"sent": sent}


def _recv(ep: FabricEndpoint, cmd: dict[str, Any], held: list[ReceivedFrame]) -> dict[str, Any]:
    deadline = time.monotonic() + cmd.get("timeout", 10)
    frames: list[dict[str, Any]] = []
    while len(frames) < cmd["recv"] and time.monotonic() < deadline:
        for frame in ep.poll(0.01):
            frames.append({"peer": frame.peer, "group": frame.group, "seq": frame.seq, "ts": frame.timestamp,
                           "meta": bytes(frame.metadata).decode(), "size": frame.payload.nbytes,
                           "sha": hashlib.sha256(frame.payload).hexdigest()})
            if cmd.get("hold"):
                held.append(frame)
            else:
                frame.release()
    return {"frames": frames}


def _on_signal(signum: int, _frame: object) -> None:
    print(json.dumps({"signal": signum}), flush=True)


def main() -> int:
    provider, address, max_frame, credits, max_peers = sys.argv[1:6]
    signal.signal(signal.SIGTERM, _on_signal)
    held: list[ReceivedFrame] = []
    with FabricEndpoint(provider, address if address != "-" else None, 0, max_frame=int(max_frame),
                        credits=int(credits), max_peers=int(max_peers)) as ep:
        print(json.dumps({"address": ep.local_address().hex()}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            if "quit" in cmd:
                break
            if "add" in cmd:
                out: dict[str, Any] = {"peer": ep.add_peer(bytes.fromhex(cmd["add"]))}
            elif "send" in cmd:
                out = _send(ep, cmd)
            elif "recv" in cmd:
                out = _recv(ep, cmd, held)
            elif "tick" in cmd:
                end = time.monotonic() + cmd["tick"]
                while time.monotonic() < end:
                    ep.poll(0.01)
                out = {"ticked": cmd["tick"]}
            elif "release" in cmd:
                out = {"released": len(held)}
                for frame in held:
                    frame.release()
                held.clear()
                ep.poll(0.05)
            else:
                ep.poll(0.01)
                out = ep.stats()
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
