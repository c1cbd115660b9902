"""``msm bench``: the machine's limit, our proxy (native and pure Python) and GStreamer, in one run.

Every measurement is one process topology on loopback::

    C sender --> [forwarder under test] --> C receiver (one socket per leg)

with 1316-byte RTP packets carrying their send time. "direct" runs leave the
forwarder out (the sender addresses every receiver socket itself): unpaced,
they are the machine's limit (``limit``; with UDP GSO, ``limit-gso``); paced,
they are the latency baseline that "added latency" subtracts. Each forwarder
gets the same offered loads, derived from the limit measured a moment before.

Numbers: delivered packets/s at the receivers (egress, all legs), Gbit/s of
UDP payload, loss (1 - delivered / expected, expected = sent x legs), the
forwarder's CPU seconds per million delivered packets (all its threads,
``/proc/PID/task/*/schedstat``), its memory (VmRSS, VmHWM), and one-way
latency percentiles.
"""

# long module: one measurement procedure (C peers, forwarders under test, cases, soak) whose parts share the
# subprocess plumbing and the load arithmetic; report.py already holds the output side.
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msm_bench import traffic

PACKET_SIZE = 1316               # 7 MPEG-TS packets: what RTP/MP2T and most IPTV carry
STREAM_RATE = 100.0              # packets/s of each of the "1000 concurrent low-rate streams" (~1 Mbit/s)
DRAIN = 0.3                      # seconds the receiver keeps reading after the sender stopped: later is lost
STARTUP_TIMEOUT = 60.0           # a forwarder that is not forwarding after this is broken
SOAK_SAMPLE = 1.0                # seconds between memory samples in the soak

LATENCY_CLIP_US = 20_000         # the receiver's histogram ends here (blast.h BLAST_HIST): "at least 20 ms"
PYTHON = sys.executable
# The helper processes import the installed msm_bench and msm packages, as this one does.
ENV = dict(os.environ)


@dataclass(frozen=True)
class Case:
    name: str
    streams: int
    legs: int            # legs per stream

    @property
    def sockets(self) -> int:
        return self.streams * self.legs


CASES = {
    "1:1": Case("1:1", 1, 1),
    "1:10": Case("1:10", 1, 10),
    "1:100": Case("1:100", 1, 100),
    "1000x1": Case("1000x1", 1000, 1),
}


@dataclass
class Result:
    case: str
    subject: str          # limit, limit-gso, direct, native, native-gso, python, gstreamer
    load: str             # max, 80%, 50%, full, half, streams
    offered_pps: float    # what the sender offered (packets/s into the forwarder, all streams)
    sent: int
    expected: int
    delivered: int
    duration: float
    pps: float            # delivered per second (egress)
    gbps: float
    loss: float
    cpu_s: float | None = None             # the forwarder's CPU seconds over the run (sender's for limits)
    cpu_s_per_mpkt: float | None = None
    rss_mib: float | None = None
    hwm_mib: float | None = None
    latency_us: dict[str, float] = field(default_factory=dict)
    added_us: dict[str, float] = field(default_factory=dict)
    forwarder: dict[str, Any] = field(default_factory=dict)
    late: int = 0          # arrived more than DRAIN after the sender stopped (counted as lost)
    note: str = ""


# ----------------------------------------------------------------------------- processes

def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, in seconds (ns resolution from schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def _memory_mib(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Receiver:
    """The C receiver process with ``n`` sockets, measuring in rounds (one per run)."""

    def __init__(self, n: int, *, gro: bool = False) -> None:
        cmd = [PYTHON, "-m", "msm_bench.traffic", "recv", json.dumps({"sockets": n, "gro": gro})]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        self._fresh = True
        line = self._line()
        self.ports: list[int] = json.loads(line)["ports"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _stop(self.proc)
            raise RuntimeError("the C receiver exited")
        return line

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def begin(self) -> None:
        """Start a round (the first one starts with the process)."""
        if not self._fresh:
            self._say("again")
            self._line()
        self._fresh = False

    def collect(self) -> dict[str, Any]:
        """End the round: what arrived since :meth:`begin`."""
        self._say("stop")
        result: dict[str, Any] = json.loads(self._line())
        return result

    def settle(self, *, quiet: float = 0.15, limit: float = 10.0) -> int:
        """Wait until nothing arrives for ``quiet`` seconds; the packets that still came are discarded.

        A forwarder that fell behind keeps delivering after the drain window
        (asyncio's write buffer, a deep socket buffer): those packets are more
        than DRAIN late, count as lost in their run, and must not count in the next.
        """
        late = 0
        deadline = time.monotonic() + limit
        while True:
            self.begin()
            time.sleep(quiet)
            got = int(self.collect()["packets"])
            late += got
            if not got or time.monotonic() > deadline:
                return late

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
        _stop(self.proc)


def send(ports: list[int], *, duration: float, rate: float = 0.0, gso: int = 0,
         size: int = PACKET_SIZE) -> dict[str, Any]:
    """Run the C sender to completion; its result plus its CPU time (rusage)."""
    cfg = {"ports": ports, "duration": duration, "rate": rate, "gso": gso, "size": size}
    proc = subprocess.Popen([PYTHON, "-m", "msm_bench.traffic", "send", json.dumps(cfg)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


class Forwarder:
    """A forwarder under test, as a process: ingress ports, CPU and memory, counters if it has them."""

    name = "forwarder"
    proc: subprocess.Popen[str]
    ingress: list[int]
    info: dict[str, Any]

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def memory(self) -> tuple[float, float]:
        return _memory_mib(self.proc.pid)

    def counters(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        _stop(self.proc)


class ProxyForwarder(Forwarder):
    """``msm_bench.forwarder``: the proxy's FlowTable on one engine."""

    def __init__(self, subject: str, flows: list[list[int]], *, churn: int = 0) -> None:
        # "native-srtp" / "python-srtp": the same engine with SRTP (its own key) on every leg,
        # AES_CM_128_HMAC_SHA1_80; "native-srtp-gcm" / "python-srtp-gcm": AEAD_AES_128_GCM, what
        # relay legs between two current proxies use.
        self.name = subject
        engine, _, srtp = subject.partition("-")
        cfg = {"engine": engine, "flows": flows, "churn": churn, "srtp": srtp == "srtp" or srtp == "srtp-gcm",
               "srtp_profile": "AEAD_AES_128_GCM" if srtp == "srtp-gcm" else "AES_CM_128_HMAC_SHA1_80"}
        self.proc = subprocess.Popen([PYTHON, "-m", "msm_bench.forwarder", json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _stop(self.proc)
            raise RuntimeError(f"{engine} forwarder did not start")
        self.info = json.loads(line)
        if self.info["engine"] != engine:
            _stop(self.proc)
            raise RuntimeError(f"asked for the {engine} engine, got {self.info['engine']}")
        self.ingress = self.info["ingress"]

    def counters(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _stop(self.proc)


def gst_unavailable() -> str | None:
    exe = shutil.which("gst-launch-1.0")
    if exe is None:
        return "gst-launch-1.0 not found (Debian: gstreamer1.0-tools)"
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is not None:
        for element in ("udpsrc", "udpsink", "multiudpsink"):
            if subprocess.run([inspect, "--exists", element], capture_output=True).returncode != 0:
                return f"GStreamer element {element} missing (gstreamer1.0-plugins-good)"
    return None


def _free_udp_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bound_udp_ports() -> set[int]:
    ports = set()
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines()[1:]:
                ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


class GstForwarder(Forwarder):
    """``gst-launch-1.0``: one ``udpsrc ! udpsink`` (or ``multiudpsink``) branch per stream."""

    name = "gstreamer"

    def __init__(self, flows: list[list[int]]) -> None:
        self.ingress = _free_udp_ports(len(flows))
        branches = []
        for port, legs in zip(self.ingress, flows, strict=True):
            # The peer's best foot forward: a deep socket buffer, no sender address lookups, no clock sync.
            src = (f"udpsrc address=127.0.0.1 port={port} buffer-size={traffic.SOCKET_BUFFER} "
                   "retrieve-sender-address=false")
            if len(legs) == 1:
                sink = f"udpsink host=127.0.0.1 port={legs[0]} sync=false async=false"
            else:
                clients = ",".join(f"127.0.0.1:{p}" for p in legs)
                sink = f"multiudpsink clients={clients} sync=false async=false"
            branches.append(f"{src} ! {sink}")
        exe = shutil.which("gst-launch-1.0") or "gst-launch-1.0"
        self.proc = subprocess.Popen([exe, "-q", *" ".join(branches).split()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        want = set(self.ingress)
        while not want <= _bound_udp_ports():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
                _stop(self.proc)
                raise RuntimeError(f"gst-launch-1.0 did not start: {err.strip()[:300]}")
            time.sleep(0.05)
        time.sleep(0.2)  # bound is not yet playing
        self.info = {"engine": "gstreamer", "features": []}


# ----------------------------------------------------------------------------- one measurement

def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def measure(case: Case, subject: str, load: str, *, rx: Receiver, dests: list[int], fanout: int, rate: float,
            duration: float, gso: int = 0, forwarder: Forwarder | None = None) -> Result:
    """One run: send to ``dests`` (a forwarder's ingress, or the receiver itself) and collect everything."""
    rx.begin()
    try:
        before = forwarder.counters() if forwarder is not None else {}
        cpu_before = forwarder.cpu() if forwarder is not None else 0.0
        sent = send(dests, duration=duration, rate=rate, gso=gso)
        time.sleep(min(DRAIN, max(0.1, duration / 2)))
        cpu = forwarder.cpu() - cpu_before if forwarder is not None else sent["cpu_s"]
        after = forwarder.counters() if forwarder is not None else {}
        rss, hwm = forwarder.memory() if forwarder is not None else (None, None)
    finally:
        got = rx.collect()
    expected = sent["packets"] * fanout
    delivered = int(got["packets"])
    seconds = sent["elapsed"] or duration
    pps = delivered / seconds
    return Result(
        case=case.name, subject=subject, load=load, offered_pps=sent["packets"] / seconds, sent=sent["packets"],
        expected=expected, delivered=delivered, duration=seconds, pps=pps, gbps=pps * PACKET_SIZE * 8 / 1e9,
        loss=max(0.0, 1 - delivered / expected) if expected else 0.0,
        cpu_s=cpu, cpu_s_per_mpkt=cpu / delivered * 1e6 if delivered else None, rss_mib=rss, hwm_mib=hwm,
        latency_us=got["latency_us"],
        forwarder={k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)},
    )


# ----------------------------------------------------------------------------- the plan

GSO_SEGMENTS = 48   # 48 x 1316 B = 63 KiB: the most that fits one GSO super-datagram


@dataclass
class Settings:
    duration: float = 2.0
    smoke: bool = False
    cases: tuple[str, ...] = ("1:1", "1:10", "1:100", "1000x1")
    subjects: tuple[str, ...] = ("native", "python", "gstreamer")
    soak: float = 0.0
    stream_rate: float = STREAM_RATE
    streams: int = 1000
    # Every process of the run (sender, receiver, forwarders alike) at this nice
    # level where permitted, so other work on the machine disturbs it less.
    nice: int = -10


def machine() -> dict[str, Any]:
    gst = ""
    exe = shutil.which("gst-launch-1.0")
    if exe:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            gst = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[1]
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "gstreamer": gst, "packet_size": PACKET_SIZE}


def start_forwarder(subject: str, flows: list[list[int]], *, churn: int = 0) -> Forwarder:
    if subject == "gstreamer":
        return GstForwarder(flows)
    return ProxyForwarder(subject, flows, churn=churn)


class Bench:
    """One benchmark run: the plan in :meth:`run`, results in :meth:`report`."""

    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print) -> None:
        self.s = settings
        self.echo = echo
        self.results: list[Result] = []
        self.limits: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self.soak: dict[str, Any] | None = None

    def _run(self, case: Case, subject: str, load: str, rx: Receiver, dests: list[int], fanout: int, rate: float,
             *, gso: int = 0, forwarder: Forwarder | None = None) -> Result | None:
        try:
            r = measure(case, subject, load, rx=rx, dests=dests, fanout=fanout, rate=rate, gso=gso,
                        duration=self.s.duration, forwarder=forwarder)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            self.echo(f"  {case.name:7} {subject:10} {load:7} failed: {exc}")
            self.skipped[f"{case.name}/{subject}/{load}"] = str(exc)
            return None
        if forwarder is not None:
            r.note = ",".join(forwarder.info.get("features", []))
        r.late = rx.settle()
        self.results.append(r)
        p99 = r.latency_us.get("p99")
        self.echo(f"  {case.name:7} {subject:10} {load:7} {r.pps:>12,.0f} pkt/s  loss {r.loss:8.3%}"
                  + (f"  p99 {p99:9.1f} us" if p99 is not None else ""))
        return r

    def _through(self, case: Case, subject: str, rx: Receiver, runs: list[tuple[str, float, int]]) -> None:
        flows = [rx.ports[i * case.legs:(i + 1) * case.legs] for i in range(case.streams)]
        try:
            fwd = start_forwarder(subject, flows)
        except (RuntimeError, OSError) as exc:
            self.echo(f"  {case.name:7} {subject:10} cannot start: {exc}")
            self.skipped[f"{case.name}/{subject}"] = str(exc)
            return
        try:
            for load, rate, gso in runs:
                self._run(case, f"{subject}-gso" if gso else subject, load, rx, fwd.ingress, case.legs, rate,
                          gso=gso, forwarder=fwd)
        finally:
            fwd.stop()

    def run(self) -> dict[str, Any]:
        why = traffic.available()
        if why:
            raise RuntimeError(why)
        if self.s.nice:
            try:   # inherited by every process started from here
                os.setpriority(os.PRIO_PROCESS, 0, self.s.nice)
            except OSError as exc:
                self.skipped["priority"] = f"nice {self.s.nice} not permitted ({exc.strerror}): ran at normal priority"
                self.s.nice = 0
        self.load_start = os.getloadavg()
        subjects = list(self.s.subjects)
        if "gstreamer" in subjects and (reason := gst_unavailable()):
            self.skipped["gstreamer"] = reason
            subjects.remove("gstreamer")
            self.echo(f"GStreamer skipped: {reason}")
        for name in self.s.cases:
            case = CASES[name] if name != "1000x1" else Case(f"{self.s.streams}x1", self.s.streams, 1)
            self.echo(f"case {case.name}: {case.streams} stream(s) x {case.legs} leg(s), "
                      f"{self.s.duration:g} s per run")
            rx = Receiver(case.sockets)
            try:
                self._case(case, subjects, rx)
            finally:
                rx.close()
        if self.s.soak > 0:
            self._soak(self.s.soak)
        return self.report()

    def _case(self, case: Case, subjects: list[str], rx: Receiver) -> None:
        s = self.s
        if case.streams > 1:
            # Many low-rate streams: a fixed total rate; the baseline is the same load sent directly.
            rate = case.streams * s.stream_rate
            base = self._run(case, "direct", "streams", rx, rx.ports, 1, rate)
            for subject in subjects:
                self._through(case, subject, rx, [("streams", rate, 0)])
            self._added(case, "streams", base)
            return
        limit = self._run(case, "limit", "max", rx, rx.ports, 1, 0.0)
        if limit is None or limit.pps <= 0:
            return
        self.limits[case.name] = limit.pps
        limit_gso = None
        if not s.smoke:
            limit_gso = self._run(case, "limit-gso", "max", rx, rx.ports, 1, 0.0, gso=GSO_SEGMENTS)
            if limit_gso is not None:
                self.limits[case.name + "/gso"] = limit_gso.pps
        egress = limit.pps                      # what the machine sends, all legs together
        half = egress / case.legs / 2           # ingress at half load
        base = self._run(case, "direct", "50%", rx, rx.ports, 1, egress / 2)
        for subject in subjects:
            runs: list[tuple[str, float, int]]
            if s.smoke:   # one load each: does it work, are the numbers sane
                runs = [("50%", half, 0)] if case.legs == 1 else [("full", egress / case.legs, 0)]
            elif case.legs == 1:
                runs = [("max", 0.0, 0), ("80%", egress * 0.8, 0), ("50%", half, 0)]
                if subject == "native" and limit_gso is not None:
                    runs.append(("80%", limit_gso.pps * 0.8, GSO_SEGMENTS))
            else:
                runs = [("full", egress / case.legs, 0), ("50%", half, 0)]
            self._through(case, subject, rx, runs)
        self._added(case, "50%", base)

    def _added(self, case: Case, load: str, base: Result | None) -> None:
        if base is None:
            return
        for r in self.results:
            if r.case == case.name and r.load == load and r.subject not in ("direct", "limit", "limit-gso"):
                r.added_us = {k: r.latency_us[k] - base.latency_us[k] for k in ("p50", "p99")
                              if k in r.latency_us and k in base.latency_us
                              and max(r.latency_us[k], base.latency_us[k]) < LATENCY_CLIP_US}

    def _soak(self, seconds: float) -> None:
        """The native proxy at half the 1:1 limit for ``seconds``, a leg churning; memory sampled each second."""
        rate = self.limits.get("1:1", 300_000.0) / 2
        self.echo(f"soak: native 1:1 at {rate:,.0f} pkt/s for {seconds:g} s, a leg added or removed every "
                  f"50 ms; RSS sampled every {SOAK_SAMPLE:g} s")
        rx = Receiver(2)
        samples: list[tuple[float, float]] = []
        try:
            fwd = ProxyForwarder("native", [rx.ports[:1]], churn=rx.ports[1])
            try:
                rx.begin()
                cfg = {"ports": fwd.ingress, "duration": seconds, "rate": rate, "size": PACKET_SIZE}
                proc = subprocess.Popen([PYTHON, "-m", "msm_bench.traffic", "send", json.dumps(cfg)],
                                        stdout=subprocess.PIPE, text=True, env=ENV)
                start = time.monotonic()
                try:
                    while proc.poll() is None:
                        samples.append((time.monotonic() - start, fwd.memory()[0]))
                        time.sleep(SOAK_SAMPLE)
                    assert proc.stdout is not None
                    sent = json.loads(proc.stdout.read())
                finally:
                    _stop(proc)
                time.sleep(DRAIN)
                counters = fwd.counters()
                got = rx.collect()
            finally:
                fwd.stop()
        finally:
            rx.close()
        warm = [m for t, m in samples if t >= min(60.0, seconds * 0.1)] or [m for _, m in samples] or [0.0]
        growth = warm[-1] - warm[0]
        self.soak = {
            # The churning leg points at the receiver's second socket: count the stable leg's only.
            "seconds": seconds, "rate_pps": rate, "sent": sent["packets"], "delivered": got["per_socket"][0],
            "churn_leg_delivered": got["per_socket"][1],
            "loss": max(0.0, 1 - got["per_socket"][0] / sent["packets"]) if sent["packets"] else 0.0,
            "rss_first_mib": samples[0][1] if samples else None, "rss_after_warmup_mib": warm[0],
            "rss_end_mib": warm[-1], "rss_max_mib": max(warm), "growth_mib": growth, "flat": growth < 1.0,
            "leg_changes": int(seconds / 0.05), "forwarder": counters,
            "samples": [[round(t, 1), round(m, 2)] for t, m in samples],
        }
        self.echo(f"soak: RSS {warm[0]:.1f} -> {warm[-1]:.1f} MiB (max {max(warm):.1f}), "
                  f"loss {self.soak['loss']:.4%}")

    def find(self, case: str, subject: str, load: str) -> Result | None:
        return next((r for r in self.results if r.case == case and r.subject == subject and r.load == load), None)

    def report(self) -> dict[str, Any]:
        rows = []
        for r in self.results:
            forwarder = r.subject not in ("limit", "limit-gso", "direct")
            peer = self.find(r.case, "gstreamer", r.load) if forwarder else None
            row = asdict(r)
            row["vs_limit"] = _ratio(r.pps, self.limits.get(r.case))
            row["vs_gstreamer"] = _ratio(r.pps, peer.pps if peer else None)
            row["cpu_vs_gstreamer"] = _ratio(r.cpu_s_per_mpkt, peer.cpu_s_per_mpkt if peer else None)
            rows.append(row)
        info = machine()
        # Other work on the machine shows here: the run shares its CPUs with it.
        info["loadavg_start"] = [round(x, 2) for x in getattr(self, "load_start", os.getloadavg())]
        info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report = {"machine": info, "settings": asdict(self.s), "limits_pps": self.limits, "results": rows,
                  "soak": self.soak, "skipped": self.skipped}
        report["targets"] = targets(report)
        return report


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured in one run (``met`` is None where there is no goal).

    Works on the JSON report, so a stored run can be evaluated again.
    """
    out: list[dict[str, Any]] = []
    rows = report["results"]
    limits = report["limits_pps"]

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    def find(case: str, subject: str, load: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["case"], r["subject"], r["load"]) == (case, subject, load)), None)

    limit = limits.get("1:1")
    lossless = [r for r in rows if r["case"] == "1:1" and r["subject"] == "native" and r["expected"]
                and r["delivered"] >= r["expected"]]
    if limit and lossless:
        best = max(lossless, key=lambda r: r["pps"])
        add("native 1:1 forwarding with zero loss, share of the C limit (best lossless run)", best["pps"] / limit,
            ">= 0.80", best["pps"] / limit >= 0.8,
            f"{best['pps']:,.0f} of {limit:,.0f} pkt/s at load {best['load']}, 0 lost")
    for load in ("80%", "max"):
        r = find("1:1", "native", load)
        if r is not None and limit:
            add(f"native 1:1 at load {load}: delivered share of the C limit", r["pps"] / limit, "", None,
                f"offered {r['offered_pps']:,.0f}, delivered {r['pps']:,.0f} pkt/s, "
                f"{r['expected'] - r['delivered']} lost")
    fan = find("1:100", "native", "full")
    limit100 = limits.get("1:100")
    if fan is not None and limit100:
        add("native 1:100 fan-out egress vs the C sender's limit", fan["pps"] / limit100, ">= 0.80",
            fan["pps"] / limit100 >= 0.8, f"{fan['pps']:,.0f} of {limit100:,.0f} pkt/s, loss {fan['loss']:.3%}")
    half = find("1:1", "native", "50%")
    if half is not None and "p99" in half["added_us"]:
        add("native added latency p99 at half load (1:1), us", half["added_us"]["p99"], "< 200",
            half["added_us"]["p99"] < 200, f"added p50 {half['added_us'].get('p50', float('nan')):.0f} us")
    for load in ("50%", "max"):
        mine, gst = find("1:1", "native", load), find("1:1", "gstreamer", load)
        if mine and gst and mine["cpu_s_per_mpkt"] and gst["cpu_s_per_mpkt"]:
            ratio = mine["cpu_s_per_mpkt"] / gst["cpu_s_per_mpkt"]
            add(f"native CPU per packet / GStreamer's (1:1, load {load})", ratio, "<= 0.20", ratio <= 0.2,
                f"{mine['cpu_s_per_mpkt']:.2f} vs {gst['cpu_s_per_mpkt']:.2f} CPU s per million packets")
    soak = report.get("soak")
    if soak:
        add("native memory growth through the soak after warm-up, MiB", soak["growth_mib"], "< 1", soak["flat"],
            f"{soak['seconds']:g} s, {soak['leg_changes']} leg changes, loss {soak['loss']:.4%}")
    return out
