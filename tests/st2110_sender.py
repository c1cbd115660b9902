"""A paced ST 2110-20-shaped sender for the timing tests: ``python -m tests.st2110_sender``.

Frames of ``--packets`` RTP packets (payload type 96, a running sequence number,
the marker on each frame's last packet; the payload is filler: the timing is what
is under test) sent through ``msm.ext.pacer``. Prints one JSON line per second
and a summary (per-frame CPU and lateness) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

from msm.ext.pacer import Pacer


def frame_buffer(packets: int, size: int, seq0: int, ssrc: int = 0x2110, out: bytearray | None = None) -> bytearray:
    """One frame's packets back to back (in ``out`` if given: reused, only the headers rewritten)."""
    out = bytearray(packets * size) if out is None else out
    for i in range(packets):
        marker = 0x80 if i == packets - 1 else 0
        struct.pack_into("!BBHII", out, i * size, 0x80, marker | 96, (seq0 + i) & 0xFFFF, 0, ssrc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--packets", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--rate", default="30")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--mode", default="narrow")
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--tolerance-us", type=float, default=1.0, help="packets due within this go together")
    ap.add_argument("--lead", type=int, help="packets ahead of the read schedule (default: the mode's)")
    ap.add_argument("--gso", action="store_true", help="send each group as one UDP GSO train")
    ap.add_argument("--realtime", action="store_true",
                    help="run as SCHED_FIFO (priority 10) where permitted, as a dedicated ST 2110 sender would")
    opts = ap.parse_args(argv)
    if opts.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except OSError as exc:
            print(json.dumps({"realtime": f"not permitted: {exc.strerror}"}), file=sys.stderr)
    rate = Fraction(opts.rate) if opts.rate not in ("29.97", "59.94") else Fraction(
        {"29.97": 30000, "59.94": 60000}[opts.rate], 1001)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    pacer = Pacer(sock.fileno(), (opts.host, opts.port), Fraction(10**9) / rate, opts.packets, opts.mode,
                  height=opts.height, tolerance_ns=int(opts.tolerance_us * 1000), gso=opts.gso,
                  lead=opts.lead)
    lengths = [opts.size] * opts.packets
    stats = []
    # The next frame is built while this one is sent (the pacer releases the GIL); the
    # sending thread must get the GIL back from the builder within the vertical blanking
    # (about 1.3 ms at 30 Hz), not after the default 5 ms switch interval.
    sys.setswitchinterval(1e-4)
    bufs = [frame_buffer(opts.packets, opts.size, 0), bytearray(opts.packets * opts.size)]
    with ThreadPoolExecutor(1) as pool:
        for f in range(opts.frames):
            nxt = pool.submit(frame_buffer, opts.packets, opts.size, (f + 1) * opts.packets, out=bufs[(f + 1) % 2])
            stats.append(pacer.send_frame(bufs[f % 2], lengths))
            nxt.result()
    cpu = sorted(s.cpu_ns for s in stats)
    late = sorted(s.max_late_ns for s in stats)
    print(json.dumps({
        "frames": len(stats), "packets": sum(s.packets_sent for s in stats),
        "send_errors": sum(s.send_errors for s in stats), "skipped_frames": sum(s.skipped_frames for s in stats),
        "cpu_ms_per_frame_median": cpu[len(cpu) // 2] / 1e6, "cpu_ms_per_frame_max": cpu[-1] / 1e6,
        "send_us_per_packet": sum(s.send_ns for s in stats) / max(1, sum(s.packets_sent for s in stats)) / 1e3,
        "max_late_us_median": late[len(late) // 2] / 1e3, "max_late_us_max": late[-1] / 1e3,
        "late_packets": sum(s.late_packets for s in stats), "groups": sum(s.groups for s in stats),
        "gso_sends": sum(s.gso_sends for s in stats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
