"""Zero copy between apps on one node, through the proxy's own media agent (see test_sdk for the agent).

The apps here are this test process (two or three mesh.Clients), so it can look at what it mapped:

- a receiver that joined before its sender reads every frame where the sender wrote it: its frame memory
  is the sender's memfd (same st_dev/st_ino), the proxy counts no payload byte copied, and neither
  the mapping (nor one made writable with mprotect), the fd, nor the fd reopened through /proc can be
  written; a receiver with another frame
  layout takes copies (the fallback, counted);
- a receiver that stops reading and holds its frames is disconnected once the sender is down to its last
  slots: the sender and the other receiver go on, every frame byte-exact;
- a sender that goes is unmapped by its receiver (its memory can be freed), and when it comes back (a new
  region) it is shared again;
- frames from a source that is not a memif sender on this node (an ST 2110 ingress) are copied.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msm.sdk import mesh
from msm.sdk.errors import TimedOut, Unavailable
from tests.e2e.test_sdk import Agent

SIZE = 5_184_000  # 1080p 10-bit 4:2:2


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    """One agent for the module (each test its own group): starting one costs a second and a half."""
    with tempfile.TemporaryDirectory(prefix="msm-zc-") as tmp:
        running = Agent(Path(tmp))
        try:
            yield running
        finally:
            running.stop()


def _config(urn: str = "urn:msm:test:zc", **extra: Any) -> dict[str, Any]:
    return {"bufferQueueCapacity": 16, "maxMetadataSize": 16,
            "connection": {"multipointGroup": {"urn": urn}},
            "payload": {"video": {"width": 1920, "height": 1080, "pixelFormat": "yuv422p10rfc4175"}}, **extra}


def _stats(client: mesh.Client, conn: mesh.Connection) -> dict[str, Any]:
    return next(c for c in client.list_connections() if c["connection"] == conn.id)


def _mapped(client: mesh.Client, rx: mesh.RxConnection, tx: mesh.TxConnection | tuple[int, int],
            mapped: bool = True) -> None:
    """Waits until ``rx``'s app maps ``tx``'s region (or, ``mapped=False``, no longer maps the region of that
    inode). The app maps and answers when it services its agent socket; the list request after the answer,
    on the same socket, is served after it, so the proxy has taken it by then."""
    inode = tx if isinstance(tx, tuple) else _inode(tx.memif.regions[0].fd)
    deadline = time.monotonic() + 5
    while any(_inode(r.fd) == inode for r in rx.memif.regions[1:]) != mapped:
        assert time.monotonic() < deadline, _stats(client, rx)
        client.service()
        time.sleep(0.01)
    _stats(client, rx)


def _send(tx: mesh.TxConnection, i: int, timeout: float = 2.0) -> None:
    buf = tx.get_buffer(timeout=timeout)
    buf.payload[:8] = buf.payload[SIZE - 8:SIZE] = i.to_bytes(8, "little")
    buf.payload[4096:8192] = bytes([i & 0xFF]) * 4096
    buf.payload_len, buf.seq, buf.metadata = SIZE, i, f"m{i}".encode()
    tx.put_buffer(buf)


def _recv(rx: mesh.RxConnection, i: int) -> bool:
    """Reads frame ``i`` byte-exact (the parts that differ per frame); whether it came by reference."""
    buf = rx.get_buffer(timeout=5)
    stamp = i.to_bytes(8, "little")
    assert (buf.seq, buf.metadata, buf.payload_len) == (i, f"m{i}".encode(), SIZE)
    assert bytes(buf.payload[:8]) == bytes(buf.payload[SIZE - 8:]) == stamp
    assert bytes(buf.payload[4096:8192]) == bytes([i & 0xFF]) * 4096
    shared = buf.by_reference
    rx.put_buffer(buf)
    return shared


def _mprotect_writable(fd: int, size: int) -> int:
    """Maps ``fd`` read-only and shared through libc, then asks mprotect for write access: the errno (0 if
    it was granted)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        return 0 if libc.mprotect(addr, size, mmap.PROT_READ | mmap.PROT_WRITE) == 0 else ctypes.get_errno()
    finally:
        libc.munmap(addr, size)


def _inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_a_receiver_reads_the_senders_memfd_and_cannot_write_it(agent: Agent) -> None:
    proxy = f"unix:{agent.sock}"
    with mesh.Client(proxy) as rc, mesh.Client(proxy) as tc:
        rx = rc.create_rx_connection(_config())                           # before the sender exists
        other = rc.create_rx_connection(_config(maxMetadataSize=100))     # another layout: copies
        tx = tc.create_tx_connection(_config())
        _mapped(rc, rx, tx)
        for i in range(20):
            _send(tx, i)
            assert _recv(rx, i) and not _recv(other, i)
        zero, copied = _stats(rc, rx), _stats(rc, other)
        assert zero["by_reference"] == 20 and zero["copied"] == 0 and zero["copied_bytes"] == 0, zero
        assert copied["copied"] == 20 and copied["copied_bytes"] == 20 * SIZE, copied
        shared = rx.memif.regions[1]
        assert _inode(shared.fd) == _inode(tx.memif.regions[0].fd)  # the receiver's frames ARE the sender's memfd
        # A receiver that tries to write what its siblings read: every way fails on the seal.
        with pytest.raises(TypeError):
            shared.mem[0:1] = b"x"                                              # its mapping is read-only
        with pytest.raises(PermissionError):
            mmap.mmap(shared.fd, shared.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(OSError) as err:
            os.pwrite(shared.fd, b"x", 0)
        assert err.value.errno in (errno.EPERM, errno.EBADF)
        assert _mprotect_writable(shared.fd, shared.size) == errno.EACCES  # a read-only mapping made writable
        reopened = os.open(f"/proc/self/fd/{shared.fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                mmap.mmap(reopened, shared.size, mmap.MAP_SHARED, mmap.PROT_WRITE)
            with pytest.raises(PermissionError):
                os.pwrite(reopened, b"x", 0)
        finally:
            os.close(reopened)


def test_a_receiver_that_stops_is_cut_off_and_nobody_waits_for_it(agent: Agent) -> None:
    proxy = f"unix:{agent.sock}"
    with mesh.Client(proxy) as rc, mesh.Client(proxy) as sc, mesh.Client(proxy) as tc:
        urn = "urn:msm:test:zc-stuck"
        rx = rc.create_rx_connection(_config(urn))
        stuck = sc.create_rx_connection(_config(urn))
        tx = tc.create_tx_connection(_config(urn))
        _mapped(rc, rx, tx)
        _mapped(sc, stuck, tx)
        _send(tx, 0)
        assert _recv(rx, 0)
        held = stuck.get_buffer(timeout=5)  # and never given back; nor is anything read after it
        assert held.by_reference
        started, waited = time.monotonic(), 0.0
        for i in range(1, 60):
            before = time.monotonic()
            _send(tx, i)  # the sender's ring is 16: past that it would wait on the stuck receiver
            waited = max(waited, time.monotonic() - before)
            assert _recv(rx, i)
        assert waited < 1.5 and time.monotonic() - started < 10, waited  # 0.1 s held at most, plus a loaded host
        stuck_stats = _stats(sc, stuck)
        assert stuck_stats["drops"].get("held_too_long") == 1 and not stuck_stats["attached"], stuck_stats
        assert _stats(rc, rx)["by_reference"] == 60
        assert len(bytes(held.payload)) == SIZE  # still mapped after the cut: reading it never faults
        stuck.put_buffer(held)
        with pytest.raises(Unavailable, match="last free slots"):
            stuck.get_buffer(timeout=1)


def test_a_sender_that_comes_back_is_shared_again(agent: Agent) -> None:
    proxy = f"unix:{agent.sock}"
    with mesh.Client(proxy) as rc, mesh.Client(proxy) as tc:
        urn = "urn:msm:test:zc-again"
        rx = rc.create_rx_connection(_config(urn))
        first = tc.create_tx_connection(_config(urn))
        _mapped(rc, rx, first)
        for i in range(5):
            _send(first, i)
            assert _recv(rx, i)
        old = _inode(first.memif.regions[0].fd)
        first.close()
        _mapped(rc, rx, old, mapped=False)  # the gone sender's region is unmapped (its memory can go)
        second = tc.create_tx_connection(_config(urn))  # a new memfd, offered again
        _mapped(rc, rx, second)
        for i in range(5, 10):
            _send(second, i)
            assert _recv(rx, i)
        assert old not in {_inode(r.fd) for r in rx.memif.regions}
        stats = _stats(rc, rx)
        assert stats["by_reference"] == 10 and stats["copied_bytes"] == 0 and stats["shared_regions"] == 1, stats


def test_frames_from_an_st2110_ingress_are_copied(agent: Agent) -> None:
    """A source that is not a memif sender on this node (here ST 2110-20 over UDP, from another app's
    egress) keeps the copy path: the receiver's frames are in its own memory, counted as copied."""
    port = 21000 + os.getpid() % 9000
    st2110 = {"st2110": {"transport": "st2110-20", "ipAddr": "127.0.0.1", "port": port,
                         "transportPixelFormat": "yuv422p10rfc4175"}}
    proxy = f"unix:{agent.sock}"
    with mesh.Client(proxy) as rc, mesh.Client(proxy) as tc:
        rx = rc.create_rx_connection(_config(connection=st2110, maxMetadataSize=0))
        tx = tc.create_tx_connection(_config(connection=st2110, maxMetadataSize=0))
        for i in range(10):  # 10 frames fit the receiver's ring of 16: it reads them after
            buf = tx.get_buffer(timeout=2)
            buf.payload[:8] = i.to_bytes(8, "little")
            buf.payload_len = SIZE
            tx.put_buffer(buf)
            time.sleep(0.05)
        got = 0
        while True:  # UDP on a loaded host may lose some: what arrives is counted
            try:
                frame = rx.get_buffer(timeout=1.0)
            except TimedOut:
                break
            assert not frame.by_reference and len(frame.payload) == SIZE
            got += 1
            rx.put_buffer(frame)
        stats = _stats(rc, rx)
        assert got >= 1 and stats["by_reference"] == 0 and stats["copied"] == stats["frames"] == got, stats
