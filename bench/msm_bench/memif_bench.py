"""memif throughput: two dpdk-testpmds against msm's app -> proxy -> app frame path, in one run.

    .venv/bin/python -m msm_bench.memif_bench [--seconds 5] [--frames 300] [--sizes 5184000,1400]

Reference: testpmd (``txonly``, memif client) -> testpmd (``rxonly``, memif
server), 1400-byte packets, no hugepages; its bytes/s are the receiving port's
RX-bytes over the forwarding time. It runs before and after ours and the faster
run is the reference (a shared machine's load changes from minute to minute).

Ours, three processes::

    app sender (MemifClient) --memif--> proxy (MemifServer | MemifClient) --memif--> app receiver (MemifServer)

The sender writes each frame in place into its shared buffer (the app producing
it) and commits it. The proxy forwards every frame *by reference*: it registers
the sender's region as a second region of its connection to the receiver and
publishes a descriptor naming the same offset (``TxQueue.send_external``); it
gives the sender's slot back only once the receiver has consumed it. The proxy
never reads or writes payload. How we know: the receiver checks that the region
it reads frames from is the sender's memfd (same device and inode, reported by
both processes) and that every frame's sequence number, send time and last bytes
are the ones the sender wrote; the proxy reports the payload bytes it touched
(zero: it only reads descriptors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from msm.sdk.memif import MemifClient, MemifConfig, MemifServer
from msm.sdk.memif_fast import forward, native_reason

FRAME = 1920 * 1080 * 5 // 2  # 1080p 4:2:2 10-bit: 5,184,000 bytes
TESTPMD_PACKET = 1400
BIG_HOLD = 8  # 5 MB frames in flight from the sender: its ring has this many buffers (40 MB)
SMALL_HOLD = 256  # small frames in flight: enough to ride out a scheduling delay of the proxy
PROXY_LOG2 = 9  # the proxy's ring to the receiver holds every frame the sender can have in flight


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _wait_path(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"memif bench: {path} never appeared")
        time.sleep(0.01)


def _log2(n: int) -> int:
    return max(1, (n - 1).bit_length())


def run_receiver(sock: str, frames: int, size: int) -> dict[str, Any]:
    server = MemifServer(sock, MemifConfig(name="app-receiver", timeout=30.0))
    while not server.connections or not server.connections[0].connected:
        server.poll(0.1)
    conn = server.connections[0]
    fd = conn.regions[1].fd
    st = os.fstat(fd)
    lat: list[float] = []
    bad = 0
    cpu0 = _cpu()
    first = last = 0.0
    while len(lat) < frames:
        frame = conn.recv()
        if frame is None:
            select.select([conn.rx_fileno()], [], [], 0.05)
            conn.rx_queues[0].clear_interrupt()
            continue
        now = time.monotonic_ns()
        view = frame.views()[0]
        seq = int.from_bytes(view[0:8], "little")
        sent = int.from_bytes(view[8:16], "little")
        tail = frame.views()[-1][-8:]
        if seq != len(lat) or bytes(tail) != seq.to_bytes(8, "little") or frame.length != size or frame.region != 1:
            bad += 1
        lat.append((now - sent) / 1e3)
        first = first or now / 1e9
        last = now / 1e9
        frame.release()
    result = {"received": len(lat), "bad": bad, "cpu": _cpu() - cpu0, "first": first, "last": last,
              "lat_us": lat, "region_inode": [st.st_dev, st.st_ino], "counters": conn.counters.snapshot()}
    time.sleep(0.2)
    server.close()
    return result


def run_proxy(sock: str, receiver_sock: str, frames: int) -> dict[str, Any]:
    server = MemifServer(sock, MemifConfig(name="proxy", timeout=30.0))
    while not server.connections or not server.connections[0].connected:
        server.poll(0.1)
    inbound = server.connections[0]
    src = inbound.regions[0]
    out = MemifClient(receiver_sock, MemifConfig(name="proxy", buffer_size=64, log2_ring_size=PROXY_LOG2,
                                                 extra_regions=[(src.fd, src.size)], timeout=30.0)).connect()
    tx, rx = out.tx_queues[0], inbound.rx_queues[0]
    held: list[tuple[int, int]] = []  # (tx counter after a batch, rx counter to release once it is consumed)
    forwarded = 0
    cpu0 = _cpu()
    while forwarded < frames or held:
        done = tx.consumed()
        while held and ((done - held[0][0]) & 0xFFFF) < 0x8000:
            rx.release(held.pop(0)[1])  # the receiver has them: the sender may reuse the buffers
        moved = forward(rx, tx, 1) if forwarded < frames else 0
        if moved:
            forwarded += moved
            held.append((tx.ring.head, rx.next_counter))
            continue
        select.select([inbound.rx_fileno()], [], [], 0.0002 if held else 0.05)
        rx.clear_interrupt()
    result = {"forwarded": forwarded, "cpu": _cpu() - cpu0, "payload_bytes_touched": 0,
              "native": native_reason() or "msm.ext._memif",
              "in": inbound.counters.snapshot(), "out": out.counters.snapshot()}
    out.close()
    server.close()
    return result


def run_sender(sock: str, frames: int, size: int) -> dict[str, Any]:
    hold = BIG_HOLD if size >= 1 << 20 else SMALL_HOLD
    cfg = MemifConfig(name="app-sender", buffer_size=max(size, 2048), log2_ring_size=_log2(hold), timeout=30.0)
    client = MemifClient(sock, cfg).connect()
    st = os.fstat(client.regions[0].fd)
    picture = (bytes(range(256)) * (size // 256 + 1))[:size]
    cpu0 = _cpu()
    batch = 1 if size >= 1 << 20 else 16  # small frames: one wakeup of the proxy per 16 frames
    for seq in range(frames):
        buf = client.alloc(size)
        while buf is None:
            client.flush()
            time.sleep(0.0001)
            buf = client.alloc(size)
        view = buf.view
        view[:] = picture  # the app produces the frame, in the shared buffer (its one write of the payload)
        view[-8:] = seq.to_bytes(8, "little")
        view[0:8] = seq.to_bytes(8, "little")
        view[8:16] = time.monotonic_ns().to_bytes(8, "little")
        client.commit(buf, signal=(seq + 1) % batch == 0 or seq == frames - 1)
    result = {"sent": frames, "cpu": _cpu() - cpu0, "region_inode": [st.st_dev, st.st_ino]}
    time.sleep(0.5)
    client.close()
    return result


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "msm_bench.memif_bench", *args], stdout=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"memif bench: a peer failed ({proc.returncode}): {out[-500:]}")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def measure_ours(frames: int, size: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="msm-memif-bench-"))
    recv_sock, proxy_sock = work / "receiver.sock", work / "proxy.sock"
    try:
        receiver = _spawn("--role", "receiver", "--sock", str(recv_sock), "--frames", str(frames),
                          "--size", str(size))
        _wait_path(recv_sock)
        proxy = _spawn("--role", "proxy", "--sock", str(proxy_sock), "--peer", str(recv_sock), "--frames",
                       str(frames))
        _wait_path(proxy_sock)
        sender = _spawn("--role", "sender", "--sock", str(proxy_sock), "--frames", str(frames), "--size", str(size))
        s, p, r = _result(sender, 300), _result(proxy, 300), _result(receiver, 300)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lat = sorted(r.pop("lat_us"))
    span = max(r["last"] - r["first"], 1e-9) * frames / max(frames - 1, 1)
    return {"size": size, "frames": frames, "received": r["received"], "bad": r["bad"],
            "fps": frames / span, "bytes_per_s": frames * size / span,
            "cpu_us_per_frame": (s["cpu"] + p["cpu"] + r["cpu"]) / frames * 1e6,
            "proxy_cpu_us_per_frame": p["cpu"] / frames * 1e6, "sender_cpu_us_per_frame": s["cpu"] / frames * 1e6,
            "receiver_cpu_us_per_frame": r["cpu"] / frames * 1e6,
            "p50_us": statistics.median(lat), "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "same_memfd": s["region_inode"] == r["region_inode"], "proxy_payload_bytes": p["payload_bytes_touched"],
            "proxy": p, "receiver_counters": r["counters"]}


def _testpmd(prefix: str, role: str, sock: Path, lcores: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["stdbuf", "-oL", "dpdk-testpmd", "-l", lcores, "--no-huge", "-m", "512", "--no-pci", "--file-prefix", prefix,
         f"--vdev=net_memif0,role={role},id=0,socket={sock},socket-abstract=no", "--", "-i",
         "--total-num-mbufs=16384"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def measure_testpmd(seconds: float) -> dict[str, Any]:
    if shutil.which("dpdk-testpmd") is None:
        return {"error": "dpdk-testpmd not installed"}
    work = Path(tempfile.mkdtemp(prefix="msm-memif-pmd-"))
    sock, tag = work / "memif.sock", f"msm-bench-{os.getpid()}"
    rx = _testpmd(f"{tag}-rx", "server", sock, "0,1")
    _wait_path(sock)
    tx = _testpmd(f"{tag}-tx", "client", sock, "0,1")
    outs: dict[str, list[str]] = {"rx": [], "tx": []}
    for name, proc in (("rx", rx), ("tx", tx)):
        threading.Thread(target=lambda p=proc, n=name: outs[n].extend(p.stdout or []), daemon=True).start()
    try:
        time.sleep(4)  # both ports started and the link up
        for proc, cmds in ((rx, "set fwd rxonly\nstart\n"), (tx, f"set fwd txonly\nset txpkts {TESTPMD_PACKET}\n"
                                                               "start\n")):
            assert proc.stdin is not None
            proc.stdin.write(cmds)
            proc.stdin.flush()
        time.sleep(seconds)
        mark = len(outs["rx"])
        assert rx.stdin is not None
        rx.stdin.write("show port stats all\n")
        rx.stdin.flush()
        time.sleep(1)
        text = "".join(outs["rx"][mark:])
        rate = re.search(r"Rx-pps:\s+(\d+)\s+Rx-bps:\s+(\d+)", text)
        packets = re.search(r"RX-packets:\s+(\d+)\s.*?RX-bytes:\s+(\d+)", text, re.S)
    finally:
        for proc in (tx, rx):
            if proc.stdin is not None:
                try:
                    proc.stdin.write("stop\nquit\n")
                    proc.stdin.flush()
                    proc.wait(15)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
        for side in ("rx", "tx"):
            shutil.rmtree(f"/var/run/dpdk/{tag}-{side}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if packets is None:
        return {"error": "no port stats from testpmd: " + "".join(outs["rx"][-10:])}
    pps = int(packets.group(1)) / seconds
    return {"packets": int(packets.group(1)), "pps": pps, "bytes_per_s": int(packets.group(2)) / seconds,
            "rate_pps_now": int(rate.group(1)) if rate else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["sender", "proxy", "receiver"])
    parser.add_argument("--sock", default="")
    parser.add_argument("--peer", default="")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=FRAME)
    parser.add_argument("--sizes", default=f"{FRAME},{TESTPMD_PACKET}")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.role:
        if args.role == "sender":
            result = run_sender(args.sock, args.frames, args.size)
        elif args.role == "proxy":
            result = run_proxy(args.sock, args.peer, args.frames)
        else:
            result = run_receiver(args.sock, args.frames, args.size)
        print(json.dumps(result))
        return
    before = measure_testpmd(args.seconds)
    ours = []
    for size in (int(s) for s in args.sizes.split(",")):
        count = args.frames if size >= 1 << 20 else args.frames * 100
        ours.append(measure_ours(count, size))
    after = measure_testpmd(args.seconds)
    # The machine may be shared: testpmd runs before and after ours, and the faster of the two is the reference.
    ref = max((before, after), key=lambda r: float(r.get("bytes_per_s") or 0.0))
    ref["runs_pps"] = [r.get("pps") for r in (before, after)]
    report(ref, ours, as_json=args.json)


def report(ref: dict[str, Any], ours: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"testpmd": ref, "msm": ours}, indent=1))
        return
    base = ref.get("bytes_per_s") or 0.0
    print(f"{'path':<34}{'frames/s':>11}{'Gbit/s':>9}{'vs testpmd':>11}{'CPU us/frame':>13}{'p50 us':>9}"
          f"{'p99 us':>9}")
    if "error" in ref:
        print(f"{'testpmd -> testpmd (1400 B)':<34} {ref['error']}")
    else:
        print(f"{'testpmd -> testpmd (1400 B)':<34}{ref['pps']:>11.0f}{base * 8 / 1e9:>9.2f}{1.0:>11.2f}"
              f"{'':>13}{'':>9}{'':>9}   (packets/s before and after ours: {ref.get('runs_pps')})")
    for row in ours:
        ratio = f"{row['bytes_per_s'] / base:.2f}" if base else "n/a"
        name = f"msm app->proxy->app ({row['size']} B)"
        print(f"{name:<34}{row['fps']:>11.0f}{row['bytes_per_s'] * 8 / 1e9:>9.2f}{ratio:>11}"
              f"{row['cpu_us_per_frame']:>13.1f}{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}")
    for row in ours:
        print(f"  {row['size']} B: {row['received']}/{row['frames']} frames received, {row['bad']} bad; CPU us/frame: "
              f"sender {row['sender_cpu_us_per_frame']:.1f}, proxy {row['proxy_cpu_us_per_frame']:.1f}, receiver "
              f"{row['receiver_cpu_us_per_frame']:.1f}; receiver reads the sender's memfd: {row['same_memfd']}; "
              f"payload bytes the proxy touched: {row['proxy_payload_bytes']}; proxy ring walk: "
              f"{row['proxy'].get('native')}")


if __name__ == "__main__":
    main()
