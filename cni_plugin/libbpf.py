"""The few bpf() operations msm-cni's eBPF mode needs, through the system's libbpf.

``libbpf.so.1`` (the one BCC itself links) is opened with ctypes on first use;
every call returns -errno on failure, turned into ``OSError`` here. A node
without it gets :class:`~msm.cni_plugin.errors.EbpfUnavailable` (code 103).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from .errors import EbpfUnavailable


class RedirectKey(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint64), ("port", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class RedirectVal(ctypes.Structure):
    _fields_ = [("to_port", ctypes.c_uint32), ("proxy_uid", ctypes.c_uint32)]


class _LinkInfo(ctypes.Structure):
    """The head of ``struct bpf_link_info`` for a cgroup link."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


class _MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info``."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


class Libbpf:
    """The few bpf() operations the plugin needs, through libbpf (returns -errno)."""

    def __init__(self) -> None:
        # libbpf 1.x: every call returns -errno on failure (0.x did not, hence no fallback to it).
        try:
            self.lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise EbpfUnavailable(
                "eBPF redirect mode unavailable", f"libbpf 1.x is missing (apt-get install libbpf1): {exc}"
            ) from exc
        c_int, ptr, u32p = ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
        signatures: dict[str, list[Any]] = {
            "bpf_obj_get": [ctypes.c_char_p],
            "bpf_obj_pin": [c_int, ctypes.c_char_p],
            "bpf_link_create": [c_int, c_int, c_int, ptr],
            "bpf_obj_get_info_by_fd": [c_int, ptr, u32p],
            "bpf_map_update_elem": [c_int, ptr, ptr, ctypes.c_uint64],
            "bpf_map_lookup_elem": [c_int, ptr, ptr],
            "bpf_map_delete_elem": [c_int, ptr],
            "bpf_map_get_next_key": [c_int, ptr, ptr],
        }
        for fn, argtypes in signatures.items():
            getattr(self.lib, fn).argtypes = argtypes
            getattr(self.lib, fn).restype = c_int

    @staticmethod
    def _check(ret: int, what: str) -> int:
        if ret < 0:
            raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
        return ret

    def obj_get(self, path: Path) -> int:
        return self._check(self.lib.bpf_obj_get(str(path).encode()), f"bpf_obj_get {path}")

    def obj_pin(self, fd: int, path: Path) -> None:
        self._check(self.lib.bpf_obj_pin(fd, str(path).encode()), f"bpf_obj_pin {path}")

    def link_create(self, prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
        return self._check(self.lib.bpf_link_create(prog_fd, cgroup_fd, attach_type, None), "bpf_link_create")

    def link_cgroup_id(self, fd: int) -> int:
        info = _LinkInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        self._check(self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "link info")
        return int(info.cgroup_id)

    def map_sizes(self, fd: int) -> tuple[int, int]:
        """A map's (key size, value size)."""
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        self._check(self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
        return int(info.key_size), int(info.value_size)

    def update(self, fd: int, key: ctypes.Structure, value: ctypes.Structure) -> None:
        self._check(self.lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0), "map update")

    def lookup(self, fd: int, key: ctypes.Structure, value: ctypes.Structure) -> bool:
        return int(self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))) == 0

    def delete(self, fd: int, key: ctypes.Structure) -> None:
        self.lib.bpf_map_delete_elem(fd, ctypes.byref(key))  # absent is fine

    def is_empty(self, fd: int) -> bool:
        first = RedirectKey()
        return int(self.lib.bpf_map_get_next_key(fd, None, ctypes.byref(first))) != 0


_libbpf: Libbpf | None = None


def get() -> Libbpf:
    """The process's one libbpf handle (opened on first use)."""
    global _libbpf
    if _libbpf is None:
        _libbpf = Libbpf()
    return _libbpf
