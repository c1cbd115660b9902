"""SRTP (RFC 3711) on legs between nodes: keys, and the Python side of protect/unprotect.

A relay leg (one node's flow -> another node's relay flow) carries SRTP with
AES_CM_128_HMAC_SHA1_80 (RFC 4568's name): the sending leg protects, the
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
libsrtp2 takes, and one copy serves the whole process.

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

__all__ = ["KEY_LEN", "PROFILE", "REKEY_GRACE", "SALT_LEN", "SRTP_OVERHEAD", "Protector", "SrtpKey",
           "SrtpKeyRefused", "Unprotector", "library_path"]

#: The one profile the mesh speaks (RFC 4568 name); 128-bit AES counter mode, 80-bit HMAC-SHA1 tag.
PROFILE = "AES_CM_128_HMAC_SHA1_80"
KEY_LEN = 16
SALT_LEN = 14
#: What protecting adds to an RTP packet: the 10-byte authentication tag (no MKI).
#: An RTCP packet gets 14 (the tag and the 4-byte E flag + SRTCP index).
SRTP_OVERHEAD = 10
SRTCP_OVERHEAD = 14
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
        if self.profile != PROFILE:
            raise SrtpKeyRefused(f"SRTP profile {self.profile!r} is not supported (only {PROFILE})")
        if len(self.master_key) != KEY_LEN or len(self.master_salt) != SALT_LEN:
            raise SrtpKeyRefused(f"SRTP {PROFILE} needs a {KEY_LEN}-byte key and a {SALT_LEN}-byte salt")

    @property
    def material(self) -> bytes:
        """Key then salt, as libsrtp takes them (30 bytes)."""
        return self.master_key + self.master_salt


def library_path() -> str | None:
    """The shared object holding pylibsrtp's libsrtp (its ``_binding`` module, which exports ``srtp_*``)."""
    spec = importlib.util.find_spec("pylibsrtp._binding")
    return spec.origin if spec is not None and spec.has_location else None


def _session(key: SrtpKey, inbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key.material, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
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
        if len(data) < 12 or len(data) + SRTP_OVERHEAD > MAX_DATAGRAM:
            return None
        try:
            return self._session.protect(data)
        except (pylibsrtp.Error, ValueError):
            return None

    def protect_rtcp(self, data: bytes) -> bytes | None:
        if len(data) < 8 or len(data) + SRTCP_OVERHEAD > MAX_DATAGRAM:
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
