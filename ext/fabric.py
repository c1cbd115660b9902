"""The libfabric link's seam: loads ``msm.ext._fabric`` (C, cffi API mode) or says why it cannot.

:func:`load` returns the compiled module or raises :class:`msm.ext.NativeUnavailable`
with the reason (not built: no ``libfabric-dev`` headers or no compiler at
install time; ``MSM_NO_FABRIC=1``). :func:`probe` asks libfabric whether a
provider offers what the link needs on this host, :func:`providers` lists
those of :data:`KNOWN_PROVIDERS` that do. The frame protocol itself (header,
credits, who may send) is described in ``ext/fabric.h``; the proxy-side API
is :mod:`msm.rtp_proxy.media.fabric_link`.
"""

from __future__ import annotations

from types import ModuleType

from msm.ext import NativeModule, NativeUnavailable

__all__ = ["KNOWN_PROVIDERS", "load", "probe", "providers", "unavailable_reason"]

#: The providers the link is meant for: RDM over TCP between nodes (what
#: Intel's Media Communications Mesh uses too) and shared memory on one host.
#: Others (udp, sockets...) may work but are not tested; ``sockets`` is slow.
KNOWN_PROVIDERS = ("tcp;ofi_rxm", "shm")

_native = NativeModule("_fabric", "it needs libfabric's headers (apt-get install libfabric-dev) and a C compiler; "
                       "run python ext/build_fabric.py", disable_env="MSM_NO_FABRIC", what="libfabric link")


def load() -> ModuleType:
    """The compiled ``msm.ext._fabric`` module, or :class:`NativeUnavailable` saying why not."""
    return _native.load()


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
