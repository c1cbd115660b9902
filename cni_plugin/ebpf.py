"""The eBPF alternative to the nftables redirect (``"redirectMode": "ebpf"``).

Design. Three small cgroup programs, attached once per node to the cgroup v2
root and pinned under ``/sys/fs/bpf/msm`` (cgroup attachments outlive the
process that made them, so the short-lived plugin can load them on the first
ADD and later ADDs only write map entries):

* ``cgroup/connect4`` rewrites ``connect()`` of TCP to an intercepted port into
  ``127.0.0.1:<redirectPort>`` when the socket's network namespace is an
  injected pod's (map ``msm_redirect``, keyed by netns cookie and port), the
  destination is not in 127.0.0.0/8 and the caller is not the stub's UID. The
  original destination is kept by socket cookie.
* ``sockops`` (active established) re-keys that by the client's local port, the
  only thing the stub's accepted socket knows about its peer.
* ``cgroup/getsockopt`` answers the stub's ``SO_ORIGINAL_DST`` with it, so the
  stub works unchanged in either mode.

ADD finds the pod's netns cookie (``SO_NETNS_COOKIE`` on a socket made inside
it) and writes one ``msm_redirect`` entry per intercepted port; it records the
cookie under ``/run/msm-cni`` so DEL can remove exactly those entries even when
the namespace is already gone.

The programs are compiled by BCC (Debian's ``python3-bpfcc``) at first load,
which needs the running kernel's headers (``/lib/modules/$(uname -r)/build``,
or ``CONFIG_IKHEADERS``). ``preflight`` checks all of that first and refuses
with ``EbpfUnavailable`` (code 103) saying exactly what is missing, so the mode
fails cleanly instead of half-installing.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import CheckFailed, EbpfUnavailable, NetnsGone, RedirectFailed
from .nft import tool

PIN_DIR = Path("/sys/fs/bpf/msm")
STATE_DIR = Path("/run/msm-cni")
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # where python3-bpfcc installs ``bcc``
SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux 5.14+
#: Entries: one per (injected pod, intercepted port). A node runs at most a few
#: hundred pods; 16384 leaves room for many ports each.
MAX_REDIRECTS = 16384
#: Connections between connect() and the stub's getsockopt(); LRU, so entries
#: of connections that never reach the stub age out instead of filling it.
MAX_PENDING = 65536

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#define SOL_IP_ 0
#define SO_ORIGINAL_DST_ 80

struct redirect_key { u64 netns; u32 port; u32 pad; };
struct redirect_val { u32 to_port; u32 proxy_uid; };
struct orig_dst { u32 ip4; u32 port; };               /* both network byte order */
struct conn_key { u64 netns; u32 local_port; u32 pad; };

BPF_TABLE_PINNED("hash", struct redirect_key, struct redirect_val, msm_redirect, MAX_REDIRECTS,
                 "PIN_DIR/msm_redirect");
BPF_TABLE_PINNED("lru_hash", u64, struct orig_dst, msm_by_socket, MAX_PENDING, "PIN_DIR/msm_by_socket");
BPF_TABLE_PINNED("lru_hash", struct conn_key, struct orig_dst, msm_by_port, MAX_PENDING,
                 "PIN_DIR/msm_by_port");

int msm_connect4(struct bpf_sock_addr *ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 1;
    u32 dst = ctx->user_ip4;
    if ((bpf_ntohl(dst) >> 24) == 127)
        return 1;
    struct redirect_key key = {};
    key.netns = bpf_get_netns_cookie(ctx);
    key.port = bpf_ntohs((u16)ctx->user_port);
    struct redirect_val *val = msm_redirect.lookup(&key);
    if (!val)
        return 1;
    if ((u32)bpf_get_current_uid_gid() == val->proxy_uid)
        return 1;
    struct orig_dst orig = {};
    orig.ip4 = dst;
    orig.port = ctx->user_port;
    u64 cookie = bpf_get_socket_cookie(ctx);
    msm_by_socket.update(&cookie, &orig);
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons((u16)val->to_port);
    return 1;
}

int msm_sockops(struct bpf_sock_ops *skops) {
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    u64 cookie = bpf_get_socket_cookie(skops);
    struct orig_dst *orig = msm_by_socket.lookup(&cookie);
    if (!orig)
        return 1;
    struct conn_key key = {};
    key.netns = bpf_get_netns_cookie(skops);
    key.local_port = skops->local_port;
    struct orig_dst copy = *orig;
    msm_by_port.update(&key, &copy);
    msm_by_socket.delete(&cookie);
    return 1;
}

int msm_getsockopt(struct bpf_sockopt *ctx) {
    if (ctx->level != SOL_IP_ || ctx->optname != SO_ORIGINAL_DST_)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct conn_key key = {};
    key.netns = bpf_get_netns_cookie(ctx);
    key.local_port = bpf_ntohs((u16)sk->dst_port);
    struct orig_dst *orig = msm_by_port.lookup(&key);
    if (!orig)
        return 1;
    struct sockaddr_in *out = ctx->optval;
    if ((void *)(out + 1) > ctx->optval_end)
        return 1;
    out->sin_family = AF_INET;
    out->sin_port = (u16)orig->port;
    out->sin_addr.s_addr = orig->ip4;
    ctx->optlen = sizeof(*out);
    ctx->retval = 0;
    return 1;
}
"""


class _RedirectKey(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint64), ("port", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _RedirectVal(ctypes.Structure):
    _fields_ = [("to_port", ctypes.c_uint32), ("proxy_uid", ctypes.c_uint32)]


def _cgroup2_root() -> str:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    except OSError:
        pass
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
    headers = Path("/lib/modules") / release / "build"
    if not headers.is_dir() and not Path("/sys/kernel/kheaders.tar.xz").exists():
        reasons.append(
            f"BCC compiles against the running kernel's headers and there are none for {release} "
            f"({headers} is missing and the kernel has no CONFIG_IKHEADERS); "
            f"install linux-headers-{release} or use redirectMode nftables"
        )
    if not _cgroup2_root():
        reasons.append("no cgroup v2 hierarchy is mounted (the connect4 hook attaches to one)")
    if not Path("/sys/fs/bpf").is_dir() or not os.path.ismount("/sys/fs/bpf"):
        reasons.append("bpffs is not mounted on /sys/fs/bpf (programs and maps are pinned there)")
    if reasons:
        raise EbpfUnavailable("eBPF redirect mode unavailable on this node", "; ".join(reasons))
    _import_bcc()


def _load_and_attach() -> None:
    """Compile, attach to the cgroup v2 root and pin, unless already done."""
    if (PIN_DIR / "msm_connect4").exists():
        return
    bcc = _import_bcc()
    PIN_DIR.mkdir(parents=True, exist_ok=True)
    text = (
        PROGRAM.replace("PIN_DIR", str(PIN_DIR))
        .replace("MAX_REDIRECTS", str(MAX_REDIRECTS))
        .replace("MAX_PENDING", str(MAX_PENDING))
    )
    root = _cgroup2_root()
    try:
        bpf = bcc.BPF(text=text)
        progs = [
            ("msm_connect4", bcc.BPF.CGROUP_SOCK_ADDR, bcc.BPFAttachType.CGROUP_INET4_CONNECT),
            ("msm_sockops", bcc.BPF.SOCK_OPS, bcc.BPFAttachType.CGROUP_SOCK_OPS),
            ("msm_getsockopt", bcc.BPFProgType.CGROUP_SOCKOPT, bcc.BPFAttachType.CGROUP_GETSOCKOPT),
        ]
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, prog_type, attach_type in progs:
                fn = bpf.load_func(name, prog_type, attach_type=attach_type)
                bcc.BPF.attach_func(fn, fd, attach_type, flags=2)  # BPF_F_ALLOW_MULTI
                if bcc.libbcc.lib.bpf_obj_pin(fn.fd, str(PIN_DIR / name).encode()) != 0:
                    raise OSError(f"cannot pin {name} under {PIN_DIR}")
        finally:
            os.close(fd)
    except Exception as exc:  # BCC reports compile and load failures as bare Exception
        raise RedirectFailed("cannot load the eBPF redirect programs", str(exc)) from exc


def _map_fd(bcc: Any) -> int:
    fd = int(bcc.libbcc.lib.bpf_obj_get(str(PIN_DIR / "msm_redirect").encode()))
    if fd < 0:
        raise RedirectFailed("eBPF map msm_redirect is not pinned", str(PIN_DIR / "msm_redirect"))
    return fd


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


def install(netns: str, settings: Settings, container_id: str, ifname: str) -> None:
    preflight()
    _load_and_attach()
    bcc = _import_bcc()
    cookie = netns_cookie(netns)
    fd = _map_fd(bcc)
    try:
        for port in settings.intercept_ports:
            key = _RedirectKey(cookie, port, 0)
            val = _RedirectVal(settings.redirect_port, settings.proxy_uid)
            if bcc.libbcc.lib.bpf_update_elem(fd, ctypes.byref(key), ctypes.byref(val), 0) != 0:
                raise RedirectFailed("cannot write eBPF map msm_redirect", f"port {port}")
    finally:
        os.close(fd)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "containerID": container_id,
        "ifname": ifname,
        "netns_cookie": cookie,
        "ports": [*settings.intercept_ports],
    }
    _state_file(container_id, ifname).write_text(json.dumps(record))


def remove(container_id: str, ifname: str) -> None:
    """Delete this attachment's map entries; nothing to do without a record."""
    _remove_recorded(_state_file(container_id, ifname))


def _remove_recorded(state: Path) -> None:
    try:
        record = json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if (PIN_DIR / "msm_redirect").exists():
        bcc = _import_bcc()
        fd = _map_fd(bcc)
        try:
            for port in record.get("ports", []):
                key = _RedirectKey(int(record["netns_cookie"]), int(port), 0)
                bcc.libbcc.lib.bpf_delete_elem(fd, ctypes.byref(key))  # absent is fine
        finally:
            os.close(fd)
    state.unlink(missing_ok=True)


def verify(netns: str, settings: Settings) -> None:
    preflight()
    bcc = _import_bcc()
    cookie = netns_cookie(netns)
    fd = _map_fd(bcc)
    try:
        for port in settings.intercept_ports:
            key = _RedirectKey(cookie, port, 0)
            val = _RedirectVal()
            if bcc.libbcc.lib.bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(val)) != 0:
                raise CheckFailed("eBPF redirect entry missing", f"{netns}: port {port}")
            if val.to_port != settings.redirect_port or val.proxy_uid != settings.proxy_uid:
                raise CheckFailed("eBPF redirect entry differs from the config", f"{netns}: port {port}")
    finally:
        os.close(fd)


def collect_garbage(valid: set[tuple[str, str]]) -> None:
    """GC: remove the entries of every recorded attachment not in ``valid``."""
    try:
        records = list(STATE_DIR.glob("*.json"))
    except OSError:
        return
    for path in records:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        attachment = (str(record.get("containerID", "")), str(record.get("ifname", "")))
        if attachment not in valid:
            _remove_recorded(path)
