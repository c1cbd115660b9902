"""memif connections, both roles, in pure Python: wire-compatible with libmemif and DPDK's net_memif (2.0).

- :class:`MemifServer` listens on a socket path (created mode 0660), accepts many
  clients, runs each handshake without blocking and keeps going whatever one
  client does. It is pollable: :meth:`MemifServer.fileno` is an epoll fd that is
  readable whenever :meth:`MemifServer.poll` has work (asyncio: ``add_reader``).
- :class:`MemifClient` connects, creates its memfd region and rings, and runs the
  handshake (blocking, bounded by ``timeout``).

Either way the result is a :class:`MemifConnection`: ``recv(queue)`` returns an
:class:`~msm.sdk.memif_ring.RxFrame` whose views point into shared memory (no
copy), ``alloc(size)`` reserves buffers to fill in place and ``commit`` sends
them. ``rx_fileno(queue)`` is the eventfd the peer signals after sending.
"""

from __future__ import annotations

import hmac
import os
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

from msm.sdk.errors import ConfigError, MsmError, TimedOut, Unavailable
from msm.sdk.memif_conn import (
    DEFAULT_MAX_CONNECTIONS,
    MAX_QUEUES,
    MAX_REGION_SIZE,
    MAX_REGIONS,
    MemifConfig,
    MemifConnection,
    PeerCred,
    close_fds,
    recv_message,
    send_message,
)
from msm.sdk.memif_proto import (
    VERSION,
    Ack,
    AddRegion,
    AddRing,
    Connect,
    Connected,
    Disconnect,
    Hello,
    Init,
    MemifError,
    Message,
    ring_bytes,
)
from msm.sdk.memif_ring import Counters, Region, Ring, RxFrame, TxBuffer

__all__ = ["Counters", "MemifClient", "MemifConfig", "MemifConnection", "MemifError", "MemifServer", "PeerCred",
           "RxFrame", "ServerConnection", "TxBuffer"]


class ServerConnection(MemifConnection):
    """The server's side of one client: the handshake as a state machine fed one message at a time."""

    def __init__(self, sock: socket.socket, config: MemifConfig, peer: PeerCred,
                 authorize: Callable[[PeerCred, Init], str | None] | None) -> None:
        super().__init__(sock, config, client=False)
        self.peer = peer
        self.deadline = time.monotonic() + config.timeout
        self._authorize = authorize
        self._init: Init | None = None

    def handle(self, msg: Message, fds: list[int]) -> None:
        """Applies one client message; MemifError (with a key) if it breaks the protocol."""
        takes_fd = isinstance(msg, (AddRegion, AddRing)) and self._init is not None and not self.connected
        fd = fds[0] if fds and takes_fd else None
        if fds and not takes_fd:
            close_fds(fds)  # from here on an fd is owned by whoever it is handed to, or closed on error
            if not isinstance(msg, (AddRegion, AddRing)):
                raise MemifError(f"memif: {type(msg).__name__} must not carry an fd", key="unexpected_fd")
        if isinstance(msg, Disconnect):
            raise MemifError(f"memif: client disconnected: {msg.reason}", key="client_disconnect")
        if self.connected:
            raise MemifError(f"memif: unexpected {type(msg).__name__} after connect", key="unexpected_message")
        if isinstance(msg, Init) and self._init is None:
            self._on_init(msg)
        elif self._init is None:
            raise MemifError(f"memif: {type(msg).__name__} before INIT", key="unexpected_message")
        elif isinstance(msg, AddRegion):
            self._on_add_region(msg, fd)
        elif isinstance(msg, AddRing):
            self._on_add_ring(msg, fd)
        elif isinstance(msg, Connect):
            self._on_connect(msg)
            return
        else:
            raise MemifError(f"memif: unexpected {type(msg).__name__} from a client", key="unexpected_message")
        send_message(self.sock, Ack())

    def _on_init(self, msg: Init) -> None:
        if msg.version != VERSION:
            raise MemifError(f"memif: client speaks version {msg.version:#06x}, not 2.0", key="bad_version")
        if self.config.secret and not hmac.compare_digest(msg.secret, self.config.secret):
            raise MemifError("memif: incorrect secret", key="bad_secret")
        if self._authorize is not None and self.peer is not None:
            try:
                refusal = self._authorize(self.peer, msg)
            except MsmError as exc:  # e.g. Forbidden from the proxy's policy: a refusal like any other
                refusal = exc.reason
            if refusal:
                raise MemifError(f"memif: refused: {refusal}", key="refused")
        self._init = msg
        self.interface_id = msg.id
        self.remote_name = msg.name

    def _on_add_region(self, msg: AddRegion, fd: int | None) -> None:
        if fd is None:
            raise MemifError(f"memif: ADD_REGION {msg.index} without its fd", key="missing_fd")
        if msg.index != len(self.regions) or msg.index >= MAX_REGIONS:
            close_fds([fd])
            raise MemifError(f"memif: ADD_REGION index {msg.index}, expected {len(self.regions)} "
                             f"(at most {MAX_REGIONS})", key="bad_region")
        if msg.size > MAX_REGION_SIZE:
            close_fds([fd])
            raise MemifError(f"memif: region {msg.index} of {msg.size} bytes over 4 GiB", key="bad_region")
        self.regions.append(Region.attach(fd, msg.size, index=msg.index,
                                          require_seal=self.config.require_sealed_regions))

    def _on_add_ring(self, msg: AddRing, fd: int | None) -> None:
        if fd is None:
            raise MemifError(f"memif: ADD_RING {msg.index} without its interrupt fd", key="missing_fd")
        rings = self.c2s if msg.c2s else self.s2c
        try:
            if msg.index != len(rings) or msg.index >= MAX_QUEUES:
                raise MemifError(f"memif: ADD_RING index {msg.index}, expected {len(rings)}", key="bad_ring")
            if msg.region >= len(self.regions):
                raise MemifError(f"memif: ring {msg.index} in unknown region {msg.region}", key="bad_ring")
            _check_eventfd(fd, msg.index)
            rings.append(Ring(self.regions[msg.region], msg.offset, msg.log2_ring_size, fd, c2s=msg.c2s))
        except MemifError:
            close_fds([fd])
            raise

    def _on_connect(self, msg: Connect) -> None:
        if not self.c2s or not self.s2c:
            raise MemifError("memif: CONNECT before a ring in each direction", key="bad_ring")
        for ring in self.c2s + self.s2c:
            if not ring.cookie_ok:
                raise MemifError("memif: ring header has the wrong cookie", key="bad_ring")
            ring.reset()
        self.remote_if_name = msg.if_name
        self._start_queues()
        send_message(self.sock, Connected(self.config.name))


def _check_eventfd(fd: int, index: int) -> None:
    """The interrupt fd must be an eventfd, and we never block on it (a full pipe would stall the server)."""
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        kind = ""
    if kind != "anon_inode:[eventfd]":
        raise MemifError(f"memif: ADD_RING {index} interrupt fd is not an eventfd", key="bad_fd")
    os.set_blocking(fd, False)


class MemifServer:
    """Listens on ``path`` and serves many clients; drive it with :meth:`poll` (or when ``fileno`` is readable)."""

    def __init__(self, path: str, config: MemifConfig | None = None, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 authorize: Callable[[PeerCred, Init], str | None] | None = None,
                 on_connect: Callable[[MemifConnection], None] | None = None) -> None:
        self.path = path
        self.config = config or MemifConfig()
        self.config.check()
        self.max_connections = max_connections
        self.authorize = authorize
        self.on_connect = on_connect
        self.connections: list[ServerConnection] = []
        self.counters: Counter[str] = Counter()  # accepted, refused_full, failed:<key>, closed
        self.last_error = ""
        self._selector = selectors.EpollSelector()
        self._listener = self._listen(path)
        self._selector.register(self._listener, selectors.EVENT_READ, None)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        """Binds under a temporary name, sets mode 0660, then renames: never reachable with looser rights."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)
            sock.bind(tmp)
            os.chmod(tmp, 0o660)
            os.rename(tmp, path)
            sock.listen(16)  # backlog: pending connects beyond this are refused by the kernel
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"memif: cannot listen on {path}: {exc.strerror}") from None
        return sock

    def fileno(self) -> int:
        return self._selector.fileno()

    def poll(self, timeout: float | None = 0.0) -> list[MemifConnection]:
        """Accepts, advances handshakes and reads control messages; returns the connections made just now."""
        made: list[MemifConnection] = []
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                conn: ServerConnection = key.data
                if self._step(conn):
                    made.append(conn)
        now = time.monotonic()
        for conn in [c for c in self.connections if not c.connected and now > c.deadline]:
            self._fail(conn, MemifError("memif: handshake timed out", key="handshake_timeout"))
        return made

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # out of fds (EMFILE), or the client gave up before we took it
            self.counters["accept_failed"] += 1
            self.last_error = f"memif: accept failed: {exc.strerror}"
            return
        if len(self.connections) >= self.max_connections:
            self.counters["refused_full"] += 1
            sock.close()
            return
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        sock.setblocking(False)
        conn = ServerConnection(sock, self.config, PeerCred(pid, uid, gid), self.authorize)
        hello = Hello(self.config.name[:31], VERSION, VERSION, MAX_REGIONS - 1, MAX_QUEUES - 1, MAX_QUEUES - 1, 14)
        try:
            send_message(sock, hello)
        except MemifError as exc:
            conn.close(exc.reason, notify=False)
            self.counters[f"failed:{exc.key}"] += 1
            return
        self.counters["accepted"] += 1
        self.connections.append(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _step(self, conn: ServerConnection) -> bool:
        """Handles what ``conn`` sent; True if it has just connected."""
        was = conn.connected
        if was:
            conn.service()
            if conn.closed:
                self._forget(conn)
            return False
        for _ in range(8):  # a bounded number of messages per wakeup, so one client cannot starve others
            try:
                msg, fds = recv_message(conn.sock)
                conn.handle(msg, fds)
            except BlockingIOError:
                break
            except MemifError as exc:
                self._fail(conn, exc)
                return False
            if conn.connected:
                if self.on_connect is not None:
                    self.on_connect(conn)
                return True
        return False

    def _fail(self, conn: ServerConnection, exc: MemifError) -> None:
        self.counters[f"failed:{exc.key}"] += 1
        self.last_error = exc.reason
        conn.counters.errors[exc.key] += 1
        conn.close(exc.reason, notify=exc.key not in ("peer_closed", "client_disconnect"))
        self._forget(conn)

    def _forget(self, conn: ServerConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            self.counters["closed"] += 1
        try:
            self._selector.unregister(conn.sock_fd)  # by number: the socket may be closed already
        except (KeyError, ValueError):
            pass

    def close(self) -> None:
        for conn in list(self.connections):
            self._forget(conn)
            conn.close("server closing")
        self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class MemifClient(MemifConnection):
    """The client ("slave") role: owns the shared memory. ``connect()`` runs the handshake, then send/receive.

    A connection is used from one thread at a time (its rings have one reader
    and one writer per side); ``fileno()`` and ``rx_fileno()`` make it pollable.
    """

    def __init__(self, path: str, config: MemifConfig | None = None) -> None:
        config = config or MemifConfig()
        config.check()
        super().__init__(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC), config,
                         client=True)
        self.path = path
        self._buffers: dict[int, list[tuple[int, int, int]]] = {}

    def connect(self) -> MemifClient:
        """Connects and completes the handshake within ``config.timeout``; MemifError/TimedOut if not."""
        self.sock.settimeout(self.config.timeout)
        try:
            self.sock.connect(self.path)
            hello = self._expect(Hello)
            self._build(hello)
            cfg = self.config
            self._request(Init(VERSION, cfg.interface_id, 0, cfg.secret, cfg.name[:31]), None, Ack)
            for index, region in enumerate(self.regions):
                self._request(AddRegion(index, region.size), region.fd, Ack)
            for c2s, rings in ((True, self.c2s), (False, self.s2c)):
                for index, ring in enumerate(rings):
                    self._request(AddRing(index, 0, ring.offset, ring.log2_size, c2s), ring.eventfd, Ack)
            done = self._request(Connect(cfg.name[:31]), None, Connected)
        except TimeoutError:
            self.close("handshake timed out", notify=False)
            raise TimedOut(f"memif: {self.path} did not complete the handshake in {self.config.timeout} s") from None
        except OSError as exc:
            self.close(str(exc), notify=False)
            raise Unavailable(f"memif: cannot connect to {self.path}: {exc.strerror or exc}") from None
        except MemifError as exc:
            self.counters.errors[exc.key] += 1
            self.close(exc.reason, notify=exc.key not in ("refused", "peer_closed"))
            raise
        assert isinstance(done, Connected)
        self.remote_if_name = done.if_name
        self._start_queues()
        self.sock.setblocking(False)
        return self

    def _expect(self, kind: type) -> Message:
        msg, fds = recv_message(self.sock)
        close_fds(fds)
        if isinstance(msg, Disconnect):
            raise MemifError(f"memif: server refused: {msg.reason}", key="refused")
        if not isinstance(msg, kind):
            raise MemifError(f"memif: expected {kind.__name__}, got {type(msg).__name__}", key="unexpected_message")
        return msg

    def _request(self, msg: Message, fd: int | None, reply: type) -> Message:
        send_message(self.sock, msg, fd)
        return self._expect(reply)

    def _build(self, hello: Message) -> None:
        """Creates region 0 (rings, then buffers) as the server's HELLO allows, plus the extra regions."""
        assert isinstance(hello, Hello)
        cfg = self.config
        if not hello.min_version <= VERSION <= hello.max_version:
            raise MemifError(f"memif: server speaks {hello.min_version:#06x}..{hello.max_version:#06x}, not 2.0",
                             key="bad_version")
        if len(cfg.extra_regions) > hello.max_region:
            raise MemifError(f"memif: server takes {hello.max_region + 1} regions, we need "
                             f"{1 + len(cfg.extra_regions)}", key="bad_region")
        self.remote_name = hello.name
        log2 = min(cfg.log2_ring_size, hello.max_log2_ring_size)
        n_c2s = min(cfg.queues, hello.max_c2s_ring + 1)
        n_s2c = min(cfg.queues, hello.max_s2c_ring + 1)
        per_ring = ring_bytes(log2)
        base = (per_ring * (n_c2s + n_s2c) + 63) // 64 * 64
        slots = (n_c2s + n_s2c) << log2
        size = base + slots * cfg.buffer_size
        if base + (slots - 1) * cfg.buffer_size >= 1 << 32 or size > MAX_REGION_SIZE:
            raise ConfigError(f"memif: {slots} buffers of {cfg.buffer_size} bytes do not fit a 4 GiB region")
        region = Region.create(size, final=not cfg.sealable)
        self.regions.append(region)
        for i in range(n_c2s + n_s2c):
            ring = Ring(region, i * per_ring, log2, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC), c2s=i < n_c2s)
            ring.init()
            first = base + ((i << log2) * cfg.buffer_size)
            self._buffers[id(ring)] = [(0, first + j * cfg.buffer_size, cfg.buffer_size) for j in range(ring.size)]
            for j, (reg, off, cap) in enumerate(self._buffers[id(ring)]):
                ring.write_desc(j, 0, reg, cap, off)
            (self.c2s if i < n_c2s else self.s2c).append(ring)
        for index, (fd, extra_size) in enumerate(cfg.extra_regions, start=1):
            self.regions.append(Region.attach(os.dup(fd), extra_size, index=index, require_seal=False))
