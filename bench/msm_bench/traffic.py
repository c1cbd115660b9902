"""The C sender and receiver as processes: ``python -m bench.traffic send|recv CONFIG_JSON``.

Each runs in its own process so that it has a core of its own to compete for
and its CPU time is not the forwarder's. The receiver binds its sockets,
prints ``{"ports": [...]}`` and receives in rounds (see :func:`recv`); the
sender prints its result when done.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

#: Socket buffers of the sender and receiver (SO_*BUFFORCE as root, else the
#: sysctl maximum): deep enough that a scheduling hiccup of a few ms on a busy
#: 2-core machine does not become loss that is not the forwarder's.
SOCKET_BUFFER = 16 << 20
PERCENTILES = (50, 90, 99, 99.9)


def _blast() -> Any:
    from msm_bench import _blast  # type: ignore[attr-defined]

    return _blast


def available() -> str | None:
    """None if the C sender/receiver are built, else why not."""
    try:
        _blast()
    except ImportError as exc:
        return f"msm_bench._blast is not built ({exc}); reinstall with a C compiler or run python bench/build.py"
    return None


def _buffers(sock: socket.socket, option_force: int, option: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, option_force, SOCKET_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def percentiles(hist: list[int] | Any, count: int) -> dict[str, float]:
    """Latency percentiles in microseconds from 1-us buckets."""
    out: dict[str, float] = {}
    if count <= 0:
        return out
    targets = [(p, count * p / 100.0) for p in PERCENTILES]
    seen = 0
    i = 0
    for bucket, n in enumerate(hist):
        if not n:
            continue
        seen += n
        while i < len(targets) and seen >= targets[i][1]:
            out[f"p{targets[i][0]:g}"] = bucket + 0.5
            i += 1
        if i == len(targets):
            break
    return out


def send(cfg: dict[str, Any]) -> dict[str, Any]:
    mod = _blast()
    ffi, lib = mod.ffi, mod.lib
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    _buffers(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)
    ports = [int(p) for p in cfg["ports"]]
    c = ffi.new("blast_send_cfg *")
    c_ports = ffi.new("uint16_t[]", ports)
    c.fd = sock.fileno()
    c.ndest = len(ports)
    c.ports = c_ports
    c.size = int(cfg.get("size", 1316))
    c.rate = float(cfg.get("rate", 0.0))
    c.duration = float(cfg["duration"])
    c.gso = int(cfg.get("gso", 0))
    c.batch = int(cfg.get("batch", 64))
    c.ssrc_base = int(cfg.get("ssrc_base", 0x4D534D00))
    per = ffi.new("uint64_t[]", len(ports))
    out = ffi.new("blast_send_result *")
    if lib.blast_send(c, per, out) != 0:
        raise OSError(ffi.errno, "blast_send failed")
    sock.close()
    return {"packets": out.packets, "bytes": out.bytes, "calls": out.calls, "errors": out.errors,
            "elapsed": out.elapsed, "per_dest": list(per)}


def recv(cfg: dict[str, Any]) -> None:
    """Receive in rounds: each ends with a line on stdin ("stop"), prints its result
    (counters start again), then waits for "again" (or anything else: exit)."""
    mod = _blast()
    ffi, lib = mod.ffi, mod.lib
    socks = []
    for _ in range(int(cfg["sockets"])):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        _buffers(s, SO_RCVBUFFORCE, socket.SO_RCVBUF)
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"ports": [s.getsockname()[1] for s in socks]}), flush=True)
    c = ffi.new("blast_recv_cfg *")
    fds = ffi.new("int[]", [s.fileno() for s in socks])
    c.nfd = len(socks)
    c.fds = fds
    c.stop_fd = sys.stdin.fileno()
    c.gro = 1 if cfg.get("gro") else 0
    while True:
        per = ffi.new("uint64_t[]", len(socks))
        out = ffi.new("blast_recv_result *")
        if lib.blast_recv(c, per, out) != 0:
            raise OSError(ffi.errno, "blast_recv failed")
        sys.stdin.readline()   # the "stop" that ended the round
        hist = ffi.unpack(out.hist, lib.BLAST_HIST)
        span = (out.last_ns - out.first_ns) / 1e9 if out.packets else 0.0
        print(json.dumps({
            "packets": out.packets, "bytes": out.bytes, "bad": out.bad, "calls": out.calls, "span": span,
            "latency_us": percentiles(hist, out.lat_count),
            "latency_mean_us": out.lat_sum_ns / out.lat_count / 1000 if out.lat_count else None,
            "latency_max_us": out.lat_max_ns / 1000, "per_socket": list(per)}), flush=True)
        if sys.stdin.readline().strip() != "again":
            break
        print(json.dumps({"ready": True}), flush=True)
    for s in socks:
        s.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("send", "recv"):
        print("usage: python -m bench.traffic send|recv CONFIG_JSON", file=sys.stderr)
        return 2
    cfg = json.loads(args[1])
    if args[0] == "send":
        print(json.dumps(send(cfg)), flush=True)
    else:
        recv(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
