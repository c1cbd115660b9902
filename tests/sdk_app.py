"""An app that uses msm.sdk.mesh, for the SDK's end-to-end tests and its benchmark (one process per app).

    python tests/sdk_app.py send --urn U --frames N [--fps F]
    python tests/sdk_app.py recv --urn U --frames N [--stall-after K] [--timeout S]
    python tests/sdk_app.py hold --urn U --direction tx|rx      (creates, says "ready", waits to be killed)
    python tests/sdk_app.py create --direction tx --config JSON   (one create; its error on stderr)
    python tests/sdk_app.py node --node NAME --media-dir DIR [--provider shm]  (a node's media side, see node())

Frames are checkable byte for byte: frame i's payload is a fixed pseudo-random
picture with i written at both ends and a 4 KiB block that depends on i, its
metadata is derived from i (its length too) and its timestamp is i * 1501.
The result is one JSON line on stdout; an MsmError is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import mmap
import os
import random
import sys
import time
from typing import Any

from msm.sdk import mesh
from msm.sdk.errors import MsmError

WIDTH, HEIGHT = 1920, 1080


def config(urn: str, *, metadata: int = 256, capacity: int = 32, st2110: int = 0) -> dict[str, Any]:
    """1080p 10-bit (RFC 4175 pixel groups: 5,184,000 bytes a frame) in a multipoint group, or as
    ST 2110-20 to/from 127.0.0.1:``st2110``."""
    connection: dict[str, Any] = {"multipointGroup": {"urn": urn}}
    if st2110:
        connection = {"st2110": {"transport": "st2110-20", "ipAddr": "127.0.0.1", "port": st2110,
                                 "transportPixelFormat": "yuv422p10rfc4175"}}
    return {"bufferQueueCapacity": capacity, "maxMetadataSize": metadata, "connection": connection,
            "payload": {"video": {"width": WIDTH, "height": HEIGHT, "fps": 30.0, "pixelFormat": "yuv422p10rfc4175"}}}


_PICTURE: bytes | None = None


def picture(size: int) -> bytes:
    global _PICTURE
    if _PICTURE is None or len(_PICTURE) != size:
        _PICTURE = random.Random(2110).randbytes(size)
    return _PICTURE


def fill(view: memoryview, i: int) -> None:
    """Frame ``i`` written in place into ``view``."""
    size = len(view)
    view[:] = picture(size)
    stamp = i.to_bytes(8, "little")
    view[:8] = stamp
    view[size - 8:] = stamp
    block = (i * 4096 * 7) % (size - 4096 - 16) + 8
    view[block:block + 4096] = hashlib.sha256(stamp).digest() * 128


def metadata(i: int) -> bytes:
    return (hashlib.sha256(b"meta" + i.to_bytes(4, "little")).hexdigest() * 4)[: 1 + i % 200].encode()


def check(view: memoryview, i: int) -> bool:
    """Is ``view`` frame ``i``, byte for byte? (Compared in place: compare_digest is one C loop, no copy.)"""
    size = len(view)
    base = memoryview(picture(size))
    stamp = i.to_bytes(8, "little")
    block = (i * 4096 * 7) % (size - 4096 - 16) + 8
    return all(hmac.compare_digest(a, b) for a, b in (
        (view[:8], stamp), (view[size - 8:], stamp), (view[block:block + 4096], hashlib.sha256(stamp).digest() * 128),
        (view[8:block], base[8:block]), (view[block + 4096:size - 8], base[block + 4096:size - 8])))


def send(args: argparse.Namespace) -> dict[str, Any]:
    with mesh.Client(name="sender") as client:
        tx = client.create_tx_connection(config(args.urn, st2110=args.st2110))
        size = tx.layout.payload_size
        period = 1.0 / args.fps if args.fps else 0.0
        start = time.monotonic()
        for i in range(args.frames):
            if period:
                delay = start + i * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            buf = tx.get_buffer(timeout=5.0)
            fill(buf.payload, i)
            buf.payload_len, buf.metadata, buf.timestamp, buf.seq = size, metadata(i), i * 1501, i
            tx.put_buffer(buf)
        time.sleep(0.5)  # the proxy reads the last frames before the connection goes
        stats = client.list_connections()
    return {"sent": args.frames, "proxy": stats}


def recv(args: argparse.Namespace) -> dict[str, Any]:
    with mesh.Client(name="receiver") as client:
        rx = client.create_rx_connection(config(args.urn, st2110=args.st2110))
        print("ready", flush=True)
        got, bad, seqs, incomplete = 0, [], [], []
        size = rx.layout.payload_size
        try:
            while got < args.frames:
                if args.stall_after is not None and got >= args.stall_after:
                    time.sleep(args.timeout)  # stops reading: the proxy must drop for us alone
                    break
                buf = rx.get_buffer(timeout=args.timeout)
                i = int.from_bytes(buf.payload[:8], "little")  # ST 2110 carries no seq or metadata: the stamp
                same = buf.seq == i and buf.metadata == metadata(i) if not args.st2110 else True
                zero_copy = isinstance(buf.payload.obj, mmap.mmap)  # a view of the shared mapping itself
                ok = (buf.payload_len == size and buf.timestamp == i * 1501 and same and zero_copy
                      and check(buf.payload, i))
                if buf.incomplete:  # ST 2110 lost packets on the way: flagged, not passed off as whole
                    incomplete.append(buf.timestamp // 1501)
                elif not ok:
                    bad.append(i)
                seqs.append(i)
                got += 1
                rx.put_buffer(buf)
        except MsmError as exc:
            if not args.stall_after:
                return {"received": got, "bad": bad, "error": exc.reason, "seqs": seqs, "incomplete": incomplete}
        stats = client.list_connections()
    return {"received": got, "bad": bad, "seqs": seqs, "proxy": stats, "incomplete": incomplete}


async def recv_async(args: argparse.Namespace) -> dict[str, Any]:
    client = await mesh.AsyncClient.connect(name="receiver-async")
    async with client:
        rx = await client.create_rx_connection(config(args.urn))
        print("ready", flush=True)
        got, bad, seqs = 0, [], []
        size = rx.layout.payload_size
        try:
            while got < args.frames:
                buf = await rx.get_buffer_async(timeout=args.timeout)
                i = buf.seq
                if not check(buf.payload, i) or buf.metadata != metadata(i) or buf.payload_len != size:
                    bad.append(i)
                seqs.append(i)
                got += 1
                rx.put_buffer(buf)
        except MsmError as exc:
            return {"received": got, "bad": bad, "seqs": seqs, "error": exc.reason}
    return {"received": got, "bad": bad, "seqs": seqs}


def hold(args: argparse.Namespace) -> dict[str, Any]:
    client = mesh.Client(name="holder")
    if args.direction == "tx":
        client.create_tx_connection(config(args.urn))
    else:
        client.create_rx_connection(config(args.urn))
    print("ready", flush=True)
    time.sleep(600)
    return {}


def create(args: argparse.Namespace) -> dict[str, Any]:
    with mesh.Client(name="create") as client:
        conn = (client.create_tx_connection if args.direction == "tx" else client.create_rx_connection)(args.config)
        return {"connection": conn.id}


async def node(args: argparse.Namespace) -> dict[str, Any]:
    """A proxy's media side for one node: this node's groups, a libfabric endpoint and the agent for its apps.

    Prints ``{"proxy": "unix:...", "address": "<hex>"}``, then takes the control plane's link
    programming as JSON lines on stdin (``open_link`` / ``expect``, MediaNode's own calls).
    """
    from msm.rtp_proxy.media.agent import MediaAgent
    from msm.rtp_proxy.media.plane import MediaNode, open_endpoints

    # 8 frames in flight per peer: a 2-core host shared with the apps may hold a reader up for 250 ms
    endpoints = open_endpoints([args.provider], "127.0.0.1", max_frame=8 << 20, credits=8, max_peers=2)
    media = MediaNode(args.node, endpoints=endpoints)
    media.start()
    agent = MediaAgent(args.media_dir, media)
    await agent.start()
    address = endpoints[args.provider].local_address().hex()
    print(json.dumps({"proxy": f"unix:{agent.socket_path}", "address": address}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            if cmd["op"] == "groups":  # what each group's receivers took and dropped
                with media.lock:
                    print(json.dumps({g.urn: {n: [st.frames, dict(st.drops)] for n, st in g.receiver_stats.items()}
                                      for g in media.groups}), flush=True)
                continue
            if cmd["op"] == "can_send":  # every link of the group has its first credit
                print(json.dumps(media.can_send(cmd["urn"])), flush=True)
                continue
            call = media.open_link if cmd["op"] == "open_link" else media.expect
            call(cmd["urn"], cmd["peer"], args.provider, bytes.fromhex(cmd["address"]), cmd["link"])
            print(json.dumps({"ok": True}), flush=True)
    finally:
        await agent.stop()
        await media.stop()
    return {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["send", "recv", "recv-async", "hold", "create", "node"])
    parser.add_argument("--node", default="node-a")
    parser.add_argument("--media-dir", default="")
    parser.add_argument("--provider", default="shm")
    parser.add_argument("--urn", default="urn:msm:test")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=0.0)
    parser.add_argument("--stall-after", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--direction", default="tx")
    parser.add_argument("--config", default="")
    parser.add_argument("--st2110", type=int, default=0, help="ST 2110-20 on 127.0.0.1:PORT instead of a group")
    args = parser.parse_args()
    try:
        if args.role == "recv-async":
            result = asyncio.run(recv_async(args))
        elif args.role == "node":
            result = asyncio.run(node(args))
        else:
            result = {"send": send, "recv": recv, "hold": hold, "create": create}[args.role](args)
    except MsmError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc.reason}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
