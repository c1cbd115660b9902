"""The proxy's media agent: apps create media connections over ``<media dir>/proxy.sock``.

The protocol is :mod:`msm.sdk.media_agent`'s. The agent runs on the proxy's
event loop (``add_reader`` on the listening socket and on each app's socket);
frames move on :class:`~.memif_port.MemifPlane`'s thread. A tx connection makes
the app its group's sender (or feeds an ST 2110 egress); an rx connection makes
it a group receiver (or is fed by an ST 2110 ingress). Everything an app
created goes when its agent socket closes, however it ends.

Security: the media directory is created with ``dir_mode`` (0770: the proxy's
user and group) and both sockets with 0660 (the proxy's group: warned about
when the directory's differs), so only processes that may enter the directory
and carry that group (or the proxy's uid, or root) can connect; each app's SO_PEERCRED is logged and its uid is the
key of the per-client bounds; a memif interface is only attached by a peer of
the same uid that knows its random secret.

Zero copy between apps (:mod:`.memif_share`): the agent pushes a group's local
memif sender region to the apps with rx connections of that group, and only
to them (``region`` in :mod:`msm.sdk.media_agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msm.sdk.errors import ConfigError, MsmError, NotFound, ProtocolError, Refused, ResourceExhausted
from msm.sdk.mcm_config import ConnectionConfig, MultipointGroup, St2110Connection, VideoPayload, parse_connection
from msm.sdk.media_agent import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    AttachInfo,
    FrameLayout,
    decode_message,
    error_reply,
)
from msm.sdk.memif import PeerCred
from msm.sdk.rfc4175 import VideoFormat
from msm.sdk.st2110_sdp import VideoStream

from .agent_socket import app_name, listen_socket, send_message
from .groups import FrameInfo
from .memif_port import MemifPlane, Port, RxPort, TxPort
from .plane import MediaNode

log = logging.getLogger(__name__)

__all__ = ["MediaAgent", "add_media_arguments", "main", "start_media_agent"]

#: Connections one app (one agent socket) may hold: each maps up to two rings of frame buffers.
MAX_PER_APP = 16
#: Connections all apps of one uid may hold together, so one user cannot take every slot.
MAX_PER_UID = 32
#: Connections on this proxy: the memif server's bound too (mapped regions, fds, a selector slot each).
MAX_TOTAL = 64
#: Agent sockets one uid may keep open (an app that opens sockets in a loop runs out, not the proxy).
MAX_APPS_PER_UID = 32
#: Agent sockets on this proxy whatever their uids (each is an fd, a reader and a little state).
MAX_APPS = 256
#: Requests one app may have waiting: the SDK sends one at a time; more is a misbehaving client.
MAX_PENDING = 4
#: Queue slots per ring are a power of two: bufferQueueCapacity (2..128) rounded up.
_MAX_LOG2 = 7


class _App:
    """One app's agent socket and what it created."""

    def __init__(self, sock: socket.socket, peer: PeerCred) -> None:
        self.sock = sock
        self.peer = peer
        self.name = ""
        self.hello = False
        self.ports: dict[str, _Conn] = {}  # bounded by MAX_PER_APP
        self.lock = asyncio.Lock()  # one request at a time, in order
        self.pending = 0


class _Conn:
    def __init__(self, port: Port, cleanup: Callable[[], Any]) -> None:
        self.port = port
        self.cleanup = cleanup  # async or sync: leaves the group, or closes the bridge


class MediaAgent:
    """Serves apps on ``<media_dir>/proxy.sock`` with groups of ``media`` (see the module's docstring)."""

    def __init__(self, media_dir: str | Path, media: MediaNode, *, dir_mode: int = 0o770,
                 max_per_app: int = MAX_PER_APP, max_per_uid: int = MAX_PER_UID, max_total: int = MAX_TOTAL) -> None:
        self.dir = Path(media_dir)
        self.media = media
        self.dir_mode = dir_mode
        self.max_per_app, self.max_per_uid, self.max_total = max_per_app, max_per_uid, max_total
        self.socket_path = str(self.dir / "proxy.sock")
        self.memif_path = str(self.dir / "memif.sock")
        self.apps: dict[int, _App] = {}  # fd -> app; bounded by MAX_APPS (and MAX_APPS_PER_UID per uid)
        self.counters: Counter[str] = Counter()
        self.plane: MemifPlane | None = None
        self._listener: socket.socket | None = None
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # bounded by MAX_PENDING per app
        self._creating: list[int] = []  # uids of creates under way; at most one per app (its lock)

    async def start(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, self.dir_mode)
            group = self.dir.stat().st_gid
        except OSError as exc:
            raise ConfigError(f"media dir {self.dir}: {exc.strerror or exc}") from None
        if group != os.getegid():   # the sockets take the proxy's group; apps given the directory's lack it
            log.warning("media agent: %s belongs to group %d but the sockets will be group %d: apps that "
                        "carry only the directory's group get Permission denied", self.dir, group, os.getegid())
        self.plane = MemifPlane(self.memif_path, max_connections=self.max_total)
        self._listener = listen_socket(self.socket_path)
        self._loop = asyncio.get_running_loop()
        self.plane.on_share = self._share_soon
        self._loop.add_reader(self._listener, self._accept)
        self.plane.start()
        log.info("media agent on unix:%s (memif %s, directory mode %o)", self.socket_path, self.memif_path,
                 self.dir_mode)

    async def stop(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener)
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        for app in list(self.apps.values()):
            await self._close_app(app)
        for task in list(self._tasks):
            task.cancel()
        if self.plane is not None:
            self.plane.stop()
            self.plane = None

    # -- apps ---------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        peer = PeerCred(pid, uid, gid)
        if len(self.apps) >= MAX_APPS or sum(1 for a in self.apps.values() if a.peer.uid == uid) >= MAX_APPS_PER_UID:
            self.counters["refused_apps_per_uid"] += 1
            log.warning("media agent: refused app pid=%d uid=%d gid=%d: too many agent sockets open (at most %d "
                        "per uid, %d in all)", pid, uid, gid, MAX_APPS_PER_UID, MAX_APPS)
            send_message(sock, error_reply(ResourceExhausted(f"too many agent sockets open (at most {MAX_APPS_PER_UID} "
                                                             f"per uid, {MAX_APPS} in all)")))
            sock.close()
            return
        sock.setblocking(False)
        app = _App(sock, peer)
        self.apps[sock.fileno()] = app
        self.counters["apps"] += 1
        log.info("media agent: app connected pid=%d uid=%d gid=%d", pid, uid, gid)
        self._loop.add_reader(sock, self._readable, app)

    def _readable(self, app: _App) -> None:
        try:
            data = app.sock.recv(MAX_MESSAGE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._spawn(self._close_app(app))
            return
        if app.pending >= MAX_PENDING:
            self.counters["refused_pending"] += 1
            send_message(app.sock, error_reply(ResourceExhausted(f"more than {MAX_PENDING} requests waiting")))
            return
        app.pending += 1
        self._spawn(self._request(app, data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, app: _App, data: bytes) -> None:
        async with app.lock:
            app.pending -= 1
            if app.sock.fileno() < 0:  # the app is gone: its requests go unanswered
                return
            request_id: object = None
            try:
                msg = decode_message(data)
                request_id = msg.get("id")
                if msg.get("op") == "mapped" and app.hello:  # a notice: never answered (the app waits for none)
                    self._mapped(app, msg)
                    return
                reply = await self._handle(app, msg)
            except MsmError as exc:
                self.counters[f"error:{type(exc).__name__}"] += 1
                log.info("media agent: app pid=%d: %s", app.peer.pid, exc.reason)
                reply = error_reply(exc, request_id)
            except Exception:  # a bug of ours: the app gets an answer, the agent keeps serving
                self.counters["error:internal"] += 1
                log.exception("media agent: app pid=%d: request failed", app.peer.pid)
                reply = error_reply(MsmError("internal error in the proxy's media agent"), request_id)
            reply["id"] = request_id
            send_message(app.sock, reply)

    async def _handle(self, app: _App, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "hello":
            versions = msg.get("versions")
            if not isinstance(versions, list) or PROTOCOL_VERSION not in versions:
                raise Refused(f"hello: this proxy speaks agent protocol version {PROTOCOL_VERSION}, "
                              f"the app offers {versions!r}", status=505)
            app.hello = True
            app.name = app_name(msg.get("app"))
            return {"ok": True, "op": "hello", "version": PROTOCOL_VERSION, "node": self.media.node,
                    "max_connections": self.max_per_app}
        if not app.hello:
            raise ProtocolError("the first message must be a hello")
        if op == "create":
            return await self._create(app, msg)
        if op == "delete":
            conn = app.ports.pop(str(msg.get("connection")), None)
            if conn is None:
                raise NotFound(f"delete: no connection {msg.get('connection')!r} of this app")
            await self._remove(conn)
            return {"ok": True}
        if op == "list":
            return {"ok": True, "connections": [c.port.snapshot() for c in app.ports.values()]}
        raise ProtocolError(f"op: must be hello, create, delete or list, got {op!r}")

    async def _create(self, app: _App, msg: dict[str, Any]) -> dict[str, Any]:
        direction = msg.get("direction")
        if direction not in ("tx", "rx"):
            raise ConfigError(f"direction: must be 'tx' or 'rx', got {direction!r}")
        self._check_bounds(app)
        document = msg.get("config")
        if not isinstance(document, (str, dict)):
            raise ConfigError("config: must be the MCM connection JSON (an object or its text)")
        config = parse_connection(document, direction="tx" if direction == "tx" else "rx")
        layout = FrameLayout(config.max_metadata_size, config.payload_size)
        if layout.payload_size <= 0:
            raise ConfigError("maxPayloadSize: must be set for this payload")
        cid, iid = f"c{next(self._ids)}", next(self._ids)
        secret = secrets.token_urlsafe(18)  # 24 characters, 144 random bits; never logged
        target = (config.connection.urn if isinstance(config.connection, MultipointGroup)
                  else f"st2110:{config.connection.ip_addr}:{config.connection.port}")
        self._creating.append(app.peer.uid)  # counted while the join is under way, so the bounds hold
        try:
            conn = await self._open(config, cid, iid, secret, layout, app.peer, target)
        finally:
            self._creating.remove(app.peer.uid)
        app.ports[cid] = conn
        self.counters[f"created_{direction}"] += 1
        log.info("media agent: app pid=%d uid=%d created %s (%s %s, %d-byte frames)", app.peer.pid, app.peer.uid,
                 cid, direction, target, layout.payload_size)
        log2 = min(_MAX_LOG2, max(1, (config.buffer_queue_capacity - 1).bit_length()))
        info = AttachInfo(self.memif_path, iid, secret, layout.buffer_size, log2, layout.metadata_size,
                          layout.payload_size)
        return {"ok": True, "connection": cid, "memif": info.to_dict()}

    def _share_soon(self, urn: str) -> None:  # the data thread's on_share: to the loop, unless it is closing
        with contextlib.suppress(RuntimeError, AttributeError):
            self._loop.call_soon_threadsafe(self._share, urn)  # type: ignore[union-attr]

    def _share(self, urn: str) -> None:
        """Pushes ``urn``'s local memif sender's region to each rx connection of that group that lacks it."""
        if self.plane is not None:
            members = [(c.port, a.sock) for a in self.apps.values() for c in a.ports.values() if c.port.target == urn]
            self.counters["regions_offered"] += self.plane.offer(members, send_message)

    def _mapped(self, app: _App, msg: dict[str, Any]) -> None:
        conn, plane, taken = app.ports.get(str(msg.get("connection"))), self.plane, False
        if conn is not None and isinstance(conn.port, RxPort) and plane is not None:
            with plane.lock:
                taken = conn.port.refs.accept(msg.get("index"), msg.get("token"))
        self.counters["regions_mapped" if taken else "bad_mapped"] += 1

    def _check_bounds(self, app: _App) -> None:
        if len(app.ports) >= self.max_per_app:
            raise ResourceExhausted(f"this app already has {self.max_per_app} connections")
        everyone = [c.port.peer.uid for a in self.apps.values() for c in a.ports.values()] + self._creating
        if everyone.count(app.peer.uid) >= self.max_per_uid:
            raise ResourceExhausted(f"uid {app.peer.uid} already has {self.max_per_uid} connections")
        if len(everyone) >= self.max_total:
            raise ResourceExhausted(f"this proxy already serves {self.max_total} connections")

    async def _open(self, config: ConnectionConfig, cid: str, iid: int, secret: str, layout: FrameLayout,
                    peer: PeerCred, target: str) -> _Conn:
        assert self.plane is not None
        plane, media, member = self.plane, self.media, f"memif:{cid}"
        port: Port
        if isinstance(config.connection, MultipointGroup):
            urn = config.connection.urn
            if config.direction == "tx":
                port = TxPort(cid, iid, secret, layout, peer, target, shareable=True,
                              publish=lambda payload, info: media.publish(urn, member, payload, info))
                plane.add(port)
                joined = media.join_sender(urn, member, max_frame=layout.payload_size)
            else:
                port = RxPort(cid, iid, secret, layout, peer, target, lock=plane.lock)
                plane.add(port)
                joined = media.join_receiver(urn, port, max_frame=layout.payload_size)
            try:
                await joined
            except BaseException:
                plane.remove(port)
                raise
            return _Conn(port, lambda: media.leave(urn, member))
        return self._open_st2110(config, config.connection, cid, iid, secret, layout, peer, target)

    def _open_st2110(self, config: ConnectionConfig, st: St2110Connection, cid: str, iid: int, secret: str,
                     layout: FrameLayout, peer: PeerCred, target: str) -> _Conn:
        from msm.ext import NativeUnavailable  # here: only ST 2110 connections need these
        from msm.sdk.mcm_values import AudioPayload

        from .aes67_bridge import MAX_BLOCK_BYTES, Aes67Egress, Aes67Ingress, AudioBlock, audio_format, audio_stream
        from .bridges import paced_egress
        from .st2110_bridge import IngressFrame, St2110Egress, St2110Ingress

        assert self.plane is not None
        plane, payload = self.plane, config.payload
        egress: St2110Egress | Aes67Egress
        ingress: St2110Ingress | Aes67Ingress

        def publish(frame: memoryview, info: FrameInfo) -> None:   # what the egress refuses is the app's drop
            if (reason := egress.deliver(frame, info)) is not None:
                tx.drops[reason] += 1

        tx = TxPort(cid, iid, secret, layout, peer, target, publish=publish)   # a few attributes each; one is used
        rx = RxPort(cid, iid, secret, layout, peer, target, lock=plane.lock)
        try:
            if isinstance(payload, AudioPayload):   # st2110-30: blocks of PCM, whole packets, as frames
                audio = audio_stream(st, payload)
                if config.direction == "tx":
                    egress = Aes67Egress(audio)
                else:
                    def block(view: memoryview, b: AudioBlock) -> None:
                        rx.deliver(view, FrameInfo(0, b.timestamp, b"", f"lost {b.lost} packets" if b.lost else None,
                                                   b.arrived_ns))

                    packet = audio_format(audio).packet_bytes   # a buffer takes the whole packets that fit (2 MiB)
                    size = min(layout.payload_size, MAX_BLOCK_BYTES)
                    ingress = Aes67Ingress(audio, on_block=block, block_bytes=size // packet * packet)
            elif st.transport != "st2110-20" or not isinstance(payload, VideoPayload) \
                    or payload.pixel_format != "yuv422p10rfc4175":
                raise Refused("connection.st2110: this proxy bridges st2110-20 video in pixelFormat yuv422p10rfc4175 "
                              "(no conversion) and st2110-30 audio only", status=501)
            else:
                video = VideoStream(st.ip_addr, st.port, VideoFormat("YCbCr-4:2:2", 10, payload.width, payload.height),
                                    rate=payload.frame_rate, payload_type=st.payload_type,
                                    source=st.multicast_source_ip_addr or None)
                if config.direction == "tx":   # connection.st2110.pacing: the ST 2110-21 pacer (unset: even)
                    egress = paced_egress(video, st.pacing)
                else:
                    def arrived(view: memoryview, f: IngressFrame) -> None:
                        rx.deliver(view, FrameInfo(0, f.timestamp, b"", None if f.complete else f.reason, f.arrived_ns))

                    ingress = St2110Ingress(video, on_frame=arrived)
        except OSError as exc:
            raise ConfigError(f"connection.st2110: cannot open {st.ip_addr}:{st.port}: {exc.strerror or exc}") \
                from None
        except NativeUnavailable as exc:
            raise Refused(f"connection.st2110.pacing: {st.pacing} needs the C pacer ({exc}); without pacing "
                          "frames are spread evenly", status=501) from None
        if config.direction == "tx":
            plane.add(tx)
            return _Conn(tx, egress.close)
        plane.add(rx)
        ingress.start()
        return _Conn(rx, ingress.close)

    async def _remove(self, conn: _Conn) -> None:
        if self.plane is not None:
            self.plane.remove(conn.port)
        try:
            done = conn.cleanup()
            if asyncio.iscoroutine(done):
                await done
        except MsmError as exc:
            log.warning("media agent: removing %s: %s", conn.port.cid, exc.reason)
        self.counters["removed"] += 1

    async def _close_app(self, app: _App) -> None:
        fd = app.sock.fileno()
        if fd < 0 or self.apps.get(fd) is not app:
            return
        del self.apps[fd]
        if self._loop is not None:
            self._loop.remove_reader(fd)
        app.sock.close()
        async with app.lock:  # after a create under way: what it made goes too
            ports, app.ports = list(app.ports.values()), {}
            for conn in ports:
                await self._remove(conn)
        log.info("media agent: app pid=%d uid=%d gone; %d connections removed", app.peer.pid, app.peer.uid,
                 len(ports))

    def snapshot(self) -> dict[str, Any]:
        """Counters for metrics: the agent's, the memif server's, and every connection's."""
        return {"agent": dict(self.counters), "apps": len(self.apps),
                "memif": self.plane.snapshot() if self.plane is not None else {},
                "connections": [{**c.port.snapshot(), "app": a.name} for a in self.apps.values()
                                for c in a.ports.values()]}


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    """``--media-dir`` (``MSM_MEDIA_DIR``): where the agent listens; unset, there is no agent."""
    parser.add_argument("--media-dir", default=os.environ.get("MSM_MEDIA_DIR", ""), metavar="DIR",
                        help="serve apps of the media SDK on DIR/proxy.sock, memif on DIR/memif.sock; DIR is made "
                        "mode 0770 (MSM_MEDIA_DIR; default: off)")


async def start_media_agent(opts: argparse.Namespace, media: MediaNode) -> MediaAgent | None:
    """The agent ``--media-dir`` asks for, started; None when it is not set."""
    if not getattr(opts, "media_dir", ""):
        return None
    agent = MediaAgent(opts.media_dir, media)
    await agent.start()
    return agent


async def _serve(media_dir: str, node: str) -> None:
    from msm.runtime.process import stop_event

    media = MediaNode(node)
    agent = MediaAgent(media_dir, media)
    await agent.start()
    print(f"MSM_PROXY=unix:{agent.socket_path}", flush=True)
    try:
        await stop_event().wait()
    finally:
        await agent.stop()
        await media.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m msm.rtp_proxy.media.agent --media-dir DIR``: the agent alone, with this node's groups only
    (no control plane, no other nodes): for apps on one machine, tests and benchmarks."""
    parser = argparse.ArgumentParser(prog="msm-media-agent", description=main.__doc__)
    parser.add_argument("--media-dir", required=True)
    parser.add_argument("--node", default="local")
    parser.add_argument("--log-level", default="warning")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=opts.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(opts.media_dir, opts.node))
    except MsmError as exc:
        print(f"msm-media-agent: error: {exc.reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
