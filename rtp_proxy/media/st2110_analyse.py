"""``msm st2110 analyse``: ST 2110-21 timing of a video stream, live on a UDP port or from a capture.

Live, each datagram's arrival is the kernel's receive timestamp (``SO_TIMESTAMPNS``,
taken when the packet reaches the socket, so a busy analyser does not distort it);
from a capture (pcap or pcapng, read by :mod:`.pcap`), the capture's timestamps.
Both are CLOCK_REALTIME; ST 2110's epoch is TAI, so the kernel's current TAI
offset is added (``--tai-offset`` overrides it; it is 0 where nothing set it).
Registered in ``msm.cli`` with :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import threading
import time
from fractions import Fraction
from typing import Any, TextIO

from msm.sdk.errors import ConfigError

from .pacing import MEDIA_CLOCK, frame_period
from .pcap import udp_datagrams
from .st2110_timing import Analyser, Report

__all__ = ["add_parser", "capture_live", "capture_pcap", "open_socket", "render", "run", "tai_offset_ns"]

SO_TIMESTAMPNS = 35          # linux/asm-generic/socket.h (also SCM_TIMESTAMPNS)
SO_RCVBUFFORCE = 33
#: The socket's receive buffer: a second of 1080p30 (about 112k packets) would need
#: far more; this absorbs the analyser falling behind for a fraction of a second, the
#: kernel's timestamps keep the arrival times exact meanwhile.
RCVBUF = 64 << 20
MAX_DATAGRAM = 9216          # the largest datagram read (a jumbo frame's payload)
STATUS_EVERY = 0.5           # seconds between live status lines
MAX_DURATION = 3600.0        # seconds one live capture may run


def tai_offset_ns() -> int:
    """CLOCK_TAI less CLOCK_REALTIME, in whole seconds (0 where the kernel's offset is unset)."""
    diff = time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(time.CLOCK_REALTIME)
    return round(diff / 1e9) * 1_000_000_000


def open_socket(port: int, group: str | None = None, source: str | None = None) -> socket.socket:
    """A UDP socket on ``port`` (joined to ``group``) with kernel receive timestamps and a large buffer."""
    try:
        family = socket.AF_INET6 if group and ipaddress.ip_address(group).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except ValueError:
        raise ConfigError(f"--group is not an IP address: {group!r}") from None
    try:
        for opt, value in ((SO_RCVBUFFORCE, RCVBUF), (socket.SO_RCVBUF, RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, value)
                break
            except PermissionError:
                continue
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        if group:
            _join(sock, family, group, source)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on port {port}{' group ' + group if group else ''}: {exc.strerror}") from None
    return sock


def _join(sock: socket.socket, family: int, group: str, source: str | None) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(family, group) + bytes(4))
    elif source:   # source-specific: struct ip_mreq_source (group, interface, source)
        mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + socket.inet_aton(source)
        sock.setsockopt(socket.IPPROTO_IP, 39, mreq)   # IP_ADD_SOURCE_MEMBERSHIP
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(group) + socket.inet_aton("0.0.0.0"))


def capture_live(analyser: Analyser, port: int | socket.socket, duration: float, *, group: str | None = None,
                 source: str | None = None, offset_ns: int = 0, status: TextIO | None = None,
                 stop: threading.Event | None = None) -> Report:
    """Analyse what arrives on ``port`` (or on a socket from :func:`open_socket`) for ``duration`` seconds.

    ``stop``, once set, ends the capture early (within 0.1 s).
    """
    sock = port if isinstance(port, socket.socket) else open_socket(port, group, source)
    sock.settimeout(0.1)
    deadline = time.monotonic() + duration
    next_status = time.monotonic() + STATUS_EVERY
    with sock:
        while True:
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                sock.setblocking(False)   # what arrived before the end is still read (the analyser may lag)
            if status is not None and now >= next_status:
                next_status = now + STATUS_EVERY
                _status(status, analyser.report, deadline - now)
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 64)
            except TimeoutError:
                continue
            except (BlockingIOError, KeyboardInterrupt):   # drained after the end, or Ctrl+C
                break
            if source and addr[0] != source:
                continue
            arrival = _timestamp(anc)
            analyser.feed_rtp((arrival if arrival else time.time_ns()) + offset_ns, data)
    if status is not None:
        status.write("\n")
    return analyser.report


def _timestamp(anc: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("=qq", data[:16])
            return int(sec * 1_000_000_000 + nsec)
    return 0


def _status(out: TextIO, rep: Report, left: float) -> None:
    counts = " ".join(f"{k} {v}" for k, v in rep.counts.items())
    out.write(f"\r{rep.packets} packets, {rep.frames} frames ({counts}), Cinst max {rep.cinst_max}, "
              f"VRX max {rep.vrx_max if rep.vrx_max is not None else '-'}; {left:.0f} s left ")
    out.flush()


def capture_pcap(analyser: Analyser, path: str, port: int | None, *, source: str | None = None,
                 offset_ns: int = 0) -> Report:
    for t, src, payload, length in udp_datagrams(path, port):
        if source and src != source:
            continue
        analyser.feed_rtp(t + offset_ns, payload, length)
    return analyser.report


def _us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


def render(rep: Report) -> str:
    lim = rep.limits
    lines = [f"ST 2110-21 timing: {rep.rate} Hz, {rep.packets_per_frame} packets/frame, "
             f"TRS {_us(rep.trs_ns)} us, TRoffset {_us(rep.tr_offset_ns)} us",
             f"  bounds: narrow CMAX {lim.get('cmax_narrow', '-')} VRX_FULL {lim.get('vrx_full_narrow', '-')}; "
             f"wide CMAX {lim.get('cmax_wide', '-')} VRX_FULL {lim.get('vrx_full_wide', '-')}",
             f"  packets {rep.packets} (not RTP {rep.not_rtp}), frames analysed {rep.frames}, "
             f"skipped {rep.frames_skipped} (partial or with losses; lost {rep.lost})",
             "  frames: " + ", ".join(f"{k} {v}" for k, v in rep.counts.items())
             + (f" (narrow or wide: {100 * (rep.counts['narrow'] + rep.counts['wide']) / rep.frames:.1f}%)"
                if rep.frames else "")]
    if rep.frames:
        fpt, lat, off = rep.fpt_ns or (0, 0), rep.latency_ns or (0, 0), rep.rtp_offset or (0, 0)
        # Latency means something only for a sender whose RTP timestamps are on the epoch's grid.
        on_grid = max(abs(off[0]), abs(off[1])) <= MEDIA_CLOCK
        latency = f"{_us(lat[0])}..{_us(lat[1])} us" if on_grid else "n/a (RTP timestamps off the epoch's grid)"
        lines += [f"  Cinst max {rep.cinst_max}; VRX min {rep.vrx_min} max {rep.vrx_max}",
                  f"  FPT (measured TRoffset) {_us(fpt[0])}..{_us(fpt[1])} us; RTP offset {off[0]}..{off[1]} ticks; "
                  f"latency {latency}"]
    lines.append(f"verdict: {rep.verdict} ({rep.reason})")
    return "\n".join(lines)


def run(opts: argparse.Namespace) -> int:
    if opts.pcap is None and opts.port is None:
        raise ConfigError("give --port (live) or --pcap FILE")
    if opts.port is not None and not 0 < opts.port < 65536:
        raise ConfigError(f"--port must be 1..65535, not {opts.port}")
    if not 0 < opts.duration <= MAX_DURATION:
        raise ConfigError(f"--duration must be in (0, {MAX_DURATION:g}] seconds, not {opts.duration:g}")
    rate = None if opts.rate is None else 1_000_000_000 / frame_period(opts.rate)
    if opts.height <= 0:
        raise ConfigError(f"--height must be positive, not {opts.height}")
    try:   # the form addresses are compared in
        source = None if opts.source is None else str(ipaddress.ip_address(opts.source))
    except ValueError:
        raise ConfigError(f"--source is not an IP address: {opts.source!r}") from None
    analyser = Analyser(rate=Fraction(rate) if rate is not None else None, height=opts.height,
                        linear=opts.model == "linear")
    offset = tai_offset_ns() if opts.tai_offset is None else int(opts.tai_offset * 1e9)
    if opts.pcap:
        rep = capture_pcap(analyser, opts.pcap, opts.port, source=source, offset_ns=offset)
    else:
        rep = capture_live(analyser, opts.port, opts.duration, group=opts.group, source=source,
                           offset_ns=offset, status=None if opts.json else sys.stderr)
    if opts.json:
        print(json.dumps(rep.as_dict(frames=opts.frames), default=list))
    else:
        print(render(rep))
    return 0 if rep.verdict in ("narrow", "wide") else 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``st2110`` (with its ``analyse`` command) to an ``add_subparsers()`` object."""
    p: argparse.ArgumentParser = sub.add_parser("st2110", help="ST 2110 tools: analyse a video stream's timing",
                                                description="ST 2110 tools.")
    inner = p.add_subparsers(dest="st2110_command", metavar="COMMAND", parser_class=type(p))
    a = inner.add_parser(
        "analyse", help="ST 2110-21 timing of an RFC 4175 stream: narrow, wide or non-compliant",
        description="Measure a video stream against ST 2110-21 (Cinst, VRX, FPT/TRoffset, latency) live on a "
        "UDP port or from a pcap/pcapng capture, and classify it narrow, wide or non-compliant (worst frame). "
        "Exit status 0 for narrow or wide, 1 otherwise.")
    a.add_argument("--port", type=int, help="UDP port to listen on (live), or to pick from the capture")
    a.add_argument("--group", metavar="ADDR", help="multicast group to join (live)")
    a.add_argument("--source", metavar="ADDR", help="only the sender at ADDR (source-specific join when live)")
    a.add_argument("--pcap", metavar="FILE", help="analyse a pcap or pcapng capture instead of listening")
    a.add_argument("--duration", type=float, default=5.0, metavar="SECONDS", help="live capture time (default 5)")
    a.add_argument("--rate", metavar="FPS", help="frame rate (default: from the RTP timestamps), e.g. 59.94")
    a.add_argument("--height", type=int, default=1080, help="active lines: picks TRODEFAULT (default 1080)")
    a.add_argument("--model", choices=("gapped", "linear"), default="gapped",
                   help="read schedule to judge against (default gapped: types N and W)")
    a.add_argument("--tai-offset", type=float, metavar="SECONDS",
                   help="TAI minus the capture clock (default: the kernel's, usually 0 or 37)")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.add_argument("--frames", action="store_true", help="with --json: every frame's numbers too")
    a.set_defaults(func=run)
    p.set_defaults(func=lambda _opts: _usage(p))
    return p


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
