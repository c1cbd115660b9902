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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=40000)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--loss", type=float, default=0.05, help="media dropped before the decoders (0..0.5)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
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
