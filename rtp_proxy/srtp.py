"""SRTP (RFC 3711) on legs between nodes: keys, and the Python side of protect/unprotect.

A relay leg (one node's flow -> another node's relay flow) carries SRTP with
AEAD_AES_128_GCM (RFC 7714) when both proxies can do it, else
AES_CM_128_HMAC_SHA1_80 (RFC 4568's name; the control plane chooses, see
:data:`PROFILES`): the sending leg protects, the
receiving flow unprotects right after its source check, before the RTP header
checks look at the inner packet. Keys come from the control plane over the
mutually authenticated DataPlane channel (:class:`SrtpKey`); they are never
logged (``repr`` hides them) and never in snapshots or metrics.

- :class:`Protector`: one sending direction (a leg's RTP, or its RTCP);
- :class:`Unprotector`: one receiving direction with the current key and, for
  :data:`REKEY_GRACE` seconds after a rekey, the previous one.

The Python engine and every flow's RTCP side use these (pylibsrtp, over
libsrtp2); the native engine does the same for RTP in C (``ext``), with the
very libsrtp copy pylibsrtp carries (:func:`library_path`): built on OpenSSL,
it protects a 1.4 KB packet in about a fifth of the time Debian's NSS-based
libsrtp2 takes (GCM in about 60% of the time of AES-CM with HMAC-SHA1), and
one copy serves the whole process.

Errors: a bad key or a stale epoch is :class:`SrtpKeyRefused` (a ``Refused``);
a packet that fails authentication or the replay check is not an error but
``None`` from :meth:`Unprotector.unprotect`, dropped and counted by the caller.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import pylibsrtp

from msm.sdk.errors import Refused

__all__ = ["GCM", "KEY_LEN", "PROFILE", "PROFILES", "REKEY_GRACE", "SALT_LEN", "SRTP_OVERHEAD", "Protector",
           "SrtpKey", "SrtpKeyRefused", "Unprotector", "library_path", "profiles"]

#: The profile every proxy speaks (RFC 4568 name); 128-bit AES counter mode, 80-bit HMAC-SHA1 tag.
PROFILE = "AES_CM_128_HMAC_SHA1_80"
#: RFC 7714's AES-GCM with a 16-byte tag: one pass of AES-NI + carry-less
#: multiply instead of AES-CTR then HMAC-SHA1, so cheaper per packet.
GCM = "AEAD_AES_128_GCM"
KEY_LEN = 16
SALT_LEN = 14
#: What protecting adds to an RTP packet: the authentication tag (no MKI). An
#: RTCP packet gets 4 bytes more (the E flag + SRTCP index).
SRTP_OVERHEAD = 10
SRTCP_OVERHEAD = 14


@dataclass(frozen=True, slots=True)
class _Profile:
    salt_len: int
    overhead: int          # added to an RTP packet; RTCP gets 4 more
    pylibsrtp: int


#: The profiles this module can key (salt length, RTP overhead, pylibsrtp's constant).
PROFILES = {
    PROFILE: _Profile(SALT_LEN, SRTP_OVERHEAD, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
    GCM: _Profile(12, 16, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
}
#: The largest UDP payload; a packet that would not fit once protected is not sent (a send error).
MAX_DATAGRAM = 65507

#: How long (seconds) a receiver still accepts the previous key after a rekey.
#: The control plane rekeys the receiver first, then the sender: until the
#: sender's Rekey lands (one DataPlane call, normally milliseconds, at worst its
#: gRPC timeout) and while packets protected with the old key are still in
#: socket buffers or on the wire, they must still authenticate. 5 s covers a
#: slow call with room to spare; one previous key at most is kept, and after
#: this it is refused like any wrong key, so a leaked old key stops working.
REKEY_GRACE = 5.0


class SrtpKeyRefused(Refused):
    """An SRTP key the proxy cannot use: unknown profile, wrong lengths, or an epoch not newer than the current."""


@dataclass(frozen=True, slots=True)
class SrtpKey:
    """One SRTP master key and salt, and its epoch (higher = newer). ``repr`` never shows the key."""

    master_key: bytes = field(repr=False)
    master_salt: bytes = field(repr=False)
    epoch: int = 0
    profile: str = PROFILE

    def __post_init__(self) -> None:
        spec = PROFILES.get(self.profile)
        if spec is None:
            raise SrtpKeyRefused(f"SRTP profile {self.profile!r} is not supported (only {', '.join(PROFILES)})")
        if len(self.master_key) != KEY_LEN or len(self.master_salt) != spec.salt_len:
            raise SrtpKeyRefused(f"SRTP {self.profile} needs a {KEY_LEN}-byte key and a {spec.salt_len}-byte salt")

    @property
    def material(self) -> bytes:
        """Key then salt, as libsrtp takes them (30 bytes; 28 for GCM)."""
        return self.master_key + self.master_salt

    @property
    def overhead(self) -> int:
        """What protecting adds to an RTP packet (10 bytes; 16 for GCM)."""
        return PROFILES[self.profile].overhead


def profiles(native_features: frozenset[str] | None = None) -> tuple[str, ...]:
    """The profiles a proxy can do: both in Python (pylibsrtp); with the native
    engine (its ``features``), GCM only if its libsrtp does it (``srtp-gcm``)."""
    if native_features is not None and "srtp-gcm" not in native_features:
        return (PROFILE,)
    return (GCM, PROFILE)


def library_path() -> str | None:
    """The shared object holding pylibsrtp's libsrtp (its ``_binding`` module, which exports ``srtp_*``)."""
    spec = importlib.util.find_spec("pylibsrtp._binding")
    return spec.origin if spec is not None and spec.has_location else None


def _session(key: SrtpKey, inbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key.material, srtp_profile=PROFILES[key.profile].pylibsrtp,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    session = pylibsrtp.Session(policy=policy)
    # pylibsrtp works in a 1,500-byte buffer less libsrtp's largest trailer
    # (144 bytes with an MKI): a 1,400-byte camera packet would not fit. One
    # bounded buffer per session holding any UDP datagram and its trailer.
    buffer = pylibsrtp.ffi.new("char[]", MAX_DATAGRAM + 256)  # type: ignore[attr-defined]
    session._cdata, session._buffer = buffer, pylibsrtp.ffi.buffer(buffer)  # type: ignore[attr-defined]
    return session


def check_epoch(current: SrtpKey | None, new: SrtpKey) -> bool:
    """Whether ``new`` replaces ``current``: ``False`` for the same key again (idempotent); refused if older."""
    if current is None:
        return True
    if new.epoch == current.epoch and new.material == current.material:
        return False
    if new.epoch <= current.epoch:
        raise SrtpKeyRefused(f"SRTP epoch {new.epoch} is not newer than the current {current.epoch}")
    return True


class Protector:
    """Protects what one direction sends (any SSRC), with one key at a time."""

    __slots__ = ("_session", "key")

    def __init__(self, key: SrtpKey) -> None:
        self.key = key
        self._session = _session(key, inbound=False)

    def rekey(self, key: SrtpKey) -> None:
        if check_epoch(self.key, key):
            self.key = key
            self._session = _session(key, inbound=False)

    def protect(self, data: bytes) -> bytes | None:
        """SRTP of an RTP packet; ``None`` if it cannot be protected (too short or too big)."""
        if len(data) < 12 or len(data) + self.key.overhead > MAX_DATAGRAM:
            return None
        try:
            return self._session.protect(data)
        except (pylibsrtp.Error, ValueError):
            return None

    def protect_rtcp(self, data: bytes) -> bytes | None:
        if len(data) < 8 or len(data) + self.key.overhead + 4 > MAX_DATAGRAM:
            return None
        try:
            return self._session.protect_rtcp(data)
        except (pylibsrtp.Error, ValueError):
            return None


class Unprotector:
    """Authenticates, replay-checks and decrypts one receiving direction; the previous key during a grace."""

    __slots__ = ("_clock", "_current", "_previous", "_until", "key")

    def __init__(self, key: SrtpKey, clock: Callable[[], float]) -> None:
        self.key = key
        self._clock = clock
        self._current = _session(key, inbound=True)
        self._previous: pylibsrtp.Session | None = None
        self._until = 0.0

    def rekey(self, key: SrtpKey) -> None:
        if check_epoch(self.key, key):
            self.key = key
            self._previous, self._current = self._current, _session(key, inbound=True)
            self._until = self._clock() + REKEY_GRACE

    def _sessions(self) -> tuple[pylibsrtp.Session, ...]:
        if self._previous is not None and self._clock() >= self._until:
            self._previous = None   # past its grace: refused from now on
        return (self._current,) if self._previous is None else (self._current, self._previous)

    def unprotect(self, data: bytes) -> bytes | None:
        """The RTP packet inside ``data``; ``None`` if it fails authentication or the replay check."""
        for session in self._sessions():
            try:
                return session.unprotect(data)
            except (pylibsrtp.Error, ValueError):
                continue
        return None

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        for session in self._sessions():
            try:
                return session.unprotect_rtcp(data)
            except (pylibsrtp.Error, ValueError):
                continue
        return None
