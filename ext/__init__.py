"""The native engine's seam: thin Python handles over ``msm.ext._engine`` (C, cffi API mode).

The engine is optional. :func:`load` either returns the compiled module or
raises :class:`NativeUnavailable` saying why (not built because no compiler
was found at install time, ``MSM_NO_NATIVE=1``, not Linux...); callers fall
back to their pure-Python reference. Nothing here knows about RTSP, flows'
labels or gRPC: it moves and measures RTP datagrams between file descriptors
and addresses.
"""

from __future__ import annotations

import errno
import importlib
import ipaddress
import os
import socket
import threading
import weakref
from types import ModuleType
from typing import Any

__all__ = ["Engine", "FlowHandle", "LegHandle", "NativeModule", "NativeUnavailable", "available", "load", "load_srtp",
           "srtp_error", "unavailable_reason"]

FEATURE_GSO = 1
FEATURE_GRO = 2
FEATURE_TIMESTAMPS = 4
FEATURE_SRTP = 8
FEATURE_SRTP_GCM = 16
_FEATURE_NAMES = {FEATURE_GSO: "gso", FEATURE_GRO: "gro", FEATURE_TIMESTAMPS: "timestamps", FEATURE_SRTP: "srtp",
                  FEATURE_SRTP_GCM: "srtp-gcm"}

#: SRTP profiles (RFC 4568 / RFC 7714 names) and the engine's numbers for them
#: (MSM_SRTP_* in engine.h); AEAD_AES_128_GCM only with the ``srtp-gcm`` feature.
SRTP_PROFILES = {"AES_CM_128_HMAC_SHA1_80": 1, "AEAD_AES_128_GCM": 2}

#: How long closing a flow waits for the engine thread to let go of it. The
#: thread reaches its quiescent point within one batch (microseconds); this
#: bound only matters if the thread is wedged, and then the flow is leaked
#: rather than freed under its feet.
CLOSE_TIMEOUT_MS = 2000


#: The engine's interrupt moderation window (see msm_engine_set_coalesce),
#: off by default: measured on a 2-vCPU VM, a timed sleep costs about what the
#: wakeups it saves cost, and it adds its window to the latency.
#: MSM_ENGINE_COALESCE_US turns it on (e.g. 50 for hosts with cheap timers).
DEFAULT_COALESCE_US = 0


#: How long the current SSRC must have been silent before another SSRC from the
#: same source may take over (see msm_flow_new): a live source sends several
#: packets a second, a restarted one is away for longer than this.
DEFAULT_TAKEOVER_MS = 500


#: The environment variable naming the shared object the engine takes libsrtp
#: from (it wins over what the caller passes); see :func:`load_srtp`.
SRTP_LIBRARY_ENV = "MSM_SRTP_LIBRARY"


class NativeUnavailable(RuntimeError):
    """The C engine cannot be used here; the message says why."""


_module: ModuleType | None = None
_error: str | None = None
_lock = threading.Lock()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class NativeModule:
    """One optional compiled module of ``msm.ext`` (``msm.ext._<name>``), imported once on first use.

    :meth:`load` returns it or raises :class:`NativeUnavailable`: disabled by the
    ``disable_env`` flag, or not built (``hint`` says how to build it). The
    media-transport seams (``st2110``, ``pacer``, ``fabric``, ``memif_native``) share it.
    """

    def __init__(self, name: str, hint: str, *, disable_env: str = "MSM_NO_NATIVE", what: str = "") -> None:
        self.name, self.hint, self.disable_env = name, hint, disable_env
        self.what = what or f"msm.ext.{name}"
        self._module: ModuleType | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def load(self) -> ModuleType:
        if _flag(self.disable_env):
            raise NativeUnavailable(f"{self.what} disabled by {self.disable_env}=1")
        with self._lock:
            if self._module is None and self._error is None:
                try:
                    self._module = importlib.import_module(f"msm.ext.{self.name}")
                except ImportError as exc:
                    self._error = f"msm.ext.{self.name} is not built ({exc}); {self.hint}"
        if self._module is None:
            raise NativeUnavailable(self._error or "unknown")
        return self._module


def load() -> ModuleType:
    """The compiled ``msm.ext._engine`` module, or :class:`NativeUnavailable`."""
    global _module, _error
    if _flag("MSM_NO_NATIVE"):
        raise NativeUnavailable("disabled by MSM_NO_NATIVE=1")
    with _lock:
        if _module is None and _error is None:
            try:
                from msm.ext import _engine  # type: ignore[attr-defined]
            except ImportError as exc:
                _error = (f"msm.ext._engine is not built ({exc}); reinstall with a C compiler "
                          "(pip install -e .) or run python ext/build.py")
            else:
                _module = _engine
    if _module is None:
        raise NativeUnavailable(_error or "unknown")
    return _module


_srtp_error: str | None = None


def load_srtp(library: str | None = None) -> str | None:
    """Points the engine at a libsrtp (once per process); the library in use, or ``None`` (see ``srtp_error``).

    ``MSM_SRTP_LIBRARY`` if set, else ``library`` (the proxy passes
    pylibsrtp's module, libsrtp built on OpenSSL), else the system's
    ``libsrtp2.so.1`` (Debian's is built on NSS: several times slower per
    packet). The engine resolves libsrtp's functions from it at run time; the
    first library that loads serves every engine of the process from then
    on, so sessions of two libsrtp copies never meet. Engines started before
    a successful load report no ``srtp`` feature.
    """
    global _srtp_error
    mod = load()
    path = os.environ.get(SRTP_LIBRARY_ENV, "").strip() or library
    err = mod.ffi.new("char[512]")
    with _lock:
        rc = mod.lib.msm_srtp_load(path.encode() if path else mod.ffi.NULL, err, 512)
        reason = mod.ffi.string(err).decode(errors="replace")
        if rc != 0:
            _srtp_error = reason or "libsrtp2 could not be loaded"
            return None
        _srtp_error = reason or None
    return str(mod.ffi.string(mod.lib.msm_srtp_library()).decode(errors="replace"))


def srtp_error() -> str | None:
    """Why the last :func:`load_srtp` found no libsrtp, or passed over the one it was given; else ``None``."""
    return _srtp_error


def unavailable_reason() -> str | None:
    try:
        load()
    except NativeUnavailable as exc:
        return str(exc)
    return None


def available() -> bool:
    return unavailable_reason() is None


class Engine:
    """One engine thread serving many flows. ``close()`` stops it (also on GC)."""

    def __init__(self, *, gso: bool | None = None, gro: bool | None = None, timestamps: bool = True,
                 coalesce_us: int | None = None, srtp_library: str | None = None) -> None:
        mod = load()
        #: The libsrtp this engine protects and unprotects with (``None``: no SRTP; see :func:`load_srtp`).
        self.srtp_library = load_srtp(srtp_library)
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        if gso is None:
            gso = not _flag("MSM_NO_GSO")
        if gro is None:
            gro = not _flag("MSM_NO_GRO")
        want = (FEATURE_GSO if gso else 0) | (FEATURE_GRO if gro else 0) | (FEATURE_TIMESTAMPS if timestamps else 0)
        err = self.ffi.new("char[256]")
        ptr = self.lib.msm_engine_new(want, err, 256)
        if ptr == self.ffi.NULL:
            raise NativeUnavailable(f"engine did not start: {self.ffi.string(err).decode(errors='replace')}")
        # Shared with the finalizer (which must not hold self): once it ran,
        # every handle of this engine sees it closed and touches no C memory.
        self._state: dict[str, Any] = {"ptr": ptr}
        self._finalizer = weakref.finalize(self, _free_engine, self.lib, self._state)
        if coalesce_us is None:
            coalesce_us = int(os.environ.get("MSM_ENGINE_COALESCE_US", DEFAULT_COALESCE_US))
        self.lib.msm_engine_set_coalesce(ptr, max(0, coalesce_us))

    @property
    def ptr(self) -> Any:
        ptr = self._state["ptr"]
        if ptr is None:
            raise RuntimeError("engine is closed")
        return ptr

    @property
    def closed(self) -> bool:
        return self._state["ptr"] is None

    @property
    def features(self) -> frozenset[str]:
        bits = self.lib.msm_engine_features(self.ptr)
        return frozenset(name for bit, name in _FEATURE_NAMES.items() if bits & bit)

    def info(self) -> dict[str, int]:
        out = self.ffi.new("msm_engine_info *")
        self.lib.msm_engine_info_get(self.ptr, out)
        return {name: int(getattr(out, name))
                for name in ("loops", "events", "reclaimed", "coalesced", "features", "flows")}

    def add_flow(self, fd: int, *, clock_rate: int = 0, splice: bool = True,
                 takeover_ms: int = DEFAULT_TAKEOVER_MS) -> FlowHandle:
        """Serve ``fd`` (a bound non-blocking UDP socket); the engine owns it from now on.

        Nothing is forwarded until :meth:`FlowHandle.set_source` names the source.
        """
        ptr = self.lib.msm_flow_new(self.ptr, fd, clock_rate & 0xFFFFFFFF, 1 if splice else 0,
                                    max(0, min(takeover_ms, 0xFFFFFFFF)))
        if ptr == self.ffi.NULL:
            errno = self.ffi.errno
            raise OSError(errno, f"engine cannot serve the socket: {os.strerror(errno)}")
        return FlowHandle(self, ptr)

    def leg(self, host: str, port: int, family: int) -> LegHandle:
        return LegHandle(self, host, port, family)

    def close(self) -> None:
        """Stop the thread and free everything still attached (idempotent)."""
        self._finalizer()


def _free_engine(lib: Any, state: dict[str, Any]) -> None:
    ptr, state["ptr"] = state["ptr"], None
    if ptr is not None:
        lib.msm_engine_free(ptr)


def _resolve(host: str, port: int, family: int) -> tuple[int, bytes, int]:
    """``(family, packed address, scope id)`` of a destination; family 0 if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        try:  # a name: resolved once here, never per packet
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            return 0, b"", 0
    for fam, _type, _proto, _name, sockaddr in infos:
        if fam == socket.AF_INET:
            return fam, ipaddress.IPv4Address(sockaddr[0]).packed, 0
        if fam == socket.AF_INET6 and len(sockaddr) == 4:
            return fam, ipaddress.IPv6Address(str(sockaddr[0]).split("%")[0]).packed, int(sockaddr[3])
    return 0, b"", 0


_LEG_FIELDS = ("packets_sent", "bytes_sent", "send_errors", "dropped_backlog", "gso_sends", "mtu_exceeded")


class LegHandle:
    """A destination the engine can send to, with its counters."""

    def __init__(self, engine: Engine, host: str, port: int, family: int) -> None:
        self.engine = engine
        fam, packed, scope = _resolve(host, port, family)
        self.resolved = fam != 0
        ptr = engine.lib.msm_leg_new(fam, packed or engine.ffi.NULL, port & 0xFFFF, scope)
        if ptr == engine.ffi.NULL:
            raise MemoryError("msm_leg_new")
        self.ptr: Any = ptr
        self._out = engine.ffi.new("msm_leg_stats *")
        self._final: dict[str, int] | None = None

    def stats(self) -> dict[str, int]:
        if self._final is not None:
            return self._final
        if self.engine.closed:   # freed with its engine: nothing more was or will be counted
            self._final = {name: 0 for name in (*_LEG_FIELDS, "gso_disabled")}
            return self._final
        self.engine.lib.msm_leg_stats_get(self.ptr, self._out)
        return {name: int(getattr(self._out, name)) for name in (*_LEG_FIELDS, "gso_disabled")}

    def counter(self, name: str) -> int:
        if self._final is not None or self.engine.closed:
            return self.stats()[name]
        self.engine.lib.msm_leg_stats_get(self.ptr, self._out)
        return int(getattr(self._out, name))

    def set_srtp(self, material: bytes, *, profile: str = "AES_CM_128_HMAC_SHA1_80") -> None:
        """Protect what this leg sends with SRTP (``material``: master key + salt of ``profile``); again: rekey."""
        if self.ptr is None or self.engine.closed:
            return
        _check_srtp(self.engine, profile, self.engine.lib.msm_leg_set_srtp(
            self.engine.ptr, self.ptr, _profile(profile), material, len(material)))

    def retire(self, *, wait: bool = False) -> None:
        """Free the C leg (once no published leg set holds it); the counters freeze.

        Without ``wait`` the event loop is never held up: the counters are read
        now (a packet or two still in flight to the leg may go uncounted) and
        the engine frees the leg at its next quiescent point.
        """
        if self._final is not None:
            return
        if self.engine.closed:
            self._final = {name: 0 for name in (*_LEG_FIELDS, "gso_disabled")}
        else:
            self.engine.lib.msm_leg_free(self.engine.ptr, self.ptr, CLOSE_TIMEOUT_MS if wait else 0, self._out)
            self._final = {name: int(getattr(self._out, name)) for name in (*_LEG_FIELDS, "gso_disabled")}
        self.ptr = None


class FlowHandle:
    """One ingress socket served by the engine."""

    def __init__(self, engine: Engine, ptr: Any) -> None:
        self.engine = engine
        self.ptr: Any = ptr
        self._out: Any = engine.ffi.new("msm_flow_stats *")
        self._final: Any = None

    def stats(self) -> Any:
        """A ``msm_flow_stats`` snapshot (one consistent batch boundary); reused between calls."""
        if self._final is not None:
            return self._final
        if self.engine.closed:
            self._final = self._out   # the last snapshot read stands
            return self._final
        self.engine.lib.msm_flow_stats_get(self.ptr, self._out)
        return self._out

    def set_legs(self, legs: list[LegHandle], enabled: list[bool]) -> None:
        if self._final is not None or self.engine.closed:
            return
        ffi = self.engine.ffi
        ptrs = ffi.new("msm_leg *[]", [leg.ptr for leg in legs] or 1)
        flags = ffi.new("uint8_t[]", [1 if on else 0 for on in enabled] or 1)
        if self.engine.lib.msm_flow_set_legs(self.engine.ptr, self.ptr, ptrs, flags, len(legs)) != 0:
            raise MemoryError("msm_flow_set_legs")

    def set_alt_fd(self, fd: int) -> None:
        """Legs of ``fd``'s IP family are sent from ``fd`` (the flow's socket of the other family),
        which the engine owns from now on (closed with the flow); ``OSError`` leaves it open."""
        if self._final is not None or self.engine.closed:
            raise OSError(errno.ESHUTDOWN, "the flow is closed")
        if self.engine.lib.msm_flow_set_alt_fd(self.engine.ptr, self.ptr, fd) != 0:
            code = self.engine.ffi.errno
            raise OSError(code, f"engine cannot send from the socket: {os.strerror(code)}")

    def set_source(self, host: str | None, port: int, family: int) -> None:
        """Forward only RTP from ``host`` (an IP address) and ``port`` (0: any port); ``None``: nothing."""
        if self._final is not None or self.engine.closed:
            return
        fam, packed = 0, b""
        if host is not None:
            fam, packed, _scope = _resolve(host, port, family)
            if fam == 0:
                raise ValueError(f"not an address of this flow's family: {host!r}")
        lib, ffi = self.engine.lib, self.engine.ffi
        if lib.msm_flow_set_source(self.engine.ptr, self.ptr, fam, packed or ffi.NULL, port & 0xFFFF) != 0:
            raise MemoryError("msm_flow_set_source")

    def set_srtp(self, material: bytes, *, grace_ms: int, profile: str = "AES_CM_128_HMAC_SHA1_80") -> None:
        """What arrives is SRTP under ``material`` (key + salt of ``profile``); again: a rekey, the old key
        kept ``grace_ms``."""
        if self._final is not None or self.engine.closed:
            return
        _check_srtp(self.engine, profile, self.engine.lib.msm_flow_set_srtp(
            self.engine.ptr, self.ptr, _profile(profile), material, len(material), max(0, min(grace_ms, 0xFFFFFFFF))))

    def close(self) -> None:
        """Stop serving and free the flow; its socket is closed and its counters freeze."""
        if self._final is not None:
            return
        if self.engine.closed:
            self._final = self._out
        else:
            final = self.engine.ffi.new("msm_flow_stats *")
            self.engine.lib.msm_flow_close(self.engine.ptr, self.ptr, CLOSE_TIMEOUT_MS, final)
            self._final = final
        self.ptr = None


def _profile(name: str) -> int:
    try:
        return SRTP_PROFILES[name]
    except KeyError:
        raise ValueError(f"SRTP profile {name!r} is unknown to the native engine") from None


def _check_srtp(engine: Engine, profile: str, rc: int) -> None:
    if rc == 0:
        return
    errno = engine.ffi.errno
    if errno == 95:   # ENOTSUP
        raise NativeUnavailable(f"no SRTP in the native engine: {_srtp_error or 'no libsrtp2'}")
    if errno == 93:   # EPROTONOSUPPORT
        raise NativeUnavailable(f"the native engine's libsrtp ({engine.srtp_library}) cannot do SRTP {profile}")
    raise ValueError(f"SRTP key refused by the engine: {os.strerror(errno)}")


def rtp_valid(packet: bytes) -> bool:
    """The engine's RFC 3550 A.1 header validity check on its own, for tests."""
    mod = load()
    return bool(mod.lib.msm_rtp_valid(packet, len(packet)))


def rtpstats(clock_rate: int, min_sequential: int = 1) -> tuple[Any, Any]:
    """``(lib, msm_rtpstats *)``: the engine's RFC 3550 statistics on their own, for tests."""
    mod = load()
    stats = mod.ffi.new("msm_rtpstats *")
    mod.lib.msm_rtpstats_init(stats, clock_rate, min_sequential)
    return mod.lib, stats
