"""The eBPF alternative to the nftables redirect (``"redirectMode": "ebpf"``).

Where the programs attach. A CNI ADD runs before the pod's containers exist, so
there is no pod cgroup to attach to yet. Instead four cgroup programs are
attached ONCE to a cgroup that contains every pod (``cgroupPath``; default the
root of the cgroup v2 hierarchy, or e.g. the kubelet's ``kubepods`` slice), and
each decides per socket from the socket's network namespace: map
``redirect`` is keyed by (netns cookie, destination port), and ADD writes one
entry per intercepted port for the pod's netns, DEL removes them. A process
outside every injected pod's netns costs one hash lookup per ``connect()``.

* ``cgroup/connect4``: a TCP ``connect()`` to an intercepted port, not to
  127.0.0.0/8 and not by the stub's UID (``proxyUid``, as the kernel sees it in
  the initial user namespace) is rewritten to ``127.0.0.1:<redirectPort>``. The
  original destination is kept under the socket's cookie.
* ``cgroup/connect6``: the same for IPv6 sockets, except to ``::1`` and
  ``::ffff:127.0.0.0/104``; rewritten to ``[::1]:<redirectPort>``, or to
  ``[::ffff:127.0.0.1]:<redirectPort>`` (the stub's IPv4 listener) when the
  destination is an IPv4-mapped address, as the nftables mode (which sees those
  as IPv4 packets) does. The stub must listen on ``[::1]`` (or ``[::]``) for
  the first: a stub on ``0.0.0.0`` alone refuses redirected IPv6 connections,
  in either mode.
* ``sockops`` (active side established): re-keys it by the client's address
  (netns cookie, local address, local port), the only thing the stub's accepted
  socket knows about its peer.
* ``cgroup/getsockopt``: answers ``getsockopt(SOL_IP, SO_ORIGINAL_DST)``
  (``sockaddr_in``, IPv4 destinations) and ``getsockopt(SOL_IPV6,
  IP6T_SO_ORIGINAL_DST)`` (``sockaddr_in6``) on that accepted socket with it,
  so the stub's ``original_destination()`` works unchanged in either mode. Any
  other socket gets the kernel's own answer. A link-local destination's scope
  id is not kept (``sin6_scope_id`` is 0).

The stub must be in ``cgroupPath`` too (the getsockopt hook runs for sockets of
processes in it), which it is when that covers the pods.

Lifetime. The programs are attached with BPF links; links and maps are pinned
under ``bpfPinPath`` (default ``/sys/fs/bpf/msm``), which is what keeps them
alive after the short-lived plugin exits. The first ADD compiles and attaches
them (BCC: about 0.7 s for that ADD, 0.15 s for later ones); later ADDs only write map entries. ADD
re-attaches when the pinned links are missing or attached elsewhere (the cgroup
was removed, or ``cgroupPath`` changed). When a DEL (or GC) leaves the
``redirect`` map empty, the links and maps are unpinned, which detaches the
programs: a node with no injected pod carries nothing. ADD, DEL and GC hold a
lock (``/run/msm-cni/ebpf.lock``), so concurrent invocations cannot tear down
what another is installing.

ADD records the pod's netns cookie, ports and pin path in
``/run/msm-cni/<containerID>-<ifname>.json``, so DEL needs neither the network
namespace nor the config, and removes only keys no other record still claims.

Requirements (``preflight``; ``EbpfUnavailable``, code 103, names what is
missing): BCC (Debian's ``python3-bpfcc``) and libbpf, a cgroup v2 hierarchy,
bpffs (mounted on ``/sys/fs/bpf`` by ADD when it is not), Linux 5.15+, and
kernel headers for BCC's compiler: ``/lib/modules/$(uname -r)/build`` (and
``source``), or ``CONFIG_IKHEADERS``. The programs use only the stable UAPI
(no kprobes, no kernel structs), so another kernel's headers do: on a node
whose kernel has no headers package, link Debian's ``linux-headers-amd64``
there (``scripts/setup.sh`` does).

The programs' C source is ``ebpf_program.PROGRAM``; the bpf() calls on pinned
links and maps go through ``libbpf`` (ctypes over the system's libbpf.so.1).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DEFAULT_BPF_PIN_PATH, Settings
from .ebpf_program import MAP_SIZES, PROGRAM
from .errors import CheckFailed, EbpfUnavailable, NetnsGone, RedirectFailed
from .libbpf import RedirectKey, RedirectVal
from .libbpf import get as _bpf
from .nft import tool

STATE_DIR = Path("/run/msm-cni")
BPFFS = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # where python3-bpfcc installs ``bcc``
SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux 5.14+
#: Entries: one per (injected pod, intercepted port). A node runs at most a few
#: hundred pods; 16384 leaves room for many ports each.
MAX_REDIRECTS = 16384
#: Connections between connect() and the stub's accept(); LRU, so the entries of
#: connections that never reach the stub age out instead of filling the map.
MAX_PENDING = 65536

# enum bpf_prog_type / bpf_attach_type (include/uapi/linux/bpf.h; stable ABI).
PROG_SOCK_OPS = 13
PROG_CGROUP_SOCK_ADDR = 18
PROG_CGROUP_SOCKOPT = 25
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_CGROUP_INET4_CONNECT = 10
ATTACH_CGROUP_INET6_CONNECT = 11
ATTACH_CGROUP_GETSOCKOPT = 21

#: (function, program type, attach type, name of its pinned link)
PROGRAMS = (
    ("msm_connect4", PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET4_CONNECT, "link_connect4"),
    ("msm_connect6", PROG_CGROUP_SOCK_ADDR, ATTACH_CGROUP_INET6_CONNECT, "link_connect6"),
    ("msm_sockops", PROG_SOCK_OPS, ATTACH_CGROUP_SOCK_OPS, "link_sockops"),
    ("msm_getsockopt", PROG_CGROUP_SOCKOPT, ATTACH_CGROUP_GETSOCKOPT, "link_getsockopt"),
)
MAPS = ("redirect", "by_socket", "by_peer")

# -- node checks ---------------------------------------------------------------------------


def _mounts(fstype: str) -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [fields[1] for fields in (line.split() for line in lines) if len(fields) > 2 and fields[2] == fstype]


def _cgroup2_root() -> str:
    roots = _mounts("cgroup2")
    return roots[0] if roots else ""


def kernel_headers() -> str:
    """Where BCC will find kernel headers ('' if nowhere), by BCC's own rules."""
    release = os.uname().release
    if env := os.environ.get("BCC_KERNEL_SOURCE"):
        candidates = [Path(env)]
    else:
        modules = Path("/lib/modules") / release
        both = (modules / "build").is_dir() and (modules / "source").is_dir()
        candidates = [modules / ("source" if both else "build")]
    for path in candidates:
        if (path / "include/linux/kconfig.h").is_file():
            return str(path)
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return "/sys/kernel/kheaders.tar.xz"
    return ""


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError:
        if DEBIAN_DIST_PACKAGES not in sys.path and os.path.isdir(DEBIAN_DIST_PACKAGES):
            sys.path.append(DEBIAN_DIST_PACKAGES)
        try:
            import bcc
        except ImportError as exc:
            raise EbpfUnavailable(
                "eBPF redirect mode unavailable",
                f"BCC's Python module is missing (apt-get install python3-bpfcc): {exc}",
            ) from exc
    return bcc


def preflight() -> None:
    """Raise ``EbpfUnavailable`` naming every reason eBPF mode cannot work here."""
    release = os.uname().release
    reasons = []
    numbers = [int(n) for n in re.findall(r"\d+", release)[:2]]
    if numbers < [5, 15]:
        reasons.append(f"Linux {release} is older than 5.15 (netns cookies in sockops and getsockopt programs)")
    if not kernel_headers():
        reasons.append(
            f"BCC compiles against kernel headers and there are none for {release} "
            f"(/lib/modules/{release}/build is missing and the kernel has no CONFIG_IKHEADERS); "
            f"install linux-headers-{release}, or link /lib/modules/{release}/build and source to another "
            f"kernel's headers (the programs use only the stable UAPI), or use redirectMode nftables"
        )
    if not _cgroup2_root():
        reasons.append("no cgroup v2 hierarchy is mounted (the connect4 and connect6 hooks attach to one)")
    if not _mounts("bpf") and not BPFFS.is_dir():
        reasons.append(f"no bpffs is mounted and there is no {BPFFS} to mount it on (links and maps are pinned)")
    if reasons:
        raise EbpfUnavailable("eBPF redirect mode unavailable on this node", "; ".join(reasons))
    _bpf()
    _import_bcc()


def _ensure_bpffs(pins: Path) -> None:
    """Mount bpffs on /sys/fs/bpf, as systemd does at boot, when nothing holds ``pins``."""
    if any(pins == Path(m) or Path(m) in pins.parents for m in _mounts("bpf") if m != "/"):
        return
    if BPFFS not in pins.parents:
        raise EbpfUnavailable("bpfPinPath is not on a bpffs", f"{pins}: no bpf filesystem is mounted above it")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise EbpfUnavailable(f"cannot mount bpffs on {BPFFS}", os.strerror(err))


def _cgroup(settings: Settings) -> Path:
    path = Path(settings.cgroup_path or _cgroup2_root())
    if not path.is_dir() or not (path / "cgroup.procs").exists():
        raise RedirectFailed("cgroupPath is not a cgroup v2 directory", str(path))
    return path


# -- attaching ------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "ebpf.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """BCC and clang print to fd 1, which is the runtime's result channel."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _attached(pins: Path, cgroup_id: int) -> bool:
    """Are all the links pinned and attached to the cgroup with this id?"""
    bpf = _bpf()
    for *_, link in PROGRAMS:
        try:
            fd = bpf.obj_get(pins / link)
        except OSError:
            return False
        try:
            if bpf.link_cgroup_id(fd) != cgroup_id:
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


def _ensure_attached(pins: Path, cgroup: Path) -> None:
    """Compile, attach to ``cgroup`` and pin, unless that is done already."""
    cgroup_id = os.stat(cgroup).st_ino  # a cgroup v2 directory's inode is the cgroup id
    if _attached(pins, cgroup_id):
        return
    for *_, link in PROGRAMS:  # stale or partial: detach what is left and start again
        with contextlib.suppress(FileNotFoundError):
            (pins / link).unlink()
    bcc = _import_bcc()
    bpf = _bpf()
    _drop_other_layouts(pins)
    pins.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        PROGRAM.replace("@PINS@", str(pins))
        .replace("@MAX_REDIRECTS@", str(MAX_REDIRECTS))
        .replace("@MAX_PENDING@", str(MAX_PENDING))
    )
    try:
        cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise RedirectFailed("cannot open cgroupPath", f"{cgroup}: {exc}") from exc
    try:
        with _stdout_to_stderr():
            module = bcc.BPF(text=text)  # pinned maps that exist are reused, entries and all
            for name, prog_type, attach_type, link in PROGRAMS:
                fn = module.load_func(name, prog_type, attach_type=attach_type)
                link_fd = bpf.link_create(fn.fd, cgroup_fd, attach_type)
                try:
                    bpf.obj_pin(link_fd, pins / link)
                finally:
                    os.close(link_fd)
            module.cleanup()
    except Exception as exc:  # BCC reports compile and load failures as bare Exception
        for *_, link in PROGRAMS:
            with contextlib.suppress(FileNotFoundError):
                (pins / link).unlink()
        raise RedirectFailed("cannot load the eBPF redirect programs", f"{type(exc).__name__}: {exc}") from exc
    finally:
        os.close(cgroup_fd)


def _drop_other_layouts(pins: Path) -> None:
    """Unpin the maps an older msm-cni pinned with another layout (IPv4-only
    pending maps before connect6): BCC would reuse them as they are. Only the
    pending maps can differ; what they lose is connections between connect()
    and the stub's accept() while the programs were being replaced."""
    bpf = _bpf()
    for name, sizes in MAP_SIZES.items():
        try:
            fd = bpf.obj_get(pins / name)
        except OSError:
            continue
        try:
            same = bpf.map_sizes(fd) == sizes
        except OSError:
            same = False
        finally:
            os.close(fd)
        if not same:
            if name == "redirect":  # its entries are the pods' redirects: never dropped silently
                raise RedirectFailed("eBPF map redirect has another layout", f"{pins / name}: unpin it and re-add")
            (pins / name).unlink(missing_ok=True)


def _teardown(pins: Path) -> None:
    """Unpin links (which detaches the programs) and maps; remove ``pins``."""
    for name in [link for *_, link in PROGRAMS] + list(MAPS):
        with contextlib.suppress(FileNotFoundError):
            (pins / name).unlink()
    with contextlib.suppress(OSError):
        pins.rmdir()  # left when someone else put something there


def _open_redirect_map(pins: Path) -> int:
    try:
        return _bpf().obj_get(pins / "redirect")
    except OSError as exc:
        raise RedirectFailed("eBPF map redirect is not pinned", str(exc)) from exc


# -- the backend's operations ---------------------------------------------------------------


def netns_cookie(netns: str) -> int:
    """The kernel's cookie for ``netns``, from a socket opened inside it."""
    if not os.path.exists(netns):
        raise NetnsGone(netns)
    code = f"import socket;s=socket.socket();print(s.getsockopt(socket.SOL_SOCKET,{SO_NETNS_COOKIE},8)[::-1].hex())"
    done = subprocess.run(
        [tool("nsenter"), f"--net={netns}", sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        if done.stderr.startswith("nsenter:"):
            raise NetnsGone(f"{netns}: {done.stderr.strip()}")
        raise RedirectFailed("cannot read the pod's netns cookie", done.stderr.strip())
    return int(done.stdout.strip(), 16)


def _state_file(container_id: str, ifname: str) -> Path:
    return STATE_DIR / f"{container_id}-{ifname}.json"


def _records() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    with contextlib.suppress(OSError):
        for path in STATE_DIR.glob("*.json"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                record = json.loads(path.read_text())
                if isinstance(record, dict):
                    out.append((path, record))
    return out


def install(netns: str, settings: Settings, container_id: str, ifname: str) -> None:
    preflight()
    pins = Path(settings.bpf_pin_path)
    cookie = netns_cookie(netns)
    _ensure_bpffs(pins)
    cgroup = _cgroup(settings)
    bpf = _bpf()
    state = _state_file(container_id, ifname)
    record = {
        "containerID": container_id,
        "ifname": ifname,
        "netns_cookie": cookie,
        "ports": [*settings.intercept_ports],
        "pinPath": str(pins),
    }
    with _lock():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(state.read_text()) != record:  # the same attachment, added differently before
                _remove_recorded(state)
        _ensure_attached(pins, cgroup)
        state.write_text(json.dumps(record))  # first, so DEL and GC can undo what follows
        fd = _open_redirect_map(pins)
        how = RedirectVal(settings.redirect_port, settings.proxy_uid)
        try:
            for port in settings.intercept_ports:
                try:
                    bpf.update(fd, RedirectKey(cookie, port, 0), how)
                except OSError as exc:
                    raise RedirectFailed("cannot write eBPF map redirect", f"port {port}: {exc}") from exc
        finally:
            os.close(fd)


def remove(container_id: str, ifname: str) -> None:
    """Delete this attachment's map entries; nothing to do without a record."""
    state = _state_file(container_id, ifname)
    if not state.exists():  # the common case for nftables-mode pods: no lock, no libbpf
        return
    with _lock():
        _remove_recorded(state)


def _keys(record: dict[str, Any]) -> tuple[Path, set[tuple[int, int]]]:
    """A record's pin directory and (netns cookie, port) keys; no keys if malformed."""
    pins = Path(str(record.get("pinPath", DEFAULT_BPF_PIN_PATH)))
    try:
        cookie = int(record["netns_cookie"])
        return pins, {(cookie, int(port)) for port in record.get("ports", [])}
    except (KeyError, TypeError, ValueError):
        return pins, set()


def _remove_recorded(state: Path) -> None:
    """With the lock held: remove one record's keys (those no other record claims)
    and, when that empties the map, everything pinned."""
    try:
        record = json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        state.unlink(missing_ok=True)
        return
    pins, keys = _keys(record if isinstance(record, dict) else {})
    for path, other in _records():
        other_pins, other_keys = _keys(other)
        if path != state and other_pins == pins:
            keys -= other_keys
    if (pins / "redirect").exists():
        bpf = _bpf()
        fd = _open_redirect_map(pins)
        try:
            for cookie, port in keys:
                bpf.delete(fd, RedirectKey(cookie, port, 0))
            empty = bpf.is_empty(fd)
        finally:
            os.close(fd)
        if empty:
            _teardown(pins)
    state.unlink(missing_ok=True)


def verify(netns: str, settings: Settings) -> None:
    preflight()
    pins = Path(settings.bpf_pin_path)
    cookie = netns_cookie(netns)
    cgroup = _cgroup(settings)
    bpf = _bpf()
    if not _attached(pins, os.stat(cgroup).st_ino):
        raise CheckFailed("eBPF redirect programs are not attached", f"{cgroup} (links under {pins})")
    fd = _open_redirect_map(pins)
    try:
        for port in settings.intercept_ports:
            val = RedirectVal()
            if not bpf.lookup(fd, RedirectKey(cookie, port, 0), val):
                raise CheckFailed("eBPF redirect entry missing", f"{netns}: port {port}")
            if val.to_port != settings.redirect_port or val.proxy_uid != settings.proxy_uid:
                raise CheckFailed("eBPF redirect entry differs from the config", f"{netns}: port {port}")
    finally:
        os.close(fd)


def collect_garbage(valid: set[tuple[str, str]]) -> None:
    """GC: remove the entries of every recorded attachment not in ``valid``."""
    stale = [
        path
        for path, record in _records()
        if (str(record.get("containerID", "")), str(record.get("ifname", ""))) not in valid
    ]
    if not stale:
        return
    with _lock():
        for path in stale:
            _remove_recorded(path)
