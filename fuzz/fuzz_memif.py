"""Fuzz the memif control protocol: the message codec and the server's handshake state machine.

The first byte picks the mode. Even: the rest is one message for ``decode``; a
message that decodes must encode and decode back to itself. Odd: the rest is
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
    from msm.sdk.memif_proto import COOKIE, MSG_SIZE, AddRegion, AddRing, MemifError, decode, encode
    from msm.sdk.memif_ring import Region

NAME = "memif"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
REGION = Region.create(1 << 16)
for _line in range(0, 1 << 16, 64):  # a ring header's cookie at every cache line, so CONNECT can succeed
    REGION.mem[_line:_line + 4] = COOKIE.to_bytes(4, "little")
EVENTFD = os.eventfd(0, os.EFD_NONBLOCK)
CONFIG = MemifConfig(name="fuzz")


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


def test_one(data: bytes) -> None:
    if not data:
        return
    try:
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
