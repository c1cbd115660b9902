"""The proxy's memif side of app connections: one MemifServer, one data thread, a port per connection.

Every app connection attaches to ``<media dir>/memif.sock`` with its own
interface id and random secret (checked in ``authorize``: the server has no
secret of its own, so a client must name an interface the agent created and
prove it with that interface's secret; the secret is never logged).

- a :class:`TxPort` takes the app's frames: the data thread reads each frame in
  place (a view into the app's shared memory), hands payload and metadata on
  (to the group, or an ST 2110 egress), and gives the buffer back after;
- an :class:`RxPort` is a group :class:`~.groups.Receiver`: ``deliver`` writes
  header, metadata and payload into the next buffer the app offered, or answers
  ``ring_full`` when the app is behind (the sender is never held up).

Why a thread and not the event loop: a 1080p 10-bit frame is 5 MB, and
publishing it copies it once per local receiver (about half a millisecond
each); the gRPC services on the loop stay responsive while frames move.

Locks: ``deliver`` may run in any publishing thread (this one, the fabric
reader, an ST 2110 ingress) while this thread may close connections, so one
lock (``self.lock``) covers rx connections' lifecycle and writes. Callers of
``deliver`` hold the media node's lock first; this thread never holds
``self.lock`` while publishing, so the order is always media lock, then this one.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from msm.sdk.errors import ProtocolError
from msm.sdk.media_agent import FLAG_INCOMPLETE, HEADER_SIZE, FrameHeader, FrameLayout
from msm.sdk.memif import MemifConfig, MemifConnection, MemifServer, PeerCred
from msm.sdk.memif_proto import Init

from .groups import FrameInfo

log = logging.getLogger(__name__)

__all__ = ["MemifPlane", "Port", "RxPort", "TxPort"]

#: Latency samples kept per port (the last ten seconds at 60 frames/s): a fixed bound whatever the run's length.
LATENCY_SAMPLES = 600
#: Frames read from one app per wakeup, so one busy sender cannot starve the others.
BURST = 16
#: How long the data thread sleeps when nothing wakes it (it is woken for work; this only bounds shutdown).
IDLE = 0.5


class Port:
    """One app connection's memif interface and its counters."""

    def __init__(self, cid: str, interface_id: int, secret: str, layout: FrameLayout, peer: PeerCred,
                 target: str) -> None:
        self.cid = cid
        self.interface_id = interface_id
        self.secret = secret.encode()
        self.layout = layout
        self.peer = peer
        self.target = target  # the group URN, or st2110:<addr>:<port>
        self.conn: MemifConnection | None = None
        self.frames = 0
        self.bytes = 0
        self.drops: Counter[str] = Counter()  # keyed by a fixed set of reasons
        self.latency_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_SAMPLES)

    direction = ""

    @property
    def name(self) -> str:
        return f"memif:{self.cid}"

    def queue_depth(self) -> int:
        return 0

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latency_ns)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0) if lat else (lambda q: None)
        return {"connection": self.cid, "direction": self.direction, "target": self.target,
                "interface_id": self.interface_id, "attached": self.conn is not None and self.conn.connected,
                "pid": self.peer.pid, "uid": self.peer.uid, "frames": self.frames, "bytes": self.bytes,
                "drops": dict(self.drops), "queue_depth": self.queue_depth(),
                "latency_p50_us": pick(0.5), "latency_p99_us": pick(0.99)}


class TxPort(Port):
    """The app sends: each frame read in place goes to ``publish(payload, info)`` and is released after."""

    direction = "tx"

    def __init__(self, *args: Any, publish: Callable[[memoryview, FrameInfo], object], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publish = publish

    def queue_depth(self) -> int:
        conn = self.conn
        return conn.rx_queues[0].pending() if conn is not None and conn.connected else 0

    def drain(self) -> None:
        """Publishes up to :data:`BURST` waiting frames (data thread only)."""
        conn = self.conn
        if conn is None or not conn.connected:
            return
        conn.rx_queues[0].clear_interrupt()
        for _ in range(BURST):
            frame = conn.recv()
            if frame is None:
                return
            try:
                if isinstance(frame.data, list):
                    self.drops["chained_frame"] += 1
                    continue
                self._publish_one(frame.data, frame.length)
            finally:
                frame.release()

    def _publish_one(self, view: memoryview, length: int) -> None:
        try:
            head = FrameHeader.read(view, length, self.layout)
        except ProtocolError:
            self.drops["bad_frame"] += 1
            return
        start = time.monotonic_ns()
        off = self.layout.payload_offset
        payload = view[off:off + head.payload_len]
        info = FrameInfo(head.seq, head.timestamp, bytes(view[HEADER_SIZE:HEADER_SIZE + head.metadata_len]),
                         "incomplete" if head.flags & FLAG_INCOMPLETE else None, start)
        try:
            self.publish(payload, info)
        except Exception as exc:  # noqa: BLE001 - a refusal (the group is gone) is a drop, not the thread's end
            self.drops[f"publish_{type(exc).__name__}"] += 1
            return
        finally:
            payload.release()
        self.frames += 1
        self.bytes += head.payload_len
        self.latency_ns.append(time.monotonic_ns() - start)


class RxPort(Port):
    """The app receives: a group receiver that writes each frame into the app's next offered buffer."""

    direction = "rx"

    def __init__(self, *args: Any, lock: threading.Lock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = lock

    def queue_depth(self) -> int:
        conn = self.conn
        if conn is None or not conn.connected:
            return 0
        queue = conn.tx_queues[0]
        return max(0, queue.ring.size - queue.free())

    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        """Copies the frame into the app's shared memory; the drop reason (counted) when it cannot now."""
        reason = self._write(payload, info)
        if reason is not None:
            self.drops[reason] += 1
        return reason

    def _write(self, payload: memoryview, info: FrameInfo) -> str | None:
        layout = self.layout
        if len(payload) > layout.payload_size:
            return "payload_too_large"
        if len(info.metadata) > layout.metadata_size:
            return "metadata_too_large"
        with self.lock:
            conn = self.conn
            if conn is None or not conn.connected:
                return "not_attached"
            buf = conn.alloc(layout.payload_offset + len(payload))
            if buf is None:
                return "ring_full"
            if len(buf.views) != 1:  # the app offered buffers smaller than its layout: its fault, its frame
                conn.tx_queues[0].abort()
                return "short_buffer"
            view = buf.views[0]
            FrameHeader(info.seq, info.timestamp, len(info.metadata), len(payload),
                        FLAG_INCOMPLETE if info.incomplete else 0).pack_into(view)
            view[HEADER_SIZE:HEADER_SIZE + len(info.metadata)] = info.metadata
            view[layout.payload_offset:] = payload  # the one copy of the payload on this hop
            conn.commit(buf)
        self.frames += 1
        self.bytes += len(payload)
        if info.arrived_ns:
            self.latency_ns.append(time.monotonic_ns() - info.arrived_ns)
        return None


class MemifPlane:
    """The memif server of all app connections and the thread that moves their frames."""

    def __init__(self, path: str, *, max_connections: int) -> None:
        self.lock = threading.Lock()  # rx connections' lifecycle and writes (see the module's docstring)
        self.ports: dict[int, Port] = {}  # interface id -> port; bounded by the agent's connection limits
        self.server = MemifServer(path, MemifConfig(name="msm-proxy"), max_connections=max_connections,
                                  authorize=self._authorize, on_connect=self._on_connect)
        self._closing: collections.deque[Port] = collections.deque()  # ports to close, from the control side
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self.server.fileno(), select.EPOLLIN)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._tx_fds: dict[int, TxPort] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="media-memif", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.server.close()
        self._epoll.close()
        os.close(self._wake)

    def add(self, port: Port) -> None:
        with self.lock:
            self.ports[port.interface_id] = port

    def remove(self, port: Port) -> None:
        """Forgets ``port``; the data thread closes its memif connection (and the app's interface) soon."""
        with self.lock:
            self.ports.pop(port.interface_id, None)
        self._closing.append(port)
        os.eventfd_write(self._wake, 1)

    def _authorize(self, peer: PeerCred, init: Init) -> str | None:
        port = self.ports.get(init.id)
        if port is None or not hmac.compare_digest(init.secret, port.secret):
            return f"no interface {init.id} with that secret"
        if port.conn is not None:
            return f"interface {init.id} is attached already"
        if peer.uid != port.peer.uid:
            return f"interface {init.id} belongs to uid {port.peer.uid}"
        return None

    def _on_connect(self, conn: MemifConnection) -> None:
        port = self.ports.get(conn.interface_id)
        if port is None:  # deleted during the handshake
            conn.close("connection deleted")
            return
        port.conn = conn
        if isinstance(port, TxPort):
            fd = conn.rx_fileno()
            self._tx_fds[fd] = port
            self._epoll.register(fd, select.EPOLLIN)
        log.info("media: %s (%s %s) attached over memif, interface %d", port.cid, port.direction, port.target,
                 port.interface_id)

    def _run(self) -> None:
        busy: set[TxPort] = set()  # ports with more frames than one burst: drained again before sleeping
        while not self._stop:
            events = self._epoll.poll(0 if busy else IDLE)
            ready = {fd for fd, _ in events}
            if self._wake in ready:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
            with self.lock:
                self.server.poll(0)
                self._close_pending()
                self._forget_closed()
            busy.update(port for port in (self._tx_fds.get(fd) for fd in ready) if port is not None)
            for port in list(busy):
                port.drain()
                if not port.queue_depth():
                    busy.discard(port)

    def _close_pending(self) -> None:
        while self._closing:
            port = self._closing.popleft()
            conn = port.conn
            port.conn = None
            if conn is None:  # not attached (yet): refuse the handshake if one is under way
                for pending in list(self.server.connections):
                    if pending.interface_id == port.interface_id and not pending.connected:
                        pending.close("connection deleted")
                        self.server._forget(pending)  # no public way to drop one connection
                continue
            self._unregister(port, conn)
            if not conn.closed:
                conn.close("connection deleted")
            if conn in self.server.connections:
                self.server._forget(conn)

    def _forget_closed(self) -> None:
        for port in list(self.ports.values()):
            conn = port.conn
            if conn is not None and conn.closed:  # the app closed its memif side: it may attach again
                self._unregister(port, conn)
                port.conn = None

    def _unregister(self, port: Port, conn: MemifConnection) -> None:
        for fd, owner in list(self._tx_fds.items()):
            if owner is port:
                del self._tx_fds[fd]
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass  # closed with its connection already

    def snapshot(self) -> dict[str, Any]:
        return {"server": dict(self.server.counters), "last_error": self.server.last_error}
