"""The media SDK's frame path through the real agent, next to two dpdk-testpmds over memif, in one run.

    .venv/bin/python -m msm_bench.sdk_bench [--frames 300] [--sizes 5184000,1400] [--seconds 5] [--json]

Ours, four processes::

    sender app (msm.sdk.mesh TxConnection) --memif--> proxy's media agent (python -m msm.rtp_proxy.media.agent)
        --memif--> receiver app (msm.sdk.mesh RxConnection)

The sender fills each frame in place in its shared buffer (the app producing it:
its one write of the payload) and puts it, stamping the send time into the
frame's timestamp; it sends as fast as the proxy takes frames. The proxy reads
the frame where the sender wrote it and publishes it to the group, whose one
receiver, an app on this node that mapped the sender's sealed region, gets it
**by reference**: a descriptor naming the sender's buffer, no payload byte
copied (the proxy's ``by_reference``, ``copied`` and ``copied_bytes`` counts
are printed: a frame that went before the receiver had mapped the region, or
while it was behind, is copied into its own buffer, the fallback). The sender's
buffer goes back once the receiver gave the frame back. The receiver reads seq,
timestamp and the payload's last bytes in place and gives the buffer back. A
frame the receiver is too slow for is dropped for it (never held up), so what
counts is what it received: frames/s and bytes/s over the first to last
arrival, CPU per received frame of the three processes (the proxy's from
/proc), latency (arrival minus the sender's stamp) p50/p99.

Reference: testpmd ``txonly`` -> testpmd ``rxonly`` over memif, 1400-byte
packets, run before and after ours by :mod:`msm_bench.memif_bench`'s runner; the
faster run is the reference. ``--raw`` also runs memif_bench's own path (no SDK,
no agent: forwarding by reference) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from msm.sdk import mesh
from msm.sdk.errors import TimedOut
from msm_bench.memif_bench import FRAME, TESTPMD_PACKET, measure_ours, measure_testpmd

URN = "urn:msm:bench"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _config(size: int) -> dict[str, Any]:
    capacity = 16 if size >= 1 << 20 else 128
    return {"bufferQueueCapacity": capacity, "maxPayloadSize": size,
            "connection": {"multipointGroup": {"urn": URN}}}


def run_sender(frames: int, size: int, fps: float) -> dict[str, Any]:
    picture = (bytes(range(256)) * (size // 256 + 1))[:size]
    with mesh.Client(name="bench-sender") as client:
        tx = client.create_tx_connection(_config(size))
        cpu0 = _cpu()
        start = time.monotonic()
        for seq in range(frames):
            if fps:
                delay = start + seq / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            buf = tx.get_buffer(timeout=10.0)
            view = buf.payload
            view[:size] = picture  # the app produces the frame in the shared buffer
            view[size - 8:size] = seq.to_bytes(8, "little")
            buf.payload_len, buf.seq, buf.timestamp = size, seq, time.monotonic_ns()
            tx.put_buffer(buf)
        cpu = _cpu() - cpu0
        time.sleep(0.5)
        stats = client.list_connections()
    return {"sent": frames, "cpu": cpu, "proxy": stats}


def run_receiver(frames: int, size: int, idle: float) -> dict[str, Any]:
    with mesh.Client(name="bench-receiver") as client:
        rx = client.create_rx_connection(_config(size))
        print("ready", flush=True)
        lat: list[float] = []
        bad = 0
        first = last = 0.0
        cpu0 = _cpu()
        while len(lat) < frames:
            try:
                buf = rx.get_buffer(timeout=idle if lat else 30.0)
            except TimedOut:
                break  # the sender is done and the rest were dropped for us
            now = time.monotonic_ns()
            if buf.payload_len != size or bytes(buf.payload[size - 8:]) != buf.seq.to_bytes(8, "little"):
                bad += 1
            lat.append((now - buf.timestamp) / 1e3)
            first = first or now / 1e9
            last = now / 1e9
            rx.put_buffer(buf)
        cpu = _cpu() - cpu0
        stats = client.list_connections()
    return {"received": len(lat), "bad": bad, "cpu": cpu, "first": first, "last": last, "lat_us": lat,
            "proxy": stats}


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "msm_bench.sdk_bench", *args], stdout=subprocess.PIPE, text=True,
                            env=env)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"sdk bench: a peer failed ({proc.returncode}): {out[-500:]}")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def measure_sdk(frames: int, size: int, fps: float = 0.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="msm-sdk-bench-"))
    agent = subprocess.Popen([sys.executable, "-m", "msm.rtp_proxy.media.agent", "--media-dir", str(work / "media")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        agent.stdout.readline()  # MSM_PROXY=... once it listens
        env = {**os.environ, "MSM_PROXY": f"unix:{work / 'media' / 'proxy.sock'}"}
        receiver = _spawn("--role", "receiver", "--frames", str(frames), "--size", str(size), env=env)
        assert receiver.stdout is not None
        receiver.stdout.readline()
        proxy_cpu0 = _proc_cpu(agent.pid)
        sender = _spawn("--role", "sender", "--frames", str(frames), "--size", str(size), "--fps", str(fps),
                        env=env)
        s, r = _result(sender, 600), _result(receiver, 600)
        proxy_cpu = _proc_cpu(agent.pid) - proxy_cpu0
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        shutil.rmtree(work, ignore_errors=True)
    lat = sorted(r.pop("lat_us")) or [0.0]
    got = max(r["received"], 1)
    span = max(r["last"] - r["first"], 1e-9) * got / max(got - 1, 1)
    rx_proxy = r["proxy"][0] if r["proxy"] else {}
    return {"size": size, "fps_asked": fps, "frames": frames, "received": r["received"], "bad": r["bad"],
            "drops": rx_proxy.get("drops", {}), "fps": got / span, "bytes_per_s": got * size / span,
            "cpu_us_per_frame": (s["cpu"] + proxy_cpu + r["cpu"]) / got * 1e6,
            "sender_cpu_us_per_frame": s["cpu"] / got * 1e6, "proxy_cpu_us_per_frame": proxy_cpu / got * 1e6,
            "receiver_cpu_us_per_frame": r["cpu"] / got * 1e6,
            "p50_us": statistics.median(lat), "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "proxy_tx": s["proxy"][0] if s["proxy"] else {}, "proxy_rx": rx_proxy}


def report(ref: dict[str, Any], rows: list[tuple[str, dict[str, Any]]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"testpmd": ref, "rows": [{"path": name, **row} for name, row in rows]}, indent=1))
        return
    base = float(ref.get("bytes_per_s") or 0.0)
    print(f"{'path':<38}{'frames/s':>11}{'Gbit/s':>9}{'vs testpmd':>11}{'CPU us/frame':>13}{'p50 us':>9}"
          f"{'p99 us':>9}")
    if "error" in ref:
        print(f"{'testpmd -> testpmd (1400 B)':<38} {ref['error']}")
    else:
        print(f"{'testpmd -> testpmd (1400 B)':<38}{ref['pps']:>11.0f}{base * 8 / 1e9:>9.2f}{1.0:>11.2f}"
              f"{'':>13}{'':>9}{'':>9}   (packets/s before and after: {ref.get('runs_pps')})")
    for name, row in rows:
        ratio = f"{row['bytes_per_s'] / base:.2f}" if base else "n/a"
        label = f"{name} ({row['size']} B)"
        print(f"{label:<38}{row['fps']:>11.0f}{row['bytes_per_s'] * 8 / 1e9:>9.2f}{ratio:>11}"
              f"{row['cpu_us_per_frame']:>13.1f}{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}")
    for name, row in rows:
        if name.startswith("sdk"):
            rx = row["proxy_rx"]
            print(f"  {name} {row['size']} B: {row['received']}/{row['frames']} frames received, {row['bad']} bad, "
                  f"dropped for the receiver {row['drops'] or 'none'}; CPU us/frame: sender "
                  f"{row['sender_cpu_us_per_frame']:.1f}, proxy {row['proxy_cpu_us_per_frame']:.1f}, receiver "
                  f"{row['receiver_cpu_us_per_frame']:.1f}; by reference {rx.get('by_reference')}, copied "
                  f"{rx.get('copied')} ({rx.get('copied_bytes')} bytes; why: {rx.get('copy_reasons') or 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["sender", "receiver"])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=FRAME)
    parser.add_argument("--sizes", default=f"{FRAME},{TESTPMD_PACKET}")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fps", type=float, default=0.0, help="sender: frames per second (0: as fast as taken)")
    parser.add_argument("--paced", type=float, default=60.0,
                        help="also send the largest size at this rate, for latency without queueing (0: no)")
    parser.add_argument("--idle", type=float, default=2.0, help="receiver: seconds without a frame that end a run")
    parser.add_argument("--raw", action="store_true", help="also run memif_bench's path (no SDK, no agent)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.role:
        result = (run_sender(args.frames, args.size, args.fps) if args.role == "sender"
                  else run_receiver(args.frames, args.size, args.idle))
        print(json.dumps(result), flush=True)
        return
    before = measure_testpmd(args.seconds)
    rows: list[tuple[str, dict[str, Any]]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        count = args.frames if size >= 1 << 20 else args.frames * 100
        rows.append(("sdk app->agent->app", measure_sdk(count, size)))
        if args.raw:
            rows.append(("raw memif app->proxy->app", measure_ours(count, size)))
        if args.paced and size >= 1 << 20:
            rows.append((f"sdk paced {args.paced:g} fps", measure_sdk(min(count, int(args.paced * 5)), size,
                                                                     args.paced)))
    after = measure_testpmd(args.seconds)
    ref = max((before, after), key=lambda r: float(r.get("bytes_per_s") or 0.0))  # the machine may be shared
    ref["runs_pps"] = [r.get("pps") for r in (before, after)]
    report(ref, rows, as_json=args.json)


if __name__ == "__main__":
    main()
