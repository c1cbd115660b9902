"""ST 2110-20 1080p30 10-bit relayed by our bridges vs by GStreamer: loss and CPU per frame.

    GStreamer rtpvrawpay --> [relay under test] --> counting receiver (our C depacketizer)

The relays: ours (an ingress bridge publishing into a group and an egress
bridge receiving it, as ``msm up`` runs them, in one Python process, C core;
the egress paced by the C pacer, ``--pacing``) and GStreamer (``udpsrc !
rtpvrawdepay ! rtpvrawpay ! udpsink``). Each relay runs in its own process; its CPU (user + system,
``/proc/PID/stat``) is read just before the sender starts and once the
stream has drained, so start-up is not counted. Loss is what the counting
receiver found missing (sequence gaps), and the frames that did not arrive
complete. Both relays' CPU is per frame sent into them and per frame the receiver got
complete: a relay that drops frames spends less per frame sent and more per frame delivered.
(Our egress sends 3,784 equal packets a frame, two segments each, where rtpvrawpay sends
3,765; paced, it sends frames it is two behind with at once and counts them ``catch_up``.)
``--repeat N`` runs the pair N times (the machine may be shared) and prints the spread.

    .venv/bin/python -m msm_bench.st2110_bench [--frames 150] [--width 1920 --height 1080] [--pacing wide]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PT = 96
TICK = os.sysconf("SC_CLK_TCK")

COUNTER = """
import json, socket, sys, time
from msm.ext import st2110
w, h, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)
s.bind(("127.0.0.1", port))
rx = st2110.Receiver(s.fileno(), w, h, 5, 2, 96)
buf = bytearray(w // 2 * 5 * h)
print("ready", flush=True)
last = None
while True:
    info = rx.poll(buf, 200)
    if info is not None:
        last = time.monotonic()
    elif last is not None and time.monotonic() - last > 2.0:
        break
print(json.dumps(rx.stats()), flush=True)
"""

OURS = """
import asyncio, json, signal, sys
from msm.rtp_proxy.media.bridges import BridgeSet, BridgeSpec
from msm.rtp_proxy.media.plane import MediaNode
from msm.sdk.rfc4175 import VideoFormat
from msm.sdk.st2110_sdp import VideoStream
w, h, port_in, port_out = (int(a) for a in sys.argv[1:5])
pacing = sys.argv[5]
fmt = VideoFormat("YCbCr-4:2:2", 10, w, h)

async def main():
    # As msm up runs them: the ingress bridge publishes into a group, the egress bridge receives it.
    bridges = BridgeSet(MediaNode("bench"))
    await bridges.start([BridgeSpec("in", "ingress", "urn:bench", VideoStream("127.0.0.1", port_in, fmt)),
                         BridgeSpec("out", "egress", "urn:bench", VideoStream("127.0.0.1", port_out, fmt),
                                    pacing=pacing)])
    print("ready", flush=True)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, done.set)
    await done.wait()
    rows = {row["direction"]: row for row in bridges.snapshot()}
    await bridges.stop()
    out = rows["egress"]
    print(json.dumps({"ingress": rows["ingress"]["stats"], "egress": out["stats"],
                      "pacing_class": out["pacing_class"], "pacing_frames": out.get("pacing_frames", {})}), flush=True)

asyncio.run(main())
"""

def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _caps(w: int, h: int) -> str:
    return (f"application/x-rtp,media=video,clock-rate=90000,encoding-name=RAW,sampling=YCbCr-4:2:2,"
            f"depth=(string)10,width=(string){w},height=(string){h},colorimetry=BT709-2,payload={PT}")


def _relay(kind: str, w: int, h: int, port_in: int, port_out: int, pacing: str) -> subprocess.Popen[str]:
    if kind == "msm":
        cmd = [sys.executable, "-c", OURS, str(w), str(h), str(port_in), str(port_out), pacing]
    else:
        cmd = ["gst-launch-1.0", "-q", "udpsrc", f"port={port_in}", "buffer-size=67108864", f"caps={_caps(w, h)}", "!",
               "rtpvrawdepay", "!", "rtpvrawpay", f"pt={PT}", "mtu=1400", "!", "udpsink", "host=127.0.0.1",
               f"port={port_out}", "sync=false", "buffer-size=8388608"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sender(w: int, h: int, frames: int, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=1", "pattern=smpte", "!",
         f"video/x-raw,format=UYVP,width={w},height={h}", "!", "imagefreeze", f"num-buffers={frames}", "!",
         "video/x-raw,framerate=30/1", "!", "rtpvrawpay", f"pt={PT}", "mtu=1400", "!", "udpsink", "host=127.0.0.1",
         f"port={port}", "sync=true", "buffer-size=8388608"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_one(kind: str, w: int, h: int, frames: int, pacing: str = "wide") -> dict[str, object]:
    port_in, port_out = _port(), _port()
    counter = subprocess.Popen([sys.executable, "-c", COUNTER, str(w), str(h), str(port_out)],
                               stdout=subprocess.PIPE, text=True)
    relay = _relay(kind, w, h, port_in, port_out, pacing)
    try:
        assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
        if kind == "msm":
            assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        else:
            time.sleep(1.0)
        cpu0 = _cpu(relay.pid)
        sender = _sender(w, h, frames, port_in)
        sender.wait(timeout=frames / 30 * 4 + 30)
        time.sleep(1.0)
        cpu = _cpu(relay.pid) - cpu0
        counted = json.loads(counter.communicate(timeout=30)[0].strip().splitlines()[-1])
    finally:
        relay.send_signal(signal.SIGINT)
        try:
            relay_out = relay.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            relay.kill()
            relay_out = ""
        if counter.poll() is None:
            counter.kill()
    inner: dict[str, Any] = {}
    if kind == "msm" and relay_out.strip():
        inner = json.loads(relay_out.strip().splitlines()[-1])
    got, lost = counted["packets"], counted["lost"]
    return {"relay": kind, "frames_sent": frames, "packets_in": frames * _packets_per_frame(w, h),
            "packets_received": got, "packets_lost": lost, "frames_complete": counted["frames_complete"],
            "loss": lost / (got + lost) if got + lost else 1.0, "frame_loss": 1 - counted["frames_complete"] / frames,
            "relay_in_lost": inner.get("ingress", {}).get("lost"),
            "relay_in_incomplete": inner.get("ingress", {}).get("frames_incomplete"),
            "relay_out_busy": inner.get("egress", {}).get("frames_busy"),
            "relay_out_catch_up": inner.get("egress", {}).get("frames_catch_up"),
            "egress_pacing": f"{pacing}: {inner['pacing_class']} {inner['pacing_frames']}" if inner else None,
            "cpu_s": round(cpu, 3), "cpu_ms_per_frame": round(cpu * 1000 / frames, 2),
            "cpu_ms_per_delivered_frame": round(cpu * 1000 / max(1, counted["frames_complete"]), 2)}


def _packets_per_frame(w: int, h: int) -> int:
    from msm.sdk.rfc4175 import VideoFormat, packet_plan

    return len(packet_plan(VideoFormat("YCbCr-4:2:2", 10, w, h), 1400))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--pacing", default="wide", choices=("wide", "narrow", "linear", "none"),
                        help="our egress bridge's pacing (default wide, as msm up's)")
    parser.add_argument("--repeat", type=int, default=1, help="run the pair this many times, print the spread")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs = [_pair(args) for _ in range(max(1, args.repeat))]
    if len(runs) > 1:
        sent = sorted(r["cpu_ratio"] for r in runs)
        got = sorted(r["cpu_ratio_per_delivered_frame"] for r in runs)
        spread = {"runs": len(runs), "cpu_ratio": [sent[0], statistics.median(sent), sent[-1]],
                  "cpu_ratio_per_delivered_frame": [got[0], statistics.median(got), got[-1]]}
        print(json.dumps(spread) if args.json else
              f"{len(runs)} runs: CPU msm / GStreamer per frame sent {sent[0]:.2f} / {statistics.median(sent):.2f} / "
              f"{sent[-1]:.2f} (min / median / max), per frame delivered {got[0]:.2f} / "
              f"{statistics.median(got):.2f} / {got[-1]:.2f}")
    return 0


def _pair(args: argparse.Namespace) -> dict[str, Any]:
    """Ours then GStreamer on the same input; printed (or one JSON line) and returned."""
    results = [run_one(kind, args.width, args.height, args.frames, args.pacing) for kind in ("msm", "gstreamer")]
    ours, theirs = results
    ratio = float(ours["cpu_s"]) / float(theirs["cpu_s"]) if theirs["cpu_s"] else float("nan")  # type: ignore[arg-type]
    per_delivered = (float(ours["cpu_ms_per_delivered_frame"])  # type: ignore[arg-type]
                     / float(theirs["cpu_ms_per_delivered_frame"]))  # type: ignore[arg-type]
    pair = {"results": results, "cpu_ratio": ratio, "cpu_ratio_per_delivered_frame": per_delivered,
            "load": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(pair))
        return pair
    print(f"ST 2110-20 {args.width}x{args.height} 10-bit 30 fps, {args.frames} frames "
          f"(load average {os.getloadavg()[0]:.1f})")
    for r in results:
        print(f"  {r['relay']:>10}: receiver got {r['packets_received']} packets, {r['packets_lost']} lost "
              f"(loss {float(r['loss']):.4%}), {r['frames_complete']}/{r['frames_sent']} complete frames, "  # type: ignore[arg-type]
              f"CPU {r['cpu_s']} s = {r['cpu_ms_per_frame']} ms/frame sent, "
              f"{r['cpu_ms_per_delivered_frame']} ms/frame delivered complete")
        if r["relay_in_lost"] is not None:
            print(f"              relay ingress lost {r['relay_in_lost']} packets, {r['relay_in_incomplete']} "
                  f"incomplete frames; egress busy {r['relay_out_busy']}, catch-up {r['relay_out_catch_up']}; "
                  f"pacing {r['egress_pacing']}")
    print(f"  CPU msm / GStreamer: {ratio:.2f} for the same frames sent, {per_delivered:.2f} per frame delivered")
    return pair


if __name__ == "__main__":
    raise SystemExit(main())
