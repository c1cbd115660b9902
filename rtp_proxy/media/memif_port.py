"""The proxy's memif side of app connections: one MemifServer, one data thread, a port per connection.

Every app connection attaches to ``<media dir>/memif.sock`` with its own interface id and random
secret (``authorize``: a client must name an interface the agent created and prove it with that
interface's secret; the secret is never logged).

- a :class:`TxPort` takes the app's frames: the data thread reads each frame in place (a view into the
  app's shared memory), hands payload and metadata on (to the group, or an ST 2110 egress), and gives
  the buffer back after;
- an :class:`RxPort` is a group :class:`~.groups.Receiver`. A frame of a local memif sender goes to it
  **by reference** once the app mapped that sender's region (:mod:`.memif_share`: one descriptor naming
  the sender's buffer). Any other frame (ST 2110 ingress, another node over libfabric, a receiver not
  mapped yet or with another layout) is **copied**: header, metadata and payload written into the next
  buffer the app offered, or ``ring_full`` when the app is behind (the sender is never held up).

Why a thread and not the event loop: a 5 MB copy takes about half a millisecond; the loop stays free.

Locks: ``deliver`` may run in any publishing thread (this one, the fabric reader, an ST 2110 ingress)
while this thread may close connections, so one lock (``self.lock``) covers rx connections' lifecycle
and writes. Callers of ``deliver`` hold the media node's lock first; this thread never holds
``self.lock`` while publishing, so the order is always media lock, then this one.
"""

from __future__ import annotations

import collections
import hmac
import itertools
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from msm.sdk.errors import ProtocolError
from msm.sdk.media_agent import FLAG_INCOMPLETE, HEADER_SIZE, FrameHeader, FrameLayout, pack_header
from msm.sdk.memif import MemifConfig, MemifConnection, MemifServer, PeerCred
from msm.sdk.memif_proto import Init

from . import memif_share
from .groups import FrameInfo
from .memif_share import HOLD_LIMIT, MAX_SHARED_HELD, NO_REGION, SHARED_POLL, Holds, SharedFrame, SharedRegion

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

    def detached(self) -> bool:
        """The memif connection went (data thread, plane lock held); True if a shared region went with it."""
        return False

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latency_ns)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0) if lat else (lambda q: None)
        return {"connection": self.cid, "direction": self.direction, "target": self.target,
                "interface_id": self.interface_id, "attached": self.conn is not None and self.conn.connected,
                "pid": self.peer.pid, "uid": self.peer.uid, "frames": self.frames, "bytes": self.bytes,
                "drops": dict(self.drops), "queue_depth": self.queue_depth(),
                "latency_p50_us": pick(0.5), "latency_p99_us": pick(0.99)}


class TxPort(Port):
    """The app sends: each frame read in place goes to ``publish(payload, info)`` and is released after
    (after every receiver that took it by reference gave it back, when that is later)."""

    direction = "tx"

    def __init__(self, *args: Any, publish: Callable[[memoryview, FrameInfo], object], shareable: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publish = publish
        self.shareable = shareable  # a group's sender: its frames may go to local receivers by reference
        self.share: SharedRegion | None = None
        # Frames not given back to the sender yet, in ring order; bounded by the sender's ring size (a
        # frame stays in its slot until released, so no more can be read).
        self.inflight: collections.deque[SharedFrame] = collections.deque()

    def detached(self) -> bool:
        self.inflight.clear()
        if self.share is None:
            return False
        self.share.close()
        self.share = None
        return True

    def settle(self) -> None:
        """Gives the sender back its slots, in order, up to the first frame a receiver still holds."""
        conn = self.conn
        while self.inflight and self.inflight[0].refs <= 0:
            frame = self.inflight.popleft()
            if conn is not None and conn.connected:
                conn.rx_queues[0].release(frame.end)

    def queue_depth(self) -> int:
        return self.conn.rx_queues[0].pending() if self.conn is not None and self.conn.connected else 0

    def drain(self) -> None:
        """Publishes up to :data:`BURST` waiting frames (data thread only)."""
        conn, share = self.conn, self.share
        if conn is None or not conn.connected:
            return
        conn.rx_queues[0].clear_interrupt()
        for _ in range(BURST):
            frame = conn.recv()
            if frame is None:
                return
            hold = SharedFrame(self, share, frame.offset, frame.length, frame.end) \
                if share is not None and frame.region == 0 and frame.length >= memif_share.SHARE_MIN_BYTES else None
            if isinstance(frame.data, list):
                self.drops["chained_frame"] += 1
            else:
                self._publish_one(frame.data, frame.length, hold)
            if self.inflight or (hold is not None and hold.refs > 0):
                self.inflight.append(hold or SharedFrame(self, share or NO_REGION, 0, 0, frame.end))
            else:
                frame.release()

    def _publish_one(self, view: memoryview, length: int, hold: SharedFrame | None = None) -> None:
        try:
            head = FrameHeader.read(view, length, self.layout)
        except ProtocolError:
            self.drops["bad_frame"] += 1
            return
        start = time.monotonic_ns()
        off = self.layout.payload_offset
        payload = view[off:off + head.payload_len]
        info = FrameInfo(head.seq, head.timestamp, bytes(view[HEADER_SIZE:HEADER_SIZE + head.metadata_len]),
                         "incomplete" if head.flags & FLAG_INCOMPLETE else None, start, hold)
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
    """The app receives: a group receiver that hands each frame over by reference, or copies it into the
    app's next offered buffer (see the module's docstring)."""

    direction = "rx"

    def __init__(self, *args: Any, lock: threading.Lock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = lock
        self.refs = Holds()  # the senders' regions this app maps and the frames it holds by reference
        # Frames written on the data thread wake the app once per burst: the plane's list and thread id.
        self.burst: tuple[list[RxPort], int] | None = None
        self.unsignalled = False
        self.shared_frames = 0
        self.copied_frames = 0
        self.copied_bytes = 0
        self.copy_reasons: Counter[str] = Counter()  # why a local sender's frame was copied; fixed keys

    def queue_depth(self) -> int:
        conn = self.conn
        return max(0, conn.tx_queues[0].ring.size - conn.tx_queues[0].free()) if conn and conn.connected else 0

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap.update({"by_reference": self.shared_frames, "copied": self.copied_frames,
                     "copied_bytes": self.copied_bytes, "copy_reasons": dict(self.copy_reasons),
                     "held": len(self.refs.held), "shared_regions": len(self.refs.maps)})
        return snap

    def detached(self) -> bool:
        self.refs.clear()
        return False

    def reap(self) -> None:
        """Gives back the frames the app has given back (plane lock held)."""
        conn = self.conn
        if conn is not None and conn.connected and self.refs.held:
            self.refs.reap(conn.tx_queues[0].returned())

    # -- frames ----------------------------------------------------------------------------------------------
    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        """Hands the frame over by reference if it can, else copies it into the app's shared memory; the drop
        reason (counted) when neither can be done now."""
        shared = info.shared
        reason = self._by_reference(shared, len(payload), info) if isinstance(shared, SharedFrame) else "copy"
        if reason is None:
            return None
        if reason not in _NO_ROOM:
            reason = self._write(payload, info)
        if reason is not None:
            self.drops[reason] += 1
        return reason

    def _by_reference(self, frame: SharedFrame, size: int, info: FrameInfo) -> str | None:
        """None if the frame went by reference; else why not (a reason in _NO_ROOM is a drop, others a copy)."""
        layout = self.layout
        with self.lock:
            index = self.refs.index_of(frame.region.token)
            if index is None:
                why: str | None = "not_mapped"
            elif frame.region.layout.payload_offset != layout.payload_offset or size > layout.payload_size \
                    or len(info.metadata) > layout.metadata_size:
                why = "layout"
            else:
                why = self._send_reference(frame, index, size, info.arrived_ns)
        if why is not None and why not in _NO_ROOM:
            self.copy_reasons[why] += 1
        return why

    def _send_reference(self, frame: SharedFrame, index: int, size: int, arrived_ns: int) -> str | None:
        conn = self.conn
        if conn is None or not conn.connected:
            return "not_attached"
        self.reap()
        queue = conn.tx_queues[0]
        free = queue.free()
        if free == 0:
            return "ring_full"
        if queue.ring.size - free >= MAX_SHARED_HELD:
            return "behind"
        if self.refs.demoted_until_ns > time.monotonic_ns():
            return "demoted"
        self._count(size, arrived_ns)  # before the app can see the frame (and ask for the counts)
        self.shared_frames += 1
        queue.send_foreign(index, frame.offset, frame.length, self._signal_now())
        self.refs.hold(queue.ring.tail, index, frame)
        return None

    def _count(self, size: int, arrived_ns: int) -> None:
        self.frames += 1
        self.bytes += size
        if arrived_ns:
            self.latency_ns.append(time.monotonic_ns() - arrived_ns)

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
            pack_header(view, info.seq, info.timestamp, len(info.metadata), len(payload),
                        FLAG_INCOMPLETE if info.incomplete else 0)
            view[HEADER_SIZE:HEADER_SIZE + len(info.metadata)] = info.metadata
            view[layout.payload_offset:] = payload  # the copy path's one copy of the payload on this hop
            self._count(len(payload), info.arrived_ns)
            self.copied_frames += 1
            self.copied_bytes += len(payload)
            conn.commit(buf, signal=self._signal_now())
        return None

    def _signal_now(self) -> bool:
        """Wake the app now, unless on the data thread: then once after the burst (MemifPlane._run)."""
        if self.burst is None or threading.get_ident() != self.burst[1]:
            return True
        if not self.unsignalled:
            self.unsignalled = True
            self.burst[0].append(self)
        return False


_NO_ROOM = ("ring_full", "not_attached")  # by reference or copied, the frame cannot go now: a drop


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
        self._unsignalled: list[RxPort] = []  # written to in this burst, not woken yet; at most every rx port
        self._tokens = itertools.count(1)
        # Called (data thread) with a group URN when its sender's region should be offered to its receivers:
        # a sender or a receiver attached, or an offer that waited for a free index can be made.
        self.on_share: Callable[[str], None] | None = None
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
            if isinstance(port, RxPort) and self._thread.ident is not None:
                port.burst = (self._unsignalled, self._thread.ident)

    def remove(self, port: Port) -> None:
        """Forgets ``port``; the data thread closes its memif connection (and the app's interface) soon."""
        with self.lock:
            self.ports.pop(port.interface_id, None)
        self._closing.append(port)
        os.eventfd_write(self._wake, 1)

    def offer(self, members: list[tuple[Port, Any]], send: Callable[[Any, dict[str, Any], int], bool]) -> int:
        """memif_share.offer for one group's members (``send(sock, notice, fd)``: the agent's)."""
        with self.lock:
            share = next((p.share for p, _ in members if isinstance(p, TxPort) and p.share is not None), None)
            receivers = [(p, sock) for p, sock in members if isinstance(p, RxPort) and p.conn is not None]
            return memif_share.offer(share if share is not None and share.fd >= 0 else None, receivers, send)

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
            port.share = self._seal(port, conn) if port.shareable else None
        if self.on_share is not None and (isinstance(port, RxPort) or getattr(port, "share", None) is not None):
            self.on_share(port.target)
        log.info("media: %s (%s %s) attached over memif, interface %d", port.cid, port.direction, port.target,
                 port.interface_id)

    def _seal(self, port: TxPort, conn: MemifConnection) -> SharedRegion | None:
        """``conn``'s region 0 sealed against new writers (see the module's docstring), to share; None (its
        receivers get copies) if it cannot be sealed so (its app made it final without that seal)."""
        region = conn.regions[0]
        try:
            fd = memif_share.seal(region.fd)
        except OSError as exc:
            port.drops["unsealable_region"] += 1
            log.info("media: %s: region cannot be sealed (%s): its receivers get copies", port.cid, exc)
            return None
        return SharedRegion(f"{port.cid}.{next(self._tokens)}", fd, region.size, port.layout)

    def _tend(self) -> bool:
        """Takes back what receivers gave back; disconnects the holders of a starved sender's oldest frame
        held too long (see memif_share); True while any receiver holds frames by reference."""
        now, holding, retry = time.monotonic_ns(), [], set()
        with self.lock:
            for port in self.ports.values():
                if isinstance(port, RxPort) and (port.refs.held or port.refs.want_retry):
                    port.reap()
                    if port.refs.held:
                        holding.append(port)
                    elif port.refs.want_retry:
                        port.refs.want_retry = False
                        retry.add(port.target)
            for tx in list(self._tx_fds.values()):
                if tx.inflight and tx.conn is not None and tx.conn.connected:
                    slots = tx.conn.rx_queues[0].ring.size
                    for port in memif_share.judge(tx.inflight, slots, [(p, p.refs) for p in holding], now):
                        if port.conn is not None:
                            self._evict(port, port.conn)
        for urn in retry:
            if self.on_share is not None:
                self.on_share(urn)
        return any(port.refs.held for port in holding)

    def _evict(self, port: RxPort, conn: MemifConnection) -> None:
        port.drops["held_too_long"] += 1
        log.warning("media: %s held its sender's last free slots, giving nothing back for %s s: disconnected",
                    port.cid, HOLD_LIMIT)
        self._unregister(port, conn)
        port.conn = None
        conn.close(f"held its sender's last free slots, giving nothing back for {HOLD_LIMIT} s")
        if conn in self.server.connections:
            self.server._forget(conn)  # no public way to drop one connection

    def _run(self) -> None:
        busy: set[TxPort] = set()  # ports with more frames than one burst: drained again before sleeping
        holding = False  # receivers hold frames by reference: look at them every SHARED_POLL
        while not self._stop:
            events = self._epoll.poll(0 if busy else SHARED_POLL if holding else IDLE)
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
            for rx in self._unsignalled:  # one wakeup per app per burst, not one per frame
                rx.unsignalled = False
                if rx.conn is not None and rx.conn.connected:
                    rx.conn.flush()
            self._unsignalled.clear()
            holding = self._tend()

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
        if port.detached() and self.on_share is not None:  # a sender's region went: its receivers drop it
            self.on_share(port.target)
        for fd, owner in list(self._tx_fds.items()):
            if owner is port:
                del self._tx_fds[fd]
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass  # closed with its connection already

    def snapshot(self) -> dict[str, Any]:
        return {"server": dict(self.server.counters), "last_error": self.server.last_error}
