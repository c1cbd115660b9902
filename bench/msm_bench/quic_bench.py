"""RTP over QUIC between nodes (msm.rtp_proxy.quic) against plain UDP: packets/s and CPU per packet.

One run, three paths for the same paced RTP stream (``--size`` bytes a packet, each ``--rates``
step held ``--seconds``), sender and receiver in this process (the receiver on a thread):

* ``direct``: UDP straight from the sender to the receiver (no relay: the kernel's share only);
* ``udp``: two relay ends in a child process, UDP in, plain UDP between the ends, UDP out (what a
  node-to-node leg through a user-space hop costs without QUIC);
* ``quic``: the tunnel pair of msm.rtp_proxy.quic in a child process (mutual TLS with certificates
  of a throw-away mesh CA, one DATAGRAM frame a packet).

Both ends of a relay run in ONE child (one event loop, one core at most); its CPU (user + system,
from the moment both ends are up) over the packets it delivered is the relay's cost per packet.
Loss counts packets that never arrived (the driver waits until nothing has come for 0.5 s: a
starved relay delivers its backlog late, and late is not lost); ``late s`` is how long after the
last send the last packet came, ``delivered/s`` the packets over the time until then.
The machine is shared: compare the modes of one run, and mind the load printed with them.

    .venv/bin/python -m msm_bench.quic_bench [--rates 1000,2000,5000,10000] [--seconds 2] [--size 1200] [--json]

``--loss P`` (root, unshare, nftables) re-runs the bench in a network namespace of its own whose
loopback drops P% of the UDP packets sent to the far relay end (plain UDP) or the QUIC server, at
random; ``congested`` is what the QUIC sender dropped because the congestion window was full.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
BUFFER = 4 * 1024 * 1024   # kernel receive buffer of the bench's own sockets (bursts of the pacing)
TICK = 0.001               # the sender sends rate * TICK packets at once, every TICK seconds


class Receiver(threading.Thread):
    """Counts RTP packets on a UDP socket, and those whose sequence number is not the next."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.count = 0
        self.out_of_order = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        expected = -1
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            seq = struct.unpack_from("!H", data, 2)[0]
            if expected >= 0 and seq != expected:
                self.out_of_order += 1
            expected = (seq + 1) & 0xFFFF
            self.count += 1


def send(sock: socket.socket, port: int, rate: int, seconds: float, size: int, first: int) -> int:
    """Paced RTP to ``port``; how many packets were sent."""
    burst = max(1, round(rate * TICK))
    packets = round(rate * seconds)
    payload = bytes(size - 12)
    start = time.monotonic()
    sent = 0
    while sent < packets:
        for _ in range(min(burst, packets - sent)):
            seq = (first + sent) & 0xFFFF
            sock.sendto(struct.pack("!BBHII", 0x80, 96, seq, seq * 90, 0x1234) + payload, (LOOPBACK, port))
            sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return sent


# -- the relay child ----------------------------------------------------------------------------------------
class _Relay(asyncio.DatagramProtocol):
    def __init__(self, to: tuple[str, int]) -> None:
        self.to = to
        self.transport: asyncio.DatagramTransport | None = None
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.to)
        self.count += 1


async def _udp_relay(dest: int, hop: int) -> tuple[int, Any]:
    loop = asyncio.get_running_loop()
    _, far = await loop.create_datagram_endpoint(lambda: _Relay((LOOPBACK, dest)), local_addr=(LOOPBACK, hop))
    assert far.transport is not None
    far_port = far.transport.get_extra_info("sockname")[1]
    _, near = await loop.create_datagram_endpoint(lambda: _Relay((LOOPBACK, far_port)), local_addr=(LOOPBACK, 0))
    assert near.transport is not None
    return int(near.transport.get_extra_info("sockname")[1]), lambda: {"relayed": far.count}


async def _quic_relay(dest: int, source: int, hop: int) -> tuple[int, Any]:
    from msm.rtp_proxy.quic import QuicLegReceiver, QuicLegSender
    from msm.security.ca import CertificateAuthority
    from msm.security.identity import Role
    from msm.security.local import TRUST_DOMAIN, local_identity
    from msm.security.tls import TlsFiles

    root = Path(tempfile.mkdtemp(prefix="msm-quic-bench-"))
    ca = CertificateAuthority.create(root / "ca", TRUST_DOMAIN)

    def files(node: str) -> TlsFiles:
        issued = ca.issue(local_identity(Role.PROXY, node))
        tls = TlsFiles(root / node)
        tls.write(ca_pem=ca.trust_bundle_pem, chain_pem=issued.chain_pem, key_pem=issued.key_pem)
        return tls

    receiver = QuicLegReceiver(files("n2"), (LOOPBACK, hop), (LOOPBACK, dest), (LOOPBACK, dest + 1))
    await receiver.start()
    sender = QuicLegSender(files("n1"), (LOOPBACK, receiver.port), "n2", [(LOOPBACK, source)])
    await sender.start()
    await asyncio.wait_for(sender.connected.wait(), 10)
    return sender.rtp_port, lambda: {"sender": sender.counters.as_dict(), "receiver": receiver.counters.as_dict()}


async def _child(mode: str, dest: int, source: int, hop: int) -> None:
    port, counters = await (_quic_relay(dest, source, hop) if mode == "quic" else _udp_relay(dest, hop))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu = time.process_time()
    print(json.dumps({"port": port}), flush=True)
    while await reader.readline():
        print(json.dumps({"cpu": time.process_time() - cpu, "counters": counters()}), flush=True)
        cpu = time.process_time()


# -- the driver ---------------------------------------------------------------------------------------------
NETNS_ENV = "MSM_QUIC_BENCH_NETNS"   # set in the re-run inside a network namespace of its own
HOP_PORT = 47000                     # the far relay end's port there, where nftables drops


def lossy_loopback(percent: int) -> None:
    """Bring up this (private) namespace's loopback and drop ``percent`` of UDP to HOP_PORT."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rules = (f"add table inet quicbench\n"
             f"add chain inet quicbench in {{ type filter hook input priority 0; }}\n"
             f"add rule inet quicbench in udp dport {HOP_PORT} numgen random mod 100 < {percent} drop\n")
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def drain(receiver: Receiver, quiet: float = 0.5, limit: float = 10.0) -> float:
    """Wait until nothing more arrives for ``quiet`` seconds (a starved relay delivers its
    backlog late; late is not lost); when the last packet came (monotonic clock)."""
    last_count, last_at = receiver.count, time.monotonic()
    end = last_at + limit
    while time.monotonic() < end and time.monotonic() - last_at < quiet:
        time.sleep(0.05)
        if receiver.count != last_count:
            last_count, last_at = receiver.count, time.monotonic()
    return last_at


def _ask(child: subprocess.Popen[str]) -> dict[str, Any]:
    """The relay child's CPU time and counters since the last question."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n")
    child.stdin.flush()
    answer: dict[str, Any] = json.loads(child.stdout.readline())
    return answer


def run_mode(mode: str, rates: list[int], seconds: float, size: int, hop: int = 0) -> list[dict[str, Any]]:
    receiver = Receiver()
    receiver.start()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind((LOOPBACK, 0))
    child = None
    port = receiver.port
    if mode != "direct":
        child = subprocess.Popen([sys.executable, "-m", "msm_bench.quic_bench", "--child", mode, str(receiver.port),
                                  str(out.getsockname()[1]), str(hop)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        port = json.loads(child.stdout.readline())["port"]
    rows = []
    first = 0
    try:
        for rate in rates:
            before = receiver.count
            if child is not None:
                _ask(child)   # restarts the child's CPU clock
            t0 = time.monotonic()
            sent = send(out, port, rate, seconds, size, first)
            elapsed = time.monotonic() - t0
            drained = drain(receiver) - t0
            first += sent
            got = receiver.count - before
            row: dict[str, Any] = {"mode": mode, "offered_pps": rate, "sent": sent, "received": got,
                                   "delivered_pps": round(got / max(elapsed, drained)),
                                   "late_s": round(max(0.0, drained - elapsed), 2),
                                   "loss_pct": round(100 * (sent - got) / sent, 3)}
            if child is not None:
                report = _ask(child)
                row["relay_cpu_us_per_packet"] = round(1e6 * report["cpu"] / max(got, 1), 1)
                row["relay_cpu_pct"] = round(100 * report["cpu"] / (time.monotonic() - t0), 1)
                row["relay_counters"] = report["counters"]
                row["congested"] = report["counters"].get("sender", {}).get("congested", "-")
            rows.append(row)
    finally:
        receiver.stopping.set()
        out.close()
        if child is not None:
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(10)
    rows[-1]["out_of_order"] = receiver.out_of_order
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msm_bench.quic_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,2000,5000,10000", help="offered packets/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long each rate is held")
    parser.add_argument("--size", type=int, default=1200, help="RTP packet size in bytes (header included)")
    parser.add_argument("--modes", default="direct,udp,quic")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--loss", type=int, default=0,
                        help="percent of the packets between the two relay ends dropped at random (root: runs in a "
                             "network namespace of its own, nftables on its loopback; direct is not affected)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "DEST", "SOURCE", "HOP"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        asyncio.run(_child(opts.child[0], int(opts.child[1]), int(opts.child[2]), int(opts.child[3])))
        return 0
    if opts.loss and not os.environ.get(NETNS_ENV):
        return subprocess.call(["unshare", "--net", "--", sys.executable, "-m", "msm_bench.quic_bench",
                                *(sys.argv[1:] if argv is None else argv)], env={**os.environ, NETNS_ENV: "1"})
    hop = HOP_PORT if opts.loss else 0
    if opts.loss:
        lossy_loopback(opts.loss)
    rates = [int(r) for r in opts.rates.split(",")]
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows = [row for mode in opts.modes.split(",") for row in run_mode(mode, rates, opts.seconds, opts.size, hop)]
    if opts.json:
        print(json.dumps({"load": load, "size": opts.size, "rows": rows}, indent=1))
        return 0
    print(f"RTP {opts.size} B/packet, {opts.seconds:g} s per rate, {opts.loss}% loss between the ends; "
          f"load before: {' '.join(load)}; "
          f"after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"{'mode':6} {'offered/s':>10} {'delivered/s':>12} {'loss %':>8} {'late s':>7} {'relay CPU us/pkt':>17} "
          f"{'relay CPU %':>12} {'congested':>10}")
    for r in rows:
        print(f"{r['mode']:6} {r['offered_pps']:>10} {r['delivered_pps']:>12} {r['loss_pct']:>8} {r['late_s']:>7} "
              f"{r.get('relay_cpu_us_per_packet', '-'):>17} {r.get('relay_cpu_pct', '-'):>12} "
              f"{r.get('congested', '-'):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
