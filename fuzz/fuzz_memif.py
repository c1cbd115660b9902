"""Fuzz the memif control protocol: the message codec and the server's handshake state machine.

The first byte picks the mode. Even: the rest is one message for ``decode``; a
message that decodes must encode and decode back to itself. 3 (mod 4): the rest
is a ring's head counter and 16 descriptors a peer wrote; the server's receive
queue must make the same frames and drops of them through the C walker and the
Python one, and never raise. 1 (mod 4): the rest is
cut into 128-byte messages fed, in order, to a fresh server connection
(``ServerConnection.handle``) over a socketpair; ADD_REGION and ADD_RING get a
sealed 64 KiB memfd (a ring cookie on every cache line) and an eventfd so that
the fuzzer can walk past them into ring checks and a successful CONNECT. Only
:class:`~msm.sdk.memif_proto.MemifError` is expected; nothing may leak an fd
(checked by counting /proc/self/fd).
"""

from __future__ import annotations

import os
import socket

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.memif import MemifConfig, PeerCred, ServerConnection
    from msm.sdk.memif_fast import native_reason
    from msm.sdk.memif_proto import COOKIE, MSG_SIZE, AddRegion, AddRing, MemifError, decode, encode
    from msm.sdk.memif_ring import Counters, Region, Ring, RxQueue

NAME = "memif"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
REGION = Region.create(1 << 16)
for _line in range(0, 1 << 16, 64):  # a ring header's cookie at every cache line, so CONNECT can succeed
    REGION.mem[_line:_line + 4] = COOKIE.to_bytes(4, "little")
EVENTFD = os.eventfd(0, os.EFD_NONBLOCK)
CONFIG = MemifConfig(name="fuzz")
RING_REGION = Region.create(4096)  # one ring of 16 slots at 0, the rest buffers
SMALL_REGION = Region.create(1024)
RING = Ring(RING_REGION, 0, 4, EVENTFD, c2s=True)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(256):
            pass
    except BlockingIOError:
        pass


def _handshake(data: bytes) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    ours.setblocking(False)
    conn = ServerConnection(ours, CONFIG, PeerCred(0, 0, 0), None)
    try:
        for start in range(0, min(len(data), MSG_SIZE * 16), MSG_SIZE):
            try:
                msg = decode(data[start:start + MSG_SIZE])
                fds = [os.dup(REGION.fd if isinstance(msg, AddRegion) else EVENTFD)] if isinstance(
                    msg, (AddRegion, AddRing)) else []
                conn.handle(msg, fds)
            except MemifError:
                break
            _drain(theirs)
    finally:
        conn.close("fuzz", notify=False)
        theirs.close()


def _walk(native: bool, descs: bytes, head: int) -> tuple[list[tuple[int, int, int, list[int]]], dict[str, int]]:
    """What a server's receive queue makes of ``descs`` published up to ``head``, through C or Python."""
    RING.init()
    RING_REGION.mem[128:128 + len(descs)] = descs
    counters = Counters()
    queue = RxQueue(RING, [RING_REGION, SMALL_REGION], counters, client=False)
    queue.start(native)
    RING.head = head
    frames = []
    try:
        for _ in range(20):
            frame = queue.recv()
            if frame is None:
                break
            frames.append((frame.length, frame.region, frame.offset, [len(v) for v in frame.views()]))
            if len(frames) % 3 == 0:
                frame.release()
    finally:
        queue.close()
    return frames, dict(counters.drops)


def _rings(data: bytes) -> None:
    """Descriptors a peer wrote: C and Python must give the same frames and drops, never an error."""
    descs = data[2:2 + 256].ljust(256, b"\0")
    head = int.from_bytes(data[:2].ljust(2, b"\0"), "little")
    python = _walk(False, descs, head)
    if native_reason() is None:
        fast = _walk(True, descs, head)
        if fast != python:
            raise AssertionError(f"C ring walk {fast} differs from Python's {python}")


def test_one(data: bytes) -> None:
    if not data:
        return
    try:
        if data[0] % 4 == 3:
            _rings(data[1:])
            return
        if data[0] % 2 == 0:
            try:
                msg = decode(data[1:])
            except MemifError:
                return
            again = decode(encode(msg))
            if again != msg:
                raise AssertionError(f"round trip changed {msg!r} into {again!r}")
            return
        before = len(os.listdir("/proc/self/fd"))
        _handshake(data[1:])
        after = len(os.listdir("/proc/self/fd"))
        if after != before:
            raise AssertionError(f"handshake leaked {after - before} fds")
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, []))
