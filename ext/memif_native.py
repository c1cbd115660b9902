"""The memif ring fast path's seam: ``msm.ext._memif`` (C, cffi API mode) behind plain-number calls.

:func:`load` returns the compiled module or raises :class:`NativeUnavailable`
saying why; ``msm.sdk.memif_ring`` then walks the rings in Python. The C side
only reads and writes descriptors and ring counters (memif.h), never payload.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from msm.ext import NativeModule, NativeUnavailable

__all__ = ["BURST", "NativeUnavailable", "forward", "load", "out_array", "pointer", "release", "rx_burst", "sizes"]

BURST = 64  # frames per call: enough to amortise the call, small enough to keep the output array in cache

_native = NativeModule("_memif", "run python ext/build_memif.py")


def load() -> ModuleType:
    """The compiled ``msm.ext._memif`` module, or :class:`NativeUnavailable`."""
    return _native.load()


def pointer(buffer: Any) -> Any:
    """A ``uint8_t *`` over a writable buffer; :func:`release` it before the buffer is released."""
    return load().ffi.from_buffer("uint8_t[]", buffer, require_writable=True)


def release(cdata: Any) -> None:
    load().ffi.release(cdata)


def sizes(values: list[int]) -> Any:
    return load().ffi.new("uint64_t[]", values)


def out_array(frames: int) -> Any:
    return load().ffi.new("uint32_t[]", 5 * frames)


def rx_burst(ring: Any, log2: int, nxt: int, produced: int, region_sizes: Any, nregions: int, out: Any,
             max_frames: int) -> tuple[int, int, int]:
    """(frames written to ``out``, slots consumed, bad frames skipped); see msm_memif_rx_burst."""
    mod = load()
    consumed = mod.ffi.new("unsigned *")
    bad = mod.ffi.new("unsigned *")
    n = mod.lib.msm_memif_rx_burst(ring, log2, nxt, produced, region_sizes, nregions, out, max_frames, consumed,
                                   bad)
    return int(n), int(consumed[0]), int(bad[0])


def forward(rx_ring: Any, rx_log2: int, rx_next: int, rx_produced: int, region_sizes: Any, nregions: int,
            tx_ring: Any, tx_log2: int, region_delta: int, max_frames: int) -> tuple[int, int, int, int]:
    """(frames forwarded, receive slots consumed, bad frames skipped, bytes referenced); see msm_memif_forward."""
    mod = load()
    consumed = mod.ffi.new("unsigned *")
    bad = mod.ffi.new("unsigned *")
    nbytes = mod.ffi.new("uint64_t *")
    n = mod.lib.msm_memif_forward(rx_ring, rx_log2, rx_next, rx_produced, region_sizes, nregions, tx_ring, tx_log2,
                                  region_delta, max_frames, consumed, bad, nbytes)
    return int(n), int(consumed[0]), int(bad[0]), int(nbytes[0])
