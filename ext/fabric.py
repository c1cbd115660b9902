"""The libfabric link's seam: loads ``msm.ext._fabric`` (C, cffi API mode) or says why it cannot.

:func:`load` returns the compiled module or raises :class:`msm.ext.NativeUnavailable`
with the reason (not built: no ``libfabric-dev`` headers or no compiler at
install time; ``MSM_NO_FABRIC=1``). :func:`probe` asks libfabric whether a
provider offers what the link needs on this host, :func:`providers` lists
those of :data:`KNOWN_PROVIDERS` that do. The frame protocol itself (header,
credits, who may send) is described in ``ext/fabric.h``; the proxy-side API
is :mod:`msm.rtp_proxy.media.fabric_link`.

Loading libfabric (Debian's 1.17) loads libpsm2 and libpsm_infinipath with it,
whose constructors put their own SIGINT and SIGTERM handlers in place: print
nothing, ``exit(1)``. A proxy that had asked for a graceful stop on SIGTERM
(asyncio's ``add_signal_handler``) would die on the spot instead. :func:`load`
puts Python's handlers back (from the main thread; elsewhere it cannot, and
says so once in the log).

``tcp;ofi_rxm`` touches four pools of 1024 bounce buffers when an endpoint is
enabled; at rxm's default 16 KB per buffer that is 73 MB of resident memory per
proxy, for the small messages only (grants; frames up to the buffer size go
eagerly through them, larger ones by segments or rendezvous straight from the
payload). :data:`RXM_BUFFER_SIZE` (4 KB, set unless ``FI_OFI_RXM_BUFFER_SIZE``
is) brings that to 23 MB; the grants (under 100 bytes) still fit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import ModuleType
from typing import Any

from msm.ext import NativeModule, NativeUnavailable

__all__ = ["KNOWN_PROVIDERS", "load", "probe", "providers", "unavailable_reason"]

#: The providers the link is meant for: RDM over TCP between nodes (what
#: Intel's Media Communications Mesh uses too) and shared memory on one host.
#: Others (udp, sockets...) may work but are not tested; ``sockets`` is slow.
KNOWN_PROVIDERS = ("tcp;ofi_rxm", "shm")

log = logging.getLogger(__name__)

#: rxm's bounce buffer size (bytes) unless the environment sets ``FI_OFI_RXM_BUFFER_SIZE``: see above.
RXM_BUFFER_SIZE = 4096

#: Signals whose handlers loading libfabric replaces and :func:`load` puts back.
KEPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_native = NativeModule("_fabric", "it needs libfabric's headers (apt-get install libfabric-dev) and a C compiler; "
                       "run python ext/build_fabric.py", disable_env="MSM_NO_FABRIC", what="libfabric link")


def load() -> ModuleType:
    """The compiled ``msm.ext._fabric`` module, or :class:`NativeUnavailable` saying why not."""
    before = {sig: signal.getsignal(sig) for sig in KEPT_SIGNALS}
    # Read once, when libfabric initialises its providers (the first fi_getinfo).
    os.environ.setdefault("FI_OFI_RXM_BUFFER_SIZE", str(RXM_BUFFER_SIZE))
    try:
        return _native.load()
    finally:
        _put_back(before)


_warned = False


def _put_back(handlers: dict[signal.Signals, Any]) -> None:
    """Re-install Python's handlers for ``handlers``' signals (same Python handler, so a no-op unless a
    library replaced them underneath Python)."""
    global _warned
    if threading.current_thread() is not threading.main_thread():
        if not _warned:
            _warned = True
            log.warning("libfabric loaded outside the main thread: its SIGINT/SIGTERM handlers (exit at once) "
                        "stay in place; load msm.ext.fabric from the main thread first")
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def unavailable_reason() -> str | None:
    """Why the link cannot be loaded at all, or ``None``."""
    try:
        load()
    except NativeUnavailable as exc:
        return str(exc)
    return None


def probe(provider: str) -> str | None:
    """``None`` if ``provider`` offers an RDM endpoint with what the link needs here, else the reason."""
    mod = load()
    err = mod.ffi.new("char[256]")
    if mod.lib.msm_fab_probe(provider.encode(), err, 256) != 0:
        return str(mod.ffi.string(err).decode(errors="replace"))
    return None


def providers() -> list[str]:
    """The known providers that work on this host (empty if the link is not built)."""
    try:
        return [name for name in KNOWN_PROVIDERS if probe(name) is None]
    except NativeUnavailable:
        return []
