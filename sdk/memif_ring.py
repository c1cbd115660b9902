"""memif shared memory: regions (memfd + mmap) and the descriptor rings laid over them.

A ring is a 128-byte header (cookie, flags, head; tail on the next cache line)
followed by ``2**log2`` 16-byte descriptors (flags, region, length, offset,
metadata). ``head`` and ``tail`` are free-running u16 counters; the slot is the
counter masked by the ring size. The client always writes ``head`` and the server
always writes ``tail``:

- C2S ring (client -> server): the client fills the buffers its descriptors name
  and moves ``head``; the server reads up to ``head`` and hands slots back by
  moving ``tail``.
- S2C ring (server -> client): the client offers empty buffers by moving
  ``head``; the server fills them, sets each length and moves ``tail``.

Nothing here copies payload: a received frame is one ``memoryview`` into the
region (or a list of them for a chained frame), and a frame to send is filled in
place through the views :meth:`TxQueue.alloc` returns. Every descriptor a peer
wrote is checked against the regions before a view is made (a peer can write
anything into shared memory at any time); a bad one drops its frame and is
counted, it never raises out of the data path.

Head and tail are plain aligned 16-bit stores through a memoryview; x86 keeps
stores in program order, so a descriptor written before ``head`` is seen before it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from msm.sdk.memif_proto import (
    COOKIE,
    DESC_FLAG_NEXT,
    RING_FLAG_MASK_INT,
    RING_HEADER_SIZE,
    MemifError,
    ring_bytes,
)
from msm.sdk.memif_region import Region as Region  # re-exported: its home before memif_region

_U32 = 1 << 32


@dataclass
class Counters:
    """Per-connection counters; ``drops`` and ``errors`` are keyed by a fixed set of reasons."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    interrupts_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, object]:
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "tx_packets": self.tx_packets,
                "tx_bytes": self.tx_bytes, "interrupts_sent": self.interrupts_sent, "drops": dict(self.drops),
                "errors": dict(self.errors)}


class Ring:
    """One ring over a region: header fields and descriptors as native-endian integer views."""

    def __init__(self, region: Region, offset: int, log2_size: int, eventfd: int, *, c2s: bool) -> None:
        if offset % 8:
            raise MemifError(f"memif: ring at offset {offset} is not 8-byte aligned", key="bad_ring")
        if offset + ring_bytes(log2_size) > region.size:
            raise MemifError(f"memif: ring at offset {offset} with {1 << log2_size} slots does not fit "
                             f"in its region of {region.size} bytes", key="short_region")
        self.size = 1 << log2_size
        self.mask = self.size - 1
        self.log2_size = log2_size
        self.eventfd = eventfd
        self.c2s = c2s
        self.offset = offset
        self.region = region
        self._hdr = region.mem[offset:offset + RING_HEADER_SIZE].cast("H")
        self._cookie = region.mem[offset:offset + 4].cast("I")
        end = offset + ring_bytes(log2_size)
        self.desc = region.mem[offset + RING_HEADER_SIZE:end].cast("I")  # 4 u32 per descriptor

    def init(self) -> None:
        self._cookie[0] = COOKIE
        self._hdr[2] = 0
        self.reset()

    def reset(self) -> None:
        self._hdr[3] = 0
        self._hdr[32] = 0

    @property
    def cookie_ok(self) -> bool:
        return bool(self._cookie[0] == COOKIE)

    @property
    def head(self) -> int:
        return int(self._hdr[3])

    @head.setter
    def head(self, value: int) -> None:
        self._hdr[3] = value & 0xFFFF

    @property
    def tail(self) -> int:
        return int(self._hdr[32])

    @tail.setter
    def tail(self, value: int) -> None:
        self._hdr[32] = value & 0xFFFF

    @property
    def flags(self) -> int:
        return int(self._hdr[2])

    @flags.setter
    def flags(self, value: int) -> None:
        self._hdr[2] = value

    def read_desc(self, slot: int) -> tuple[int, int, int, int]:
        """(flags, region, length, offset) of ``slot`` (a counter; masked here)."""
        i = (slot & self.mask) * 4
        word = int(self.desc[i])
        return word & 0xFFFF, word >> 16, int(self.desc[i + 1]), int(self.desc[i + 2])

    def write_desc(self, slot: int, flags: int, region: int, length: int, offset: int) -> None:
        i = (slot & self.mask) * 4
        self.desc[i] = flags | (region << 16)
        self.desc[i + 1] = length
        self.desc[i + 2] = offset

    def release(self) -> None:
        for view in (self._hdr, self._cookie, self.desc):
            view.release()


def _view(regions: list[Region], region: int, offset: int, length: int) -> memoryview | None:
    if region >= len(regions) or offset + length > regions[region].size:
        return None
    return regions[region].mem[offset:offset + length]


@dataclass
class RxFrame:
    """A received frame: ``data`` is one view, or a list of views for a chained frame; release it when done."""

    data: memoryview | list[memoryview]
    length: int
    end: int  # ring counter after the frame's last slot
    queue: RxQueue
    region: int = 0  # where the first buffer lies (to forward it by reference: TxQueue.send_external)
    offset: int = 0

    def views(self) -> list[memoryview]:
        return self.data if isinstance(self.data, list) else [self.data]

    def release(self) -> None:
        """Gives the frame's slots (and those of every earlier frame of the queue) back to the peer."""
        self.queue.release(self.end)


class RxQueue:
    """The receiving end of one ring (C2S on the server, S2C on the client)."""

    def __init__(self, ring: Ring, regions: list[Region], counters: Counters, *, client: bool,
                 buffers: list[tuple[int, int, int]] | None = None, interrupts: bool = True) -> None:
        self.ring = ring
        self.regions = regions
        self.counters = counters
        self.client = client
        self.buffers = buffers  # client: the (region, offset, size) each slot's buffer is, refilled from here
        self._next = 0
        self._released = 0
        self._fast: Any = None  # msm.sdk.memif_fast.FastRx when the C ring walker is built
        ring.flags = 0 if interrupts else RING_FLAG_MASK_INT

    def start(self, native: bool = True) -> None:
        self._next = self._released = 0
        if self.client:
            self._refill()
        if native:
            from msm.sdk.memif_fast import fast_rx  # here: memif_fast builds on this module

            self._fast = fast_rx(self)

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None

    def regions_changed(self) -> None:
        """Call after a region was added or replaced: the C walker checks descriptors against a copy of sizes."""
        if self._fast is not None:
            self._fast.refresh()

    @property
    def next_counter(self) -> int:
        """The ring counter after the last slot read (what ``release`` takes to give everything back)."""
        return self._next

    def fileno(self) -> int:
        """The eventfd the peer signals after sending (unless in polling mode)."""
        return self.ring.eventfd

    def clear_interrupt(self) -> None:
        try:
            os.eventfd_read(self.ring.eventfd)
        except OSError:
            pass  # nothing pending (EAGAIN), or the connection is closing

    def _produced(self) -> int:
        return self.ring.tail if self.client else self.ring.head

    def pending(self) -> int:
        """Slots the peer has produced that this side has not read."""
        return (self._produced() - self._next) & 0xFFFF

    def recv(self) -> RxFrame | None:
        """The next frame, or None when there is none (a frame with a bad descriptor is dropped and counted)."""
        if self._fast is not None:
            frame: RxFrame | None = self._fast.recv()
            return frame
        while True:
            available = self.pending()
            if available == 0 or available > self.ring.size:
                if available > self.ring.size:
                    self.counters.errors["ring_counter_out_of_range"] += 1
                return None
            frame, used = self._gather(available)
            if used == 0:
                return None
            self._next = (self._next + used) & 0xFFFF
            if frame is not None:
                return frame
            if self._released == (self._next - used) & 0xFFFF:
                self.release(self._next)  # nothing held before the dropped frame: give its slots back now

    def _gather(self, available: int) -> tuple[RxFrame | None, int]:
        views: list[memoryview] = []
        total, slot, bad = 0, self._next, False
        first = self.ring.read_desc(slot)
        for used in range(1, available + 1):
            flags, region, length, offset = self.ring.read_desc(slot)
            view = _view(self.regions, region, offset, length)
            if view is None:
                bad = True
            else:
                views.append(view)
                total += length
            slot += 1
            if not flags & DESC_FLAG_NEXT:
                if bad:
                    self.counters.drops["bad_descriptor"] += 1
                    self.counters.errors["descriptor_outside_region"] += 1
                    return None, used
                self.counters.rx_packets += 1
                self.counters.rx_bytes += total
                data: memoryview | list[memoryview] = views[0] if len(views) == 1 else views
                return RxFrame(data, total, slot & 0xFFFF, self, first[1], first[3]), used
        if available == self.ring.size:  # a chain as long as the ring can never end
            self.counters.drops["unterminated_chain"] += 1
            self.counters.errors["unterminated_chain"] += 1
            return None, available
        return None, 0  # the rest of the chain is not published yet

    def release(self, end: int) -> None:
        """Hands slots up to counter ``end`` back to the sender."""
        if ((end - self._released) & 0xFFFF) > ((self._next - self._released) & 0xFFFF):
            return  # already released (frames released out of order)
        self._released = end & 0xFFFF
        if self.client:
            self._refill()
        else:
            self.ring.tail = self._released

    def _refill(self) -> None:
        assert self.buffers is not None
        head = self.ring.head
        stop = (self._released + self.ring.size) & 0xFFFF
        while head != stop:
            region, offset, size = self.buffers[head & self.ring.mask]
            self.ring.write_desc(head, 0, region, size, offset)
            head = (head + 1) & 0xFFFF
        self.ring.head = head


@dataclass
class TxBuffer:
    """Buffers reserved for one frame: fill ``views`` in place, then :meth:`TxQueue.commit`."""

    views: list[memoryview]
    start: int
    capacities: list[int]

    @property
    def view(self) -> memoryview:
        """The one view of a frame that fits one buffer."""
        if len(self.views) != 1:
            raise ValueError("frame spans several buffers: use views")
        return self.views[0]


class TxQueue:
    """The sending end of one ring (C2S on the client, S2C on the server)."""

    def __init__(self, ring: Ring, regions: list[Region], counters: Counters, *, client: bool,
                 buffers: list[tuple[int, int, int]] | None = None) -> None:
        self.ring = ring
        self.regions = regions
        self.counters = counters
        self.client = client
        self.buffers = buffers  # client: the (region, offset, size) each slot's own buffer is
        self._pending: TxBuffer | None = None  # at most one frame reserved at a time, committed in order
        self.native_ptr: Any = None  # the C forwarder's pointer to this ring's region (msm.sdk.memif_fast)

    def close(self) -> None:
        if self.native_ptr is not None:
            from msm.sdk.memif_fast import release_pointer

            release_pointer(self.native_ptr)
            self.native_ptr = None

    def _cursor(self) -> int:
        return self.ring.head if self.client else self.ring.tail

    def free(self) -> int:
        """Slots this side may fill now."""
        if self.client:
            return self.ring.size - ((self.ring.head - self.ring.tail) & 0xFFFF)
        return (self.ring.head - self.ring.tail) & 0xFFFF

    def consumed(self) -> int:
        """The peer's consumption counter (client: the server's tail), for holding external buffers."""
        return self.ring.tail

    def returned(self) -> int:
        """Server only: the client's release counter (slots before it are given back; its head minus the ring)."""
        return (self.ring.head - self.ring.size) & 0xFFFF

    def alloc(self, size: int) -> TxBuffer | None:
        """Buffers for a ``size``-byte frame (chained over several slots if it needs them), or None if full."""
        if self._pending is not None:
            raise MemifError("memif: commit the previous frame before allocating another")
        if self.buffers is not None and 0 < size <= self.buffers[0][2]:  # own buffers, one is enough
            ring = self.ring
            head = ring.head
            if ((head - ring.tail) & 0xFFFF) >= ring.size:
                return None
            region, offset, _ = self.buffers[head & ring.mask]
            self._pending = TxBuffer([self.regions[region].mem[offset:offset + size]], head, [size])
            return self._pending
        if not self.client and size > 0:  # the server's usual case: the next offered buffer holds the frame
            ring = self.ring
            tail = ring.tail
            if 0 < (ring.head - tail) & 0xFFFF <= ring.size:
                _, region, cap, offset = ring.read_desc(tail)
                view = _view(self.regions, region, offset, size) if cap >= size else None
                if view is not None:
                    self._pending = TxBuffer([view], tail, [size])
                    return self._pending
        free = self.free()
        if free > self.ring.size:
            self.counters.errors["ring_counter_out_of_range"] += 1
            return None
        views: list[memoryview] = []
        caps: list[int] = []
        start = slot = self._cursor()
        left = size
        while left > 0 or not views:
            if len(views) == free:
                return None
            region, offset, cap = self._slot_buffer(slot)
            view = _view(self.regions, region, offset, cap)
            if view is None or cap == 0:
                self.counters.errors["descriptor_outside_region"] += 1
                return None
            take = min(cap, left)
            views.append(view[:take])
            caps.append(take)
            left -= take
            slot += 1
        self._pending = TxBuffer(views, start, caps)
        return self._pending

    def _slot_buffer(self, slot: int) -> tuple[int, int, int]:
        if self.client:
            assert self.buffers is not None
            return self.buffers[slot & self.ring.mask]
        _, region, length, offset = self.ring.read_desc(slot)
        return region, offset, length

    def commit(self, buf: TxBuffer, signal: bool = True) -> None:
        """Publishes the frame ``buf`` holds (all its views filled) and signals the peer.

        ``signal=False`` leaves the wakeup to a later commit or :meth:`signal`
        (one eventfd write per batch instead of per frame).
        """
        if buf is not self._pending:
            raise MemifError("memif: commit of a buffer that is not the one allocated")
        self._pending = None
        last = len(buf.capacities) - 1
        for i, length in enumerate(buf.capacities):
            slot = buf.start + i
            region, offset, _ = self._slot_buffer(slot)
            self.ring.write_desc(slot, DESC_FLAG_NEXT if i < last else 0, region, length, offset)
        self._publish(buf.start + last + 1, sum(buf.capacities), signal=signal)

    def abort(self) -> None:
        """Forgets the allocated, uncommitted frame."""
        self._pending = None

    def send_external(self, region: int, offset: int, length: int) -> bool:
        """Client only: publishes one descriptor naming any registered region (a buffer another peer filled)."""
        if not self.client or self._pending is not None:
            raise MemifError("memif: external descriptors are sent by a client with no frame allocated")
        if _view(self.regions, region, offset, length) is None or length >= _U32:
            raise MemifError(f"memif: external buffer {region}:{offset}+{length} outside the regions")
        if self.free() == 0:
            return False
        slot = self.ring.head
        self.ring.write_desc(slot, 0, region, length, offset)
        self._publish(slot + 1, length)
        return True

    def send_foreign(self, region: int, offset: int, length: int, signal: bool = True) -> bool:
        """Server only: fills the next offered slot with a descriptor naming ``region``, a region the client
        mapped from elsewhere (our SDK's shared sender regions), instead of the buffer it offered.

        The caller vouches for ``region:offset+length`` (the client checks it against its own mapping again
        before it makes a view). False if no slot is offered now.
        """
        if self.client or self._pending is not None:
            raise MemifError("memif: foreign descriptors are sent by a server with no frame allocated")
        free = self.free()
        if free == 0 or free > self.ring.size:
            return False
        slot = self.ring.tail
        self.ring.write_desc(slot, 0, region, length, offset)
        self._publish(slot + 1, length, signal=signal)
        return True

    def _publish(self, end: int, nbytes: int, frames: int = 1, signal: bool = True) -> None:
        if self.client:
            self.ring.head = end
        else:
            self.ring.tail = end
        self.counters.tx_packets += frames
        self.counters.tx_bytes += nbytes
        if signal:
            self.signal()

    def signal(self) -> None:
        """Wakes the peer unless it polls (MEMIF_RING_FLAG_MASK_INT)."""
        if not self.ring.flags & RING_FLAG_MASK_INT:
            try:
                os.eventfd_write(self.ring.eventfd, 1)
                self.counters.interrupts_sent += 1
            except BlockingIOError:
                pass  # the counter is saturated: the peer has a wakeup pending already
            except OSError:
                self.counters.errors["interrupt_failed"] += 1
