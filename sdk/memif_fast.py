"""The memif data path's fast lane: bursts of descriptors walked in C (``msm.ext._memif``) when it is built.

:func:`fast_rx` gives an :class:`RxQueue` a burst reader: one C call checks up to
64 frames' descriptors against the regions, then each ``recv`` only slices a
view. :func:`forward` moves single-buffer frames from a receive ring to a
client's transmit ring *by reference* (the proxy hop: the buffer stays where
the sender wrote it), in C when built, else in Python with the same effect.
Neither reads or writes a payload byte.
"""

from __future__ import annotations

from typing import Any

from msm.sdk.memif_ring import RxFrame, RxQueue, TxQueue

try:
    from msm.ext import memif_native as _native

    _native.load()
    NATIVE: str | None = None
except (ImportError, RuntimeError) as exc:  # NativeUnavailable is a RuntimeError
    NATIVE = str(exc) or "unavailable"

__all__ = ["NATIVE", "FastRx", "fast_rx", "forward", "native_reason", "release_pointer"]


def native_reason() -> str | None:
    """Why the C fast path is not in use, or None when it is."""
    return NATIVE


def release_pointer(ptr: Any) -> None:
    _native.release(ptr)


class FastRx:
    """Reads a ring in bursts through C; frames come out exactly as the Python walk gives them."""

    def __init__(self, queue: RxQueue) -> None:
        self.q = queue
        self.base = _native.pointer(queue.ring.region.buffer())
        self.ring = self.base + queue.ring.offset
        self.sizes = _native.sizes([r.size for r in queue.regions])
        self.nsizes = len(queue.regions)  # what ``sizes`` holds: never more than C may read
        self.out = _native.out_array(_native.BURST)
        self.n = self.i = 0
        self.start = self.end_all = 0

    def close(self) -> None:
        _native.release(self.base)

    def refresh(self) -> None:
        """Takes the queue's regions' sizes again (a region was added or replaced)."""
        sizes = [r.size for r in self.q.regions]
        self.sizes, self.nsizes = _native.sizes(sizes), len(sizes)

    def _fill(self) -> bool:
        q = self.q
        produced = q.ring.tail if q.client else q.ring.head
        n, consumed, bad = _native.rx_burst(self.ring, q.ring.log2_size, q._next, produced, self.sizes,
                                            self.nsizes, self.out, _native.BURST)
        if bad:
            q.counters.drops["bad_descriptor"] += bad
            q.counters.errors["descriptor_outside_region"] += bad
        self.start, self.end_all = q._next, (q._next + consumed) & 0xFFFF
        self.n, self.i = n, 0
        if n == 0 and consumed:
            held = q._released != q._next
            q._next = self.end_all
            if not held:
                q.release(self.end_all)  # only dropped frames: give their slots back now
        return n > 0

    def recv(self) -> RxFrame | None:
        if self.i >= self.n and not self._fill():
            return None
        q, o, k = self.q, self.out, 5 * self.i
        self.i += 1
        start = (self.start + o[k]) & 0xFFFF
        region, offset, length, slots = o[k + 1], o[k + 2], o[k + 3], o[k + 4]
        end = (start + slots) & 0xFFFF
        q._next = end if self.i < self.n else self.end_all
        if slots == 1:
            data: memoryview | list[memoryview] = q.regions[region].mem[offset:offset + length]
        else:
            data = []
            for s in range(start, start + slots):
                _, reg, ln, off = q.ring.read_desc(s)
                data.append(q.regions[reg].mem[off:off + ln])
        q.counters.rx_packets += 1
        q.counters.rx_bytes += length
        return RxFrame(data, length, end, q, region, offset)


def fast_rx(queue: RxQueue) -> FastRx | None:
    """A burst reader for ``queue``, or None when the C fast path is not built."""
    return None if NATIVE is not None else FastRx(queue)


def forward(rx: RxQueue, tx: TxQueue, region_delta: int, max_frames: int = 64) -> int:
    """Moves up to ``max_frames`` received single-buffer frames to client ``tx`` by reference; returns how many.

    ``region_delta`` maps a receive region index to the transmit side's index of
    the same memfd. The frames stay unreleased on ``rx``: release them (in
    order, ``rx.release(counter)``) once ``tx.consumed()`` shows the peer is
    done. A chained frame stops the batch (``recv`` it and decide).
    """
    if not tx.client:
        raise ValueError("forward by reference needs a client transmit ring (the client names the regions)")
    fast = rx._fast
    if fast is None or fast.i < fast.n:
        return _forward_python(rx, tx, region_delta, max_frames)
    if tx.native_ptr is None:
        tx.native_ptr = _native.pointer(tx.ring.region.buffer())
    produced = rx.ring.tail if rx.client else rx.ring.head
    n, consumed, bad, nbytes = _native.forward(
        fast.ring, rx.ring.log2_size, rx._next, produced, fast.sizes, fast.nsizes,
        tx.native_ptr + tx.ring.offset, tx.ring.log2_size, region_delta, max_frames)
    rx._next = (rx._next + consumed) & 0xFFFF
    if bad:
        rx.counters.drops["bad_descriptor"] += bad
        rx.counters.errors["descriptor_outside_region"] += bad
    if n:
        rx.counters.rx_packets += n
        rx.counters.rx_bytes += nbytes
        tx.counters.tx_packets += n
        tx.counters.tx_bytes += nbytes
        tx.signal()
    return n


def _forward_python(rx: RxQueue, tx: TxQueue, region_delta: int, max_frames: int) -> int:
    done = 0
    while done < max_frames and tx.free() > 0:
        frame = rx.recv()
        if frame is None:
            break
        if isinstance(frame.data, list):
            rx.counters.drops["chained_not_forwarded"] += 1
            continue
        tx.send_external(frame.region + region_delta, frame.offset, frame.length)
        done += 1
    return done

