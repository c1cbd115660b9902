"""memif shared memory regions: a memfd and its mapping (read-write, or read-only for a region shared to us)."""

from __future__ import annotations

import fcntl
import mmap
import os

from msm.sdk.memif_proto import MemifError

__all__ = ["F_SEAL_FUTURE_WRITE", "Region"]


#: Linux 5.1's F_SEAL_FUTURE_WRITE (Python's fcntl does not name it yet): no new writable mapping and no
#: write(2) from anyone, while the mappings made before it stay writable. The proxy puts it on a sender's
#: region before receivers are given the fd, so the sender and the proxy keep writing and no receiver can.
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


class Region:
    """A shared memory region: a memfd mapped read-write (or read-only); ``mem`` is a memoryview of all of it."""

    def __init__(self, fd: int, size: int, *, writable: bool = True) -> None:
        self.fd = fd
        self.size = size
        prot = mmap.PROT_READ | mmap.PROT_WRITE if writable else mmap.PROT_READ
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self.mem = memoryview(self._map)

    @classmethod
    def create(cls, size: int, name: str = "msm-memif", *, final: bool = True) -> Region:
        """A new sealed memfd of ``size`` bytes (it can grow no smaller: a peer may rely on its size).

        ``final=False`` leaves out F_SEAL_SEAL, so the peer may add seals later (the proxy adds
        F_SEAL_FUTURE_WRITE to a sender's region before it shares it with receivers).
        """
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | (fcntl.F_SEAL_SEAL if final else 0))
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, size: int, *, index: int, require_seal: bool = True, writable: bool = True) -> Region:
        """Maps a peer's region fd (taking ownership of ``fd``); MemifError if it cannot back ``size`` bytes.

        Touching a mapping beyond the end of its file kills the process with
        SIGBUS, so the file must be at least ``size`` bytes now and (with
        ``require_seal``) sealed against shrinking later.
        """
        try:
            actual = os.fstat(fd).st_size
            if actual < size:
                raise MemifError(f"memif: region {index} file is {actual} bytes, ADD_REGION claims {size}",
                                 key="short_region")
            if require_seal:
                try:
                    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                except OSError:
                    seals = 0
                if not seals & fcntl.F_SEAL_SHRINK:
                    raise MemifError(f"memif: region {index} is not a memfd sealed against shrinking",
                                     key="unsealed_region")
            return cls(fd, size, writable=writable)
        except MemifError:
            os.close(fd)
            raise
        except (OSError, ValueError, OverflowError) as exc:
            os.close(fd)
            raise MemifError(f"memif: region {index} cannot be mapped ({exc})", key="bad_region") from None

    def buffer(self) -> mmap.mmap:
        """The mapping itself, for a native pointer: it holds the mapping alive (a view could be cleared first)."""
        return self._map

    def close(self) -> None:
        self.mem.release()
        try:
            self._map.close()
        except BufferError:
            pass  # an application still holds a frame view; the mapping goes when that view does
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
