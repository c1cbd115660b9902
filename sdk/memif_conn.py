"""memif connection core: settings, the control channel's send/receive, and the data path of one connection.

:class:`MemifConnection` is what both roles end up with (see :mod:`msm.sdk.memif`).
"""

from __future__ import annotations

import array
import os
import socket
from dataclasses import dataclass, field

from msm.sdk.errors import ConfigError
from msm.sdk.memif_proto import MSG_SIZE, Disconnect, MemifError, Message, decode, encode
from msm.sdk.memif_ring import Counters, Region, Ring, RxFrame, RxQueue, TxBuffer, TxQueue

MAX_FDS_PER_MESSAGE = 2  # the protocol passes at most one; room for one more to notice and refuse it
MAX_QUEUES = 16  # rings per direction a server accepts: one per application thread is plenty
MAX_REGIONS = 16  # regions a server accepts per connection (a client's own plus ones it forwards)
MAX_REGION_SIZE = 1 << 32  # descriptor offsets are u32: nothing past 4 GiB is addressable anyway
DEFAULT_MAX_CONNECTIONS = 64  # per server; each holds mapped regions, fds and a selector slot
DEFAULT_HANDSHAKE_TIMEOUT = 5.0  # a client that has not connected by then is dropped


@dataclass(frozen=True)
class PeerCred:
    """The connecting process as the kernel saw it at connect time (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


@dataclass
class MemifConfig:
    """Settings of one side. The client's buffer size, ring size and queues decide the connection's."""

    buffer_size: int = 2048  # bytes per buffer: a 5 MB frame fits one buffer if this is >= 5 MB
    log2_ring_size: int = 10  # slots per ring = 2**log2 (at most 14 advertised, like DPDK)
    queues: int = 1  # ring pairs
    interface_id: int = 0
    secret: bytes = b""  # the INIT secret; a server with one refuses clients without it
    name: str = "msm"
    interrupts: bool = True  # ask the peer to signal our rx eventfd (False: we poll)
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    require_sealed_regions: bool = True  # a region that may shrink under us could kill us with SIGBUS
    extra_regions: list[tuple[int, int]] = field(default_factory=list)  # client: (fd, size) to share too
    sealable: bool = False  # client: region 0 without F_SEAL_SEAL, so the server may seal it against new writers
    native: bool = True  # walk rings with msm.ext._memif when it is built (MSM_NO_NATIVE=1 or False: Python)

    def check(self) -> None:
        if not 1 <= self.log2_ring_size <= 14:
            raise ConfigError(f"memif: log2 ring size {self.log2_ring_size} outside 1..14")
        if not 1 <= self.queues <= MAX_QUEUES:
            raise ConfigError(f"memif: {self.queues} queues outside 1..{MAX_QUEUES}")
        if not 64 <= self.buffer_size < MAX_REGION_SIZE:
            raise ConfigError(f"memif: buffer size {self.buffer_size} outside 64..4 GiB")
        if len(self.secret) > 24 or b"\0" in self.secret:
            raise ConfigError("memif: secret must be at most 24 bytes without NUL")


def send_message(sock: socket.socket, msg: Message, fd: int | None = None) -> None:
    ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    try:
        sock.sendmsg([encode(msg)], ancillary)
    except BlockingIOError:
        raise MemifError("memif: peer does not read its control channel", key="control_full") from None
    except OSError as exc:
        raise MemifError(f"memif: control channel send failed ({exc.strerror})", key="peer_closed") from None


def recv_message(sock: socket.socket) -> tuple[Message, list[int]]:
    """One control message and the fds it carried (the caller owns them). MemifError if bad or closed."""
    try:
        data, anc, flags, _ = sock.recvmsg(MSG_SIZE + 1, socket.CMSG_SPACE(4 * MAX_FDS_PER_MESSAGE))
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            raise
        raise MemifError(f"memif: control channel failed ({exc})", key="peer_closed") from None
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
    try:
        if not data:
            raise MemifError("memif: peer closed the control channel", key="peer_closed")
        if flags & socket.MSG_CTRUNC or len(fds) > 1:
            raise MemifError("memif: control message with more than one fd", key="too_many_fds")
        return decode(data), fds
    except MemifError:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class MemifConnection:
    """One established (or establishing) memif connection; the data path of either role."""

    def __init__(self, sock: socket.socket, config: MemifConfig, *, client: bool) -> None:
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.config = config
        self.client = client
        self.regions: list[Region] = []
        self.c2s: list[Ring] = []
        self.s2c: list[Ring] = []
        self.rx_queues: list[RxQueue] = []
        self.tx_queues: list[TxQueue] = []
        self.counters = Counters()
        self.connected = False
        self.closed = False
        self.remote_name = ""
        self.remote_if_name = ""
        self.interface_id = config.interface_id
        self.peer: PeerCred | None = None
        self.disconnect_reason = ""

    def fileno(self) -> int:
        """The control socket (readable when the peer sends DISCONNECT or closes)."""
        return self.sock.fileno()

    def rx_fileno(self, queue: int = 0) -> int:
        return self.rx_queues[queue].fileno()

    def recv(self, queue: int = 0) -> RxFrame | None:
        """The next received frame of ``queue`` (views into shared memory), or None."""
        return self.rx_queues[queue].recv() if self.connected else None

    def alloc(self, size: int, queue: int = 0) -> TxBuffer | None:
        """Buffers to fill in place for a ``size``-byte frame, or None while the ring is full."""
        return self.tx_queues[queue].alloc(size) if self.connected else None

    def commit(self, buf: TxBuffer, queue: int = 0, signal: bool = True) -> None:
        """Sends the frame in ``buf``; ``signal=False`` defers the peer's wakeup to ``flush`` or a later commit."""
        self.tx_queues[queue].commit(buf, signal)

    def flush(self, queue: int = 0) -> None:
        """Wakes the peer for frames committed with ``signal=False``."""
        self.tx_queues[queue].signal()

    def send(self, data: bytes | memoryview | list[memoryview], queue: int = 0) -> bool:
        """Copies ``data`` (bytes, or a received frame's views) into the next buffers and sends it.

        False, counted as a ``ring_full`` drop, if the ring has no room. This is
        the one copying call: use ``alloc``/``commit`` to fill in place, or
        ``memif_fast.forward`` to pass a received buffer on by reference.
        """
        chunks = data if isinstance(data, list) else [memoryview(data)]
        buf = self.alloc(sum(len(c) for c in chunks), queue)
        if buf is None:
            self.counters.drops["ring_full"] += 1
            return False
        _copy(chunks, buf.views)
        self.commit(buf, queue)
        return True

    def set_region(self, index: int, region: Region) -> None:
        """Adds (``index == len(regions)``) or replaces region ``index`` >= 1 known to this side only: a region
        the peer's descriptors may name that came from elsewhere (a sender's region shared by our proxy).
        A replaced region is closed: the caller makes sure no descriptor still names it."""
        if not 1 <= index <= len(self.regions) or index >= MAX_REGIONS:
            region.close()
            raise MemifError(f"memif: region {index} cannot be set ({len(self.regions)} known)", key="bad_region")
        if index == len(self.regions):
            self.regions.append(region)
        else:
            old, self.regions[index] = self.regions[index], region
            old.close()
        for queue in self.rx_queues:
            queue.regions_changed()

    def service(self) -> None:
        """Reads pending control messages after the handshake (DISCONNECT, or the peer closing)."""
        self.sock.setblocking(False)
        while not self.closed:
            try:
                msg, fds = recv_message(self.sock)
            except BlockingIOError:
                return
            except MemifError as exc:
                self.counters.errors[exc.key] += 1
                self.close(exc.reason, notify=False)
                return
            close_fds(fds)
            if isinstance(msg, Disconnect):
                self.close(f"peer disconnected: {msg.reason}", notify=False)
            else:
                self.counters.errors["unexpected_message"] += 1
                self.close(f"memif: unexpected {type(msg).__name__} after connect")

    def close(self, reason: str = "closed", *, notify: bool = True) -> None:
        """Tears the connection down (telling the peer why when ``notify``); safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.connected = False
        self.disconnect_reason = reason
        if notify:
            try:
                self.sock.setblocking(False)
                send_message(self.sock, Disconnect(0, reason[:95]))
            except MemifError:
                pass
        self.sock.close()
        for rxq in self.rx_queues:
            rxq.close()
        for txq in self.tx_queues:
            txq.close()
        for ring in self.c2s + self.s2c:
            ring.release()
            close_fds([ring.eventfd])
        for region in self.regions:
            region.close()
        self.rx_queues.clear()
        self.tx_queues.clear()

    def _start_queues(self) -> None:
        owned = self.client
        rx_rings, tx_rings = (self.s2c, self.c2s) if owned else (self.c2s, self.s2c)
        buffers = getattr(self, "_buffers", {})
        self.rx_queues = [RxQueue(r, self.regions, self.counters, client=owned, buffers=buffers.get(id(r)),
                                  interrupts=self.config.interrupts) for r in rx_rings]
        self.tx_queues = [TxQueue(r, self.regions, self.counters, client=owned, buffers=buffers.get(id(r)))
                          for r in tx_rings]
        for queue in self.rx_queues:
            queue.start(self.config.native)
        self.connected = True


def _copy(sources: list[memoryview], targets: list[memoryview]) -> None:
    """Copies the concatenation of ``sources`` into ``targets`` (of the same total length)."""
    ti, toff = 0, 0
    for src in sources:
        soff = 0
        while soff < len(src):
            target = targets[ti]
            n = min(len(src) - soff, len(target) - toff)
            target[toff:toff + n] = src[soff:soff + n]
            soff += n
            toff += n
            if toff == len(target):
                ti, toff = ti + 1, 0
