"""libfabric frame link vs ``fi_pingpong``, same provider, same message size, in one run.

``python -m msm_bench.fabric_bench [--provider 'tcp;ofi_rxm'|shm]``

Both sides are measured the same way: two processes on this host, ping-pong
of one message of one 1080p 10-bit frame (1920 x 1080 x 2.5 bytes) at a time,
``--iters`` round trips after a warm-up. Throughput is counted as
``fi_pingpong`` counts it: bytes moved in both directions over the elapsed
time; ``usec/xfer`` is the time of one one-way transfer. Ours is
:class:`msm.rtp_proxy.media.fabric_link.FabricEndpoint` with its header,
credits and zero-copy receive views, driven from Python with busy polling
(``fi_pingpong`` busy-polls too). A second phase streams frames one way as
fast as the credits allow (no comparison: ``fi_pingpong`` has no such mode).
CPU per frame is both processes' CPU time over the frames moved.

Both tools busy-poll, so on a shared 2-core host a run where the scheduler puts
both sides on one CPU is several times slower than one where they run side by
side. ``--cpus A,B`` (default ``0,1`` on hosts with two CPUs or more; ``""``
for none) pins the two sides of BOTH tools to those CPUs, which takes that
coin-toss out of the ratio; rounds alternate the tools and the report gives the
median of the back-to-back pair ratios next to best against best, and the load.

The child side of ours is this module with ``--echo`` (address exchange over
its stdin/stdout, hex encoded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from msm.ext import fabric
from msm.rtp_proxy.media.fabric_link import FabricEndpoint, FrameHeader

FRAME_1080P_10BIT = 1920 * 1080 * 5 // 2   # 4:2:2 10-bit: 2.5 bytes per pixel
PINGPONG, STREAM, STOP = 1, 2, 3           # frame groups: echo it, just take it, quit
WARMUP = 5
CHILD_TIMEOUT = 60.0


def _cpu_seconds(pid: int) -> float:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def _payload(size: int) -> mmap.mmap:
    """A page-aligned frame (as a capture or decoder buffer would be; fi_pingpong's are too)."""
    buf = mmap.mmap(-1, size)
    buf.write((os.urandom(64) * (size // 64 + 1))[:size])
    return buf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- fi_pingpong

def _pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def run_fi_pingpong(provider: str, size: int, iters: int, cpus: tuple[int, int] | None = None) -> dict[str, Any]:
    """One ``fi_pingpong`` run (the PEERS.md recipe); its own numbers and both processes' CPU."""
    mine, theirs = cpus if cpus is not None else (None, None)
    for _attempt in range(3):
        port = _free_port()
        base = ["fi_pingpong", "-p", provider, "-e", "rdm", "-S", str(size), "-I", str(iters)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = subprocess.Popen(_pinned(theirs, [*base, "-B", str(port)]), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        client = subprocess.run(_pinned(mine, [*base, "-P", str(port), "127.0.0.1"]), capture_output=True, text=True,
                                timeout=120)
        server.wait(timeout=30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = _parse_pingpong(client.stdout)
        if row is not None:
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            row["cpu_ms_per_frame"] = cpu * 1000 / (2 * iters)   # its whole run, start-up included
            return row
    raise RuntimeError(f"fi_pingpong gave no result: {client.stdout[-400:]} {client.stderr[-400:]}")


def _parse_pingpong(out: str) -> dict[str, Any] | None:
    # bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec
    for line in reversed(out.splitlines()):
        fields = line.split()
        if len(fields) == 8 and re.fullmatch(r"[\d.]+[kmg]?", fields[0]) and fields[1].isdigit():
            mbps, usec = float(fields[5]), float(fields[6])
            return {"mb_per_s": mbps, "usec_per_xfer": usec, "frames_per_s": 1e6 / usec,
                    "gbit_per_s": mbps * 8 / 1000}
    return None


# ----------------------------------------------------------------------------- ours

def _endpoint(provider: str, size: int, credits: int) -> FabricEndpoint:
    return FabricEndpoint(provider, "127.0.0.1", 0, max_frame=size, credits=credits, max_peers=1)


def echo(provider: str, size: int, credits: int) -> int:
    """The child: echo PINGPONG frames, take STREAM frames, stop at STOP."""
    payload = _payload(size)
    with _endpoint(provider, size, credits) as ep:
        print(ep.local_address().hex(), flush=True)
        peer = ep.add_peer(bytes.fromhex(sys.stdin.readline().strip()))
        while True:
            for frame in ep.poll(0):
                group, seq = frame.group, frame.seq
                frame.release()
                if group == STOP:
                    print(json.dumps(ep.stats()["peers"][peer]), flush=True)
                    return 0
                if group == PINGPONG:
                    while not ep.send(peer, FrameHeader(PINGPONG, seq, 0), payload):
                        ep.poll(0)


def _wait_credit(ep: FabricEndpoint, peer: int, deadline: float) -> None:
    while ep.stats()["peers"][peer]["credits"] <= 0:
        ep.poll(0.001)
        if time.monotonic() > deadline:
            raise RuntimeError("the echo side granted no credit")


def _pingpong(ep: FabricEndpoint, peer: int, payload: mmap.mmap, iters: int) -> list[float]:
    rtts = []
    for seq in range(WARMUP + iters):
        start = time.perf_counter()
        while not ep.send(peer, FrameHeader(PINGPONG, seq, 0), payload):
            ep.poll(0)
        got = False
        while not got:
            for frame in ep.poll(0):
                got = got or frame.seq == seq
                frame.release()
        if seq >= WARMUP:
            rtts.append(time.perf_counter() - start)
    return rtts


def _stream(ep: FabricEndpoint, peer: int, payload: mmap.mmap, frames: int) -> float:
    start = time.perf_counter()
    sent = 0
    while sent < frames:
        if ep.send(peer, FrameHeader(STREAM, sent, 0), payload):
            sent += 1
        else:
            ep.poll(0)
    while ep.stats()["peers"][peer]["in_flight"] > 0:   # all taken and released by the other side
        ep.poll(0)
    return time.perf_counter() - start


def run_ours(provider: str, size: int, iters: int, credits: int,
             cpus: tuple[int, int] | None = None) -> dict[str, Any]:
    mine, theirs = cpus if cpus is not None else (None, None)
    child = subprocess.Popen(_pinned(theirs, [sys.executable, "-m", "msm_bench.fabric_bench", "--echo", "--provider",
                                              provider, "--size", str(size), "--credits", str(credits)]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    payload = _payload(size)
    affinity = os.sched_getaffinity(0)
    if mine is not None:
        os.sched_setaffinity(0, {mine})
    try:
        with _endpoint(provider, size, credits) as ep:
            peer = ep.add_peer(bytes.fromhex(child.stdout.readline().strip()))
            child.stdin.write(ep.local_address().hex() + "\n")
            child.stdin.flush()
            _wait_credit(ep, peer, time.monotonic() + 10)
            cpu0, cpu_child0 = time.process_time(), _cpu_seconds(child.pid)
            rtts = _pingpong(ep, peer, payload, iters)
            cpu1, cpu_child1 = time.process_time(), _cpu_seconds(child.pid)
            stream_s = _stream(ep, peer, payload, iters * 2)
            cpu2, cpu_child2 = time.process_time(), _cpu_seconds(child.pid)
            while not ep.send(peer, FrameHeader(STOP, 0, 0), b""):
                ep.poll(0)
            for _ in range(1000):
                ep.poll(0.001)
                if child.poll() is not None:
                    break
    finally:
        os.sched_setaffinity(0, affinity)
        out, _ = child.communicate(timeout=CHILD_TIMEOUT)
    elapsed = sum(rtts)
    xfer = elapsed / (2 * iters)
    one_way = sorted(r / 2 for r in rtts)
    return {
        "mb_per_s": 2 * iters * size / elapsed / 1e6, "usec_per_xfer": xfer * 1e6, "frames_per_s": 1 / xfer,
        "gbit_per_s": 2 * iters * size * 8 / elapsed / 1e9,
        "cpu_ms_per_frame": ((cpu1 - cpu0) + (cpu_child1 - cpu_child0)) * 1000 / (2 * iters),
        "latency_ms_p50": statistics.median(one_way) * 1000,
        "latency_ms_p99": one_way[min(len(one_way) - 1, int(len(one_way) * 0.99))] * 1000,
        "stream_frames_per_s": iters * 2 / stream_s, "stream_gbit_per_s": iters * 2 * size * 8 / stream_s / 1e9,
        "stream_cpu_ms_per_frame": ((cpu2 - cpu1) + (cpu_child2 - cpu_child1)) * 1000 / (iters * 2),
        "echo_side": json.loads(out.strip().splitlines()[-1]) if out.strip() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msm_bench.fabric_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--provider", default="tcp;ofi_rxm")
    parser.add_argument("--size", type=int, default=FRAME_1080P_10BIT)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--credits", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternate runs of each; the best of each is compared")
    parser.add_argument("--cpus", default="0,1" if (os.cpu_count() or 1) >= 2 else "",
                        help="A,B: pin the two sides of both tools to CPUs A and B ('' for no pinning)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        return echo(args.provider, args.size, args.credits)
    if shutil.which("fi_pingpong") is None:
        print("fi_pingpong not found: apt-get install libfabric-bin", file=sys.stderr)
        return 2
    if reason := fabric.unavailable_reason() or fabric.probe(args.provider):
        print(f"the libfabric link cannot run here: {reason}", file=sys.stderr)
        return 2
    cpus = _parse_cpus(args.cpus)
    load = Path("/proc/loadavg").read_text().split()[:3]
    refs, ours = [], []
    for _ in range(args.rounds):
        refs.append(run_fi_pingpong(args.provider, args.size, args.iters, cpus))
        ours.append(run_ours(args.provider, args.size, args.iters, args.credits, cpus))
    ref = max(refs, key=lambda r: r["mb_per_s"])
    best = max(ours, key=lambda r: r["mb_per_s"])
    report = {"provider": args.provider, "size": args.size, "iters": args.iters, "mode": "ping-pong",
              "cpus": list(cpus) if cpus else None, "load_before": load,
              "load_after": Path("/proc/loadavg").read_text().split()[:3],
              "fi_pingpong": ref, "msm": best, "ratio": best["mb_per_s"] / ref["mb_per_s"],
              # Each run of ours against the fi_pingpong run just before it: load drifts less within a pair.
              "pair_ratio_median": statistics.median(
                  o["mb_per_s"] / f["mb_per_s"] for f, o in zip(refs, ours, strict=True)),
              "all_fi_pingpong": refs, "all_msm": ours}
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _parse_cpus(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SystemExit(f"--cpus wants A,B (two CPU numbers), not {text!r}")
    return int(parts[0]), int(parts[1])


def _print(r: dict[str, Any]) -> None:
    print(f"provider {r['provider']}, {r['size']} bytes per message, ping-pong, {r['iters']} round trips, "
          f"CPUs {r['cpus'] or 'not pinned'}, load {' '.join(r['load_before'])} -> {' '.join(r['load_after'])}")
    print(f"{'':12} {'MB/s':>8} {'Gbit/s':>7} {'frames/s':>9} {'us/xfer':>8} {'CPU ms/frame':>12}")
    for name in ("fi_pingpong", "msm"):
        x = r[name]
        print(f"{name:12} {x['mb_per_s']:8.0f} {x['gbit_per_s']:7.2f} {x['frames_per_s']:9.1f} "
              f"{x['usec_per_xfer']:8.0f} {x['cpu_ms_per_frame']:12.2f}")
    m = r["msm"]
    print("(fi_pingpong's CPU is its whole run, start-up included; ours is the timed loop only)")
    print(f"msm one-way latency p50 {m['latency_ms_p50']:.2f} ms, p99 {m['latency_ms_p99']:.2f} ms")
    print(f"msm streaming one way: {m['stream_frames_per_s']:.1f} frames/s, {m['stream_gbit_per_s']:.2f} Gbit/s, "
          f"{m['stream_cpu_ms_per_frame']:.2f} CPU ms/frame")
    print(f"ratio msm / fi_pingpong throughput: {r['ratio']:.2f} best against best, "
          f"{r['pair_ratio_median']:.2f} median of {len(r['all_msm'])} back-to-back pairs")


if __name__ == "__main__":
    sys.exit(main())
