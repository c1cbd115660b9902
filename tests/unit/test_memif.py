"""memif in-process: msm's server and client against each other, and hand-made bad peers against the server."""

from __future__ import annotations

import array
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msm.sdk import memif_proto as proto
from msm.sdk.memif import MemifClient, MemifConfig, MemifServer, PeerCred
from msm.sdk.memif_proto import MemifError
from msm.sdk.memif_ring import Region

FRAME = 1920 * 1080 * 5 // 2  # one 1080p 4:2:2 10-bit frame (pgroups of 5 bytes per 2 pixels): 5,184,000 bytes


class Running:
    """A MemifServer polled by a thread until the test ends."""

    def __init__(self, path: Path, config: MemifConfig | None = None, **kwargs: object) -> None:
        self.server = MemifServer(str(path), config, **kwargs)  # type: ignore[arg-type]
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.poll(0.02)

    def wait(self, predicate: object, what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.server.counters}"
            time.sleep(0.01)

    def connection(self, index: int = 0) -> object:
        self.wait(lambda: len([c for c in self.server.connections if c.connected]) > index, "a connection")
        return [c for c in self.server.connections if c.connected][index]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "memif.sock"


@pytest.fixture
def running(sock_path: Path) -> Iterator[Running]:
    run = Running(sock_path, MemifConfig(name="proxy", timeout=1.0))
    yield run
    run.close()


def _payload(size: int, seed: int = 1) -> bytes:
    block = bytes((i * seed + i // 256) & 0xFF for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def _joined(frame: object) -> bytes:
    return b"".join(bytes(v) for v in frame.views())  # type: ignore[attr-defined]


def _recv(conn: object, timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        frame = conn.recv()  # type: ignore[attr-defined]
        if frame is not None:
            return frame
        assert time.monotonic() < deadline, "no frame arrived"
        time.sleep(0.001)


# --- the codec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [
    proto.Ack(), proto.Hello("DPDK 22.11", 0x200, 0x200, 255, 255, 255, 14),
    proto.Init(0x200, 7, 0, b"s3cret", "app"), proto.AddRegion(1, 5 << 20),
    proto.AddRing(3, 0, 4096, 10, True), proto.AddRing(0, 1, 0, 2, False), proto.Connect("if0"),
    proto.Connected("if1"), proto.Disconnect(5, "bye"),
])
def test_codec_round_trip(msg: proto.Message) -> None:
    wire = proto.encode(msg)
    assert len(wire) == proto.MSG_SIZE
    assert proto.decode(wire) == msg


@pytest.mark.parametrize("wire, words", [
    (b"\x01\x00" * 10, "20 bytes"),
    ((99).to_bytes(2, "little").ljust(128, b"\0"), "unknown control message type 99"),
    ((2).to_bytes(2, "little") + b"x" * 32 + b"\x00\x03\x00\x02" + bytes(6) + b"\x0e", "min version"),
    ((5).to_bytes(2, "little") + bytes(10) + b"\x1f", "log2 ring size 31"),
    ((5).to_bytes(2, "little") + b"\x02\x00" + bytes(9), "unknown flags"),
    ((3).to_bytes(2, "little") + bytes(6) + b"\x07", "unknown interface mode"),
    ((6).to_bytes(2, "little") + b"\x01\x02", "not printable"),
    ((4).to_bytes(2, "little") + bytes(10), "size 0"),
])
def test_codec_rejects_with_a_clear_reason(wire: bytes, words: str) -> None:
    with pytest.raises(MemifError, match=words):
        proto.decode(wire.ljust(128, b"\0") if len(wire) < 128 and words != "20 bytes" else wire)


# --- both roles, frames of a 1080p 10-bit picture -----------------------------------------------------------


@pytest.mark.parametrize("buffer_size, log2, chained", [(FRAME, 2, False), (1 << 16, 9, True)])
def test_5mb_frames_both_ways_byte_exact_without_copy(running: Running, buffer_size: int, log2: int,
                                                      chained: bool) -> None:
    client = MemifClient(str(running.path), MemifConfig(buffer_size=buffer_size, log2_ring_size=log2)).connect()
    try:
        conn = running.connection()
        assert conn.peer == PeerCred(os.getpid(), os.getuid(), os.getgid())  # type: ignore[attr-defined]
        for seed in (1, 3):
            frame = _payload(FRAME, seed)
            buf = client.alloc(FRAME)
            assert buf is not None and (len(buf.views) > 1) == chained
            pos = 0
            for view in buf.views:  # the app writes straight into the shared buffer
                view[:] = frame[pos:pos + len(view)]
                pos += len(view)
            client.commit(buf)
            got = _recv(conn)
            assert isinstance(got.data, list) == chained  # type: ignore[attr-defined]
            region_map = conn.regions[0]._map  # type: ignore[attr-defined]
            assert all(v.obj is region_map for v in got.views())  # type: ignore[attr-defined]
            assert got.length == FRAME and _joined(got) == frame  # type: ignore[attr-defined]
            got.release()  # type: ignore[attr-defined]
            assert conn.send(frame[::-1])  # type: ignore[attr-defined]
            back = _recv(client)
            assert back.length == FRAME and _joined(back) == frame[::-1]  # type: ignore[attr-defined]
            back.release()  # type: ignore[attr-defined]
        assert client.counters.rx_packets == client.counters.tx_packets == 2
        assert not client.counters.drops and not conn.counters.errors  # type: ignore[attr-defined]
    finally:
        client.close()


def test_socket_mode_and_secret(tmp_path: Path) -> None:
    run = Running(tmp_path / "s.sock", MemifConfig(secret=b"open sesame", timeout=1.0))
    try:
        assert (run.path.stat().st_mode & 0o777) == 0o660
        with pytest.raises(MemifError, match="incorrect secret"):
            MemifClient(str(run.path), MemifConfig(secret=b"wrong")).connect()
        good = MemifClient(str(run.path), MemifConfig(secret=b"open sesame")).connect()
        assert good.connected
        good.close()
        assert run.server.counters["failed:bad_secret"] == 1
    finally:
        run.close()


# --- bad peers ---------------------------------------------------------------------------------------------


class RawPeer:
    """A hand-driven client that can say anything."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.hello = proto.decode(self.sock.recv(256))

    def say(self, data: bytes, fd: int | None = None) -> bytes:
        anc = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        self.sock.sendmsg([data], anc)
        return self.sock.recv(256)

    def close(self) -> None:
        self.sock.close()


def _reason(reply: bytes) -> str:
    msg = proto.decode(reply)
    assert isinstance(msg, proto.Disconnect), msg
    return msg.reason


def _streaming(running: Running) -> tuple[MemifClient, object]:
    good = MemifClient(str(running.path), MemifConfig(buffer_size=4096, log2_ring_size=6)).connect()
    return good, running.connection()


def _still_flows(good: MemifClient, conn: object, n: int = 50) -> None:
    for i in range(n):
        assert good.send(i.to_bytes(4, "little") * 100)
        frame = _recv(conn)
        assert bytes(frame.data[:4]) == i.to_bytes(4, "little")  # type: ignore[attr-defined]
        frame.release()  # type: ignore[attr-defined]


@pytest.mark.parametrize("messages, key, words", [
    ([b"\x03\x00" * 40], "malformed_message", "80 bytes"),
    ([proto.encode(proto.Init()), proto.encode(proto.AddRegion(0, 4096))], "missing_fd", "without its fd"),
    ([proto.encode(proto.Connect("x"))], "unexpected_message", "before INIT"),
    ([proto.encode(proto.Init(0x100, 0, 0, b"", "old"))], "bad_version", "version 0x0100"),
    ([proto.encode(proto.Init()), proto.encode(proto.Connect("x"))], "bad_ring", "CONNECT before a ring"),
    ([proto.encode(proto.Init()), proto.encode(proto.Hello())], "unexpected_message", "unexpected Hello"),
    ([(77).to_bytes(2, "little").ljust(128, b"\0")], "malformed_message", "unknown control message type 77"),
])
def test_malformed_messages_are_refused_counted_and_others_flow(running: Running, messages: list[bytes],
                                                                  key: str, words: str) -> None:
    good, conn = _streaming(running)
    bad = RawPeer(running.path)
    try:
        for data in messages[:-1]:
            assert isinstance(proto.decode(bad.say(data)), proto.Ack)
        assert words in _reason(bad.say(messages[-1]))
        running.wait(lambda: running.server.counters[f"failed:{key}"] == 1, key)
        _still_flows(good, conn)
    finally:
        bad.close()
        good.close()


def test_peer_closing_mid_handshake_and_silent_peer(running: Running) -> None:
    good, conn = _streaming(running)
    quitter = RawPeer(running.path)
    assert isinstance(proto.decode(quitter.say(proto.encode(proto.Init()))), proto.Ack)
    quitter.close()
    silent = RawPeer(running.path)
    try:
        running.wait(lambda: running.server.counters["failed:peer_closed"] == 1, "the quitter counted")
        _still_flows(good, conn)
        running.wait(lambda: running.server.counters["failed:handshake_timeout"] == 1, "the silent peer timed out")
        assert "timed out" in _reason(silent.sock.recv(256))
        _still_flows(good, conn)
    finally:
        silent.close()
        good.close()


@pytest.mark.parametrize("case", ["file_shorter_than_claimed", "ring_past_region_end", "unsealed"])
def test_short_region_is_refused(running: Running, case: str) -> None:
    good, conn = _streaming(running)
    bad = RawPeer(running.path)
    region = Region.create(8192)
    claimed = 1 << 20 if case == "file_shorter_than_claimed" else 8192
    fd = region.fd
    if case == "unsealed":
        fd = os.memfd_create("plain")
        os.ftruncate(fd, 8192)
    efd = os.eventfd(0)
    try:
        assert isinstance(proto.decode(bad.say(proto.encode(proto.Init()))), proto.Ack)
        reply = bad.say(proto.encode(proto.AddRegion(0, claimed)), fd)
        if case == "ring_past_region_end":
            assert isinstance(proto.decode(reply), proto.Ack)
            reply = bad.say(proto.encode(proto.AddRing(0, 0, 4096, 10, True)), efd)  # 16 KiB of ring in 8 KiB
            assert "does not fit" in _reason(reply)
        elif case == "unsealed":
            assert "sealed" in _reason(reply)
        else:
            assert "claims 1048576" in _reason(reply)
        key = "unsealed_region" if case == "unsealed" else "short_region"
        running.wait(lambda: running.server.counters[f"failed:{key}"] == 1, key)
        _still_flows(good, conn)
    finally:
        bad.close()
        region.close()
        os.close(efd)
        if case == "unsealed":
            os.close(fd)
        good.close()


def test_interrupt_fd_must_be_an_eventfd(running: Running) -> None:
    good, conn = _streaming(running)
    bad = RawPeer(running.path)
    region = Region.create(65536)
    read_end, write_end = os.pipe()  # a pipe that fills would block a server writing "interrupts" to it
    try:
        assert isinstance(proto.decode(bad.say(proto.encode(proto.Init()))), proto.Ack)
        assert isinstance(proto.decode(bad.say(proto.encode(proto.AddRegion(0, 65536)), region.fd)), proto.Ack)
        assert "not an eventfd" in _reason(bad.say(proto.encode(proto.AddRing(0, 0, 0, 4, True)), write_end))
        running.wait(lambda: running.server.counters["failed:bad_fd"] == 1, "bad_fd")
        _still_flows(good, conn)
    finally:
        bad.close()
        region.close()
        os.close(read_end)
        os.close(write_end)
        good.close()


def test_bad_descriptor_drops_one_frame_counted(running: Running) -> None:
    good, conn = _streaming(running)
    try:
        ring = good.c2s[0]
        head = ring.head
        ring.write_desc(head, 0, 0, 4096, good.regions[0].size - 10)  # runs past the end of the region
        ring.head = head + 1
        assert good.send(b"after")
        frame = _recv(conn)
        assert bytes(frame.data) == b"after"  # type: ignore[attr-defined]
        frame.release()  # type: ignore[attr-defined]
        assert conn.counters.drops["bad_descriptor"] == 1  # type: ignore[attr-defined]
        _still_flows(good, conn)
    finally:
        good.close()


def test_connection_bound(tmp_path: Path) -> None:
    run = Running(tmp_path / "b.sock", MemifConfig(timeout=2.0), max_connections=1)
    try:
        first = MemifClient(str(run.path)).connect()
        with pytest.raises(MemifError, match="closed"):
            MemifClient(str(run.path), MemifConfig(timeout=2.0)).connect()
        assert run.server.counters["refused_full"] == 1 and first.connected
        first.close()
    finally:
        run.close()


# --- the proxy hop: forwarding by reference -------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_proxy_hop_forwards_by_reference(tmp_path: Path, native: bool) -> None:
    from msm.sdk.memif_fast import forward, native_reason

    if native and native_reason() is not None:
        pytest.skip(f"the C fast path is not built here: {native_reason()}")
    receiver = Running(tmp_path / "receiver.sock", MemifConfig(native=native))
    proxy = Running(tmp_path / "proxy.sock", MemifConfig(native=native))
    sender = out = None
    try:
        sender = MemifClient(str(proxy.path), MemifConfig(buffer_size=FRAME, log2_ring_size=3)).connect()
        inbound = proxy.connection()
        src = inbound.regions[0]  # type: ignore[attr-defined]
        out = MemifClient(str(receiver.path), MemifConfig(buffer_size=64, log2_ring_size=4, native=native,
                                                          extra_regions=[(src.fd, src.size)])).connect()
        final = receiver.connection()
        rx, tx = inbound.rx_queues[0], out.tx_queues[0]  # type: ignore[attr-defined]
        for seq in range(12):  # more frames than the sender's ring has buffers: slots must come back
            frame = _payload(FRAME, seq + 1)
            assert sender.send(frame)
            deadline = time.monotonic() + 5
            while forward(rx, tx, 1) == 0:
                assert time.monotonic() < deadline, "nothing to forward"
                time.sleep(0.001)
            got = _recv(final)
            assert got.region == 1 and got.length == FRAME  # type: ignore[attr-defined]
            assert os.fstat(final.regions[1].fd).st_ino == os.fstat(sender.regions[0].fd).st_ino  # type: ignore
            assert bytes(got.data) == frame  # type: ignore[attr-defined]
            got.release()  # type: ignore[attr-defined]
            assert tx.consumed() == tx.ring.head
            rx.release(rx.next_counter)  # the receiver is done: the sender's buffer is free again
        assert sender.counters.tx_packets == final.counters.rx_packets == 12  # type: ignore[attr-defined]
    finally:
        for client in (sender, out):
            if client is not None:
                client.close()
        proxy.close()
        receiver.close()


def test_authorize_sees_peer_credentials_and_refuses(tmp_path: Path) -> None:
    seen: list[tuple[PeerCred, int]] = []

    def policy(peer: PeerCred, init: proto.Init) -> str | None:
        seen.append((peer, init.id))
        return None if init.id == 1 else "interface id 2 is not yours"

    run = Running(tmp_path / "a.sock", MemifConfig(timeout=1.0), authorize=policy)
    try:
        with pytest.raises(MemifError, match="not yours"):
            MemifClient(str(run.path), MemifConfig(interface_id=2)).connect()
        ok = MemifClient(str(run.path), MemifConfig(interface_id=1)).connect()
        assert seen == [(PeerCred(os.getpid(), os.getuid(), os.getgid()), 2),
                        (PeerCred(os.getpid(), os.getuid(), os.getgid()), 1)]
        assert run.connection().interface_id == 1  # type: ignore[attr-defined]
        ok.close()
        assert run.server.counters["failed:refused"] == 1
    finally:
        run.close()


def test_connect_to_nothing_is_unavailable(tmp_path: Path) -> None:
    from msm.sdk.errors import Unavailable

    with pytest.raises(Unavailable, match="cannot connect"):
        MemifClient(str(tmp_path / "nobody.sock")).connect()


def test_asyncio_drives_the_server_through_its_fileno(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "aio.sock"

    async def main() -> bytes:
        server = MemifServer(str(path), MemifConfig(timeout=2.0))
        loop = asyncio.get_running_loop()
        connected: asyncio.Future[object] = loop.create_future()

        def ready() -> None:
            for conn in server.poll(0):
                if not connected.done():
                    connected.set_result(conn)

        loop.add_reader(server.fileno(), ready)
        try:
            client_task = loop.run_in_executor(None, lambda: MemifClient(str(path)).connect())
            conn = await asyncio.wait_for(connected, 5)
            client = await client_task
            got = loop.create_future()
            loop.add_reader(conn.rx_fileno(), lambda: got.done() or got.set_result(conn.recv()))  # type: ignore
            assert client.send(b"through the event loop")
            frame = await asyncio.wait_for(got, 5)
            data = bytes(frame.data)  # type: ignore[attr-defined]
            frame.release()  # type: ignore[attr-defined]
            loop.remove_reader(conn.rx_fileno())  # type: ignore[attr-defined]
            client.close()
            return data
        finally:
            loop.remove_reader(server.fileno())
            server.close()

    assert asyncio.run(main()) == b"through the event loop"


def test_several_queues_are_independent(running: Running) -> None:
    client = MemifClient(str(running.path), MemifConfig(queues=3, log2_ring_size=4)).connect()
    try:
        conn = running.connection()
        assert len(client.tx_queues) == len(conn.rx_queues) == 3  # type: ignore[attr-defined]
        for q in (2, 0, 1):
            assert client.send(f"queue {q}".encode(), queue=q)
        time.sleep(0.05)
        for q in range(3):
            frame = conn.recv(q)  # type: ignore[attr-defined]
            assert frame is not None and conn.recv(q) is None  # type: ignore[attr-defined]
            assert bytes(frame.data) == f"queue {q}".encode()  # type: ignore[attr-defined]
            frame.release()  # type: ignore[attr-defined]
    finally:
        client.close()


def test_send_copies_a_chained_frame(running: Running) -> None:
    small = MemifClient(str(running.path), MemifConfig(buffer_size=1000, log2_ring_size=6)).connect()
    try:
        conn = running.connection()
        data = _payload(12_345, 7)
        assert conn.send(data)  # type: ignore[attr-defined]
        frame = _recv(small)
        assert len(frame.views()) == 13 and _joined(frame) == data  # type: ignore[attr-defined]
        assert small.send(frame.views())  # type: ignore[attr-defined]  # the views, copied in order
        frame.release()  # type: ignore[attr-defined]
        back = _recv(conn)
        assert len(back.views()) == 13 and _joined(back) == data  # type: ignore[attr-defined]
    finally:
        small.close()


def test_server_sending_into_bad_client_buffers_is_counted(running: Running) -> None:
    client = MemifClient(str(running.path), MemifConfig(buffer_size=2048, log2_ring_size=4)).connect()
    try:
        conn = running.connection()
        ring = client.s2c[0]  # the client offers buffers here; a hostile one can name anything
        for slot in range(ring.size):
            ring.write_desc(slot, 0, 7, 2048, 0)  # region 7 does not exist
        assert conn.alloc(100) is None  # type: ignore[attr-defined]
        assert conn.counters.errors["descriptor_outside_region"] == 1  # type: ignore[attr-defined]
        ring.head = (ring.tail + 1000) & 0xFFFF  # more slots than the ring has
        assert conn.alloc(100) is None  # type: ignore[attr-defined]
        assert conn.counters.errors["ring_counter_out_of_range"] == 1  # type: ignore[attr-defined]
        _still_flows(client, conn, 5)  # the other direction is unaffected
    finally:
        client.close()


@pytest.mark.parametrize("native", [True, False])
def test_server_names_a_region_the_client_mapped_read_only(running: Running, native: bool) -> None:
    """The SDK's zero-copy hop: the server writes descriptors naming region 1, a memfd the client mapped
    read-only after the handshake (set_region); the client reads it in place, a bad offset is dropped."""
    client = MemifClient(str(running.path), MemifConfig(buffer_size=4096, log2_ring_size=3, native=native)).connect()
    server = running.connection()
    shared = Region.create(1 << 16, final=False)
    shared.mem[8192:8192 + 5] = b"hello"
    fd = os.dup(shared.fd)
    client.set_region(1, Region.attach(fd, shared.size, index=1, writable=False))
    queue = server.tx_queues[0]  # type: ignore[attr-defined]
    assert queue.send_foreign(1, 8192, 5) and queue.send_foreign(1, 1 << 16, 5)  # the second: outside region 1
    frame = _recv(client)
    assert frame.region == 1 and bytes(frame.data) == b"hello" and frame.data.readonly  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        frame.data[0:1] = b"x"  # type: ignore[attr-defined]
    before = queue.returned()
    frame.release()  # type: ignore[attr-defined]
    assert client.recv() is None and client.counters.drops["bad_descriptor"] == 1
    assert (queue.returned() - before) & 0xFFFF >= 1  # the frame's slot is given back (the C walker keeps a
    # dropped frame's slot until the next frame's release; the Python one gives it back at once)
    with pytest.raises(MemifError):
        client.set_region(3, Region.create(4096))  # indices stay contiguous: 2 is next
    client.close()
    shared.close()


def test_who_is_cut_off_for_holding_up_a_sender_and_which_index_a_new_sender_gets() -> None:
    """memif_share's policy without processes: a stopped holder of a starved sender's oldest frame is cut
    off, a slow one only demoted; a sender's region is offered at an index no held frame names."""
    from collections import deque

    from msm.rtp_proxy.media import memif_share as ms

    class Sender:
        share = None

        def settle(self) -> None:
            pass

    region = ms.SharedRegion("c1.1", -1, 1 << 20, ms.NO_REGION.layout)
    frames = deque(ms.SharedFrame(Sender(), region, i * 4096, 4096, i + 1) for i in range(16))
    stopped, slow = ms.Holds(), ms.Holds()
    for holds in (stopped, slow):
        holds.hold(1, 1, frames[0])
    now = frames[0].born + int(0.5e9)
    stopped.progress_ns, slow.progress_ns = now - int(1e9), now - int(0.01e9)  # slow gave one back 10 ms ago
    assert ms.judge(deque(list(frames)[:8]), 16, [("stopped", stopped), ("slow", slow)], now) == []  # not starved
    assert ms.judge(frames, 16, [("stopped", stopped), ("slow", slow)], now) == ["stopped"]
    assert ms.judge(frames, 16, [("slow", slow)], now) == [] and slow.demoted_until_ns > now
    holds = ms.Holds()
    assert holds.offer_index("c1.1") == 1 and holds.accept(1, "c1.1") and holds.offer_index("c1.1") is None
    holds.hold(1, 1, frames[1])  # a frame of the first sender is still held: the next one goes to index 2
    assert holds.offer_index("c3.2") == 2 and not holds.accept(2, "c9.9") and holds.accept(2, "c3.2")
    holds.hold(2, 2, frames[2])
    assert holds.offer_index("c5.3") is None and holds.want_retry  # both indices named by held frames
    holds.reap(1)  # the app gave back the frame at index 1 (its slot 0), not the one at index 2
    assert holds.offer_index("c5.3") == 1 and holds.maps == {2: "c3.2"} and len(holds.held) == 1
