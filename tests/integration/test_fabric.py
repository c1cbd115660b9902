"""The libfabric frame link between real endpoints: tcp;ofi_rxm across two network namespaces, shm on one host.

Each endpoint under test is a process (tests/integration/fabric_peer.py, in its
own namespace for tcp); frames are 1080p 10-bit sized (5.18 MB) and checked
byte for byte (SHA-256 of the payload, header and metadata exact). A receiver
that stops reading costs only its own frames (counted ``no_credit`` at the
sender), never the sender's progress or the other receiver's frames.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msm.ext import fabric as native
from msm.rtp_proxy.media.fabric_link import (
    FabricConfigError,
    FabricEndpoint,
    FabricUnavailable,
    FrameHeader,
    ReceivedFrame,
)
from tests.integration.fabric_peer import payload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).resolve().parent / "fabric_peer.py"
FRAME = 1920 * 1080 * 5 // 2
CREDITS = 4


def _why_skip(provider: str) -> str | None:
    if reason := native.unavailable_reason():
        return reason
    return native.probe(provider)


def need(provider: str) -> None:
    if reason := _why_skip(provider):
        pytest.skip(f"libfabric {provider} not usable here: {reason}")


class Peer:
    """A fabric_peer.py process; ``ask`` writes a command, ``answer`` reads its reply."""

    def __init__(self, provider: str, address: str | None, *, netns: str | None = None,
                 max_frame: int = FRAME, credits: int = CREDITS, max_peers: int = 2) -> None:
        argv = [sys.executable, str(PEER), provider, address or "-", str(max_frame), str(credits), str(max_peers)]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                     env=env)
        self.address = bytes.fromhex(self.answer()["address"])

    def ask(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"fabric peer exited ({self.proc.poll()})"
        return dict(json.loads(line))

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.ask(**cmd)
        return self.answer()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(quit=True)
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    """Two network namespaces joined by a veth pair: (netns A, address A, netns B, address B)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 100000}"
    a, b = f"msmfabA-{tag}", f"msmfabB-{tag}"
    octet = 1 + os.getpid() % 250
    addr_a, addr_b = f"10.251.{octet}.1", f"10.251.{octet}.2"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "-n", a, "link", "add", "fab0", "type", "veth", "peer", "name", "fab1", "netns", b)
        for ns, dev, addr in ((a, "fab0", addr_a), (b, "fab1", addr_b)):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, addr_a, b, addr_b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _pair(sender: Peer, receiver: Peer) -> tuple[int, int]:
    """Each adds the other; (the receiver's id at the sender, the sender's id at the receiver)."""
    return sender.call(add=receiver.address.hex())["peer"], receiver.call(add=sender.address.hex())["peer"]


def _exchange(sender: Peer, receiver: Peer, count: int) -> list[dict[str, Any]]:
    to_receiver, _ = _pair(sender, receiver)
    receiver.ask(recv=count, timeout=30)          # receiving (and progressing) while the sender sends
    sent = sender.call(send=to_receiver, count=count, size=FRAME, first=1, timeout=30)
    frames: list[dict[str, Any]] = receiver.answer()["frames"]
    assert sent == {"sent": count}
    return frames


def _check_exact(frames: list[dict[str, Any]], count: int) -> None:
    import hashlib
    assert [f["seq"] for f in frames] == list(range(1, count + 1))
    for f in frames:
        assert f["size"] == FRAME and f["group"] == 5 and f["ts"] == f["seq"] * 1000
        assert f["meta"] == f"meta-{f['seq']}"
        assert f["sha"] == hashlib.sha256(payload(f["seq"], FRAME)).hexdigest()


def test_tcp_rxm_between_two_namespaces_frames_are_exact(two_namespaces: tuple[str, str, str, str]) -> None:
    need("tcp;ofi_rxm")
    ns_a, addr_a, ns_b, addr_b = two_namespaces
    sender = Peer("tcp;ofi_rxm", addr_a, netns=ns_a)
    receiver = Peer("tcp;ofi_rxm", addr_b, netns=ns_b)
    try:
        frames = _exchange(sender, receiver, 6)
        _check_exact(frames, 6)
        stats = receiver.call(stats=True)
        assert stats["rx_unknown_peer"] == 0 and stats["peers"]["0"]["rx_frames"] == 6
        assert stats["peers"]["0"]["rx_bytes"] == 6 * FRAME
    finally:
        sender.stop()
        receiver.stop()


def test_shm_on_one_host_frames_are_exact() -> None:
    need("shm")
    sender, receiver = Peer("shm", None), Peer("shm", None)
    try:
        frames = _exchange(sender, receiver, 6)
        _check_exact(frames, 6)
        assert sender.call(stats=True)["peers"]["0"]["drop_send_error"] == 0
    finally:
        sender.stop()
        receiver.stop()


def _answer_polling(ep: FabricEndpoint, child: Peer, timeout: float = 15) -> dict[str, Any]:
    """The child's answer, progressing our endpoint meanwhile (its transfers need both sides)."""
    assert child.proc.stdout is not None
    deadline = time.monotonic() + timeout
    while not select.select([child.proc.stdout], [], [], 0)[0]:
        ep.poll(0.005)
        assert time.monotonic() < deadline, "the fabric peer did not answer"
    return child.answer()


def _send_one(ep: FabricEndpoint, peer: int, seq: int) -> None:
    deadline = time.monotonic() + 10
    while not _send_round(ep, [peer], seq, payload(1, FRAME))[peer]:
        ep.poll(0.01)
        assert time.monotonic() < deadline, ep.stats()


def _send_round(ep: FabricEndpoint, peers: list[int], seq: int, data: bytes) -> dict[int, bool]:
    done = {p: ep.send(p, FrameHeader(5, seq, seq * 1000, f"meta-{seq}".encode()), data) for p in peers}
    ep.poll(0)
    return done


def _credits_everywhere(ep: FabricEndpoint, peers: list[int], children: list[Peer]) -> None:
    for child in children:
        child.ask(tick=1.0)      # takes the hello and grants its credits
    deadline = time.monotonic() + 10
    while not all(ep.stats()["peers"][p]["credits"] > 0 for p in peers):
        ep.poll(0.01)
        assert time.monotonic() < deadline, ep.stats()
    for child in children:
        child.answer()


def _send_to_both(ep: FabricEndpoint, to_reader: int, to_stalled: int, frames: int) -> int:
    data = payload(1, FRAME)
    sent_reader = 0
    start = time.monotonic()
    while sent_reader < frames and time.monotonic() - start < 30:
        if _send_round(ep, [to_reader, to_stalled], sent_reader + 1, data)[to_reader]:
            sent_reader += 1
        assert len(ep._inflight) <= 2 * CREDITS   # the sender's memory: bounded by the credits
    while ep.stats()["peers"][to_reader]["in_flight"] > 0 and time.monotonic() - start < 35:
        ep.poll(0.01)   # the last frames need the sender's progress too
    return sent_reader


# Frozen: the receiver's process does not progress its endpoint at all (on shm
# this needs the link's one transmit endpoint per peer: libfabric 1.17's shm
# completes one endpoint's sends in order). Holding: it keeps its endpoint
# going but does not release frames (the slow consumer).
@pytest.mark.parametrize(("provider", "frozen"),
                         [("shm", False), ("shm", True), ("tcp;ofi_rxm", False), ("tcp;ofi_rxm", True)],
                         ids=["shm-holding", "shm-frozen", "tcp-holding", "tcp-frozen"])
def test_a_stalled_receiver_costs_only_its_own_frames(provider: str, frozen: bool) -> None:
    """The sender sends each frame to a reading and a stalled receiver; the reader gets every one."""
    need(provider)
    address = None if provider == "shm" else "127.0.0.1"
    reader, stalled = Peer(provider, address), Peer(provider, address)
    frames = 24
    try:
        with FabricEndpoint(provider, address, 0, max_frame=FRAME, credits=CREDITS, max_peers=2) as ep:
            to_reader, to_stalled = ep.add_peer(reader.address), ep.add_peer(stalled.address)
            reader.call(add=ep.local_address().hex())
            stalled.call(add=ep.local_address().hex())
            _credits_everywhere(ep, [to_reader, to_stalled], [reader, stalled])
            stalled.ask(recv=1, timeout=10)       # one frame while it still reads: the path is warm
            _send_one(ep, to_stalled, 0)
            assert [f["seq"] for f in _answer_polling(ep, stalled)["frames"]] == [0]
            reader.ask(recv=frames, timeout=30)
            if not frozen:
                stalled.ask(recv=frames, timeout=6, hold=True)   # reads, never releases
            assert _send_to_both(ep, to_reader, to_stalled, frames) == frames
            got = _answer_polling(ep, reader)["frames"]
            stats = ep.stats()["peers"]
            assert len(got) == frames and stats[to_reader]["tx_frames"] == frames, stats
            assert stats[to_stalled]["tx_frames"] <= 1 + CREDITS     # the warm-up frame, then its credits
            assert stats[to_stalled]["drop_no_credit"] > 0
            assert stats[to_stalled]["in_flight"] <= CREDITS
            if frozen:
                stalled.ask(recv=CREDITS + 1, timeout=3)
            held = _answer_polling(ep, stalled)["frames"]
            assert 1 <= len(held) <= CREDITS    # all the stalled receiver ever holds: its credits
            stalled.ask(release=True)
            _answer_polling(ep, stalled)
            # Reading again, it gets frames again.
            stalled.ask(recv=1, timeout=10)
            _send_one(ep, to_stalled, 1000)
            assert [f["seq"] for f in _answer_polling(ep, stalled)["frames"]] == [1000]
    finally:
        reader.stop()
        stalled.stop()


def test_a_peer_not_added_gets_no_credit_and_its_hello_is_counted() -> None:
    need("shm")
    with FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=2) as receiver, \
            FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=2) as stranger:
        to_receiver = stranger.add_peer(receiver.local_address())   # the receiver never adds it
        for _ in range(20):
            stranger.poll(0.005)
            receiver.poll(0.005)
        assert stranger.send(to_receiver, FrameHeader(1, 1, 1), b"x" * 100) is False
        assert stranger.stats()["peers"][to_receiver]["drop_no_credit"] == 1
        stats = receiver.stats()
        assert stats["ctrl_unknown_peer"] >= 1 and stats["peers"] == {}
        assert receiver.poll(0.01) == []


def _poll_for(ep: FabricEndpoint, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ep.poll(0.005)


def test_a_send_the_provider_refuses_for_now_is_retried_within_its_bound() -> None:
    """shm: the first frame from a new transmit endpoint meets -FI_EAGAIN until the peer maps it. It is taken
    and retried, not dropped; to a peer that never progresses it is dropped after RETRY_SECONDS, counted
    drop_busy, its credit and payload given back."""
    need("shm")
    from msm.rtp_proxy.media.fabric_link import RETRY_SECONDS
    assert RETRY_SECONDS * 1000 == native.load().lib.MSM_FAB_RETRY_MS
    with FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=2) as a, \
            FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=2) as b:
        to_b = a.add_peer(b.local_address())
        b.add_peer(a.local_address())
        deadline = time.monotonic() + 10
        while a.stats()["peers"][to_b]["credits"] < 2:
            a.poll(0.001)
            b.poll(0.001)
            assert time.monotonic() < deadline, a.stats()
        # b stops progressing: the first frame cannot be mapped to it
        assert a.offer(to_b, FrameHeader(1, 1, 1), b"x" * 100) is None
        queued = a.stats()["peers"][to_b]
        assert (queued["tx_retried"], queued["tx_queued"], queued["credits"]) == (1, 1, 1), queued
        _poll_for(a, RETRY_SECONDS / 2)
        assert a.stats()["peers"][to_b]["drop_busy"] == 0      # still within its bound
        _poll_for(a, RETRY_SECONDS * 2)
        dropped = a.stats()["peers"][to_b]
        assert (dropped["drop_busy"], dropped["tx_queued"], dropped["credits"], dropped["tx_frames"]) == (1, 0, 2, 0)
        assert a._inflight == {}                                # the payload is free again
        # b progresses again: the next first frame is retried until it goes, and arrives
        assert a.offer(to_b, FrameHeader(1, 2, 1), b"y" * 100) is None
        got: list[int] = []
        while not got and time.monotonic() < deadline:
            a.poll(0.001)
            for frame in b.poll(0.001):
                got.append(frame.seq)
                frame.release()
        assert got == [2]
        final = a.stats()["peers"][to_b]
        assert (final["drop_busy"], final["drop_no_credit"], final["tx_frames"]) == (1, 0, 1), final


def test_shm_reuses_the_last_released_receive_buffer() -> None:
    """shm copies a frame into the buffer it matches: frames released before the next comes all land in
    one (cache-warm) buffer, not in each of credits x peers in turn; held ones make it post others."""
    need("shm")
    with FabricEndpoint("shm", max_frame=4096, credits=4, max_peers=2) as a, \
            FabricEndpoint("shm", max_frame=4096, credits=4, max_peers=2) as b:
        to_b = a.add_peer(b.local_address())
        b.add_peer(a.local_address())
        assert b.stats()["rx_posted"] == 1 and b.stats()["rx_buffers"] == 8

        def one(seq: int) -> ReceivedFrame:
            assert a.offer(to_b, FrameHeader(1, seq, 0), bytes([seq]) * 1000) is None
            deadline = time.monotonic() + 10
            while True:
                a.poll(0.001)
                got = b.poll(0.001)
                if got:
                    assert [f.seq for f in got] == [seq] and bytes(got[0].payload) == bytes([seq]) * 1000
                    return got[0]
                assert time.monotonic() < deadline, (a.stats(), b.stats())

        deadline = time.monotonic() + 10
        while a.stats()["peers"][to_b]["credits"] < 4:
            a.poll(0.001)
            b.poll(0.001)
            assert time.monotonic() < deadline
        slots = []
        for seq in range(6):
            frame = one(seq)
            slots.append(frame.slot)
            frame.release()
            for _ in range(3):   # the grant back to a
                a.poll(0.001)
        assert len(set(slots)) == 1, slots
        held = [one(10 + i) for i in range(3)]     # held: each next frame finds another buffer
        assert len({f.slot for f in held}) == 3
        for frame in held:
            frame.release()
        assert b.stats()["rx_posted"] == 1


def test_bad_provider_names_and_limits_are_clear_errors() -> None:
    if reason := native.unavailable_reason():
        pytest.skip(reason)
    with pytest.raises(FabricConfigError, match="provider 'nosuch' is unknown or not offered.*offers: "):
        FabricEndpoint("nosuch", max_frame=1024)
    with pytest.raises(FabricConfigError, match="bad libfabric provider name"):
        FabricEndpoint("tcp; rm", max_frame=1024)
    with pytest.raises(FabricConfigError, match="credits must be"):
        FabricEndpoint("shm", max_frame=1024, credits=0)
    with pytest.raises(FabricUnavailable, match="cannot open"):
        FabricEndpoint("tcp;ofi_rxm", "192.0.2.77", 0, max_frame=1024)   # not an address of this host


def test_oversized_frames_and_unknown_peers_are_refused_and_counted() -> None:
    need("shm")
    with FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=1) as a, \
            FabricEndpoint("shm", max_frame=1024, credits=2, max_peers=1) as b:
        peer = a.add_peer(b.local_address())
        b.add_peer(a.local_address())
        assert a.send(peer, FrameHeader(1, 1, 1), b"x" * 1025) is False
        assert a.stats()["drop_too_big"] == 1
        from msm.sdk.errors import NotFound
        with pytest.raises(NotFound):
            a.send(peer + 1, FrameHeader(1, 1, 1), b"x")
        with pytest.raises(FabricConfigError, match="peer table full"):
            a.add_peer(b"\x00" * 16)


@pytest.mark.parametrize("provider", ["tcp;ofi_rxm", "shm"])
def test_garbage_peer_addresses_are_clear_errors(provider: str) -> None:
    need(provider)
    with FabricEndpoint(provider, None, 0, max_frame=1024, credits=1, max_peers=4) as ep:
        for bad in (b"", b"\x00" * 16, b"\xff" * 100):
            with pytest.raises(FabricConfigError, match="cannot add fabric peer"):
                ep.add_peer(bad)
        ep.poll(0.01)
        assert ep.stats()["peers"] == {}


def test_the_wait_descriptor_wakes_an_asyncio_reader() -> None:
    """tcp;ofi_rxm: loop.add_reader on fileno() sees frames arrive (the sender progressed by a 2 ms task)."""
    need("tcp;ofi_rxm")
    import asyncio

    async def run() -> list[int]:
        with FabricEndpoint("tcp;ofi_rxm", "127.0.0.1", 0, max_frame=4096, credits=2, max_peers=1) as a, \
                FabricEndpoint("tcp;ofi_rxm", "127.0.0.1", 0, max_frame=4096, credits=2, max_peers=1) as b:
            fd = b.fileno()
            assert fd is not None
            to_b = a.add_peer(b.local_address())
            b.add_peer(a.local_address())
            seqs: list[int] = []
            done = asyncio.Event()

            def readable() -> None:
                for frame in b.poll(0):
                    seqs.append(frame.seq)
                    frame.release()
                if len(seqs) >= 10:
                    done.set()

            loop = asyncio.get_running_loop()
            loop.add_reader(fd, readable)
            sent = 0
            try:
                async with asyncio.timeout(10):
                    while not done.is_set():
                        if sent < 10 and a.send(to_b, FrameHeader(1, sent, 0), b"y" * 4000):
                            sent += 1
                        a.poll(0)
                        await asyncio.sleep(0.002)
            finally:
                loop.remove_reader(fd)
            return seqs

    assert asyncio.run(run()) == list(range(10))


def _listening(pid: int) -> list[str]:
    """``ADDRESS:PORT`` of the TCP sockets process ``pid`` listens on, and no one else's: the socket inodes in
    /proc/PID/fd picked out of its namespace's /proc/PID/net/tcp{,6} (LISTEN is state 0A)."""
    import ipaddress
    import socket
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:      # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            addr = ipaddress.ip_address(raw) if family == socket.AF_INET6 else ipaddress.IPv4Address(raw)
            found.append(f"{addr}:{int(hex_port, 16)}")
    return sorted(found)


def test_tcp_listens_only_on_the_address_given() -> None:
    """Only this process's sockets count (another msm on the machine may listen anywhere)."""
    need("tcp;ofi_rxm")
    before = _listening(os.getpid())
    with FabricEndpoint("tcp;ofi_rxm", None, 0, max_frame=4096, credits=1, max_peers=1) as ep:
        name = ep.local_address()
        assert name[4:8] == bytes([127, 0, 0, 1])   # sockaddr_in: the default is loopback, not the wildcard
        port = int.from_bytes(name[2:4], "big")
        ours = [a for a in _listening(os.getpid()) if a not in before]
        assert ours == [f"127.0.0.1:{port}"]


def _free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trade(sender: FabricEndpoint, receiver: FabricEndpoint, frames: int) -> int:
    to_receiver = sender.add_peer(receiver.local_address())
    receiver.add_peer(sender.local_address())
    sent = got = 0
    deadline = time.monotonic() + 10
    while got < frames and time.monotonic() < deadline:
        if sent < frames and sender.send(to_receiver, FrameHeader(1, sent, 0), b"z" * 1000):
            sent += 1
        sender.poll(0.001)
        for frame in receiver.poll(0.001):
            got += 1
            frame.release()
    return got


@pytest.mark.parametrize("provider", ["tcp;ofi_rxm", "shm"])
def test_sigterm_still_reaches_python_after_libfabric_is_loaded(provider: str) -> None:
    """Loading libfabric loads libpsm2, whose constructor makes SIGTERM exit(1) at once: the proxy's
    graceful stop (asyncio's signal handler) must still get it."""
    need(provider)
    peer = Peer(provider, "127.0.0.1" if provider != "shm" else None)
    try:
        peer.proc.send_signal(15)
        assert peer.answer() == {"signal": 15}
        assert peer.call(stats=True)["peers"] == {}     # still serving
    finally:
        peer.stop()
    assert peer.proc.returncode == 0


def test_a_tcp_endpoint_keeps_rxm_bounce_buffers_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """rxm touches four pools of 1024 bounce buffers at enable: 80 MB of anonymous memory per process at its
    default 16 KB, 30 MB with msm.ext.fabric's 4 KB (the process, Python included; the frame buffers are
    mapped but untouched until frames come)."""
    need("tcp;ofi_rxm")
    monkeypatch.delenv("FI_OFI_RXM_BUFFER_SIZE", raising=False)   # the peer process picks the default
    peer = Peer("tcp;ofi_rxm", "127.0.0.1")
    try:
        status = Path(f"/proc/{peer.proc.pid}/status").read_text()
        anon_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:")))
        assert anon_kb < 55_000, status
    finally:
        peer.stop()


def test_a_peer_restarted_at_the_same_address_starts_with_fresh_credits() -> None:
    """Grants are cumulative; a restarted sender (same name) must not inherit its old self's total."""
    need("tcp;ofi_rxm")
    port = _free_tcp_port()
    with FabricEndpoint("tcp;ofi_rxm", "127.0.0.1", 0, max_frame=4096, credits=3, max_peers=2) as receiver:
        for _life in range(2):
            with FabricEndpoint("tcp;ofi_rxm", "127.0.0.1", port, max_frame=4096, credits=3, max_peers=2) as sender:
                assert _trade(sender, receiver, 10) == 10
                for _ in range(20):
                    sender.poll(0.001)
                    receiver.poll(0.001)
                mine = sender.stats()["peers"][0]
                assert mine["sent"] == 10 and mine["credits"] == 3, mine   # not 3 + the old life's 10
        assert receiver.stats()["peers"][0]["rx_frames"] == 20


@pytest.mark.parametrize("provider", ["shm", "tcp;ofi_rxm"])
def test_a_receiver_that_dies_costs_only_its_own_frames(provider: str) -> None:
    need(provider)
    address = None if provider == "shm" else "127.0.0.1"
    reader, victim = Peer(provider, address), Peer(provider, address)
    try:
        with FabricEndpoint(provider, address, 0, max_frame=FRAME, credits=CREDITS, max_peers=2) as ep:
            to_reader, to_victim = ep.add_peer(reader.address), ep.add_peer(victim.address)
            reader.call(add=ep.local_address().hex())
            victim.call(add=ep.local_address().hex())
            _credits_everywhere(ep, [to_reader, to_victim], [reader, victim])
            victim.proc.kill()
            victim.proc.wait()
            reader.ask(recv=12, timeout=20)
            assert _send_to_both(ep, to_reader, to_victim, 12) == 12
            assert len(_answer_polling(ep, reader)["frames"]) == 12
            dead = ep.stats()["peers"][to_victim]
            assert dead["drop_no_credit"] + dead["drop_busy"] + dead["drop_send_error"] > 0, dead
            assert dead["tx_pending"] <= CREDITS
    finally:
        reader.stop()
        victim.stop()


@pytest.mark.parametrize("provider", ["shm", "tcp;ofi_rxm"])
def test_frames_from_a_removed_peer_are_dropped_and_counted(provider: str) -> None:
    """The source check on real frames: the sender still has credits, the receiver no longer takes them."""
    need(provider)
    address = None if provider == "shm" else "127.0.0.1"
    with FabricEndpoint(provider, address, 0, max_frame=4096, credits=4, max_peers=2) as receiver, \
            FabricEndpoint(provider, address, 0, max_frame=4096, credits=4, max_peers=2) as sender:
        assert _trade(sender, receiver, 2) == 2
        deadline = time.monotonic() + 10
        while sender.stats()["peers"][0]["credits"] < 4:   # the grants for the two frames are in
            sender.poll(0.001)
            receiver.poll(0.001)
            assert time.monotonic() < deadline, sender.stats()
        from_sender = receiver.add_peer(sender.local_address())
        receiver.remove_peer(from_sender)
        assert receiver.stats()["peers"] == {}
        for seq in range(3):
            assert sender.send(0, FrameHeader(1, seq, 0), b"s" * 100)   # it has credits left
        got = []
        for _ in range(100):
            sender.poll(0.001)
            got += receiver.poll(0.001)
        assert got == [] and receiver.stats()["rx_unknown_peer"] == 3
        # Added again: same id, and its frames count again (the dropped ones' credits were kept for it).
        assert receiver.add_peer(sender.local_address()) == from_sender
        assert _trade(sender, receiver, 6) == 6


def test_choose_provider_takes_the_request_or_the_default_for_the_topology() -> None:
    need("shm")
    need("tcp;ofi_rxm")
    from msm.rtp_proxy.media.fabric_link import choose_provider
    assert choose_provider(None, same_host=True) == "shm"
    assert choose_provider(None, same_host=False) == "tcp;ofi_rxm"
    assert choose_provider("tcp;ofi_rxm", same_host=True) == "tcp;ofi_rxm"
    with pytest.raises(FabricConfigError, match="provider 'verbs;ofi_rxm' is unknown or not offered"):
        choose_provider("verbs;ofi_rxm", same_host=False)
