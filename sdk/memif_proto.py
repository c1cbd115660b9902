"""The memif control protocol, version 2.0 (libmemif's and DPDK's ``net_memif``): encode and decode.

Every control message is exactly 128 bytes on an AF_UNIX SOCK_SEQPACKET socket:
a little-endian ``u16`` type at offset 0 and the packed body right after it. The
client (libmemif's "slave") owns the shared memory: it sends its regions (a memfd
with ADD_REGION) and rings (an eventfd with ADD_RING); the server ("master")
answers each with ACK. The flow::

    server                         client
    HELLO  ------------------------>
           <------------------------ INIT          (id, mode, secret, name)
    ACK    ------------------------>
           <------------------------ ADD_REGION    (+ memfd)        } repeated
    ACK    ------------------------>
           <------------------------ ADD_RING      (+ eventfd)      } repeated
    ACK    ------------------------>
           <------------------------ CONNECT
    CONNECTED --------------------->
    DISCONNECT (either side, any time, with a reason)

This module is pure (no sockets, no fds): :func:`decode` checks a message strictly
and raises :class:`MemifError` with a one-line reason; :func:`encode` is its inverse.
The ring and descriptor layout (shared memory, not messages) is described here too
so both sides of the engine agree on it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

from msm.sdk.errors import ProtocolError

COOKIE = 0x3E31F20  # ring header magic, protocol 2.0
VERSION = 0x0200  # major 2, minor 0
MSG_SIZE = 128
NAME_SIZE = 32
SECRET_SIZE = 24
REASON_SIZE = 96
MAX_LOG2_RING_SIZE = 15  # head/tail are free-running u16 counters: a ring holds at most 2**15 slots

# Message types.
MSG_ACK = 1
MSG_HELLO = 2
MSG_INIT = 3
MSG_ADD_REGION = 4
MSG_ADD_RING = 5
MSG_CONNECT = 6
MSG_CONNECTED = 7
MSG_DISCONNECT = 8

ADD_RING_FLAG_C2S = 1  # MEMIF_MSG_ADD_RING_FLAG_S2M: the ring carries client -> server
MODE_ETHERNET, MODE_IP, MODE_PUNT_INJECT = 0, 1, 2

# Shared-memory layout (little endian): a ring is a 128-byte header, then 2**log2 descriptors.
RING_HEADER_SIZE = 128
RING_COOKIE_OFFSET = 0  # u32
RING_FLAGS_OFFSET = 4  # u16; bit 0 = MEMIF_RING_FLAG_MASK_INT (the receiver polls: do not signal)
RING_HEAD_OFFSET = 6  # u16, written by the client only (C2S: frames produced; S2C: buffers given)
RING_TAIL_OFFSET = 64  # u16, written by the server only (C2S: frames consumed; S2C: frames produced)
RING_FLAG_MASK_INT = 1
DESC_SIZE = 16
DESC = struct.Struct("<HHIII")  # flags, region, length, offset, metadata
DESC_FLAG_NEXT = 1

_HELLO = struct.Struct("<32sHHHHHB")
_INIT = struct.Struct("<HIB24s32s")
_ADD_REGION = struct.Struct("<HQ")
_ADD_RING = struct.Struct("<HHHIBH")
_NAME = struct.Struct("<32s")
_DISCONNECT = struct.Struct("<I96s")
_TYPE = struct.Struct("<H")


class MemifError(ProtocolError):
    """A memif peer broke the protocol (bad message, bad region or ring); ``reason`` is one line.

    ``key`` is a short fixed name for counting (``malformed_message``, ``short_region``...).
    """

    def __init__(self, message: str = "", *, key: str = "malformed_message") -> None:
        super().__init__(message)
        self.key = key


def ring_bytes(log2_ring_size: int) -> int:
    """Bytes one ring of ``2**log2_ring_size`` descriptors takes in its region."""
    return RING_HEADER_SIZE + DESC_SIZE * (1 << log2_ring_size)


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Hello:
    name: str = "msm"
    min_version: int = VERSION
    max_version: int = VERSION
    max_region: int = 0  # the highest region index accepted
    max_c2s_ring: int = 0  # the highest ring index accepted per direction
    max_s2c_ring: int = 0
    max_log2_ring_size: int = 14


@dataclass(frozen=True)
class Init:
    version: int = VERSION
    id: int = 0
    mode: int = MODE_ETHERNET
    secret: bytes = b""
    name: str = "msm"


@dataclass(frozen=True)
class AddRegion:
    index: int
    size: int


@dataclass(frozen=True)
class AddRing:
    index: int
    region: int
    offset: int
    log2_ring_size: int
    c2s: bool
    private_hdr_size: int = 0


@dataclass(frozen=True)
class Connect:
    if_name: str = "msm"


@dataclass(frozen=True)
class Connected:
    if_name: str = "msm"


@dataclass(frozen=True)
class Disconnect:
    code: int = 0
    reason: str = ""


Message: TypeAlias = Ack | Hello | Init | AddRegion | AddRing | Connect | Connected | Disconnect


def _text(raw: bytes, field: str) -> str:
    """A NUL-padded C string: printable ASCII up to the first NUL, else MemifError."""
    text = raw.split(b"\0", 1)[0]
    if any(c < 0x20 or c > 0x7E for c in text):
        raise MemifError(f"memif: {field} is not printable ASCII")
    return text.decode("ascii")


def _pack_text(text: str, size: int, field: str) -> bytes:
    if not text.isascii() or len(text) >= size:
        raise MemifError(f"memif: {field} must be ASCII shorter than {size} bytes")
    return text.encode("ascii")


def encode(msg: Message) -> bytes:
    """The 128 bytes of ``msg`` (MemifError if a field does not fit its wire type)."""
    try:
        body = _encode_body(msg)
    except struct.error as exc:
        raise MemifError(f"memif: {type(msg).__name__} field out of range ({exc})") from None
    return body.ljust(MSG_SIZE, b"\0")


def _encode_body(msg: Message) -> bytes:
    if isinstance(msg, Ack):
        return _TYPE.pack(MSG_ACK)
    if isinstance(msg, Hello):
        return _TYPE.pack(MSG_HELLO) + _HELLO.pack(
            _pack_text(msg.name, NAME_SIZE, "name"), msg.min_version, msg.max_version, msg.max_region,
            msg.max_c2s_ring, msg.max_s2c_ring, msg.max_log2_ring_size)
    if isinstance(msg, Init):
        if len(msg.secret) > SECRET_SIZE or b"\0" in msg.secret:
            raise MemifError(f"memif: secret must be at most {SECRET_SIZE} bytes without NUL")
        return _TYPE.pack(MSG_INIT) + _INIT.pack(msg.version, msg.id, msg.mode, msg.secret,
                                                  _pack_text(msg.name, NAME_SIZE, "name"))
    if isinstance(msg, AddRegion):
        return _TYPE.pack(MSG_ADD_REGION) + _ADD_REGION.pack(msg.index, msg.size)
    if isinstance(msg, AddRing):
        return _TYPE.pack(MSG_ADD_RING) + _ADD_RING.pack(
            ADD_RING_FLAG_C2S if msg.c2s else 0, msg.index, msg.region, msg.offset, msg.log2_ring_size,
            msg.private_hdr_size)
    if isinstance(msg, Connect):
        return _TYPE.pack(MSG_CONNECT) + _NAME.pack(_pack_text(msg.if_name, NAME_SIZE, "interface name"))
    if isinstance(msg, Connected):
        return _TYPE.pack(MSG_CONNECTED) + _NAME.pack(_pack_text(msg.if_name, NAME_SIZE, "interface name"))
    reason = msg.reason.encode("ascii", errors="replace")[:REASON_SIZE - 1]
    return _TYPE.pack(MSG_DISCONNECT) + _DISCONNECT.pack(msg.code, reason)


def decode(data: bytes) -> Message:
    """The message in ``data`` (exactly 128 bytes), checked; MemifError says what is wrong."""
    if len(data) != MSG_SIZE:
        raise MemifError(f"memif: control message of {len(data)} bytes, expected {MSG_SIZE}")
    (kind,) = _TYPE.unpack_from(data)
    body = memoryview(data)[2:]
    if kind == MSG_ACK:
        return Ack()
    if kind == MSG_HELLO:
        return _decode_hello(body)
    if kind == MSG_INIT:
        version, ident, mode, secret, name = _INIT.unpack_from(body)
        if mode > MODE_PUNT_INJECT:
            raise MemifError(f"memif: INIT with unknown interface mode {mode}")
        secret = secret.split(b"\0", 1)[0]
        return Init(version, ident, mode, secret, _text(name, "INIT name"))
    if kind == MSG_ADD_REGION:
        index, size = _ADD_REGION.unpack_from(body)
        if size == 0:
            raise MemifError(f"memif: ADD_REGION {index} has size 0")
        return AddRegion(index, size)
    if kind == MSG_ADD_RING:
        return _decode_add_ring(body)
    if kind == MSG_CONNECT:
        return Connect(_text(_NAME.unpack_from(body)[0], "CONNECT interface name"))
    if kind == MSG_CONNECTED:
        return Connected(_text(_NAME.unpack_from(body)[0], "CONNECTED interface name"))
    if kind == MSG_DISCONNECT:
        code, reason = _DISCONNECT.unpack_from(body)
        text = reason.split(b"\0", 1)[0][:REASON_SIZE - 1].decode("ascii", errors="replace")
        return Disconnect(code, "".join(c if " " <= c <= "~" else "?" for c in text))
    raise MemifError(f"memif: unknown control message type {kind}")


def _decode_hello(body: memoryview) -> Hello:
    name, lo, hi, max_region, max_c2s, max_s2c, max_log2 = _HELLO.unpack_from(body)
    if lo > hi:
        raise MemifError(f"memif: HELLO min version {lo:#06x} above max version {hi:#06x}")
    if max_log2 == 0 or max_log2 > MAX_LOG2_RING_SIZE:
        raise MemifError(f"memif: HELLO max log2 ring size {max_log2} outside 1..{MAX_LOG2_RING_SIZE}")
    return Hello(_text(name, "HELLO name"), lo, hi, max_region, max_c2s, max_s2c, max_log2)


def _decode_add_ring(body: memoryview) -> AddRing:
    flags, index, region, offset, log2, private = _ADD_RING.unpack_from(body)
    if flags & ~ADD_RING_FLAG_C2S:
        raise MemifError(f"memif: ADD_RING with unknown flags {flags:#x}")
    if log2 == 0 or log2 > MAX_LOG2_RING_SIZE:
        raise MemifError(f"memif: ADD_RING {index} log2 ring size {log2} outside 1..{MAX_LOG2_RING_SIZE}")
    if private:
        raise MemifError(f"memif: ADD_RING {index} asks for a private header of {private} bytes (unsupported)")
    return AddRing(index, region, offset, log2, bool(flags & ADD_RING_FLAG_C2S), private)
