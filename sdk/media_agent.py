"""The media agent protocol between an app's SDK and its node's proxy, and the frame layout over memif.

**The agent socket.** The proxy listens on ``<media dir>/proxy.sock``, a Unix
``SOCK_SEQPACKET`` socket (local only; its directory's mode and the socket's
0660 decide who may connect, and the proxy logs and limits by the peer's
SO_PEERCRED). Each message is one JSON object in one packet of at most
:data:`MAX_MESSAGE` bytes. The app speaks first::

    app   {"op": "hello", "versions": [1], "app": "name"}
    proxy {"ok": true, "op": "hello", "version": 1, "node": "node-a", "max_connections": 16}
    app   {"op": "create", "id": 1, "direction": "tx", "config": {...MCM connection JSON...}}
    proxy {"ok": true, "id": 1, "connection": "c1", "memif": {"socket": ".../memif.sock", "interface_id": 7,
           "secret": "<24 random characters>", "buffer_size": 5184128, "log2_ring_size": 4,
           "metadata_size": 64, "payload_size": 5184000}}
    app   {"op": "delete", "id": 2, "connection": "c1"}       -> {"ok": true, "id": 2}
    app   {"op": "list", "id": 3}                              -> {"ok": true, "id": 3, "connections": [...]}
    proxy {"ok": false, "id": 1, "status": 409, "error": "SenderBusy", "message": "group ... has a sender"}

A connection lives as long as the app's agent socket stays open: when the app
exits or dies, the proxy removes its connections and their memif interfaces.

Unasked (no ``id``), the proxy may push a sender's region for an rx connection:
the group's local memif sender's memfd, sealed so that nobody can write it
anew, as one fd (SCM_RIGHTS). An app that maps it read-only as memif region
``index`` (1 or 2: the next after those it has) and says so gets that sender's
frames as descriptors naming it (zero copy); one that ignores it gets copies::

    proxy {"op": "region", "connection": "c2", "index": 1, "size": 165894656, "token": "c1.1"}  + fd
    app   {"op": "mapped", "connection": "c2", "index": 1, "token": "c1.1"}     (a notice: no reply)
    proxy {"op": "unmap", "connection": "c2", "index": 1, "token": "c1.1"}      (that sender is gone; no fd)

**A frame in a memif buffer.** Every SDK frame is one memif buffer laid out as
``header (64 bytes) | metadata (metadata_size, rounded up to 64) | payload``; the
payload always starts at :attr:`FrameLayout.payload_offset`, so an app fills it
in place before it knows its metadata, and the frame's memif length is
``payload_offset + payload_len``. The header (little endian)::

    magic u32 'MSF1' | flags u32 (bit 0: incomplete) | seq u32 | reserved u32 |
    timestamp u64 | metadata_len u32 | payload_len u32 | 32 bytes reserved (zero)
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msm.sdk.errors import (
    ConfigError,
    Forbidden,
    MsmError,
    NotFound,
    ProtocolError,
    Refused,
    ResourceExhausted,
    TimedOut,
    Unavailable,
)

__all__ = ["DEFAULT_SOCKET", "FLAG_INCOMPLETE", "HEADER_SIZE", "MAX_MESSAGE", "PROTOCOL_VERSION", "AttachInfo",
           "FrameHeader", "FrameLayout", "SenderBusy", "decode_message", "encode_message", "error_from_reply",
           "error_reply", "pack_header", "resolve_proxy", "user_socket"]

PROTOCOL_VERSION = 1
#: One message: an MCM connection JSON (its reader caps it at 64 KiB, MAX_JSON_BYTES) plus a small
#: envelope. A fixed bound lets each side read a packet into one preallocated size, and a peer
#: cannot make the other hold more than this per message.
MAX_MESSAGE = 64 * 1024 + 1024
DEFAULT_SOCKET = "/run/msm/media/proxy.sock"
HEADER_SIZE = 64
FRAME_MAGIC = 0x3146534D  # b"MSF1" read as a little-endian u32
FLAG_INCOMPLETE = 1
_HEADER = struct.Struct("<IIIIQII32x")


def user_socket() -> Path:
    """Where ``msm up`` puts the agent socket: ``<state dir>/media/proxy.sock``, the state directory being
    ``$MSM_STATE_DIR``, else ``$XDG_STATE_HOME/msm``, else ``~/.local/state/msm``."""
    state = os.environ.get("MSM_STATE_DIR")
    if not state:
        state = str(Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "msm")
    return Path(state) / "media" / "proxy.sock"


def resolve_proxy(proxy: str | None = None) -> str:
    """The agent socket path: ``proxy`` (``unix:<path>`` or a path), else ``MSM_PROXY``, else the node's
    default :data:`DEFAULT_SOCKET` if it exists, else ``msm up``'s :func:`user_socket`."""
    text = proxy if proxy is not None else os.environ.get("MSM_PROXY", "")
    if text:
        path = text[5:] if text.startswith("unix:") else text
        if not path or "://" in text or (":" in text and not text.startswith("unix:")):
            raise ConfigError(f"MSM_PROXY: must be unix:<path of the proxy's agent socket>, got {text!r}")
        return path
    if os.path.exists(DEFAULT_SOCKET):
        return DEFAULT_SOCKET
    return str(user_socket())


def encode_message(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ConfigError(f"agent message of {len(data)} bytes is over the {MAX_MESSAGE}-byte bound")
    return data


def decode_message(data: bytes) -> dict[str, Any]:
    """One message; ProtocolError (one line) if it is not a JSON object within the bound."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"agent message over {MAX_MESSAGE} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"agent message is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"agent message must be a JSON object, got {type(value).__name__}")
    return value


class SenderBusy(Refused):
    """The group already has a sender (the proxy's refusal, passed through to the app)."""

    status = 409


_ERRORS: dict[str, type[MsmError]] = {
    "SenderBusy": SenderBusy, "ConfigError": ConfigError, "NotFound": NotFound, "Forbidden": Forbidden,
    "ResourceExhausted": ResourceExhausted, "TimedOut": TimedOut, "Unavailable": Unavailable,
    "ProtocolError": ProtocolError, "Refused": Refused,
}


def error_reply(exc: MsmError, request_id: object = None) -> dict[str, Any]:
    """The reply that carries ``exc`` to the app: its status, the nearest known kind and its one line."""
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS), "MsmError")
    return {"ok": False, "id": request_id, "status": exc.status, "error": kind,
            "message": exc.reason.splitlines()[0] if exc.reason else kind}


def error_from_reply(reply: dict[str, Any]) -> MsmError:
    """The exception an error reply stands for (``SenderBusy``, ``ConfigError``...), with its one line."""
    cls = _ERRORS.get(str(reply.get("error")), MsmError)
    status = reply.get("status")
    message = str(reply.get("message") or reply.get("error") or "refused")
    return cls(message, status=status if isinstance(status, int) else None)


@dataclass(frozen=True)
class FrameLayout:
    """Where things are in one SDK frame buffer (see the module's docstring)."""

    metadata_size: int  # the connection's maxMetadataSize
    payload_size: int   # the largest payload

    @functools.cached_property  # read per frame: computed once
    def payload_offset(self) -> int:
        return HEADER_SIZE + (self.metadata_size + 63) // 64 * 64

    @functools.cached_property
    def buffer_size(self) -> int:
        return self.payload_offset + self.payload_size


def pack_header(view: memoryview, seq: int, timestamp: int, metadata_len: int, payload_len: int,
                flags: int = 0) -> None:
    """Writes a frame header at the start of ``view`` (what :meth:`FrameHeader.pack_into` does, per frame
    without making a FrameHeader)."""
    _HEADER.pack_into(view, 0, FRAME_MAGIC, flags, seq & 0xFFFFFFFF, 0, timestamp & 0xFFFFFFFFFFFFFFFF,
                      metadata_len, payload_len)


@dataclass(frozen=True)
class FrameHeader:
    seq: int
    timestamp: int
    metadata_len: int
    payload_len: int
    flags: int = 0

    def pack_into(self, view: memoryview) -> None:
        pack_header(view, self.seq, self.timestamp, self.metadata_len, self.payload_len, self.flags)

    @classmethod
    def read(cls, view: memoryview, length: int, layout: FrameLayout) -> FrameHeader:
        """The header of a frame of ``length`` bytes; ProtocolError if it does not describe a frame that fits."""
        if length < HEADER_SIZE:
            raise ProtocolError(f"frame of {length} bytes is shorter than its {HEADER_SIZE}-byte header")
        magic, flags, seq, _, timestamp, meta_len, payload_len = _HEADER.unpack_from(view, 0)
        if magic != FRAME_MAGIC:
            raise ProtocolError(f"frame header has magic {magic:#010x}, not MSF1")
        if meta_len > layout.metadata_size or payload_len > layout.payload_size:
            raise ProtocolError(f"frame claims {meta_len} bytes of metadata and {payload_len} of payload, over "
                                f"the connection's {layout.metadata_size} and {layout.payload_size}")
        if layout.payload_offset + payload_len > length:
            raise ProtocolError(f"frame of {length} bytes cannot hold its {payload_len}-byte payload")
        return cls(seq, timestamp, meta_len, payload_len, flags)


@dataclass(frozen=True)
class AttachInfo:
    """What an app needs to attach a connection over memif (the ``memif`` object of a create reply)."""

    socket: str
    interface_id: int
    secret: str  # random per connection; never logged
    buffer_size: int
    log2_ring_size: int
    metadata_size: int
    payload_size: int

    @property
    def layout(self) -> FrameLayout:
        return FrameLayout(self.metadata_size, self.payload_size)

    def to_dict(self) -> dict[str, Any]:
        return {"socket": self.socket, "interface_id": self.interface_id, "secret": self.secret,
                "buffer_size": self.buffer_size, "log2_ring_size": self.log2_ring_size,
                "metadata_size": self.metadata_size, "payload_size": self.payload_size}

    @classmethod
    def from_dict(cls, value: object) -> AttachInfo:
        if not isinstance(value, dict):
            raise ProtocolError("create reply: memif must be an object")
        try:
            info = cls(str(value["socket"]), int(value["interface_id"]), str(value["secret"]),
                       int(value["buffer_size"]), int(value["log2_ring_size"]), int(value["metadata_size"]),
                       int(value["payload_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"create reply: memif.{exc} missing or not a number") from None
        if info.layout.buffer_size != info.buffer_size:
            raise ProtocolError("create reply: memif.buffer_size does not match its layout")
        return info
