"""SMPTE 2022-1 FEC cost per packet: msm's C codecs vs GStreamer's rtpst2022-1-fecenc/fecdec.

Both sides get the same packets: N media packets of 12 + 1316 bytes (seven MPEG-TS packets,
SSRC 0 as GStreamer's encoder wants), an L x D matrix (10 x 10 by default, 20% overhead), and
for the decoders the media with ``--loss`` of it dropped (every k-th packet, deterministic) plus
the FEC packets msm's encoder made (GStreamer's are the same bytes but for column packets' RTP
timestamps, tests/e2e/test_fec_gst.py).

* msm: the C calls on batches of 64 packets as an engine's receive loop holds them (one buffer, a
  fixed stride; the decoder's recovered packets taken after each batch), timed by this process's
  CPU clock (one Python call a batch included); the best of ``--repeat`` runs. Also, for scale, the same C through one
  Python call per packet (what the Python engine would pay) and the pure-Python twin.
* GStreamer: ``gst-launch-1.0`` reading the packets from a file (RFC 4571 framing, rtpstreamdepay)
  into fakesinks, with the element and without it; the element's cost is the difference of the
  two runs' CPU (user + system of the child), over the media packets; the best of ``--repeat``.

    .venv/bin/python -m msm_bench.fec_bench [--packets 40000] [--columns 10 --rows 10] [--loss 0.05] [--json]

``--veth`` (root, iproute2, nftables) measures residual loss instead: two network namespaces joined
by a veth pair, nftables in the receiver's dropping ``--veth-loss`` percent of the UDP packets it
gets (media and FEC alike: ``meta l4proto udp numgen random mod 100 < P drop``), msm's encoder
sending media to port P and FEC to P + 2 / P + 4 at ``--rate`` packets/s, msm's decoder receiving.

    .venv/bin/python -m msm_bench.fec_bench --veth [--veth-loss 1,5,10] [--packets 40000] [--rate 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAYLOAD = 1316
CAPS = "application/x-rtp-stream,media=video,clock-rate=90000,encoding-name=MP2T,payload=33"
FEC_CAPS = "application/x-rtp-stream,media=application,clock-rate=90000,encoding-name=parityfec,payload=96"


def media_packets(count: int) -> list[bytes]:
    body = bytes(range(256)) * (PAYLOAD // 256 + 1)
    return [struct.pack("!BBHII", 0x80, 33, i & 0xFFFF, i * 3003 & 0xFFFFFFFF, 0) + body[i % 256:i % 256 + PAYLOAD]
            for i in range(count)]


def _cpu_ns(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time_ns()
        fn()
        best = min(best, time.process_time_ns() - t0)
    return best


def ours(packets: list[bytes], columns: int, rows: int, loss: float, repeat: int) -> dict[str, Any]:
    from msm.ext import fec  # noqa: PLC0415 - only when the benchmark runs (msm's C module, built)

    batches = [fec.PacketBatch(packets[k:k + 64]) for k in range(0, len(packets), 64)]

    def encode() -> None:
        enc = fec.FecEncoder(columns, rows)
        for batch in batches:
            enc.push_batch(batch)

    enc_c = _cpu_ns(encode, repeat)
    # The FEC packets in send order: right after the media packet that completed them.
    probe = fec.FecEncoder(columns, rows)
    every = round(1 / loss) if loss > 0 else 0
    events: list[tuple[bool, bytes]] = []
    for i, p in enumerate(packets):
        made = probe.push(p)
        if not every or i % every != every // 2:
            events.append((False, p))
        events += [(True, f) for _, f in made]
    lossy = [p for f, p in events if not f]
    chunks = [fec.PacketBatch([p for _, p in events[k:k + 64]], stride=PAYLOAD + 12 + 16,
                              is_fec=[f for f, _ in events[k:k + 64]]) for k in range(0, len(events), 64)]

    def decode() -> dict[str, int]:
        dec = fec.FecDecoder(columns, rows)
        for chunk in chunks:
            dec.push_batch(chunk)
            dec.recovered()
        return dec.stats()

    dec_c = _cpu_ns(decode, repeat)
    stats = decode()
    per_call = _cpu_ns(lambda: [enc1.push(p) for enc1 in [fec.FecEncoder(columns, rows)] for p in packets], 1)
    from msm.rtp_proxy.repair import fec as py_fec  # noqa: PLC0415

    few = packets[:max(1, len(packets) // 20)]
    py_enc = _cpu_ns(lambda: [e.push(p) for e in [py_fec.FecEncoder(columns, rows)] for p in few], 1)
    n = len(packets)
    return {"enc_ns": enc_c / n, "dec_ns": dec_c / n, "enc_per_call_ns": per_call / n, "py_enc_ns": py_enc / len(few),
            "fec_packets": len(events) - len(lossy), "media_sent_to_decoder": len(lossy), "decoder": stats,
            "events": events}


def _framed(packets: list[bytes], path: Path) -> None:
    path.write_bytes(b"".join(struct.pack("!H", len(p)) + p for p in packets))


def _child_cpu(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}...: {proc.stderr.decode(errors='replace')[-500:]}")
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e9


def _src(path: Path, caps: str) -> str:
    return f"filesrc location={path} blocksize=65536 ! {caps} ! rtpstreamdepay"


def gstreamer(packets: list[bytes], events: list[tuple[bool, bytes]], columns: int, rows: int,
              repeat: int) -> dict[str, float]:
    launch = shutil.which("gst-launch-1.0")
    if launch is None:
        raise RuntimeError("gst-launch-1.0 not found (apt-get install gstreamer1.0-tools)")
    with tempfile.TemporaryDirectory(prefix="fec-bench-") as tmp:
        d = Path(tmp)
        _framed(packets, d / "media.bin")
        _framed([p for f, p in events if not f], d / "lossy.bin")
        _framed([p for f, p in events if f and p[24] & 0x40 == 0], d / "col.bin")
        _framed([p for f, p in events if f and p[24] & 0x40], d / "row.bin")
        enc_el = f"rtpst2022-1-fecenc name=e columns={columns} rows={rows}"
        runs = {
            "enc_base": f"{_src(d / 'media.bin', CAPS)} ! fakesink",
            "enc": f"{_src(d / 'media.bin', CAPS)} ! {enc_el} ! fakesink e.fec_0 ! fakesink async=false "
                   "e.fec_1 ! fakesink async=false",
            "dec_base": f"{_src(d / 'lossy.bin', CAPS)} ! fakesink {_src(d / 'col.bin', FEC_CAPS)} ! fakesink "
                        f"{_src(d / 'row.bin', FEC_CAPS)} ! fakesink",
            "dec": f"rtpst2022-1-fecdec name=d ! fakesink {_src(d / 'lossy.bin', CAPS)} ! d.sink "
                   f"{_src(d / 'col.bin', FEC_CAPS)} ! d.fec_0 {_src(d / 'row.bin', FEC_CAPS)} ! d.fec_1",
        }
        # Interleaved (base, with, base, with...) and the best of each: the machine's load moves slower
        # than one run, so each pair sees about the same.
        cpu = dict.fromkeys(runs, float("inf"))
        for _ in range(repeat):
            for name, pipe in runs.items():
                cpu[name] = min(cpu[name], _child_cpu([launch, "-q", *pipe.split()]))
    n = len(packets)
    return {"enc_ns": (cpu["enc"] - cpu["enc_base"]) / n, "dec_ns": (cpu["dec"] - cpu["dec_base"]) / n,
            "enc_pipeline_ns": cpu["enc"] / n, "dec_pipeline_ns": cpu["dec"] / n}


RECEIVER = """
import json, select, socket, struct, sys, time
from msm.rtp_proxy import repair
host, port, columns, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
SO_TIMESTAMPNS = 35
socks = []
for k in (0, 2, 4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)   # SO_RCVBUFFORCE (root): a loaded machine must not add loss
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((host, port + k))
    s.setblocking(False)
    socks.append(s)
dec = repair.fec_decoder(columns, rows)
print("ready", flush=True)
arrived, recovered, last, carry = set(), set(), None, []
while last is None or time.monotonic() - last < 1.0:
    # What the three sockets hold, in the order the kernel received it (its timestamps), up to the
    # first moment every socket had been read to: a loaded machine must not reorder the streams past
    # the decoder's window by reading one socket before the others.
    got, ends = list(carry), []
    ready = select.select(socks, [], [], 0.2)[0]
    for k in range(3) if ready else ():
        while True:
            try:
                pkt, anc, _, _ = socks[k].recvmsg(2048, socket.CMSG_SPACE(16))
            except BlockingIOError:
                break
            sec, nsec = struct.unpack("qq", anc[0][2][:16]) if anc else (0, 0)
            got.append((sec * 10**9 + nsec, k, pkt))
        ends.append(time.time_ns())
    if len(got) > len(carry):
        last = time.monotonic()
    cutoff = min(ends) if ends else float("inf")
    got.sort(key=lambda g: g[0])
    carry = [g for g in got if g[0] > cutoff]
    for _, k, pkt in (g for g in got if g[0] <= cutoff):
        if k == 0:
            if dec.media(pkt) in (0, 1):
                arrived.add(pkt[2:4])
        else:
            dec.fec(pkt)
        recovered |= {p[2:4] for p in dec.recovered()}
print(json.dumps({"arrived": len(arrived), "delivered": len(arrived | recovered), "stats": dec.stats()}), flush=True)
"""

SENDER = """
import socket, struct, sys, time
from msm.rtp_proxy import repair
dst, port, columns, rows, count, rate = sys.argv[1], *(int(a) for a in sys.argv[2:7])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
enc = repair.fec_encoder(columns, rows)
body = bytes(range(256)) * 6
s.sendto(b"arp", (dst, port + 6))       # resolve the neighbour before the stream starts
time.sleep(0.1)
start = time.monotonic()
for i in range(count):
    p = struct.pack("!BBHII", 0x80, 33, i & 0xFFFF, i * 3003 & 0xFFFFFFFF, 0) + body[:1316]
    s.sendto(p, (dst, port))
    for kind, f in enc.push(p):
        s.sendto(f, (dst, port + (2 if kind == 0 else 4)))
    if i % 32 == 31 and (ahead := start + (i + 1) / rate - time.monotonic()) > 0:
        time.sleep(ahead)
"""


def _sh(*argv: str, stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def veth(losses: list[int], count: int, rate: int, columns: int, rows: int) -> list[dict[str, Any]]:
    """Residual loss through nftables-dropped veth between two namespaces, per loss percentage."""
    tag = os.getpid() % 100000
    ns_a, ns_b, net = f"msmfecA-{tag}", f"msmfecB-{tag}", f"10.254.{tag % 250}"
    results = []
    try:
        _sh("ip", "netns", "add", ns_a)
        _sh("ip", "netns", "add", ns_b)
        _sh("ip", "-n", ns_a, "link", "add", f"fa{tag}", "type", "veth", "peer", "name", f"fb{tag}", "netns", ns_b)
        for ns, dev, addr in ((ns_a, f"fa{tag}", f"{net}.1/30"), (ns_b, f"fb{tag}", f"{net}.2/30")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        for loss in losses:
            _sh("ip", "netns", "exec", ns_b, "nft", "-f", "-", stdin=(
                "flush ruleset\ntable inet msmfec {\n chain input {\n  type filter hook input priority 0;\n"
                f"  meta l4proto udp numgen random mod 100 < {loss} drop\n }}\n}}\n"))
            results.append(_veth_run(ns_a, ns_b, f"{net}.2", loss, count, rate, columns, rows))
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    return results


def _veth_run(ns_a: str, ns_b: str, dst: str, loss: int, count: int, rate: int, columns: int,
              rows: int) -> dict[str, Any]:
    py = sys.executable
    rx = subprocess.Popen(["ip", "netns", "exec", ns_b, py, "-c", RECEIVER, dst, "5004", str(columns), str(rows)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        _sh("ip", "netns", "exec", ns_a, py, "-c", SENDER, dst, "5004", str(columns), str(rows), str(count),
            str(rate))
        out, _ = rx.communicate(timeout=60)
    finally:
        rx.kill()
    got = json.loads(out.strip().splitlines()[-1])
    return {"nft_loss_percent": loss, "media_loss": 1 - got["arrived"] / count,
            "residual_loss": 1 - got["delivered"] / count, "decoder": got["stats"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=40000)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--loss", type=float, default=0.05, help="media dropped before the decoders (0..0.5)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--veth", action="store_true", help="residual loss through nftables on a veth (root)")
    parser.add_argument("--veth-loss", default="1,5,10", help="percentages nftables drops, comma-separated")
    parser.add_argument("--rate", type=int, default=10000, help="media packets/s with --veth")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.veth:
        if args.packets > 65536:
            parser.error("--veth counts packets by sequence number: --packets 65536 at most")
        rows = veth([int(x) for x in args.veth_loss.split(",")], args.packets, args.rate, args.columns, args.rows)
        if args.json:
            print(json.dumps({"veth": rows, "load": (load_before, os.getloadavg()[0])}))
            return 0
        print(f"SMPTE 2022-1 FEC {args.columns}x{args.rows} over a veth, nftables dropping UDP, {args.packets} "
              f"packets at {args.rate}/s (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
        for r in rows:
            print(f"  nftables {r['nft_loss_percent']:>2}%: media lost {r['media_loss']:.3%}, after FEC "
                  f"{r['residual_loss']:.3%} ({r['decoder']['recovered']} recovered, "
                  f"{r['decoder']['unrecoverable']} unrecoverable, {r['decoder']['fec_late']} FEC packets too late)")
        return 0
    packets = media_packets(args.packets)
    mine = ours(packets, args.columns, args.rows, min(max(args.loss, 0.0), 0.5), args.repeat)
    theirs = gstreamer(packets, mine.pop("events"), args.columns, args.rows, args.repeat)
    ratios = {"enc": theirs["enc_ns"] / mine["enc_ns"], "dec": theirs["dec_ns"] / mine["dec_ns"]}
    load = (load_before, os.getloadavg()[0])
    if args.json:
        print(json.dumps({"msm": mine, "gstreamer": theirs, "gstreamer_over_msm": ratios, "load": load}))
        return 0
    print(f"SMPTE 2022-1 FEC {args.columns}x{args.rows}, {args.packets} packets of {PAYLOAD + 12} bytes, "
          f"{args.loss:.0%} media loss before the decoders (load average {load[0]:.1f} -> {load[1]:.1f})")
    print(f"  encoder  msm C {mine['enc_ns']:8.0f} ns/packet   GStreamer {theirs['enc_ns']:8.0f} ns/packet   "
          f"GStreamer/msm {ratios['enc']:.1f}")
    print(f"  decoder  msm C {mine['dec_ns']:8.0f} ns/packet   GStreamer {theirs['dec_ns']:8.0f} ns/packet   "
          f"GStreamer/msm {ratios['dec']:.1f}")
    print(f"  msm decoder: {mine['decoder']['recovered']} recovered, {mine['decoder']['unrecoverable']} unrecoverable "
          f"of {args.packets - mine['media_sent_to_decoder']} dropped")
    print(f"  for scale: msm C through one Python call a packet {mine['enc_per_call_ns']:.0f} ns/packet (encoder), "
          f"the pure-Python twin {mine['py_enc_ns']:.0f} ns/packet; GStreamer's whole pipelines "
          f"{theirs['enc_pipeline_ns']:.0f} / {theirs['dec_pipeline_ns']:.0f} ns/packet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
