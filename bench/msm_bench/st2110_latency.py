"""Latency per frame through an ST 2110-20 relay: the last packet sent -> the frame complete at the receiver.

    sender (msm.ext.st2110 Packetizer, a frame in one burst, 30 fps) --> relay --> receiver (st2110 Receiver)

The relays are :mod:`msm_bench.st2110_bench`'s, started by its own code (ours:
the ingress and egress bridges; GStreamer's ``rtpvrawdepay ! rtpvrawpay``).
Sender and receiver are threads of this process on one clock
(``CLOCK_MONOTONIC``): a frame's latency is when the receiver completed it
minus when its last packet left the sender, so it includes what the relay adds
by design (our egress paces a frame over most of the frame period). Frames are
matched by a number the sender writes into the first and last bytes of each
frame's pixels (both relays carry pixels unchanged; RTP timestamps they may
re-base). The first :data:`WARMUP` frames are not counted.

    .venv/bin/python -m msm_bench.st2110_latency [--relay msm|gstreamer] [--frames 90]
"""

from __future__ import annotations

import argparse
import inspect
import json
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from msm.ext import st2110
from msm_bench import st2110_bench

FPS = 30
TICKS = 90_000 // FPS  # RTP timestamp per frame
PT = 96
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
WARMUP = 5  # the first frames (each relay's start-up: buffers, caps) are not counted
MARK = 8  # bytes of the frame number, at the start and the end of each frame's pixels


def _buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    """The socket buffer past the sysctl cap where privileged (the counting receiver's is too)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _receive(sock: socket.socket, w: int, h: int, arrivals: list[tuple[int, int]], stop: threading.Event) -> None:
    """(frame number, completion time) of every frame received complete and intact."""
    rx = st2110.Receiver(sock.fileno(), w, h, 5, 2, PT)
    bufs = [bytearray(w // 2 * 5 * h) for _ in range(2)]  # the next frame goes into the other one
    turn = 0
    while not stop.is_set():
        buf = bufs[turn]
        info = rx.poll(buf, 100)
        if info is None:
            continue
        turn ^= 1
        head, tail = bytes(buf[:MARK]), bytes(buf[-MARK:])
        if info.complete and head == tail:
            arrivals.append((int.from_bytes(head, "little"), time.monotonic_ns()))


def _send(port: int, w: int, h: int, frames: int) -> dict[int, int]:
    """Frames at 30 fps, each in one burst; the time each frame's last packet left, by frame number."""
    pk = st2110.Packetizer(w, h, 5, 2, mtu=1400, bpm=False, payload_type=PT, ssrc=0x2110_0042)
    picture = bytearray((bytes(range(256)) * (pk.frame_bytes // 256 + 1))[:pk.frame_bytes])
    sent: dict[int, int] = {}
    seq = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _buffer(s, SO_SNDBUFFORCE, socket.SO_SNDBUF, 8 << 20)
        s.connect(("127.0.0.1", port))
        start = time.monotonic()
        for k in range(frames):
            time.sleep(max(0.0, start + k / FPS - time.monotonic()))
            picture[:MARK] = picture[-MARK:] = k.to_bytes(MARK, "little")  # the frame's number, in its pixels
            count = pk.packetize(picture, seq, k * TICKS)
            seq += count
            pk.send(s.fileno(), None, 0, count, 0)
            sent[k] = time.monotonic_ns()
    return sent


def _match(sent: dict[int, int], arrivals: list[tuple[int, int]]) -> list[float]:
    """Latency in ms of every frame after the warm-up received complete, matched to its send by the number
    in its pixels."""
    return [(at - sent[k]) / 1e6 for k, at in arrivals if k in sent and k >= WARMUP]


def _start_relay(kind: str, w: int, h: int, port_in: int, port_out: int, pacing: str) -> subprocess.Popen[str]:
    """st2110_bench's relay, with our egress's pacing where its runner takes one."""
    start: Callable[..., subprocess.Popen[str]] = st2110_bench._relay
    extra = [pacing] if "pacing" in inspect.signature(start).parameters else []
    return start(kind, w, h, port_in, port_out, *extra)


def measure(kind: str, frames: int, w: int = 1920, h: int = 1080, pacing: str = "wide") -> dict[str, Any]:
    """One relay: frames sent, matched, latency p50/p99 in ms."""
    rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _buffer(rsock, SO_RCVBUFFORCE, socket.SO_RCVBUF, 64 << 20)
    rsock.bind(("127.0.0.1", 0))
    port_in = st2110_bench._port()
    relay = _start_relay(kind, w, h, port_in, rsock.getsockname()[1], pacing)
    arrivals: list[tuple[int, int]] = []
    stop = threading.Event()
    thread = threading.Thread(target=_receive, args=(rsock, w, h, arrivals, stop), daemon=True)
    try:
        if kind == "msm":
            assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        else:
            time.sleep(1.0)
        thread.start()
        sent = _send(port_in, w, h, frames)
        time.sleep(0.5)
    finally:
        stop.set()
        relay.send_signal(signal.SIGINT)
        try:
            relay.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.communicate()
        thread.join(5)
        rsock.close()
    lat = sorted(_match(sent, arrivals))
    return {"relay": kind, "frames_sent": frames, "warmup": WARMUP, "frames_matched": len(lat),
            "latency_ms_p50": statistics.median(lat) if lat else None,
            "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msm_bench.st2110_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--relay", choices=["msm", "gstreamer"], action="append")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--pacing", default="wide", help="our egress's pacing, where st2110_bench takes one")
    args = parser.parse_args(argv)
    for kind in args.relay or ["msm", "gstreamer"]:
        print(json.dumps(measure(kind, args.frames, pacing=args.pacing)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
