"""Whole media frames between proxies over libfabric: one RDM endpoint per proxy.

A sending proxy calls :meth:`FabricEndpoint.send` once per receiving node for
each frame (the multipoint-group shape); the frame goes as one message, zero
copy from the caller's buffer. Each receiving endpoint grants every peer
``credits`` receive buffers; a sender without credit for a peer gets ``False``
back and the frame is counted as ``no_credit`` for that peer, never queued, so
a receiver that stops reading cannot grow the sender's memory or hold up the
other peers. A send the provider refuses only for the moment (shm still
mapping a new peer, a full transmit queue) is taken and retried, in order, by
:meth:`~FabricEndpoint.poll` and :meth:`~FabricEndpoint.send` for at most
:data:`RETRY_SECONDS`; only then is it dropped, counted as ``drop_busy``.
:meth:`FabricEndpoint.poll` returns received frames as views into
the endpoint's receive buffers; :meth:`ReceivedFrame.release` hands the buffer
back and the credit to its sender.

Providers: ``tcp;ofi_rxm`` between nodes (binds the address given: loopback
when none, never the wildcard) and ``shm`` on one host. Addresses travel out of
band: :meth:`~FabricEndpoint.local_address` on one side,
:meth:`~FabricEndpoint.add_peer` on the other. Frames and grants from endpoints
never added are dropped and counted. A peer restarted at the same address starts
with fresh credits (control messages carry each endpoint's incarnation). On shm
each peer's frames leave from an endpoint of their own, so one frozen peer cannot
hold up the completions to the others (see ``ext/fabric.h``).

One thread drives an endpoint. For asyncio, :meth:`~FabricEndpoint.fileno` is
the completion queue's wait descriptor where the provider has one
(``loop.add_reader(fd, ...)`` then ``poll(0)``); it is a hint, not a promise
(libfabric's providers make progress inside ``poll``), so also call ``poll``
at least every few milliseconds, or run it on a thread with a timeout.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from msm.ext import NativeUnavailable
from msm.ext import fabric as native
from msm.sdk.errors import ConfigError, NotFound, Unavailable

__all__ = ["FabricConfigError", "FabricEndpoint", "FabricUnavailable", "FrameHeader", "ReceivedFrame",
           "choose_provider"]

#: Default receive credits per peer: enough to overlap a frame on the wire, one
#: being read and two queued at 60 frames/s, while keeping what one peer can
#: pin in our memory to 4 frames (about 21 MB of 1080p 10-bit video).
DEFAULT_CREDITS = 4
#: Most credits a peer may be granted: receive memory is credits x peers x frame.
MAX_CREDITS = 64
#: Default peer table size: the receive pool is sized for all of them up front.
DEFAULT_MAX_PEERS = 8
#: Most peers of one endpoint (the C side's table limit).
MAX_PEERS = 1024
#: Largest frame an endpoint may be opened for: 8K 4:4:4 16-bit is under 200 MB;
#: anything larger is a configuration mistake, not a frame.
MAX_FRAME = 256 * 1024 * 1024
#: Metadata bytes carried with each frame (copied into the header buffer).
DEFAULT_MAX_META = 256
MAX_META = 64 * 1024
#: Events taken from the C side per call of poll (a bounded array, reused).
EVENT_BATCH = 64
#: How long a send the provider refuses for the moment (-FI_EAGAIN) is retried
#: before it is dropped (``MSM_FAB_RETRY_MS`` in ext/fabric.h: six frame periods at 60 frames/s).
RETRY_SECONDS = 0.1


class FabricUnavailable(Unavailable):
    """The libfabric link cannot run here: not built, or the provider is not offered on this host."""


class FabricConfigError(ConfigError):
    """A bad provider name, address or limit for a libfabric endpoint."""


class FrameHeader(NamedTuple):
    """What travels with each frame besides its payload."""

    group: int
    seq: int
    timestamp: int
    metadata: bytes = b""


@dataclass(eq=False)
class ReceivedFrame:
    """A frame in one of the endpoint's receive buffers; valid until :meth:`release` (or close)."""

    peer: int
    group: int
    seq: int
    timestamp: int
    metadata: memoryview
    payload: memoryview
    slot: int
    _endpoint: FabricEndpoint | None = field(repr=False, default=None)

    def release(self) -> None:
        """Give the buffer back (the views go dead) and return the credit to the sender; again: no-op."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint._release(self)


def _close_native(lib: Any, ptr: Any, inflight: dict[int, Any]) -> None:
    lib.msm_fab_close(ptr)
    inflight.clear()


def _peer_fields() -> tuple[str, ...]:
    return ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "drop_no_credit", "drop_busy", "drop_send_error",
            "rx_bad", "granted", "sent", "my_grant", "tx_pending", "rx_held", "credits", "tx_retried", "tx_queued")


def _check_limits(max_frame: int, credits: int, max_peers: int, max_meta: int) -> None:
    if not 0 < max_frame <= MAX_FRAME:
        raise FabricConfigError(f"max_frame must be 1..{MAX_FRAME} bytes, not {max_frame}")
    if not 0 < credits <= MAX_CREDITS:
        raise FabricConfigError(f"credits must be 1..{MAX_CREDITS}, not {credits}")
    if not 0 < max_peers <= MAX_PEERS:
        raise FabricConfigError(f"max_peers must be 1..{MAX_PEERS}, not {max_peers}")
    if not 0 <= max_meta <= MAX_META:
        raise FabricConfigError(f"max_meta must be 0..{MAX_META}, not {max_meta}")


def _load() -> Any:
    try:
        return native.load()
    except NativeUnavailable as exc:
        raise FabricUnavailable(str(exc)) from None


def _check_provider(provider: str) -> None:
    if not provider or any(ch.isspace() for ch in provider) or len(provider) > 64:
        raise FabricConfigError(f"bad libfabric provider name {provider!r}")
    reason = native.probe(provider)
    if reason is None:
        return
    offered = ", ".join(native.providers()) or "none"
    if provider not in native.KNOWN_PROVIDERS:
        raise FabricConfigError(f"libfabric provider {provider!r} is unknown or not offered on this host "
                                f"(it offers: {offered})")
    raise FabricUnavailable(f"{reason} (this host offers: {offered})")


def choose_provider(requested: str | None, *, same_host: bool) -> str:
    """The provider for a link: ``requested`` (``options.rdma.provider`` or the control plane's
    choice) if given and offered here, else ``shm`` on one host and ``tcp;ofi_rxm`` between nodes."""
    _load()
    provider = requested or ("shm" if same_host else "tcp;ofi_rxm")
    _check_provider(provider)
    return provider


class FabricEndpoint:
    """One libfabric RDM endpoint: frames out to added peers, frames in from them."""

    def __init__(self, provider: str, address: str | None = None, port: int | None = None, *, max_frame: int,
                 credits: int = DEFAULT_CREDITS, max_peers: int = DEFAULT_MAX_PEERS,
                 max_meta: int = DEFAULT_MAX_META) -> None:
        _check_limits(max_frame, credits, max_peers, max_meta)
        mod = _load()
        _check_provider(provider)
        if port is not None and not 0 <= port <= 65535:
            raise FabricConfigError(f"bad port {port}")
        if provider == "shm":
            node = service = None   # shm names its endpoint itself
        else:
            node = address or "127.0.0.1"   # never the wildcard unless asked for by name
            service = str(port or 0)
        self.provider = provider
        self.max_frame, self.max_meta, self.credits = max_frame, max_meta, credits
        self._ffi, self._lib = mod.ffi, mod.lib
        err = self._ffi.new("char[512]")
        self._ptr: Any = self._lib.msm_fab_open(
            provider.encode(), node.encode() if node else self._ffi.NULL,
            service.encode() if service else self._ffi.NULL, max_frame, max_meta, credits, max_peers, err, 512)
        if self._ptr == self._ffi.NULL:
            reason = self._ffi.string(err).decode(errors="replace") or "out of memory"
            raise FabricUnavailable(f"cannot open a {provider} endpoint at {node}:{service}: {reason}")
        self._events: Any = self._ffi.new("msm_fab_event[]", EVENT_BATCH)
        self._peer_out: Any = self._ffi.new("msm_fab_peer_stats *")
        # Payloads of sends not yet completed, by token: libfabric reads them
        # until the completion. Bounded by the C side: at most credits x peers.
        self._inflight: dict[int, Any] = {}
        self._held: dict[int, ReceivedFrame] = {}   # by slot: at most credits x peers
        self._token = 0
        self._too_big = 0
        self._addresses: dict[bytes, int] = {}   # peers by name: at most max_peers (the C table refuses more)
        # Forgotten without close(): the C side is closed on collection, the
        # in-flight payloads kept alive until it is (libfabric may still read them).
        self._finalizer = weakref.finalize(self, _close_native, self._lib, self._ptr, self._inflight)

    # -- addresses ---------------------------------------------------------

    def local_address(self) -> bytes:
        """This endpoint's libfabric name, for the peers' :meth:`add_peer`."""
        self._check_open()
        buf = self._ffi.new("uint8_t[256]")
        size = self._ffi.new("size_t *", 256)
        rc = self._lib.msm_fab_getname(self._ptr, buf, size)
        if rc != 0:
            raise FabricUnavailable(f"fi_getname failed ({rc})")
        return bytes(self._ffi.buffer(buf, size[0]))

    def add_peer(self, address: bytes) -> int:
        """Accept frames from, and send frames to, the endpoint named ``address``; its peer id."""
        self._check_open()
        if address in self._addresses:
            return self._addresses[address]
        err = self._ffi.new("char[256]")
        pid = int(self._lib.msm_fab_add_peer(self._ptr, address, len(address), err, 256))
        if pid < 0:
            raise FabricConfigError(f"cannot add fabric peer: {self._ffi.string(err).decode(errors='replace')}")
        self._addresses[address] = pid
        return pid

    def remove_peer(self, peer: int) -> None:
        """Stop sending to ``peer`` and drop (and count) what it sends; :meth:`add_peer` takes it back.

        Its id and table slot stay reserved (a peer table is at most
        ``max_peers`` distinct addresses over the endpoint's life); frames of it
        still held stay valid until released.
        """
        self._check_open()
        for address, pid in list(self._addresses.items()):
            if pid == peer:
                del self._addresses[address]
                self._lib.msm_fab_remove_peer(self._ptr, peer)
                return
        raise NotFound(f"no fabric peer {peer}")

    # -- frames ------------------------------------------------------------

    def send(self, peer: int, header: FrameHeader, payload: Any) -> bool:
        """Send one frame to ``peer``; ``False``: dropped (no credit, too big), counted (see :meth:`offer`)."""
        return self.offer(peer, header, payload) is None

    def offer(self, peer: int, header: FrameHeader, payload: Any) -> str | None:
        """Send one frame to ``peer``: ``None`` when taken, else why it was dropped (``"no_credit"``,
        ``"too_large"``), counted either way.

        Taken means sent, or refused by the provider for the moment and queued
        for retries (at most :data:`RETRY_SECONDS`, then counted ``drop_busy``).
        ``payload`` (any contiguous buffer) is sent without copying: do not
        change it until :meth:`poll` has seen the send complete.
        """
        self._check_open()
        if peer not in self._addresses.values():
            raise NotFound(f"no fabric peer {peer}")
        meta = bytes(header.metadata)
        size = memoryview(payload).nbytes
        if size > self.max_frame or len(meta) > self.max_meta:
            self._too_big += 1
            return "too_large"
        data = self._ffi.from_buffer("uint8_t[]", payload)
        self._token += 1
        rc = self._lib.msm_fab_send(self._ptr, peer, header.group & 0xFFFFFFFF, header.seq & (2**64 - 1),
                                    header.timestamp & (2**64 - 1), meta, len(meta), data, size, self._token)
        if rc in (self._lib.MSM_FAB_SENT, self._lib.MSM_FAB_QUEUED):
            self._inflight[self._token] = data
            return None
        if rc < 0:
            raise FabricUnavailable(f"fi_tsendmsg failed ({rc})")
        return "no_credit"

    def poll(self, timeout: float = 0.0) -> list[ReceivedFrame]:
        """Progress the endpoint; the frames that arrived, waiting up to ``timeout`` seconds for an event."""
        self._check_open()
        frames: list[ReceivedFrame] = []
        wait_ms = max(0, int(timeout * 1000))
        while True:
            n = self._lib.msm_fab_poll(self._ptr, self._events, EVENT_BATCH, wait_ms)
            for i in range(n):
                self._event(self._events[i], frames)
            if n < EVENT_BATCH:
                return frames
            wait_ms = 0

    def _event(self, ev: Any, frames: list[ReceivedFrame]) -> None:
        if ev.kind == self._lib.MSM_FAB_EV_FRAME:
            base = self._lib.msm_fab_buffer(self._ptr, ev.slot)
            head = self._lib.MSM_FAB_HEADER_BYTES
            view = memoryview(self._ffi.buffer(base, ev.payload_offset + ev.payload_len))
            frame = ReceivedFrame(int(ev.peer), int(ev.group), int(ev.seq), int(ev.timestamp),
                                  view[head:head + ev.meta_len], view[ev.payload_offset:], int(ev.slot), self)
            self._held[frame.slot] = frame
            frames.append(frame)
        else:   # SENT or SEND_ERROR: libfabric is done with the payload
            self._inflight.pop(int(ev.token), None)

    def _release(self, frame: ReceivedFrame) -> None:
        if self._held.pop(frame.slot, None) is None or self._ptr is None:
            return
        frame.metadata.release()
        frame.payload.release()
        self._lib.msm_fab_release(self._ptr, frame.slot)

    # -- state -------------------------------------------------------------

    def fileno(self) -> int | None:
        """The completion queue's wait descriptor, or ``None`` (then poll with a timeout on a thread)."""
        self._check_open()
        fd = int(self._lib.msm_fab_fd(self._ptr))
        return fd if fd >= 0 else None

    def stats(self) -> dict[str, Any]:
        """Endpoint counters and, under ``peers``, one dict per peer id (frames, bytes, drops, in flight)."""
        self._check_open()
        out = self._ffi.new("msm_fab_stats *")
        self._lib.msm_fab_stats_get(self._ptr, out)
        result: dict[str, Any] = {name: int(getattr(out, name)) for name in (
            "rx_unknown_peer", "ctrl_unknown_peer", "ctrl_bad", "cq_errors", "rx_buffers", "rx_posted",
            "rx_buffer_bytes", "mr_local")}
        result["drop_too_big"] = self._too_big
        peers = {}
        for pid in sorted(self._addresses.values()):
            self._lib.msm_fab_peer_stats_get(self._ptr, pid, self._peer_out)
            row = {name: int(getattr(self._peer_out, name)) for name in _peer_fields()}
            # Sent and not yet released by the peer (as far as its last grant tells).
            row["in_flight"] = max(0, row["sent"] - max(0, row["granted"] - self.credits))
            peers[pid] = row
        result["peers"] = peers
        return result

    def _check_open(self) -> None:
        if self._ptr is None:
            raise FabricUnavailable("fabric endpoint is closed")

    def close(self) -> None:
        """Close the endpoint: pending sends are cancelled, held frames' views go dead; again: no-op."""
        if self._ptr is None:
            return
        for frame in list(self._held.values()):
            frame._endpoint = None
            frame.metadata.release()
            frame.payload.release()
        self._held.clear()
        self._finalizer.detach()
        self._lib.msm_fab_close(self._ptr)
        self._ptr = None
        self._inflight.clear()

    def __enter__(self) -> FabricEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
