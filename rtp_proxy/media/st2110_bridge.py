"""ST 2110 bridges: an ST 2110-20 stream from the network into frames, and frames out as ST 2110-20.

:class:`St2110Ingress` owns a UDP socket (unicast, or multicast with an
any-source or source-specific join), configured from parameters or an SDP
file, and a thread that depacketizes into frame buffers; each frame, complete
or (unless told to drop them) incomplete with its reason, goes to a callback
or a bounded queue. :class:`St2110Egress` is a group receiver: frames in,
packets out to an address, spread evenly over the frame period (or through a
pacer), and writes the stream's SDP. An egress fed by an ingress sends from the
ingress's own buffer (:class:`LentFrame`): no copy of the frame in between.

Per-packet work is in C (``msm.ext.st2110``); without it both fall back to
the pure-Python twin (``msm.sdk.rfc4175``), which manages about 30k packets/s
on one core: 720p30 8-bit, not 1080p30 10-bit (112k/s).
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from msm.ext import NativeUnavailable
from msm.rtp_proxy.media.groups import FrameInfo
from msm.sdk.errors import ConfigError
from msm.sdk.rfc4175 import BPM, Depacketizer, packet_plan, packetize
from msm.sdk.st2110_sdp import VideoStream, parse_st2110, video_sdp

__all__ = ["IngressFrame", "St2110Egress", "St2110Ingress", "group_feeder", "native_reason"]

#: Frames waiting in an ingress queue: at 30 frames/s, 4 is 133 ms of video
#: (20 MB at 1080p 10-bit); a consumer further behind loses the newest frames, counted.
DEFAULT_QUEUE_DEPTH = 4
#: Frames waiting for an egress sender thread besides the one being sent: 3 rides out
#: a sender thread descheduled for 100 ms on a busy host; more would only add latency.
EGRESS_QUEUE_DEPTH = 3
#: Socket receive buffer asked for: 1080p30 10-bit bursts a whole 5 MB frame
#: from GStreamer; 32 MB holds six of them while the thread is descheduled.
RCVBUF = 32 << 20
SNDBUF = 8 << 20
#: Linux's value; typeshed does not declare the constant.
_IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
#: A frame whose marker never came is ended after this long without packets.
STALL_MS = 200
#: Interrupt moderation of the C receiver: after a batch that was not full,
#: wait this long for more (28 packets at 1080p30 10-bit; the socket buffer
#: holds 64 MB). Measured: about a third fewer receive calls per frame.
COALESCE_US = 250
#: The share of a frame period the egress spreads a frame's packets over.
SPREAD = Fraction(8, 10)
#: Frames waiting that make a paced egress send the next one unpaced to catch up (2 of its 3).
CATCH_UP = 2
#: Frame buffers an ingress lends (LentFrame) at most: the one being written, the one handed on,
#: what one egress keeps (EGRESS_QUEUE_DEPTH + 1); 31 MB at 1080p 10-bit. Then a spare, copied.
LENT_FRAMES = EGRESS_QUEUE_DEPTH + 3


def native_reason() -> str | None:
    """Why the C core cannot be used (``None``: it can)."""
    try:
        from msm.ext import st2110
        st2110.load()
    except NativeUnavailable as exc:
        return str(exc)
    return None


class LentFrame(bytearray):
    """A frame buffer an ingress lends: a receiver keeping the frame rather than copying it (an egress
    sends from it) calls :meth:`hold` in ``deliver``, :meth:`release` once done; none holds it: reused."""

    def __init__(self, size: int, pool: _Lender) -> None:
        super().__init__(size)
        self._pool, self._holds = pool, 1   # held by the ingress that writes it

    def hold(self) -> None:
        with self._pool.lock:
            self._holds += 1

    def release(self) -> None:
        with self._pool.lock:
            self._holds -= 1
            if self._holds == 0:
                self._pool.free.append(self)


class _Lender:
    """An ingress's buffers: ``most`` LentFrames, then a spare it does not lend (receivers copy it)."""

    def __init__(self, size: int, most: int) -> None:
        self.lock = threading.Lock()
        self.free: list[LentFrame] = []   # bounded: only the `most` LentFrames made enter it
        self.size, self.most, self.made = size, most, 0
        self.spare: bytearray | None = None

    def take(self) -> bytearray:
        with self.lock:
            if self.free:
                buf = self.free.pop()
                buf._holds = 1
                return buf
            if self.made < self.most:
                self.made += 1
                return LentFrame(self.size, self)
            self.spare = self.spare or bytearray(self.size)
            return self.spare


def borrowable(payload: memoryview) -> LentFrame | None:
    """The LentFrame ``payload`` shows whole (a receiver may keep it: hold, then release), else None."""
    buf = payload.obj
    return buf if isinstance(buf, LentFrame) and payload.nbytes == len(buf) and payload.contiguous else None


@dataclass(frozen=True, slots=True)
class IngressFrame:
    """A frame out of the ingress: its 90 kHz timestamp and how it ended."""

    timestamp: int
    complete: bool
    reason: str
    packets: int
    lost: int
    arrived_ns: int


class _Publishes(Protocol):
    def publish(self, payload: memoryview, info: FrameInfo) -> int: ...


def group_feeder(group: _Publishes) -> Callable[[memoryview, IngressFrame], None]:
    """An ``on_frame`` that publishes each frame to ``group`` (a :class:`~msm.rtp_proxy.media.groups.Group`).

    Called from the ingress thread: the group's receivers copy the frame out
    before ``publish`` returns, as the ingress requires.
    """
    counter = [0]

    def on_frame(data: memoryview, frame: IngressFrame) -> None:
        info = FrameInfo(seq=counter[0], timestamp=frame.timestamp,
                         incomplete=None if frame.complete else frame.reason or "incomplete",
                         arrived_ns=frame.arrived_ns)
        counter[0] = (counter[0] + 1) & 0xFFFFFFFF
        group.publish(data, info)

    return on_frame


def _open_socket(address: str, port: int, *, source: str | None, interface: str) -> socket.socket:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if ip.is_multicast:
        # Several receivers of one group on a host share its port. A unicast port is this
        # bridge's alone: with SO_REUSEADDR another local socket could bind it and take its packets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for opt in (33, socket.SO_RCVBUF):   # SO_RCVBUFFORCE (33) when privileged, else capped by rmem_max
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
            break
    if ip.is_multicast and family == socket.AF_INET:
        sock.bind((address, port))
        group, iface = socket.inet_aton(address), socket.inet_aton(interface)
        if source:   # struct ip_mreq_source: multiaddr, interface, sourceaddr
            sock.setsockopt(socket.IPPROTO_IP, _IP_ADD_SOURCE_MEMBERSHIP,
                            group + iface + socket.inet_aton(source))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + iface)
    elif ip.is_multicast:
        sock.bind((address, port))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, ip.packed + struct.pack("@I", 0))
    else:
        sock.bind((address, port))
    return sock


class St2110Ingress:
    """An ST 2110-20 stream arriving on ``address:port`` as frames.

    ``on_frame(payload, frame)`` is called from the ingress thread with a view
    that is only valid during the call (copy it out: a group's receivers do);
    without a callback, frames go to :attr:`frames`, a queue of
    ``queue_depth`` ``(bytes, IngressFrame)``. Incomplete frames are handed on
    with ``complete=False`` and their reason, or dropped and counted when
    ``hand_on_incomplete`` is false.
    """

    def __init__(self, stream: VideoStream, *, on_frame: Callable[[memoryview, IngressFrame], None] | None = None,
                 queue_depth: int = DEFAULT_QUEUE_DEPTH, hand_on_incomplete: bool = True,
                 sender: str | None = None, interface: str = "0.0.0.0", native: bool | None = None) -> None:
        self.stream = stream
        self.fmt = stream.fmt
        self.on_frame = on_frame
        self.hand_on_incomplete = hand_on_incomplete
        self.frames: queue.Queue[tuple[bytes, IngressFrame]] = queue.Queue(maxsize=max(1, queue_depth))
        self.counters = {"frames_delivered": 0, "frames_dropped_incomplete": 0, "frames_dropped_queue_full": 0,
                         "callback_errors": 0}
        self.sock = _open_socket(stream.address, stream.port, source=stream.source, interface=interface)
        self.port = self.sock.getsockname()[1]
        reason = native_reason() if native is not False else "not asked for"
        if native and reason:
            raise NativeUnavailable(reason)
        self.native = reason is None
        self.fallback_reason = reason
        self._stop = threading.Event()
        self._twin = Depacketizer(self.fmt, payload_type=stream.payload_type, hand_on_incomplete=True)
        self._rx: Any = None
        only_from = sender or stream.source
        if self.native:
            from msm.ext import st2110
            self._rx = st2110.Receiver(self.sock.fileno(), self.fmt.width, self.fmt.height, self.fmt.pgroup_bytes,
                                       self.fmt.pgroup_pixels, stream.payload_type)
            if only_from:
                self._rx.set_source(only_from)
            self._rx.set_coalesce(COALESCE_US)
        self._only_from = only_from
        self._thread = threading.Thread(target=self._run_native if self.native else self._run_twin,
                                        name=f"st2110-in:{self.port}", daemon=True)

    @classmethod
    def from_sdp(cls, path: str | Path, **kwargs: Any) -> St2110Ingress:
        """An ingress declared by an SDP file (``ConfigError`` for a file that is not ST 2110-20)."""
        stream = parse_st2110(Path(path).read_text(encoding="utf-8", errors="replace"))
        if not isinstance(stream, VideoStream):
            raise ConfigError(f"{path}: an audio description; the video ingress takes ST 2110-20")
        return cls(stream, **kwargs)

    def start(self) -> St2110Ingress:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> St2110Ingress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        base = self._rx.stats() if self._rx is not None else dict(self._twin.counters)
        return {**base, **self.counters}

    @property
    def last_error(self) -> str:
        return str(self._rx.last_error if self._rx is not None else self._twin.last_error)

    def _emit(self, data: memoryview, frame: IngressFrame) -> None:
        if not frame.complete and not self.hand_on_incomplete:
            self.counters["frames_dropped_incomplete"] += 1
            return
        if self.on_frame is not None:
            try:
                self.on_frame(data, frame)
            except Exception:  # a consumer's fault must not stop the stream
                self.counters["callback_errors"] += 1
                return
        else:
            try:
                self.frames.put_nowait((bytes(data), frame))
            except queue.Full:
                self.counters["frames_dropped_queue_full"] += 1
                return
        self.counters["frames_delivered"] += 1

    def _run_native(self) -> None:
        lender = _Lender(self.fmt.frame_bytes, LENT_FRAMES)
        current = lender.take()
        idle_ms, seen = 0, 0
        while not self._stop.is_set():
            info = self._rx.poll(current, 50)
            if info is None:
                # A timeout ends no frame; only a stream that went quiet does.
                packets = self._rx.stats()["packets"]
                idle_ms, seen = (idle_ms + 50 if packets == seen else 0), packets
                info = self._rx.flush() if idle_ms >= STALL_MS else None
                if info is None:
                    continue
            idle_ms = 0
            reason = "" if info.complete else (f"lost {info.lost} packets" if info.lost else
                                               "no marker" if info.no_marker else
                                               f"got {info.bytes} of {self.fmt.frame_bytes} bytes")
            self._emit(memoryview(current), IngressFrame(info.timestamp, info.complete, reason,
                                                         info.packets, info.lost, time.monotonic_ns()))
            done, current = current, lender.take()
            if isinstance(done, LentFrame):
                done.release()

    def _run_twin(self) -> None:
        self.sock.settimeout(0.05)
        idle = 0.0
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(9000)
            except TimeoutError:
                idle += 0.05
                frames = self._twin.flush() if idle * 1000 >= STALL_MS else []
                idle = 0.0 if frames else idle
            else:
                idle = 0.0
                if self._only_from and peer[0] != self._only_from:
                    self._twin.counters["bad_source"] += 1
                    continue
                frames = self._twin.push(packet)
            for f in frames:
                self._emit(memoryview(f.data), IngressFrame(f.timestamp, f.complete, f.reason, f.packets, f.lost,
                                                            time.monotonic_ns()))


class FramePacer(Protocol):
    """What the egress can send through instead of its even spread (``msm.ext.pacer.Pacer``): given a
    :class:`~msm.ext.st2110.FrameSlot` (C core), or a list of packets (twin), and no lengths."""

    def send_frame(self, buf: Any, lengths: Sequence[int] | None = None) -> object: ...


class St2110Egress:
    """Frames in (:meth:`deliver`, a group receiver) -> ST 2110-20 to ``stream.address:stream.port``.

    :meth:`deliver` puts each frame in a free slot and a sender thread sends it spread over
    :data:`SPREAD` of the frame period; ``pacing`` (narrow, wide, linear) through ``msm.ext.pacer``'s
    ST 2110-21 schedule instead (``pacer``: any object with its ``send_frame``). At most
    :data:`EGRESS_QUEUE_DEPTH` frames wait; beyond, :meth:`deliver` answers ``"egress_busy"``.
    """

    def __init__(self, stream: VideoStream, *, mtu: int = 1400, ssrc: int = 0x2110_0001, native: bool | None = None,
                 pacer: FramePacer | None = None, pacing: str | None = None, spread: bool = True,
                 aligned: bool = True, equal: bool = True) -> None:
        self.stream = stream
        self.fmt = stream.fmt
        self.mtu, self.ssrc, self.pacer = mtu, ssrc & 0xFFFFFFFF, pacer
        # Every packet the same size, so runs go to the kernel at once (UDP GSO): the C core's equal
        # packets (3,784 at 1080p 10-bit), else GPM in equal line slices (4,320, the twin's way).
        self.aligned, self.equal = aligned, equal
        ip = ipaddress.ip_address(stream.address)
        self.sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (32, socket.SO_SNDBUF):   # SO_SNDBUFFORCE (32) when privileged
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, SNDBUF)
                break
        if ip.is_multicast and ip.version == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, stream.ttl)
        # Connected: the kernel looks the route up once, not per packet.
        self.sock.connect((stream.address, stream.port))
        self.spread_ns = int(Fraction(1_000_000_000) / stream.rate * SPREAD) if spread else 0
        reason = native_reason() if native is not False else "not asked for"
        if native and reason:
            raise NativeUnavailable(reason)
        self.native = reason is None
        self.fallback_reason = reason
        # Slots (a frame waiting or being sent; only these EGRESS_QUEUE_DEPTH + 1 circulate in the
        # queues): native, a FrameSlot (headers + spans of a lent or copied frame); twin, a frame buffer.
        self._slots: list[Any] = []
        for _ in range(EGRESS_QUEUE_DEPTH + 1):
            if self.native:
                from msm.ext import st2110
                self._slots.append(st2110.FrameSlot(
                    self.fmt.width, self.fmt.height, self.fmt.pgroup_bytes, self.fmt.pgroup_pixels, mtu=mtu,
                    bpm=stream.packing == BPM, payload_type=stream.payload_type, ssrc=self.ssrc, aligned=aligned,
                    equal=equal))
            else:
                self._slots.append(bytearray(self.fmt.frame_bytes))
        #: Packets a frame goes out as (a pacer's NPACKETS): the C core's equal packets, or line slices.
        self.packets_per_frame = (self._slots[0].max_packets if self.native and self._slots[0].mode == 3 else
                                  len(packet_plan(self.fmt, mtu, stream.packing, aligned=aligned)))
        self._free: queue.Queue[Any] = queue.Queue()
        for slot in self._slots:
            self._free.put(slot)
        self._todo: queue.Queue[tuple[Any, int, LentFrame | None] | None] = queue.Queue()
        self._seq = 0
        self._frames = 0
        if pacing is not None and pacer is None:
            self.pacer = self._st2110_21_pacer(pacing)
        self.counters = {"frames_sent": 0, "packets_sent": 0, "frames_busy": 0, "frames_wrong_size": 0,
                         "frames_catch_up": 0}
        self._thread = threading.Thread(target=self._run, name=f"st2110-out:{stream.port}", daemon=True)
        self._thread.start()

    def _st2110_21_pacer(self, mode: str) -> FramePacer:
        """``msm.ext.pacer``'s ST 2110-21 sender (``mode``: narrow, wide or linear) for this stream."""
        from msm.ext import pacer

        return pacer.Pacer(self.sock.fileno(), (self.stream.address, self.stream.port),
                           Fraction(10**9) / self.stream.rate, self.packets_per_frame, mode, height=self.fmt.height)

    @property
    def name(self) -> str:
        return f"st2110:{self.stream.address}:{self.stream.port}"

    def sdp(self) -> str:
        return video_sdp(self.stream)

    def write_sdp(self, path: str | Path) -> Path:
        Path(path).write_text(self.sdp(), encoding="utf-8")
        return Path(path)

    def deliver(self, payload: memoryview, info: FrameInfo) -> str | None:
        if len(payload) != self.fmt.frame_bytes:
            self.counters["frames_wrong_size"] += 1
            return "wrong_size"
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            self.counters["frames_busy"] += 1
            return "egress_busy"
        if self.native:
            lent = borrowable(payload)   # an ingress's frame: kept until sent, not copied
            if lent is not None:
                lent.hold()
            count = slot.fill(payload, self._seq, info.timestamp, borrow=lent is not None)
            self._seq = (self._seq + count) & 0xFFFFFFFF
            self._todo.put((slot, count, lent))
        else:
            slot[:] = payload
            self._todo.put((slot, info.timestamp, None))
        return None

    def send(self, payload: bytes | bytearray | memoryview, timestamp: int) -> str | None:
        """:meth:`deliver` without a group."""
        return self.deliver(memoryview(payload), FrameInfo(seq=self._frames, timestamp=timestamp))

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            slot, value, lent = item
            try:
                count = self._send_native(slot, value) if self.native else self._send_frame_twin(slot, value)
                self._frames += 1
                self.counters["frames_sent"] += 1
                self.counters["packets_sent"] += count
            finally:
                if lent is not None:
                    slot.release()
                    lent.release()
                self._free.put(slot)

    def _send_native(self, slot: Any, count: int) -> int:
        # Behind (unpaced: a frame waits; paced: CATCH_UP do): this one goes fast rather than frames
        # dropped later for want of a slot; the pacer's stats count it non-compliant (FrameSlot.hurry).
        waiting = self._todo.qsize()
        if self.pacer is not None:
            slot.hurry = waiting >= CATCH_UP
            self.counters["frames_catch_up"] += slot.hurry
            self.pacer.send_frame(slot)   # the frame form: the C pacer takes the slot as it is
        else:
            slot.send(self.sock.fileno(), None, 0, self.spread_ns // 4 if waiting else self.spread_ns)
        return count

    def _send_frame_twin(self, frame: bytearray, timestamp: int) -> int:
        packets = packetize(frame, self.fmt, seq=self._seq, timestamp=timestamp, ssrc=self.ssrc,
                            payload_type=self.stream.payload_type, mtu=self.mtu, packing=self.stream.packing,
                            aligned=self.aligned)
        self._seq = (self._seq + len(packets)) & 0xFFFFFFFF
        if self.pacer is not None:
            self.pacer.send_frame(packets)
        else:
            self._send_twin(packets)
        return len(packets)

    def _send_twin(self, packets: list[bytes]) -> None:
        slots = max(1, self.spread_ns // 1_000_000)   # 1 ms slots: Python cannot sleep finer
        start = time.monotonic_ns()
        for k in range(slots):
            for packet in packets[len(packets) * k // slots:len(packets) * (k + 1) // slots]:
                with contextlib.suppress(OSError):
                    self.sock.send(packet)
            delay = start + self.spread_ns * (k + 1) // slots - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)

    def stats(self) -> dict[str, int]:
        extra: dict[str, int] = {}
        for slot in self._slots if self.native else ():
            for name, value in slot.stats().items():
                extra[name] = max(extra.get(name, 0), value) if name == "gso_disabled" else extra.get(name, 0) + value
        return {**self.counters, **extra}

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> St2110Egress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
