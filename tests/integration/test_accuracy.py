"""How accurate are the proxy's loss and jitter numbers?

One hop with a known impairment: a synthetic RTP source -> the seeded
impairment relay (``tests/impair.py``) -> a real proxy flow on 127.0.0.1.

* Loss is checked against what the relay actually dropped (it records every
  datagram), not against the configured probability.
* Jitter is checked against an independent measurement: the same packets
  captured on ``lo`` by tshark (its own timestamps, its own RTP dissector) and
  run through a plain-float RFC 3550 A.8 estimator written here, not
  ``msm.sdk.stats``. tshark's own ``-z rtp,streams`` summary is printed for the
  record (run pytest with ``-s`` to see the numbers).

The capture tests need tshark and permission to capture on ``lo`` (root); they
skip, saying why, without either.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msm.rtp_proxy.flows import Flow, FlowTable
from tests.engines import engine, poll, until
from tests.impair import Impairment, ImpairmentSchedule, ImpairRelay
from tests.rtp_source import RtpSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CLOCK_RATE = 90_000
RATE = 400.0        # packets/s: 1200 packets in 3 s (exact counts are checked, so more would only cost time)
PACKETS = 1200
LOSS_TOLERANCE = 0.005   # 0.5 percentage points
JITTER_TOLERANCE = 0.20  # relative


# ----------------------------------------------------------------- helpers


def udp_receive_errors() -> int:
    """Datagrams the kernel dropped for want of socket buffer (all UDP sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]
    fields = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    return int(fields["RcvbufErrors"])


@dataclass
class Run:
    flow: Flow
    relay: ImpairRelay
    source: RtpSource
    loopback_drops: int  # kernel UDP receive-buffer drops during the run (any socket)

    def span(self) -> tuple[int, int]:
        """Relay indices of the first packet forwarded and of the highest forwarded.

        That is the sequence range an RFC 3550 A.1 receiver counts as expected:
        from the first packet to *arrive* (``base_seq``) to the highest seen.
        """
        return self.relay.forwarded[0].index, max(f.index for f in self.relay.forwarded)

    def dropped_in_span(self) -> int:
        first, last = self.span()
        return sum(1 for d in self.relay.dropped if first < d.index < last)

    def before_base(self) -> int:
        """Packets that arrived after the first one but are older than it.

        A.1 counts them as received (misordered) though they are outside the
        expected range, so each one hides a lost packet; only reordering can
        make them.
        """
        first, _ = self.span()
        return sum(1 for f in self.relay.forwarded if f.index < first)

    def true_lost(self) -> int:
        """What an exact A.1 receiver of the forwarded packets must report as lost."""
        return self.dropped_in_span() - self.before_base()

    def overtaken(self) -> int:
        """Packets the relay sent after one with a higher index (A.1's misordered packets)."""
        count, highest = 0, -1
        for forwarded in self.relay.forwarded:
            if forwarded.index < highest:
                count += 1
            highest = max(highest, forwarded.index)
        return count


__all__ = ["engine"]   # the engine-parametrized fixture (tests/engines.py) ``flow`` builds on


@pytest.fixture
async def flow(engine: str) -> AsyncIterator[Flow]:
    """A proxy flow on each data-path engine: the same accuracy is required of both."""
    table = FlowTable(host="127.0.0.1", port_range=(43000, 43999), engine=engine)
    flow = await table.add_flow("accuracy/0", clock_rate=CLOCK_RATE)
    flow.set_source("127.0.0.1")   # the test's sources all send from this host
    yield flow
    table.close()


async def run_stream(flow: Flow, impairment: Impairment, *, seed: int, packets: int = PACKETS,
                     first_seq: int | None = None, first_timestamp: int | None = None) -> Run:
    host, port = flow.ingress
    errors_before = udp_receive_errors()
    async with ImpairRelay((host, port), (host, port + 1), impairment, seed=seed) as relay:
        async with RtpSource(relay.rtp_addr, relay.rtcp_addr, seed=seed, rate=RATE,
                             clock_rate=CLOCK_RATE, first_seq=first_seq, sr_interval=0.5,  # 6 SRs a run
                             first_timestamp=first_timestamp) as source:
            await source.send(packets)
            await relay.drain()
            # The proxy reads in the same event loop (or its own thread): let it catch
            # up. With loopback drops it never will; the tests look at those runs apart.
            await poll(lambda: (flow.snapshot().packets_received >= len(relay.forwarded)
                                and flow.rtcp_received >= relay.rtcp_forwarded), timeout=2.0)
    return Run(flow, relay, source, udp_receive_errors() - errors_before)


def rfc3550_jitter_ms(packets: list[tuple[int, int, int]], clock_rate: int) -> float:
    """A.8 interarrival jitter over ``(arrival_ns, seq, rtp_timestamp)`` in arrival order.

    Independent of ``msm.sdk.stats``: plain floats, arrival in nanoseconds.
    """
    jitter = 0.0
    previous: tuple[int, int] | None = None
    for arrival_ns, _seq, timestamp in packets:
        if previous is not None:
            last_ns, last_ts = previous
            arrival_gap = (arrival_ns - last_ns) * clock_rate / 1e9
            # Signed distance between 32-bit timestamps (they may wrap).
            timestamp_gap = (timestamp - last_ts + (1 << 31)) % (1 << 32) - (1 << 31)
            d = arrival_gap - timestamp_gap
            jitter += (abs(d) - jitter) / 16.0
        previous = (arrival_ns, timestamp)
    return jitter * 1000.0 / clock_rate


# ----------------------------------------------------------------- tshark


async def run_tool(*argv: str, timeout: float = 30.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace')}")
    return out.decode()


class Capture:
    """tshark capturing the flow's ingress RTP port on ``lo`` into a pcapng file.

    "Capturing on" comes before the capture really starts (packets sent right
    after it are missed), so :meth:`start` also waits until a probe datagram
    to a port of our own shows up in tshark's live output. Only the ingress
    port is read back from the file.
    """

    def __init__(self, port: int, path: Path) -> None:
        self.port = port
        self.path = path
        self.summary = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._probe: socket.socket | None = None
        self._probe_port = ""
        self._probes_seen = 0
        self._probe_seen = asyncio.Event()

    async def start(self) -> None:
        tshark = shutil.which("tshark")
        if tshark is None:
            pytest.skip("tshark is not installed (Debian package tshark)")
        probe = self._probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.setblocking(False)
        probe_port = probe.getsockname()[1]
        self._probe_port = str(probe_port)
        # -P -l -T fields: one line per captured packet on stdout while writing the file.
        self._proc = await asyncio.create_subprocess_exec(
            tshark, "-i", "lo", "-f", f"udp dst port {self.port} or udp dst port {probe_port}",
            "-w", str(self.path), "-P", "-l", "-T", "fields", "-e", "udp.dstport",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._reader = asyncio.create_task(self._read_stdout(self._proc.stdout))
        said: list[str] = []
        try:
            async with asyncio.timeout(15):
                while True:
                    line = (await self._proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        break
                    said.append(line.strip())
                    if "Capturing on" in line:
                        await self.sync()
                        return
        except TimeoutError:
            said.append("(timed out)")
        await self.stop()
        text = " | ".join(said)
        if re.search(r"permission|not permitted|privileges", text, re.IGNORECASE):
            pytest.skip(f"not permitted to capture on lo: {text}")
        raise AssertionError(f"tshark did not start capturing: {text or 'no output'}")

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once everything sent to ``lo`` before the call has been captured.

        Sends probes until tshark reports one: the kernel hands packets to the
        capture in order, so what was sent before the probe is in. (Stopping
        without this loses the packets still in the capture ring buffer.)
        """
        assert self._probe is not None
        seen = self._probes_seen
        async with asyncio.timeout(timeout):
            while self._probes_seen == seen:
                self._probe_seen.clear()
                self._probe.sendto(b"probe", ("127.0.0.1", int(self._probe_port)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_seen.wait(), 0.1)

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            if line.strip().decode() == self._probe_port:
                self._probes_seen += 1
                self._probe_seen.set()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None and self._reader is not None
        try:
            async with asyncio.timeout(15):
                err = await proc.stderr.read()
                await self._reader
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        self.summary = " | ".join(line.strip() for line in err.decode(errors="replace").splitlines()
                                  if line.strip())

    async def packets(self) -> list[tuple[int, int, int]]:
        """``(arrival_ns, seq, rtp_timestamp)`` of every RTP packet captured, in capture order."""
        out = await run_tool(
            "tshark", "-r", str(self.path), "-d", f"udp.port=={self.port},rtp",
            "-Y", f"udp.dstport=={self.port}", "-T", "fields", "-E", "separator=,",
            "-e", "frame.time_epoch", "-e", "rtp.seq", "-e", "rtp.timestamp")
        packets = []
        for line in out.splitlines():
            epoch, seq, timestamp = line.split(",")
            seconds, _, fraction = epoch.partition(".")
            arrival_ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
            packets.append((arrival_ns, int(seq), int(timestamp)))
        return packets

    async def rtp_streams(self) -> str:
        return await run_tool("tshark", "-r", str(self.path), "-d", f"udp.port=={self.port},rtp",
                              "-q", "-z", "rtp,streams")


@dataclass(frozen=True)
class TsharkStream:
    packets: int
    lost: int
    max_jitter_ms: float
    mean_jitter_ms: float


def parse_rtp_streams(text: str, ssrc: int) -> TsharkStream | None:
    """The row of ``-z rtp,streams`` for ``ssrc``, if it has the layout tshark 3.x/4.x prints."""
    for line in text.splitlines():
        if f"0x{ssrc:08x}" not in line.lower():
            continue
        match = re.search(
            r"\s(\d+)\s+(-?\d+)\s+\(-?[\d.]+%\)"       # Pkts, Lost (percent)
            r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"        # min, mean, max delta (ms)
            r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)  # min, mean, max jitter (ms)
        if match is None:
            return None
        return TsharkStream(packets=int(match[1]), lost=int(match[2]),
                            mean_jitter_ms=float(match[7]), max_jitter_ms=float(match[8]))
    return None


# ----------------------------------------------------------------- the relay itself


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.datagrams.append((data, addr))


async def _sink() -> tuple[_Sink, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
    return sink, transport.get_extra_info("sockname")[:2]


def test_schedule_is_seeded_and_keeps_order() -> None:
    impairment = Impairment(loss=0.1, delay_ms=2.0, jitter_ms=8.0)
    drops = ImpairmentSchedule(impairment, seed=3).drops(20_000)
    assert drops == ImpairmentSchedule(impairment, seed=3).drops(20_000)
    assert drops != ImpairmentSchedule(impairment, seed=4).drops(20_000)
    # The same seed drops the same packets whatever the delays are.
    assert drops == ImpairmentSchedule(Impairment(loss=0.1), seed=3).drops(20_000)
    assert abs(len(drops) / 20_000 - 0.1) < 0.01  # 4.7 standard deviations

    in_order = ImpairmentSchedule(impairment, seed=3)
    dues = [in_order.decide(i * 0.0025) for i in range(2000)]
    kept = [d for d in dues if d is not None]
    assert kept == sorted(kept)
    assert all(due - i * 0.0025 >= 0.002 for i, due in enumerate(dues) if due is not None)

    shuffled = ImpairmentSchedule(Impairment(delay_ms=2.0, jitter_ms=8.0, reorder=True), seed=3)
    dues = [shuffled.decide(i * 0.0025) for i in range(2000)]
    assert dues != sorted(dues)  # short delays overtake long ones
    assert all(d is not None and 0.002 <= d - i * 0.0025 <= 0.010 + 1e-9 for i, d in enumerate(dues))


def test_independent_jitter_estimator() -> None:
    step_ns, step_ts = 2_500_000, 225  # 400 packets/s at 90 kHz
    start = (1 << 32) - 10 * step_ts   # the timestamp wraps after 10 packets
    steady = [(i * step_ns, i, (start + i * step_ts) % (1 << 32)) for i in range(100)]
    assert rfc3550_jitter_ms(steady, 90_000) == 0.0
    # Every other packet 1 ms late: |D| is 1 ms for every pair, so J tends to 1 ms.
    wobbly = [(t + (i % 2) * 1_000_000, i, ts) for t, i, ts in steady]
    assert abs(rfc3550_jitter_ms(wobbly, 90_000) - 1.0) < 0.01


async def test_relay_drops_exactly_its_schedule() -> None:
    impairment = Impairment(loss=0.1, delay_ms=1.0, jitter_ms=3.0)
    count = 400
    expected_drops = ImpairmentSchedule(impairment, seed=11).drops(count)
    rtp_sink, rtp_target = await _sink()
    rtcp_sink, rtcp_target = await _sink()
    loop = asyncio.get_running_loop()
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    async with ImpairRelay(rtp_target, rtcp_target, impairment, seed=11) as relay:
        for i in range(count):
            sender.sendto(bytes([0x80, 34]) + i.to_bytes(2, "big") + bytes(8), relay.rtp_addr)
            if i % 20 == 19:
                await until(lambda i=i: relay.received > i)  # stay far below the relay's receive buffer
        sender.sendto(b"rtcp", relay.rtcp_addr)
        await relay.drain()
        await until(lambda: len(rtcp_sink.datagrams) == 1 and len(rtp_sink.datagrams) == len(relay.forwarded))
        assert rtcp_sink.transport is not None
        rtcp_sink.transport.sendto(b"report", relay.rtcp_addr)  # the receiver's RR goes back
        await until(lambda: relay.returned == 1)
    sender.close()
    for sink in (rtp_sink, rtcp_sink):
        assert sink.transport is not None
        sink.transport.close()

    assert relay.received == count
    assert [d.index for d in relay.dropped] == expected_drops
    assert [d.seq for d in relay.dropped] == expected_drops
    kept = [i for i in range(count) if i not in set(expected_drops)]
    assert [f.index for f in relay.forwarded] == kept
    assert relay.overflowed == []
    # Forwarded in order, each no earlier than the schedule said and at least the base delay late.
    assert [int.from_bytes(data[2:4], "big") for data, _ in rtp_sink.datagrams] == kept
    assert all(f.sent_at >= f.due_at - 0.001 and f.due_at - f.received_at >= 0.001 - 1e-9
               for f in relay.forwarded)
    # RTCP is never impaired, and comes back from the target to the sender.
    assert [data for data, _ in rtcp_sink.datagrams] == [b"rtcp"]
    assert relay.rtcp_forwarded == 1 and relay.returned == 1


# ----------------------------------------------------------------- the proxy


@pytest.mark.parametrize(("loss", "seed", "first_seq", "reorder"), [
    (0.02, 2, None, False),
    (0.10, 10, 65536 - PACKETS // 2, False),  # the sequence number wraps mid-stream
    # Up to 8 ms of jitter at 2.5 ms spacing: packets overtake; with this seed
    # packet 1 is due 4 ms before packet 0, so the first to arrive is not the
    # oldest (see Run.before_base).
    (0.10, 18, None, True),
], ids=["2pct", "10pct", "10pct-reordered"])
async def test_reported_loss_matches_injected(flow: Flow, loss: float, seed: int, first_seq: int | None,
                                              reorder: bool) -> None:
    impairment = Impairment(loss=loss, delay_ms=1.0, jitter_ms=8.0 if reorder else 2.0, reorder=reorder)
    run = await run_stream(flow, impairment, seed=seed, first_seq=first_seq)
    relay = run.relay
    assert relay.received == PACKETS and relay.overflowed == []
    injected = len(relay.dropped) / relay.received
    snap = flow.snapshot()
    reported = snap.packets_lost / snap.packets_expected
    first, last = run.span()
    print(f"\nloss {loss:.0%} seed {seed}: relay dropped {len(relay.dropped)}/{relay.received} "
          f"({injected:.3%}), {run.dropped_in_span()} between the first and last forwarded, "
          f"{run.before_base()} forwarded late from before the first; "
          f"proxy lost {snap.packets_lost}/{snap.packets_expected} ({reported:.3%}), "
          f"received {snap.packets_received}, reordered {snap.reordered} "
          f"(relay sent {run.overtaken()} out of order); kernel UDP receive drops {run.loopback_drops}")
    assert abs(reported - injected) <= LOSS_TOLERANCE

    if run.loopback_drops:
        print("loopback dropped datagrams during the run: exact counts not checked")
        return
    assert snap.packets_received == len(relay.forwarded)
    assert snap.packets_expected == last - first + 1
    assert snap.packets_lost == run.true_lost()
    assert snap.ssrc is not None and snap.reordered == run.overtaken()
    assert (run.overtaken() > 0) == reorder


async def test_reported_jitter_matches_capture(flow: Flow, tmp_path: Path) -> None:
    capture = Capture(flow.ingress[1], tmp_path / "ingress.pcapng")
    await capture.start()
    try:
        # 2..10 ms of delay per packet (uniform), 2% loss, RTP timestamps wrapping.
        run = await run_stream(flow, Impairment(loss=0.02, delay_ms=2.0, jitter_ms=8.0), seed=5,
                               first_timestamp=(1 << 32) - 225 * PACKETS // 2)
        await capture.sync()
    finally:
        await capture.stop()
    relay = run.relay
    captured = await capture.packets()
    streams = await capture.rtp_streams()
    print(f"\ntshark capture: {capture.summary}\n{streams}")

    # The capture saw exactly the packets the relay forwarded (so the same ones the proxy did).
    assert [seq for _, seq, _ in captured] == [f.seq for f in relay.forwarded]
    independent = rfc3550_jitter_ms(captured, CLOCK_RATE)
    snap = flow.snapshot()
    reported = snap.jitter_ms
    tshark = parse_rtp_streams(streams, run.source.ssrc)
    print(f"jitter: proxy {reported:.3f} ms, independent A.8 over the capture {independent:.3f} ms "
          f"({(reported - independent) / independent:+.1%}); "
          f"tshark max {tshark.max_jitter_ms if tshark else '?'} ms, "
          f"mean {tshark.mean_jitter_ms if tshark else '?'} ms; "
          f"lost: relay {len(relay.dropped)} ({run.dropped_in_span()} in span), "
          f"proxy {snap.packets_lost}, tshark {tshark.lost if tshark else '?'}")
    assert independent > 0.5, "the impairment should make jitter of a few milliseconds"
    assert abs(reported - independent) <= JITTER_TOLERANCE * independent
    if tshark is not None:
        assert tshark.packets == len(relay.forwarded)
        assert tshark.lost == run.dropped_in_span()
    if not run.loopback_drops:
        assert snap.packets_lost == run.true_lost() == run.dropped_in_span()


async def test_no_impairment_baseline(flow: Flow) -> None:
    run = await run_stream(flow, Impairment(), seed=1)
    relay, source = run.relay, run.source
    lateness = sorted(s.sent_at - s.due_at for s in source.sent)
    snap = flow.snapshot()
    print(f"\nbaseline: proxy received {snap.packets_received}/{PACKETS}, lost {snap.packets_lost}, "
          f"jitter {snap.jitter_ms:.3f} ms; source pacing lateness median "
          f"{lateness[len(lateness) // 2] * 1e3:.3f} ms, max {lateness[-1] * 1e3:.3f} ms; "
          f"RTCP sent {source.rtcp_sent}, relayed {relay.rtcp_forwarded}, proxy got {snap.rtcp_received}, "
          f"{relay.returned} came back (receiver reports), source got {source.rtcp_received}")
    assert relay.dropped == [] and relay.overflowed == []
    if not run.loopback_drops:
        assert snap.packets_received == snap.packets_expected == PACKETS
    assert snap.packets_lost == 0
    # Only the sender's own pacing error (event-loop timer ticks, a loaded machine's
    # scheduling) is left: the jitter of the send times themselves, plus a margin
    # for the relay's and the proxy's own hops on loopback.
    sending = rfc3550_jitter_ms([(int(s.sent_at * 1e9), s.seq, s.timestamp) for s in source.sent], CLOCK_RATE)
    print(f"jitter of the send times alone {sending:.3f} ms")
    assert snap.jitter_ms < sending + 0.5
    assert source.rtcp_sent >= 5 and snap.rtcp_received == relay.rtcp_forwarded == source.rtcp_sent
