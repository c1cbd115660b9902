"""The app-facing media API: send and receive frames through the node's proxy, without copying them.

::

    from msm.sdk import mesh

    with mesh.Client() as client:                         # MSM_PROXY=unix:<path>, or the default socket
        tx = client.create_tx_connection(config_json)     # MCM's connection JSON (text, bytes or a dict)
        buf = tx.get_buffer(timeout=1.0)                  # seconds; None waits for ever, 0 does not wait
        buf.payload[:n] = picture                         # a writable view into shared memory
        buf.payload_len, buf.metadata, buf.timestamp = n, b"...", ts
        tx.put_buffer(buf)                                # the proxy has it; the view is no longer yours

        rx = client.create_rx_connection(config_json)
        buf = rx.get_buffer(timeout=1.0)                  # buf.payload is read in place, buf.metadata is bytes
        ...; rx.put_buffer(buf)                           # gives the buffer back (this one and earlier ones)

Every timeout is in **seconds** (a float). Errors are one line: :class:`~msm.sdk.errors.TimedOut` when a
timeout passes, :class:`~msm.sdk.errors.Unavailable` when there is no proxy (or it went away),
:class:`~msm.sdk.errors.ConfigError` naming the JSON path of a bad field, and the proxy's refusals passed
through (:class:`~msm.sdk.media_agent.SenderBusy` when a group has a sender already). :class:`AsyncClient`
is the asyncio flavour (``await conn.get_buffer_async()``). A connection is used from one thread at a time.

Zero copy: a frame whose sender is an app on this node is read where that sender wrote it
(``buf.by_reference``; that memory is sealed: read-only here, writable by the sender alone) and goes back
to the sender on ``put_buffer``; frames from anywhere else are copied into this app's buffers by the
proxy. A connection that holds its sender's last free slots and gives nothing back for 0.2 s is cut off.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import select
import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal

from msm.sdk.errors import MsmError, ProtocolError, Refused, TimedOut, Unavailable
from msm.sdk.mcm_config import ConnectionConfig, MultipointGroup, parse_connection
from msm.sdk.media_agent import (
    FLAG_INCOMPLETE,
    HEADER_SIZE,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    AttachInfo,
    FrameHeader,
    FrameLayout,
    SenderBusy,
    decode_message,
    encode_message,
    error_from_reply,
    resolve_proxy,
)
from msm.sdk.memif import MemifClient, MemifConfig, MemifError, RxFrame, TxBuffer
from msm.sdk.memif_region import Region

__all__ = ["AsyncClient", "Buffer", "Client", "Connection", "RxConnection", "SenderBusy", "TxConnection"]

REQUEST_TIMEOUT = 10.0  # seconds for the proxy to answer one agent request (a join may ask the control plane)
_TX_POLL = 0.0002  # seconds between looks at a full tx ring: the proxy signals only the other direction
_SERVICE_EVERY = 16  # frames read between looks at the agent socket (region notices) when frames keep coming
_EARLY = 8  # region notices kept for a connection not registered yet (the proxy sends one or two at a time)


class Buffer:
    """One frame: ``payload`` is a view into shared memory (writable on tx), valid until ``put_buffer``."""

    def __init__(self, view: memoryview, layout: FrameLayout, *, writable: bool, header: FrameHeader | None = None,
                 frame: TxBuffer | RxFrame | None = None) -> None:
        self._view = view
        self._layout = layout
        self._writable = writable
        self._frame = frame
        off = layout.payload_offset
        if header is None:
            self.seq, self.timestamp, self.metadata, self.incomplete = 0, 0, b"", False
            self._len = layout.payload_size
        else:
            self.seq, self.timestamp = header.seq, header.timestamp
            self.metadata = bytes(view[HEADER_SIZE:HEADER_SIZE + header.metadata_len])
            self.incomplete = bool(header.flags & FLAG_INCOMPLETE)
            self._len = header.payload_len
        self.by_reference = isinstance(frame, RxFrame) and frame.region != 0  # read where its sender wrote it
        self._payload = view[off:off + self._len] if not writable else view[off:off + layout.payload_size]

    @property
    def payload(self) -> memoryview:
        """The payload: on tx the whole writable buffer (``payload_size`` bytes), on rx ``payload_len`` bytes."""
        return self._payload

    @property
    def payload_len(self) -> int:
        return self._len

    @payload_len.setter
    def payload_len(self, value: int) -> None:
        if not self._writable:
            raise Refused("payload_len: a received buffer's length is what was sent")
        if not 0 <= value <= self._layout.payload_size:
            raise Refused(f"payload_len: must be 0..{self._layout.payload_size}, got {value}")
        self._len = value

    @property
    def capacity(self) -> int:
        return self._layout.payload_size

    def _release_views(self) -> None:
        self._payload.release()
        self._view.release()


class Connection:
    """What tx and rx connections share: the memif attachment, ``close`` and context management."""

    direction: Literal["tx", "rx"] = "tx"

    def __init__(self, client: Client, cid: str, config: ConnectionConfig, attach: AttachInfo) -> None:
        self.client = client
        self.id = cid
        self.config = config
        self.layout = attach.layout
        self.seq = 0
        memif = MemifConfig(buffer_size=attach.buffer_size, log2_ring_size=attach.log2_ring_size,
                            interface_id=attach.interface_id, secret=attach.secret.encode(),
                            name=f"msm-app-{os.getpid()}", timeout=REQUEST_TIMEOUT,
                            sealable=self.direction == "tx")  # the proxy seals a sender's region to share it
        try:
            self.memif = MemifClient(attach.socket, memif).connect()
        except MsmError:
            client._delete(cid)
            raise
        self._held: Buffer | None = None
        self.closed = False

    @property
    def urn(self) -> str | None:
        conn = self.config.connection
        return conn.urn if isinstance(conn, MultipointGroup) else None

    def _alive(self) -> None:
        if self.closed:
            raise Unavailable(f"connection {self.id} is closed")
        if not self.memif.connected:
            raise Unavailable(f"connection {self.id}: the proxy closed it ({self.memif.disconnect_reason})")

    def fileno(self) -> int:
        """An fd readable when a frame may be waiting (rx), for select/poll/asyncio."""
        return self.memif.rx_fileno()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._held is not None:
            self._held._release_views()
            self._held = None
        self.memif.close("app closed the connection")
        self.client._delete(self.id)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TxConnection(Connection):
    """Frames from the app: ``get_buffer``, fill ``payload`` in place, ``put_buffer``."""

    direction: Literal["tx", "rx"] = "tx"

    def try_get_buffer(self) -> Buffer | None:
        self._alive()
        if self._held is not None:
            raise Refused(f"connection {self.id}: put the buffer you hold before getting another")
        frame = self.memif.alloc(self.layout.buffer_size)
        if frame is None:
            return None
        buf = Buffer(frame.views[0], self.layout, writable=True, frame=frame)
        buf.seq = self.seq
        self._held = buf
        return buf

    def get_buffer(self, timeout: float | None = None) -> Buffer:
        """A free buffer to fill, waiting at most ``timeout`` seconds for the proxy to give one back."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buf = self.try_get_buffer()
            if buf is not None:
                return buf
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(f"connection {self.id}: no free buffer within {timeout} s")
            self.memif.service()  # notices a proxy that went away (then _alive says so)
            time.sleep(_TX_POLL)

    async def get_buffer_async(self, timeout: float | None = None) -> Buffer:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buf = self.try_get_buffer()
            if buf is not None:
                return buf
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(f"connection {self.id}: no free buffer within {timeout} s")
            self.memif.service()
            await asyncio.sleep(_TX_POLL)

    def put_buffer(self, buf: Buffer) -> None:
        """Sends ``buf``: its first ``payload_len`` bytes, its metadata, seq and timestamp."""
        if buf is not self._held or not isinstance(buf._frame, TxBuffer):
            raise Refused(f"connection {self.id}: put_buffer of a buffer that is not this connection's")
        if len(buf.metadata) > self.layout.metadata_size:
            raise Refused(f"metadata: {len(buf.metadata)} bytes, the connection takes at most "
                          f"{self.layout.metadata_size} (maxMetadataSize)")
        self._alive()
        view, frame = buf._view, buf._frame
        FrameHeader(buf.seq, buf.timestamp, len(buf.metadata), buf.payload_len,
                    FLAG_INCOMPLETE if buf.incomplete else 0).pack_into(view)
        view[HEADER_SIZE:HEADER_SIZE + len(buf.metadata)] = buf.metadata
        frame.capacities[0] = self.layout.payload_offset + buf.payload_len  # the frame's length on the ring
        self._held = None
        buf._release_views()
        self.memif.commit(frame)
        self.seq = (buf.seq + 1) & 0xFFFFFFFF


class RxConnection(Connection):
    """Frames for the app: ``get_buffer`` reads one in place, ``put_buffer`` gives it back."""

    direction: Literal["tx", "rx"] = "rx"
    _reads = 0

    def map_region(self, index: int, size: int, fd: int) -> None:
        """Maps a sender's region the proxy handed over (taking ``fd``), read-only, as memif region ``index``;
        MemifError if it cannot (then frames keep coming as copies)."""
        region = Region.attach(fd, size, index=index, writable=False) if fd >= 0 \
            else Region.create(4096, "msm-gone")  # a placeholder where a gone sender's region was
        self.memif.set_region(index, region)

    def try_get_buffer(self) -> Buffer | None:
        self._alive()
        if self._held is not None:
            raise Refused(f"connection {self.id}: put the buffer you hold before getting another")
        self._reads += 1
        if self._reads % _SERVICE_EVERY == 0:
            self.client.service()  # a region notice waits there when frames never stop coming
        while True:
            frame = self.memif.recv()
            if frame is None:
                return None
            if isinstance(frame.data, list):  # never from our proxy: its frames are one buffer each
                frame.release()
                continue
            if frame.region:  # a sender's buffer: not ours to read once the proxy cut us off
                self.memif.service()
                self._alive()
            try:
                header = FrameHeader.read(frame.data, frame.length, self.layout)
            except ProtocolError:
                frame.release()
                continue
            buf = Buffer(frame.data, self.layout, writable=False, header=header, frame=frame)
            self._held = buf
            return buf

    def get_buffer(self, timeout: float | None = None) -> Buffer:
        """The next frame, waiting at most ``timeout`` seconds for one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buf = self.try_get_buffer()
            if buf is not None:
                return buf
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimedOut(f"connection {self.id}: no frame within {timeout} s")
            agent = self.client.notice_fds()
            ready, _, _ = select.select([self.memif.rx_fileno(), self.memif.fileno(), *agent], [], [], left)
            self.memif.rx_queues[0].clear_interrupt()
            if self.memif.fileno() in ready:
                self.memif.service()
            if agent and agent[0] in ready:
                self.client.service()

    async def get_buffer_async(self, timeout: float | None = None) -> Buffer:
        """The asyncio flavour: waits on the memif eventfd with ``loop.add_reader``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            buf = self.try_get_buffer()
            if buf is not None:
                return buf
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimedOut(f"connection {self.id}: no frame within {timeout} s")
            woken: asyncio.Future[None] = loop.create_future()
            # a frame, the proxy going away, or a region notice
            fds = (self.memif.rx_fileno(), self.memif.fileno(), *self.client.notice_fds())
            for fd in fds:
                loop.add_reader(fd, _wake, woken)
            try:
                await asyncio.wait_for(woken, left)
            except TimeoutError:
                pass
            finally:
                for fd in fds:
                    loop.remove_reader(fd)
            self.memif.rx_queues[0].clear_interrupt()
            self.memif.service()
            self.client.service()

    def put_buffer(self, buf: Buffer) -> None:
        if buf is not self._held or not isinstance(buf._frame, RxFrame):
            raise Refused(f"connection {self.id}: put_buffer of a buffer that is not this connection's")
        self._held = None
        buf._release_views()
        if self.memif.connected:
            buf._frame.release()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Client:
    """The app's link to its node's proxy (the agent socket); connections live as long as it is open."""

    def __init__(self, proxy: str | None = None, *, name: str = "", timeout: float = REQUEST_TIMEOUT) -> None:
        self.path = resolve_proxy(proxy)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            self.sock.close()
            raise Unavailable(f"no media proxy at unix:{self.path}: {exc.strerror or exc}") from None
        self._ids = 0
        self._lock = threading.Lock()  # one reader of the agent socket at a time (a request, or service)
        self._early: list[tuple[dict[str, Any], int]] = []  # notices for connections not registered yet
        self.gone = False  # the agent socket reached its end: nothing more to read there
        self.connections: dict[str, Connection] = {}
        hello = self._call({"op": "hello", "versions": [PROTOCOL_VERSION], "app": name or f"pid-{os.getpid()}"})
        self.node = str(hello.get("node", ""))

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        request["id"] = self._ids
        try:
            with self._lock:
                self.sock.send(encode_message(request))
                while True:
                    reply = self._recv(0)
                    if reply is not None and reply.get("id") in (self._ids, None):
                        break
        except TimeoutError:
            raise TimedOut(f"the media proxy did not answer {request['op']} within {self.timeout} s") from None
        except OSError as exc:
            raise Unavailable(f"the media proxy at unix:{self.path}: {exc.strerror or exc}") from None
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply

    def _recv(self, flags: int) -> dict[str, Any] | None:
        """One message from the proxy; a region notice is applied here (None then)."""
        data, anc, _, _ = self.sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(2 * 4), flags)
        fds = [fd for level, kind, payload in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", payload[:len(payload) - len(payload) % 4])]
        if not data:
            _close_all(fds)
            raise Unavailable(f"the media proxy at unix:{self.path} closed the connection")
        try:
            message = decode_message(data)
        except ProtocolError:
            _close_all(fds)
            raise
        if message.get("op") in ("region", "unmap") and "id" not in message \
                and len(fds) == (message["op"] == "region"):  # a region comes with its fd, an unmap without
            self._region(message, fds[0] if fds else -1)
            return None
        _close_all(fds)
        return message

    def _region(self, notice: dict[str, Any], fd: int) -> None:
        """Maps a sender's region for one of our rx connections and tells the proxy (or keeps it for later);
        ``fd`` -1: unmaps it (its sender is gone)."""
        conn = self.connections.get(str(notice.get("connection")))
        if not isinstance(conn, RxConnection):
            self._early.append((notice, fd))
            while len(self._early) > _EARLY:
                _close_all([self._early.pop(0)[1]])
            return
        try:
            conn.map_region(int(notice["index"]), int(notice.get("size", 0)), fd)
        except (KeyError, TypeError, ValueError, MemifError):
            return  # not mapped: the proxy keeps copying to this connection
        ack = {"op": "mapped", "connection": conn.id, "index": notice["index"], "token": notice.get("token")}
        with contextlib.suppress(OSError, MsmError):  # not heard: the proxy keeps copying
            if fd >= 0:
                self.sock.send(encode_message(ack), socket.MSG_DONTWAIT)

    def service(self) -> None:
        """Reads what the proxy sent unasked (region notices) without waiting; a no-op while another thread
        waits for a reply (it reads them then)."""
        if self.gone or not self._lock.acquire(blocking=False):
            return
        try:
            while self.sock.fileno() >= 0 and select.select([self.sock], [], [], 0)[0]:
                self._recv(socket.MSG_DONTWAIT)
        except (OSError, MsmError):
            self.gone = True  # the proxy went away: the connections say so on their next call
        finally:
            self._lock.release()

    def notice_fds(self) -> list[int]:
        """The agent socket while it may bring notices (for a select next to the memif fds)."""
        return [] if self.gone or self.sock.fileno() < 0 else [self.sock.fileno()]

    def _create(self, config: str | bytes | dict[str, Any], direction: Literal["tx", "rx"]) -> tuple[
            str, ConnectionConfig, AttachInfo]:
        parsed = parse_connection(config, direction=direction)  # ConfigError here, naming the field
        document = parsed.to_dict() if not isinstance(config, dict) else config
        reply = self._call({"op": "create", "direction": direction, "config": document})
        return str(reply["connection"]), parsed, AttachInfo.from_dict(reply.get("memif"))

    def create_tx_connection(self, config: str | bytes | dict[str, Any]) -> TxConnection:
        conn = TxConnection(self, *self._create(config, "tx"))
        self.connections[conn.id] = conn
        return conn

    def create_rx_connection(self, config: str | bytes | dict[str, Any]) -> RxConnection:
        conn = RxConnection(self, *self._create(config, "rx"))
        self.connections[conn.id] = conn
        early = [item for item in self._early if item[0].get("connection") == conn.id]
        for item in early:
            self._early.remove(item)
            self._region(*item)
        return conn

    def list_connections(self) -> list[dict[str, Any]]:
        """This app's connections as the proxy counts them (frames, bytes, drops, queue depth, latency)."""
        return list(self._call({"op": "list"}).get("connections", []))

    def _delete(self, cid: str) -> None:
        self.connections.pop(cid, None)
        if self.sock.fileno() >= 0:
            try:
                self._call({"op": "delete", "connection": cid})
            except MsmError:
                pass  # the proxy forgets it anyway when this client closes

    def close(self) -> None:
        for conn in list(self.connections.values()):
            conn.close()
        _close_all([fd for _, fd in self._early])
        self._early.clear()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """The asyncio flavour: agent requests run in a worker thread; frames wait on ``loop.add_reader``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    async def connect(cls, proxy: str | None = None, *, name: str = "") -> AsyncClient:
        return cls(await asyncio.to_thread(Client, proxy, name=name))

    async def create_tx_connection(self, config: str | bytes | dict[str, Any]) -> TxConnection:
        return await asyncio.to_thread(self.client.create_tx_connection, config)

    async def create_rx_connection(self, config: str | bytes | dict[str, Any]) -> RxConnection:
        return await asyncio.to_thread(self.client.create_rx_connection, config)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
