"""Zero-copy fan-out on one node: a local memif sender's frames go to local memif receivers by reference.

When a group tx port attaches, its region 0 (rings and buffers) is sealed with
F_SEAL_FUTURE_WRITE, F_SEAL_GROW and F_SEAL_SEAL: the sender's and this proxy's mappings, made
before, stay writable; nobody can make a new writable mapping or write(2) to it,
whatever fd they hold or reopen through /proc. The agent then hands that fd to
the apps with rx connections of the same group (SCM_RIGHTS on their agent
socket, with a region index 1 or 2 and a token naming this attachment); each
maps it read-only and says so, and from then on frames go to it as descriptors
naming (that index, the sender's offset, the frame's length). The sender's
slot goes back to the sender only once every receiver that got the frame gave
it back (:class:`SharedFrame` counts them; slots go back in ring order). A
new sender (or the same app reattaching) is a new token: receivers are offered
the new region at the other index while frames of the old one may be
outstanding, and take copies until they have mapped it; the region of a sender
that is gone is unmapped by its receivers (``unmap``) once none of its frames
is held, so its memory is freed. Frames smaller than
:data:`SHARE_MIN_BYTES` are copied anyway (that costs less).

What one receiver may pin, and for how long (a stalled receiver must not stall
the sender or its siblings): slots go back to the sender in ring order, so one
frame held for long holds every later slot too. Hence:

- a receiver gets a frame by reference only while its ring holds fewer than
  :data:`MAX_SHARED_HELD` frames (given and not given back, read or not): one
  that is that far behind gets copies (``copy_reasons.behind``), which pin
  nothing, so no receiver pins more than MAX_SHARED_HELD of its sender's slots;
- when a sender is down to its last free slot and its oldest frame has been
  held for :data:`DEMOTE_AFTER` seconds, the receivers holding it are judged:
  one that gave nothing back for :data:`HOLD_LIMIT` seconds has stopped and is
  disconnected (``drops.held_too_long``; the app's next call says why), which
  gives its frames back; one that is reading, only slowly, gets copies for
  :data:`DEMOTION` seconds (``copy_reasons.demoted``) and is not waited for
  again. A receiver that stops therefore delays its sender at most HOLD_LIMIT
  once, and only when the sender ran through its whole ring meanwhile (16
  slots at 30 frames/s are half a second: a paced sender never waits); its
  siblings are never held up (frames go to each receiver on its own; a full
  ring is a drop for that receiver alone).

Who may write the frames a receiver reads: the sender (it owns them) and this
proxy, through the mappings they made before the seal. A receiver gets the fd
and can map it only read-only (mmap PROT_WRITE, mprotect, write(2) and a
reopen through /proc all fail on the seal), so it cannot change what its
siblings read. F_SEAL_WRITE would stop the sender too (and cannot be set while
it has its mapping), hence the future-write seal.
"""

from __future__ import annotations

import collections
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from msm.sdk.media_agent import FrameLayout
from msm.sdk.memif_region import F_SEAL_FUTURE_WRITE

__all__ = ["DEMOTE_AFTER", "DEMOTION", "HOLD_LIMIT", "MAX_SHARED_HELD", "NO_REGION", "SHARED_INDICES", "SHARED_POLL",
           "SHARE_MIN_BYTES", "Holds", "SharedFrame", "SharedRegion", "judge", "offer", "seal"]

#: How often the data thread looks at receivers that hold frames by reference (they do not wake it when
#: they give one back): a sender waiting for a slot waits at most this much longer.
SHARED_POLL = 0.001
#: Frames a receiver's ring may hold for it to be given another by reference (more are copied): what one
#: receiver can pin of its sender's ring.
MAX_SHARED_HELD = 8
#: Frames smaller than this are copied, not shared: copying a few KiB costs less than holding the sender's
#: slot and taking it back (Python per frame), and a small frame's sender needs its ring turning fast.
SHARE_MIN_BYTES = 64 * 1024
#: Seconds without giving a frame back after which a receiver that holds a starved sender's oldest frame is
#: disconnected (see the module's docstring for what that bounds).
HOLD_LIMIT = 0.2
#: Seconds a starved sender's oldest frame may be held before its holders are judged.
DEMOTE_AFTER = 0.02
#: Seconds a slow receiver that held up its sender gets copies only.
DEMOTION = 1.0
#: The region indices a receiving app's memif connection knows senders' regions by: two, so a new sender
#: can be mapped while frames of the old one are still held.
SHARED_INDICES = (1, 2)

#: What a shared region carries: nobody may make a new writable mapping or write(2) it (the mappings made
#: before stay writable), it cannot shrink or grow, and no seal can be taken off or added.
SEALS = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def seal(fd: int) -> int:
    """Seals the memfd ``fd`` with :data:`SEALS` (if it is not yet) and returns a dup of it to share;
    OSError if it cannot be (its owner sealed it final without them, or it is not a memfd)."""
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
        raise OSError("the seals did not take")
    return os.dup(fd)


_P = TypeVar("_P")


class _Sender(Protocol):
    share: SharedRegion | None

    def settle(self) -> None: ...


class SharedRegion:
    """A tx port's sealed region 0 as receivers map it; ``token`` names this attachment."""

    def __init__(self, token: str, fd: int, size: int, layout: FrameLayout) -> None:
        self.token, self.fd, self.size, self.layout = token, fd, size, layout

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SharedFrame:
    """One sender frame, held until every receiver that took it by reference gave it back."""

    __slots__ = ("born", "end", "length", "offset", "port", "refs", "region")

    def __init__(self, port: _Sender, region: SharedRegion, offset: int, length: int, end: int) -> None:
        self.port, self.region, self.offset, self.length, self.end = port, region, offset, length, end
        self.refs = 0
        self.born = time.monotonic_ns()

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0 and self.port.share is self.region:  # not a handle of an earlier attachment
            self.port.settle()



NO_REGION = SharedRegion("", -1, 0, FrameLayout(0, 0))  # the region of frames held only to keep ring order


class Holds:
    """One receiving app's side: the senders' regions it maps, and the frames it holds by reference."""

    def __init__(self) -> None:
        self.maps: dict[int, str] = {}  # region index -> token the app has mapped (at most SHARED_INDICES)
        self.offer: tuple[int, str] | None = None  # sent to the app, not acknowledged yet
        self.want_retry = False  # an offer waits for an index no held frame names
        self.known = 0  # the highest index the app has mapped: its regions are 0..known, the next is known + 1
        self.progress_ns = 0  # when it last gave a frame back (or was given one holding none)
        self.demoted_until_ns = 0  # copies only until then (it held up its sender)
        # (ring counter after the frame, region index, frame, when given): at most MAX_SHARED_HELD
        self.held: collections.deque[tuple[int, int, SharedFrame, int]] = collections.deque()

    def index_of(self, token: str) -> int | None:
        return next((i for i, t in self.maps.items() if t == token), None)

    def hold(self, end: int, index: int, frame: SharedFrame) -> None:
        now = time.monotonic_ns()
        if not self.held:
            self.progress_ns = now
        frame.refs += 1
        self.held.append((end, index, frame, now))

    def offer_index(self, token: str) -> int | None:
        """(Plane lock held.) The index to offer ``token``'s region at, or None: already mapped or offered,
        or no free index yet (``want_retry``: offered again once the held frames are given back)."""
        if token in self.maps.values() or (self.offer is not None and self.offer[1] == token):
            return None
        busy = {index for _, index, _, _ in self.held}
        free = [i for i in SHARED_INDICES if i not in busy and i <= self.known + 1]
        if not free:
            self.want_retry = True
            return None
        index = min(free, key=lambda i: (i in self.maps, i))  # a new index first, else a stale one
        self.maps.pop(index, None)
        self.offer = (index, token)
        return index

    def accept(self, index: object, token: object) -> bool:
        """The app says it mapped ``token``'s region at ``index``."""
        if self.offer is None or self.offer != (index, token):  # values from the app: only the offer matches
            return False
        index, token = self.offer
        self.maps[index] = token
        self.offer = None
        self.known = max(self.known, index)
        return True

    def clear(self) -> None:
        """The app's connection went: every frame it held is given back, and it maps nothing any more."""
        while self.held:
            self.held.popleft()[2].release()
        self.maps.clear()
        self.offer = None
        self.known = 0

    def reap(self, returned: int) -> None:
        """Gives back the frames before the app's ring counter ``returned`` (it releases in ring order)."""
        if self.held and (returned - self.held[0][0]) & 0xFFFF < 0x8000:
            self.progress_ns = time.monotonic_ns()
        while self.held and (returned - self.held[0][0]) & 0xFFFF < 0x8000:
            self.held.popleft()[2].release()

    def holds(self, frame: SharedFrame) -> bool:
        return any(held is frame for _, _, held, _ in self.held)


def judge(inflight: collections.deque[SharedFrame], slots: int, holders: list[tuple[_P, Holds]],
          now_ns: int) -> list[_P]:
    """For a sender with ``slots`` ring slots and frames ``inflight``: the receivers to disconnect for holding
    it up (see the module's docstring); slow ones are demoted here instead."""
    oldest = inflight[0] if inflight else None
    if oldest is None or oldest.refs <= 0 or len(inflight) < slots - 1 or now_ns - oldest.born < DEMOTE_AFTER * 1e9:
        return []
    holding = [(port, holds) for port, holds in holders if holds.holds(oldest)]
    stopped = [port for port, holds in holding if now_ns - holds.progress_ns > HOLD_LIMIT * 1e9]
    if not stopped:
        for _, holds in holding:
            holds.demoted_until_ns = now_ns + int(DEMOTION * 1e9)
    return stopped


class _Receiver(Protocol):
    cid: str
    layout: FrameLayout
    refs: Holds


def offer(share: SharedRegion | None, receivers: Sequence[tuple[_Receiver, Any]],
          send: Callable[[Any, dict[str, Any], int], bool]) -> int:
    """(Plane lock held.) Tells each attached receiver (with its agent socket) to drop the regions of senders
    that are gone (``unmap``, once no frame it holds names them: their memory is freed when nobody maps it),
    and offers it ``share`` (the group's sender now, if any) when it lacks it and could take its frames by
    reference; how many offers went."""
    sent = 0
    for port, sock in receivers:
        busy = {index for _, index, _, _ in port.refs.held}
        for index, token in list(port.refs.maps.items()):
            if share is not None and token == share.token:
                continue
            if index in busy:
                port.refs.want_retry = True  # again once the frames naming it are given back
            elif send(sock, {"op": "unmap", "connection": port.cid, "index": index, "token": token}, -1):
                del port.refs.maps[index]
        if share is None or port.layout.payload_offset != share.layout.payload_offset:
            continue  # no sender to share, or its frames could not go by reference
        at = port.refs.offer_index(share.token)
        if at is None:
            continue
        notice = {"op": "region", "connection": port.cid, "index": at, "size": share.size, "token": share.token}
        if send(sock, notice, share.fd):
            sent += 1
        else:
            port.refs.offer = None  # the app's socket is full: offered again on the next occasion
    return sent
